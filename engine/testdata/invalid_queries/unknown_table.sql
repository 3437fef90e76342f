-- expect: 3: sales
INSERT INTO lake.copy
SELECT * FROM sales;
