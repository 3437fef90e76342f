//! The routes, the JSON answer for every rejection, and the per-request metrics and log line.
//!
//! | route | answer |
//! |---|---|
//! | `POST /api/logs` | see [`crate::intake`] |
//! | `GET /api/stream_car_transactions` | see [`crate::stream`] |
//! | `GET /health` | 200 when Kafka answers and the topic exists, else 503 |
//! | `GET /metrics` | Prometheus text |
//! | `GET /openapi.json` | the OpenAPI 3 description of all of this |
//!
//! Unknown paths get 404 and wrong methods 405, with the same `{"error", "detail"}` body as
//! every other error.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::error::{HttpError, json_response};
use crate::intake::{IntakeHeaders, post_logs};
use crate::metrics::route_of;
use crate::state::Service;
use crate::stream::get_stream;

/// How long a `/health` check of Kafka is reused.
const HEALTH_REUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// The OpenAPI 3 document served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Every route of the service, with JSON rejections, metrics and request logs.
pub fn routes(
    svc: Arc<Service>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone + Send + Sync + 'static
{
    let with_svc = {
        let svc = Arc::clone(&svc);
        warp::any().map(move || Arc::clone(&svc))
    };
    let logs = warp::path!("api" / "logs")
        .and(warp::post())
        .and(with_svc.clone())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .then(|svc, authorization, content_type, content_length, body| {
            let headers = IntakeHeaders {
                authorization,
                content_type,
                content_length,
            };
            post_logs(svc, headers, body)
        });
    let stream = warp::path!("api" / "stream_car_transactions")
        .and(warp::get())
        .and(with_svc.clone())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::optional::<String>("accept"))
        .and(warp::header::optional::<String>("authorization"))
        .map(get_stream);
    let health = warp::path!("health")
        .and(warp::get())
        .and(with_svc.clone())
        .then(health);
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_svc)
        .map(|svc: Arc<Service>| {
            svc.metrics
                .body_bytes
                .set(i64::try_from(svc.body_budget.in_use()).unwrap_or(i64::MAX));
            text(
                svc.metrics.encode(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        });
    let openapi = warp::path!("openapi.json")
        .and(warp::get())
        .map(|| text(OPENAPI.to_string(), "application/json"));
    let observed = Arc::clone(&svc.metrics);
    logs.or(stream)
        .unify()
        .or(health)
        .unify()
        .or(metrics)
        .unify()
        .or(openapi)
        .unify()
        .recover(recover)
        .unify()
        .with(warp::log::custom(move |info| {
            let status = info.status().as_u16();
            observed.request(
                info.path(),
                info.method().as_str(),
                status,
                info.elapsed().as_secs_f64(),
            );
            tracing::debug!(
                method = %info.method(),
                route = route_of(info.path()),
                status,
                elapsed_ms = info.elapsed().as_millis() as u64,
                "request"
            );
        }))
}

fn text(body: String, content_type: &'static str) -> Response {
    let mut r = Response::new(body.into());
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// `GET /health`: is Kafka reachable and does the topic exist?
async fn health(svc: Arc<Service>) -> Response {
    let check = {
        let mut last = svc.health.lock().await;
        match &*last {
            Some((at, r)) if at.elapsed() < HEALTH_REUSE => r.clone(),
            _ => {
                let (brokers, topic, timeout) = (
                    svc.settings.brokers.clone(),
                    svc.settings.topic.clone(),
                    svc.settings.health_timeout,
                );
                let r = tokio::task::spawn_blocking(move || {
                    carflow_engine::source::kafka::check_topic(&brokers, &topic, timeout)
                })
                .await
                .unwrap_or_else(|e| Err(format!("health check failed: {e}")));
                *last = Some((std::time::Instant::now(), r.clone()));
                r
            }
        }
    };
    let mut kafka = serde_json::json!({
        "brokers": svc.settings.brokers,
        "topic": svc.settings.topic,
    });
    match check {
        Ok(partitions) => {
            kafka["partitions"] = partitions.into();
            json_response(
                StatusCode::OK,
                &serde_json::json!({
                    "status": "ok",
                    "kafka": kafka,
                    "in_flight": svc.writer.reserved(),
                }),
            )
        }
        Err(e) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({
                "status": "unavailable",
                "error": e,
                "kafka": kafka,
                "in_flight": svc.writer.reserved(),
            }),
        ),
    }
}

/// Every rejection as a JSON error.
async fn recover(r: Rejection) -> Result<Response, Infallible> {
    let e = if r.is_not_found() {
        HttpError::new(StatusCode::NOT_FOUND, "no such endpoint; see /openapi.json")
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        HttpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this endpoint; see /openapi.json",
        )
    } else if let Some(q) = r.find::<warp::reject::InvalidQuery>() {
        HttpError::bad_request(format!("invalid query string: {q}"))
    } else if let Some(h) = r.find::<warp::reject::InvalidHeader>() {
        HttpError::bad_request(format!("invalid header: {h}"))
    } else {
        tracing::warn!(rejection = ?r, "unhandled rejection");
        HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal: {r:?}"),
        )
    };
    Ok(e.into_response())
}
