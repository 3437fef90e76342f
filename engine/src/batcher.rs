//! The micro-batcher: a stream of raw messages becomes Arrow record batches.
//!
//! [`collect_batch`] gathers messages until the batch is full by rows or bytes, or until the linger
//! time has passed since its first message. [`decode_batch`] decodes them against
//! the declared schema and appends the metadata columns. A message that does not decode (broken
//! JSON, wrong type, a missing required field, invalid UTF-8, too large, more or less than one JSON
//! object, an event time outside the accepted range) becomes a [`DeadLetter`] carrying its reason
//! and origin; the other messages of its batch go on. The common case (every message good)
//! decodes the whole batch in one pass; only a batch with bad messages pays for isolating them.
//!
//! **Event time.** `sold_at` is accepted from [`DecodeRules::min_event_ms`] (default
//! 2000-01-01T00:00:00Z) to the wall clock plus [`DecodeRules::max_future`] (default 10 minutes),
//! both settable (`events.min_time`, `events.max_future`). It is an RFC 3339 string (any offset;
//! a time without an offset is UTC) or a JSON integer of *milliseconds* since the epoch: epoch
//! seconds land in 1970 and microseconds or nanoseconds far in the future, so both are refused
//! with a reason that says so, never silently turned into a wrong date. Everything downstream
//! (windows, the lake's day partitions) can rely on this range: no overflow, no year 2300
//! closing every window.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::compute::concat_batches;
use arrow::error::ArrowError;
use arrow_json::reader::{Decoder, ReaderBuilder};
use futures::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::schema::{EVENT_TIME, source_schema, transaction_schema};
use crate::source::{DeadLetter, Message, Source, SourceError, in_processing_order};

/// When a micro-batch closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLimits {
    /// Close the batch at this many messages.
    pub max_rows: usize,
    /// Close the batch at this many payload bytes.
    pub max_bytes: usize,
    /// Close the batch this long after its first message arrived.
    pub linger: Duration,
    /// A message larger than this is a dead letter, never decoded.
    pub max_message_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self::from_config(&crate::config::BatchConfig::default())
    }
}

impl BatchLimits {
    /// The limits `[batch]` sets.
    pub fn from_config(c: &crate::config::BatchConfig) -> Self {
        Self {
            max_rows: c.max_rows,
            max_bytes: c.max_bytes,
            linger: c.linger.0,
            max_message_bytes: c.max_message_bytes,
        }
    }
}

impl DecodeRules {
    /// The rules `[batch]` and `[events]` set.
    pub fn from_config(c: &crate::config::Config) -> Self {
        Self {
            max_message_bytes: c.batch.max_message_bytes,
            min_event_ms: c.events.min_time_ms(),
            max_future: c.events.max_future.0,
        }
    }
}

/// Why [`collect_batch`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchEnd {
    /// A row or byte limit was reached.
    Full,
    /// The linger time ran out.
    Linger,
    /// The source has no more messages.
    SourceExhausted,
    /// Shutdown was requested.
    Shutdown,
    /// Partition ownership changed (a consumer-group rebalance).
    Rebalance,
    /// Nothing arrived for [`IDLE_WAKE`]: the caller gets a chance to do its housekeeping
    /// (reload query files, close windows) on a quiet topic.
    Idle,
}

/// How long [`collect_batch`] waits for a first message before returning an empty batch.
pub const IDLE_WAKE: Duration = Duration::from_secs(1);

