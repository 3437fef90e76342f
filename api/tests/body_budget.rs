#![cfg(feature = "services")]
//! `POST /api/logs` with bodies over `api.max_in_flight_body_bytes`, against the real broker:
//! while one large body holds most of the budget, bodies that do not fit are answered 503 with
//! `Retry-After` and a JSON error (nothing sent), bodies that fit go through, and afterwards every
//! record any answer reported as accepted is in Kafka, and nothing else is.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Answer, Api, Kafka, KafkaExt, settings, transactions, wait_for};

const NDJSON: &str = "application/x-ndjson";
const MAX_BODY: usize = 64 << 10;
const BUDGET: usize = 72 << 10;

/// Records of `seed` joined into an NDJSON body of at most `limit` bytes (and at least one).
fn body_up_to(seed: u64, limit: usize) -> (Vec<String>, String) {
    let mut lines = Vec::new();
    let mut len = 0;
    for t in transactions(seed, limit / 300 + 1) {
        if !lines.is_empty() && len + t.len() + 1 > limit {
            break;
        }
        len += t.len() + 1;
        lines.push(t);
    }
    let body = lines.iter().map(|l| format!("{l}\n")).collect();
    (lines, body)
}

fn assert_busy(a: &Answer) {
    assert_eq!(a.status, 503, "{}", a.text);
    assert_eq!(a.header("retry-after"), Some("1"), "{}", a.text);
    assert_eq!(a.header("connection"), Some("close"), "{}", a.text);
    assert!(
        a.json["error"]
            .as_str()
            .is_some_and(|e| e.contains("api.max_in_flight_body_bytes")),
        "{}",
        a.text
    );
    assert_eq!(
        a.json["detail"]["max_in_flight_body_bytes"], BUDGET,
        "{}",
        a.text
    );
    assert!(a.json.get("accepted").is_none(), "{}", a.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_beyond_the_byte_budget_are_503_and_nothing_unacknowledged_is_accepted() {
    let kafka = Kafka::get();
    let topic = kafka.topic("api-body-budget", 3).await;
    let mut s = settings(&kafka.brokers, &topic.name);
    s.max_body_bytes = MAX_BODY;
    s.max_in_flight_body_bytes = BUDGET;
    let api = Api::start(s).await;

    // A: a large body whose Content-Length reserves its bytes; half of it is sent, the rest waits.
    let (a_lines, a_body) = body_up_to(1, MAX_BODY);
    let free = BUDGET - a_body.len();
    assert!(free < MAX_BODY / 4, "{free}");
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, std::io::Error>>();
    let a_task = {
        let (http, url, len) = (api.http.clone(), api.at("/api/logs"), a_body.len());
        tokio::spawn(async move {
            let r = http
                .post(url)
                .header("content-type", NDJSON)
                .header("content-length", len)
                .body(reqwest::Body::wrap_stream(rx))
                .send()
                .await
                .expect("POST A");
            Answer::read(r).await
        })
    };
    let a_bytes = Bytes::from(a_body.clone());
    let half = a_bytes.len() / 2;
    tx.unbounded_send(Ok(a_bytes.slice(..half))).unwrap();
    wait_for(
        "A's bytes to be reserved",
        Duration::from_secs(30),
        || async { api.metric("carflow_api_body_bytes ").await == Some(a_body.len() as f64) },
    )
    .await;

    // B1..B3: bodies larger than what is left, concurrently: 503, nothing sent. C fits: 200.
    let (b_lines, b_body) = body_up_to(2, free + 2048);
    assert!(b_body.len() > free);
    let (c_lines, c_body) = body_up_to(3, free / 2);
    let (b1, b2, b3, c) = tokio::join!(
        api.post(NDJSON, b_body.clone()),
        api.post(NDJSON, b_body.clone()),
        api.post(NDJSON, b_body.clone()),
        api.post(NDJSON, c_body.clone()),
    );
    for b in [&b1, &b2, &b3] {
        assert_busy(b);
        assert_eq!(b.json["detail"]["body_bytes"], b_body.len(), "{}", b.text);
    }
    assert_eq!(c.status, 200, "{}", c.text);
    assert_eq!(c.json["accepted"], c_lines.len(), "{}", c.text);
    // A chunked body (no Content-Length) is counted chunk by chunk and refused the same way.
    let chunks: Vec<Result<String, std::io::Error>> = b_body
        .as_bytes()
        .chunks(1024)
        .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
        .collect();
    let d = api
        .post(
            NDJSON,
            reqwest::Body::wrap_stream(futures::stream::iter(chunks)),
        )
        .await;
    assert_busy(&d);
    assert_eq!(api.metric("carflow_api_busy_total ").await, Some(4.0));
    assert_eq!(kafka.record_count(&topic.name).await, c_lines.len() as i64);

    // A completes; its bytes are released, and B now fits.
    tx.unbounded_send(Ok(a_bytes.slice(half..))).unwrap();
    drop(tx);
    let a = a_task.await.unwrap();
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json["accepted"], a_lines.len(), "{}", a.text);
    let b = api.post(NDJSON, b_body.clone()).await;
    assert_eq!(b.status, 200, "{}", b.text);
    assert_eq!(b.json["accepted"], b_lines.len(), "{}", b.text);
    assert_eq!(api.metric("carflow_api_body_bytes ").await, Some(0.0));

    // Exactly the records of the answers that said accepted are in Kafka.
    let accepted = a_lines.len() + b_lines.len() + c_lines.len();
    let mut got: Vec<Vec<u8>> = kafka
        .consume(&topic.name, accepted)
        .await
        .into_iter()
        .map(|c| c.payload)
        .collect();
    let mut want: Vec<Vec<u8>> = a_lines
        .iter()
        .chain(&b_lines)
        .chain(&c_lines)
        .map(|l| l.as_bytes().to_vec())
        .collect();
    got.sort();
    want.sort();
    assert!(got == want, "Kafka holds other records than those accepted");
    api.stop().await.unwrap();
}
