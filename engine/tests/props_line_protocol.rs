//! Property tests of the line-protocol encoder: random measurement, tag and field names and
//! values (unicode, spaces, commas, equals signs, quotes, backslashes, control characters, empty
//! strings, extreme integers, NaN/inf floats, decimals, every timestamp unit) are encoded by
//! `encode_batch`, and a line-protocol parser written here reads every line back: the same
//! measurement, tags, fields and timestamp, or the value is one the encoder documents it leaves
//! out (null tags and fields, empty tag values, non-finite floats, u64 above i64::MAX, rows
//! without a time or without fields).
//!
//! The parser follows the line-protocol reference as InfluxDB 1.8 (the server carflow writes to)
//! implements it (`models/points.go`), checked against the real server:
//! - measurement: `\,` and `\ ` are escapes; tag keys, tag values and field keys: `\,`, `\=`
//!   and `\ `; any other backslash is a literal character;
//! - a comma, space or equals sign right after a backslash never separates (InfluxDB looks at the
//!   one byte before, so `\\,` does not separate either);
//! - leading spaces, tabs and NULs of a line are skipped, a line starting with `#` is a comment;
//! - string field values escape `"` and `\`; integers end in `i`; `u` integers are refused;
//! - with `precision=ms` the timestamp must be within ±9223372036854 ms.
//!
//! Known gaps of the encoder are kept as `#[ignore]`d tests at the end, each with its minimal
//! input; the main properties check those inputs only for framing (one line per point, no raw
//! newline inside a line) so they keep guarding everything else.
//!
//! Cases: `PROPTEST_CASES` (default 256).

// The engine's API under test: keep these imports together (module paths may move).
use carflow_engine::line_protocol::{
    PointMapping, encode_batch, escape_key, escape_measurement, escape_string_field, split_escaped,
    unescape_key,
};

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, DictionaryArray, Float32Array,
    Float64Array, Int8Array, Int16Array, Int32Array, Int64Array, LargeStringArray, RecordBatch,
    StringArray, StringViewArray, TimestampMicrosecondArray, TimestampMillisecondArray,
    TimestampNanosecondArray, TimestampSecondArray, UInt8Array, UInt16Array, UInt32Array,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit};
use proptest::prelude::*;
use proptest::test_runner::Config;

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// A line-protocol parser (InfluxDB 1.8 semantics, see the module docs).

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Int(i64),
    /// The number as written (compared exactly for decimals, as an f64 for floats).
    Float(String),
    Bool(bool),
    Str(String),
}

#[derive(Debug, Clone, PartialEq)]
struct Point {
    measurement: String,
    /// In the order written.
    tags: Vec<(String, String)>,
    fields: Vec<(String, Value)>,
    time_ms: Option<i64>,
}

/// Largest |timestamp| in ms InfluxDB accepts (±9223372036854775806 ns).
const MAX_INFLUX_MS: i64 = 9_223_372_036_854;

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | 0) {
        i += 1;
    }
    i
}

/// Go's `bytes.Replace(in, "\c", "c", -1)` for each `c`, in order.
fn unescape(raw: &[u8], specials: &[u8]) -> Result<String, String> {
    let mut s = raw.to_vec();
    for &c in specials {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            if s[i] == b'\\' && s.get(i + 1) == Some(&c) {
                out.push(c);
                i += 2;
            } else {
                out.push(s[i]);
                i += 1;
            }
        }
        s = out;
    }
    String::from_utf8(s).map_err(|e| format!("not UTF-8: {e}"))
}

const MEASUREMENT_ESCAPES: &[u8] = b", ";
const KEY_ESCAPES: &[u8] = b", =";

fn unescape_string_field(raw: &[u8]) -> Result<String, String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' && matches!(raw.get(i + 1), Some(b'\\' | b'"')) {
            out.push(raw[i + 1]);
            i += 2;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|e| format!("not UTF-8: {e}"))
}

fn number(token: &str) -> Result<Value, String> {
    if let Some(int) = token.strip_suffix('i') {
        let digits = int.strip_prefix('-').unwrap_or(int);
        if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return Err(format!("invalid integer {token}"));
        }
        return int
            .parse()
            .map(Value::Int)
            .map_err(|e| format!("integer {token}: {e}"));
    }
    if token.ends_with('u') {
        return Err(format!(
            "unsigned integers are off in InfluxDB 1.8 OSS: {token}"
        ));
    }
    match token {
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(Value::Bool(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(Value::Bool(false)),
        _ => {}
    }
    // -?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?
    let b = token.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut digits = i - int_start;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let f = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        digits += i - f;
    }
    if digits == 0 {
        return Err(format!("invalid number {token}"));
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let e = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == e {
            return Err(format!("invalid exponent {token}"));
        }
    }
    if i != b.len() {
        return Err(format!("invalid number {token}"));
    }
    match token.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(Value::Float(token.to_string())),
        _ => Err(format!("invalid float {token}")),
    }
}

