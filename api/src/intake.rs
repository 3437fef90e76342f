//! `POST /api/logs`: transactions in, Kafka's acknowledgements out.
//!
//! In order: the bearer token (401), the content type (415), the body size (413, before and
//! while reading), room for the body's bytes in `api.max_in_flight_body_bytes` (503 +
//! `Retry-After`, before reading when `Content-Length` says the size, else chunk by chunk; the
//! bytes are held until the answer is ready), the body's shape (400), each record against the
//! engine's schema (rejected lines), room in the in-flight limiter (503 + `Retry-After`, nothing
//! sent), then every valid
//! record is produced and the answer waits for Kafka. A record is counted in `accepted` only once
//! Kafka acknowledged it; one Kafka did not take is listed in `not_accepted` and the answer is
//! 503. Room is reserved for `min(valid records, api.max_in_flight)` records at once, all or
//! nothing; a larger body is sent in windows of that size. Answers given before the body was read
//! to its end (401, 415, 413, 503 for body bytes) carry `Connection: close`. Status codes of a body that was read:
//!
//! | status | when |
//! |---|---|
//! | 200 | every record accepted |
//! | 207 | some accepted, some rejected by validation (`rejected` lists them) |
//! | 422 | no valid record |
//! | 503 | Kafka did not acknowledge some valid records (`not_accepted`), or the service is busy |

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::Serialize;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

use crate::error::{HttpError, json_response};
use crate::kafka::Outgoing;
use crate::limits::{BodyBytes, OverBudget};
use crate::state::Service;
use crate::validate::{BodyFormat, LineError, Validated, validate};

/// Seconds a client should wait before retrying after Kafka failed.
const RETRY_AFTER_KAFKA_SECS: u64 = 5;
/// Seconds a client should wait before retrying when the service is busy.
const RETRY_AFTER_BUSY_SECS: u64 = 1;

/// The answer to a body that was read and split into records.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IntakeAnswer {
    /// Why the request did not fully succeed (absent on 200 and 207).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Records Kafka acknowledged.
    pub accepted: usize,
    /// Lines refused by validation, with the reason.
    pub rejected: Vec<LineError>,
    /// Valid lines Kafka did not acknowledge (send them again later).
    pub not_accepted: Vec<LineError>,
    /// Accepted records per Kafka partition.
    pub partitions: BTreeMap<String, usize>,
}

