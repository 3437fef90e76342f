//! Backfill of a `lake.*` query: its dataset gets the rows of every offset it does not hold yet,
//! computed from the raw dataset by the same SQL, in the same layout, each offset once.
//!
//! What a dataset holds is recorded per Kafka partition in the offset ledger
//! ([`Coverage`](crate::ledger::Coverage): the runs of offsets its query ran over) and in the
//! dataset's earlier backfills ([`Backfills`]). A backfill [`plan`]s the *gaps*: offsets the raw
//! dataset holds (within its own runs) that are in neither; then [`run`] reads the raw rows of the
//! gaps, runs the query over them (rows it cannot process are counted and named, as the stream
//! would dead-letter them), stages the files and commits them as one backfill record. Nothing is
//! visible before that record's commit point, everything after it.
//!
//! **Beside a live engine.** The engine writes a dataset from the offset its query started at
//! onwards; a partition whose ledger does not list the dataset yet gets it from its current
//! `next_offset` on (where the engine will start it, never lower). The backfill stops below
//! both, so the two never write the same offset; whatever lies between (the engine picked the
//! query up after a commit the plan did not see) is a gap for the next backfill. Two backfills of
//! one dataset race for the same record: one commits, the other publishes nothing.

use std::collections::BTreeMap;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use datafusion::error::DataFusionError;

use crate::history::History;
use crate::ledger::backfill::{BackfillRecord, Backfills};
use crate::ledger::coverage::{intersect, subtract};
use crate::ledger::{FileMove, LedgerError, OffsetLedger, safe_segment};
use crate::pipeline::Records;
use crate::schema::COL_OFFSET;
use crate::sink::lake::{DatasetOutput, LakeError, LakeSink};
use crate::source::TopicPartition;
use crate::storage::Location;
use crate::transform::isolate::run_isolating;
use crate::transform::{Planner, Target, Transform};

/// Offsets read and run in one step (bounds memory: one step's rows and output at a time).
const STEP_OFFSETS: i64 = 100_000;

/// Errors of a lake backfill.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// The backfill cannot be done as asked; says why and what to do.
    #[error("{0}")]
    Refused(String),
    /// The ledger or a record could not be read or written.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Encoding or staging failed.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// Reading the raw rows or running the query failed.
    #[error(transparent)]
    Query(#[from] DataFusionError),
}

/// The offsets of one partition a backfill writes.
#[derive(Debug, Clone)]
pub struct PartitionGaps {
    /// The partition (topic as the ledger names it).
    pub tp: TopicPartition,
    /// Kafka's topic id, as in the ledger.
    pub topic_id: Option<String>,
    /// `[from, to)` offset ranges the dataset lacks and the raw dataset holds.
    pub gaps: Vec<(i64, i64)>,
    /// Offsets below this predate the ledger's coverage records (written by an older carflow):
    /// not backfilled, since the dataset may hold them.
    pub unknown_below: Option<i64>,
}

/// What a backfill of a dataset will write.
#[derive(Debug, Clone)]
pub struct LakePlan {
    /// The dataset.
    pub dataset: String,
    /// Per partition.
    pub parts: Vec<PartitionGaps>,
    /// Backfills of the dataset committed before.
    pub previous: u64,
}

impl LakePlan {
    /// How many offsets the gaps span.
    pub fn offsets(&self) -> u64 {
        self.parts
            .iter()
            .flat_map(|p| &p.gaps)
            .map(|(a, b)| (b - a).max(0) as u64)
            .sum()
    }
}

