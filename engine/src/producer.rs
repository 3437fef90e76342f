//! Producing transactions to Kafka (for `carflow generate` and the HTTP intake).
//!
//! Records are keyed by `dealer_id`, so one dealer's sales stay in one partition, in order. The
//! producer is idempotent with `acks=all`: a record acknowledged by Kafka is in the log once.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

/// librdkafka producer settings carflow uses unless `extra` overrides them.
pub fn producer_settings(
    brokers: &str,
    extra: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut s: BTreeMap<String, String> = [
        ("bootstrap.servers", brokers),
        ("acks", "all"),
        ("enable.idempotence", "true"),
        ("linger.ms", "5"),
        ("compression.type", "lz4"),
        ("message.timeout.ms", "30000"),
        ("queue.buffering.max.messages", "200000"),
        ("client.id", "carflow-producer"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    s.extend(
        extra
            .iter()
            .filter(|(k, _)| !k.starts_with("group.") && !k.starts_with("enable.auto"))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    s
}

/// A producer for `brokers`.
pub fn producer(
    brokers: &str,
    extra: &BTreeMap<String, String>,
) -> Result<FutureProducer, KafkaError> {
    let mut c = ClientConfig::new();
    for (k, v) in producer_settings(brokers, extra) {
        c.set(k, v);
    }
    c.create()
}

/// Send one record and wait for Kafka's acknowledgement; returns (partition, offset).
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    queue_timeout: Duration,
) -> Result<(i32, i64), KafkaError> {
    let record = FutureRecord::to(topic).key(key).payload(payload);
    let delivery = producer
        .send(record, queue_timeout)
        .await
        .map_err(|(e, _)| e)?;
    Ok((delivery.partition, delivery.offset))
}

/// Wait until every queued record is delivered (or `timeout`).
pub fn flush(producer: &FutureProducer, timeout: Duration) -> Result<(), KafkaError> {
    producer.flush(timeout)
}

/// `dealer_id` of a transaction's JSON, without parsing the whole object.
pub fn dealer_key(json: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(json).ok()?;
    let at = s.find("\"dealer_id\"")? + "\"dealer_id\"".len();
    let rest = s[at..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    rest.split('"').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_dealer() {
        assert_eq!(
            dealer_key(br#"{"transaction_id":"x","dealer_id" : "D0042","x":1}"#),
            Some("D0042")
        );
        assert_eq!(dealer_key(br#"{"dealer":"D1"}"#), None);
    }
}