/// One line (without its `\n`): a point, `None` for a blank or comment line, or why InfluxDB
/// would refuse it.
fn parse_line(line: &str) -> Result<Option<Point>, String> {
    let b = line.as_bytes();
    let n = b.len();
    let start = skip_ws(b, 0);
    if start >= n || b[start] == b'#' {
        return Ok(None);
    }
    if b[start] == b',' {
        return Err("missing measurement".into());
    }
    // Measurement.
    let mut i = start;
    let tags_follow;
    loop {
        i += 1;
        if i >= n {
            return Err("missing fields".into());
        }
        if b[i - 1] == b'\\' {
            continue;
        }
        if b[i] == b',' {
            tags_follow = true;
            break;
        }
        if b[i] == b' ' {
            tags_follow = false;
            break;
        }
    }
    let measurement = unescape(&b[start..i], MEASUREMENT_ESCAPES)?;
    // Tags.
    let mut tags = Vec::new();
    if tags_follow {
        i += 1;
        loop {
            let ks = i;
            if i >= n || matches!(b[i], b' ' | b',' | b'=') {
                return Err("missing tag key".into());
            }
            loop {
                i += 1;
                if i >= n || ((b[i] == b' ' || b[i] == b',') && b[i - 1] != b'\\') {
                    return Err("missing tag value".into());
                }
                if b[i] == b'=' && b[i - 1] != b'\\' {
                    break;
                }
            }
            let key = unescape(&b[ks..i], KEY_ESCAPES)?;
            i += 1;
            let vs = i;
            if i >= n || b[i] == b',' || b[i] == b' ' {
                return Err("missing tag value".into());
            }
            let more;
            loop {
                i += 1;
                if i >= n {
                    return Err("missing fields".into());
                }
                if b[i] == b'=' && b[i - 1] != b'\\' {
                    return Err("invalid tag format".into());
                }
                if b[i] == b',' && b[i - 1] != b'\\' {
                    more = true;
                    break;
                }
                if b[i] == b' ' && b[i - 1] != b'\\' {
                    more = false;
                    break;
                }
            }
            let value = unescape(&b[vs..i], KEY_ESCAPES)?;
            if tags.iter().any(|(k, _)| *k == key) {
                return Err("duplicate tags".into());
            }
            tags.push((key, value));
            if more {
                i += 1;
            } else {
                break;
            }
        }
    }
    // Fields.
    i = skip_ws(b, i);
    let mut fields = Vec::new();
    loop {
        let ks = i;
        while i < n && !(b[i] == b'=' && (i == 0 || b[i - 1] != b'\\')) {
            if (b[i] == b' ' || b[i] == b',') && i > 0 && b[i - 1] != b'\\' {
                return Err("invalid field format".into());
            }
            i += 1;
        }
        if i >= n {
            return Err("invalid field format: no `=`".into());
        }
        if i == ks {
            return Err("missing field key".into());
        }
        let key = unescape(&b[ks..i], KEY_ESCAPES)?;
        i += 1;
        if i >= n || b[i] == b',' || b[i] == b' ' {
            return Err("missing field value".into());
        }
        let value = if b[i] == b'"' {
            let mut j = i + 1;
            loop {
                if j >= n {
                    return Err("unbalanced quotes".into());
                }
                if b[j] == b'\\' && matches!(b.get(j + 1), Some(b'"' | b'\\')) {
                    j += 2;
                    continue;
                }
                if b[j] == b'"' {
                    break;
                }
                j += 1;
            }
            let v = Value::Str(unescape_string_field(&b[i + 1..j])?);
            i = j + 1;
            v
        } else {
            let vs = i;
            while i < n && b[i] != b',' && b[i] != b' ' {
                i += 1;
            }
            number(std::str::from_utf8(&b[vs..i]).map_err(|e| e.to_string())?)?
        };
        fields.push((key, value));
        if i >= n || b[i] == b' ' {
            break;
        }
        if b[i] != b',' {
            return Err("invalid field format".into());
        }
        i += 1;
    }
    // Timestamp.
    let time_ms = if i >= n {
        None
    } else {
        let ts = skip_ws(b, i);
        let mut j = ts;
        while j < n && b[j] != b' ' {
            j += 1;
        }
        if b[j..].iter().any(|c| *c != b' ') {
            return Err("invalid point: text after the timestamp".into());
        }
        if ts == j {
            None
        } else {
            let t = std::str::from_utf8(&b[ts..j]).map_err(|e| e.to_string())?;
            let digits = t.strip_prefix('-').unwrap_or(t);
            if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return Err(format!("bad timestamp {t}"));
            }
            let ms: i64 = t.parse().map_err(|e| format!("timestamp {t}: {e}"))?;
            if !(-MAX_INFLUX_MS..=MAX_INFLUX_MS).contains(&ms) {
                return Err(format!("time outside range: {ms} ms"));
            }
            Some(ms)
        }
    };
    Ok(Some(Point {
        measurement,
        tags,
        fields,
        time_ms,
    }))
}

