//! The service's Kafka producer: records in, acknowledgements out, with a bound on what is in
//! flight.
//!
//! [`KafkaWriter`] owns one idempotent `acks=all` producer (the engine's settings, with the API's
//! delivery timeout) and a limiter of `max_in_flight` permits shared by every request. A request
//! first reserves permits ([`KafkaWriter::try_reserve`]: all or nothing, so a busy service answers
//! 503 before producing anything), then [`KafkaWriter::produce`] sends its records and waits for
//! Kafka's answer to each one. A record is reported as accepted only when Kafka acknowledged it;
//! a record Kafka did not take comes back with the reason. Should librdkafka report a fatal
//! error, the producer is replaced for the next request.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::future_producer::{DeliveryFuture, OwnedDeliveryResult};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::ApiMetrics;
use crate::settings::ApiSettings;

/// One record to send: its key (the dealer) and payload (the bytes as posted).
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The message key.
    pub key: &'a str,
    /// The message value.
    pub payload: &'a [u8],
}

/// Where Kafka put a record, or why it did not.
pub type Delivered = Result<(i32, i64), String>;

/// Permits for records in flight; released when dropped.
#[derive(Debug)]
pub struct Reservation {
    permit: OwnedSemaphorePermit,
}

impl Reservation {
    /// How many records may be in flight at once under this reservation.
    pub fn size(&self) -> usize {
        self.permit.num_permits()
    }
}

/// The limiter is full: nothing was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    /// Permits that were free.
    pub available: usize,
}

/// The producer and the in-flight limiter. See the module docs.
pub struct KafkaWriter {
    producer: RwLock<Arc<FutureProducer>>,
    settings: ApiSettings,
    limiter: Arc<Semaphore>,
    metrics: Arc<ApiMetrics>,
}

impl std::fmt::Debug for KafkaWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaWriter")
            .field("brokers", &self.settings.brokers)
            .field("topic", &self.settings.topic)
            .field("available", &self.limiter.available_permits())
            .finish()
    }
}

impl KafkaWriter {
    /// A writer for `settings.topic` on `settings.brokers`.
    pub fn new(settings: &ApiSettings, metrics: Arc<ApiMetrics>) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: RwLock::new(Arc::new(build_producer(settings)?)),
            settings: settings.clone(),
            limiter: Arc::new(Semaphore::new(settings.max_in_flight)),
            metrics,
        })
    }

    /// The topic records go to.
    pub fn topic(&self) -> &str {
        &self.settings.topic
    }

    /// Reserve room for `records` (at most `max_in_flight`), or [`Busy`] without waiting.
    pub fn try_reserve(&self, records: usize) -> Result<Reservation, Busy> {
        let n = records.clamp(1, self.settings.max_in_flight);
        let permits = u32::try_from(n).unwrap_or(u32::MAX);
        Arc::clone(&self.limiter)
            .try_acquire_many_owned(permits)
            .map(|permit| Reservation { permit })
            .map_err(|_| Busy {
                available: self.limiter.available_permits(),
            })
    }

    /// Reserve room for `records` (at most `max_in_flight`), waiting for it (streams wait
    /// instead of failing). `None` only if the limiter was closed.
    pub async fn reserve(&self, records: usize) -> Option<Reservation> {
        let n = records.clamp(1, self.settings.max_in_flight);
        Arc::clone(&self.limiter)
            .acquire_many_owned(u32::try_from(n).unwrap_or(u32::MAX))
            .await
            .ok()
            .map(|permit| Reservation { permit })
    }

    /// Send `records` and wait for Kafka's answer to each, in windows of the reservation's size.
    /// The result has one entry per record, in order.
    pub async fn produce(
        &self,
        reservation: &Reservation,
        records: &[Outgoing<'_>],
    ) -> Vec<Delivered> {
        let producer = self.current();
        let mut out = Vec::with_capacity(records.len());
        for window in records.chunks(reservation.size().max(1)) {
            let mut pending = Vec::with_capacity(window.len());
            for r in window {
                pending.push(self.enqueue(&producer, *r).await);
            }
            let sent = pending.iter().filter(|p| p.is_ok()).count() as i64;
            self.metrics.in_flight.inc_by(sent);
            let answers = join_all(pending.into_iter().map(|p| async move {
                match p {
                    Ok(delivery) => delivered(delivery.await),
                    Err(reason) => Err(reason),
                }
            }))
            .await;
            self.metrics.in_flight.dec_by(sent);
            out.extend(answers);
        }
        self.account(&out);
        out
    }

    /// Queue one record (waiting while librdkafka's queue is full, up to the delivery timeout)
    /// and return the future of its acknowledgement.
    pub async fn enqueue(
        &self,
        producer: &FutureProducer,
        record: Outgoing<'_>,
    ) -> Result<DeliveryFuture, String> {
        let deadline = tokio::time::Instant::now() + self.settings.delivery_timeout;
        let mut r = FutureRecord::to(&self.settings.topic)
            .key(record.key)
            .payload(record.payload);
        loop {
            match producer.send_result(r) {
                Ok(d) => return Ok(d),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if tokio::time::Instant::now() < deadline =>
                {
                    r = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(format!("kafka refused the record: {e}")),
            }
        }
    }

    /// The producer in use (replaced after a fatal error).
    pub fn current(&self) -> Arc<FutureProducer> {
        Arc::clone(&self.producer.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Count outcomes; replace the producer if librdkafka reports a fatal error.
    pub fn account(&self, results: &[Delivered]) {
        let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
        let failed = results.len() as u64 - ok;
        self.metrics.records_accepted.inc_by(ok);
        if failed == 0 {
            return;
        }
        self.metrics.records_failed.inc_by(failed);
        self.metrics.kafka_errors.inc_by(failed);
        if let Some((code, reason)) = self.current().client().fatal_error() {
            tracing::error!(?code, %reason, "kafka producer hit a fatal error; replacing it");
            match build_producer(&self.settings) {
                Ok(p) => *self.producer.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(p),
                Err(e) => tracing::error!(error = %e, "cannot create a new kafka producer"),
            }
        }
    }

    /// Wait until every queued record is acknowledged (or `timeout`).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        carflow_engine::producer::flush(&self.current(), timeout)
    }

    /// Records sent and not yet acknowledged, plus reserved room.
    pub fn reserved(&self) -> usize {
        self.settings.max_in_flight - self.limiter.available_permits()
    }
}

fn build_producer(settings: &ApiSettings) -> Result<FutureProducer, KafkaError> {
    carflow_engine::producer::producer(&settings.brokers, &settings.producer_properties())
}

/// The outcome of one delivery future.
pub fn delivered(r: Result<OwnedDeliveryResult, futures::channel::oneshot::Canceled>) -> Delivered {
    match r {
        Ok(Ok(d)) => Ok((d.partition, d.offset)),
        Ok(Err((e, _))) => Err(describe(&e)),
        Err(_) => Err("the producer closed before Kafka answered".into()),
    }
}

fn describe(e: &KafkaError) -> String {
    match e {
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut) => {
            "kafka did not acknowledge the record within the delivery timeout (broker down or unreachable?)".into()
        }
        other => format!("kafka did not take the record: {other}"),
    }
}
