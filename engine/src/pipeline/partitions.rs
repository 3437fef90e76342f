//! Splitting a batch by Kafka partition, and small per-partition computations.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::compute::{filter_record_batch, take_record_batch};
use arrow::datatypes::{DataType, Int32Type, Int64Type, TimeUnit, TimestampMillisecondType};
use arrow::error::ArrowError;

use crate::schema::{COL_OFFSET, COL_PARTITION, COL_TOPIC};
use crate::source::Message;
use crate::windows::TopicPartition;

/// Per partition of `messages`: (first offset, last offset, message count).
pub fn offset_ranges(messages: &[Message]) -> BTreeMap<TopicPartition, (i64, i64, u64)> {
    let mut out: BTreeMap<TopicPartition, (i64, i64, u64)> = BTreeMap::new();
    for m in messages {
        out.entry((Arc::clone(&m.topic), m.partition))
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

/// The rows of each (topic, partition), in order.
pub fn split_by_partition(
    rows: &RecordBatch,
) -> Result<HashMap<TopicPartition, RecordBatch>, ArrowError> {
    let mut out = HashMap::new();
    if rows.num_rows() == 0 {
        return Ok(out);
    }
    let topics = col(rows, COL_TOPIC)?.as_string::<i32>();
    let parts = col(rows, COL_PARTITION)?.as_primitive::<Int32Type>();
    let mut idx: HashMap<(&str, i32), Vec<u32>> = HashMap::new();
    for i in 0..rows.num_rows() {
        idx.entry((topics.value(i), parts.value(i)))
            .or_default()
            .push(i as u32);
    }
    if idx.len() == 1 {
        let ((t, p), _) = idx
            .into_iter()
            .next()
            .ok_or_else(|| ArrowError::ComputeError("empty".into()))?;
        out.insert((Arc::from(t), p), rows.clone());
        return Ok(out);
    }
    for ((t, p), i) in idx {
        out.insert(
            (Arc::from(t), p),
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
