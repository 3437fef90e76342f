//! `GET /api/stream_car_transactions`: a live stream of generated transactions.
//!
//! NDJSON (`application/x-ndjson`, one transaction per line) by default; Server-Sent Events
//! (`text/event-stream`, one `data:` event per transaction, `id:` = its position from 1) when the
//! request's `Accept` names `text/event-stream`. Query parameters:
//!
//! | parameter | meaning | default |
//! |---|---|---|
//! | `rate` | transactions per second, `0.01 <= rate <= 10000` | 10 |
//! | `count` | stop after this many, `1..=1000000` | none: until the client leaves |
//! | `seed` | generator seed; makes the stream reproducible | random (sent back in `X-Carflow-Seed`) |
//! | `start` | event time of the simulated clock, RFC 3339 | `2026-01-01T00:00:00Z` |
//! | `mean_per_hour` | simulated transactions per hour of event time, `0.01..=1e9` | 1000 |
//! | `publish` | also produce each transaction to Kafka (needs the token if one is set) | false |
//!
//! With `seed`, `start` or `mean_per_hour` the generator runs on its simulated clock, so the
//! stream is exactly `Generator::new(GeneratorConfig { seed, clock: Clock::Simulated { start_ms,
//! mean_per_hour } })` — with the defaults, `GeneratorConfig { seed, ..Default::default() }`.
//! Without them, `sold_at` is the wall clock (a live feed) and the seed is random.
//!
//! Every parameter is checked before the stream starts: a value out of its range (including
//! `0`, negative, `NaN`, `inf` and absurdly small or large numbers) is a 400 naming the parameter,
//! never a stream task that fails later. At most `api.max_streams` streams are open at once;
//! beyond it the answer is 429 with `Retry-After` (see [`crate::limits`]).
//!
//! The generator runs in its own task and hands chunks to the response through a bounded
//! channel: a slow client makes generation wait, nothing piles up. With `publish=true` a
//! transaction is written to the client only after Kafka acknowledged it; should Kafka fail, the
//! stream ends with an error line (NDJSON `{"error": …}`, SSE `event: error`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use carflow_engine::generator::{
    Clock, DEFAULT_MEAN_PER_HOUR, DEFAULT_START_MS, Generator, GeneratorConfig,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use warp::http::{HeaderValue, header};
use warp::reply::Response;

use crate::error::HttpError;
use crate::kafka::Outgoing;
use crate::limits::StreamSlot;
use crate::state::Service;

/// Largest `rate`.
pub const MAX_RATE: f64 = 10_000.0;
/// Smallest `rate`: one transaction every 100 s.
pub const MIN_RATE: f64 = 0.01;
/// Smallest `mean_per_hour` (the generator's own floor, [`MIN_MEAN_PER_HOUR`]).
pub const MIN_MEAN_PER_HOUR: f64 = carflow_engine::generator::MIN_MEAN_PER_HOUR;
/// Largest `mean_per_hour`.
pub const MAX_MEAN_PER_HOUR: f64 = 1e9;
/// Seconds a client should wait before opening a stream again when `api.max_streams` are open.
pub const RETRY_AFTER_STREAMS_SECS: u64 = 5;
/// Largest `count`.
pub const MAX_COUNT: u64 = 1_000_000;
/// Default `rate`.
pub const DEFAULT_RATE: f64 = 10.0;
/// Most transactions in one chunk handed to the response.
const CHUNK: u64 = 128;
/// Chunks buffered between the generator and the client.
const CHANNEL_CHUNKS: usize = 8;
/// An idle SSE stream sends a comment this often (proxies drop silent connections).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How the stream is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    /// One JSON object per line.
    Ndjson,
    /// Server-Sent Events.
    Sse,
}

impl StreamFormat {
    /// SSE when `Accept` names `text/event-stream`, else NDJSON.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.to_ascii_lowercase().contains("text/event-stream") => Self::Sse,
            _ => Self::Ndjson,
        }
    }
}

/// The query parameters, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamParams {
    /// Transactions per second.
    pub rate: f64,
    /// Stop after this many.
    pub count: Option<u64>,
    /// The generator's configuration (seed and clock).
    pub generator: GeneratorConfig,
    /// Also produce to Kafka.
    pub publish: bool,
}

