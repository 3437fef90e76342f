//! Sources: where messages come from, and the vocabulary every later stage speaks.
//!
//! A [`Source`] hands out raw [`Message`]s one at a time and makes positions durable when the
//! pipeline tells it to (after every sink is durable). Three implementations exist: the in-process
//! [`generator::GeneratorSource`] (the embedded demo, benchmarks), [`memory::MemorySource`] (tests)
//! and [`kafka::KafkaSource`] (a consumer group on real Kafka). The micro-batcher
//! ([`crate::batcher`]) turns the message stream into bounded batches; a message that cannot become
//! a row becomes a [`DeadLetter`] that keeps its origin.
//!
//! Positions are a convenience for monitoring and for where a restart resumes reading: what the
//! lake and the windows hold is decided by the offset ledger kept beside the data
//! ([`crate::ledger`]), so a position committed late, or not at all, only means a replay that the
//! ledger skips.

pub mod generator;
pub mod kafka;
pub mod memory;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition number.
    pub partition: i32,
}

impl TopicPartition {
    /// The partition `partition` of `topic`.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

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
    /// The message value; `None` for a tombstone (null value). A `Bytes`: the Kafka source
    /// copies a batch's values into shared chunks rather than one allocation each, and a clone
    /// (a batch read again after a fence, a redo) shares the bytes.
    pub payload: Option<bytes::Bytes>,
}

impl Message {
    /// Bytes this message holds (its payload length).
    pub fn size(&self) -> usize {
        self.payload.as_ref().map_or(0, bytes::Bytes::len)
    }

    /// The partition this message belongs to.
    pub fn topic_partition(&self) -> TopicPartition {
        TopicPartition {
            topic: Arc::clone(&self.topic),
            partition: self.partition,
        }
    }

    /// Where it is: (topic, partition, offset), the order a batch is processed in.
    pub fn position(&self) -> (&str, i32, i64) {
        (&self.topic, self.partition, self.offset)
    }

    /// Is it of the same topic and partition as `other`? (Messages of a topic share its name,
    /// so the names are compared only when they are not the same allocation.)
    pub fn same_partition(&self, other: &Message) -> bool {
        self.partition == other.partition
            && (Arc::ptr_eq(&self.topic, &other.topic) || self.topic == other.topic)
    }
}

/// Put `messages` in processing order (by topic, partition and offset), each offset once.
pub fn in_processing_order(messages: &mut Vec<Message>) {
    messages.sort_by(|a, b| a.position().cmp(&b.position()));
    messages.dedup_by(|a, b| a.position() == b.position());
}

/// A message that could not go where it was meant to, with the reason and where it came from.
///
/// Most dead letters are messages that do not decode (`transform` is `None`); the others are rows a
/// transform could not process (an integer division by zero, an overflow): they are missing from
/// that transform's output only, and `transform` names it (`lake.age_ratio`).
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Topic of the message.
    pub topic: Arc<str>,
    /// Partition of the message.
    pub partition: i32,
    /// Offset of the message.
    pub offset: i64,
    /// Broker timestamp of the message, if any.
    pub timestamp_ms: Option<i64>,
    /// Why it was refused, in words a person can act on.
    pub reason: String,
    /// The message as received (possibly truncated to a bounded size by the sink).
    pub payload: Vec<u8>,
    /// The transform that could not take it (`lake.<dataset>` or `influx.<measurement>`), or
    /// `None` when the message did not decode.
    pub transform: Option<String>,
}

impl DeadLetter {
    /// A message that did not decode, with the reason.
    pub fn undecodable(m: &Message, reason: String) -> Self {
        Self {
            topic: Arc::clone(&m.topic),
            partition: m.partition,
            offset: m.offset,
            timestamp_ms: m.timestamp_ms,
            reason,
            payload: m.payload.as_deref().unwrap_or_default().to_vec(),
            transform: None,
        }
    }

