-- expect: 3: Expected
INSERT INTO lake.cars
SELECT * FROM transactions WHERE price >;
