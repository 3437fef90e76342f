-- expect: 2: column named `time`
INSERT INTO influx.by_brand
SELECT brand, count(*) AS sales FROM transactions GROUP BY brand;
