-- expect: 2: not a fixed width
INSERT INTO influx.by_month
SELECT date_trunc('month', sold_at) AS time, count(*) AS sales FROM transactions GROUP BY 1;