/// Gather the next micro-batch of raw messages from `source`.
///
/// Waits up to [`IDLE_WAKE`] for the first message (then returns an empty batch: a quiet topic
/// is not an error), then at most `limits.linger` for the rest. A batch never spans a change of
/// partition ownership: when the source reports one, the message that arrived after it is kept
/// for the next batch and this batch ends ([`BatchEnd::Rebalance`]), so every message of a batch
/// predates the change and the pipeline can drop those of revoked partitions.
///
/// It starts from what was read ahead while the previous batch committed
/// ([`read_ahead_while`]): a batch closed there is handed out at once, with its decoding; an
/// open one is completed here, its linger counted from its first message.
pub async fn collect_batch<S: Source>(
    source: &mut S,
    limits: &BatchLimits,
    shutdown: &CancellationToken,
    ahead: &mut ReadAhead,
) -> Result<Collected, SourceError> {
    if let Some(ready) = ahead.ready.take() {
        return Ok(ready);
    }
    if let Some(e) = ahead.failed.take() {
        return Err(e);
    }
    let mut messages = std::mem::take(&mut ahead.messages);
    let mut bytes = std::mem::take(&mut ahead.bytes);
    let mut deadline: Option<Instant> = ahead.since.take().map(|s| s + limits.linger);
    let idle = Instant::now() + IDLE_WAKE;
    let mut next_carried = ahead.carry.take();
    // In the order the pipeline processes them, each offset once (as a batch read ahead is):
    // the pipeline then takes the batch as it is, with no sorted copy of its messages.
    let done = |mut messages: Vec<Message>, end: BatchEnd| {
        in_processing_order(&mut messages);
        Ok(Collected {
            messages: Arc::new(messages),
            end,
            decoded: None,
        })
    };
    loop {
        let message = match next_carried.take() {
            Some(m) => m,
            None => {
                let wake = deadline.unwrap_or(idle);
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return done(messages, BatchEnd::Shutdown),
                    _ = tokio::time::sleep_until(wake) => {
                        let end = if deadline.is_some() { BatchEnd::Linger } else { BatchEnd::Idle };
                        return done(messages, end);
                    }
                    next = source.next_message() => match next? {
                        None => return done(messages, BatchEnd::SourceExhausted),
                        Some(message) => {
                            if source.has_events() {
                                ahead.carry = Some(message);
                                return done(messages, BatchEnd::Rebalance);
                            }
                            message
                        }
                    }
                }
            }
        };
        if deadline.is_none() {
            deadline = Some(Instant::now() + limits.linger);
        }
        bytes += message.size();
        messages.push(message);
        if messages.len() >= limits.max_rows || bytes >= limits.max_bytes {
            return done(messages, BatchEnd::Full);
        }
        // What the source holds already is taken without a timer and a select per message.
        while let Some(next) = source.next_message().now_or_never() {
            let Some(message) = next? else {
                return done(messages, BatchEnd::SourceExhausted);
            };
            if source.has_events() {
                ahead.carry = Some(message);
                return done(messages, BatchEnd::Rebalance);
            }
            bytes += message.size();
            messages.push(message);
            if messages.len() >= limits.max_rows || bytes >= limits.max_bytes {
                return done(messages, BatchEnd::Full);
            }
        }
    }
}

/// The outcome of decoding one micro-batch.
#[derive(Debug, Clone)]
pub struct DecodedBatch {
    /// The good rows, in message order, with the `transactions` schema (record + metadata).
    pub rows: RecordBatch,
    /// The messages that did not decode.
    pub dead_letters: Vec<DeadLetter>,
}

/// What a message must satisfy to become a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeRules {
    /// A message larger than this is a dead letter, never decoded.
    pub max_message_bytes: usize,
    /// The earliest accepted event time (ms since the epoch).
    pub min_event_ms: i64,
    /// How far past the wall clock an event time may be.
    pub max_future: Duration,
}

/// 2000-01-01T00:00:00Z in milliseconds: the default earliest event time.
pub const DEFAULT_MIN_EVENT_MS: i64 = 946_684_800_000;

/// The default allowance for producer clocks ahead of ours.
pub const DEFAULT_MAX_FUTURE: Duration = Duration::from_secs(600);

impl DecodeRules {
    /// The default rules with messages of at most `max_message_bytes`.
    pub fn with_max_message_bytes(max_message_bytes: usize) -> Self {
        Self {
            max_message_bytes,
            min_event_ms: DEFAULT_MIN_EVENT_MS,
            max_future: DEFAULT_MAX_FUTURE,
        }
    }
}

/// Decode `messages` into rows of the `transactions` table and dead letters, with the default
/// event-time range (see [`decode_batch_with`]).
pub fn decode_batch(
    messages: &[Message],
    max_message_bytes: usize,
) -> Result<DecodedBatch, ArrowError> {
    decode_batch_with(
        messages,
        &DecodeRules::with_max_message_bytes(max_message_bytes),
    )
}

