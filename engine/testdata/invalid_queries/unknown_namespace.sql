-- expect: 2: unknown sink namespace `postgres`
INSERT INTO postgres.cars SELECT * FROM transactions;
