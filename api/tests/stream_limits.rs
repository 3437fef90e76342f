//! `GET /api/stream_car_transactions` under pressure: beyond `api.max_streams` open streams the
//! answer is 429 with `Retry-After` while the open ones keep streaming; absurd numbers in the
//! query are a 400 naming the parameter, never a stream task that dies. No Kafka needed.

mod common;

use std::time::Duration;

use common::{Answer, Api, DEAD_BROKER, settings, wait_for};
use futures::StreamExt;

type Body = std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

async fn get(api: &Api, query: &str, accept: Option<&str>) -> reqwest::Response {
    let mut r = api
        .http
        .get(api.at(&format!("/api/stream_car_transactions{query}")));
    if let Some(a) = accept {
        r = r.header("accept", a);
    }
    r.send().await.expect("GET stream")
}

/// Read from `body` until `n` more newlines arrived (or the stream ends: then panic).
async fn read_lines(body: &mut Body, n: usize) {
    let mut seen = 0;
    while seen < n {
        let chunk = body
            .next()
            .await
            .expect("the stream goes on")
            .expect("stream chunk");
        seen += chunk.iter().filter(|b| **b == b'\n').count();
    }
}

async fn open(api: &Api, query: &str, accept: Option<&str>) -> Body {
    let r = get(api, query, accept).await;
    assert_eq!(r.status(), 200);
    Box::pin(r.bytes_stream())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_streams_the_answer_is_429_and_the_open_streams_go_on() {
    let mut s = settings(DEAD_BROKER, "unused");
    s.max_streams = 2;
    let api = Api::start(s).await;
    let mut first = open(&api, "?rate=500", None).await;
    let mut second = open(&api, "?rate=500", Some("text/event-stream")).await;
    read_lines(&mut first, 5).await;
    read_lines(&mut second, 5).await;

    // NDJSON, SSE, seeded and publishing requests alike are refused while two are open.
    for (query, accept) in [
        ("?rate=500", None),
        ("?seed=1&count=10", Some("text/event-stream")),
        ("?count=3&publish=true", None),
    ] {
        let a = Answer::read(get(&api, query, accept).await).await;
        assert_eq!(a.status, 429, "{query}: {}", a.text);
        assert_eq!(a.header("retry-after"), Some("5"), "{query}");
        assert_eq!(a.header("content-type"), Some("application/json"));
        assert!(
            a.json["error"]
                .as_str()
                .is_some_and(|e| e.contains("api.max_streams")),
            "{}",
            a.text
        );
        assert_eq!(a.json["detail"]["max_streams"], 2, "{}", a.text);
    }
    assert_eq!(
        api.metric("carflow_api_streams_refused_total ").await,
        Some(3.0)
    );

    // The open streams were not disturbed.
    read_lines(&mut first, 200).await;
    read_lines(&mut second, 200).await;
    assert_eq!(api.metric("carflow_api_streams ").await, Some(2.0));

    // A slot comes back when its client leaves.
    drop(first);
    wait_for(
        "the first stream to close",
        Duration::from_secs(30),
        || async { api.metric("carflow_api_streams ").await == Some(1.0) },
    )
    .await;
    let r = get(&api, "?seed=3&count=5&rate=1000", None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap().lines().count(), 5);
    // A stream that reached its count gave its slot back too.
    wait_for(
        "the counted stream to close",
        Duration::from_secs(30),
        || async { api.metric("carflow_api_streams ").await == Some(1.0) },
    )
    .await;
    let mut third = open(&api, "?rate=500", None).await;
    read_lines(&mut third, 5).await;
    read_lines(&mut second, 5).await;
    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_numbers_are_400_naming_the_parameter_and_start_no_stream() {
    let api = Api::start(settings(DEAD_BROKER, "unused")).await;
    for (query, param) in [
        ("?rate=1e-30", "rate"),
        ("?rate=0.000001", "rate"),
        ("?rate=-5", "rate"),
        ("?rate=NaN", "rate"),
        ("?rate=inf", "rate"),
        ("?rate=-inf", "rate"),
        ("?rate=1e308", "rate"),
        ("?rate=%20", "rate"),
        ("?count=-1", "count"),
        ("?count=1e6", "count"),
        ("?count=99999999999999999999", "count"),
        ("?seed=-7", "seed"),
        ("?seed=99999999999999999999", "seed"),
        ("?start=99999-01-01T00:00:00Z", "start"),
        ("?mean_per_hour=1e-30", "mean_per_hour"),
        ("?mean_per_hour=NaN", "mean_per_hour"),
        ("?mean_per_hour=inf", "mean_per_hour"),
        ("?mean_per_hour=1e300", "mean_per_hour"),
        ("?seed=1&rate=1e-30&count=5", "rate"),
    ] {
        let a = Answer::read(get(&api, query, Some("text/event-stream")).await).await;
        assert_eq!(a.status, 400, "{query}: {}", a.text);
        assert_eq!(a.json["detail"]["parameter"], param, "{query}: {}", a.text);
        assert!(
            a.json["error"].as_str().is_some_and(|e| e.contains(param)),
            "{query}: {}",
            a.text
        );
    }
    assert_eq!(api.metric("carflow_api_streams ").await, Some(0.0));
    assert_eq!(api.metric("carflow_api_streamed_total ").await, Some(0.0));

    // The slowest and fastest accepted rates stream (the first transaction is due at once).
    let mut slow = open(&api, "?rate=0.01&mean_per_hour=0.01&seed=5", None).await;
    read_lines(&mut slow, 1).await;
    let r = get(&api, "?rate=10000&mean_per_hour=1e9&count=2000", None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap().lines().count(), 2000);
    drop(slow);
    wait_for(
        "the slow stream to close",
        Duration::from_secs(30),
        || async { api.metric("carflow_api_streams ").await == Some(0.0) },
    )
    .await;
    api.stop().await.unwrap();
}
