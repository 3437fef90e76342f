//! The lake step of a batch: every lake transform over each partition's fresh rows (rows a
//! transform cannot take become dead letters naming it), then each partition's commit — files,
//! dead letters, event-time progress and window state in one ledger step — all partitions at once,
//! since on HDFS a commit is bound by round trips, not CPU.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::part::{MessageIndex, PartBatch, refused_rows, run_on};
use super::{Pipeline, PipelineError, Stop};
use crate::ledger::{CommitState, LedgerError, PartitionLedger, Progress};
use crate::metrics::{Health, Metrics};
use crate::retry::{Backoff, RetryError, Transient, retry_reporting};
use crate::sink::dead_letter;
use crate::sink::lake::{
    DatasetOutput, EncodedFile, LakeError, LakeSink, MergedFile, StagedCommit,
};
use crate::source::{Source, TopicPartition};
use crate::transform::isolate::run_isolating;
use crate::transform::{Target, Transform};

/// The Parquet files of a batch's lake datasets, encoded on a blocking thread while its windows
/// fold ([`Pipeline::encode_early`]): per partition, the offsets they cover and the files.
pub(super) type EarlyEncode = tokio::task::JoinHandle<
    Result<BTreeMap<TopicPartition, ((i64, i64), Vec<EncodedFile>)>, LakeError>,
>;

/// One partition's commit, encoded and waiting for its I/O.
pub(super) struct Prepared {
    pub tp: TopicPartition,
    next_offset: i64,
    ledger: PartitionLedger,
    /// What to encode: the offsets covered and every dataset's output.
    encode: Option<((i64, i64), Vec<DatasetOutput>)>,
    files: Vec<EncodedFile>,
    /// Merges of the partition's small files, committed with it.
    merges: Vec<MergedFile>,
    /// The ownership it was prepared under.
    epoch: u64,
    state: CommitState,
    /// Its files and entry, staged while the previous batch's commit went on
    /// ([`Pipeline::prestage`]): only the publishing is left.
    prestaged: Option<StagedCommit>,
}

/// The ledgers a batch's commit leaves once it lands, per partition (with the ownership it was
/// prepared under): what the next batch's commit is staged against before it has landed.
pub(super) type LedgersAfter = BTreeMap<TopicPartition, (u64, PartitionLedger)>;

/// The next batch's commits being staged while a commit goes on: per partition, the ledger
/// each was staged against and how its staging went.
type Prestaging = tokio::task::JoinHandle<
    Vec<(
        TopicPartition,
        PartitionLedger,
        Result<StagedCommit, LakeError>,
    )>,
>;

impl<S: Source> Pipeline<S> {
    /// Run every lake transform over each partition's fresh rows.
    pub(super) async fn lake_transforms(
        &mut self,
        parts: &mut [PartBatch],
        index: &mut MessageIndex<'_>,
    ) -> Result<(), Stop> {
        let transforms: Vec<Transform> = self
            .queries
            .transforms
            .iter()
            .filter(|t| matches!(t.target, Target::Lake { .. }))
            .cloned()
            .collect();
        for part in parts.iter_mut() {
            let Some(fresh) = part.fresh.clone() else {
                continue;
            };
            for t in &transforms {
                let Target::Lake {
                    dataset,
                    partition_by,
                } = &t.target
                else {
                    continue;
                };
                let planner = &self.queries.planner;
                let iso = run_isolating(&fresh, |rows| run_on(planner, t, rows)).await;
                if iso.all_failed(fresh.num_rows())
                    && let Some(e) = self
                        .queries
                        .canary
                        .broken(|rows| run_on(planner, t, rows))
                        .await
                {
                    return Err(Stop::Stalled(format!(
                        "{} ({}) fails on every row, sample rows included: {e}",
                        t.target_name(),
                        t.file.display()
                    )));
                }
                let refused = refused_rows(index, &fresh, &iso.poison, t)?;
                part.dead.extend(refused);
                *part.lake_inputs.entry(dataset.clone()).or_default() += fresh.num_rows() as u64;
                part.outputs.push(DatasetOutput {
                    dataset: dataset.clone(),
                    partition_by: partition_by.clone(),
                    batches: iso.outputs,
                });
            }
        }
        self.queries.planner.batch.set(Vec::new());
        Ok(())
    }

