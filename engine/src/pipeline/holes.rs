//! Every offset in order: a partition's messages must go on from its ledger's position.
//!
//! The lake's ledger says up to which offset a partition is processed; what the pipeline gets
//! next must start there (or before it: a replay). A message beyond it means the offsets between
//! were not delivered — a buffer that kept messages read before an assignment did that once
//! (fault run faults-100000-011418 lost 1,779 records) — or do not exist (deleted by retention
//! before they were read, compacted away, transaction markers, aborted transactions). The
//! pipeline cannot tell which from the messages, so it asks: the partition is read again from
//! the ledger's position ([`crate::source::Source::rewind`]), and what this batch holds of it from
//! there is left out. When the re-read brings the same hole, the offsets are not there: they are
//! counted (`carflow_source_offsets_missing_total`), logged, and passed over, and later holes of
//! that ownership are passed over without asking (a source with transaction markers has one
//! after every transaction).
//!
//! Offsets without a message at the *end* of a partition (a topic whose last transaction's
//! marker is its last offset) have no next message to show them. When the topic is quiet, the
//! source's position ([`crate::source::Source::positions`]: past the markers it served) beyond the
//! ledger's shows them: asked for the same way, then passed over in a commit of no message that
//! moves the ledger (and the group's position) to the end ([`Pipeline::mind_the_end`]). Without
//! it such a partition never looks processed to its end: never idle, so the windows of a quiet
//! transactional topic would not close, and its group lag stays one for good.

use std::collections::{BTreeMap, HashMap, HashSet};

use tokio_util::sync::CancellationToken;

use super::lake_step::Committed;
use super::overlap::InFlight;
use super::part::PartBatch;
use super::{Pipeline, Stop};
use crate::metrics::Metrics;
use crate::source::{Message, Source, TopicPartition};

/// What an ownership of a partition knows of holes in its offsets.
#[derive(Debug, Clone, Default)]
pub struct Holes {
    /// The source was asked to deliver the partition again from here (a hole seen there).
    asked_from: Option<i64>,
    /// A hole the source confirmed: later ones are passed over without asking again.
    confirmed: bool,
    /// Where the source started the partition, asked once while the lake held nothing of it
    /// (`None` inside: the source does not know).
    start: Option<Option<i64>>,
}

/// A hole not seen before: the partition is read again from `from`.
struct Ask {
    tp: TopicPartition,
    from: i64,
    found: i64,
}

impl<S: Source> Pipeline<S> {
    /// Check that each owned partition's messages in `kept` (in processing order) go on from its
    /// ledger's position without a hole; see the module docs. Returns the messages to process
    /// instead of `kept` when messages after a hole were left out (the source reads them again).
    pub(super) async fn mind_the_holes(&mut self, kept: &[Message]) -> Option<Vec<Message>> {
        self.ask_starts(kept).await;
        let mut asks = Vec::new();
        for group in kept.chunk_by(|a, b| a.same_partition(b)) {
            let tp = group[0].topic_partition();
            let Some(owned) = self.book.owned.get_mut(&tp) else {
                continue;
            };
            // Unknown (no commit, no known start): the first message sets it.
            let mut next = resume_point(owned);
            let holes = &mut owned.holes;
            for m in group {
                let Some(expected) = next else {
                    next = Some(m.offset + 1);
                    continue;
                };
                if m.offset <= expected {
                    // A replay (below the ledger), or the next offset.
                    if m.offset == expected {
                        next = Some(expected + 1);
                    }
                    continue;
                }
                if holes.answered(expected) {
                    holes.pass_over(&self.metrics, &tp, expected, m.offset);
                    next = Some(m.offset + 1);
                    continue;
                }
                asks.push(Ask {
                    tp: tp.clone(),
                    from: expected,
                    found: m.offset,
                });
                break;
            }
        }
        if asks.is_empty() {
            return None;
        }
        let mut cut: HashMap<TopicPartition, i64> = HashMap::new();
        let mut dropped_ahead = HashSet::new();
        for Ask { tp, from, found } in asks {
            match self.source.rewind(&tp, from).await {
                Ok(true) => {
                    self.metrics.source_rereads.inc();
                    tracing::warn!(partition = %tp, ledger_next_offset = from, delivered = found,
                        left_out = found - from,
                        "the source delivered a message beyond the partition's ledger position; reading the partition again from there");
                    if let Some(o) = self.book.owned.get_mut(&tp) {
                        o.holes.asked_from = Some(from);
                    }
                    dropped_ahead.insert(tp.clone());
                    cut.insert(tp, from);
                }
                Ok(false) => {
                    // A source that cannot go back: its messages are taken as they come.
                    self.metrics
                        .source_offsets_missing
                        .inc_by((found - from) as u64);
                    tracing::warn!(partition = %tp, from, to = found - 1,
                        "offsets not delivered by a source that cannot read again: passed over");
                    if let Some(o) = self.book.owned.get_mut(&tp) {
                        o.holes.confirmed = true;
                    }
                }
                Err(e) => {
                    // Nothing after the hole is processed; the next batch asks again.
                    self.metrics.error("source");
                    tracing::warn!(partition = %tp, from, delivered = found, error = %e,
                        "the source delivered a message beyond the partition's ledger position and cannot be asked to read again now; leaving the partition's messages after the gap for the next batch");
                    cut.insert(tp, from);
                }
            }
        }
        if !dropped_ahead.is_empty() {
            self.ahead.forget_all(&dropped_ahead);
        }
        if cut.is_empty() {
            return None;
        }
        Some(
            kept.iter()
                .filter(|m| {
                    cut.get(&m.topic_partition())
                        .is_none_or(|from| m.offset < *from)
                })
                .cloned()
                .collect(),
        )
    }