#[test]
fn the_parser_reads_the_reference_examples() {
    let p = parse_line(r#"weather,location=us\,midwest,season=summer temperature=82,bug_concentration=98i,is_raining=f,note="a \"b\" \\c" 1465839830100"#)
        .unwrap()
        .unwrap();
    assert_eq!(p.measurement, "weather");
    assert_eq!(
        p.tags,
        vec![
            ("location".into(), "us,midwest".into()),
            ("season".into(), "summer".into())
        ]
    );
    assert_eq!(
        p.fields,
        vec![
            ("temperature".into(), Value::Float("82".into())),
            ("bug_concentration".into(), Value::Int(98)),
            ("is_raining".into(), Value::Bool(false)),
            ("note".into(), Value::Str(r#"a "b" \c"#.into())),
        ]
    );
    assert_eq!(p.time_ms, Some(1_465_839_830_100));
    // What InfluxDB 1.8 answered for these lines (checked against the real server).
    assert_eq!(
        parse_line(r"m,k=trailing\\ f=7i 1000"),
        Err("invalid tag format".into())
    );
    assert!(parse_line(r"m4\\ f=7i 1000").is_err());
    assert!(parse_line(r"m9 f\\=7i 1000").is_err());
    assert!(parse_line("m f=7i 9223372036855").is_err());
    let p = parse_line(r"m2,k=a\\\,b f=7i 1000").unwrap().unwrap();
    assert_eq!(p.tags[0].1, r"a\\,b");
    let p = parse_line(r"m16,k=x f\,\ \=g=1.5 1000").unwrap().unwrap();
    assert_eq!(p.fields[0].0, "f, =g");
    let p = parse_line("\tm7 f=7i 1000").unwrap().unwrap();
    assert_eq!(p.measurement, "m7");
    assert_eq!(parse_line("#m8 f=7i 1000"), Ok(None));
}

// ---------------------------------------------------------------------------------------------
// Random batches and the points they must become.

fn text_char() -> impl Strategy<Value = char> {
    prop_oneof![
        8 => prop::char::range('a', 'z'),
        2 => prop::char::range('0', '9'),
        4 => prop::sample::select(vec![',', '=', ' ', '"', '\'', '\\', '#', '_', '.', '-']),
        2 => prop::sample::select(vec!['\n', '\t', '\r', '\0', '\u{1f}', '\u{7f}']),
        2 => prop::sample::select(vec!['ü', 'ß', 'İ', '\u{301}', '😀', '中', '\u{2028}', '\u{feff}']),
        1 => any::<char>(),
    ]
}

fn text(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    prop::collection::vec(text_char(), len).prop_map(|v| v.into_iter().collect())
}

/// Why a name or value cannot round-trip today (see the ignored tests), or `None`.
fn known_gap(s: &str, specials: &[char]) -> Option<&'static str> {
    let c: Vec<char> = s.chars().collect();
    for (i, ch) in c.iter().enumerate() {
        if *ch == '\\' && c.get(i + 1).is_some_and(|n| specials.contains(n)) {
            return Some("a backslash before a separator");
        }
    }
    None
}

/// The documented rule for what InfluxDB cannot hold (engine/src/line_protocol.rs), written
/// out again here: every control character becomes U+FFFD, and so does a trailing backslash.
fn rule(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    if out.ends_with('\\') {
        out.pop();
        out.push('\u{fffd}');
    }
    out
}

/// [`rule`] for a tag value: an empty one is written `(empty)`.
fn rule_tag_value(s: &str) -> String {
    if s.is_empty() {
        "(empty)".to_string()
    } else {
        rule(s)
    }
}

/// [`rule`] for a measurement name: a leading `#` (a comment to InfluxDB) becomes U+FFFD too.
fn rule_measurement(s: &str) -> String {
    let out = rule(s);
    match out.strip_prefix('#') {
        Some(rest) => format!("\u{fffd}{rest}"),
        None => out,
    }
}

/// A run of two or more backslashes right before a separator or at the end: `escape_*` doubles
/// only the last backslash of the run, so even `split_escaped` (the engine's own reading) splits
/// the escaped text at the wrong place (see `gap_backslash_run_before_a_separator`).
fn backslash_run_gap(s: &str, specials: &[char]) -> bool {
    let c: Vec<char> = s.chars().collect();
    let mut run = 0;
    for i in 0..=c.len() {
        match c.get(i) {
            Some('\\') => run += 1,
            next => {
                if run >= 2 && next.is_none_or(|n| specials.contains(n)) {
                    return true;
                }
                run = 0;
            }
        }
    }
    false
}

/// `s` without what InfluxDB cannot read back (newlines, backslashes before a separator or at the
/// end): the values the round trip must hold for.
fn representable(s: &str, specials: &[char]) -> String {
    let c: Vec<char> = s.chars().filter(|c| !c.is_control()).collect();
    c.iter()
        .enumerate()
        .filter(|(i, ch)| {
            **ch != '\\'
                || c.get(i + 1)
                    .is_some_and(|n| !specials.contains(n) && *n != '\\')
        })
        .map(|(_, ch)| *ch)
        .collect()
}

fn measurement_gap(m: &str) -> Option<&'static str> {
    known_gap(m, &[',', ' '])
}

fn key_gap(k: &str) -> Option<&'static str> {
    known_gap(k, &[',', '=', ' '])
}

