//! [`KafkaSource`]: a consumer-group member on real Kafka, with manual offsets.
//!
//! Auto-commit is off: offsets are committed by the pipeline only after every sink is durable,
//! each with a small metadata string (the event-time state of the partition). Rebalances are
//! reported as [`SourceEvent`]s and handled between batches; the lake's ledger moves with the
//! partition because it is kept beside the data. Consumer lag comes from librdkafka's statistics.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{Message, PartitionCommit, Source, SourceError, SourceEvent};
use crate::config::KafkaConfig;

/// How long metadata and committed-offset requests may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Receives librdkafka's callbacks: rebalances, statistics, logs.
pub struct CarflowContext {
    events: Mutex<Vec<SourceEvent>>,
    lag: AtomicI64,
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<(Arc<str>, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (Arc::from(e.topic()), e.partition()))
        .collect()
}

impl ClientContext for CarflowContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(facility = fac, "kafka: {message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(facility = fac, "kafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(facility = fac, "kafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(facility = fac, "kafka: {message}"),
        }
    }

    fn stats(&self, stats: Statistics) {
        let lag: i64 = stats
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.consumer_lag >= 0 && p.fetch_state == "active")
            .map(|p| p.consumer_lag)
            .sum();
        self.lag.store(lag, Ordering::Relaxed);
    }
}

impl ConsumerContext for CarflowContext {
    fn pre_rebalance(&self, _c: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = r {
            let tps = partitions_of(tpl);
            tracing::info!(
                partitions = tps.len(),
                "kafka rebalance: partitions revoked"
            );
            self.events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(SourceEvent::Revoked(tps));
        }
    }

    fn post_rebalance(&self, _c: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        match r {
            Rebalance::Assign(tpl) => {
                let tps = partitions_of(tpl);
                tracing::info!(
                    partitions = tps.len(),
                    "kafka rebalance: partitions assigned"
                );
                self.events
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(SourceEvent::Assigned(tps));
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// A consumer-group member reading one topic.
pub struct KafkaSource {
    consumer: StreamConsumer<CarflowContext>,
    topics: HashMap<String, Arc<str>>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("topics", &self.topics.keys())
            .finish()
    }
}

/// librdkafka settings carflow uses unless `kafka.properties` overrides them.
pub fn consumer_settings(c: &KafkaConfig) -> BTreeMap<String, String> {
    let mut s: BTreeMap<String, String> = [
        ("bootstrap.servers", c.brokers.as_str()),
        ("group.id", c.group_id.as_str()),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", c.start_from.as_str()),
        ("session.timeout.ms", "10000"),
        ("heartbeat.interval.ms", "3000"),
        ("statistics.interval.ms", "5000"),
        ("fetch.wait.max.ms", "100"),
        ("queued.max.messages.kbytes", "65536"),
        ("client.id", "carflow"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    s.extend(c.properties.clone());
    s
}

impl KafkaSource {
    /// Join the group and subscribe to the configured topic.
    pub fn new(c: &KafkaConfig) -> Result<Self, SourceError> {
        let mut cc = ClientConfig::new();
        for (k, v) in consumer_settings(c) {
            cc.set(k, v);
        }
        let context = CarflowContext {
            events: Mutex::new(Vec::new()),
            lag: AtomicI64::new(0),
        };
        let consumer: StreamConsumer<CarflowContext> = cc.create_with_context(context)?;
        consumer.subscribe(&[c.topic.as_str()])?;
        let topics = HashMap::from([(c.topic.clone(), Arc::from(c.topic.as_str()))]);
        Ok(Self { consumer, topics })
    }

    fn topic(&mut self, name: &str) -> Arc<str> {
        self.topics
            .entry(name.to_string())
            .or_insert_with(|| Arc::from(name))
            .clone()
    }
}

impl Source for KafkaSource {
    async fn next_message(&mut self) -> Result<Option<Message>, SourceError> {
        let m = self.consumer.recv().await?;
        let (topic, partition, offset) = (m.topic().to_string(), m.partition(), m.offset());
        let timestamp_ms = m.timestamp().to_millis();
        let payload = m.payload().map(<[u8]>::to_vec);
        drop(m);
        Ok(Some(Message {
            topic: self.topic(&topic),
            partition,
            offset,
            timestamp_ms,
            payload,
        }))
    }

    async fn commit(&mut self, commits: &[PartitionCommit]) -> Result<(), SourceError> {
        let mut tpl = TopicPartitionList::new();
        for c in commits {
            tpl.add_partition_offset(&c.topic, c.partition, Offset::Offset(c.next_offset))?;
            if let Some(mut e) = tpl.find_partition(&c.topic, c.partition) {
                e.set_metadata(c.metadata.clone());
            }
        }
        // The commit is a network round trip: keep it off the async workers.
        tokio::task::block_in_place(|| self.consumer.commit(&tpl, CommitMode::Sync))?;
        Ok(())
    }

    async fn committed(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<(i64, String)>, SourceError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        let got =
            tokio::task::block_in_place(|| self.consumer.committed_offsets(tpl, REQUEST_TIMEOUT))?;
        Ok(got
            .find_partition(topic, partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some((o, e.metadata().to_string())),
                _ => None,
            }))
    }

    fn take_events(&mut self) -> Vec<SourceEvent> {
        std::mem::take(
            &mut *self
                .consumer
                .context()
                .events
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    fn has_events(&self) -> bool {
        !self
            .consumer
            .context()
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    fn lag(&self) -> Option<i64> {
        Some(self.consumer.context().lag.load(Ordering::Relaxed))
    }
}

/// Is the cluster reachable and does `topic` exist? (For `/health` and clear start-up errors.)
pub fn check_topic(brokers: &str, topic: &str, timeout: Duration) -> Result<usize, String> {
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e: KafkaError| e.to_string())?;
    let md = consumer.fetch_metadata(Some(topic), timeout).map_err(|e| {
        format!(
            "kafka at {brokers} is not reachable ({e}); start it with deploy/services.sh up kafka"
        )
    })?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| format!("topic {topic} not found"))?;
    if let Some(e) = t.error() {
        return Err(format!("topic {topic}: {e:?}"));
    }
    Ok(t.partitions().len())
}
