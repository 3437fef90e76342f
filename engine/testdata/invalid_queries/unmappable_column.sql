-- expect: 2: `day` has type Date32
INSERT INTO influx.by_day
SELECT date_bin(INTERVAL '1 day', sold_at) AS time, CAST(sold_at AS DATE) AS day, count(*) AS sales
FROM transactions GROUP BY 1, 2;
