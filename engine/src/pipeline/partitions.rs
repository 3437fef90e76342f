//! The partitions a pipeline knows: those it owns (ledger, event-time progress, open windows) and
//! the others of the topic as their owners last committed them (progress and window state read
//! from their ledger entries); and splitting a batch by partition.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::compute::{filter_record_batch, take_record_batch};
use arrow::datatypes::{DataType, Int32Type, Int64Type, TimeUnit, TimestampMillisecondType};
use arrow::error::ArrowError;

use crate::ledger::{LedgerEntry, PartitionLedger, Progress, WindowBlob};
use crate::schema::{COL_OFFSET, COL_PARTITION, COL_TOPIC};
use crate::source::{Message, TopicPartition};
use crate::windows::state::{PartitionWindows, QueryState};
use crate::windows::watermark::PartitionProgress;

/// A partition this process owns.
#[derive(Debug, Clone)]
pub struct Owned {
    /// Its ledger as committed.
    pub ledger: PartitionLedger,
    /// Event-time progress as committed (plus what was closed since).
    pub progress: Progress,
    /// Open windows as committed.
    pub windows: PartitionWindows,
    /// The next offset this ownership has processed (re-deliveries below it are dropped).
    pub next_processed: Option<i64>,
    /// Which ownership this is: a new one for every load (work begun for an earlier ownership,
    /// like a merge of its files, is not used by a later one).
    pub epoch: u64,
    /// What the last close dropped while its batch's points were not written yet (its commit
    /// in flight): the next commit still carries it.
    pub held: Option<Held>,
    /// Holes in its offsets seen in this ownership.
    pub holes: super::holes::Holes,
}

/// Open windows and the close boundary as they were before a close whose batch's window points
/// may not have landed when the next commit goes: that commit records these (the windows the
/// close dropped stay in its state, the boundary is the one before), so a crash before the
/// points land leaves those windows open in the ledger, and the restart writes their points
/// again. The commit after it, which waits for those points, records the close.
#[derive(Debug, Clone, Default)]
pub struct Held {
    /// The open windows before the close.
    pub windows: PartitionWindows,
    /// The boundary before the close, per event-time column.
    pub closed_before_ms: BTreeMap<String, i64>,
}

impl Owned {
    /// A number no earlier ownership of this process had.
    pub fn next_epoch() -> u64 {
        static EPOCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        EPOCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Its progress in the watermark's terms.
    pub fn progress_view(&self) -> PartitionProgress {
        PartitionProgress {
            next_offset: self.ledger.next_offset,
            max_event_ms: self.progress.max_event_ms.clone(),
            closed_before_ms: self.progress.closed_before_ms.clone(),
        }
    }
}

/// A partition's progress in the watermark's terms: as this process holds it when owned, else as
/// its owner last committed it.
pub fn progress_of(
    owned: &HashMap<TopicPartition, Owned>,
    observed: &HashMap<TopicPartition, Observed>,
    tp: &TopicPartition,
) -> Option<PartitionProgress> {
    owned
        .get(tp)
        .map(|o| o.progress_view())
        .or_else(|| observed.get(tp).map(|o| o.progress.clone()))
}

/// A partition of the topic owned by another process (or by nobody right now), as its latest
/// ledger entry shows it.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Sequence number of the entry read (0: no entry).
    pub seq: u64,
    /// Its progress.
    pub progress: PartitionProgress,
    /// Its open windows, as committed (decoded on demand).
    pub blobs: BTreeMap<String, WindowBlob>,
    /// Decoded window state per query key (of the blob's query version).
    pub decoded: HashMap<String, QueryState>,
    /// Window state computed from the lake, per query key, for a version of the query this
    /// entry holds no state of (its owner runs another version, or not the query at all).
    pub lake: HashMap<String, LakeState>,
}

/// A partition's committed state of some windows of one query version, computed from its rows
/// in the lake below its committed offset.
#[derive(Debug, Clone, Default)]
pub struct LakeState {
    /// The query version.
    pub fingerprint: String,
    /// Window start → state rows (`None`: no rows in that window).
    pub windows: BTreeMap<i64, Option<RecordBatch>>,
}

impl Observed {
    /// From a ledger entry (or none).
    pub fn from_entry(entry: Option<LedgerEntry>) -> Self {
        match entry {
            None => Self::default(),
            Some(e) => Self {
                seq: e.seq,
                progress: PartitionProgress {
                    next_offset: e.next_offset,
                    max_event_ms: e.progress.max_event_ms,
                    closed_before_ms: e.progress.closed_before_ms,
                },
                blobs: e.windows,
                decoded: HashMap::new(),
                lake: HashMap::new(),
            },
        }
    }
}

/// Per partition of `messages`: (first offset, last offset, message count).
pub fn offset_ranges(messages: &[Message]) -> BTreeMap<TopicPartition, (i64, i64, u64)> {
    let mut out: BTreeMap<TopicPartition, (i64, i64, u64)> = BTreeMap::new();
    for m in messages {
        out.entry(m.topic_partition())
            .and_modify(|r| {
                r.0 = r.0.min(m.offset);
                r.1 = r.1.max(m.offset);
                r.2 += 1;
            })
            .or_insert((m.offset, m.offset, 1));
    }
    out
}

fn col<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a arrow::array::ArrayRef, ArrowError> {
    b.column_by_name(name)
        .ok_or_else(|| ArrowError::SchemaError(format!("no column {name}")))
}

