//! The windows step of a batch: fold the fresh rows into the partial aggregates of the open
//! windows (rows later than allowed are counted and left out), write the points of touched windows
//! merged over every partition of the topic, and close windows every partition has passed.
//!
//! **Points while several engines run.** A point is the `Final` merge of every partition's
//! committed state for its window: owned partitions from memory, the others from their latest
//! ledger entries. It is written by the engine whose commit changed one of its inputs, after the
//! commit. After writing, the engine checks that none of the other partitions committed since it
//! read them; if one did, it merges and writes again. So the last write of every point reflects
//! every committed state, whichever engine wins the race — the one gap is an engine killed between
//! a write and that check, whose stale point is rewritten by the next change to the window or when
//! its partitions are next loaded (every load rewrites the windows it brings).
//!
//! **A query edited while several engines run.** Each engine loads the edit at its own batch
//! boundary, so for a moment the latest ledger entries of other partitions hold state of another
//! version of the query (or none of it). Their windows are then computed from the lake for the
//! version running here — their rows below their committed offsets, less late and refused rows —
//! instead of being left out or taken from the other version ([`Pipeline::lake_states`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, TimeUnit, TimestampMillisecondType};
use tokio_util::sync::CancellationToken;

use super::part::{MessageIndex, PartBatch, refused_rows, route};
use super::partitions::Observed;
use super::{Pipeline, PipelineError, Stop, WindowSet, with_timeout};
use crate::line_protocol::encode_batch_counted;
use crate::schema::source_schema;
use crate::source::{Source, TopicPartition};
use crate::transform::isolate::{Isolated, run_isolating};
use crate::windows::state::QueryState;
use crate::windows::watermark::{PartitionProgress, late_rows};

/// Adds the time from its creation to its drop to a windowed query's phase.
struct Timed {
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    query: String,
    phase: &'static str,
    at: Instant,
}

impl Timed {
    fn new(
        metrics: &std::sync::Arc<crate::metrics::Metrics>,
        query: &str,
        phase: &'static str,
    ) -> Self {
        Self {
            metrics: std::sync::Arc::clone(metrics),
            query: query.to_string(),
            phase,
            at: Instant::now(),
        }
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        self.metrics
            .window_query(&self.query, self.phase, self.at.elapsed().as_secs_f64());
    }
}

/// One windowed query's fold of a batch: its rows, what the partitions held of its windows, and
/// its partial aggregate and merge running as a task (`None`: planning failed, run it again
/// isolating the rows that fail).
struct Fold {
    key: String,
    w: super::queries::WindowEntry,
    rows: RecordBatch,
    pending: Vec<(i32, QueryState)>,
    task: Option<FoldTask>,
}

/// The partial states of a fold (an error: the partial aggregate failed), and their merge with
/// what the partitions held of the touched windows (`None`: no row went into a window).
type FoldTask = tokio::task::JoinHandle<
    datafusion::error::Result<(
        Vec<RecordBatch>,
        datafusion::error::Result<Option<Vec<RecordBatch>>>,
    )>,
>;

/// Merge partial states with what each partition holds of the windows they touch (`pending`:
/// per partition, its open windows of the query). `None` when there are no partial states.
async fn merge_pending(
    query: &crate::windows::aggregate::WindowQuery,
    partial: &[RecordBatch],
    pending: &[(i32, QueryState)],
    ctx: &datafusion::prelude::SessionContext,
) -> datafusion::error::Result<Option<Vec<RecordBatch>>> {
    if partial.iter().all(|b| b.num_rows() == 0) {
        return Ok(None);
    }
    let new = query.concat(partial)?;
    let starts = query.window_starts(&new)?;
    let partitions = query.partitions_of(&new)?;
    let mut by_part: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
    for (s, p) in starts.iter().zip(partitions.iter()) {
        if let (Some(s), Some(p)) = (s, p) {
            by_part.entry(p).or_default().insert(*s);
        }
    }
    let mut merge_in = vec![new];
    for (partition, state) in pending {
        let Some(ws) = by_part.get(partition) else {
            continue;
        };
        merge_in.extend(ws.iter().filter_map(|s| state.get(*s)));
    }
    Ok(Some(query.reduce(merge_in, ctx).await?))
}

