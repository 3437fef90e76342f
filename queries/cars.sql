-- The raw lake: every transaction, exactly once, partitioned by the day it was sold.
-- Query it with: carflow sql -c "SELECT brand, count(*) FROM cars WHERE dt = '2026-01-01' GROUP BY brand"
INSERT INTO lake.cars PARTITION (dt)
SELECT *, CAST(date_trunc('day', sold_at) AS DATE) AS dt
FROM transactions;
