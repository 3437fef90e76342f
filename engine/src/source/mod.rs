//! Sources: where messages come from.
//!
//! A [`Source`] hands out raw [`Message`]s one at a time and makes offsets durable when the
//! pipeline tells it to (after every sink is durable). Two implementations exist: the in-process
//! [`generator::GeneratorSource`] (the embedded demo, tests, benchmarks) and
//! [`kafka::KafkaSource`] (a consumer group on real Kafka). The micro-batcher
//! ([`crate::batcher`]) turns the message stream into bounded batches.

pub mod generator;
pub mod kafka;
pub mod memory;

use std::future::Future;
use std::sync::Arc;

/// One raw message and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Topic (or the generator's pseudo-topic).
    pub topic: Arc<str>,
    /// Partition within the topic.
    pub partition: i32,
    /// Offset within the partition; strictly increasing per partition.
    pub offset: i64,
    /// Broker timestamp in milliseconds since the epoch, if any.
    pub timestamp_ms: Option<i64>,
    /// The message value; `None` for a tombstone (null value).
    pub payload: Option<Vec<u8>>,
}

impl Message {
    /// Bytes this message holds (its payload length).
    pub fn size(&self) -> usize {
        self.payload.as_ref().map_or(0, Vec::len)
    }
}

/// What a source commits for one partition once every sink has made the data durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionCommit {
    /// Topic of the partition.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: i32,
    /// The next offset to read after a restart (Kafka's convention: last processed + 1).
    pub next_offset: i64,
    /// Small opaque state restored with the offset after a restart (the event-time high-water).
    pub metadata: String,
}

/// A change in which partitions this process owns (a consumer-group rebalance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// These partitions were taken away; state held for them must be dropped.
    Revoked(Vec<(Arc<str>, i32)>),
    /// These partitions were given to this process.
    Assigned(Vec<(Arc<str>, i32)>),
}

/// Errors a source reports.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The broker or client failed; the pipeline retries.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The source's configuration cannot work.
    #[error("source configuration: {0}")]
    Config(String),
}

/// A stream of messages with durable offsets.
pub trait Source: Send {
    /// The next message, or `None` once a bounded source is exhausted. Must be cancel-safe:
    /// the batcher drops this future when the linger time runs out.
    fn next_message(&mut self)
    -> impl Future<Output = Result<Option<Message>, SourceError>> + Send;

    /// Make these positions durable. Called only after every sink has made everything before
    /// them durable.
    fn commit(
        &mut self,
        commits: &[PartitionCommit],
    ) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// The position and metadata stored by the last [`Source::commit`] of this partition, if any.
    fn committed(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> impl Future<Output = Result<Option<(i64, String)>, SourceError>> + Send;

    /// Ownership changes since the last call (consumer-group rebalances).
    fn take_events(&mut self) -> Vec<SourceEvent> {
        Vec::new()
    }

    /// True when ownership changes wait in [`Source::take_events`].
    fn has_events(&self) -> bool {
        false
    }

    /// Messages between the current position and the end of the owned partitions, if known.
    fn lag(&self) -> Option<i64> {
        None
    }
}
