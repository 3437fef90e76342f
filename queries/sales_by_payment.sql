-- How customers pay (cash / loan / lease), per condition (new / used / certified), per minute.
INSERT INTO influx.sales_by_payment
SELECT date_bin(INTERVAL '1 minute', sold_at) AS time,
       payment_method,
       condition,
       count(*) AS sales,
       sum(price) AS revenue
FROM transactions
GROUP BY 1, 2, 3;