    /// The partition it came from.
    pub fn topic_partition(&self) -> TopicPartition {
        TopicPartition {
            topic: Arc::clone(&self.topic),
            partition: self.partition,
        }
    }
}

/// What a source commits for one partition once every sink has made the data durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionCommit {
    /// The partition.
    pub tp: TopicPartition,
    /// The next offset to read after a restart (Kafka's convention: last processed + 1).
    pub next_offset: i64,
}

/// A change in which partitions this process owns (a consumer-group rebalance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// These partitions were taken away; state held for them must be dropped.
    Revoked(Vec<TopicPartition>),
    /// These partitions were given to this process.
    Assigned(Vec<TopicPartition>),
}

/// Errors a source reports.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The broker or client failed in a way that does not go away by waiting (the source rides
    /// out every other error itself: brokers down, transport errors, rebalances).
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The source's configuration cannot work.
    #[error("source configuration: {0}")]
    Config(String),
}

/// What the source knows of every partition of the topics it reads, owned or not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicView {
    /// The end (high watermark: the next offset to be written) of every partition.
    pub ends: BTreeMap<TopicPartition, i64>,
    /// A stable identity of each topic that changes when a topic is deleted and created again
    /// (Kafka's topic id), when the source knows one.
    pub ids: BTreeMap<Arc<str>, String>,
}

/// A stream of messages with durable positions.
pub trait Source: Send {
    /// The next message, or `None` once a bounded source is exhausted. Must be cancel-safe:
    /// the batcher drops this future when the linger time runs out. Transient trouble (a broker
    /// restarting) is waited out here; only errors that need a person are returned.
    fn next_message(&mut self)
    -> impl Future<Output = Result<Option<Message>, SourceError>> + Send;

    /// Record these positions (where a restart resumes reading). Called only after every sink
    /// has made everything before them durable.
    fn commit(
        &mut self,
        commits: &[PartitionCommit],
    ) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// Ownership changes since the last call (consumer-group rebalances).
    fn take_events(&mut self) -> Vec<SourceEvent> {
        Vec::new()
    }

    /// True when ownership changes wait in [`Source::take_events`].
    fn has_events(&self) -> bool {
        false
    }

    /// Every partition of the topics read and where each ends (owned by this process or not),
    /// refreshed at most every `max_age`. Window watermarks are taken over all of them.
    fn topic_view(
        &mut self,
        max_age: std::time::Duration,
    ) -> impl Future<Output = Result<TopicView, SourceError>> + Send;

    /// Where the source goes on in each owned partition it knows that of: the offset after the
    /// last message delivered, or after offsets without a message it passed over since (a
    /// transaction's marker, an aborted transaction's messages), which a consumer never
    /// receives. Unknown (left out) right after a [`Source::rewind`] until delivery resumes.
    fn positions(&self) -> BTreeMap<TopicPartition, i64> {
        BTreeMap::new()
    }

    /// Messages between the current position and the end of the owned partitions, if known.
    fn lag(&self) -> Option<i64> {
        None
    }

    /// Where this source starts delivering the owned partition `tp` when the lake holds nothing
    /// of it: its committed position, else where `auto.offset.reset` puts it (`None` when that
    /// is not known, e.g. the end of the partition). The pipeline checks a partition's first
    /// message against it as it checks later ones against the ledger.
    fn start_of(
        &mut self,
        tp: &TopicPartition,
    ) -> impl Future<Output = Result<Option<i64>, SourceError>> + Send {
        let _ = tp;
        async { Ok(None) }
    }

    /// Deliver the owned partition `tp` again from `offset` on: the next message of it is the
    /// one at `offset` or, where offsets from there no longer exist, the first after them. What
    /// the caller holds of it from `offset` on is the caller's to drop. Returns `false` when this
    /// source cannot go back (its messages are then taken as they come).
    fn rewind(
        &mut self,
        tp: &TopicPartition,
        offset: i64,
    ) -> impl Future<Output = Result<bool, SourceError>> + Send {
        let _ = (tp, offset);
        async { Ok(false) }
    }
}
