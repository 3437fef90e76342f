-- Sales per brand and model per minute, for the "Top models" table.
INSERT INTO influx.sales_by_model
SELECT date_bin(INTERVAL '1 minute', sold_at) AS time,
       brand,
       model,
       count(*) AS sales,
       sum(price) AS revenue
FROM transactions
WHERE status = 'completed'
GROUP BY 1, 2, 3;