#[derive(Debug, Clone)]
enum TagCol {
    Utf8(Vec<Option<String>>),
    Large(Vec<Option<String>>),
    View(Vec<Option<String>>),
    Dict(Vec<Option<String>>),
}

impl TagCol {
    fn values(&self) -> &[Option<String>] {
        match self {
            Self::Utf8(v) | Self::Large(v) | Self::View(v) | Self::Dict(v) => v,
        }
    }

    fn array(&self) -> ArrayRef {
        match self {
            Self::Utf8(v) => Arc::new(StringArray::from(v.clone())),
            Self::Large(v) => Arc::new(LargeStringArray::from(v.clone())),
            Self::View(v) => Arc::new(StringViewArray::from(
                v.iter().map(|s| s.as_deref()).collect::<Vec<_>>(),
            )),
            Self::Dict(v) => Arc::new(
                v.iter()
                    .map(|s| s.as_deref())
                    .collect::<DictionaryArray<Int32Type>>(),
            ),
        }
    }
}

/// What a field value must be read back as.
#[derive(Debug, Clone, PartialEq)]
enum Want {
    Int(i64),
    F64(f64),
    /// Exact decimal text.
    Dec(String),
    Bool(bool),
}

#[derive(Debug, Clone)]
enum FieldCol {
    I8(Vec<Option<i8>>),
    I16(Vec<Option<i16>>),
    I32(Vec<Option<i32>>),
    I64(Vec<Option<i64>>),
    U8(Vec<Option<u8>>),
    U16(Vec<Option<u16>>),
    U32(Vec<Option<u32>>),
    U64(Vec<Option<u64>>),
    F32(Vec<Option<f32>>),
    F64(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    Dec(u8, i8, Vec<Option<i128>>),
}

fn decimal_text(v: i128, scale: i8) -> String {
    if scale <= 0 {
        let mut s = v.to_string();
        if v != 0 {
            s.push_str(&"0".repeat(scale.unsigned_abs() as usize));
        }
        return s;
    }
    let digits = v.unsigned_abs().to_string();
    let scale = scale as usize;
    let padded = format!("{digits:0>w$}", w = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{}{int}.{frac}", if v < 0 { "-" } else { "" })
}

impl FieldCol {
    fn array(&self) -> ArrayRef {
        match self {
            Self::I8(v) => Arc::new(Int8Array::from(v.clone())),
            Self::I16(v) => Arc::new(Int16Array::from(v.clone())),
            Self::I32(v) => Arc::new(Int32Array::from(v.clone())),
            Self::I64(v) => Arc::new(Int64Array::from(v.clone())),
            Self::U8(v) => Arc::new(UInt8Array::from(v.clone())),
            Self::U16(v) => Arc::new(UInt16Array::from(v.clone())),
            Self::U32(v) => Arc::new(UInt32Array::from(v.clone())),
            Self::U64(v) => Arc::new(UInt64Array::from(v.clone())),
            Self::F32(v) => Arc::new(Float32Array::from(v.clone())),
            Self::F64(v) => Arc::new(Float64Array::from(v.clone())),
            Self::Bool(v) => Arc::new(BooleanArray::from(v.clone())),
            Self::Dec(p, s, v) => Arc::new(
                Decimal128Array::from(v.clone())
                    .with_precision_and_scale(*p, *s)
                    .expect("precision and scale"),
            ),
        }
    }

    /// The value of row `i` as it must be read back; `None` when it is left out (null, or not
    /// representable: a non-finite float, a u64 above i64::MAX).
    fn want(&self, i: usize) -> Option<Want> {
        match self {
            Self::I8(v) => v[i].map(|x| Want::Int(x.into())),
            Self::I16(v) => v[i].map(|x| Want::Int(x.into())),
            Self::I32(v) => v[i].map(|x| Want::Int(x.into())),
            Self::I64(v) => v[i].map(Want::Int),
            Self::U8(v) => v[i].map(|x| Want::Int(x.into())),
            Self::U16(v) => v[i].map(|x| Want::Int(x.into())),
            Self::U32(v) => v[i].map(|x| Want::Int(x.into())),
            Self::U64(v) => v[i].and_then(|x| i64::try_from(x).ok()).map(Want::Int),
            Self::F32(v) => v[i].filter(|x| x.is_finite()).map(|x| Want::F64(x.into())),
            Self::F64(v) => v[i].filter(|x| x.is_finite()).map(Want::F64),
            Self::Bool(v) => v[i].map(Want::Bool),
            Self::Dec(_, s, v) => v[i].map(|x| Want::Dec(decimal_text(x, *s))),
        }
    }
}

fn opt<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
    rows: usize,
) -> BoxedStrategy<Vec<Option<T>>> {
    prop::collection::vec(prop::option::weighted(0.85, s), rows).boxed()
}

fn f64s() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => any::<f64>(),
        1 => prop::sample::select(vec![
            f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, 0.0, f64::MAX, f64::MIN,
            f64::MIN_POSITIVE, 5e-324, 1e21, 1e-7, 0.1, -123.456,
        ]),
    ]
}

