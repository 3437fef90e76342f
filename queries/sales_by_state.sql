-- Completed sales per dealer state per minute: where the network sells.
INSERT INTO influx.sales_by_state
SELECT date_bin(INTERVAL '1 minute', sold_at) AS time,
       dealer_state AS state,
       count(*) AS sales,
       sum(price) AS revenue
FROM transactions
WHERE status = 'completed'
GROUP BY 1, 2;
