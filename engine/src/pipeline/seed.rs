//! Seeding a windowed query's open windows from the lake when it starts (a new query file, an
//! edited one, or a partition whose committed state has nothing for it): without this, the open
//! windows of a query dropped in while the engine runs would hold only the rows that arrive after
//! it, and their points would be wrong until the windows close.
//!
//! The rows are read from the raw dataset with [`History`], which leaves out what the stream left
//! out (late rows, rows the query refused), so the seeded state is the state the query would have
//! had if it had always run. Everything below the ledger position is in the lake; everything above
//! it reaches the query through the stream: nothing twice, nothing missing.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use tokio_util::sync::CancellationToken;

use super::partitions::{LakeState, Observed};
use super::queries::WindowEntry;
use super::{Pipeline, Stop, WindowSet};
use crate::history::{History, Range};
use crate::source::{Source, TopicPartition};
use crate::transform::Transform;
use crate::windows::state::QueryState;

impl<S: Source> Pipeline<S> {
    /// Fill, from the lake, the state of windowed queries that `partitions` (owned) hold nothing
    /// for; then write the points of the seeded windows.
    pub(super) async fn seed(
        &mut self,
        wanted: BTreeMap<String, Vec<TopicPartition>>,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        let wanted: BTreeMap<String, Vec<TopicPartition>> = wanted
            .into_iter()
            .map(|(k, tps)| {
                let tps: Vec<TopicPartition> = tps
                    .into_iter()
                    .filter(|tp| self.book.owned.get(tp).is_some_and(|o| o.ledger.seq > 0))
                    .collect();
                (k, tps)
            })
            .filter(|(_, tps)| !tps.is_empty())
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let location = self.sinks.lake.location().clone();
        let opened = tokio::time::timeout(
            self.options.lake_timeout,
            History::open(&location, &self.options.raw_dataset),
        )
        .await;
        let history = match opened {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the lake's history: new windowed queries start with the rows that arrive from now on");
                return Ok(());
            }
            Err(_) => {
                tracing::warn!(
                    "the lake did not answer in time: new windowed queries start with the rows that arrive from now on"
                );
                return Ok(());
            }
        };
        let mut seeded = WindowSet::new();
        for (key, tps) in wanted {
            let Some((w, t)) = self.windowed(&key) else {
                continue;
            };
            let spec = &w.query.spec;
            let closed = self.closed_before(&spec.column);
            // Windows a partition can still change, or another partition still can: from the
            // start of the window holding that boundary (`Range` holds window starts).
            let from = tps
                .iter()
                .filter_map(|tp| {
                    let own = self
                        .book
                        .owned
                        .get(tp)
                        .and_then(|o| o.progress.max_event_ms.get(&spec.column).copied())
                        .map(|m| m.saturating_sub(self.book.clock.lateness_ms()));
                    match (closed, own) {
                        (Some(c), _) => Some(c),
                        (None, o) => o,
                    }
                })
                .min()
                .map(|t| spec.start_of(t));
            let range = Range { from, to: None };
            let rows = match history
                .window_input(&t, spec, self.options.lateness, range, None)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(query = %key, error = %e, "cannot read the lake's history for this query; its open windows start now");
                    continue;
                }
            };
            // The wanted partitions' rows (of this topic) below their ledger positions.
            let committed: Vec<(TopicPartition, i64)> = tps
                .iter()
                .filter_map(|tp| {
                    let o = self.book.owned.get(tp)?;
                    Some((tp.clone(), o.ledger.next_offset))
                })
                .collect();
            let mine = only_committed(&rows, &committed)?;
            let mut states = self.states_of_rows(&w, mine).await?;
            for tp in &tps {
                let Some(o) = self.book.owned.get_mut(tp) else {
                    continue;
                };
                let state = o.windows.queries.entry(key.clone()).or_default();
                let done = match states.remove(&tp.partition) {
                    Some(state_rows) => state
                        .replace(&w.query, &[state_rows])
                        .map_err(super::PipelineError::from)?,
                    None => BTreeSet::new(),
                };
                tracing::info!(partition = %tp, query = %key, windows = done.len(),
                    "seeded the query's open windows from the lake");
                seeded.entry(key.clone()).or_default().extend(done);
            }
        }
        self.write_windows(seeded, shutdown).await.map(|_| ())
    }
}

impl<S: Source> Pipeline<S> {
    /// The running windowed query `key` and its transform.
    fn windowed(&self, key: &str) -> Option<(WindowEntry, Transform)> {
        let w = self.queries.windows.get(key)?.clone();
        let t = self
            .queries
            .transforms
            .iter()
            .find(|t| t.target_name() == key)?
            .clone();
        Some((w, t))
    }

    /// The state rows of `rows` (in the `transactions` schema) for windowed query `w`, per Kafka
    /// partition: partial aggregates, reduced to one row per window, group and partition.
    async fn states_of_rows(
        &self,
        w: &WindowEntry,
        rows: RecordBatch,
    ) -> Result<BTreeMap<i32, RecordBatch>, Stop> {
        let planner = &self.queries.planner;
        planner.batch.set(vec![rows]);
        let partial = w.query.partial(&planner.batch_ctx).await;
        planner.batch.set(Vec::new());
        let reduced = w
            .query
            .reduce(
                partial.map_err(super::PipelineError::from)?,
                &planner.batch_ctx,
            )
            .await
            .map_err(super::PipelineError::from)?;
        let merged = w.query.concat(&reduced)?;
        let owners = w.query.partitions_of(&merged)?;
        let parts: BTreeSet<i32> = owners.iter().flatten().collect();
        let mut out = BTreeMap::new();
        for p in parts {
            let keep: BooleanArray = owners.iter().map(|o| Some(o == Some(p))).collect();
            out.insert(p, filter_record_batch(&merged, &keep)?);
        }
        Ok(out)
    }

