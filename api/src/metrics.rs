//! The service's metrics, served as Prometheus text at `GET /metrics`.
//!
//! Counted per request or per batch of records, never with per-record labels: the labels are the
//! route (a fixed set, `other` for anything else) and the status code.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The routes requests are counted under.
pub const ROUTES: [&str; 5] = [
    "/api/logs",
    "/api/stream_car_transactions",
    "/health",
    "/metrics",
    "/openapi.json",
];

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// One of [`ROUTES`], or `other`.
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Status code of the answer.
    pub status: u16,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// One of [`ROUTES`], or `other`.
    pub route: String,
}

/// Every metric of the service.
#[derive(Debug)]
pub struct ApiMetrics {
    registry: Registry,
    /// Requests answered, by route, method and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Seconds to the response head, by route (streams: time to the first byte).
    pub request_seconds: Family<RouteLabels, Histogram>,
    /// Records Kafka acknowledged (intake and published stream records).
    pub records_accepted: Counter,
    /// Posted records refused by validation (the engine's decoder).
    pub records_rejected: Counter,
    /// Valid records Kafka did not acknowledge (the client was told which).
    pub records_failed: Counter,
    /// Kafka errors (failed deliveries, producer errors).
    pub kafka_errors: Counter,
    /// Records sent to Kafka and not yet acknowledged.
    pub in_flight: Gauge,
    /// Requests turned away with 503 because `max_in_flight` or `max_in_flight_body_bytes` was
    /// reached.
    pub busy: Counter,
    /// Body bytes being read or processed now.
    pub body_bytes: Gauge,
    /// Streams refused with 429 because `max_streams` were open.
    pub streams_refused: Counter,
    /// Transactions written to stream clients.
    pub streamed: Counter,
    /// Open streams.
    pub streams: Gauge,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiMetrics {
    /// A fresh set, registered under `carflow_api_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("carflow_api");
        let m = Self {
            registry: Registry::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            records_accepted: Counter::default(),
            records_rejected: Counter::default(),
            records_failed: Counter::default(),
            kafka_errors: Counter::default(),
            in_flight: Gauge::default(),
            busy: Counter::default(),
            body_bytes: Gauge::default(),
            streams_refused: Counter::default(),
            streamed: Counter::default(),
            streams: Gauge::default(),
        };
        let r = &mut registry;
        r.register(
            "requests",
            "Requests answered, by route, method and status",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time to the response head, by route",
            m.request_seconds.clone(),
        );
        r.register(
            "records_accepted",
            "Records acknowledged by Kafka",
            m.records_accepted.clone(),
        );
        r.register(
            "records_rejected",
            "Posted records refused by validation",
            m.records_rejected.clone(),
        );
        r.register(
            "records_failed",
            "Valid records Kafka did not acknowledge",
            m.records_failed.clone(),
        );
        r.register(
            "kafka_errors",
            "Failed deliveries and producer errors",
            m.kafka_errors.clone(),
        );
        r.register(
            "in_flight",
            "Records sent to Kafka and not yet acknowledged",
            m.in_flight.clone(),
        );
        r.register(
            "busy",
            "Requests answered 503 because api.max_in_flight or api.max_in_flight_body_bytes was reached",
            m.busy.clone(),
        );
        r.register(
            "body_bytes",
            "Request body bytes being read or processed",
            m.body_bytes.clone(),
        );
        r.register(
            "streams_refused",
            "Streams answered 429 because api.max_streams were open",
            m.streams_refused.clone(),
        );
        r.register(
            "streamed",
            "Transactions written to stream clients",
            m.streamed.clone(),
        );
        r.register("streams", "Open streams", m.streams.clone());
        Self { registry, ..m }
    }

    /// Count one answered request.
    pub fn request(&self, path: &str, method: &str, status: u16, seconds: f64) {
        let route = route_of(path).to_string();
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                method: method.to_string(),
                status,
            })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabels { route })
            .observe(seconds);
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The route label of `path`: one of [`ROUTES`] or `other` (bounded cardinality).
pub fn route_of(path: &str) -> &'static str {
    ROUTES
        .iter()
        .find(|r| **r == path)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_paths_share_one_label() {
        let m = ApiMetrics::new();
        m.request("/api/logs", "POST", 200, 0.01);
        m.request("/wp-admin/x", "GET", 404, 0.001);
        m.request("/etc/passwd", "GET", 404, 0.001);
        m.records_accepted.inc_by(3);
        let text = m.encode();
        assert!(
            text.contains(
                "carflow_api_requests_total{route=\"/api/logs\",method=\"POST\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "carflow_api_requests_total{route=\"other\",method=\"GET\",status=\"404\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("carflow_api_records_accepted_total 3"),
            "{text}"
        );
    }
}