impl StreamParams {
    /// Parse the query; a bad or unknown parameter is a 400 naming it.
    pub fn parse(query: &HashMap<String, String>) -> Result<Self, HttpError> {
        const KNOWN: [&str; 6] = ["rate", "count", "seed", "start", "mean_per_hour", "publish"];
        let mut unknown: Vec<&str> = query
            .keys()
            .map(String::as_str)
            .filter(|k| !KNOWN.contains(k))
            .collect();
        unknown.sort_unstable();
        if let Some(k) = unknown.first() {
            return Err(HttpError::bad_param(
                k,
                format!("unknown parameter `{k}`; known: {}", KNOWN.join(", ")),
            ));
        }
        let get = |k: &str| query.get(k).map(|v| v.trim());
        let rate = match get("rate") {
            None => DEFAULT_RATE,
            Some(v) => match v.parse::<f64>() {
                Ok(r) if (MIN_RATE..=MAX_RATE).contains(&r) => r,
                _ => {
                    return Err(HttpError::bad_param(
                        "rate",
                        format!(
                            "rate `{v}` must be a number of transactions per second from {MIN_RATE} to {MAX_RATE}"
                        ),
                    ));
                }
            },
        };
        let count = match get("count") {
            None => None,
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (1..=MAX_COUNT).contains(&n) => Some(n),
                _ => {
                    return Err(HttpError::bad_param(
                        "count",
                        format!("count `{v}` must be an integer from 1 to {MAX_COUNT}"),
                    ));
                }
            },
        };
        let seed = match get("seed") {
            None => None,
            Some(v) => Some(v.parse::<u64>().map_err(|_| {
                HttpError::bad_param(
                    "seed",
                    format!("seed `{v}` must be an integer from 0 to {}", u64::MAX),
                )
            })?),
        };
        let start_ms = match get("start") {
            None => None,
            Some(v) => Some(
                chrono::DateTime::parse_from_rfc3339(v)
                    .map_err(|e| {
                        HttpError::bad_param(
                            "start",
                            format!("start `{v}` is not RFC 3339 ({e}); e.g. 2026-01-01T00:00:00Z"),
                        )
                    })?
                    .timestamp_millis(),
            ),
        };
        let mean_per_hour = match get("mean_per_hour") {
            None => None,
            Some(v) => match v.parse::<f64>() {
                Ok(m) if (MIN_MEAN_PER_HOUR..=MAX_MEAN_PER_HOUR).contains(&m) => Some(m),
                _ => {
                    return Err(HttpError::bad_param(
                        "mean_per_hour",
                        format!(
                            "mean_per_hour `{v}` must be a number of transactions per hour from {MIN_MEAN_PER_HOUR} to {MAX_MEAN_PER_HOUR:e}"
                        ),
                    ));
                }
            },
        };
        let publish = match get("publish") {
            None => false,
            Some("true" | "1") => true,
            Some("false" | "0") => false,
            Some(v) => {
                return Err(HttpError::bad_param(
                    "publish",
                    format!("publish `{v}` must be true or false"),
                ));
            }
        };
        let simulated = seed.is_some() || start_ms.is_some() || mean_per_hour.is_some();
        let clock = if simulated {
            Clock::Simulated {
                start_ms: start_ms.unwrap_or(DEFAULT_START_MS),
                mean_per_hour: mean_per_hour.unwrap_or(DEFAULT_MEAN_PER_HOUR),
            }
        } else {
            Clock::Wall
        };
        Ok(Self {
            rate,
            count,
            generator: GeneratorConfig {
                seed: seed.unwrap_or_else(random_seed),
                clock,
            },
            publish,
        })
    }
}

fn random_seed() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
}

/// Handle one `GET /api/stream_car_transactions`.
pub fn get_stream(
    svc: Arc<Service>,
    query: HashMap<String, String>,
    accept: Option<String>,
    authorization: Option<String>,
) -> Response {
    let params = match StreamParams::parse(&query) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if params.publish
        && let Err(e) = svc.auth.check(authorization.as_deref())
    {
        return e.into_response();
    }
    let Some(slot) = svc.streams.try_take() else {
        svc.metrics.streams_refused.inc();
        let max = svc.streams.max();
        return HttpError::too_many_requests(
            format!(
                "too many open streams (api.max_streams = {max}); close one or retry after {RETRY_AFTER_STREAMS_SECS}s"
            ),
            RETRY_AFTER_STREAMS_SECS,
        )
        .with_detail(serde_json::json!({ "max_streams": max }))
        .into_response();
    };
    let format = StreamFormat::from_accept(accept.as_deref());
    let seed = params.generator.seed;
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    tracing::debug!(seed, rate = params.rate, count = ?params.count, publish = params.publish, ?format, "stream opened");
    tokio::spawn(generate(svc, params, format, tx, slot));
    let mut r = warp::reply::Reply::into_response(warp::reply::stream(ChunkStream { rx }));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(match format {
            StreamFormat::Ndjson => "application/x-ndjson",
            StreamFormat::Sse => "text/event-stream",
        }),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    h.insert("x-carflow-seed", HeaderValue::from(seed));
    r
}