fn field_col(rows: usize) -> BoxedStrategy<FieldCol> {
    prop_oneof![
        opt(any::<i8>(), rows).prop_map(FieldCol::I8),
        opt(any::<i16>(), rows).prop_map(FieldCol::I16),
        opt(any::<i32>(), rows).prop_map(FieldCol::I32),
        opt(
            prop_oneof![any::<i64>(), Just(i64::MIN), Just(i64::MAX), Just(0)],
            rows
        )
        .prop_map(FieldCol::I64),
        opt(any::<u8>(), rows).prop_map(FieldCol::U8),
        opt(any::<u16>(), rows).prop_map(FieldCol::U16),
        opt(any::<u32>(), rows).prop_map(FieldCol::U32),
        opt(
            prop_oneof![any::<u64>(), Just(u64::MAX), Just(i64::MAX as u64)],
            rows
        )
        .prop_map(FieldCol::U64),
        opt(
            prop_oneof![any::<f32>(), Just(f32::NAN), Just(f32::INFINITY)],
            rows
        )
        .prop_map(FieldCol::F32),
        opt(f64s(), rows).prop_map(FieldCol::F64),
        opt(any::<bool>(), rows).prop_map(FieldCol::Bool),
        (1u8..=38)
            .prop_flat_map(move |p| (Just(p), 0..=p as i8))
            .prop_flat_map(move |(p, s)| {
                let bound = 10i128.pow(u32::from(p)) - 1;
                opt(-bound..=bound, rows).prop_map(move |v| FieldCol::Dec(p, s, v))
            }),
    ]
    .boxed()
}

#[derive(Debug, Clone)]
struct Case {
    measurement: String,
    unit: TimeUnit,
    tz: Option<Arc<str>>,
    times: Vec<Option<i64>>,
    time_at: usize,
    tags: Vec<(String, TagCol)>,
    fields: Vec<(String, FieldCol)>,
}

/// Timestamps that InfluxDB can hold once converted to ms, by unit.
fn times(unit: TimeUnit, rows: usize) -> BoxedStrategy<Vec<Option<i64>>> {
    let per_ms: i64 = match unit {
        TimeUnit::Second => return opt(-MAX_INFLUX_MS / 1000..=MAX_INFLUX_MS / 1000, rows),
        TimeUnit::Millisecond => 1,
        TimeUnit::Microsecond => 1000,
        TimeUnit::Nanosecond => 1_000_000,
    };
    let lo = (-MAX_INFLUX_MS).saturating_mul(per_ms);
    let hi = MAX_INFLUX_MS.saturating_mul(per_ms);
    opt(
        prop_oneof![4 => lo..=hi, 1 => Just(lo), 1 => Just(hi), 1 => Just(0)],
        rows,
    )
}

fn unique_names(n: std::ops::Range<usize>) -> impl Strategy<Value = Vec<String>> {
    prop::collection::btree_set(text(1..6), n).prop_map(|s| {
        s.into_iter()
            .filter(|k| k != "time")
            .collect::<Vec<String>>()
    })
}

fn case() -> impl Strategy<Value = Case> {
    (
        0usize..6,
        prop::sample::select(vec![
            TimeUnit::Second,
            TimeUnit::Millisecond,
            TimeUnit::Microsecond,
            TimeUnit::Nanosecond,
        ]),
        unique_names(1..8),
    )
        .prop_flat_map(|(rows, unit, names)| {
            let tag_count = names.len() / 2;
            let tag_names = names[..tag_count].to_vec();
            let field_names = names[tag_count..].to_vec();
            let tags: Vec<BoxedStrategy<(String, TagCol)>> = tag_names
                .into_iter()
                .map(|name| {
                    let values = opt(prop_oneof![4 => text(0..6), 1 => Just(String::new())], rows);
                    (values, 0..4u8)
                        .prop_map(move |(v, kind)| {
                            let col = match kind {
                                0 => TagCol::Utf8(v),
                                1 => TagCol::Large(v),
                                2 => TagCol::View(v),
                                _ => TagCol::Dict(v),
                            };
                            (name.clone(), col)
                        })
                        .boxed()
                })
                .collect();
            let fields: Vec<BoxedStrategy<(String, FieldCol)>> = field_names
                .into_iter()
                .map(|name| field_col(rows).prop_map(move |c| (name.clone(), c)).boxed())
                .collect();
            (
                text(1..8),
                times(unit, rows),
                prop::option::of(Just(Arc::<str>::from("UTC"))),
                0..8usize,
                tags,
                fields,
            )
                .prop_map(move |(measurement, times, tz, time_at, tags, fields)| {
                    Case {
                        measurement,
                        unit,
                        tz,
                        times,
                        time_at,
                        tags,
                        fields,
                    }
                })
        })
        .prop_filter("at least one field column", |c| !c.fields.is_empty())
}

