-- expect: 2: PARTITION column `day`
INSERT INTO lake.cars_by_day PARTITION (day)
SELECT * FROM transactions;
