//! The declared schema of a car-sale transaction and the Kafka metadata columns.
//!
//! Every message is decoded against [`transaction_schema`]; the source then appends the metadata
//! columns of [`METADATA_FIELDS`] so SQL can see where each row came from. The schema is explicit,
//! never inferred: a message that does not fit it is a dead letter, not a schema change.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Name of the source table every transform reads from.
pub const SOURCE_TABLE: &str = "transactions";

/// The event-time column of a transaction.
pub const EVENT_TIME: &str = "sold_at";

/// Kafka topic the message was read from.
pub const COL_TOPIC: &str = "_topic";
/// Kafka partition the message was read from.
pub const COL_PARTITION: &str = "_partition";
/// Kafka offset of the message.
pub const COL_OFFSET: &str = "_offset";
/// Kafka timestamp of the message (create or log-append time), if the broker gave one.
pub const COL_KAFKA_TS: &str = "_kafka_ts";

/// The metadata columns appended to every decoded row, in order.
pub const METADATA_FIELDS: [&str; 4] = [COL_TOPIC, COL_PARTITION, COL_OFFSET, COL_KAFKA_TS];

/// The lake dataset of messages that could not be processed (reserved: no query may write it).
pub const DEAD_LETTERS: &str = "dead_letters";

/// Precision and scale of `price`: money is a decimal in the lake, never a float.
pub const PRICE_PRECISION: u8 = 12;
/// Scale of `price` (cents).
pub const PRICE_SCALE: i8 = 2;

fn utc_millis() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

static TRANSACTION: LazyLock<SchemaRef> = LazyLock::new(|| {
    let s = |name: &str| Field::new(name, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        s("transaction_id"),
        Field::new(EVENT_TIME, utc_millis(), false),
        s("dealer_id"),
        s("dealer_city"),
        s("dealer_state"),
        s("brand"),
        s("model"),
        Field::new("model_year", DataType::Int32, false),
        s("body_type"),
        s("fuel_type"),
        s("color"),
        s("condition"),
        Field::new("mileage_km", DataType::Int64, false),
        Field::new(
            "price",
            DataType::Decimal128(PRICE_PRECISION, PRICE_SCALE),
            false,
        ),
        s("currency"),
        s("payment_method"),
        Field::new("customer_age", DataType::Int32, true),
        s("salesperson_id"),
        s("status"),
    ]))
});

static SOURCE: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields: Vec<Field> = TRANSACTION
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(COL_TOPIC, DataType::Utf8, false));
    fields.push(Field::new(COL_PARTITION, DataType::Int32, false));
    fields.push(Field::new(COL_OFFSET, DataType::Int64, false));
    fields.push(Field::new(COL_KAFKA_TS, utc_millis(), true));
    Arc::new(Schema::new(fields))
});

/// The record as it arrives: one JSON object per message, decoded against this schema.
///
/// Every field is required except `customer_age`. Unknown JSON fields are ignored, so producers
/// may add fields without breaking the pipeline.
pub fn transaction_schema() -> SchemaRef {
    Arc::clone(&TRANSACTION)
}

/// The schema of the `transactions` table: [`transaction_schema`] plus the metadata columns.
pub fn source_schema() -> SchemaRef {
    Arc::clone(&SOURCE)
}

/// Can the lake (Parquet) hold columns of `schema`? A query whose output it cannot write is
/// refused when it is loaded, naming the problem, rather than failing on every batch.
pub fn parquet_writable(schema: &SchemaRef) -> Result<(), String> {
    use parquet::arrow::ArrowWriter;
    let loose: SchemaRef = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    let row = arrow::array::RecordBatch::try_new(
        Arc::clone(&loose),
        loose
            .fields()
            .iter()
            .map(|f| arrow::array::new_null_array(f.data_type(), 1))
            .collect(),
    )
    .map_err(|e| e.to_string())?;
    let mut w = ArrowWriter::try_new(Vec::new(), loose, None).map_err(|e| e.to_string())?;
    w.write(&row).map_err(|e| e.to_string())?;
    w.close().map(|_| ()).map_err(|e| e.to_string())
}

/// `batch` with each column cast to the type of `schema`'s column at the same place (e.g. the
/// lake's nullable or differently typed columns to a declared schema).
pub fn cast_to(
    batch: &arrow::array::RecordBatch,
    schema: &SchemaRef,
) -> Result<arrow::array::RecordBatch, arrow::error::ArrowError> {
    let cols = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    arrow::array::RecordBatch::try_new(Arc::clone(schema), cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_schema_is_transaction_plus_metadata() {
        let t = transaction_schema();
        let s = source_schema();
        assert_eq!(s.fields().len(), t.fields().len() + METADATA_FIELDS.len());
        for (i, name) in METADATA_FIELDS.iter().enumerate() {
            assert_eq!(s.field(t.fields().len() + i).name(), name);
        }
        assert!(!s.field_with_name("price").unwrap().is_nullable());
        assert!(s.field_with_name("customer_age").unwrap().is_nullable());
    }
}
