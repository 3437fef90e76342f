-- expect: 2: `time` must be one of the GROUP BY expressions
INSERT INTO influx.by_brand
SELECT max(sold_at) AS time, brand, count(*) AS sales FROM transactions GROUP BY brand;