/// Decode `messages` into rows of the `transactions` table and dead letters.
///
/// Every message ends up either as a row or as a dead letter. An error is returned only for an
/// internal failure to assemble the batch, never for bad input.
///
/// Messages in the forms producers write are read by a decoder specialised to the schema
/// (`batcher/fast.rs`); the others (and everything, if the schema has a type it does not know)
/// go the arrow-json way of [`decode_batch_reference`], which decodes them or names their
/// problem. Both give the same row for a message both take.
pub fn decode_batch_with(
    messages: &[Message],
    rules: &DecodeRules,
) -> Result<DecodedBatch, ArrowError> {
    let Some(fast) = fast::decode(messages, rules.max_message_bytes) else {
        return decode_batch_reference(messages, rules);
    };
    let mut dead_letters = Vec::new();
    let (record, good) = if fast.rest.is_empty() {
        (fast.record, fast.good)
    } else {
        let (slow, slow_good) = decode_reference(messages, &fast.rest, rules, &mut dead_letters)?;
        merge_in_order(&fast.record, &fast.good, &slow, &slow_good)?
    };
    finish(messages, &record, &good, rules, dead_letters)
}

/// [`decode_batch_with`] with arrow-json alone: the reference the specialised decoder is
/// checked against (`engine/tests/props_decode.rs`).
pub fn decode_batch_reference(
    messages: &[Message],
    rules: &DecodeRules,
) -> Result<DecodedBatch, ArrowError> {
    let mut dead_letters = Vec::new();
    let all: Vec<usize> = (0..messages.len()).collect();
    let (record, good) = decode_reference(messages, &all, rules, &mut dead_letters)?;
    finish(messages, &record, &good, rules, dead_letters)
}

/// The decoded records of the `good` messages become rows (with their metadata) or, with an
/// event time out of range, dead letters.
fn finish(
    messages: &[Message],
    record: &RecordBatch,
    good: &[usize],
    rules: &DecodeRules,
    mut dead_letters: Vec<DeadLetter>,
) -> Result<DecodedBatch, ArrowError> {
    let rows = assemble(messages, record, good)?;
    let rows = check_event_times(messages, rows, good, rules, &mut dead_letters)?;
    dead_letters.sort_by_key(|d| (d.partition, d.offset));
    Ok(DecodedBatch { rows, dead_letters })
}

/// The arrow-json way for the messages at `which` (ascending): their record columns and the
/// indices of those that decoded; the others become dead letters with their reason.
fn decode_reference(
    messages: &[Message],
    which: &[usize],
    rules: &DecodeRules,
    dead_letters: &mut Vec<DeadLetter>,
) -> Result<(RecordBatch, Vec<usize>), ArrowError> {
    let mut candidates = Vec::with_capacity(which.len());
    for &i in which {
        match precheck(&messages[i], rules.max_message_bytes) {
            Ok(()) => candidates.push(i),
            Err(reason) => dead_letters.push(dead_letter(&messages[i], reason)),
        }
    }
    let feed = Feed::new(messages, &candidates);
    let mut parts = Vec::new();
    let mut good = Vec::with_capacity(candidates.len());
    decode_structured(&feed, &candidates, &mut parts, &mut good, dead_letters);
    // Segments are decoded in message order and bisection keeps order, so `good` ascends and
    // matches the concatenated rows one to one.
    debug_assert!(good.windows(2).all(|w| w[0] < w[1]));
    Ok((concat_batches(&transaction_schema(), &parts)?, good))
}

/// Two sets of rows, each in message order, as one in message order.
fn merge_in_order(
    a: &RecordBatch,
    a_at: &[usize],
    b: &RecordBatch,
    b_at: &[usize],
) -> Result<(RecordBatch, Vec<usize>), ArrowError> {
    let (mut i, mut j) = (0, 0);
    let mut order = Vec::with_capacity(a_at.len() + b_at.len());
    let mut good = Vec::with_capacity(order.capacity());
    while i < a_at.len() || j < b_at.len() {
        if j == b_at.len() || (i < a_at.len() && a_at[i] < b_at[j]) {
            order.push((0, i));
            good.push(a_at[i]);
            i += 1;
        } else {
            order.push((1, j));
            good.push(b_at[j]);
            j += 1;
        }
    }
    let record = arrow::compute::interleave_record_batch(&[a, b], &order)?;
    Ok((record, good))
}

fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms} ms since the epoch"))
}

/// Move rows whose event time is outside the accepted range to the dead letters.
fn check_event_times(
    messages: &[Message],
    rows: RecordBatch,
    good: &[usize],
    rules: &DecodeRules,
    dead_letters: &mut Vec<DeadLetter>,
) -> Result<RecordBatch, ArrowError> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::TimestampMillisecondType;
    let Some(col) = rows.column_by_name(EVENT_TIME) else {
        return Ok(rows);
    };
    let times = col.as_primitive::<TimestampMillisecondType>();
    let now = chrono::Utc::now().timestamp_millis();
    let max = now.saturating_add(i64::try_from(rules.max_future.as_millis()).unwrap_or(i64::MAX));
    let mut keep = Vec::with_capacity(rows.num_rows());
    let mut refused = 0;
    for i in 0..rows.num_rows() {
        let ok = if times.is_null(i) {
            true
        } else {
            let t = times.value(i);
            let number = || sold_at_is_number(messages[good[i]].payload.as_deref());
            let reason = if t < rules.min_event_ms {
                Some(format!(
                    "sold_at {} is before {} (the earliest accepted event time, events.min_time){}",
                    format_ms(t),
                    format_ms(rules.min_event_ms),
                    if number() {
                        "; an epoch number must be in milliseconds, not seconds"
                    } else {
                        ""
                    }
                ))
            } else if t > max {
                Some(format!(
                    "sold_at {} is more than {}s past the wall clock ({}; events.max_future){}",
                    format_ms(t),
                    rules.max_future.as_secs(),
                    format_ms(now),
                    if number() {
                        "; an epoch number must be in milliseconds, not micro- or nanoseconds"
                    } else {
                        ""
                    }
                ))
            } else {
                None
            };
            if let Some(reason) = reason {
                dead_letters.push(DeadLetter::undecodable(&messages[good[i]], reason));
                refused += 1;
                false
            } else {
                true
            }
        };
        keep.push(ok);
    }
    if refused == 0 {
        return Ok(rows);
    }
    arrow::compute::filter_record_batch(&rows, &arrow::array::BooleanArray::from(keep))
}

/// Was `sold_at` written as a JSON number (an epoch) rather than a string? For the reason of a
/// refused event time only.
fn sold_at_is_number(payload: Option<&[u8]>) -> bool {
    let Some(p) = payload else { return false };
    let key = format!("\"{EVENT_TIME}\"");
    let Some(at) = p.windows(key.len()).position(|w| w == key.as_bytes()) else {
        return false;
    };
    p[at + key.len()..]
        .iter()
        .find(|b| !b.is_ascii_whitespace() && **b != b':')
        .is_some_and(|b| b.is_ascii_digit() || *b == b'-')
}

fn precheck(m: &Message, max_message_bytes: usize) -> Result<(), String> {
    let Some(payload) = &m.payload else {
        return Err("empty message: the value is null (a tombstone)".into());
    };
    if payload.len() > max_message_bytes {
        return Err(format!(
            "message of {} bytes exceeds max_message_bytes ({max_message_bytes})",
            payload.len()
        ));
    }
    if let Err(e) = std::str::from_utf8(payload) {
        return Err(format!(
            "invalid UTF-8 at byte {}: the message must be UTF-8 JSON",
            e.valid_up_to()
        ));
    }
    // arrow-json's reader does not check an object's commas; a JSON parser does.
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err("malformed JSON: the message holds no JSON object".into());
    }
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(payload) {
        let values = serde_json::Deserializer::from_slice(payload)
            .into_iter::<serde::de::IgnoredAny>()
            .try_fold(0usize, |n, v| v.map(|_| n + 1));
        if let Ok(n) = values
            && n > 1
        {
            return Err(format!(
                "malformed JSON: the message holds {n} JSON values, expected exactly one object"
            ));
        }
        return Err(if e.is_eof() {
            format!("malformed JSON: the message is incomplete (truncated?): {e}")
        } else {
            format!("malformed JSON: {e}")
        });
    }
    Ok(())
}

