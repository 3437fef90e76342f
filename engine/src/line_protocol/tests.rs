use std::sync::Arc;

use arrow::array::{
    BooleanArray, Date32Array, Decimal128Array, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray, TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

use super::*;

fn ts_ms(v: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(v).with_timezone("UTC"))
}

fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let fields: Vec<Field> = cols
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        cols.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap()
}

fn encode(m: &str, b: &RecordBatch) -> String {
    let mapping = PointMapping::from_schema(&b.schema()).unwrap();
    let mut out = String::new();
    encode_batch(m, &mapping, b, &mut out);
    out
}

use super::{split_escaped as split_unescaped, unescape_key as unescape};

#[test]
fn the_reference_example_encodes_exactly() {
    // From the line protocol reference: weather,location=us-midwest temperature=82 1465839830100
    let b = batch(vec![
        ("time", ts_ms(vec![Some(1_465_839_830_100)])),
        ("location", Arc::new(StringArray::from(vec!["us-midwest"]))),
        ("temperature", Arc::new(Float64Array::from(vec![82.0]))),
    ]);
    assert_eq!(
        encode("weather", &b),
        "weather,location=us-midwest temperature=82 1465839830100\n"
    );
}

#[test]
fn special_characters_are_escaped_as_influxdb_reads_them() {
    // Checked against InfluxDB 1.8: `a\\,b` is stored as `a\,b` (the backslash is literal, the
    // comma escaped), `a\\b` as `a\\b`; a value ending in a backslash cannot be written at all.
    assert_eq!(escape_measurement("my measure,x=1"), "my\\ measure\\,x=1");
    assert_eq!(escape_key("tag key,a=b"), "tag\\ key\\,a\\=b");
    assert_eq!(escape_key("a\\,b"), "a\\\\,b");
    assert_eq!(escape_key("plain\\path"), "plain\\path");
    assert_eq!(escape_string_field(r#"say "hi" \o/"#), r#"say \"hi\" \\o/"#);
}

#[test]
fn values_influxdb_cannot_hold_are_rewritten_by_the_documented_rule() {
    assert_eq!(tag_value(""), ("(empty)".to_string(), true));
    assert_eq!(
        tag_value("two\nlines"),
        ("two\u{fffd}lines".to_string(), true)
    );
    assert_eq!(
        tag_value("tab\there"),
        ("tab\u{fffd}here".to_string(), true)
    );
    assert_eq!(tag_value("ends\\"), ("ends\u{fffd}".to_string(), true));
    assert_eq!(tag_value("São Paulo"), ("São\\ Paulo".to_string(), false));
    assert_eq!(escape_key("key\r"), "key\u{fffd}");
    assert_eq!(escape_measurement("m\\"), "m\u{fffd}");
    let b = batch(vec![
        ("time", ts_ms(vec![Some(1), Some(2)])),
        ("city", Arc::new(StringArray::from(vec!["", "a\nb"]))),
        ("n", Arc::new(Int64Array::from(vec![1, 2]))),
    ]);
    let mapping = PointMapping::from_schema(&b.schema()).unwrap();
    let mut out = String::new();
    let done = encode_batch_counted("m", &mapping, &b, &mut out);
    assert_eq!(
        done,
        Encoded {
            points: 2,
            rewritten: 2
        }
    );
    assert_eq!(out, "m,city=(empty) n=1i 1\nm,city=a\u{fffd}b n=2i 2\n");
}

#[test]
fn escaped_lines_split_back_into_the_original_parts() {
    let nasty = [
        "a b",
        "a,b",
        "a=b",
        "trailing\\",
        "x\\,y",
        "= ,",
        "ünï ç😀de",
    ];
    for v in nasty {
        let b = batch(vec![
            ("time", ts_ms(vec![Some(1)])),
            ("tag key", Arc::new(StringArray::from(vec![v]))),
            ("f=1", Arc::new(Int64Array::from(vec![7]))),
        ]);
        let line = encode("m e,s", &b);
        let line = line.trim_end();
        let sections = split_unescaped(line, ' ');
        assert_eq!(sections.len(), 3, "{line}");
        let head = split_unescaped(&sections[0], ',');
        assert_eq!(unescape(&head[0]), "m e,s");
        let kv = split_unescaped(&head[1], '=');
        assert_eq!(unescape(&kv[0]), "tag key");
        let got = unescape(&kv[1]);
        // Read back as InfluxDB reads it: the value itself, except a trailing backslash.
        let want = match v.strip_suffix('\\') {
            Some(head) => format!("{head}\u{fffd}"),
            None => v.to_string(),
        };
        assert_eq!(got, want, "{line}");
        assert_eq!(sections[1], "f\\=1=7i");
        assert_eq!(sections[2], "1");
    }
}

#[test]
fn fields_are_typed_and_nulls_are_left_out() {
    let price = Decimal128Array::from(vec![Some(1_234_567), Some(-5), None])
        .with_precision_and_scale(12, 2)
        .unwrap();
    let b = batch(vec![
        (
            "time",
            ts_ms(vec![Some(60_000), Some(120_000), Some(180_000)]),
        ),
        (
            "brand",
            Arc::new(StringArray::from(vec![Some("Ford"), None, Some("Kia")])),
        ),
        (
            "sales",
            Arc::new(Int64Array::from(vec![Some(3), Some(1), None])),
        ),
        ("revenue", Arc::new(price)),
        (
            "ok",
            Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
        ),
        (
            "ratio",
            Arc::new(Float64Array::from(vec![Some(0.5), Some(f64::NAN), None])),
        ),
    ]);
    assert_eq!(
        encode("sales", &b),
        "sales,brand=Ford sales=3i,revenue=12345.67,ok=true,ratio=0.5 60000\n\
         sales sales=1i,revenue=-0.05,ok=false 120000\n",
        "the row with only null fields makes no point"
    );
}

#[test]
fn tags_are_sorted_and_time_is_converted_to_milliseconds() {
    let ns = TimestampNanosecondArray::from(vec![Some(1_500_000_999_999)]);
    let b = batch(vec![
        ("time", Arc::new(ns)),
        ("zeta", Arc::new(StringArray::from(vec!["z"]))),
        ("alpha", Arc::new(StringArray::from(vec!["a"]))),
        ("n", Arc::new(Int64Array::from(vec![1]))),
    ]);
    assert_eq!(encode("m", &b), "m,alpha=a,zeta=z n=1i 1500000\n");
}

#[test]
fn schemas_that_cannot_be_points_are_refused_with_the_column() {
    let s = |fields: Vec<Field>| Arc::new(Schema::new(fields));
    let t = Field::new(
        "time",
        DataType::Timestamp(TimeUnit::Millisecond, None),
        false,
    );
    let n = Field::new("n", DataType::Int64, false);
    assert_eq!(
        PointMapping::from_schema(&s(vec![n.clone()])),
        Err(MappingError::NoTime)
    );
    assert!(matches!(
        PointMapping::from_schema(&s(vec![
            Field::new("time", DataType::Int64, false),
            n.clone()
        ])),
        Err(MappingError::TimeNotTimestamp(DataType::Int64))
    ));
    let d = Field::new("day", DataType::Date32, false);
    let err = PointMapping::from_schema(&s(vec![t.clone(), d, n])).unwrap_err();
    assert!(err.to_string().contains("`day` has type Date32"), "{err}");
    let tag = Field::new("brand", DataType::Utf8, false);
    assert_eq!(
        PointMapping::from_schema(&s(vec![t, tag])),
        Err(MappingError::NoFields)
    );
    let _ = Date32Array::from(vec![1]);
}
