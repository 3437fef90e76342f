-- One point per brand per minute: how many cars sold, at what average price, for what revenue.
-- Grafana: "Car sales" dashboard, panels "Transactions per minute", "Revenue", "Sales by brand".
INSERT INTO influx.sales_by_brand
SELECT date_bin(INTERVAL '1 minute', sold_at) AS time,
       brand,
       count(*) AS sales,
       avg(price) AS avg_price,
       sum(price) AS revenue
FROM transactions
GROUP BY 1, 2;
