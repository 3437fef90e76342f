//! Test helpers: the real Kafka broker (reachable or one line saying how to start it), a topic per
//! test (deleted on drop), the API on an ephemeral loopback port (stopped on drop), generated
//! transactions, and `wait_for` instead of sleeps.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use carflow_api::ApiSettings;
use carflow_engine::generator::{Generator, GeneratorConfig};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

/// An address where nothing listens: a broker that is down.
pub const DEAD_BROKER: &str = "127.0.0.1:1";

#[allow(unused_imports)]
pub use carflow_testkit::kafka::{Kafka, Topic, wait_for};

/// What the API tests read back from Kafka.
pub trait KafkaExt {
    /// How many records `topic` holds (its end offsets summed).
    fn record_count(&self, topic: &str) -> impl std::future::Future<Output = i64> + Send;
    /// Every record of `topic` (it must hold exactly `n`), read from the beginning; panics after
    /// 60 s without them.
    fn consume(
        &self,
        topic: &str,
        n: usize,
    ) -> impl std::future::Future<Output = Vec<Consumed>> + Send;
}

impl KafkaExt for Kafka {
    async fn record_count(&self, topic: &str) -> i64 {
        let (k, t) = (self.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || k.end_offsets(&t).iter().sum())
            .await
            .expect("watermark task")
    }

    async fn consume(&self, topic: &str, n: usize) -> Vec<Consumed> {
        let (k, t) = (self.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || consume_blocking(&k, &t, n))
            .await
            .expect("consumer task")
    }
}

fn consume_blocking(k: &Kafka, topic: &str, n: usize) -> Vec<Consumed> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &k.brokers)
        .set("group.id", "carflow-api-tests")
        .set("enable.auto.commit", "false")
        .create()
        .expect("kafka consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .expect("assignment");
    }
    c.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "read {} of {n} records from {topic} in 60s",
            out.len()
        );
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.expect("consume");
            out.push(Consumed {
                partition: m.partition(),
                key: m
                    .key()
                    .map(|k| String::from_utf8(k.to_vec()).expect("utf-8 key")),
                payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            });
        }
    }
    assert_eq!(
        k.end_offsets(topic).iter().sum::<i64>(),
        n as i64,
        "{topic} holds more records than expected"
    );
    out
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Consumed {
    pub partition: i32,
    pub key: Option<String>,
    pub payload: Vec<u8>,
}

/// Settings for a test service on `brokers`/`topic`, with a short delivery timeout.
pub fn settings(brokers: &str, topic: &str) -> ApiSettings {
    ApiSettings {
        brokers: brokers.into(),
        topic: topic.into(),
        delivery_timeout: Duration::from_secs(3),
        health_timeout: Duration::from_secs(2),
        ..ApiSettings::default()
    }
}

/// The API running on an ephemeral loopback port; stopped when dropped.
pub struct Api {
    pub url: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), carflow_api::ServeError>>>,
}

impl Api {
    /// Start the service with `settings` on 127.0.0.1:0.
    pub async fn start(settings: ApiSettings) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(carflow_api::serve(settings, listener, shutdown.clone()));
        Self {
            url: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("http client"),
            shutdown,
            task: Some(task),
        }
    }

    /// `path` on the service.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// POST `body` to /api/logs with `content_type`.
    pub async fn post(&self, content_type: &str, body: impl Into<reqwest::Body>) -> Answer {
        let r = self
            .http
            .post(self.at("/api/logs"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("POST /api/logs");
        Answer::read(r).await
    }

    /// The value of a metric line starting with `prefix` (e.g. `carflow_api_in_flight `).
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let text = self
            .http
            .get(self.at("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Stop the service and return what `serve` returned.
    pub async fn stop(mut self) -> Result<(), carflow_api::ServeError> {
        self.shutdown.cancel();
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the service stops within 30s")
            .expect("serve task")
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An HTTP answer: status, headers, body as JSON (Null when it is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: serde_json::Value,
    pub text: String,
}

impl Answer {
    pub async fn read(r: reqwest::Response) -> Self {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Self {
            status,
            headers,
            json,
            text,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `(line, reason)` of a list of line errors (`rejected` or `not_accepted`).
    pub fn lines(&self, field: &str) -> Vec<(u64, String)> {
        self.json[field]
            .as_array()
            .unwrap_or_else(|| panic!("no `{field}` in {}", self.text))
            .iter()
            .map(|e| {
                (
                    e["line"].as_u64().expect("line"),
                    e["reason"].as_str().expect("reason").to_string(),
                )
            })
            .collect()
    }
}

/// `n` generated transactions (seeded), as JSON text.
pub fn transactions(seed: u64, n: usize) -> Vec<String> {
    Generator::new(GeneratorConfig {
        seed,
        ..Default::default()
    })
    .json_lines(n)
}

/// The `dealer_id` of a transaction's JSON.
pub fn dealer_of(json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).expect("json");
    v["dealer_id"].as_str().expect("dealer_id").to_string()
}
