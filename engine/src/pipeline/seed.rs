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

use super::{Pipeline, Stop, WindowSet};
use crate::history::{History, Range};
use crate::source::{Source, TopicPartition};

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
            let (Some(w), Some(t)) = (
                self.queries.windows.get(&key).cloned(),
                self.queries
                    .transforms
                    .iter()
                    .find(|t| t.target_name() == key)
                    .cloned(),
            ) else {
                continue;
            };
            let spec = &w.query.spec;
            let closed = self.closed_before(&spec.column);
            // Windows a partition can still change, or another partition still can.
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
                .min();
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
            let wanted_parts: BTreeSet<i32> = tps.iter().map(|tp| tp.partition).collect();
            let mine = only_partitions(&rows, &wanted_parts)?;
            let planner = &self.queries.planner;
            planner.batch.set(vec![mine]);
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
            for tp in &tps {
                let Some(o) = self.book.owned.get_mut(tp) else {
                    continue;
                };
                let keep: BooleanArray = owners
                    .iter()
                    .map(|p| Some(p == Some(tp.partition)))
                    .collect();
                let state_rows = filter_record_batch(&merged, &keep)?;
                let state = o.windows.queries.entry(key.clone()).or_default();
                let done = state
                    .replace(&w.query, &[state_rows])
                    .map_err(super::PipelineError::from)?;
                tracing::info!(partition = %tp, query = %key, windows = done.len(),
                    "seeded the query's open windows from the lake");
                seeded.entry(key.clone()).or_default().extend(done);
            }
        }
        self.write_windows(seeded, shutdown).await.map(|_| ())
    }
}

/// The rows of `rows` whose `_partition` is one of `parts`.
fn only_partitions(rows: &RecordBatch, parts: &BTreeSet<i32>) -> Result<RecordBatch, Stop> {
    use arrow::array::AsArray;
    let p = rows
        .column_by_name(crate::schema::COL_PARTITION)
        .ok_or_else(|| {
            Stop::Failed(super::PipelineError::Arrow(
                arrow::error::ArrowError::SchemaError("no _partition".into()),
            ))
        })?
        .as_primitive::<arrow::datatypes::Int32Type>();
    let keep: BooleanArray = p
        .iter()
        .map(|v| Some(v.is_some_and(|v| parts.contains(&v))))
        .collect();
    Ok(filter_record_batch(rows, &keep)?)
}