/// The request's headers that matter to the intake.
#[derive(Debug, Clone, Default)]
pub struct IntakeHeaders {
    /// `Authorization`.
    pub authorization: Option<String>,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Content-Length`.
    pub content_length: Option<u64>,
}

/// Handle one `POST /api/logs`.
pub async fn post_logs<S, B>(svc: Arc<Service>, headers: IntakeHeaders, body: S) -> Response
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    match intake(&svc, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn intake<S, B>(svc: &Service, headers: IntakeHeaders, body: S) -> Result<Response, HttpError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    // Answers given before the body is read to its end close the connection.
    svc.auth
        .check(headers.authorization.as_deref())
        .map_err(HttpError::closing)?;
    let format = BodyFormat::from_content_type(headers.content_type.as_deref())
        .map_err(HttpError::closing)?;
    // Held until this function returns: the body is read, validated and produced under it.
    let held = svc.body_budget.holder();
    let body = read_body(
        body,
        headers.content_length,
        svc.settings.max_body_bytes,
        &held,
    )
    .await
    .map_err(|mut e| {
        if e.status == StatusCode::SERVICE_UNAVAILABLE {
            svc.metrics.busy.inc();
            e.detail["max_in_flight_body_bytes"] = svc.settings.max_in_flight_body_bytes.into();
        }
        e.closing()
    })?;
    let max_message_bytes = svc.settings.max_message_bytes;
    let (body, validated) = tokio::task::spawn_blocking(move || {
        validate(&body, format, max_message_bytes).map(|v| (body, v))
    })
    .await
    .map_err(|e| {
        HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal: validation task failed: {e}"),
        )
    })??;
    svc.metrics
        .records_rejected
        .inc_by(validated.rejected.len() as u64);
    if validated.records.is_empty() {
        let answer = IntakeAnswer {
            error: Some("no valid record; see `rejected`".into()),
            rejected: validated.rejected,
            ..Default::default()
        };
        return Ok(json_response(StatusCode::UNPROCESSABLE_ENTITY, &answer));
    }
    let reservation = svc
        .writer
        .try_reserve(validated.records.len())
        .map_err(|busy| {
            svc.metrics.busy.inc();
            HttpError::unavailable(
                "busy: too many records in flight to Kafka (api.max_in_flight); nothing was sent, retry later",
                RETRY_AFTER_BUSY_SECS,
            )
            .with_detail(serde_json::json!({
                "records": validated.records.len(),
                "available": busy.available,
                "max_in_flight": svc.settings.max_in_flight,
            }))
        })?;
    let outgoing: Vec<Outgoing<'_>> = validated
        .records
        .iter()
        .map(|r| Outgoing {
            key: &r.key,
            payload: &body[r.span.clone()],
        })
        .collect();
    let results = svc.writer.produce(&reservation, &outgoing).await;
    drop(reservation);
    Ok(answer(validated, results))
}

/// The answer for `validated` records and Kafka's `results`, one per record.
fn answer(validated: Validated, results: Vec<crate::kafka::Delivered>) -> Response {
    let mut a = IntakeAnswer {
        rejected: validated.rejected,
        ..Default::default()
    };
    for (record, result) in validated.records.iter().zip(results) {
        match result {
            Ok((partition, _offset)) => {
                a.accepted += 1;
                *a.partitions.entry(partition.to_string()).or_default() += 1;
            }
            Err(reason) => a.not_accepted.push(LineError {
                line: record.line,
                reason,
            }),
        }
    }
    let status = if !a.not_accepted.is_empty() {
        tracing::warn!(
            accepted = a.accepted,
            not_accepted = a.not_accepted.len(),
            reason = %a.not_accepted[0].reason,
            "kafka did not acknowledge every record"
        );
        a.error = Some(format!(
            "kafka did not acknowledge {} of {} valid records; they are listed in `not_accepted`, send them again later",
            a.not_accepted.len(),
            a.not_accepted.len() + a.accepted
        ));
        StatusCode::SERVICE_UNAVAILABLE
    } else if a.rejected.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::MULTI_STATUS
    };
    tracing::debug!(
        accepted = a.accepted,
        rejected = a.rejected.len(),
        %status,
        "intake"
    );
    let mut r = json_response(status, &a);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(RETRY_AFTER_KAFKA_SECS),
        );
    }
    r
}

/// Read at most `max` bytes of body; 413 beyond (before reading when `Content-Length` says so).
/// Every byte is first taken from `held`'s budget (all of `Content-Length` at once, else chunk by
/// chunk); 503 + `Retry-After` when the budget has no room.
pub async fn read_body<S, B>(
    body: S,
    content_length: Option<u64>,
    max: usize,
    held: &BodyBytes,
) -> Result<Bytes, HttpError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    let too_large = || {
        HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "body larger than api.max_body_bytes ({max} bytes); split it into several requests"
            ),
        )
        .with_detail(serde_json::json!({ "max_body_bytes": max }))
    };
    if content_length.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let busy = |over: OverBudget| {
        HttpError::unavailable(
            "busy: too many request body bytes are being processed (api.max_in_flight_body_bytes); nothing was sent, retry later",
            RETRY_AFTER_BUSY_SECS,
        )
        .with_detail(serde_json::json!({
            "body_bytes": over.wanted,
            "available": over.available,
        }))
    };
    if let Some(n) = content_length {
        // n <= max, a usize.
        held.try_add(n as usize).map_err(busy)?;
    }
    let hint = content_length.map_or(64 << 10, |n| n as usize).min(max);
    let mut buf = BytesMut::with_capacity(hint);
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| HttpError::bad_request(format!("cannot read the body: {e}")))?;
        let len = buf.len() + chunk.remaining();
        if len > max {
            return Err(too_large());
        }
        if len > held.held() {
            held.try_add(len - held.held()).map_err(busy)?;
        }
        buf.put(chunk);
    }
    Ok(buf.freeze())
}
