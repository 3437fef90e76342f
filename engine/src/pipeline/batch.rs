//! One micro-batch, from its messages to its commit.
//!
//! In order: apply ownership changes; keep the messages of owned partitions (each offset once);
//! decode; load the partitions' ledgers; per partition, take the rows the ledger does not hold
//! yet; run the lake transforms ([`super::lake_step`]) and the per-row Influx transforms
//! ([`super::points`]), isolating rows a transform cannot take; fold the rows into the open
//! windows ([`super::windows_step`]); write the per-row points (InfluxDB overwrites a point with
//! the same series and time, so a replay rewrites the same values); commit every partition's files,
//! dead letters, progress and window state in one ledger step each; when a commit is fenced, reload
//! that partition and process the batch again (what was committed is now a replay); write the
//! points of the windows the batch touched; record the source positions; close windows every
//! partition has passed. When this engine is alone on the topic and behind it, the commit goes
//! on while the next batch is processed, and what follows it waits until it lands
//! ([`super::overlap`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::RecordBatch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::lake_step::Committed;
use super::overlap::InFlight;
use super::part::{MessageIndex, PartBatch};
use super::partitions::{from_offset, max_time, offset_ranges, split_by_partition};
use super::{Pipeline, PipelineError, Stop};
use crate::batcher::{Decoding, decode_batch_with};
use crate::source::{
    DeadLetter, Message, PartitionCommit, Source, TopicPartition, in_processing_order,
};

/// The event-time columns the windowed queries use.
pub(super) fn window_columns<S: Source>(p: &Pipeline<S>) -> Vec<String> {
    let mut cols: Vec<String> = p
        .queries
        .windows
        .values()
        .map(|w| w.query.spec.column.clone())
        .collect();
    cols.sort();
    cols.dedup();
    cols
}

impl<S: Source> Pipeline<S> {
    /// Process one batch of messages (see the module docs).
    ///
    /// `decoded` is the batch's decoding started while the previous batch committed; it is used
    /// when every message of the batch is kept (else the kept ones are decoded here).
    pub(super) async fn process(
        &mut self,
        messages: &Arc<Vec<Message>>,
        decoded: &mut Option<Decoding>,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        let started = Instant::now();
        let mut at = std::time::Instant::now();
        let mut batch = Arc::clone(messages);
        loop {
            let revoked_now = self.apply_events(shutdown).await?;
            if !self.redo.is_empty() {
                // Messages of a fenced commit go again, with this batch.
                let mut all = std::mem::take(&mut self.redo);
                all.extend(batch.iter().cloned());
                batch = Arc::new(all);
                *decoded = None;
            }
            let mut kept = self.owned_in_order(&batch, &revoked_now);
            if kept.is_empty() {
                return Ok(());
            }
            let mut ranges = offset_ranges(&kept);
            for tp in ranges.keys() {
                self.ensure_loaded(tp, shutdown).await?;
            }
            self.refresh_view().await;
            for tp in ranges.keys() {
                self.check_topic_id(tp)?;
            }
            if let Some(fewer) = self.mind_the_holes(&kept).await {
                kept = Cow::Owned(fewer);
                ranges = offset_ranges(&kept);
            }
            if kept.is_empty() {
                return Ok(());
            }
            self.metrics.step("prepare", &mut at);
            let bytes: usize = kept.iter().map(Message::size).sum();
            let ready = match (&kept, decoded.take()) {
                (Cow::Borrowed(_), Some(handle)) => handle.await.ok(),
                _ => None,
            };
            let decoded = match ready {
                Some(d) => d,
                None => decode_batch_with(&kept, &self.options.rules),
            }
            .map_err(|e| Stop::Failed(PipelineError::from(e)))?;
            if let Some(first) = decoded.dead_letters.first() {
                tracing::warn!(count = decoded.dead_letters.len(), partition = first.partition,
                    offset = first.offset, reason = %first.reason, "dead letters in batch (first shown)");
            }
            self.metrics.step("decode", &mut at);
            let mut parts = self.part_batches(&ranges, &decoded.rows, decoded.dead_letters)?;
            let mut index = MessageIndex::new(&kept);
            self.metrics.step("prepare", &mut at);
            self.lake_transforms(&mut parts, &mut index).await?;
            let early = self.encode_early(&parts);
            self.metrics.step("lake_transform", &mut at);
            let mut body = String::new();
            let row_points = self.row_points(&mut parts, &mut index, &mut body).await?;
            self.metrics.step("points", &mut at);
            let touched = self.fold_windows(&mut parts, &mut index).await?;
            self.metrics.step("windows", &mut at);
            self.write_influx(&body, shutdown).await?;
            self.metrics.step("influx_write", &mut at);
            let fenced = match self
                .commit_parts(&mut parts, early, shutdown, &mut at)
                .await?
            {
                Committed::Landed { fenced } => fenced,
                Committed::Redo => continue,
                Committed::InFlight(task, after) => {
                    let mut body = String::new();
                    let window_points = self.merged_points(&touched, &mut body).await?;
                    self.metrics.step("window_merge", &mut at);
                    let tallies = parts
                        .iter()
                        .map(|p| (p.tp.clone(), self.part_tally(p)))
                        .collect();
                    let messages = match kept {
                        Cow::Borrowed(_) => Arc::clone(&batch),
                        Cow::Owned(v) => Arc::new(v),
                    };
                    self.in_flight = Some(InFlight {
                        task,
                        after,
                        messages,
                        body,
                        points: row_points + window_points,
                        touched,
                        tallies,
                        bytes: bytes as u64,
                        started,
                    });
                    self.close_windows_now().await;
                    self.metrics.step("close", &mut at);
                    return Ok(());
                }
            };
            if !fenced.is_empty() {
                for tp in fenced {
                    tracing::warn!(partition = %tp, "the partition's ledger moved on under this engine (another writer); reloading it and processing the batch again");
                    self.reload_fenced(&tp, shutdown).await?;
                }
                continue;
            }
            // Counted by write_windows itself (window_merge, window_write).
            let window_points = self.write_windows(touched, shutdown).await?;
            at = std::time::Instant::now();
            self.finish_batch(&parts, bytes, row_points + window_points, started)
                .await;
            self.metrics.step("offsets", &mut at);
            self.close_windows_now().await;
            self.metrics.step("close", &mut at);
            tracing::debug!(
                records = kept.len(),
                rows = decoded.rows.num_rows(),
                ms = started.elapsed().as_millis() as u64,
                "batch committed"
            );
            return Ok(());
        }
    }