/// Plan the backfill of `t`'s dataset in the lake at `location`, whose raw dataset is `raw`.
pub async fn plan(
    location: &Location,
    raw: &str,
    t: &Transform,
) -> Result<LakePlan, BackfillError> {
    let Target::Lake { dataset, .. } = &t.target else {
        return Err(BackfillError::Refused(format!(
            "{} is not a lake.* query",
            t.target_name()
        )));
    };
    if dataset == raw {
        return Err(BackfillError::Refused(format!(
            "lake.{dataset} is the raw dataset (lake.raw_dataset), the source of every backfill: it \
             holds what Kafka delivered and cannot be computed from itself"
        )));
    }
    let records = Records::load(location)
        .await
        .map_err(|source| LedgerError::Store {
            path: "_carflow/datasets".into(),
            source,
        })?;
    if let (Some(recorded), Some(shape)) =
        (records.shape(dataset), crate::pipeline::DatasetShape::of(t))
        && let Err(why) = recorded.accepts(&shape)
    {
        return Err(BackfillError::Refused(format!(
            "{}: lake.{dataset} already holds another shape: {why}",
            t.file.display()
        )));
    }
    let ledger = OffsetLedger::new(location.clone(), "backfill-plan");
    let backfills = Backfills::new(ledger.clone(), dataset);
    let done = backfills.records().await?;
    let mut parts = Vec::new();
    for tp in ledger.partitions().await? {
        let Some(entry) = ledger.latest(&tp).await? else {
            continue;
        };
        let key = format!("{}/{}", tp.topic, tp.partition);
        let filled: Vec<(i64, i64)> = done
            .iter()
            .filter_map(|r| r.offsets.get(&key))
            .flatten()
            .copied()
            .collect();
        let Some(coverage) = &entry.coverage else {
            parts.push(PartitionGaps {
                tp,
                topic_id: entry.topic_id.clone(),
                gaps: Vec::new(),
                unknown_below: Some(entry.next_offset),
            });
            continue;
        };
        let now = entry.next_offset;
        let raw_runs = intersect(&coverage.runs(raw, now), &[(coverage.known_from, now)]);
        // The dataset's running span (if any) ends nowhere: the engine goes on writing it.
        let held = coverage.runs(dataset, i64::MAX);
        let gaps = subtract(&subtract(&raw_runs, &held), &filled);
        parts.push(PartitionGaps {
            tp,
            topic_id: entry.topic_id.clone(),
            gaps,
            unknown_below: (coverage.known_from > 0).then_some(coverage.known_from),
        });
    }
    Ok(LakePlan {
        dataset: dataset.clone(),
        parts,
        previous: done.last().map_or(0, |r| r.seq),
    })
}

/// What a backfill wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LakeOutcome {
    /// Raw rows read.
    pub rows_in: u64,
    /// Rows written to the dataset.
    pub rows_out: u64,
    /// Files made visible.
    pub files: usize,
    /// Raw rows the query could not process (the stream would have dead-lettered them).
    pub refused: u64,
    /// The first few reasons, with partition and offset.
    pub refused_samples: Vec<String>,
    /// The backfill record committed (none when there was nothing to write).
    pub record: Option<u64>,
}