    /// Make sure the lake-computed state of windows `starts` of query `key` is known for the
    /// partitions `tps` (not owned here) whose latest ledger entries hold no state of the version
    /// running here: their owner runs another version of the query (an edit it has not loaded
    /// yet, or loaded while this engine had not), or not the query at all. The state is what that
    /// version would hold: the partition's rows in the lake below its committed offset, less the
    /// late and refused ones ([`History::window_input`]). Kept per ledger entry read, so it is
    /// computed again only for a newer entry or other windows.
    pub(super) async fn lake_states(
        &mut self,
        key: &str,
        tps: &[TopicPartition],
        starts: &BTreeSet<i64>,
    ) -> Result<Result<(), String>, Stop> {
        let Some((w, t)) = self.windowed(key) else {
            return Ok(Err("the query is not running".into()));
        };
        let known = |o: &Observed, s: &i64| {
            o.lake
                .get(key)
                .is_some_and(|l| l.fingerprint == w.fingerprint && l.windows.contains_key(s))
        };
        let missing: BTreeSet<i64> = starts
            .iter()
            .copied()
            .filter(|s| {
                tps.iter()
                    .any(|tp| self.book.observed.get(tp).is_none_or(|o| !known(o, s)))
            })
            .collect();
        let (Some(first), Some(last)) = (missing.first(), missing.last()) else {
            return Ok(Ok(()));
        };
        let committed: Vec<(TopicPartition, i64)> = tps
            .iter()
            .filter_map(|tp| {
                self.book
                    .observed
                    .get(tp)
                    .map(|o| (tp.clone(), o.progress.next_offset))
            })
            .collect();
        let range = Range {
            from: Some(*first),
            to: Some(last.saturating_add(1)),
        };
        let one = match committed.as_slice() {
            [(tp, _)] => Some(tp.partition),
            _ => None,
        };
        let location = self.sinks.lake.location().clone();
        let timeout = self.options.lake_timeout;
        let mut tries = 0;
        let rows = loop {
            tries += 1;
            let read = async {
                let history = History::open(&location, &self.options.raw_dataset).await?;
                history
                    .window_input(&t, &w.query.spec, self.options.lateness, range, one)
                    .await
            };
            match tokio::time::timeout(timeout, read).await {
                Ok(Ok(rows)) => break rows,
                // A merge of small files removed a file the read listed: list again.
                Ok(Err(e)) if tries < 3 && crate::catalog::is_merged_away(&e.to_string()) => {}
                Ok(Err(e)) => return Ok(Err(format!("cannot read the lake: {e}"))),
                Err(_) => return Ok(Err(format!("the lake did not answer in {timeout:?}"))),
            }
        };
        let rows = only_committed(&rows, &committed)?;
        let mut states = self.states_of_rows(&w, rows).await?;
        tracing::info!(query = %key, partitions = committed.len(), windows = missing.len(),
            "another engine runs another version of this query (or none yet): the windows of its partitions are read from the lake");
        for (tp, _) in &committed {
            let mut state = QueryState::default();
            if let Some(b) = states.remove(&tp.partition) {
                state
                    .replace(&w.query, &[b])
                    .map_err(super::PipelineError::from)?;
            }
            let Some(o) = self.book.observed.get_mut(tp) else {
                continue;
            };
            let cached = o.lake.entry(key.to_string()).or_default();
            if cached.fingerprint != w.fingerprint {
                *cached = LakeState {
                    fingerprint: w.fingerprint.clone(),
                    windows: BTreeMap::new(),
                };
            }
            for s in &missing {
                cached.windows.insert(*s, state.get(*s));
            }
        }
        Ok(Ok(()))
    }
}

/// The rows of `rows` of the given partitions below their committed offsets.
fn only_committed(
    rows: &RecordBatch,
    committed: &[(TopicPartition, i64)],
) -> Result<RecordBatch, Stop> {
    use arrow::array::{Array, AsArray};
    let column = |name: &str| {
        rows.column_by_name(name).cloned().ok_or_else(|| {
            Stop::Failed(super::PipelineError::Arrow(
                arrow::error::ArrowError::SchemaError(format!("no {name}")),
            ))
        })
    };
    let (topic, part, offset) = (
        column(crate::schema::COL_TOPIC)?,
        column(crate::schema::COL_PARTITION)?,
        column(crate::schema::COL_OFFSET)?,
    );
    let topic = arrow::compute::cast(&topic, &arrow::datatypes::DataType::Utf8)?;
    let (topic, part, offset) = (
        topic.as_string::<i32>(),
        part.as_primitive::<arrow::datatypes::Int32Type>(),
        offset.as_primitive::<arrow::datatypes::Int64Type>(),
    );
    let keep: BooleanArray = (0..rows.num_rows())
        .map(|i| {
            Some(committed.iter().any(|(tp, next)| {
                topic.is_valid(i)
                    && topic.value(i) == &*tp.topic
                    && part.value(i) == tp.partition
                    && offset.value(i) < *next
            }))
        })
        .collect();
    Ok(filter_record_batch(rows, &keep)?)
}
