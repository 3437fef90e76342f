//! The lake step of a batch: every lake transform over each partition's fresh rows (rows a
//! transform cannot take become dead letters naming it), then each partition's commit — files,
//! dead letters, event-time progress and window state in one ledger step — all partitions at once,
//! since on HDFS a commit is bound by round trips, not CPU.

use std::collections::BTreeMap;

use tokio_util::sync::CancellationToken;

use super::part::{MessageIndex, PartBatch, refused_rows, run_on};
use super::{Pipeline, PipelineError, Stop};
use crate::ledger::{CommitState, LedgerError, PartitionLedger, Progress};
use crate::retry::{RetryError, Transient, retry_reporting};
use crate::sink::dead_letter;
use crate::sink::lake::{DatasetOutput, EncodedFile, LakeError, LakeSink, MergedFile};
use crate::source::{Source, TopicPartition};
use crate::transform::isolate::run_isolating;
use crate::transform::{Target, Transform};

/// One partition's commit, encoded and waiting for its I/O.
struct Prepared {
    tp: TopicPartition,
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
}

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

    /// Commit every partition of the batch that holds anything new. Returns the partitions whose
    /// commit was fenced (another writer moved their ledger on).
    pub(super) async fn commit_parts(
        &mut self,
        parts: &mut [PartBatch],
        shutdown: &CancellationToken,
        at: &mut std::time::Instant,
    ) -> Result<Vec<TopicPartition>, Stop> {
        let mut prepared = Vec::new();
        for part in parts.iter_mut() {
            if let Some(mut p) = self.prepare(part)? {
                p.merges = self.compactor.take_ready(&p.tp, p.epoch);
                prepared.push(p);
            }
        }
        encode_all(&self.sinks.lake, &mut prepared)?;
        self.metrics.step("lake_encode", at);
        let results = {
            let (lake, backoff, metrics, health) = (
                &self.sinks.lake,
                &self.options.backoff,
                &self.metrics,
                &self.health,
            );
            let timeout = self.options.lake_timeout;
            let commits = futures::future::join_all(prepared.into_iter().map(|p| async move {
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
                        async move {
                            match tokio::time::timeout(
                                timeout,
                                lake.commit(&mut ledger, next_offset, files, merges, state),
                            )
                            .await
                            {
                                Ok(r) => r.map(|()| ledger),
                                Err(_) => Err(LakeError::Ledger(LedgerError::Store {
                                    path: tp.to_string(),
                                    source: object_store::Error::Generic {
                                        store: "lake",
                                        source: format!(
                                            "the commit took longer than {}s (lake.timeout)",
                                            timeout.as_secs()
                                        )
                                        .into(),
                                    },
                                })),
                            }
                        }
                    },
                )
                .await;
                (p, result)
            }));
            // While the commits wait on the store, the next batch is read (and decoded).
            reading_ahead!(self, commits).await
        };
        self.metrics.step("lake_commit", at);
        let mut fenced = Vec::new();
        let mut failed = None;
        let merge_round = self.compactor.round_due();
        for (p, result) in results {
            match result {
                Ok(ledger) => {
                    self.health.set("lake", None);
                    self.apply(p, ledger, parts, merge_round);
                }
                Err(RetryError::Permanent(LakeError::Ledger(LedgerError::Fenced { .. }))) => {
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
        let mut blobs = BTreeMap::new();
        let empty = crate::windows::state::QueryState::default();
        // Every windowed query has its (possibly empty) state in the entry: a query missing from
        // an entry is one the partition never ran, which a later load fills from the lake.
        for (key, w) in &self.queries.windows {
            let state = windows.queries.get(key).unwrap_or(&empty);
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

    /// Record a partition's successful commit.
    fn apply(
        &mut self,
        p: Prepared,
        ledger: PartitionLedger,
        parts: &mut [PartBatch],
        merge_round: bool,
    ) {
        let part = parts.iter_mut().find(|x| x.tp == p.tp);
        if let Some(o) = self.book.owned.get_mut(&p.tp) {
            o.ledger = ledger;
            o.progress = p.state.progress.clone();
            if let Some(w) = part.and_then(|x| x.windows.take()) {
                o.windows = w;
            }
        }
        for f in &p.files {
            self.metrics.rows("lake", &f.dataset, f.rows as u64);
            if f.dataset != dead_letter::DATASET {
                *self.summary.lake_rows.entry(f.dataset.clone()).or_default() += f.rows as u64;
            }
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

/// Encode every partition's files, the partitions split over two threads (Parquet encoding is
/// the CPU part of a commit; the machine it was tuned on has two cores).
fn encode_all(lake: &LakeSink, prepared: &mut [Prepared]) -> Result<(), Stop> {
    fn one(lake: &LakeSink, p: &mut Prepared) -> Result<(), LakeError> {
        let Some((range, outputs)) = p.encode.take() else {
            return Ok(());
        };
        p.files = lake.encode(&p.tp, p.state.topic_id.as_deref(), range, &outputs)?;
        Ok(())
    }
    let half = prepared.len().div_ceil(2);
    let (a, b) = prepared.split_at_mut(half);
    let (ra, rb) = if b.is_empty() {
        (a.iter_mut().try_for_each(|p| one(lake, p)), Ok(()))
    } else {
        std::thread::scope(|s| {
            let other = s.spawn(|| b.iter_mut().try_for_each(|p| one(lake, p)));
            let mine = a.iter_mut().try_for_each(|p| one(lake, p));
            let theirs = other
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
            (mine, theirs)
        })
    };
    ra.and(rb).map_err(|e| Stop::Failed(PipelineError::from(e)))
}