    /// On a quiet topic, pass over offsets without a message at the end of owned partitions:
    /// where the source's position is beyond the ledger's with nothing of the partition held,
    /// the partition is read again from the ledger's position once (as for any hole); when the
    /// position is beyond it again, or a hole of this ownership was confirmed before, the
    /// offsets are counted and passed over by a commit that moves the ledger to the position.
    pub(super) async fn mind_the_end(&mut self, shutdown: &CancellationToken) -> Result<(), Stop> {
        if self.in_flight.is_some()
            || !self.redo.is_empty()
            || self.ahead.held() > 0
            || self.source.has_events()
        {
            return Ok(());
        }
        let mut passes = Vec::new();
        for (tp, pos) in self.source.positions() {
            let Some(o) = self.book.owned.get(&tp) else {
                continue;
            };
            if pos <= o.ledger.next_offset {
                continue;
            }
            if holds_nothing(&o.ledger) {
                self.ask_start(&tp).await;
            }
            // Unknown (no commit, no known start): nothing to check the position against.
            let Some(expected) = self.book.owned.get(&tp).and_then(resume_point) else {
                continue;
            };
            if pos <= expected {
                continue;
            }
            if self.book.owned[&tp].holes.answered(expected) {
                passes.push((tp, expected, pos));
                continue;
            }
            match self.source.rewind(&tp, expected).await {
                Ok(true) => {
                    self.metrics.source_rereads.inc();
                    tracing::info!(partition = %tp, ledger_next_offset = expected, position = pos,
                        "the source's position is beyond the partition's last message processed (offsets without a message at its end?); reading the partition again from there");
                    if let Some(o) = self.book.owned.get_mut(&tp) {
                        o.holes.asked_from = Some(expected);
                    }
                }
                Ok(false) => passes.push((tp, expected, pos)),
                Err(e) => {
                    self.metrics.error("source");
                    tracing::warn!(partition = %tp, error = %e,
                        "cannot ask the source to read the partition's end again now; asking again later");
                }
            }
        }
        if passes.is_empty() {
            return Ok(());
        }
        let mut parts = Vec::with_capacity(passes.len());
        for (tp, from, to) in passes {
            if let Some(o) = self.book.owned.get_mut(&tp) {
                o.holes.pass_over(&self.metrics, &tp, from, to);
            }
            parts.push(PartBatch {
                tp,
                range: (from, to - 1, 0),
                fresh: None,
                dead: Vec::new(),
                outputs: Vec::new(),
                lake_inputs: BTreeMap::new(),
                max_event: BTreeMap::new(),
                windows: None,
                late: 0,
                replayed: 0,
            });
        }
        self.commit_passes(parts, shutdown).await
    }