    /// Start encoding the lake datasets' outputs of `parts` (what [`Pipeline::lake_transforms`]
    /// made; folding the windows changes none of it) on a blocking thread, so the encoding
    /// overlaps the windows step. Dead letters, which the windows step may add to, are encoded
    /// with the commit.
    pub(super) fn encode_early(&self, parts: &[PartBatch]) -> EarlyEncode {
        let mut jobs = Vec::new();
        for part in parts {
            let Some(owned) = self.book.owned.get(&part.tp) else {
                continue;
            };
            if !part.is_new(owned.ledger.next_offset) || part.outputs.is_empty() {
                continue;
            }
            let first = part.range.0.max(owned.ledger.next_offset);
            jobs.push((
                part.tp.clone(),
                owned.ledger.topic_id.clone(),
                (first, part.range.1),
                part.outputs.clone(),
            ));
        }
        let lake = self.sinks.lake.clone();
        tokio::task::spawn_blocking(move || {
            let files = on_two_threads(&mut jobs, |(tp, topic_id, range, outputs)| {
                lake.encode(tp, topic_id.as_deref(), *range, outputs)
                    .map(|files| (tp.clone(), (*range, files)))
            })?;
            Ok(files.into_iter().collect())
        })
    }

    /// Commit every partition of the batch that holds anything new (see [`Committed`]).
    ///
    /// A commit of the previous batch still in flight lands first (its outcome may ask for
    /// messages to be processed again: [`Committed::Redo`]). The partitions' state moves on as
    /// the commit starts (a failed commit stops the engine, a fenced one reloads the
    /// partition). Then, when this engine is alone on the topic and behind it, the commit goes on
    /// in the background while the next batch is processed ([`Committed::InFlight`]); else it
    /// is waited for here.
    pub(super) async fn commit_parts(
        &mut self,
        parts: &mut [PartBatch],
        early: EarlyEncode,
        shutdown: &CancellationToken,
        at: &mut std::time::Instant,
    ) -> Result<Committed, Stop> {
        let mut early = match early.await {
            Ok(r) => r.map_err(|e| Stop::Failed(PipelineError::from(e)))?,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let mut prepared = Vec::new();
        for part in parts.iter_mut() {
            if let Some(mut p) = self.prepare(part)? {
                p.merges = self.compactor.take_ready(&p.tp, p.epoch);
                // The datasets' files encoded while the windows folded (for the same offsets):
                // only the dead letters are left to encode.
                if let (Some((range, outputs)), Some((early_range, files))) =
                    (p.encode.as_mut(), early.remove(&p.tp))
                    && *range == early_range
                {
                    // `prepare` put the datasets' outputs first, then the dead letters.
                    outputs.drain(..part.outputs.len().min(outputs.len()));
                    p.files = files;
                }
                prepared.push(p);
            }
        }
        encode_all(&self.sinks.lake, &mut prepared)?;
        self.metrics.step("lake_encode", at);
        let mut prestaging = None;
        if self.in_flight.is_some() {
            prestaging = self.prestage(&prepared);
            if self.land(shutdown).await? {
                settle_prestaged(&self.sinks.lake, &self.metrics, prestaging, &mut []).await;
                return Ok(Committed::Redo);
            }
            // Each commit builds on the ledger the previous one left.
            let owned = &self.book.owned;
            prepared.retain_mut(|p| match owned.get(&p.tp) {
                Some(o) if o.epoch == p.epoch => {
                    p.ledger = o.ledger.clone();
                    true
                }
                _ => false,
            });
            *at = std::time::Instant::now();
        }
        for p in &prepared {
            self.apply_state(p, parts);
        }
        let after: LedgersAfter = prepared
            .iter()
            .map(|p| {
                let ledger = p.ledger.after_commit(p.next_offset, &p.state);
                (p.tp.clone(), (p.epoch, ledger))
            })
            .collect();
        let commit = commit_all(
            self.sinks.lake.clone(),
            self.options.backoff.clone(),
            shutdown.clone(),
            Arc::clone(&self.metrics),
            Arc::clone(&self.health),
            self.options.lake_timeout,
            prepared,
            prestaging,
        );
        if self.may_overlap() {
            self.metrics.lake_commits_overlapped.inc();
            return Ok(Committed::InFlight(tokio::spawn(commit), after));
        }
        // While the commits wait on the store, the next batch is read (and decoded).
        let results = reading_ahead!(self, commit).await;
        self.metrics.step("lake_commit", at);
        let fenced = self.record_commits(results)?;
        Ok(Committed::Landed { fenced })
    }

    /// Stage each partition's commit of `prepared` while the commit in flight goes on, against
    /// the ledger that commit leaves when it lands as expected (a partition it does not commit:
    /// the ledger as it is). Then, on HDFS, this commit's wait for the namenode overlaps the
    /// previous one's, and only publishing is left once that one landed. Nothing staged is
    /// visible: [`settle_prestaged`] keeps what was staged against the ledger that actually
    /// came and removes the rest (a fenced or failed commit, another ownership).
    fn prestage(&self, prepared: &[Prepared]) -> Option<Prestaging> {
        let flight = self.in_flight.as_ref()?;
        if !self.options.prestage_commits {
            return None;
        }
        let jobs: Vec<_> = prepared
            .iter()
            .filter_map(|p| {
                let base = match flight.after.get(&p.tp) {
                    Some((epoch, ledger)) if *epoch == p.epoch => ledger.clone(),
                    Some(_) => return None,
                    None => p.ledger.clone(),
                };
                Some((
                    base,
                    p.next_offset,
                    p.files.clone(),
                    p.merges.clone(),
                    p.state.clone(),
                ))
            })
            .collect();
        let (lake, timeout) = (self.sinks.lake.clone(), self.options.lake_timeout);
        Some(tokio::spawn(async move {
            let lake = &lake;
            futures::future::join_all(jobs.into_iter().map(
                |(base, next_offset, files, merges, state)| async move {
                    let staged = tokio::time::timeout(
                        timeout,
                        lake.stage(&base, next_offset, files, merges, state),
                    )
                    .await
                    .unwrap_or_else(|_| Err(timed_out(&base.tp, timeout)));
                    (base.tp.clone(), base, staged)
                },
            ))
            .await
        }))
    }

    /// Record the partitions' commits of a batch (waited for or landed from the background).
    /// Returns the fenced partitions; a commit that failed for good stops the engine.
    pub(super) fn record_commits(
        &mut self,
        results: Vec<CommitResult>,
    ) -> Result<Vec<TopicPartition>, Stop> {
        let merge_round = self.compactor.round_due();
        let mut fenced = Vec::new();
        let mut failed = None;
        for (p, result) in results {
            match result {
                Ok(ledger) => {
                    self.health.set("lake", None);
                    self.apply_landed(p, ledger, merge_round);
                }
                Err(RetryError::Permanent(LakeError::Ledger(LedgerError::Fenced { .. }))) => {
                    self.metrics.lake_commits_fenced.inc();
                    fenced.push(p.tp);
                }
                Err(RetryError::Permanent(e)) => failed = Some(Stop::Failed(e.into())),
                Err(RetryError::Shutdown(_)) => failed = Some(Stop::Shutdown),
            }
        }
        match failed {
            Some(stop) => Err(stop),
            None => Ok(fenced),
        }
    }

    /// May this batch's commit go on while the next batch is processed? Only when no other
    /// engine shares the topic (their points depend on checking this engine's commits, in line),
    /// the engine is [`Self::behind`] the source (else there is nothing to overlap with, and a
    /// batch should count as done as soon as it is), and no ownership change is pending.
    fn may_overlap(&self) -> bool {
        self.options.overlap_commits
            && !self.has_others()
            && self.behind()
            && !self.source.has_events()
    }

    /// Is the engine behind the source: a whole batch read ahead, or, by the topic view (at most
    /// a second old), at least two full batches left to read in the partitions it owns? A
    /// stream this engine keeps up with is not (its batches end by linger).
    pub(super) fn behind(&self) -> bool {
        if self.ahead.has_batch() {
            return true;
        }
        let backlog: i64 = self
            .book
            .view
            .ends
            .iter()
            .filter_map(|(tp, end)| {
                let o = self.book.owned.get(tp)?;
                Some((end - o.ledger.next_offset).max(0))
            })
            .sum();
        backlog >= 2 * self.options.limits.max_rows as i64
    }

    /// Encode a partition's commit.
    fn prepare(&self, part: &PartBatch) -> Result<Option<Prepared>, Stop> {
        let Some(owned) = self.book.owned.get(&part.tp) else {
            return Ok(None);
        };
        if !part.is_new(owned.ledger.next_offset) {
            return Ok(None);
        }
        let mut outputs = part.outputs.clone();
        if !part.dead.is_empty() {
            let now = chrono::Utc::now().timestamp_millis();
            let refs: Vec<_> = part.dead.iter().collect();
            outputs.push(dead_letter::output(&refs, now).map_err(PipelineError::from)?);
        }
        let first = part.range.0.max(owned.ledger.next_offset);
        let mut progress: Progress = owned.progress.clone();
        for (c, m) in &part.max_event {
            let e = progress.max_event_ms.entry(c.clone()).or_insert(*m);
            *e = (*e).max(*m);
        }
        let windows = part.windows.as_ref().unwrap_or(&owned.windows);
        if let Some(held) = &owned.held {
            progress.closed_before_ms = held.closed_before_ms.clone();
        }
        let mut blobs = BTreeMap::new();
        let empty = crate::windows::state::QueryState::default();
        // Every windowed query has its (possibly empty) state in the entry: a query missing from
        // an entry is one the partition never ran, which a later load fills from the lake.
        for (key, w) in &self.queries.windows {
            let state = windows.queries.get(key).unwrap_or(&empty);
            let with_held;
            let state = match owned.held.as_ref().and_then(|h| h.windows.queries.get(key)) {
                // Windows the last close dropped are still open in this commit (no row of this
                // batch went into them: they were closed when it was folded).
                Some(before) => {
                    let mut all = state.clone();
                    all.fill_from(before).map_err(PipelineError::from)?;
                    with_held = all;
                    &with_held
                }
                None => state,
            };
            blobs.insert(
                key.clone(),
                state
                    .to_blob(&w.query, &w.fingerprint)
                    .map_err(PipelineError::from)?,
            );
        }
        Ok(Some(Prepared {
            tp: part.tp.clone(),
            next_offset: part.range.1 + 1,
            ledger: owned.ledger.clone(),
            encode: Some(((first, part.range.1), outputs)),
            files: Vec::new(),
            merges: Vec::new(),
            epoch: owned.epoch,
            prestaged: None,
            state: CommitState {
                topic_id: owned.ledger.topic_id.clone(),
                progress,
                windows: blobs,
                datasets: self
                    .queries
                    .transforms
                    .iter()
                    .filter_map(|t| match &t.target {
                        Target::Lake { dataset, .. } => Some(dataset.clone()),
                        _ => None,
                    })
                    .collect(),
            },
        }))
    }

    /// A partition's state after its commit: progress, open windows and the next offset to
    /// commit. Set when the commit starts (a batch in progress meanwhile builds on it).
    fn apply_state(&mut self, p: &Prepared, parts: &mut [PartBatch]) {
        let part = parts.iter_mut().find(|x| x.tp == p.tp);
        if let Some(o) = self.book.owned.get_mut(&p.tp)
            && o.epoch == p.epoch
        {
            o.ledger.next_offset = o.ledger.next_offset.max(p.next_offset);
            // The boundary held is the one recorded; the one in memory stays.
            o.progress.max_event_ms = p.state.progress.max_event_ms.clone();
            if let Some(w) = part.and_then(|x| x.windows.take()) {
                o.windows = w;
            }
        }
    }

    /// Record a partition's commit that landed: its ledger, the counts, and merges its files may
    /// need now.
    pub(super) fn apply_landed(&mut self, p: Prepared, ledger: PartitionLedger, merge_round: bool) {
        if let Some(o) = self.book.owned.get_mut(&p.tp)
            && o.epoch == p.epoch
        {
            o.ledger = ledger;
        }
        for f in &p.files {
            self.metrics.rows("lake", &f.dataset, f.rows as u64);
            if f.dataset != dead_letter::DATASET {
                *self.summary.lake_rows.entry(f.dataset.clone()).or_default() += f.rows as u64;
            }
        }
        if !p.merges.is_empty() {
            self.compactor.carried(&p.tp);
        }
        for m in &p.merges {
            tracing::debug!(partition = %p.tp, dataset = %m.dataset, file = %m.relative,
                files = m.replaces.len(), rows = m.rows, "merged small lake files");
            self.metrics.lake_merges.inc();
            self.metrics
                .lake_files_merged
                .inc_by(m.replaces.len() as u64);
        }
        if !merge_round {
            return;
        }
        // Where this commit wrote, its small files may be many enough to merge now.
        let dirs = p
            .files
            .iter()
            .map(|f| {
                let dir = f.relative.rsplit_once('/').map_or("", |(d, _)| d);
                (f.dataset.clone(), dir.to_string())
            })
            .collect();
        self.compactor.after_commit(
            &self.sinks.lake,
            &p.tp,
            p.state.topic_id.as_deref(),
            p.epoch,
            dirs,
        );
    }
}

/// What became of a batch's commit.
pub(super) enum Committed {
    /// Waited for; the partitions whose commit was fenced (another writer moved their ledger on).
    Landed {
        /// Fenced partitions.
        fenced: Vec<TopicPartition>,
    },
    /// Going on in the background ([`Pipeline::land`] finishes it), and the ledgers it leaves.
    InFlight(tokio::task::JoinHandle<Vec<CommitResult>>, LedgersAfter),
    /// The previous batch's commit was fenced for some partitions: their messages wait in
    /// `Pipeline::redo`, to be processed with this batch again.
    Redo,
}

/// Wait for the staging [`Pipeline::prestage`] started. A partition of `prepared` whose ledger
/// is the one its commit was staged against takes the staged commit; every other staged commit
/// is removed from the staging area (before anything is staged there again).
async fn settle_prestaged(
    lake: &LakeSink,
    metrics: &Metrics,
    prestaging: Option<Prestaging>,
    prepared: &mut [Prepared],
) {
    let Some(task) = prestaging else {
        return;
    };
    let results = match task.await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => return,
    };
    let mut discards = Vec::new();
    for (tp, base, staged) in results {
        let p = prepared.iter_mut().find(|p| p.tp == tp);
        match (p, staged) {
            (Some(p), Ok(staged)) if p.ledger == base => {
                metrics.lake_commits_prestaged.inc();
                p.prestaged = Some(staged);
            }
            (_, staged) => {
                if let Err(e) = staged {
                    tracing::debug!(partition = %tp, error = %e, "staging a commit early failed; it is staged again the usual way");
                }
                metrics.lake_prestages_discarded.inc();
                discards.push(async move { lake.discard(&base).await });
            }
        }
    }
    futures::future::join_all(discards).await;
}