/// The response body: chunks from the generator task.
struct ChunkStream {
    rx: mpsc::Receiver<Bytes>,
}

impl Stream for ChunkStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

/// Decrements the open-streams gauge and gives the stream slot back when the generator task
/// ends, however it ends.
struct StreamGuard {
    svc: Arc<Service>,
    _slot: StreamSlot,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.svc.metrics.streams.dec();
    }
}

/// The generator task: paced chunks into `tx` until `count`, the client leaves, or shutdown.
async fn generate(
    svc: Arc<Service>,
    params: StreamParams,
    format: StreamFormat,
    tx: mpsc::Sender<Bytes>,
    slot: StreamSlot,
) {
    svc.metrics.streams.inc();
    let guard = StreamGuard {
        svc: Arc::clone(&svc),
        _slot: slot,
    };
    // Time for `n` transactions at the rate; saturates instead of panicking (the rate is checked
    // to be at least MIN_RATE, so this is belt and braces).
    let period = |n: u64| {
        Duration::try_from_secs_f64(n as f64 / params.rate).unwrap_or(Duration::from_secs(86_400))
    };
    let mut generator = Generator::new(params.generator);
    let mut started = Instant::now();
    let mut sent = 0u64;
    let limit = params.count.unwrap_or(u64::MAX);
    let mut last_write = Instant::now();
    while sent < limit {
        let elapsed = started.elapsed().as_secs_f64();
        let due_total = (elapsed * params.rate).floor() as u64 + 1;
        if due_total.saturating_sub(sent) as f64 > params.rate.max(CHUNK as f64) {
            // The client fell behind by more than a second: do not burst to catch up.
            let now = Instant::now();
            started = now.checked_sub(period(sent)).unwrap_or(now);
        }
        let due = due_total.saturating_sub(sent).min(CHUNK).min(limit - sent);
        if due == 0 {
            let keep_alive = last_write + KEEP_ALIVE;
            let wake = started
                .checked_add(period(sent))
                .map_or(keep_alive, |next| next.min(keep_alive));
            tokio::select! {
                _ = svc.shutdown.cancelled() => break,
                _ = tx.closed() => break,
                _ = tokio::time::sleep_until(wake) => {}
            }
            if format == StreamFormat::Sse && Instant::now() >= last_write + KEEP_ALIVE {
                if !send(&svc, &tx, Bytes::from_static(b": keep-alive\n\n")).await {
                    break;
                }
                last_write = Instant::now();
            }
            continue;
        }
        let chunk = match next_chunk(&svc, &mut generator, due, sent, format, params.publish).await
        {
            Ok(c) => c,
            Err(reason) => {
                let _ = send(&svc, &tx, error_chunk(format, &reason, sent)).await;
                break;
            }
        };
        if !send(&svc, &tx, chunk).await {
            break;
        }
        sent += due;
        svc.metrics.streamed.inc_by(due);
        last_write = Instant::now();
    }
    if sent == limit && format == StreamFormat::Sse {
        let end = format!("event: end\ndata: {{\"count\":{sent}}}\n\n");
        let _ = send(&svc, &tx, Bytes::from(end)).await;
    }
    tracing::debug!(sent, "stream closed");
    drop(guard);
}

/// Hand a chunk to the client; false when the client left or the service is stopping.
async fn send(svc: &Service, tx: &mpsc::Sender<Bytes>, chunk: Bytes) -> bool {
    tokio::select! {
        _ = svc.shutdown.cancelled() => false,
        r = tx.send(chunk) => r.is_ok(),
    }
}

/// The next `n` transactions, formatted; produced to Kafka first when `publish`.
async fn next_chunk(
    svc: &Service,
    generator: &mut Generator,
    n: u64,
    sent: u64,
    format: StreamFormat,
    publish: bool,
) -> Result<Bytes, String> {
    let mut jsons: Vec<(String, Vec<u8>)> = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = generator.next_transaction();
        let mut json = Vec::with_capacity(512);
        t.write_json(&mut json);
        jsons.push((t.dealer_id, json));
    }
    if publish {
        let reservation = svc
            .writer
            .reserve(jsons.len())
            .await
            .ok_or("the service is stopping")?;
        let outgoing: Vec<Outgoing<'_>> = jsons
            .iter()
            .map(|(key, payload)| Outgoing { key, payload })
            .collect();
        let results = svc.writer.produce(&reservation, &outgoing).await;
        if let Some(Err(reason)) = results.into_iter().find(|r| r.is_err()) {
            return Err(reason);
        }
    }
    let mut out = Vec::with_capacity(jsons.len() * 520);
    for (i, (_, json)) in jsons.iter().enumerate() {
        match format {
            StreamFormat::Ndjson => {
                out.extend_from_slice(json);
                out.push(b'\n');
            }
            StreamFormat::Sse => {
                out.extend_from_slice(format!("id: {}\ndata: ", sent + i as u64 + 1).as_bytes());
                out.extend_from_slice(json);
                out.extend_from_slice(b"\n\n");
            }
        }
    }
    Ok(Bytes::from(out))
}