    /// Commit partitions' passes over offsets without a message (no rows, no files): their
    /// ledgers, counts and source positions move to the end of what was passed over.
    async fn commit_passes(
        &mut self,
        mut parts: Vec<PartBatch>,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        let started = tokio::time::Instant::now();
        let mut at = std::time::Instant::now();
        let early = self.encode_early(&parts);
        match self
            .commit_parts(&mut parts, early, shutdown, &mut at)
            .await?
        {
            Committed::Landed { fenced } => {
                for tp in &fenced {
                    // Another writer moved the ledger on: its position decides again later.
                    self.reload_fenced(tp, shutdown).await?;
                }
                parts.retain(|p| !fenced.contains(&p.tp));
                self.finish_batch(&parts, 0, 0, started).await;
            }
            // Nothing was in flight, so nothing asks for a redo.
            Committed::Redo => {}
            Committed::InFlight(task, after) => {
                let tallies = parts
                    .iter()
                    .map(|p| (p.tp.clone(), self.part_tally(p)))
                    .collect();
                self.in_flight = Some(InFlight {
                    task,
                    after,
                    messages: std::sync::Arc::new(Vec::new()),
                    body: String::new(),
                    points: 0,
                    touched: Default::default(),
                    tallies,
                    bytes: 0,
                    started,
                });
            }
        }
        Ok(())
    }

    /// Ask the source where it started each partition of `kept` the lake holds nothing of yet.
    async fn ask_starts(&mut self, kept: &[Message]) {
        for group in kept.chunk_by(|a, b| a.same_partition(b)) {
            let tp = group[0].topic_partition();
            if self
                .book
                .owned
                .get(&tp)
                .is_some_and(|o| holds_nothing(&o.ledger))
            {
                self.ask_start(&tp).await;
            }
        }
    }

    /// Ask the source where it started the owned partition `tp` (once per ownership).
    async fn ask_start(&mut self, tp: &TopicPartition) {
        if self
            .book
            .owned
            .get(tp)
            .is_none_or(|o| o.holes.start.is_some())
        {
            return;
        }
        let start = self.source.start_of(tp).await.unwrap_or_else(|e| {
            tracing::debug!(partition = %tp, error = %e, "cannot tell where the source started the partition");
            None
        });
        if let Some(o) = self.book.owned.get_mut(tp) {
            o.holes.start = Some(start);
        }
    }
}

impl Holes {
    /// Was a hole at `from` asked for already, or one of this ownership confirmed (so a hole
    /// there is passed over without asking)?
    fn answered(&self, from: i64) -> bool {
        self.confirmed || self.asked_from == Some(from)
    }

    /// Pass over offsets `from..to` the partition `tp` does not have: counted, logged (a warning
    /// the first time in this ownership), and later holes pass without asking.
    fn pass_over(&mut self, metrics: &Metrics, tp: &TopicPartition, from: i64, to: i64) {
        let missing = (to - from) as u64;
        metrics.source_offsets_missing.inc_by(missing);
        if self.confirmed {
            tracing::debug!(partition = %tp, from, to = to - 1, missing,
                "offsets the partition does not have passed over");
        } else {
            tracing::warn!(partition = %tp, from, to = to - 1, missing,
                "the partition does not have these offsets, even read again (deleted by retention before they were read, compacted away, transaction markers, an aborted transaction): passed over; counted in carflow_source_offsets_missing_total");
        }
        self.confirmed = true;
        self.asked_from = None;
    }
}

/// Where an owned partition's next message must be: its ledger's position, or, while the lake
/// holds nothing of it, where the source started it (`None` when that is not known).
fn resume_point(owned: &super::partitions::Owned) -> Option<i64> {
    if holds_nothing(&owned.ledger) {
        owned.holes.start.flatten()
    } else {
        Some(owned.ledger.next_offset)
    }
}

/// The lake holds nothing of the partition yet: nothing committed, nothing processed.
fn holds_nothing(ledger: &crate::ledger::PartitionLedger) -> bool {
    ledger.seq == 0 && ledger.next_offset == 0
}
