//! Reading ahead: while a batch commits (on HDFS mostly waiting for the namenode), the batcher
//! reads the next batch's messages and decodes them on a blocking thread, so the next batch starts
//! with its rows ready.
//!
//! Nothing of the pipeline's state is touched: what is read ahead is only held in memory (at most
//! one batch, by the same limits) until [`super::collect_batch`] hands it out, and the source
//! positions still move only when a batch is committed, so a crash loses nothing that is not
//! read again. The rules of a batch hold for what is read ahead: it closes at the row or byte
//! limit, at the linger time counted from its first message, and before the first message that
//! follows a change of partition ownership; and nothing is read while such a change waits to be
//! applied.

use std::future::Future;

use futures::FutureExt;
use std::sync::Arc;

use arrow::error::ArrowError;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{BatchEnd, BatchLimits, DecodeRules, DecodedBatch, decode_batch_with};
use crate::source::{Message, Source, SourceError, in_processing_order};

/// A batch being decoded on a blocking thread.
pub type Decoding = JoinHandle<Result<DecodedBatch, ArrowError>>;

/// A batch handed out by [`super::collect_batch`].
#[derive(Debug)]
pub struct Collected {
    /// Its messages: in arrival order, or, when read ahead, in processing order.
    pub messages: Arc<Vec<Message>>,
    /// Why it closed.
    pub end: BatchEnd,
    /// Its decoding, started while the previous batch committed (decoding all of `messages`).
    pub decoded: Option<Decoding>,
}

/// Messages read ahead of the batch being processed.
#[derive(Debug, Default)]
pub struct ReadAhead {
    /// The message that arrived after an ownership change: it starts the next batch.
    pub(super) carry: Option<Message>,
    /// Messages of the next batch so far.
    pub(super) messages: Vec<Message>,
    /// Their payload bytes.
    pub(super) bytes: usize,
    /// When the first of them arrived (the linger counts from it).
    pub(super) since: Option<Instant>,
    /// A whole batch, closed while reading ahead, with its decoding.
    pub(super) ready: Option<Collected>,
    /// The source failed while reading ahead (returned by the next collect).
    pub(super) failed: Option<SourceError>,
}

impl ReadAhead {
    /// Messages held (for tests and logs).
    pub fn held(&self) -> usize {
        self.messages.len()
            + usize::from(self.carry.is_some())
            + self.ready.as_ref().map_or(0, |c| c.messages.len())
    }

    /// Drop the messages of `tps` read so far (not the carried one, which came after the
    /// ownership change): a partition assigned (again) is read anew from its committed position,
    /// so messages of it read before the assignment would skip what the re-delivery brings
    /// before them. Returns how many were dropped.
    pub fn forget(
        &mut self,
        tps: &std::collections::HashSet<crate::source::TopicPartition>,
    ) -> usize {
        let of = |m: &Message| tps.contains(&m.topic_partition());
        let before = self.messages.len();
        self.messages.retain(|m| !of(m));
        let mut dropped = before - self.messages.len();
        self.bytes = self.messages.iter().map(Message::size).sum();
        if self.messages.is_empty() {
            self.since = None;
        }
        if let Some(ready) = self.ready.as_mut()
            && ready.messages.iter().any(of)
        {
            let kept: Vec<Message> = ready.messages.iter().filter(|m| !of(m)).cloned().collect();
            dropped += ready.messages.len() - kept.len();
            ready.messages = Arc::new(kept);
            // Its decoding was of the whole batch: the pipeline decodes what is left itself.
            ready.decoded = None;
        }
        dropped
    }

    /// [`ReadAhead::forget`], and the carried message too when it is of `tps`: for partitions
    /// the source was asked to read again from an earlier offset, which brings it again.
    pub fn forget_all(
        &mut self,
        tps: &std::collections::HashSet<crate::source::TopicPartition>,
    ) -> usize {
        let carried = self
            .carry
            .take_if(|m| tps.contains(&m.topic_partition()))
            .is_some();
        self.forget(tps) + usize::from(carried)
    }

