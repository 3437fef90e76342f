-- expect: 4: brandd
INSERT INTO influx.by_brand
SELECT date_bin(INTERVAL '1 minute', sold_at) AS time,
       brandd, count(*) AS sales
FROM transactions GROUP BY 1, 2;
