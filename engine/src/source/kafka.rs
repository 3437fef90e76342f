//! [`KafkaSource`]: a consumer-group member on real Kafka, with manual positions.
//!
//! Auto-commit is off: positions are committed by the pipeline only after every sink is durable
//! (asynchronously: they say where a restart resumes; the offset ledger beside the data says what
//! the lake and the windows hold). Rebalances are reported as [`SourceEvent`]s and handled
//! between batches. Transient trouble — every broker down, a transport error, a rebalance after
//! `max.poll.interval.ms` was exceeded while a sink was down — is logged, counted and waited out
//! here, so the engine rides out broker restarts; only errors that need a person (authentication,
//! authorization, a fatal client error) end the source. Consumer lag comes from librdkafka's
//! statistics; the ends of every partition (owned or not) and the topic's id come from the
//! broker ([`Source::topic_view`]).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{
    Message, PartitionCommit, Source, SourceError, SourceEvent, TopicPartition, TopicView,
};
use crate::config::KafkaConfig;
use prometheus_client::metrics::counter::Counter;

/// How long metadata, watermark and describe requests may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Receives librdkafka's callbacks: rebalances, statistics, logs, commit results.
pub struct CarflowContext {
    events: Mutex<Vec<SourceEvent>>,
    lag: AtomicI64,
    errors: Counter,
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
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

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.inc();
        tracing::warn!(error = %error, reason, "kafka client error (librdkafka retries on its own)");
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
            self.push(SourceEvent::Revoked(tps));
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
                self.push(SourceEvent::Assigned(tps));
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _o: &TopicPartitionList) {
        if let Err(e) = result {
            // Not fatal: positions only say where a restart resumes; the ledger skips replays.
            tracing::debug!(error = %e, "position commit failed; the next batch commits again");
        }
    }
}

impl CarflowContext {
    fn push(&self, e: SourceEvent) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
    }
}

/// A consumer-group member reading one topic.
pub struct KafkaSource {
    consumer: Arc<StreamConsumer<CarflowContext>>,
    topic: Arc<str>,
    topics: HashMap<String, Arc<str>>,
    view: Option<(Instant, TopicView)>,
    errors: Counter,
    backoff: Duration,
    /// `auto.offset.reset` starts a partition without a committed position at its beginning.
    resets_to_earliest: bool,
    /// Where the next message values are copied to (see [`copy_out`]).
    chunk: bytes::BytesMut,
}

/// Message values are copied out of librdkafka into chunks of this size, shared by the messages
/// they hold (freed when the last of them is): one allocation per ~2,000 car-sale messages
/// instead of one per message.
const CHUNK_BYTES: usize = 1 << 20;

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("topic", &self.topic)
            .finish()
    }
}

/// librdkafka's prefetch queue for batches of at most `batch_max_bytes`: two batches' worth (in
/// KiB, at least 1 MiB). Less than one batch starves the engine: it empties the queue on every
/// batch and then waits for fetches (measured: a 16 MiB queue with the default 32 MiB batches
/// held the engine to 44k rec/s, two batches' worth gave 58–62k, `benches/harness/run.sh
/// --stages carflow`, 2026-12-01); more than two adds memory and little speed (128 MiB: 64k).
pub fn prefetch_kbytes(batch_max_bytes: usize) -> usize {
    (batch_max_bytes.saturating_mul(2) / 1024).clamp(1024, 2_097_151)
}