/// Run `plan`: read the gaps' raw rows from `history`, run `t` over them and commit the output
/// as one backfill record written by `writer`. `progress` gets the offsets of each step (the
/// plan's [`LakePlan::offsets`] in all).
pub async fn run(
    history: &History,
    planner: &Planner,
    t: &Transform,
    plan: &LakePlan,
    writer: &str,
    mut progress: impl FnMut(u64),
) -> Result<LakeOutcome, BackfillError> {
    let Target::Lake {
        dataset,
        partition_by,
    } = &t.target
    else {
        return Err(BackfillError::Refused(format!(
            "{} is not a lake.* query",
            t.target_name()
        )));
    };
    let location = history.location().clone();
    let sink = LakeSink::new(location.clone(), writer);
    let backfills = Backfills::new(sink.ledger().clone(), dataset);
    backfills.roll_forward().await?;
    if let Err(e) = backfills.sweep_abandoned(writer).await {
        tracing::warn!(error = %e, "cannot sweep abandoned backfill staging");
    }
    // The ledger names topics by a path-safe form of their name.
    let topics: BTreeMap<String, String> = history
        .topics()
        .await?
        .into_iter()
        .map(|t| (safe_segment(&t), t))
        .collect();
    let mut out = LakeOutcome::default();
    let mut moves: Vec<FileMove> = Vec::new();
    let mut written: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for part in &plan.parts {
        let Some(topic) = topics.get(part.tp.topic.as_ref()) else {
            continue;
        };
        for &(from, to) in &part.gaps {
            let mut at = from;
            while at < to {
                let end = at.saturating_add(STEP_OFFSETS).min(to);
                let rows = history.rows_at(topic, part.tp.partition, (at, end)).await?;
                check_unique_offsets(&rows, &part.tp)?;
                progress((end - at) as u64);
                out.rows_in += rows.num_rows() as u64;
                if rows.num_rows() > 0 {
                    let iso = run_isolating(&rows, |r| history.run(planner, t, r)).await;
                    if iso.all_failed(rows.num_rows()) {
                        let why = iso.poison.first().map(|p| p.1.clone()).unwrap_or_default();
                        return Err(BackfillError::Refused(format!(
                            "{} ({}) fails on every row of {} offsets {at}..{end}: {why}; nothing \
                             was published",
                            t.target_name(),
                            t.file.display(),
                            part.tp
                        )));
                    }
                    let offsets = rows
                        .column_by_name(COL_OFFSET)
                        .map(|c| c.as_primitive::<Int64Type>().clone());
                    out.refused += iso.poison.len() as u64;
                    let room = 5usize.saturating_sub(out.refused_samples.len());
                    for (i, why) in iso.poison.iter().take(room) {
                        let o = offsets.as_ref().map_or(-1, |o| o.value(*i));
                        out.refused_samples
                            .push(format!("{} offset {o}: {why}", part.tp));
                    }
                    let (first, last) = match &offsets {
                        Some(o) if !o.is_empty() => (o.value(0), o.value(o.len() - 1)),
                        _ => (at, end - 1),
                    };
                    let files = sink.encode(
                        &part.tp,
                        part.topic_id.as_deref(),
                        (first, last),
                        &[DatasetOutput {
                            dataset: dataset.clone(),
                            partition_by: partition_by.clone(),
                            batches: iso.outputs,
                        }],
                    )?;
                    for f in files {
                        let relative = backfill_name(&f.relative);
                        out.rows_out += f.rows as u64;
                        let staged = backfills.stage_file(writer, moves.len(), f.bytes).await?;
                        moves.push(FileMove {
                            staged,
                            visible: location.path(&[dataset, &relative]).to_string(),
                        });
                    }
                }
                at = end;
            }
            written
                .entry(format!("{}/{}", part.tp.topic, part.tp.partition))
                .or_default()
                .push((from, to));
        }
    }
    if written.is_empty() {
        return Ok(out);
    }
    out.files = moves.len();
    let record = BackfillRecord {
        seq: plan.previous + 1,
        dataset: dataset.clone(),
        query: t.file.display().to_string(),
        fingerprint: t.fingerprint(),
        offsets: written,
        rows: out.rows_out,
        files: moves,
        writer: writer.to_string(),
        committed_at_ms: chrono::Utc::now().timestamp_millis(),
    };
    backfills.publish(writer, &record).await?;
    out.record = Some(record.seq);
    Ok(out)
}

/// A backfill's file name: `part-…` of the stream becomes `backfill-…` (same offsets naming).
fn backfill_name(relative: &str) -> String {
    match relative.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/{}", name.replacen("part-", "backfill-", 1)),
        None => relative.replacen("part-", "backfill-", 1),
    }
}

/// A recreated topic can leave two rows with one (partition, offset) in the raw dataset: a
/// backfill cannot tell which the dataset should hold.
fn check_unique_offsets(rows: &RecordBatch, tp: &TopicPartition) -> Result<(), BackfillError> {
    let Some(o) = rows.column_by_name(COL_OFFSET) else {
        return Ok(());
    };
    let o = o.as_primitive::<Int64Type>();
    for i in 1..o.len() {
        if o.value(i) == o.value(i - 1) {
            return Err(BackfillError::Refused(format!(
                "the raw dataset holds offset {} of {tp} twice (a topic recreated under the same \
                 name, kept with lake.on_new_topic = \"new-ledger\"?): a backfill cannot tell the \
                 two apart; nothing was published",
                o.value(i)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backfill_files_are_named_apart_from_the_streams() {
        assert_eq!(
            backfill_name(
                "dt=2026-01-01/part-t-0-00000000000000000000-00000000000000000009.parquet"
            ),
            "dt=2026-01-01/backfill-t-0-00000000000000000000-00000000000000000009.parquet"
        );
        assert_eq!(
            backfill_name("part-t-0-1-2.parquet"),
            "backfill-t-0-1-2.parquet"
        );
    }
}
