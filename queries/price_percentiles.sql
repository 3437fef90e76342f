-- The price distribution per condition, every 5 minutes: median, quartiles and the 90th percentile.
-- Percentiles need every row of the window, which is why windows are kept whole across batches.
INSERT INTO influx.price_percentiles
SELECT date_bin(INTERVAL '5 minutes', sold_at) AS time,
       condition,
       count(*) AS sales,
       CAST(min(price) AS DOUBLE) AS min_price,
       approx_percentile_cont(0.25) WITHIN GROUP (ORDER BY CAST(price AS DOUBLE)) AS p25,
       approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY CAST(price AS DOUBLE)) AS p50,
       approx_percentile_cont(0.75) WITHIN GROUP (ORDER BY CAST(price AS DOUBLE)) AS p75,
       approx_percentile_cont(0.9) WITHIN GROUP (ORDER BY CAST(price AS DOUBLE)) AS p90,
       CAST(max(price) AS DOUBLE) AS max_price
FROM transactions
WHERE status = 'completed'
GROUP BY 1, 2;