/// How many times a merged write is redone when other partitions keep committing.
const MAX_REWRITES: usize = 5;

impl<S: Source> Pipeline<S> {
    /// The newest closed boundary of `column` over every partition known.
    pub(super) fn closed_before(&self, column: &str) -> Option<i64> {
        self.book
            .owned
            .values()
            .filter_map(|o| o.progress.closed_before_ms.get(column).copied())
            .chain(
                self.book
                    .observed
                    .values()
                    .filter_map(|o| o.progress.closed_before_ms.get(column).copied()),
            )
            .max()
    }

    /// Fold each partition's fresh rows into its open windows (pending until the commit).
    pub(super) async fn fold_windows(
        &mut self,
        parts: &mut [PartBatch],
        index: &mut MessageIndex<'_>,
    ) -> Result<WindowSet, Stop> {
        let mut touched = WindowSet::new();
        if self.queries.windows.is_empty() {
            return Ok(touched);
        }
        if self.has_others() {
            self.refresh_observed().await;
        }
        for part in parts.iter_mut() {
            if let Some(o) = self.book.owned.get(&part.tp) {
                part.windows = Some(o.windows.clone());
            }
        }
        let mut late_masks: Vec<Option<Vec<bool>>> = vec![None; parts.len()];
        let mut late_first: Vec<Option<String>> = vec![None; parts.len()];
        let entries: Vec<(String, super::queries::WindowEntry)> = self
            .queries
            .windows
            .iter()
            .map(|(k, w)| (k.clone(), w.clone()))
            .collect();
        // Every partition's fresh rows in one batch, made once for the queries none of whose
        // rows are late (the usual case) rather than once per query.
        let mut all_fresh: Option<RecordBatch> = None;
        let mut folds = Vec::with_capacity(entries.len());
        for (key, w) in entries {
            let spec = &w.query.spec;
            let closed = self.closed_before(&spec.column);
            // Rows not late, per partition.
            let mut inputs = Vec::new();
            let mut none_late = true;
            for (i, part) in parts.iter().enumerate() {
                let Some(fresh) = &part.fresh else { continue };
                let own_max = self
                    .book
                    .owned
                    .get(&part.tp)
                    .and_then(|o| o.progress.max_event_ms.get(&spec.column).copied());
                let times = arrow::compute::cast(
                    fresh.column_by_name(&spec.column).ok_or_else(|| {
                        PipelineError::Arrow(arrow::error::ArrowError::SchemaError(format!(
                            "no column {}",
                            spec.column
                        )))
                    })?,
                    &DataType::Timestamp(TimeUnit::Millisecond, None),
                )?;
                let times = times.as_primitive::<TimestampMillisecondType>();
                let late = late_rows(
                    (0..times.len()).map(|r| (!times.is_null(r)).then(|| times.value(r))),
                    spec,
                    self.book.clock.lateness_ms(),
                    own_max,
                    closed,
                );
                let keep: Vec<bool> = late.iter().map(|l| !l).collect();
                if keep.iter().all(|k| *k) {
                    inputs.push(fresh.clone());
                    continue;
                }
                if late_first[i].is_none()
                    && let Some(r) = late.iter().position(|l| *l)
                {
                    let t = times.value(r);
                    late_first[i] = Some(format!(
                        "first late row: offset {}, {} = {}, its {} window ended at {}; the partition had shown events up to {} before it (allowed lateness {} s); windows closed before {}",
                        fresh
                            .column_by_name(crate::schema::COL_OFFSET)
                            .map(|c| c.as_primitive::<arrow::datatypes::Int64Type>().value(r))
                            .unwrap_or(-1),
                        spec.column,
                        crate::windows::fmt_ms(t),
                        key,
                        crate::windows::fmt_ms(spec.end_of(spec.start_of(t))),
                        own_max.map_or("(none)".into(), crate::windows::fmt_ms),
                        self.book.clock.lateness_ms() / 1000,
                        closed.map_or("(none)".into(), crate::windows::fmt_ms),
                    ));
                }
                none_late = false;
                let mask = late_masks[i].get_or_insert_with(|| vec![false; keep.len()]);
                for (m, k) in mask.iter_mut().zip(&keep) {
                    *m |= !k;
                }
                inputs.push(filter_record_batch(fresh, &BooleanArray::from(keep))?);
            }
            let rows = match (&all_fresh, none_late) {
                (Some(all), true) => all.clone(),
                _ => {
                    let rows = concat_batches(&source_schema(), &inputs)?;
                    if none_late {
                        all_fresh = Some(rows.clone());
                    }
                    rows
                }
            };
            if rows.num_rows() == 0 {
                continue;
            }
            // What each partition holds of this query's windows (only this query's fold below
            // changes it).
            let pending: Vec<(i32, QueryState)> = parts
                .iter()
                .filter_map(|p| {
                    let state = p.windows.as_ref()?.queries.get(&key)?;
                    Some((p.tp.partition, state.clone()))
                })
                .collect();
            // Planned here, one query after the other (a plan takes its rows from the planner's
            // table when it is made), then run as a task of its own: the folds share the cores.
            let planner = &self.queries.planner;
            planner.batch.set(vec![rows.clone()]);
            let task = match w.query.plan_partial(&planner.batch_ctx).await {
                Ok(plan) => {
                    let (query, ctx) = (w.query.clone(), planner.batch_ctx.clone());
                    let (metrics, pending) =
                        (std::sync::Arc::clone(&self.metrics), pending.clone());
                    let timed = key.clone();
                    Some(tokio::spawn(async move {
                        let _timed = Timed::new(&metrics, &timed, "fold");
                        let partial =
                            datafusion::physical_plan::collect(plan, ctx.task_ctx()).await?;
                        let reduced = merge_pending(&query, &partial, &pending, &ctx).await;
                        Ok::<_, datafusion::error::DataFusionError>((partial, reduced))
                    }))
                }
                // Run again below, row by row where it fails.
                Err(_) => None,
            };
            folds.push(Fold {
                key,
                w,
                rows,
                pending,
                task,
            });
        }
        self.queries.planner.batch.set(Vec::new());
        for Fold {
            key,
            w,
            rows,
            pending,
            task,
        } in folds
        {
            let (planner, query) = (&self.queries.planner, &w.query);
            let done = match task {
                Some(task) => match task.await {
                    Ok(Ok(done)) => Some(done),
                    Ok(Err(_)) => None,
                    Err(e) => {
                        return Err(Stop::Failed(PipelineError::DataFusion(
                            datafusion::error::DataFusionError::Execution(format!(
                                "the window fold of {key} failed: {e}"
                            )),
                        )));
                    }
                },
                None => None,
            };
            let (iso, reduced) = match done {
                Some((outputs, reduced)) => (
                    Isolated {
                        outputs,
                        poison: Vec::new(),
                    },
                    Some(reduced),
                ),
                // The whole batch failed: again by halves, down to the rows that fail alone.
                None => {
                    let _timed = Timed::new(&self.metrics, &key, "fold");
                    let iso = run_isolating(&rows, |r| async move {
                        planner.batch.set(vec![r]);
                        query.partial(&planner.batch_ctx).await
                    })
                    .await;
                    (iso, None)
                }
            };
            let transform = self
                .queries
                .transforms
                .iter()
                .find(|t| t.target_name() == key)
                .cloned();
            if iso.all_failed(rows.num_rows()) {
                let broken = self
                    .queries
                    .canary
                    .broken(|r| async move {
                        planner.batch.set(vec![r]);
                        query.partial(&planner.batch_ctx).await
                    })
                    .await;
                if let Some(e) = broken {
                    return Err(Stop::Stalled(format!(
                        "{key} fails on every row, sample rows included: {e}"
                    )));
                }
            }
            if let Some(t) = &transform {
                let refused = refused_rows(index, &rows, &iso.poison, t)?;
                route(parts, refused);
            }
            let reduced = match reduced {
                Some(r) => r,
                None => merge_pending(query, &iso.outputs, &pending, &planner.batch_ctx).await,
            }
            .map_err(PipelineError::from)?;
            // No row went into a window.
            let Some(reduced) = reduced else {
                continue;
            };
            let merged = w.query.concat(&reduced)?;
            let owners = w.query.partitions_of(&merged)?;
            for part in parts.iter_mut() {
                let Some(pending) = part.windows.as_mut() else {
                    continue;
                };
                let keep: BooleanArray = owners
                    .iter()
                    .map(|p| Some(p == Some(part.tp.partition)))
                    .collect();
                let mine = filter_record_batch(&merged, &keep)?;
                if mine.num_rows() == 0 {
                    continue;
                }
                let done = pending
                    .queries
                    .entry(key.clone())
                    .or_default()
                    .replace(&w.query, &[mine])
                    .map_err(PipelineError::from)?;
                touched.entry(key.clone()).or_default().extend(done);
            }
        }
        self.queries.planner.batch.set(Vec::new());
        for ((part, mask), first) in parts.iter_mut().zip(late_masks).zip(late_first) {
            if let Some(mask) = mask {
                part.late = mask.iter().filter(|m| **m).count() as u64;
                if part.late > 0 {
                    tracing::warn!(partition = %part.tp, late = part.late, detail = first.unwrap_or_default(),
                        "rows later than the allowed lateness: kept in the lake, not in their windows");
                }
            }
        }
        Ok(touched)
    }

