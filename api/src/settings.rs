//! What the HTTP service needs to run, taken from the shared [`Config`].
//!
//! [`ApiSettings::from_config`] reads `[api]`, `[kafka]` and `batch.max_message_bytes` (so the
//! intake refuses exactly the messages the engine would send to dead letters). Tests build the
//! struct directly. [`ApiSettings::validate`] lists every problem at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use carflow_engine::config::{Config, Secret};

/// How long Kafka has to acknowledge a record produced by the intake before the request answers
/// 503 for it (librdkafka `message.timeout.ms` of the API producer).
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `GET /health` waits for the cluster's metadata.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

/// Settings of the HTTP service.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiSettings {
    /// Bearer token required by `POST /api/logs` and by `GET /api/stream_car_transactions?publish=true`;
    /// empty means no authentication (allowed on loopback listeners only).
    pub token: Secret,
    /// Largest request body accepted; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Most records in flight to Kafka at once, over all requests; beyond it, 503 + `Retry-After`.
    pub max_in_flight: usize,
    /// Most open streams; beyond it, 429 + `Retry-After`.
    pub max_streams: usize,
    /// Most bytes of request bodies read or processed at once, over all requests; beyond it,
    /// 503 + `Retry-After`. At least `max_body_bytes`.
    pub max_in_flight_body_bytes: usize,
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Topic the records go to.
    pub topic: String,
    /// Extra librdkafka properties (from `kafka.properties`); the API's own settings win.
    pub kafka_properties: BTreeMap<String, String>,
    /// Time Kafka has to acknowledge a record (`message.timeout.ms`).
    pub delivery_timeout: Duration,
    /// A record larger than this is rejected (the engine's `batch.max_message_bytes`).
    pub max_message_bytes: usize,
    /// Time `/health` waits for Kafka.
    pub health_timeout: Duration,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

impl ApiSettings {
    /// The settings of `config`.
    pub fn from_config(config: &Config) -> Self {
        Self {
            token: config.api.token.clone(),
            max_body_bytes: config.api.max_body_bytes,
            max_in_flight: config.api.max_in_flight,
            max_streams: config.api.max_streams,
            max_in_flight_body_bytes: config.api.max_in_flight_body_bytes,
            brokers: config.kafka.brokers.clone(),
            topic: config.kafka.topic.clone(),
            kafka_properties: config.kafka.properties.clone(),
            delivery_timeout: DEFAULT_DELIVERY_TIMEOUT,
            max_message_bytes: config.batch.max_message_bytes,
            health_timeout: DEFAULT_HEALTH_TIMEOUT,
        }
    }

    /// Every problem that keeps these settings from serving on `listen`, or `Ok`.
    pub fn validate(&self, listen: SocketAddr) -> Result<(), Vec<String>> {
        let mut p = Vec::new();
        if !listen.ip().is_loopback() && self.token.0.is_empty() {
            p.push(format!(
                "api.token is required when listening on {listen} (not a loopback address); set CARFLOW_API_TOKEN"
            ));
        }
        if self.max_body_bytes == 0 {
            p.push("api.max_body_bytes must be at least 1 (default 8388608)".into());
        }
        if self.max_in_flight == 0 {
            p.push("api.max_in_flight must be at least 1 (default 10000)".into());
        }
        if self.max_streams == 0 {
            p.push("api.max_streams must be at least 1 (default 64)".into());
        }
        if self.max_in_flight_body_bytes < self.max_body_bytes {
            p.push(format!(
                "api.max_in_flight_body_bytes ({}) must be at least api.max_body_bytes ({}), or a body of the largest size could never be taken (default 67108864)",
                self.max_in_flight_body_bytes, self.max_body_bytes
            ));
        }
        if self.brokers.trim().is_empty() {
            p.push("kafka.brokers is empty; e.g. 127.0.0.1:9092".into());
        }
        if self.topic.trim().is_empty() {
            p.push("kafka.topic is empty; e.g. car-transactions-logs".into());
        }
        if self.delivery_timeout < Duration::from_millis(100) {
            p.push("the delivery timeout must be at least 100ms".into());
        }
        if p.is_empty() { Ok(()) } else { Err(p) }
    }

    /// librdkafka settings of the API producer: the engine's producer settings, `kafka.properties`,
    /// then the API's client id and delivery timeout.
    pub fn producer_properties(&self) -> BTreeMap<String, String> {
        let mut extra = self.kafka_properties.clone();
        extra.insert("client.id".into(), "carflow-api".into());
        extra.insert(
            "message.timeout.ms".into(),
            self.delivery_timeout.as_millis().to_string(),
        );
        extra
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_listener_needs_a_token() {
        let s = ApiSettings::default();
        assert!(s.validate("127.0.0.1:8080".parse().unwrap()).is_ok());
        let e = s.validate("0.0.0.0:8080".parse().unwrap()).unwrap_err();
        assert!(e[0].contains("api.token"), "{e:?}");
        let with_token = ApiSettings {
            token: Secret("t".into()),
            ..s
        };
        assert!(with_token.validate("0.0.0.0:8080".parse().unwrap()).is_ok());
    }

    #[test]
    fn the_resource_bounds_must_be_usable() {
        let ok = ApiSettings::default();
        let listen = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(ok.max_streams, 64);
        assert_eq!(ok.max_in_flight_body_bytes, 64 << 20);
        let bad = ApiSettings {
            max_streams: 0,
            max_in_flight_body_bytes: ok.max_body_bytes - 1,
            ..ok
        };
        let e = bad.validate(listen).unwrap_err();
        assert!(e.iter().any(|p| p.contains("api.max_streams")), "{e:?}");
        assert!(
            e.iter().any(|p| p.contains("api.max_in_flight_body_bytes")),
            "{e:?}"
        );
    }

    #[test]
    fn the_api_producer_times_out_deliveries() {
        let s = ApiSettings {
            delivery_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let p = carflow_engine::producer::producer_settings(&s.brokers, &s.producer_properties());
        assert_eq!(p["message.timeout.ms"], "2000");
        assert_eq!(p["acks"], "all");
        assert_eq!(p["client.id"], "carflow-api");
    }
}