impl Case {
    fn batch(&self) -> RecordBatch {
        let time: ArrayRef = match self.unit {
            TimeUnit::Second => Arc::new(
                TimestampSecondArray::from(self.times.clone()).with_timezone_opt(self.tz.clone()),
            ),
            TimeUnit::Millisecond => Arc::new(
                TimestampMillisecondArray::from(self.times.clone())
                    .with_timezone_opt(self.tz.clone()),
            ),
            TimeUnit::Microsecond => Arc::new(
                TimestampMicrosecondArray::from(self.times.clone())
                    .with_timezone_opt(self.tz.clone()),
            ),
            TimeUnit::Nanosecond => Arc::new(
                TimestampNanosecondArray::from(self.times.clone())
                    .with_timezone_opt(self.tz.clone()),
            ),
        };
        let mut cols: Vec<(String, ArrayRef)> = self
            .tags
            .iter()
            .map(|(n, c)| (n.clone(), c.array()))
            .chain(self.fields.iter().map(|(n, c)| (n.clone(), c.array())))
            .collect();
        let at = self.time_at.min(cols.len());
        cols.insert(at, ("time".into(), time));
        let schema = Schema::new(
            cols.iter()
                .map(|(n, a)| Field::new(n, a.data_type().clone(), true))
                .collect::<Vec<_>>(),
        );
        RecordBatch::try_new(Arc::new(schema), cols.into_iter().map(|(_, a)| a).collect())
            .expect("batch")
    }

    fn time_ms(&self, v: i64) -> i64 {
        match self.unit {
            TimeUnit::Second => v * 1000,
            TimeUnit::Millisecond => v,
            TimeUnit::Microsecond => v.div_euclid(1000),
            TimeUnit::Nanosecond => v.div_euclid(1_000_000),
        }
    }

    /// The points, in row order, with tags and fields by name.
    #[allow(clippy::type_complexity)]
    fn want(&self) -> Vec<(i64, BTreeMap<String, String>, BTreeMap<String, Want>)> {
        let mut out = Vec::new();
        for (i, t) in self.times.iter().enumerate() {
            let Some(t) = t else { continue };
            let tags: BTreeMap<String, String> = self
                .tags
                .iter()
                .filter_map(|(n, c)| {
                    c.values()[i]
                        .as_deref()
                        .map(|v| (rule(n), rule_tag_value(v)))
                })
                .collect();
            let fields: BTreeMap<String, Want> = self
                .fields
                .iter()
                .filter_map(|(n, c)| c.want(i).map(|w| (rule(n), w)))
                .collect();
            if !fields.is_empty() {
                out.push((self.time_ms(*t), tags, fields));
            }
        }
        out
    }

    /// A known gap anywhere in the names or tag values.
    fn gap(&self) -> Option<&'static str> {
        measurement_gap(&self.measurement)
            .or_else(|| self.tags.iter().find_map(|(n, _)| key_gap(n)))
            .or_else(|| {
                self.tags
                    .iter()
                    .flat_map(|(_, c)| c.values().iter().flatten())
                    .find_map(|v| key_gap(v))
            })
            .or_else(|| self.fields.iter().find_map(|(n, _)| key_gap(n)))
            .or_else(|| {
                let names: Vec<String> = self.tags.iter().map(|(n, _)| rule(n)).collect();
                let fields: Vec<String> = self.fields.iter().map(|(n, _)| rule(n)).collect();
                let distinct = |v: &[String]| {
                    v.iter().collect::<std::collections::BTreeSet<_>>().len() == v.len()
                };
                (!distinct(&names) || !distinct(&fields))
                    .then_some("two names the rule writes the same")
            })
    }
}

fn encode(measurement: &str, batch: &RecordBatch) -> (usize, String) {
    let mapping = PointMapping::from_schema(&batch.schema()).expect("a mappable schema");
    let mut out = String::new();
    let n = encode_batch(measurement, &mapping, batch, &mut out);
    (n, out)
}

