//! Posted bodies → records: split, check with the engine's decoder, key by dealer.
//!
//! A body is one JSON object (`application/json`) or one object per line
//! (`application/x-ndjson`). Every record is checked by [`carflow_engine::batcher::decode_batch`],
//! the very function the engine decodes Kafka messages with, so a record the intake accepts is a
//! record the engine turns into a row, and a rejected line carries the reason the engine would
//! have written to its dead letters. The key of an accepted record is its `dealer_id` as decoded.
//! A line the engine decodes is also checked to be JSON (the engine's reader does not check the
//! commas of an object), so malformed JSON never reaches Kafka.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, Int64Array, StringArray};
use bytes::Bytes;
use carflow_engine::batcher::decode_batch;
use carflow_engine::schema::COL_OFFSET;
use carflow_engine::source::Message;
use serde::Serialize;

use crate::error::HttpError;

/// How the body holds its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/json`: exactly one JSON object.
    Single,
    /// `application/x-ndjson`: one JSON object per line; blank lines are skipped.
    Ndjson,
}

/// Content types the intake takes.
pub const SUPPORTED_CONTENT_TYPES: [&str; 3] = [
    "application/json",
    "application/x-ndjson",
    "application/ndjson",
];

impl BodyFormat {
    /// The format of a `Content-Type` header value, or 415.
    pub fn from_content_type(value: Option<&str>) -> Result<Self, HttpError> {
        let essence = value
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        match essence.as_deref() {
            Some("application/json") => Ok(Self::Single),
            Some("application/x-ndjson" | "application/ndjson") => Ok(Self::Ndjson),
            other => Err(HttpError::new(
                warp::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                match other {
                    None => "missing Content-Type; send application/json (one transaction) or application/x-ndjson (one per line)".to_string(),
                    Some(t) => format!("unsupported Content-Type `{t}`; send application/json (one transaction) or application/x-ndjson (one per line)"),
                },
            )
            .with_detail(serde_json::json!({ "supported": SUPPORTED_CONTENT_TYPES }))),
        }
    }
}

/// A valid record: where it is in the body and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Line number in the body, from 1 (always 1 for a single JSON body).
    pub line: usize,
    /// The record's bytes within the body (surrounding whitespace excluded).
    pub span: Range<usize>,
    /// Its `dealer_id`: the Kafka key.
    pub key: String,
}

/// A line that is not produced, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineError {
    /// Line number in the body, from 1.
    pub line: usize,
    /// The reason, in the engine's words.
    pub reason: String,
}

/// The body split into valid records and rejected lines, both in line order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Validated {
    /// Records to produce.
    pub records: Vec<Record>,
    /// Lines refused by validation.
    pub rejected: Vec<LineError>,
}

/// Split and validate `body`. Errors are whole-request problems (400): an empty body, or a single
/// JSON body that is not one JSON object; problems of single records are [`Validated::rejected`].
pub fn validate(
    body: &Bytes,
    format: BodyFormat,
    max_message_bytes: usize,
) -> Result<Validated, HttpError> {
    let lines = match format {
        BodyFormat::Single => vec![(1, single_object(body)?)],
        BodyFormat::Ndjson => ndjson_lines(body),
    };
    if lines.is_empty() {
        return Err(HttpError::bad_request(
            "empty body: no records (send one JSON object per line)",
        ));
    }
    let messages: Vec<Message> = lines
        .iter()
        .map(|(line, span)| Message {
            topic: Arc::from("api"),
            partition: 0,
            offset: *line as i64,
            timestamp_ms: None,
            payload: Some(body.slice(span.clone())),
        })
        .collect();
    let decoded = decode_batch(&messages, max_message_bytes).map_err(|e| {
        HttpError::new(
            warp::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal: cannot validate the records: {e}"),
        )
    })?;
    let mut rejected: Vec<LineError> = decoded
        .dead_letters
        .into_iter()
        .map(|d| LineError {
            line: d.offset as usize,
            reason: d.reason,
        })
        .collect();
    let keys = keys_by_line(&decoded.rows)?;
    let mut records = Vec::with_capacity(keys.len());
    for (line, span) in lines {
        let Some(key) = keys.get(&line) else { continue };
        // The engine's JSON reader does not check the commas of an object (`{"a":1,,"b":2}`,
        // a trailing or a missing comma decode as a row): keep such text out of Kafka, where
        // other consumers would fail on it.
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body[span.clone()]) {
            rejected.push(LineError {
                line,
                reason: format!("malformed JSON: {e}"),
            });
            continue;
        }
        records.push(Record {
            line,
            span,
            key: key.clone(),
        });
    }
    rejected.sort_by_key(|r| r.line);
    Ok(Validated { records, rejected })
}

/// The trimmed span of a single-object body, or 400.
fn single_object(body: &[u8]) -> Result<Range<usize>, HttpError> {
    let span = trim(body, 0..body.len());
    let text = &body[span.clone()];
    if text.is_empty() {
        return Err(HttpError::bad_request(
            "empty body: send one transaction as a JSON object",
        ));
    }
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(text) {
        return Err(HttpError::bad_request(format!("malformed JSON: {e}"))
            .with_detail(serde_json::json!({ "line": e.line(), "column": e.column() })));
    }
    if text.first() != Some(&b'{') {
        return Err(HttpError::bad_request(
            "expected one JSON object; send several transactions as application/x-ndjson, one per line",
        ));
    }
    Ok(span)
}

/// Non-blank lines with their numbers (from 1), trimmed.
fn ndjson_lines(body: &[u8]) -> Vec<(usize, Range<usize>)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, piece) in body.split(|b| *b == b'\n').enumerate() {
        let span = trim(body, start..start + piece.len());
        if !span.is_empty() {
            out.push((i + 1, span));
        }
        start += piece.len() + 1;
    }
    out
}

fn trim(body: &[u8], mut span: Range<usize>) -> Range<usize> {
    while span.start < span.end && body[span.start].is_ascii_whitespace() {
        span.start += 1;
    }
    while span.end > span.start && body[span.end - 1].is_ascii_whitespace() {
        span.end -= 1;
    }
    span
}

/// `dealer_id` of every decoded row, by line number (the message offset).
fn keys_by_line(
    rows: &arrow::array::RecordBatch,
) -> Result<std::collections::HashMap<usize, String>, HttpError> {
    let internal = |what: &str| {
        HttpError::new(
            warp::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal: decoded rows have no {what} column"),
        )
    };
    let dealers = rows
        .column_by_name("dealer_id")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| internal("dealer_id"))?;
    let offsets = rows
        .column_by_name(COL_OFFSET)
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        .ok_or_else(|| internal(COL_OFFSET))?;
    Ok((0..rows.num_rows())
        .filter(|&i| dealers.is_valid(i) && offsets.is_valid(i))
        .map(|i| (offsets.value(i) as usize, dealers.value(i).to_string()))
        .collect())
}

#[cfg(test)]
mod tests;
