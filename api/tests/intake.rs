#![cfg(feature = "services")]
//! `POST /api/logs` against the real Kafka broker: records go in byte for byte, keyed by dealer,
//! and every error path answers with its status and a JSON error.

mod common;

use std::time::Duration;

use carflow_engine::config::Secret;
use common::{
    Answer, Api, DEAD_BROKER, Kafka, KafkaExt, dealer_of, settings, transactions, wait_for,
};

const JSON: &str = "application/json";
const NDJSON: &str = "application/x-ndjson";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_transaction_lands_in_kafka_intact_and_keyed_by_dealer() {
    let kafka = Kafka::get();
    let topic = kafka.topic("api-single", 3).await;
    let api = Api::start(settings(&kafka.brokers, &topic.name)).await;
    let t = &transactions(1, 1)[0];
    let a = api.post(JSON, t.clone()).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json["accepted"], 1);
    assert_eq!(a.json["rejected"], serde_json::json!([]));
    assert_eq!(a.json["not_accepted"], serde_json::json!([]));
    let got = kafka.consume(&topic.name, 1).await;
    assert_eq!(got[0].payload, t.as_bytes());
    assert_eq!(got[0].key.as_deref(), Some(dealer_of(t).as_str()));
    assert_eq!(
        a.json["partitions"][got[0].partition.to_string()],
        1,
        "{}",
        a.text
    );
    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_lines_are_produced_or_rejected_with_their_line_numbers() {
    let kafka = Kafka::get();
    let topic = kafka.topic("api-ndjson", 3).await;
    let api = Api::start(settings(&kafka.brokers, &topic.name)).await;
    let good = transactions(2, 200);
    let wrong_type = good[0].replace("\"mileage_km\":", "\"mileage_km\":\"far\",\"_was\":");
    let missing = good[1].replace("\"price\":", "\"_price\":");
    let mut lines: Vec<String> = good.clone();
    // Line numbers are 1-based lines of the body; blank lines count but are skipped.
    lines.insert(10, "{\"transaction_id\": \"x\", \"sold_at\": ".into()); // line 11
    lines.insert(20, wrong_type); // line 21
    lines.insert(30, String::new()); // line 31, blank
    lines.insert(40, missing); // line 41
    let body = lines.join("\n") + "\n";
    let a = api.post(NDJSON, body).await;
    assert_eq!(a.status, 207, "{}", a.text);
    assert_eq!(a.json["accepted"], 200);
    let rejected = a.lines("rejected");
    let numbers: Vec<u64> = rejected.iter().map(|r| r.0).collect();
    assert_eq!(numbers, [11, 21, 41], "{}", a.text);
    assert!(rejected[0].1.starts_with("malformed JSON"), "{rejected:?}");
    assert!(
        rejected[1].1.contains("schema violation") && rejected[1].1.contains("far"),
        "{rejected:?}"
    );
    assert_eq!(
        rejected[2].1,
        "missing required field `price` (or it is null)"
    );

    let mut got = kafka.consume(&topic.name, 200).await;
    let mut per_partition = std::collections::BTreeMap::<String, u64>::new();
    for c in &got {
        *per_partition.entry(c.partition.to_string()).or_default() += 1;
    }
    assert_eq!(a.json["partitions"], serde_json::json!(per_partition));
    let mut want: Vec<(Option<String>, Vec<u8>)> = good
        .iter()
        .map(|t| (Some(dealer_of(t)), t.as_bytes().to_vec()))
        .collect();
    let mut got: Vec<(Option<String>, Vec<u8>)> =
        got.drain(..).map(|c| (c.key, c.payload)).collect();
    want.sort();
    got.sort();
    assert!(
        got == want,
        "the records in Kafka differ from the ones posted"
    );
    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_without_a_valid_record_is_422_and_sends_nothing() {
    let kafka = Kafka::get();
    let topic = kafka.topic("api-none", 3).await;
    let api = Api::start(settings(&kafka.brokers, &topic.name)).await;
    let a = api.post(NDJSON, "{\"a\":1}\nnot json\n[1,2]\n").await;
    assert_eq!(a.status, 422, "{}", a.text);
    assert_eq!(a.json["accepted"], 0);
    assert!(a.json["error"].as_str().is_some(), "{}", a.text);
    let numbers: Vec<u64> = a.lines("rejected").iter().map(|r| r.0).collect();
    assert_eq!(numbers, [1, 2, 3]);
    // A single object that parses but breaks the schema is a rejected line too, not a 400.
    let a = api.post(JSON, "{\"transaction_id\": 5}").await;
    assert_eq!(a.status, 422, "{}", a.text);
    assert_eq!(a.lines("rejected")[0].0, 1);
    assert_eq!(kafka.record_count(&topic.name).await, 0);
    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_errors_answer_with_their_status_and_a_json_error() {
    let kafka = Kafka::get();
    let topic = kafka.topic("api-errors", 3).await;
    let mut s = settings(&kafka.brokers, &topic.name);
    s.max_body_bytes = 4096;
    let api = Api::start(s).await;
    let t = &transactions(3, 1)[0];
    let is_error = |a: &Answer| {
        assert!(
            a.json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{}",
            a.text
        );
        assert!(a.json.get("detail").is_some(), "{}", a.text);
    };
    // 413: by Content-Length, and by counting a chunked body (no Content-Length).
    let big = format!("{t}\n").repeat(20);
    let a = api.post(NDJSON, big.clone()).await;
    assert_eq!(a.status, 413, "{}", a.text);
    assert_eq!(a.json["detail"]["max_body_bytes"], 4096);
    is_error(&a);
    let chunks: Vec<Result<String, std::io::Error>> =
        (0..20).map(|_| Ok(format!("{t}\n"))).collect();
    let a = api
        .post(
            NDJSON,
            reqwest::Body::wrap_stream(futures::stream::iter(chunks)),
        )
        .await;
    assert_eq!(a.status, 413, "{}", a.text);
    // 415: wrong or missing content type.
    let a = api.post("text/plain", t.clone()).await;
    assert_eq!(a.status, 415, "{}", a.text);
    is_error(&a);
    let r = api
        .http
        .post(api.at("/api/logs"))
        .body(t.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // 400: empty, not JSON, not one object.
    for body in ["", "   \n", "{\"transaction_id\": ", "hello", "[{}]"] {
        let a = api.post(JSON, body).await;
        assert_eq!(a.status, 400, "{body:?}: {}", a.text);
        is_error(&a);
    }
    let a = api.post(NDJSON, "\n\n").await;
    assert_eq!(a.status, 400, "{}", a.text);
    // 404 and 405 are JSON too.
    let a = Answer::read(api.http.get(api.at("/nope")).send().await.unwrap()).await;
    assert_eq!(a.status, 404);
    is_error(&a);
    let a = Answer::read(api.http.get(api.at("/api/logs")).send().await.unwrap()).await;
    assert_eq!(a.status, 405, "{}", a.text);
    is_error(&a);
    assert_eq!(kafka.record_count(&topic.name).await, 0);
    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_writes_need_the_bearer() {
    let kafka = Kafka::get();
    let topic = kafka.topic("api-token", 3).await;
    let token = "tok-3f9a1c";
    let mut s = settings(&kafka.brokers, &topic.name);
    s.token = Secret(token.into());
    let api = Api::start(s).await;
    let t = &transactions(4, 1)[0];
    let post = |auth: Option<&str>| {
        let mut r = api
            .http
            .post(api.at("/api/logs"))
            .header("content-type", JSON)
            .body(t.clone());
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        async move { Answer::read(r.send().await.unwrap()).await }
    };
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer tok-3f9a1"),
        Some(token),
    ] {
        let a = post(auth).await;
        assert_eq!(a.status, 401, "{auth:?}: {}", a.text);
        assert!(a.json["error"].is_string(), "{}", a.text);
        assert!(!a.text.contains(token), "the token leaked: {}", a.text);
        assert!(
            a.header("www-authenticate")
                .is_some_and(|h| h.starts_with("Bearer"))
        );
    }
    // Authentication comes first: no hint about the body without the token.
    let a = Answer::read(
        api.http
            .post(api.at("/api/logs"))
            .header("content-type", "text/plain")
            .body("x")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 401);
    let a = post(Some(&format!("Bearer {token}"))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    // Publishing from the stream writes to Kafka too.
    let r = api
        .http
        .get(api.at("/api/stream_car_transactions?count=1&publish=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Reading the stream does not.
    let r = api
        .http
        .get(api.at("/api/stream_car_transactions?count=1&rate=100"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(kafka.consume(&topic.name, 1).await[0].payload, t.as_bytes());
    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_kafka_down_nothing_is_acknowledged() {
    let api = Api::start(settings(DEAD_BROKER, "car-transactions-logs")).await;
    let good = transactions(5, 3);
    let body = format!("{}\n{}\nbroken\n{}\n", good[0], good[1], good[2]);
    let a = api.post(NDJSON, body).await;
    assert_eq!(a.status, 503, "{}", a.text);
    assert_eq!(a.json["accepted"], 0);
    assert_eq!(a.json["partitions"], serde_json::json!({}));
    assert!(a.header("retry-after").is_some());
    assert!(a.json["error"].as_str().is_some(), "{}", a.text);
    let not: Vec<u64> = a.lines("not_accepted").iter().map(|r| r.0).collect();
    assert_eq!(not, [1, 2, 4], "{}", a.text);
    assert!(a.lines("not_accepted")[0].1.contains("kafka"), "{}", a.text);
    assert_eq!(a.lines("rejected")[0].0, 3);
    let h = Answer::read(api.http.get(api.at("/health")).send().await.unwrap()).await;
    assert_eq!(h.status, 503, "{}", h.text);
    assert_eq!(
        api.metric("carflow_api_records_accepted_total ").await,
        Some(0.0)
    );
    assert_eq!(
        api.metric("carflow_api_records_failed_total ").await,
        Some(3.0)
    );
    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_in_flight_the_answer_is_503_and_nothing_is_sent() {
    // A broker that never answers keeps the first request's records in flight until the delivery
    // timeout; meanwhile a second request finds no room.
    let mut s = settings(DEAD_BROKER, "car-transactions-logs");
    s.max_in_flight = 5;
    s.delivery_timeout = Duration::from_secs(10);
    let api = Api::start(s).await;
    let body = transactions(6, 5).join("\n");
    let first = {
        let (http, url) = (api.http.clone(), api.at("/api/logs"));
        let body = body.clone();
        tokio::spawn(async move {
            let r = http
                .post(url)
                .header("content-type", NDJSON)
                .body(body)
                .send()
                .await;
            Answer::read(r.unwrap()).await
        })
    };
    wait_for("5 records in flight", Duration::from_secs(15), || async {
        api.metric("carflow_api_in_flight ").await == Some(5.0)
    })
    .await;
    let a = api.post(NDJSON, transactions(7, 1).join("\n")).await;
    assert_eq!(a.status, 503, "{}", a.text);
    assert_eq!(a.header("retry-after"), Some("1"));
    assert_eq!(a.json["detail"]["max_in_flight"], 5, "{}", a.text);
    assert_eq!(api.metric("carflow_api_busy_total ").await, Some(1.0));
    let first = first.await.unwrap();
    assert_eq!(first.status, 503, "{}", first.text);
    assert_eq!(first.lines("not_accepted").len(), 5);
    assert_eq!(api.metric("carflow_api_in_flight ").await, Some(0.0));
    api.stop().await.unwrap();
}

/// Stops the shared broker: run alone with
/// `cargo test -p carflow-api --test intake -- --ignored --test-threads 1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops and starts the shared Kafka broker with deploy/services.sh"]
async fn when_the_real_broker_stops_and_comes_back() {
    let kafka = Kafka::get();
    let topic = kafka.topic("api-restart", 3).await;
    let api = Api::start(settings(&kafka.brokers, &topic.name)).await;
    let services = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/services.sh");
    let run = move |cmd: &'static str| {
        let status = std::process::Command::new(services)
            .args([cmd, "kafka"])
            .status()
            .expect("deploy/services.sh");
        assert!(status.success(), "deploy/services.sh {cmd} kafka failed");
    };
    let before = transactions(8, 10);
    let a = api.post(NDJSON, before.join("\n")).await;
    assert_eq!(a.status, 200, "{}", a.text);

    tokio::task::spawn_blocking(move || run("down"))
        .await
        .unwrap();
    let during = transactions(9, 10);
    let a = api.post(NDJSON, during.join("\n")).await;
    let run = move |cmd: &'static str| {
        std::process::Command::new(services)
            .args([cmd, "kafka"])
            .status()
            .map(|s| s.success())
    };
    let up = tokio::task::spawn_blocking(move || run("up"))
        .await
        .unwrap();
    assert!(
        matches!(up, Ok(true)),
        "deploy/services.sh up kafka failed: {up:?}"
    );
    assert_eq!(a.status, 503, "{}", a.text);
    assert_eq!(a.json["accepted"], 0, "{}", a.text);
    assert_eq!(a.lines("not_accepted").len(), 10);

    let after = transactions(10, 10);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let a = api.post(NDJSON, after.join("\n")).await;
        if a.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the intake did not accept again within 120s: {}",
            a.text
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Every acknowledged record is in the topic. Records refused while the broker was down or
    // starting may or may not be there (the client was told to send them again).
    let n = kafka.record_count(&topic.name).await as usize;
    let got = kafka.consume(&topic.name, n).await;
    let payloads: std::collections::HashSet<Vec<u8>> = got.into_iter().map(|c| c.payload).collect();
    for t in before.iter().chain(after.iter()) {
        assert!(
            payloads.contains(t.as_bytes()),
            "an acknowledged record is missing"
        );
    }
    api.stop().await.unwrap();
}