fn matches(got: &Value, want: &Want) -> bool {
    match (got, want) {
        (Value::Int(a), Want::Int(b)) => a == b,
        (Value::Bool(a), Want::Bool(b)) => a == b,
        (Value::Float(t), Want::Dec(d)) => t == d,
        (Value::Float(t), Want::F64(f)) => {
            t.parse::<f64>().is_ok_and(|x| x.to_bits() == f.to_bits())
        }
        _ => false,
    }
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let batch = case.batch();
    let (n, out) = encode(&case.measurement, &batch);
    // Framing holds for every input: one line per point, each ending in `\n`, no raw newline.
    let lines: Vec<&str> = out.split_terminator('\n').collect();
    prop_assert!(out.is_empty() || out.ends_with('\n'));
    prop_assert_eq!(lines.len(), n, "one line per point: {:?}", out);
    let want = case.want();
    prop_assert_eq!(n, want.len(), "points written: {:?}", out);
    if case.gap().is_some() {
        // A known gap (see the ignored tests): framing only.
        return Ok(());
    }
    for (line, (ms, tags, fields)) in lines.iter().zip(&want) {
        let p = parse_line(line)
            .map_err(|e| TestCaseError::fail(format!("InfluxDB would refuse {line:?}: {e}")))?
            .ok_or_else(|| TestCaseError::fail(format!("{line:?} reads as a comment")))?;
        prop_assert_eq!(
            &p.measurement,
            &rule_measurement(&case.measurement),
            "line {:?}",
            line
        );
        prop_assert_eq!(p.time_ms, Some(*ms), "line {:?}", line);
        let got_tags: BTreeMap<String, String> = p.tags.iter().cloned().collect();
        prop_assert_eq!(&got_tags, tags, "line {:?}", line);
        let escaped: Vec<String> = p.tags.iter().map(|(k, _)| escape_key(k)).collect();
        prop_assert!(
            escaped.windows(2).all(|w| w[0] < w[1]),
            "tags are sorted by key: {:?}",
            line
        );
        prop_assert_eq!(p.fields.len(), fields.len(), "fields of {:?}", line);
        for (k, v) in &p.fields {
            let w = fields.get(k).ok_or_else(|| {
                TestCaseError::fail(format!("unexpected field {k:?} in {line:?}"))
            })?;
            prop_assert!(
                matches(v, w),
                "field {:?}: {:?} is not {:?} in {:?}",
                k,
                v,
                w,
                line
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn encoded_points_read_back_the_same(case in case()) {
        check(&case)?;
    }

    #[test]
    fn escaped_parts_split_back_on_their_separator(
        a in text(0..10),
        b in text(0..10),
        sep in prop::sample::select(vec![',', '=', ' ']),
    ) {
        let keys = [',', '=', ' '];
        prop_assume!(!backslash_run_gap(&a, &keys) && !backslash_run_gap(&b, &keys));
        let (ea, eb) = (escape_key(&a), escape_key(&b));
        prop_assert_eq!(split_escaped(&format!("{ea}{sep}{eb}"), sep), vec![ea, eb]);
        if sep != '=' {
            let (ma, mb) = (escape_measurement(&a), escape_measurement(&b));
            prop_assert_eq!(split_escaped(&format!("{ma}{sep}{mb}"), sep), vec![ma, mb]);
        }
    }

    #[test]
    fn unescape_key_undoes_escape_key_where_influxdb_can_hold_the_value(s in text(0..12)) {
        let s = representable(&s, &[',', '=', ' ']);
        prop_assert_eq!(key_gap(&s), None);
        prop_assert_eq!(unescape_key(&escape_key(&s)), s);
    }

    #[test]
    fn string_fields_read_back(s in text(0..12)) {
        let line = format!("m f=\"{}\" 1", escape_string_field(&s));
        let p = parse_line(&line).map_err(TestCaseError::fail)?.expect("a point");
        prop_assert_eq!(&p.fields[0].1, &Value::Str(s));
    }

    #[test]
    fn schemas_with_unsupported_columns_are_refused_naming_them(name in text(1..6)) {
        prop_assume!(name != "time");
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("time", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("n", DataType::Int64, true),
            Field::new(&name, DataType::Date32, true),
        ]));
        let e = PointMapping::from_schema(&schema).expect_err("Date32 is not a tag or field");
        prop_assert!(e.to_string().contains(&format!("`{name}`")), "{}", e);
        let _ = Date32Array::from(vec![0]);
    }
}

// ---------------------------------------------------------------------------------------------
// Known gaps, found by the properties above; each fails today. Minimal inputs.

/// One row: measurement `m`, a tag `k` = `tag`, a field `f` = 7, time 1000 ms.
fn one_point(measurement: &str, tag: &str, field: &str) -> (String, Result<Option<Point>, String>) {
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                true,
            ),
            Field::new("k", DataType::Utf8, true),
            Field::new(field, DataType::Int64, true),
        ])),
        vec![
            Arc::new(TimestampMillisecondArray::from(vec![1000])),
            Arc::new(StringArray::from(vec![tag])),
            Arc::new(Int64Array::from(vec![7])),
        ],
    )
    .unwrap();
    let (_, out) = encode(measurement, &batch);
    let line = out.trim_end_matches('\n').to_string();
    let parsed = parse_line(&line);
    (line, parsed)
}