    /// Are there partitions of the topic this engine does not own?
    pub(super) fn has_others(&self) -> bool {
        self.book
            .view
            .ends
            .keys()
            .any(|tp| !self.book.owned.contains_key(tp))
    }

    /// Read the latest ledger entry of every partition of the topic this engine does not own
    /// (only those that changed). Returns the partitions that changed.
    pub(super) async fn refresh_observed(&mut self) -> Vec<TopicPartition> {
        let others: Vec<TopicPartition> = self
            .book
            .view
            .ends
            .keys()
            .filter(|tp| !self.book.owned.contains_key(*tp))
            .cloned()
            .collect();
        self.book.observed.retain(|tp, _| others.contains(tp));
        let ledger = self.sinks.lake.ledger().clone();
        let timeout = self.options.lake_timeout;
        let seqs = futures::future::join_all(others.iter().map(|tp| {
            let ledger = ledger.clone();
            async move { with_timeout(timeout, &tp.to_string(), ledger.latest_seq(tp)).await }
        }))
        .await;
        let mut changed = Vec::new();
        for (tp, seq) in others.into_iter().zip(seqs) {
            let Ok(seq) = seq else { continue };
            if self.book.observed.get(&tp).is_some_and(|o| o.seq == seq) {
                continue;
            }
            match with_timeout(timeout, &tp.to_string(), ledger.latest(&tp)).await {
                Ok(entry) => {
                    self.book
                        .observed
                        .insert(tp.clone(), Observed::from_entry(entry));
                    changed.push(tp);
                }
                Err(e) => {
                    tracing::debug!(partition = %tp, error = %e, "cannot read another partition's ledger; using what was read before")
                }
            }
        }
        changed
    }

