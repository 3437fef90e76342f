//! Sinks: the Parquet lake and InfluxDB.

pub mod line_protocol;