/// librdkafka settings carflow uses unless `kafka.properties` overrides them, for batches of at
/// most `batch_max_bytes`.
pub fn consumer_settings(c: &KafkaConfig, batch_max_bytes: usize) -> BTreeMap<String, String> {
    let prefetch = prefetch_kbytes(batch_max_bytes).to_string();
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
        // librdkafka's prefetch queue (64 MiB by default): two batches' worth.
        ("queued.max.messages.kbytes", prefetch.as_str()),
        ("client.id", "carflow"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    s.extend(c.properties.clone());
    s
}

/// Does this consumer error need a person (the source gives up), or will it pass?
fn needs_a_person(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    match e {
        KafkaError::MessageConsumptionFatal(_) | KafkaError::ClientConfig(..) => true,
        KafkaError::MessageConsumption(code) | KafkaError::Global(code) => matches!(
            code,
            C::Fatal
                | C::TopicAuthorizationFailed
                | C::GroupAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::SaslAuthenticationFailed
                | C::Authentication
                | C::InvalidConfig
        ),
        _ => false,
    }
}

impl KafkaSource {
    /// Join the group and subscribe to the configured topic (batches of the default size).
    pub fn new(c: &KafkaConfig) -> Result<Self, SourceError> {
        let batch = crate::config::BatchConfig::default();
        Self::with_error_counter(c, batch.max_bytes, Counter::default())
    }

    /// [`KafkaSource::new`] for batches of at most `batch_max_bytes` (the prefetch queue holds
    /// two of them), counting every error it rides out in `errors` (e.g. the engine's
    /// `carflow_errors_total{sink="source"}`).
    pub fn with_error_counter(
        c: &KafkaConfig,
        batch_max_bytes: usize,
        errors: Counter,
    ) -> Result<Self, SourceError> {
        let mut cc = ClientConfig::new();
        let settings = consumer_settings(c, batch_max_bytes);
        let resets_to_earliest = settings
            .get("auto.offset.reset")
            .is_some_and(|v| matches!(v.as_str(), "earliest" | "smallest" | "beginning"));
        for (k, v) in settings {
            cc.set(k, v);
        }
        let context = CarflowContext {
            events: Mutex::new(Vec::new()),
            lag: AtomicI64::new(0),
            errors: errors.clone(),
        };
        let consumer: StreamConsumer<CarflowContext> = cc.create_with_context(context)?;
        consumer.subscribe(&[c.topic.as_str()])?;
        let topic: Arc<str> = Arc::from(c.topic.as_str());
        let topics = HashMap::from([(c.topic.clone(), Arc::clone(&topic))]);
        Ok(Self {
            consumer: Arc::new(consumer),
            topic,
            topics,
            view: None,
            errors,
            backoff: Duration::from_millis(100),
            resets_to_earliest,
            chunk: bytes::BytesMut::new(),
        })
    }
}

/// A message value, copied out of librdkafka into `chunk` (a new chunk when it is full; a value
/// larger than a chunk gets one of its own).
fn copy_out(chunk: &mut bytes::BytesMut, value: &[u8]) -> bytes::Bytes {
    if chunk.capacity() < value.len() {
        *chunk = bytes::BytesMut::with_capacity(CHUNK_BYTES.max(value.len()));
    }
    chunk.extend_from_slice(value);
    chunk.split().freeze()
}

impl Source for KafkaSource {
    async fn next_message(&mut self) -> Result<Option<Message>, SourceError> {
        loop {
            let e = match self.consumer.recv().await {
                Ok(m) => {
                    self.backoff = Duration::from_millis(100);
                    // The topic's name is shared, not allocated per message.
                    let topic = match self.topics.get(m.topic()) {
                        Some(t) => Arc::clone(t),
                        None => {
                            let t: Arc<str> = Arc::from(m.topic());
                            self.topics.insert(m.topic().to_string(), Arc::clone(&t));
                            t
                        }
                    };
                    let (partition, offset) = (m.partition(), m.offset());
                    let timestamp_ms = m.timestamp().to_millis();
                    let payload = m.payload().map(|p| copy_out(&mut self.chunk, p));
                    drop(m);
                    return Ok(Some(Message {
                        topic,
                        partition,
                        offset,
                        timestamp_ms,
                        payload,
                    }));
                }
                Err(e) => e,
            };
            if needs_a_person(&e) {
                return Err(SourceError::Kafka(e));
            }
            self.errors.inc();
            tracing::warn!(error = %e, retry_in_ms = self.backoff.as_millis() as u64,
                "kafka consumer error; waiting it out (the engine keeps running)");
            tokio::time::sleep(self.backoff).await;
            self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn commit(&mut self, commits: &[PartitionCommit]) -> Result<(), SourceError> {
        let mut tpl = TopicPartitionList::new();
        for c in commits {
            tpl.add_partition_offset(&c.tp.topic, c.tp.partition, Offset::Offset(c.next_offset))?;
        }
        // Asynchronous: the result arrives in the commit callback (a failed commit only means a
        // replay after a restart, which the ledger skips).
        self.consumer.commit(&tpl, CommitMode::Async)?;
        Ok(())
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

    async fn start_of(&mut self, tp: &TopicPartition) -> Result<Option<i64>, SourceError> {
        let consumer = Arc::clone(&self.consumer);
        let (topic, partition) = (tp.topic.to_string(), tp.partition);
        let earliest = self.resets_to_earliest;
        tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, partition);
            let committed = consumer.committed_offsets(tpl, REQUEST_TIMEOUT)?;
            let at = committed
                .find_partition(&topic, partition)
                .map(|e| e.offset());
            if let Some(Offset::Offset(o)) = at {
                return Ok(Some(o));
            }
            if earliest {
                let (low, _) = consumer.fetch_watermarks(&topic, partition, REQUEST_TIMEOUT)?;
                return Ok(Some(low));
            }
            Ok(None)
        })
        .await
        .map_err(|e| SourceError::Config(format!("start task: {e}")))?
    }

    async fn rewind(&mut self, tp: &TopicPartition, offset: i64) -> Result<bool, SourceError> {
        // librdkafka drops what it fetched of the partition before the seek (its fetch queue is
        // versioned), and a seek to an offset the log no longer has resets by auto.offset.reset.
        let consumer = Arc::clone(&self.consumer);
        let (topic, partition) = (tp.topic.to_string(), tp.partition);
        tokio::task::spawn_blocking(move || {
            consumer.seek(&topic, partition, Offset::Offset(offset), REQUEST_TIMEOUT)
        })
        .await
        .map_err(|e| SourceError::Config(format!("seek task: {e}")))??;
        Ok(true)
    }

    async fn topic_view(&mut self, max_age: Duration) -> Result<TopicView, SourceError> {
        if let Some((at, view)) = &self.view
            && at.elapsed() < max_age
        {
            return Ok(view.clone());
        }
        let consumer = Arc::clone(&self.consumer);
        let topic = Arc::clone(&self.topic);
        let known_id = self
            .view
            .as_ref()
            .and_then(|(_, v)| v.ids.get(&topic).cloned());
        let fetched = tokio::task::spawn_blocking(move || fetch_view(&consumer, &topic, known_id))
            .await
            .map_err(|e| SourceError::Config(format!("topic view task: {e}")))?;
        match fetched {
            Ok(view) => {
                self.view = Some((Instant::now(), view.clone()));
                Ok(view)
            }
            Err(e) => {
                // Keep using the last view while the broker is away.
                self.errors.inc();
                match &self.view {
                    Some((_, v)) => {
                        tracing::debug!(error = %e, "topic view refresh failed; using the last one");
                        Ok(v.clone())
                    }
                    None => Err(SourceError::Kafka(e)),
                }
            }
        }
    }

    fn positions(&self) -> BTreeMap<TopicPartition, i64> {
        // librdkafka's application position: moved past control records (transaction markers)
        // as the consumer serves them, reset by a seek until the partition is fetched again.
        let Ok(tpl) = self.consumer.position() else {
            return BTreeMap::new();
        };
        tpl.elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => {
                    let topic = self
                        .topics
                        .get(e.topic())
                        .cloned()
                        .unwrap_or_else(|| Arc::from(e.topic()));
                    Some((TopicPartition::new(topic, e.partition()), o))
                }
                _ => None,
            })
            .collect()
    }

    fn lag(&self) -> Option<i64> {
        Some(self.consumer.context().lag.load(Ordering::Relaxed))
    }
}