    /// Write the points of `windows`, each merged over every partition of the topic; redo when
    /// another partition committed meanwhile. Returns the points written.
    pub(super) async fn write_windows(
        &mut self,
        mut windows: WindowSet,
        shutdown: &CancellationToken,
    ) -> Result<u64, Stop> {
        windows.retain(|_, s| !s.is_empty());
        let mut points = 0;
        for _ in 0..MAX_REWRITES {
            if windows.is_empty() {
                break;
            }
            let others = self.has_others();
            if others {
                self.refresh_observed().await;
            }
            let mut body = String::new();
            let mut at = std::time::Instant::now();
            points += self.merged_points(&windows, &mut body).await?;
            self.metrics.step("window_merge", &mut at);
            if !others && self.ahead.has_batch() {
                // Behind the source, and no other engine's state to check against: the write
                // goes on while the next batch is processed (it lands before that batch's
                // commit). A batch with none waiting after it writes before it is reported done.
                self.write_influx_later(body, false, shutdown);
                self.metrics.step("window_write", &mut at);
                break;
            }
            self.write_influx(&body, shutdown).await?;
            self.metrics.step("window_write", &mut at);
            if !others {
                break;
            }
            // Did another partition commit while we merged and wrote? Then its state may be
            // newer than what this write holds.
            let changed = self.refresh_observed().await;
            if changed.is_empty() {
                break;
            }
            tracing::debug!(
                partitions = changed.len(),
                "other partitions committed meanwhile: writing the touched windows again"
            );
        }
        Ok(points)
    }