/// Every partition's commit, each retried while the store is unreachable; in the background or
/// in line. Commits staged early (`prestaging`) are published when they were staged against the
/// ledger now held, else discarded first.
#[allow(clippy::too_many_arguments)]
async fn commit_all(
    lake: LakeSink,
    backoff: Backoff,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    timeout: Duration,
    mut prepared: Vec<Prepared>,
    prestaging: Option<Prestaging>,
) -> Vec<CommitResult> {
    settle_prestaged(&lake, &metrics, prestaging, &mut prepared).await;
    let (lake, backoff, shutdown, metrics, health) =
        (&lake, &backoff, &shutdown, &metrics, &health);
    futures::future::join_all(prepared.into_iter().map(|mut p| async move {
        // A commit staged early is published; a retry (or a commit staged now) stages again.
        let mut prestaged = p.prestaged.take();
        let pr = &p;
        let result = retry_reporting(
            "lake commit",
            backoff,
            shutdown,
            |e: &LakeError| {
                metrics.error("lake");
                if e.is_transient() {
                    health.set("lake", Some(e.to_string()));
                }
            },
            || {
                let (mut ledger, files, merges, state) = (
                    pr.ledger.clone(),
                    pr.files.clone(),
                    pr.merges.clone(),
                    pr.state.clone(),
                );
                let (tp, next_offset) = (pr.tp.clone(), pr.next_offset);
                let staged = prestaged.take();
                async move {
                    let commit = async {
                        match staged {
                            Some(staged) => lake.publish(&mut ledger, staged).await,
                            None => {
                                lake.commit(&mut ledger, next_offset, files, merges, state)
                                    .await
                            }
                        }
                    };
                    match tokio::time::timeout(timeout, commit).await {
                        Ok(r) => r.map(|times| {
                            metrics
                                .lake_stage_seconds
                                .observe(times.staged.as_secs_f64());
                            metrics
                                .lake_publish_seconds
                                .observe(times.published.as_secs_f64());
                            ledger
                        }),
                        Err(_) => Err(timed_out(&tp, timeout)),
                    }
                }
            },
        )
        .await;
        (p, result)
    }))
    .await
}

