//! Dead letters as a lake dataset: every message that did not decode, with its reason and origin.
//!
//! Dead letters are committed in the same ledger step as the good rows of their partition, so
//! they too land exactly once. A message that did not decode has a null `transform`; a row that a
//! transform could not process (it is missing from that transform's output only) names it, e.g.
//! `lake.age_ratio`. The dataset is `dead_letters` (partitioned by the day they were
//! received); `carflow sql -c "SELECT reason, count(*) FROM dead_letters GROUP BY reason"` shows
//! what went wrong. The payload is kept as bytes (exactly as received) and as lossy text.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    BinaryArray, Date32Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::sink::lake::DatasetOutput;
use crate::source::DeadLetter;

/// The name of the dead-letter dataset.
pub const DATASET: &str = crate::schema::DEAD_LETTERS;

/// At most this much of a payload is kept as text (the bytes are kept whole).
const TEXT_LIMIT: usize = 64 << 10;

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("kafka_ts", ts.clone(), true),
        Field::new("reason", DataType::Utf8, false),
        Field::new("transform", DataType::Utf8, true),
        Field::new("payload", DataType::Binary, false),
        Field::new("payload_text", DataType::Utf8, false),
        Field::new("received_at", ts, false),
        Field::new("dt", DataType::Date32, false),
    ]))
});

/// The schema of the `dead_letters` dataset (with `dt`, which becomes the partition directory).
pub fn schema() -> SchemaRef {
    Arc::clone(&SCHEMA)
}

/// Dead letters received at `received_ms` as the output of the dead-letter dataset.
pub fn output(
    dead: &[&DeadLetter],
    received_ms: i64,
) -> Result<DatasetOutput, arrow::error::ArrowError> {
    let n = dead.len();
    let day = received_ms.div_euclid(86_400_000) as i32;
    let text: StringArray = dead
        .iter()
        .map(|d| {
            let cut = &d.payload[..d.payload.len().min(TEXT_LIMIT)];
            Some(String::from_utf8_lossy(cut).into_owned())
        })
        .collect();
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(
                dead.iter()
                    .map(|d| Some(&*d.topic))
                    .collect::<StringArray>(),
            ),
            Arc::new(
                dead.iter()
                    .map(|d| Some(d.partition))
                    .collect::<Int32Array>(),
            ),
            Arc::new(dead.iter().map(|d| Some(d.offset)).collect::<Int64Array>()),
            Arc::new(
                dead.iter()
                    .map(|d| d.timestamp_ms)
                    .collect::<TimestampMillisecondArray>()
                    .with_timezone("UTC"),
            ),
            Arc::new(
                dead.iter()
                    .map(|d| Some(d.reason.as_str()))
                    .collect::<StringArray>(),
            ),
            Arc::new(
                dead.iter()
                    .map(|d| d.transform.as_deref())
                    .collect::<StringArray>(),
            ),
            Arc::new(
                dead.iter()
                    .map(|d| Some(d.payload.as_slice()))
                    .collect::<BinaryArray>(),
            ),
            Arc::new(text),
            Arc::new(TimestampMillisecondArray::from(vec![received_ms; n]).with_timezone("UTC")),
            Arc::new(Date32Array::from(vec![day; n])),
        ],
    )?;
    Ok(DatasetOutput {
        dataset: DATASET.to_string(),
        partition_by: vec!["dt".to_string()],
        batches: vec![batch],
    })
}
