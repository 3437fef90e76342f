//! carflow's engine: Kafka (or an in-process generator) → Arrow micro-batches → SQL transforms
//! (DataFusion) → a Hive-partitioned Parquet lake and InfluxDB line protocol.
//!
//! The pieces, in the order data flows through them: [`source`] hands out raw messages (and
//! defines the vocabulary: partitions, messages, dead letters); [`batcher`] closes them into
//! bounded micro-batches and decodes them against [`schema`], with bad messages as dead letters;
//! [`transform`] runs every SQL file of the queries directory; [`windows`] keeps the windowed
//! queries' partial aggregates; [`line_protocol`] maps rows to points; [`sink`] writes the lake
//! (with [`ledger`], the offset ledger kept beside the data) and InfluxDB; [`pipeline`] ties them
//! together and commits only once every sink is durable.

#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod backfill;
pub mod batcher;
pub mod catalog;
pub mod config;
pub mod generator;
pub mod history;
pub mod ledger;
pub mod line_protocol;
pub mod metrics;
pub mod pipeline;
pub mod producer;
pub mod reconcile;
pub mod reference;
pub mod replay;
pub mod retry;
pub mod schema;
pub mod sink;
pub mod source;
pub mod storage;
pub mod transform;
pub mod windows;