/// A commit of `tp` that took longer than `timeout` (`lake.timeout`).
fn timed_out(tp: &TopicPartition, timeout: Duration) -> LakeError {
    LakeError::Ledger(LedgerError::Store {
        path: tp.to_string(),
        source: object_store::Error::Generic {
            store: "lake",
            source: format!(
                "the commit took longer than {}s (lake.timeout)",
                timeout.as_secs()
            )
            .into(),
        },
    })
}

/// One partition's commit and how it went.
pub(super) type CommitResult = (Prepared, Result<PartitionLedger, RetryError<LakeError>>);

/// Encode every partition's files, the partitions split over two threads (Parquet encoding is
/// the CPU part of a commit; the machine it was tuned on has two cores).
fn encode_all(lake: &LakeSink, prepared: &mut [Prepared]) -> Result<(), Stop> {
    on_two_threads(prepared, |p| {
        let Some((range, outputs)) = p.encode.take() else {
            return Ok(());
        };
        if outputs.is_empty() {
            return Ok(());
        }
        let files = lake.encode(&p.tp, p.state.topic_id.as_deref(), range, &outputs)?;
        p.files.extend(files);
        Ok(())
    })
    .map(|_| ())
    .map_err(|e: LakeError| Stop::Failed(PipelineError::from(e)))
}

/// `f` over `items` on two threads (Parquet encoding is CPU-bound), each half in order; the
/// results in the order of `items`, or the first error.
fn on_two_threads<T: Send, R: Send, E: Send>(
    items: &mut [T],
    f: impl Fn(&mut T) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E> {
    let half = items.len().div_ceil(2);
    let (a, b) = items.split_at_mut(half);
    let (mine, theirs) = std::thread::scope(|s| {
        let other = (!b.is_empty())
            .then(|| s.spawn(|| b.iter_mut().map(&f).collect::<Result<Vec<_>, E>>()));
        let mine = a.iter_mut().map(&f).collect::<Result<Vec<_>, E>>();
        let theirs = other.map_or(Ok(Vec::new()), |h| {
            h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
        });
        (mine, theirs)
    });
    let mut out = mine?;
    out.extend(theirs?);
    Ok(out)
}