/// The rows of each partition, in order. When each partition's rows are contiguous (a batch in
/// processing order, the usual case) they are slices of `rows`, not copies.
pub fn split_by_partition(
    rows: &RecordBatch,
) -> Result<HashMap<TopicPartition, RecordBatch>, ArrowError> {
    let mut out = HashMap::new();
    if rows.num_rows() == 0 {
        return Ok(out);
    }
    let topics = col(rows, COL_TOPIC)?.as_string::<i32>();
    let parts = col(rows, COL_PARTITION)?.as_primitive::<Int32Type>();
    // Runs of one partition: (topic, partition, first row, rows).
    let mut runs: Vec<(&str, i32, usize, usize)> = Vec::new();
    for i in 0..rows.num_rows() {
        let (t, p) = (topics.value(i), parts.value(i));
        match runs.last_mut() {
            Some((rt, rp, _, n)) if *rp == p && *rt == t => *n += 1,
            _ => runs.push((t, p, i, 1)),
        }
    }
    let mut seen = std::collections::HashSet::with_capacity(runs.len());
    if runs.iter().all(|(t, p, _, _)| seen.insert((*t, *p))) {
        for (t, p, first, n) in runs {
            out.insert(TopicPartition::new(Arc::from(t), p), rows.slice(first, n));
        }
        return Ok(out);
    }
    let mut idx: HashMap<(&str, i32), Vec<u32>> = HashMap::new();
    for i in 0..rows.num_rows() {
        idx.entry((topics.value(i), parts.value(i)))
            .or_default()
            .push(i as u32);
    }
    for ((t, p), i) in idx {
        out.insert(
            TopicPartition::new(Arc::from(t), p),
            take_record_batch(rows, &UInt32Array::from(i))?,
        );
    }
    Ok(out)
}

/// The rows with `_offset >= from`.
pub fn from_offset(rows: &RecordBatch, from: i64) -> Result<RecordBatch, ArrowError> {
    let offsets = col(rows, COL_OFFSET)?.as_primitive::<Int64Type>();
    if offsets.values().first().is_some_and(|&o| o >= from) {
        return Ok(rows.clone());
    }
    let mask =
        arrow::compute::kernels::cmp::gt_eq(offsets, &arrow::array::Int64Array::new_scalar(from))?;
    filter_record_batch(rows, &mask)
}

/// The newest value (ms) of a timestamp column, if any.
pub fn max_time(rows: &RecordBatch, column: &str) -> Result<Option<i64>, ArrowError> {
    let c = col(rows, column)?;
    let c = arrow::compute::cast(c, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
    Ok(arrow::compute::max(
        c.as_primitive::<TimestampMillisecondType>(),
    ))
}

/// The (partition, offset) of each row.
pub fn origins(rows: &RecordBatch) -> Result<Vec<(i32, i64)>, ArrowError> {
    let parts = col(rows, COL_PARTITION)?.as_primitive::<Int32Type>();
    let offsets = col(rows, COL_OFFSET)?.as_primitive::<Int64Type>();
    Ok((0..rows.num_rows())
        .map(|i| (parts.value(i), offsets.value(i)))
        .collect())
}

/// `rows` without the rows at `drop` (indices).
pub fn without_rows(rows: &RecordBatch, drop: &[usize]) -> Result<RecordBatch, ArrowError> {
    if drop.is_empty() {
        return Ok(rows.clone());
    }
    let mut keep = vec![true; rows.num_rows()];
    for &i in drop {
        if let Some(k) = keep.get_mut(i) {
            *k = false;
        }
    }
    filter_record_batch(rows, &arrow::array::BooleanArray::from(keep))
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int32Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    fn batch(rows: &[(&str, i32, i64)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new(COL_TOPIC, DataType::Utf8, false),
            Field::new(COL_PARTITION, DataType::Int32, false),
            Field::new(COL_OFFSET, DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap()
    }

    fn offsets(b: &RecordBatch) -> Vec<i64> {
        b.column(2).as_primitive::<Int64Type>().values().to_vec()
    }

    fn tp(t: &str, p: i32) -> TopicPartition {
        TopicPartition::new(Arc::from(t), p)
    }

    /// A batch in processing order is split without copying its rows: each partition's rows
    /// are a slice of the batch (the copy was 12 MB at the peak of a heaptrack of `carflow run`).
    #[test]
    fn a_batch_in_processing_order_is_split_into_slices() {
        let rows = batch(&[
            ("t", 0, 5),
            ("t", 0, 6),
            ("t", 1, 2),
            ("u", 1, 9),
            ("u", 1, 10),
        ]);
        let split = split_by_partition(&rows).unwrap();
        assert_eq!(split.len(), 3);
        assert_eq!(offsets(&split[&tp("t", 0)]), vec![5, 6]);
        assert_eq!(offsets(&split[&tp("t", 1)]), vec![2]);
        assert_eq!(offsets(&split[&tp("u", 1)]), vec![9, 10]);
        let whole = rows
            .column(2)
            .as_primitive::<Int64Type>()
            .values()
            .as_ptr_range();
        for part in split.values() {
            let at = part.column(2).as_primitive::<Int64Type>().values().as_ptr();
            assert!(whole.contains(&at), "a slice shares the batch's buffer");
        }
    }

    /// Rows of a partition that are not contiguous are gathered, in their order.
    #[test]
    fn interleaved_partitions_are_gathered_in_order() {
        let rows = batch(&[
            ("t", 0, 5),
            ("t", 1, 2),
            ("t", 0, 6),
            ("t", 1, 3),
            ("t", 2, 1),
        ]);
        let split = split_by_partition(&rows).unwrap();
        assert_eq!(split.len(), 3);
        assert_eq!(offsets(&split[&tp("t", 0)]), vec![5, 6]);
        assert_eq!(offsets(&split[&tp("t", 1)]), vec![2, 3]);
        assert_eq!(offsets(&split[&tp("t", 2)]), vec![1]);
    }
}