fn fetch_view(
    consumer: &StreamConsumer<CarflowContext>,
    topic: &Arc<str>,
    known_id: Option<String>,
) -> Result<TopicView, KafkaError> {
    let md = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    let mut view = TopicView::default();
    let Some(t) = md.topics().iter().find(|t| t.name() == &**topic) else {
        return Ok(view);
    };
    // One round trip each, all at once (one after the other they cost a refresh ~100 ms on
    // six partitions, paid by every batch that finds a partition caught up).
    let ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    let (highs, described) = std::thread::scope(|s| {
        let described = s.spawn(|| topic_id(consumer.client().native_ptr(), topic));
        let highs: Vec<_> = ids
            .iter()
            .map(|&p| s.spawn(move || consumer.fetch_watermarks(topic, p, REQUEST_TIMEOUT)))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect::<Vec<_>>();
        let described = described
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        (highs, described)
    });
    for (p, high) in ids.into_iter().zip(highs) {
        let (_, high) = high?;
        view.ends
            .insert(TopicPartition::new(Arc::clone(topic), p), high);
    }
    let id = match described {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::debug!(error = %e, "cannot describe the topic's id");
            known_id
        }
    };
    if let Some(id) = id {
        view.ids.insert(Arc::clone(topic), id);
    }
    Ok(view)
}

