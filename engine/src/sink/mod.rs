//! Sinks: the Parquet lake (with dead letters as one of its datasets) and InfluxDB.
//!
//! Each sink separates encoding (pure, benchmarked on its own) from writing (I/O, retried) and
//! from commit (the lake's ledger step; InfluxDB's idempotent overwrite of whole windows).

pub mod compact;
pub mod dead_letter;
pub mod influx;
pub mod lake;