fn dead_letter(m: &Message, reason: String) -> DeadLetter {
    DeadLetter::undecodable(m, reason)
}

fn new_decoder(rows: usize) -> Result<Decoder, ArrowError> {
    ReaderBuilder::new(transaction_schema())
        .with_batch_size(rows.max(1) + 1)
        .build_decoder()
}

/// Feed one message; succeed only if it adds exactly one complete JSON object.
fn feed_one(decoder: &mut Decoder, payload: &[u8]) -> Result<(), String> {
    let before = decoder.len();
    let read = decoder
        .decode(payload)
        .map_err(|e| format!("malformed JSON: {}", strip_prefix(&e)))?;
    if read != payload.len() {
        return Err("malformed JSON: more than one JSON value in the message".into());
    }
    if decoder.has_partial_record() {
        return Err("malformed JSON: the object is incomplete (truncated message?)".into());
    }
    match decoder.len() - before {
        1 => Ok(()),
        0 => Err("malformed JSON: the message holds no JSON object".into()),
        n => Err(format!(
            "malformed JSON: the message holds {n} JSON values, expected exactly one object"
        )),
    }
}

/// First pass: syntax. Messages are fed one at a time so a syntax error is pinned to its message;
/// the decoder is rebuilt from the messages since the last flush when one fails.
fn decode_structured(
    feed: &Feed<'_>,
    candidates: &[usize],
    parts: &mut Vec<RecordBatch>,
    good: &mut Vec<usize>,
    dead_letters: &mut Vec<DeadLetter>,
) {
    let Ok(mut decoder) = new_decoder(candidates.len()) else {
        return fail_all(
            feed.messages,
            candidates,
            "internal: cannot build decoder",
            dead_letters,
        );
    };
    let mut segment: Vec<usize> = Vec::with_capacity(candidates.len());
    for &i in candidates {
        if let Err(reason) = feed_one(&mut decoder, feed.payload(i)) {
            dead_letters.push(dead_letter(&feed.messages[i], reason));
            // The decoder holds part of the bad message: decode the segment before it on its own
            // and go on with a fresh decoder, so every message is fed at most twice.
            let before = std::mem::take(&mut segment);
            match refeed(feed, &before) {
                Ok(d) => flush_or_bisect(feed, d, before, parts, good, dead_letters),
                Err(e) => fail_all(feed.messages, &before, &e, dead_letters),
            }
            decoder = match new_decoder(candidates.len()) {
                Ok(d) => d,
                Err(e) => return fail_all(feed.messages, &[], &e.to_string(), dead_letters),
            };
            continue;
        }
        segment.push(i);
    }
    flush_or_bisect(feed, decoder, segment, parts, good, dead_letters);
}

fn refeed(feed: &Feed<'_>, segment: &[usize]) -> Result<Decoder, String> {
    let mut decoder = new_decoder(segment.len()).map_err(|e| e.to_string())?;
    for &i in segment {
        feed_one(&mut decoder, feed.payload(i))?;
    }
    Ok(decoder)
}

/// Second pass: types. A flush that fails (a wrong type, a missing required field) is retried on
/// halves until the failing messages stand alone.
fn flush_or_bisect(
    feed: &Feed<'_>,
    mut decoder: Decoder,
    segment: Vec<usize>,
    parts: &mut Vec<RecordBatch>,
    good: &mut Vec<usize>,
    dead_letters: &mut Vec<DeadLetter>,
) {
    match decoder.flush() {
        Ok(Some(batch)) if batch.num_rows() == segment.len() => {
            parts.push(batch);
            good.extend(segment);
        }
        Ok(None) if segment.is_empty() => {}
        Ok(_) => fail_all(
            feed.messages,
            &segment,
            "internal: decoded row count differs from message count",
            dead_letters,
        ),
        Err(e) if segment.len() == 1 => {
            dead_letters.push(dead_letter(&feed.messages[segment[0]], type_reason(&e)));
        }
        Err(_) => {
            let (left, right) = segment.split_at(segment.len() / 2);
            for half in [left, right] {
                match refeed(feed, half) {
                    Ok(d) => flush_or_bisect(feed, d, half.to_vec(), parts, good, dead_letters),
                    Err(e) => fail_all(feed.messages, half, &e, dead_letters),
                }
            }
        }
    }
}

