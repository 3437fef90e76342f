#![cfg(feature = "services")]
//! `/health`, `/metrics` and `/openapi.json`.

mod common;

use common::{Answer, Api, DEAD_BROKER, Kafka, settings, transactions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_whether_kafka_and_the_topic_are_there() {
    let kafka = Kafka::get();
    let topic = kafka.topic("api-health", 3).await;
    let api = Api::start(settings(&kafka.brokers, &topic.name)).await;
    let a = Answer::read(api.http.get(api.at("/health")).send().await.unwrap()).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json["status"], "ok");
    assert_eq!(a.json["kafka"]["partitions"], 3);
    api.stop().await.unwrap();

    let api = Api::start(settings(&kafka.brokers, "carflow-no-such-topic")).await;
    let a = Answer::read(api.http.get(api.at("/health")).send().await.unwrap()).await;
    assert_eq!(a.status, 503, "{}", a.text);
    assert!(
        a.json["error"]
            .as_str()
            .unwrap()
            .contains("carflow-no-such-topic"),
        "{}",
        a.text
    );
    api.stop().await.unwrap();

    let api = Api::start(settings(DEAD_BROKER, "car-transactions-logs")).await;
    let a = Answer::read(api.http.get(api.at("/health")).send().await.unwrap()).await;
    assert_eq!(a.status, 503, "{}", a.text);
    assert_eq!(a.json["status"], "unavailable");
    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_records() {
    let kafka = Kafka::get();
    let topic = kafka.topic("api-metrics", 3).await;
    let api = Api::start(settings(&kafka.brokers, &topic.name)).await;
    let body = transactions(20, 4).join("\n") + "\nbroken\n";
    let a = api.post("application/x-ndjson", body).await;
    assert_eq!(a.status, 207, "{}", a.text);
    let a = api.post("text/csv", "a,b").await;
    assert_eq!(a.status, 415);
    let _ = api.http.get(api.at("/no/such/path")).send().await.unwrap();
    let text = api
        .http
        .get(api.at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "carflow_api_requests_total{route=\"/api/logs\",method=\"POST\",status=\"207\"} 1",
        "carflow_api_requests_total{route=\"/api/logs\",method=\"POST\",status=\"415\"} 1",
        "carflow_api_requests_total{route=\"other\",method=\"GET\",status=\"404\"} 1",
        "carflow_api_records_accepted_total 4",
        "carflow_api_records_rejected_total 1",
        "carflow_api_records_failed_total 0",
        "carflow_api_kafka_errors_total 0",
        "carflow_api_in_flight 0",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route() {
    let api = Api::start(settings(DEAD_BROKER, "unused")).await;
    let a = Answer::read(api.http.get(api.at("/openapi.json")).send().await.unwrap()).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert!(a.json["openapi"].as_str().unwrap().starts_with("3."));
    for route in carflow_api::metrics::ROUTES {
        assert!(
            a.json["paths"].get(route).is_some(),
            "{route} is not documented"
        );
    }
    for status in ["200", "207", "400", "401", "413", "415", "422", "503"] {
        assert!(
            a.json["paths"]["/api/logs"]["post"]["responses"]
                .get(status)
                .is_some(),
            "POST /api/logs {status} is not documented"
        );
    }
    api.stop().await.unwrap();
}