    /// Messages of partitions this process still owns, in offset order, each offset once, and
    /// none this ownership already processed (a re-delivery after a rebalance). The batch itself
    /// when it is all of that already (the usual case: no copy of the payloads).
    fn owned_in_order<'m>(
        &self,
        messages: &'m [Message],
        revoked_now: &HashSet<TopicPartition>,
    ) -> Cow<'m, [Message]> {
        let keep = |m: &Message| {
            let tp = m.topic_partition();
            let done = self.book.owned.get(&tp).and_then(|p| p.next_processed);
            !self.book.revoked.contains(&tp)
                && !revoked_now.contains(&tp)
                && done.is_none_or(|n| m.offset >= n)
        };
        let in_order = |w: &[Message]| w[0].position() < w[1].position();
        if messages.windows(2).all(in_order) && messages.iter().all(keep) {
            return Cow::Borrowed(messages);
        }
        let mut kept: Vec<Message> = messages.iter().filter(|m| keep(m)).cloned().collect();
        if !kept.windows(2).all(in_order) {
            in_processing_order(&mut kept);
        }
        Cow::Owned(kept)
    }

    /// Refresh the topic view (every partition's end, the topic's id), at most once a second.
    pub(super) async fn refresh_view(&mut self) {
        self.refresh_view_within(std::time::Duration::from_secs(1))
            .await
    }

    /// Close windows with a view of the ends read now when a partition looks caught up: a
    /// cached end would let a partition whose new messages this engine has not fetched yet pass
    /// for idle, and windows close over its rows (seen as late rows after a quiet spell).
    pub(super) async fn close_windows_now(&mut self) {
        if self.any_at_view_end() {
            self.refresh_view_within(std::time::Duration::ZERO).await;
        }
        self.close_windows();
    }

    /// Does the view held show some partition processed to its end (so it would count as caught
    /// up)?
    fn any_at_view_end(&self) -> bool {
        self.book.view.ends.iter().any(|(tp, end)| {
            let processed =
                super::partitions::progress_of(&self.book.owned, &self.book.observed, tp)
                    .map_or(0, |p| p.next_offset);
            processed >= *end
        })
    }

    /// Refresh the topic view unless the one held is younger than `max_age`.
    async fn refresh_view_within(&mut self, max_age: std::time::Duration) {
        match self.source.topic_view(max_age).await {
            Ok(v) => {
                self.book.view = v;
                self.health.set("source", None);
            }
            Err(e) => {
                self.metrics.error("source");
                tracing::warn!(error = %e, "cannot read the topic's partitions; using the last view");
            }
        }
    }

    /// Split the batch per partition: fresh rows, their dead letters, replays.
    fn part_batches(
        &mut self,
        ranges: &BTreeMap<TopicPartition, (i64, i64, u64)>,
        rows: &RecordBatch,
        dead: Vec<DeadLetter>,
    ) -> Result<Vec<PartBatch>, Stop> {
        let groups = split_by_partition(rows)?;
        let mut dead_by: HashMap<TopicPartition, Vec<DeadLetter>> = HashMap::new();
        for d in dead {
            dead_by.entry(d.topic_partition()).or_default().push(d);
        }
        let columns = window_columns(self);
        let mut parts = Vec::with_capacity(ranges.len());
        for (tp, range) in ranges {
            let from = self.book.owned.get(tp).map_or(0, |o| o.ledger.next_offset);
            let fresh = groups
                .get(tp)
                .map(|r| from_offset(r, from))
                .transpose()?
                .filter(|r| r.num_rows() > 0);
            let dead: Vec<DeadLetter> = dead_by
                .remove(tp)
                .unwrap_or_default()
                .into_iter()
                .filter(|d| d.offset >= from)
                .collect();
            let fresh_count = fresh.as_ref().map_or(0, RecordBatch::num_rows) + dead.len();
            let mut max_event = BTreeMap::new();
            if let Some(f) = &fresh {
                for c in &columns {
                    if let Some(m) = max_time(f, c)? {
                        max_event.insert(c.clone(), m);
                    }
                }
            }
            parts.push(PartBatch {
                tp: tp.clone(),
                range: *range,
                fresh,
                dead,
                outputs: Vec::new(),
                lake_inputs: BTreeMap::new(),
                max_event,
                windows: None,
                late: 0,
                replayed: range.2.saturating_sub(fresh_count as u64),
            });
        }
        Ok(parts)
    }

    /// Metrics, summary, health and source positions of a committed batch: at once, or, while
    /// its window points are still being written, once they land (so a batch counts as done only
    /// when every sink has it, as before writes went on in the background).
    pub(super) async fn finish_batch(
        &mut self,
        parts: &[PartBatch],
        bytes: usize,
        points: u64,
        started: Instant,
    ) {
        let done = self.tally(parts, bytes, points, started);
        if self.pending_points.is_some() {
            self.unfinished.push(done);
        } else {
            self.record(done).await;
        }
    }

    /// What a committed batch adds to the counts.
    fn tally(&self, parts: &[PartBatch], bytes: usize, points: u64, started: Instant) -> Done {
        let mut done = Done::default();
        done.add_batch(bytes as u64, points, started);
        for part in parts {
            done.absorb(self.part_tally(part));
        }
        done
    }

    /// What one partition's share of a committed batch adds to the counts.
    pub(super) fn part_tally(&self, part: &PartBatch) -> Done {
        let mut done = Done {
            records: part.range.2,
            rows: part.fresh.as_ref().map_or(0, |r| r.num_rows() as u64),
            late: part.late,
            replayed: part.replayed,
            lake_inputs: part.lake_inputs.clone(),
            dead: part.dead.len() as u64,
            ..Done::default()
        };
        for d in &part.dead {
            match &d.transform {
                None => done.undecodable += 1,
                Some(t) => *done.transform_dead.entry(t.clone()).or_default() += 1,
            }
        }
        if let Some(o) = self.book.owned.get(&part.tp) {
            done.commits.push(PartitionCommit {
                tp: part.tp.clone(),
                next_offset: o.ledger.next_offset.max(part.range.1 + 1),
            });
        }
        done
    }

    /// Record a batch whose every sink has it: metrics, summary, health, the engine's own point
    /// and the source positions.
    pub(super) async fn record(&mut self, done: Done) {
        // Partitions revoked since the commit are another engine's to report now.
        let commits: Vec<PartitionCommit> = done
            .commits
            .iter()
            .filter(|c| self.book.owned.contains_key(&c.tp))
            .cloned()
            .collect();
        for c in &commits {
            self.health
                .processed(&c.tp.topic, c.tp.partition, c.next_offset);
        }
        self.metrics.replayed.inc_by(done.replayed);
        self.summary.replayed += done.replayed;
        for (d, n) in &done.lake_inputs {
            *self.summary.lake_inputs.entry(d.clone()).or_default() += n;
        }
        for (t, n) in &done.transform_dead {
            *self
                .summary
                .transform_dead_letters
                .entry(t.clone())
                .or_default() += n;
            self.metrics.transform_dead_letters.inc_by(*n);
        }
        self.summary.dead_letters += done.dead;
        self.metrics.dead_letters.inc_by(done.dead);
        let lag = self.source.lag();
        if self.options.engine_metrics {
            let mut line = String::new();
            super::points::engine_point(
                &mut line,
                &self.options.engine_id,
                done.records,
                done.rows,
                done.dead as usize,
                done.late,
                done.points,
                done.started,
                lag,
            );
            // Best effort: the engine's own metrics never hold a batch back. Behind a write in
            // flight, it goes after it (never two writers at once).
            if self.pending_points.is_some() {
                self.write_influx_later(line, true, &CancellationToken::new());
            } else {
                let write = self.sinks.influx.write(&line);
                let _ = reading_ahead!(self, write).await;
            }
        }
        if let Err(e) = self.source.commit(&commits).await {
            tracing::warn!(error = %e, "recording source positions failed; the next batch records them again");
            self.metrics.error("source");
        }
        self.summary.records_in += done.records - done.replayed;
        self.summary.rows += done.rows;
        self.summary.undecodable += done.undecodable;
        self.summary.late_rows += done.late;
        self.summary.points += done.points;
        self.summary.batches += 1;
        self.metrics.records_in.inc_by(done.records);
        self.metrics.bytes_in.inc_by(done.bytes);
        self.metrics.late_rows.inc_by(done.late);
        self.metrics.batches.inc();
        self.metrics
            .batch_seconds
            .observe(done.started.elapsed().as_secs_f64());
        self.metrics.consumer_lag.set(lag.unwrap_or(0));
        self.metrics.window_rows.set(
            self.book
                .owned
                .values()
                .map(|o| o.windows.rows() as i64)
                .sum(),
        );
        self.health.committed();
    }
}