/// The bytes arrow-json is fed for each message: the payload, with every escaped UTF-16
/// surrogate pair (`\ud840\udc00`) written as the character it stands for. arrow-json 59
/// joins a pair with `|` where it must add, so characters from U+20000 up came out wrong
/// (U+20000 as U+10000); a JSON text means the same with the character written as UTF-8.
struct Feed<'a> {
    messages: &'a [Message],
    rewritten: std::collections::HashMap<usize, Vec<u8>>,
}

impl<'a> Feed<'a> {
    fn new(messages: &'a [Message], which: &[usize]) -> Self {
        let rewritten = which
            .iter()
            .filter_map(|&i| {
                let p = messages[i].payload.as_deref()?;
                join_surrogate_pairs(p).map(|r| (i, r))
            })
            .collect();
        Self {
            messages,
            rewritten,
        }
    }

    fn payload(&self, i: usize) -> &[u8] {
        match self.rewritten.get(&i) {
            Some(r) => r,
            None => self.messages[i].payload.as_deref().unwrap_or_default(),
        }
    }
}

/// `payload` with each escaped surrogate pair inside a string written as its character in
/// UTF-8; `None` when it has none (lone surrogates stay as they are: the JSON check refuses
/// them).
fn join_surrogate_pairs(payload: &[u8]) -> Option<Vec<u8>> {
    let (mut out, mut run, mut i, mut in_string) = (None::<Vec<u8>>, 0, 0, false);
    while i < payload.len() {
        match payload[i] {
            b'"' => in_string = !in_string,
            b'\\' if in_string => {
                if let Some(c) = fast::escaped_pair(&payload[i..]) {
                    let o = out.get_or_insert_with(|| Vec::with_capacity(payload.len()));
                    o.extend_from_slice(&payload[run..i]);
                    o.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    i += 12;
                    run = i;
                    continue;
                }
                i += 1; // the escaped byte is not a quote that ends the string
            }
            _ => {}
        }
        i += 1;
    }
    let mut o = out?;
    o.extend_from_slice(&payload[run..]);
    Some(o)
}

fn fail_all(messages: &[Message], idx: &[usize], reason: &str, dead: &mut Vec<DeadLetter>) {
    dead.extend(
        idx.iter()
            .map(|&i| dead_letter(&messages[i], reason.to_string())),
    );
}

fn strip_prefix(e: &ArrowError) -> String {
    let s = e.to_string();
    s.strip_prefix("Json error: ")
        .or_else(|| s.strip_prefix("Parser error: "))
        .unwrap_or(&s)
        .to_string()
}

fn type_reason(e: &ArrowError) -> String {
    let s = strip_prefix(e);
    if let Some(field) =
        s.strip_prefix("Encountered unmasked nulls in non-nullable StructArray child: ")
    {
        let name = field.split('"').nth(1).unwrap_or(field).to_string();
        return format!("missing required field `{name}` (or it is null)");
    }
    format!("schema violation: {s}")
}

/// Add the metadata columns of the good messages (in message order, one per row of `record`).
fn assemble(
    messages: &[Message],
    record: &RecordBatch,
    good: &[usize],
) -> Result<RecordBatch, ArrowError> {
    let good: Vec<&Message> = good.iter().map(|&i| &messages[i]).collect();
    let topics: StringArray = good.iter().map(|m| Some(&*m.topic)).collect();
    let partitions: Int32Array = good.iter().map(|m| Some(m.partition)).collect();
    let offsets: Int64Array = good.iter().map(|m| Some(m.offset)).collect();
    let ts: TimestampMillisecondArray = good.iter().map(|m| m.timestamp_ms).collect();
    let mut columns: Vec<ArrayRef> = record.columns().to_vec();
    columns.push(Arc::new(topics));
    columns.push(Arc::new(partitions));
    columns.push(Arc::new(offsets));
    columns.push(Arc::new(ts.with_timezone("UTC")));
    RecordBatch::try_new(source_schema(), columns)
}

mod ahead;
mod fast;
#[cfg(test)]
mod tests;

pub use ahead::{Collected, Decoding, ReadAhead, read_ahead_while};
