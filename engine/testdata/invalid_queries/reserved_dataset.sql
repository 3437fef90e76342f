-- expect: 2: reserved for carflow
INSERT INTO lake._carflow SELECT * FROM transactions;
