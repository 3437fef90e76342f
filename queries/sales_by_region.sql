-- queries/sales_by_region.sql: sales and discount vs MSRP by region and dealer segment per minute,
-- enriched from the reference tables reference/dealers.csv (region, segment of each dealer) and
-- reference/vehicles.csv (MSRP by brand, model and model year).
INSERT INTO influx.sales_by_region
SELECT date_bin(INTERVAL '1 minute', t.sold_at) AS time, d.region, d.segment,
       count(*) AS sales,
       sum(t.price) AS revenue,
       count(v.msrp) FILTER (WHERE t.condition = 'new') AS new_sales,
       avg(1.0 - CAST(t.price AS DOUBLE) / v.msrp) FILTER (WHERE t.condition = 'new') AS new_discount
FROM transactions t
JOIN dealers d USING (dealer_id)
LEFT JOIN vehicles v ON v.brand = t.brand AND v.model = t.model AND v.model_year = t.model_year
GROUP BY 1, 2, 3;