/// What InfluxDB reads back is what the documented rule for values it cannot hold makes of the
/// original (`want`: measurement, tag value, field key).
fn assert_rewritten(measurement: &str, tag: &str, field: &str, want: (&str, &str, &str)) {
    let (line, parsed) = one_point(measurement, tag, field);
    let p = parsed
        .unwrap_or_else(|e| panic!("InfluxDB 1.8 refuses {line:?}: {e}"))
        .unwrap_or_else(|| panic!("{line:?} is a comment to InfluxDB"));
    assert_eq!(p.measurement, want.0, "{line:?}");
    assert_eq!(
        p.tags,
        vec![("k".to_string(), want.1.to_string())],
        "{line:?}"
    );
    assert_eq!(
        p.fields,
        vec![(want.2.to_string(), Value::Int(7))],
        "{line:?}"
    );
}

fn assert_round_trip(measurement: &str, tag: &str, field: &str) {
    let (line, parsed) = one_point(measurement, tag, field);
    let p = parsed
        .unwrap_or_else(|e| panic!("InfluxDB 1.8 refuses {line:?}: {e}"))
        .unwrap_or_else(|| panic!("{line:?} is a comment to InfluxDB"));
    assert_eq!(p.measurement, measurement, "{line:?}");
    assert_eq!(p.tags, vec![("k".to_string(), tag.to_string())], "{line:?}");
    assert_eq!(
        p.fields,
        vec![(field.to_string(), Value::Int(7))],
        "{line:?}"
    );
}

#[test]
fn gap_tag_value_ending_in_backslash() {
    // InfluxDB 1.8 takes `\ ` as an escaped space, so no escaping can write a trailing
    // backslash: the documented rule writes U+FFFD instead.
    assert_rewritten("m", "a\\", "f", ("m", "a\u{fffd}", "f"));
}

#[test]
fn gap_backslash_before_a_separator() {
    // Written as `m,k=a\\\,b …`; InfluxDB 1.8 stores `a\\,b`.
    assert_round_trip("m", "a\\,b", "f");
}

#[test]
fn gap_backslash_run_before_a_separator() {
    // `\\ ` (two backslashes, a space) is escaped as four backslashes and a space: read in
    // pairs, the space is no longer escaped.
    let a = "\\\\ ";
    let escaped = escape_key(a);
    assert_eq!(
        split_escaped(&format!("{escaped} x"), ' '),
        vec![escaped.clone(), "x".to_string()],
        "{escaped:?}"
    );
}

#[test]
fn gap_measurement_ending_in_backslash() {
    assert_rewritten("m\\", "v", "f", ("m\u{fffd}", "v", "f"));
}

#[test]
fn gap_field_key_ending_in_backslash() {
    assert_rewritten("m", "v", "f\\", ("m", "v", "f\u{fffd}"));
}

#[test]
fn gap_newline_in_tag_value() {
    assert_rewritten("m", "two\nlines", "f", ("m", "two\u{fffd}lines", "f"));
}

#[test]
fn gap_measurement_starting_with_hash() {
    assert_rewritten("#m", "v", "f", ("\u{fffd}m", "v", "f"));
}

#[test]
fn gap_measurement_starting_with_tab() {
    assert_rewritten("\tm", "v", "f", ("\u{fffd}m", "v", "f"));
}

#[test]
fn gap_time_outside_influxdb_range() {
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                true,
            ),
            Field::new("f", DataType::Int64, true),
        ])),
        vec![
            Arc::new(TimestampMillisecondArray::from(vec![MAX_INFLUX_MS + 1])),
            Arc::new(Int64Array::from(vec![7])),
        ],
    )
    .unwrap();
    let (n, out) = encode("m", &batch);
    // Either left out (and documented) or readable.
    if n == 1 {
        let line = out.trim_end();
        parse_line(line).unwrap_or_else(|e| panic!("InfluxDB 1.8 refuses {line:?}: {e}"));
    }
}

#[test]
fn gap_seconds_timestamp_overflow() {
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("time", DataType::Timestamp(TimeUnit::Second, None), true),
            Field::new("f", DataType::Int64, true),
        ])),
        vec![
            Arc::new(TimestampSecondArray::from(vec![i64::MAX / 1000 + 1])),
            Arc::new(Int64Array::from(vec![7])),
        ],
    )
    .unwrap();
    let (n, out) = encode("m", &batch);
    assert!(n == 0 || parse_line(out.trim_end()).is_ok(), "{out:?}");
}

#[test]
fn gap_negative_scale_decimal_overflow() {
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                true,
            ),
            Field::new("d", DataType::Decimal128(38, -2), true),
        ])),
        vec![
            Arc::new(TimestampMillisecondArray::from(vec![1000])),
            Arc::new(
                Decimal128Array::from(vec![10i128.pow(37)])
                    .with_precision_and_scale(38, -2)
                    .unwrap(),
            ),
        ],
    )
    .unwrap();
    let (_, out) = encode("m", &batch);
    let p = parse_line(out.trim_end()).unwrap().unwrap();
    assert_eq!(
        p.fields[0].1,
        Value::Float(format!("1{}", "0".repeat(39))),
        "{out:?}"
    );
}
