-- expect: 2: a transform is an INSERT INTO
SELECT * FROM transactions;