/// Kafka's id of `topic` (base64, as Kafka's tools print it), through librdkafka's DescribeTopics
/// (the rdkafka crate does not wrap it).
fn topic_id(rk: *mut rdkafka::bindings::rd_kafka_t, topic: &str) -> Result<String, String> {
    use rdkafka::bindings as rd;
    let name = CString::new(topic).map_err(|e| e.to_string())?;
    // SAFETY: every pointer passed to librdkafka below is either created here and destroyed
    // before returning, or (`rk`) owned by a live client for the duration of the call. Results
    // are read only while the event that owns them is alive.
    unsafe {
        let mut names = [name.as_ptr()];
        let collection = rd::rd_kafka_TopicCollection_of_topic_names(names.as_mut_ptr(), 1);
        let queue = rd::rd_kafka_queue_new(rk);
        let options = rd::rd_kafka_AdminOptions_new(
            rk,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
        );
        let mut errstr = [0 as std::ffi::c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options,
            REQUEST_TIMEOUT.as_millis() as i32,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        rd::rd_kafka_DescribeTopics(rk, collection, options, queue);
        let event = rd::rd_kafka_queue_poll(queue, REQUEST_TIMEOUT.as_millis() as i32 + 1_000);
        let out = if event.is_null() {
            Err("DescribeTopics timed out".to_string())
        } else if rd::rd_kafka_event_error(event)
            != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            let msg = rd::rd_kafka_event_error_string(event);
            Err(if msg.is_null() {
                "DescribeTopics failed".to_string()
            } else {
                CStr::from_ptr(msg).to_string_lossy().into_owned()
            })
        } else {
            let result = rd::rd_kafka_event_DescribeTopics_result(event);
            let mut n = 0usize;
            let topics = rd::rd_kafka_DescribeTopics_result_topics(result, &mut n);
            let mut found = Err(format!("topic {topic} not described"));
            for i in 0..n {
                let d = *topics.add(i);
                let err = rd::rd_kafka_TopicDescription_error(d);
                if !err.is_null()
                    && rd::rd_kafka_error_code(err)
                        != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                {
                    found = Err(format!(
                        "topic {topic}: error {:?}",
                        rd::rd_kafka_error_code(err)
                    ));
                    continue;
                }
                let uuid = rd::rd_kafka_TopicDescription_topic_id(d);
                if !uuid.is_null() {
                    let s = rd::rd_kafka_Uuid_base64str(uuid);
                    if !s.is_null() {
                        found = Ok(CStr::from_ptr(s).to_string_lossy().into_owned());
                    }
                }
            }
            found
        };
        if !event.is_null() {
            rd::rd_kafka_event_destroy(event);
        }
        rd::rd_kafka_AdminOptions_destroy(options);
        rd::rd_kafka_queue_destroy(queue);
        rd::rd_kafka_TopicCollection_destroy(collection);
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_values_are_copied_into_shared_chunks() {
        let mut chunk = bytes::BytesMut::new();
        let values: Vec<Vec<u8>> = (0..5_000u32)
            .map(|i| {
                format!(
                    "{{\"n\":{i},\"brand\":\"é{}\"}}",
                    "x".repeat(i as usize % 700)
                )
                .into_bytes()
            })
            .collect();
        let copies: Vec<bytes::Bytes> = values.iter().map(|v| copy_out(&mut chunk, v)).collect();
        for (v, c) in values.iter().zip(&copies) {
            assert_eq!(&v[..], &c[..]);
        }
        // Values follow one another in a chunk: far fewer chunks than values.
        let contiguous = copies
            .windows(2)
            .filter(|w| w[0].as_ptr().wrapping_add(w[0].len()) == w[1].as_ptr())
            .count();
        let total: usize = values.iter().map(Vec::len).sum();
        assert!(
            contiguous >= copies.len() - 1 - total / CHUNK_BYTES - 1,
            "{contiguous} of {} values follow the one before",
            copies.len()
        );
        // A value larger than a chunk is copied whole, and an empty value is empty.
        let big = vec![7u8; CHUNK_BYTES + 10];
        assert_eq!(&copy_out(&mut chunk, &big)[..], &big[..]);
        assert!(copy_out(&mut chunk, b"").is_empty());
        assert_eq!(&copy_out(&mut chunk, b"after")[..], b"after");
        // Dropping the other copies leaves each one readable.
        let keep = copies[4_321].clone();
        drop(copies);
        assert_eq!(&keep[..], &values[4_321][..]);
    }

    #[test]
    fn the_prefetch_queue_holds_two_batches_and_a_property_overrides_it() {
        let c = KafkaConfig::default();
        let s = consumer_settings(&c, 32 << 20);
        assert_eq!(s["queued.max.messages.kbytes"], "65536");
        // librdkafka's bounds: at least 1 MiB here, at most 2097151 KiB.
        assert_eq!(prefetch_kbytes(1000), 1024);
        assert_eq!(prefetch_kbytes(usize::MAX), 2_097_151);
        let mut c = KafkaConfig::default();
        c.properties
            .insert("queued.max.messages.kbytes".into(), "4096".into());
        assert_eq!(
            consumer_settings(&c, 32 << 20)["queued.max.messages.kbytes"],
            "4096"
        );
    }
}