    /// Is a whole batch waiting (the pipeline is behind the source)?
    pub fn has_batch(&self) -> bool {
        self.ready.as_ref().is_some_and(|c| !c.messages.is_empty())
    }

    /// Add a message; close the batch when it is full.
    pub(super) fn push(&mut self, message: Message, limits: &BatchLimits, rules: &DecodeRules) {
        self.since.get_or_insert_with(Instant::now);
        self.bytes += message.size();
        self.messages.push(message);
        if self.messages.len() >= limits.max_rows || self.bytes >= limits.max_bytes {
            self.close(BatchEnd::Full, rules);
        }
    }

    /// Close the batch read so far and start decoding it. The messages are put in the order
    /// the pipeline processes them (by partition and offset, each offset once), so the decoding
    /// is of exactly the batch it will process.
    pub(super) fn close(&mut self, end: BatchEnd, rules: &DecodeRules) {
        let mut messages = std::mem::take(&mut self.messages);
        in_processing_order(&mut messages);
        let messages = Arc::new(messages);
        self.bytes = 0;
        self.since = None;
        let decoded = (!messages.is_empty()).then(|| {
            let (m, rules) = (Arc::clone(&messages), *rules);
            tokio::task::spawn_blocking(move || decode_batch_with(&m, &rules))
        });
        self.ready = Some(Collected {
            messages,
            end,
            decoded,
        });
    }
}

/// Run `work` (a batch's commit) and, while it runs, read the next batch's messages from
/// `source` into `ahead`; a batch that closes meanwhile starts decoding at once. Returns `work`'s
/// output as soon as it is done: reading ahead never delays it. A source error is kept for the
/// next collect, so `work` always runs to its end.
pub async fn read_ahead_while<S: Source, T>(
    source: &mut S,
    limits: &BatchLimits,
    rules: &DecodeRules,
    ahead: &mut ReadAhead,
    work: impl Future<Output = T>,
) -> T {
    tokio::pin!(work);
    // One timer for the linger, armed when the batch's first message arrives.
    let linger = tokio::time::sleep_until(Instant::now());
    tokio::pin!(linger);
    let mut armed = false;
    loop {
        // An ownership change waiting to be applied: nothing is read until it is (what is read
        // ahead must all predate the change, but for the one message carried across it, or the
        // assignment would take messages of the new ownership for ones read before it).
        if ahead.ready.is_some() || ahead.failed.is_some() || source.has_events() {
            return work.await;
        }
        if let Some(m) = ahead.carry.take() {
            ahead.push(m, limits, rules);
            continue;
        }
        match ahead.since {
            Some(since) if !armed => {
                linger.as_mut().reset(since + limits.linger);
                armed = true;
            }
            None => armed = false,
            _ => {}
        }
        tokio::select! {
            biased;
            out = &mut work => return out,
            _ = &mut linger, if armed => ahead.close(BatchEnd::Linger, rules),
            next = source.next_message() => {
                take(source, limits, rules, ahead, next);
                // What the source holds already is taken without going round the select (and
                // polling `work`) once per message.
                while ahead.ready.is_none() && ahead.failed.is_none() {
                    match source.next_message().now_or_never() {
                        Some(next) => take(source, limits, rules, ahead, next),
                        None => break,
                    }
                }
            }
        }
    }
}

/// Take one answer of the source into `ahead`.
fn take<S: Source>(
    source: &S,
    limits: &BatchLimits,
    rules: &DecodeRules,
    ahead: &mut ReadAhead,
    next: Result<Option<Message>, SourceError>,
) {
    match next {
        Err(e) => ahead.failed = Some(e),
        Ok(None) => ahead.close(BatchEnd::SourceExhausted, rules),
        Ok(Some(m)) => {
            if source.has_events() {
                ahead.carry = Some(m);
                ahead.close(BatchEnd::Rebalance, rules);
            } else {
                ahead.push(m, limits, rules);
            }
        }
    }
}
