#![cfg(feature = "services")]
//! `GET /api/stream_car_transactions`: with a seed, the stream is the engine's generator, in
//! NDJSON and in SSE; bad parameters are named; `publish=true` puts the same records in Kafka.

mod common;

use std::time::Duration;

use carflow_engine::generator::{Clock, Generator, GeneratorConfig};
use common::{Answer, Api, Kafka, KafkaExt, settings, wait_for};
use futures::StreamExt;

/// The first `n` transactions of the engine's generator for `config`, as JSON text.
fn expected(config: GeneratorConfig, n: usize) -> Vec<String> {
    Generator::new(config).json_lines(n)
}

async fn get(api: &Api, query: &str, accept: Option<&str>) -> reqwest::Response {
    let mut r = api
        .http
        .get(api.at(&format!("/api/stream_car_transactions{query}")));
    if let Some(a) = accept {
        r = r.header("accept", a);
    }
    r.send().await.expect("GET stream")
}

/// The `data:` payloads, `id:` values and event names of an SSE body.
fn parse_sse(text: &str) -> (Vec<String>, Vec<u64>, Vec<String>) {
    let (mut data, mut ids, mut events) = (Vec::new(), Vec::new(), Vec::new());
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut event = "message".to_string();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("data: ") {
                if event == "message" {
                    data.push(v.to_string());
                }
            } else if let Some(v) = line.strip_prefix("id: ") {
                ids.push(v.parse().unwrap());
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = v.to_string();
            }
        }
        events.push(event);
    }
    (data, ids, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_with_a_seed_is_the_engine_generator() {
    let api = Api::start(settings(common::DEAD_BROKER, "unused")).await;
    let r = get(&api, "?seed=7&count=300&rate=10000", None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    assert_eq!(r.headers()["x-carflow-seed"], "7");
    let text = r.text().await.unwrap();
    let got: Vec<&str> = text.lines().collect();
    let want = expected(
        GeneratorConfig {
            seed: 7,
            ..Default::default()
        },
        300,
    );
    assert_eq!(got.len(), 300);
    assert!(
        got == want,
        "the stream differs from Generator::new(seed 7)"
    );
    assert!(text.ends_with('\n'));
    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_with_a_seed_start_and_rate_is_the_engine_generator() {
    let api = Api::start(settings(common::DEAD_BROKER, "unused")).await;
    let r = get(
        &api,
        "?seed=11&count=120&rate=5000&start=2026-06-01T12:00:00Z&mean_per_hour=20000",
        Some("text/event-stream"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    let (data, ids, events) = parse_sse(&text);
    let want = expected(
        GeneratorConfig {
            seed: 11,
            clock: Clock::Simulated {
                start_ms: 1_780_315_200_000,
                mean_per_hour: 20_000.0,
            },
        },
        120,
    );
    assert!(data == want, "the SSE stream differs from the generator");
    assert_eq!(ids, (1..=120).collect::<Vec<u64>>());
    assert_eq!(events.last().map(String::as_str), Some("end"));
    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_live_stream_ends_when_the_client_leaves() {
    let api = Api::start(settings(common::DEAD_BROKER, "unused")).await;
    let r = get(&api, "?rate=2000", None).await;
    assert_eq!(r.status(), 200);
    let seed = r.headers()["x-carflow-seed"].to_str().unwrap().to_string();
    assert!(seed.parse::<u64>().is_ok());
    let mut body = r.bytes_stream();
    let mut buf = Vec::new();
    while buf.iter().filter(|b| **b == b'\n').count() < 50 {
        buf.extend_from_slice(&body.next().await.expect("more").unwrap());
    }
    let now = chrono::Utc::now();
    for line in buf.split(|b| *b == b'\n').take(50) {
        let t: serde_json::Value = serde_json::from_slice(line).unwrap();
        let sold_at: chrono::DateTime<chrono::Utc> =
            t["sold_at"].as_str().unwrap().parse().unwrap();
        assert!(
            (now - sold_at).num_seconds().abs() < 3600,
            "not a live timestamp: {sold_at}"
        );
    }
    assert_eq!(api.metric("carflow_api_streams ").await, Some(1.0));
    drop(body);
    wait_for("the stream to close", Duration::from_secs(30), || async {
        api.metric("carflow_api_streams ").await == Some(0.0)
    })
    .await;
    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_400_naming_the_parameter() {
    let api = Api::start(settings(common::DEAD_BROKER, "unused")).await;
    for (query, param) in [
        ("?rate=0", "rate"),
        ("?rate=20000", "rate"),
        ("?rate=abc", "rate"),
        ("?count=0", "count"),
        ("?count=2000000", "count"),
        ("?seed=x", "seed"),
        ("?start=today", "start"),
        ("?mean_per_hour=0", "mean_per_hour"),
        ("?publish=maybe", "publish"),
        ("?sed=7", "sed"),
    ] {
        let a = Answer::read(get(&api, query, None).await).await;
        assert_eq!(a.status, 400, "{query}: {}", a.text);
        assert_eq!(a.json["detail"]["parameter"], param, "{query}: {}", a.text);
        assert!(
            a.json["error"].as_str().unwrap().contains(param),
            "{}",
            a.text
        );
    }
    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_puts_the_streamed_transactions_in_kafka() {
    let kafka = Kafka::get();
    let topic = kafka.topic("api-publish", 3).await;
    let api = Api::start(settings(&kafka.brokers, &topic.name)).await;
    let r = get(&api, "?seed=3&count=40&rate=10000&publish=true", None).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let want = expected(
        GeneratorConfig {
            seed: 3,
            ..Default::default()
        },
        40,
    );
    assert!(text.lines().collect::<Vec<_>>() == want, "{text}");
    let mut got: Vec<(Option<String>, Vec<u8>)> = kafka
        .consume(&topic.name, 40)
        .await
        .into_iter()
        .map(|c| (c.key, c.payload))
        .collect();
    let mut want: Vec<(Option<String>, Vec<u8>)> = want
        .iter()
        .map(|t| (Some(common::dealer_of(t)), t.as_bytes().to_vec()))
        .collect();
    got.sort();
    want.sort();
    assert!(
        got == want,
        "the published records differ from the streamed ones"
    );
    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_with_kafka_down_ends_the_stream_with_an_error() {
    let api = Api::start(settings(common::DEAD_BROKER, "unused")).await;
    let r = get(
        &api,
        "?seed=3&count=5&publish=true",
        Some("text/event-stream"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let (data, _, events) = parse_sse(&r.text().await.unwrap());
    assert!(
        data.is_empty(),
        "nothing Kafka did not take is streamed: {data:?}"
    );
    assert_eq!(events, ["error"]);
    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams() {
    let api = Api::start(settings(common::DEAD_BROKER, "unused")).await;
    let r = get(&api, "?rate=1", Some("text/event-stream")).await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let first = body.next().await.expect("the first event").unwrap();
    assert!(first.starts_with(b"id: 1\n"), "{first:?}");
    api.stop()
        .await
        .expect("serve returns Ok after a graceful shutdown");
    // The stream ends (cleanly or cut), it does not hang.
    while let Some(Ok(_)) = body.next().await {}
}
