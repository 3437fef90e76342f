//! One partition's share of a batch, and what the steps of a batch share: running a transform
//! over rows, and turning rows a transform refused into dead letters of their partition.

use std::collections::{BTreeMap, HashMap};

use arrow::array::RecordBatch;
use datafusion::error::DataFusionError;

use super::Stop;
use super::partitions::origins;
use crate::sink::lake::DatasetOutput;
use crate::source::{DeadLetter, Message, TopicPartition};
use crate::transform::{Planner, Transform};
use crate::windows::state::PartitionWindows;

/// One partition's share of a batch.
pub(super) struct PartBatch {
    pub tp: TopicPartition,
    /// First offset, last offset and message count of the partition in the batch.
    pub range: (i64, i64, u64),
    /// Decoded rows the ledger does not hold yet.
    pub fresh: Option<RecordBatch>,
    /// Dead letters of this batch (undecodable messages, rows a transform refused).
    pub dead: Vec<DeadLetter>,
    /// Lake transforms' output.
    pub outputs: Vec<DatasetOutput>,
    /// Rows given to each lake dataset's transform.
    pub lake_inputs: BTreeMap<String, u64>,
    /// Newest event time of the fresh rows, per column.
    pub max_event: BTreeMap<String, i64>,
    /// Open windows after this batch (when windowed queries run).
    pub windows: Option<PartitionWindows>,
    /// Rows too late for a window.
    pub late: u64,
    /// Messages the ledger held already.
    pub replayed: u64,
}

impl PartBatch {
    /// Does this batch hold anything the ledger does not?
    pub fn is_new(&self, next_offset: i64) -> bool {
        self.range.1 >= next_offset
    }
}

/// Where each message of a batch is, to attach payloads to dead letters.
pub(super) struct MessageIndex<'a> {
    messages: &'a [Message],
    at: HashMap<(i32, i64), usize>,
}

impl<'a> MessageIndex<'a> {
    pub fn new(messages: &'a [Message]) -> Self {
        Self {
            messages,
            at: HashMap::new(),
        }
    }

    /// A dead letter for the row from `(partition, offset)` that `transform` refused.
    pub fn refused(
        &mut self,
        (partition, offset): (i32, i64),
        transform: &str,
        reason: String,
    ) -> Option<DeadLetter> {
        if self.at.is_empty() {
            self.at = self
                .messages
                .iter()
                .enumerate()
                .map(|(i, m)| ((m.partition, m.offset), i))
                .collect();
        }
        let m = &self.messages[*self.at.get(&(partition, offset))?];
        let mut d = DeadLetter::undecodable(m, reason);
        d.transform = Some(transform.to_string());
        Some(d)
    }
}

/// Run `t` over `rows` in the planner's batch table.
pub(super) async fn run_on(
    planner: &Planner,
    t: &Transform,
    rows: RecordBatch,
) -> Result<Vec<RecordBatch>, DataFusionError> {
    planner.batch.set(vec![rows]);
    t.execute(&planner.batch_ctx).await
}

/// Dead letters for the rows (of `rows`, at the indices of `poison`) that `t` could not process.
pub(super) fn refused_rows(
    index: &mut MessageIndex<'_>,
    rows: &RecordBatch,
    poison: &[(usize, String)],
    t: &Transform,
) -> Result<Vec<DeadLetter>, Stop> {
    let mut out = Vec::new();
    if poison.is_empty() {
        return Ok(out);
    }
    let at = origins(rows)?;
    for (i, err) in poison {
        let Some(origin) = at.get(*i) else { continue };
        let reason = format!(
            "{} ({}) cannot process this row: {err}",
            t.target_name(),
            t.file.display()
        );
        tracing::warn!(partition = origin.0, offset = origin.1, %reason, "row refused by a transform: dead letter");
        if let Some(d) = index.refused(*origin, &t.target_name(), reason) {
            out.push(d);
        }
    }
    Ok(out)
}

/// Give each dead letter to the batch part of its partition.
pub(super) fn route(parts: &mut [PartBatch], dead: Vec<DeadLetter>) {
    for d in dead {
        if let Some(p) = parts
            .iter_mut()
            .find(|p| p.tp.partition == d.partition && p.tp.topic == d.topic)
        {
            p.dead.push(d);
        }
    }
}