impl Done {
    /// Set what belongs to the batch as a whole.
    pub(super) fn add_batch(&mut self, bytes: u64, points: u64, started: Instant) {
        self.bytes += bytes;
        self.points += points;
        self.started = started;
    }

    /// Add another part's counts.
    pub(super) fn absorb(&mut self, other: Done) {
        self.commits.extend(other.commits);
        self.records += other.records;
        self.rows += other.rows;
        self.late += other.late;
        self.replayed += other.replayed;
        self.undecodable += other.undecodable;
        self.dead += other.dead;
        for (k, n) in other.transform_dead {
            *self.transform_dead.entry(k).or_default() += n;
        }
        for (k, n) in other.lake_inputs {
            *self.lake_inputs.entry(k).or_default() += n;
        }
        self.bytes += other.bytes;
        self.points += other.points;
    }
}

/// A committed batch's counts, recorded when every sink has it.
#[derive(Debug)]
pub(super) struct Done {
    commits: Vec<PartitionCommit>,
    records: u64,
    rows: u64,
    late: u64,
    replayed: u64,
    undecodable: u64,
    dead: u64,
    transform_dead: BTreeMap<String, u64>,
    lake_inputs: BTreeMap<String, u64>,
    bytes: u64,
    points: u64,
    started: Instant,
}

impl Default for Done {
    fn default() -> Self {
        Self {
            commits: Vec::new(),
            records: 0,
            rows: 0,
            late: 0,
            replayed: 0,
            undecodable: 0,
            dead: 0,
            transform_dead: BTreeMap::new(),
            lake_inputs: BTreeMap::new(),
            bytes: 0,
            points: 0,
            started: Instant::now(),
        }
    }
}