    /// The merged points of `windows`, appended to `body`. The final merges of the queries run
    /// as tasks of their own (each is a separate DataFusion plan), so they share the cores.
    pub(super) async fn merged_points(
        &mut self,
        windows: &WindowSet,
        body: &mut String,
    ) -> Result<u64, Stop> {
        let mut merges = Vec::new();
        for (key, starts) in windows {
            let Some(w) = self.queries.windows.get(key).cloned() else {
                continue;
            };
            // A window some partition closed already is final: its point was written when it
            // last changed, and a merge now would miss the closed partition's state.
            let closed = self.closed_before(&w.query.spec.column);
            let open: BTreeSet<i64> = starts
                .iter()
                .copied()
                .filter(|s| closed.is_none_or(|c| w.query.spec.end_of(*s) > c))
                .collect();
            if open.len() < starts.len() {
                self.metrics
                    .rows_after_close
                    .inc_by((starts.len() - open.len()) as u64);
            }
            if open.is_empty() {
                continue;
            }
            let mut states: Vec<RecordBatch> = Vec::new();
            for o in self.book.owned.values() {
                if let Some(q) = o.windows.queries.get(key) {
                    states.extend(open.iter().filter_map(|s| q.get(*s)));
                }
            }
            // Other partitions from their latest ledger entries: the state they hold of the
            // version running here, else (their owner runs another version, or not this query
            // yet) the state this version would hold, from their rows in the lake. Leaving them
            // out would write points of a subset of the partitions.
            let mut from_lake = Vec::new();
            for (tp, o) in self.book.observed.iter_mut() {
                if o.seq == 0 {
                    continue;
                }
                let Some(blob) = o.blobs.get(key).filter(|b| b.fingerprint == w.fingerprint) else {
                    from_lake.push(tp.clone());
                    continue;
                };
                if !o.decoded.contains_key(key) {
                    match QueryState::from_blob(&w.query, blob) {
                        Ok(s) => {
                            o.decoded.insert(key.clone(), s);
                        }
                        Err(e) => {
                            tracing::warn!(partition = %tp, error = %e, "cannot read another partition's window state; reading its windows from the lake");
                            from_lake.push(tp.clone());
                            continue;
                        }
                    }
                }
                if let Some(q) = o.decoded.get(key) {
                    states.extend(open.iter().filter_map(|s| q.get(*s)));
                }
            }
            if !from_lake.is_empty() {
                if let Err(e) = self.lake_states(key, &from_lake, &open).await? {
                    // No point rather than one that leaves partitions out: the next change to
                    // these windows (or the other engine's next commit) writes them.
                    tracing::warn!(query = %key, error = %e,
                        "another engine runs another version of this query and its partitions' windows cannot be read from the lake: these points are written later");
                    continue;
                }
                for tp in &from_lake {
                    if let Some(l) = self.book.observed.get(tp).and_then(|o| o.lake.get(key)) {
                        states.extend(
                            open.iter()
                                .filter_map(|s| l.windows.get(s).cloned().flatten()),
                        );
                    }
                }
            }
            let ctx = self.queries.planner.batch_ctx.clone();
            let query = w.query.clone();
            let (metrics, key) = (std::sync::Arc::clone(&self.metrics), key.clone());
            let task = tokio::spawn(async move {
                let _timed = Timed::new(&metrics, &key, "merge");
                query.finish(states, &ctx).await
            });
            merges.push((w, task));
        }
        let mut points = 0u64;
        for (w, task) in merges {
            let out = task
                .await
                .map_err(|e| {
                    PipelineError::DataFusion(datafusion::error::DataFusionError::Execution(
                        format!("the final merge of {} failed: {e}", w.measurement),
                    ))
                })?
                .map_err(PipelineError::from)?;
            let mut n = 0;
            for b in &out {
                let done = encode_batch_counted(&w.measurement, &w.mapping, b, body);
                n += done.points as u64;
                self.metrics.tag_rewrites.inc_by(done.rewritten as u64);
            }
            self.metrics.rows("influx", &w.measurement, n);
            points += n;
        }
        Ok(points)
    }