fn error_chunk(format: StreamFormat, reason: &str, sent: u64) -> Bytes {
    let doc = serde_json::json!({
        "error": format!("stream stopped: {reason}"),
        "detail": { "streamed": sent },
    });
    Bytes::from(match format {
        StreamFormat::Ndjson => format!("{doc}\n"),
        StreamFormat::Sse => format!("event: error\ndata: {doc}\n\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_a_live_feed() {
        let p = StreamParams::parse(&q(&[])).unwrap();
        assert_eq!(p.rate, DEFAULT_RATE);
        assert_eq!(p.count, None);
        assert_eq!(p.generator.clock, Clock::Wall);
        assert!(!p.publish);
    }

    #[test]
    fn a_seed_is_the_engine_generator_with_its_defaults() {
        let p = StreamParams::parse(&q(&[("seed", "7"), ("count", "5")])).unwrap();
        assert_eq!(
            p.generator,
            GeneratorConfig {
                seed: 7,
                ..Default::default()
            }
        );
        let p = StreamParams::parse(&q(&[
            ("seed", "7"),
            ("start", "2026-03-01T00:00:00Z"),
            ("mean_per_hour", "5000"),
        ]))
        .unwrap();
        assert_eq!(
            p.generator.clock,
            Clock::Simulated {
                start_ms: 1_772_323_200_000,
                mean_per_hour: 5000.0
            }
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        for (k, v) in [
            ("rate", "0"),
            ("rate", "10001"),
            ("rate", "fast"),
            ("count", "0"),
            ("count", "1000001"),
            ("seed", "-1"),
            ("start", "yesterday"),
            ("mean_per_hour", "-3"),
            ("publish", "yes"),
            ("colour", "red"),
        ] {
            let e = StreamParams::parse(&q(&[(k, v)])).unwrap_err();
            assert_eq!(e.status, 400);
            assert_eq!(e.detail["parameter"], k, "{k}={v}: {e:?}");
        }
    }

    #[test]
    fn absurd_numbers_are_400_naming_the_parameter() {
        for (k, v) in [
            ("rate", "1e-30"),
            ("rate", "0.009"),
            ("rate", "-1"),
            ("rate", "-0"),
            ("rate", "NaN"),
            ("rate", "nan"),
            ("rate", "inf"),
            ("rate", "-inf"),
            ("rate", "infinity"),
            ("rate", "1e308"),
            ("rate", "1e309"),
            ("rate", "4.9e-324"),
            ("rate", ""),
            ("rate", "0x10"),
            ("count", "-1"),
            ("count", "1e3"),
            ("count", "18446744073709551616"),
            ("count", "NaN"),
            ("seed", "18446744073709551616"),
            ("seed", "1.5"),
            ("start", "10000-01-01T00:00:00Z"),
            ("start", ""),
            ("mean_per_hour", "0"),
            ("mean_per_hour", "1e-30"),
            ("mean_per_hour", "NaN"),
            ("mean_per_hour", "inf"),
            ("mean_per_hour", "1e300"),
            ("mean_per_hour", "-5"),
            ("publish", ""),
        ] {
            let e = StreamParams::parse(&q(&[(k, v)])).unwrap_err();
            assert_eq!(e.status, 400, "{k}={v}");
            assert_eq!(e.detail["parameter"], k, "{k}={v}: {e:?}");
            assert!(e.error.contains(k), "{k}={v}: {e:?}");
        }
    }

    #[test]
    fn the_ends_of_every_range_are_accepted() {
        for (k, v) in [
            ("rate", "0.01"),
            ("rate", "10000"),
            ("count", "1"),
            ("count", "1000000"),
            ("seed", "0"),
            ("seed", "18446744073709551615"),
            ("start", "0000-01-01T00:00:00Z"),
            ("start", "9999-12-31T23:59:59.999Z"),
            ("mean_per_hour", "0.01"),
            ("mean_per_hour", "1e9"),
        ] {
            assert!(StreamParams::parse(&q(&[(k, v)])).is_ok(), "{k}={v}");
        }
    }

    #[test]
    fn sse_only_when_asked() {
        assert_eq!(StreamFormat::from_accept(None), StreamFormat::Ndjson);
        assert_eq!(StreamFormat::from_accept(Some("*/*")), StreamFormat::Ndjson);
        assert_eq!(
            StreamFormat::from_accept(Some("text/event-stream")),
            StreamFormat::Sse
        );
    }
}
