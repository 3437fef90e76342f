-- expect: 3: one statement per file
INSERT INTO lake.a SELECT * FROM transactions;
INSERT INTO lake.b SELECT * FROM transactions;