    /// Rewrite every open window of partitions just loaded (a crash between a commit and its
    /// points, or another engine's last batch, is healed here).
    pub(super) async fn heal(
        &mut self,
        loaded: &[TopicPartition],
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        if self.queries.windows.is_empty() {
            return Ok(());
        }
        let mut set = WindowSet::new();
        for tp in loaded {
            if let Some(o) = self.book.owned.get(tp) {
                for (key, q) in &o.windows.queries {
                    set.entry(key.clone()).or_default().extend(q.starts());
                }
            }
        }
        if set.values().all(BTreeSet::is_empty) {
            return Ok(());
        }
        self.refresh_view().await;
        self.write_windows(set, shutdown).await.map(|_| ())
    }

    /// Close the windows every partition of the topic has passed (drop their state; the next
    /// commit records the boundary), and cap the state at `windows.max_rows`. While the batch's
    /// commit is in flight (its points not written), the next commit records the state before
    /// this close instead ([`super::partitions::Held`]).
    pub(super) fn close_windows(&mut self) {
        if self.queries.windows.is_empty() {
            return;
        }
        let hold = self.in_flight.is_some();
        for o in self.book.owned.values_mut() {
            o.held = hold.then(|| super::partitions::Held {
                windows: o.windows.clone(),
                closed_before_ms: o.progress.closed_before_ms.clone(),
            });
        }
        let now = Instant::now();
        let ends = self.book.view.ends.clone();
        let owned = &self.book.owned;
        let observed = &self.book.observed;
        let progress = |tp: &TopicPartition| -> Option<PartitionProgress> {
            super::partitions::progress_of(owned, observed, tp)
        };
        self.book.clock.observe(&ends, &progress, now);
        let mut marks: BTreeMap<String, i64> = BTreeMap::new();
        for w in self.queries.windows.values() {
            let c = &w.query.spec.column;
            if marks.contains_key(c) {
                continue;
            }
            if let Some(wm) = self.book.clock.watermark(c, &ends, &progress, now) {
                tracing::debug!(column = %c, watermark = %crate::windows::fmt_ms(wm), "watermark");
                marks.insert(c.clone(), wm);
            }
        }
        let widths: BTreeMap<String, (String, i64)> = self
            .queries
            .windows
            .iter()
            .map(|(k, w)| {
                (
                    k.clone(),
                    (w.query.spec.column.clone(), w.query.spec.width_ms),
                )
            })
            .collect();
        for o in self.book.owned.values_mut() {
            for (c, wm) in &marks {
                let e = o.progress.closed_before_ms.entry(c.clone()).or_insert(*wm);
                *e = (*e).max(*wm);
            }
            for (key, q) in o.windows.queries.iter_mut() {
                if let Some((c, width)) = widths.get(key)
                    && let Some(closed) = o.progress.closed_before_ms.get(c)
                {
                    q.drop_closed(*width, *closed);
                }
            }
        }
        // The cap: close the oldest windows early (counted).
        let mut total: usize = self.book.owned.values().map(|o| o.windows.rows()).sum();
        let cap = self.options.max_window_rows;
        while total > cap {
            let oldest = self
                .book
                .owned
                .values()
                .flat_map(|o| {
                    o.windows
                        .queries
                        .iter()
                        .filter_map(|(k, q)| q.starts().next().map(|s| (s, k.clone())))
                })
                .min();
            let Some((start, key)) = oldest else { break };
            let Some((c, width)) = widths.get(&key).cloned() else {
                break;
            };
            let end = start.saturating_add(width);
            for o in self.book.owned.values_mut() {
                let e = o.progress.closed_before_ms.entry(c.clone()).or_insert(end);
                *e = (*e).max(end);
                for (k, q) in o.windows.queries.iter_mut() {
                    if widths.get(k).is_some_and(|(col, _)| *col == c) {
                        q.drop_closed(widths[k].1, end);
                    }
                }
            }
            self.metrics.windows_closed_early.inc();
            tracing::warn!(
                max_rows = cap,
                closed_before = end,
                "closed windows early: windows.max_rows reached"
            );
            total = self.book.owned.values().map(|o| o.windows.rows()).sum();
        }
    }
}
