//! InfluxDB line protocol: a pure encoder from Arrow rows to points, and the mapping of a query's
//! columns to a point's parts. Both the transforms (which check a query's mapping when it is
//! loaded) and the Influx sink use it; it depends on neither.
//!
//! The mapping is fixed and checked when a query is loaded ([`PointMapping::from_schema`]): the
//! column named `time` is the point's timestamp (written in milliseconds); string columns are tags;
//! integer, float, decimal and boolean columns are fields. Anything else is refused with the
//! column's name and what to do instead.
//!
//! Escaping follows what InfluxDB 1.8's parser does (checked against the real server): in
//! measurement names, tag keys, tag values and field keys, a comma, an equals sign (not in
//! measurements) and a space are escaped with a backslash; any other backslash is taken literally.
//!
//! **Values InfluxDB cannot hold as they are** are rewritten by one rule, and counted
//! ([`Encoded::rewritten`]):
//! - an empty tag value (InfluxDB refuses `k=`) becomes [`EMPTY_TAG`] (`(empty)`);
//! - every control character (a newline would end the line; InfluxDB cannot store one in a tag)
//!   becomes U+FFFD `�`, in tag values, tag keys, field keys and measurement names;
//! - a trailing backslash (which InfluxDB would read as escaping the separator after it) becomes
//!   U+FFFD too, and so does a `#` that starts a measurement name (a comment to InfluxDB).
//!
//! A null tag is left out of its point (InfluxDB's own way to say "no value"); null fields are
//! left out; a float that is NaN or infinite, or an unsigned integer beyond `i64`, is left out
//! (InfluxDB cannot store it); a row whose fields are all left out produces no point, and so does
//! a row whose time is outside what InfluxDB can store (±[`MAX_TIME_MS`]).

use std::fmt::Write as _;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Decimal128Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    SchemaRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::util::display::array_value_to_string;

/// The name of the timestamp column of an Influx query.
pub const TIME_COLUMN: &str = "time";

/// Errors in mapping a query's columns to points.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// No `time` column.
    #[error(
        "an influx query needs a timestamp column named `time` (e.g. `date_bin(INTERVAL '1 minute', sold_at) AS time`)"
    )]
    NoTime,
    /// `time` is not a timestamp.
    #[error("column `time` has type {0}; it must be a timestamp")]
    TimeNotTimestamp(DataType),
    /// A column type InfluxDB cannot hold.
    #[error(
        "column `{name}` has type {data_type}, which InfluxDB cannot store: cast it to a string (a tag) or to a number or boolean (a field)"
    )]
    Unsupported {
        /// Column name.
        name: String,
        /// Its type.
        data_type: DataType,
    },
    /// Only tags.
    #[error(
        "an influx query needs at least one numeric or boolean column (a field); it has only tags"
    )]
    NoFields,
}

/// Which column plays which part in a point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointMapping {
    time: usize,
    /// Tag columns, sorted by tag key (InfluxDB's preferred order).
    tags: Vec<(usize, String)>,
    fields: Vec<(usize, String)>,
}

enum Role {
    Tag,
    Field,
}

fn role(data_type: &DataType) -> Option<Role> {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(Role::Tag),
        DataType::Dictionary(_, v) if matches!(**v, DataType::Utf8 | DataType::LargeUtf8) => {
            Some(Role::Tag)
        }
        DataType::Boolean | DataType::Float32 | DataType::Float64 | DataType::Decimal128(_, _) => {
            Some(Role::Field)
        }
        d if d.is_integer() => Some(Role::Field),
        _ => None,
    }
}

impl PointMapping {
    /// Decide the role of every column of `schema`, or say why the schema cannot be points.
    pub fn from_schema(schema: &SchemaRef) -> Result<Self, MappingError> {
        let time = schema
            .index_of(TIME_COLUMN)
            .map_err(|_| MappingError::NoTime)?;
        match schema.field(time).data_type() {
            DataType::Timestamp(_, _) => {}
            other => return Err(MappingError::TimeNotTimestamp(other.clone())),
        }
        let (mut tags, mut fields) = (Vec::new(), Vec::new());
        for (i, f) in schema.fields().iter().enumerate() {
            if i == time {
                continue;
            }
            match role(f.data_type()) {
                Some(Role::Tag) => tags.push((i, escape_key(f.name()))),
                Some(Role::Field) => fields.push((i, escape_key(f.name()))),
                None => {
                    return Err(MappingError::Unsupported {
                        name: f.name().clone(),
                        data_type: f.data_type().clone(),
                    });
                }
            }
        }
        if fields.is_empty() {
            return Err(MappingError::NoFields);
        }
        tags.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(Self { time, tags, fields })
    }

    /// Names of the tag columns, in the order they are written.
    pub fn tag_columns<'a>(&self, schema: &'a SchemaRef) -> Vec<&'a str> {
        self.tags
            .iter()
            .map(|(i, _)| schema.field(*i).name().as_str())
            .collect()
    }
}

/// The tag value written for an empty string.
pub const EMPTY_TAG: &str = "(empty)";

/// The character written for one InfluxDB cannot hold.
const REPLACEMENT: char = '\u{fffd}';

/// Escape a measurement name: commas and spaces (see the module docs for rewritten characters).
pub fn escape_measurement(s: &str) -> String {
    let (mut out, _) = escape(s, &[',', ' ']);
    if out.starts_with('#') {
        // InfluxDB reads a line that starts with `#` as a comment.
        out.replace_range(..1, &REPLACEMENT.to_string());
    }
    out
}

/// Escape a tag key, tag value or field key: commas, equals signs and spaces (see the module docs
/// for rewritten characters).
pub fn escape_key(s: &str) -> String {
    escape(s, &[',', '=', ' ']).0
}

/// A tag value as written: [`EMPTY_TAG`] for an empty string, then escaped; and whether the rule
/// rewrote it.
pub fn tag_value(s: &str) -> (String, bool) {
    if s.is_empty() {
        return (EMPTY_TAG.to_string(), true);
    }
    escape(s, &[',', '=', ' '])
}

/// Escape `s` for a line-protocol section whose separators are `special`; true when a character
/// had to be rewritten (control characters, a trailing backslash).
fn escape(s: &str, special: &[char]) -> (String, bool) {
    debug_assert!(!special.is_empty());
    let mut out = String::with_capacity(s.len() + 2);
    let mut rewritten = false;
    for c in s.chars() {
        if special.contains(&c) {
            out.push('\\');
            out.push(c);
        } else if c.is_control() {
            out.push(REPLACEMENT);
            rewritten = true;
        } else {
            out.push(c);
        }
    }
    if out.ends_with('\\') {
        // An escaping backslash is always followed by its character, so a trailing one is
        // literal, and InfluxDB would read it as escaping the separator that follows.
        out.pop();
        out.push(REPLACEMENT);
        rewritten = true;
    }
    (out, rewritten)
}

/// Escape a string field value: double quotes and backslashes.
pub fn escape_string_field(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Split a line-protocol section on `sep` the way InfluxDB's scanner does: a backslash makes the
/// next character literal when that character is a comma, an equals sign or a space; any other
/// backslash is itself literal. The parts keep their escapes; [`unescape_key`] removes them.
pub fn split_escaped(s: &str, sep: char) -> Vec<String> {
    let (mut parts, mut cur) = (Vec::new(), String::new());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek().is_some_and(|n| matches!(n, ',' | '=' | ' ')) {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
        } else if c == sep {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    parts
}

/// Undo [`escape_key`] as InfluxDB does: `\,`, `\=` and `\ ` become the character.
pub fn unescape_key(s: &str) -> String {
    s.replace("\\,", ",")
        .replace("\\=", "=")
        .replace("\\ ", " ")
}

/// Timestamp of row `i` in milliseconds, or `None` when null.
fn time_ms(col: &ArrayRef, i: usize) -> Option<i64> {
    if col.is_null(i) {
        return None;
    }
    let ms = match col.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => col
            .as_primitive::<TimestampSecondType>()
            .value(i)
            .checked_mul(1000)?,
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            col.as_primitive::<TimestampMillisecondType>().value(i)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => col
            .as_primitive::<TimestampMicrosecondType>()
            .value(i)
            .div_euclid(1000),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => col
            .as_primitive::<TimestampNanosecondType>()
            .value(i)
            .div_euclid(1_000_000),
        _ => return None,
    };
    // InfluxDB stores nanoseconds in an i64 (less its two sentinel values).
    (-MAX_TIME_MS..=MAX_TIME_MS).contains(&ms).then_some(ms)
}

/// The largest time InfluxDB can store, in milliseconds.
pub const MAX_TIME_MS: i64 = 9_223_372_036_854;

/// Write the value of a decimal with `scale` digits after the point.
fn write_decimal(out: &mut String, v: i128, scale: i8) {
    if scale <= 0 {
        // v × 10^-scale, written out digit by digit (it may not fit an i128).
        let _ = write!(out, "{v}");
        if v != 0 {
            out.extend(std::iter::repeat_n('0', usize::from(scale.unsigned_abs())));
        }
        return;
    }
    let p = 10i128.pow(scale as u32);
    let sign = if v < 0 { "-" } else { "" };
    let (int, frac) = ((v / p).unsigned_abs(), (v % p).unsigned_abs());
    let _ = write!(out, "{sign}{int}.{frac:0width$}", width = scale as usize);
}

/// Append field `key=value` for row `i`; false when the value is null or not representable.
fn write_field(out: &mut String, key: &str, col: &ArrayRef, i: usize) -> bool {
    if col.is_null(i) {
        return false;
    }
    let start = out.len();
    out.push_str(key);
    out.push('=');
    let ok = match col.data_type() {
        DataType::Boolean => {
            out.push_str(if col.as_boolean().value(i) {
                "true"
            } else {
                "false"
            });
            true
        }
        DataType::Int8 => int(out, col.as_primitive::<Int8Type>().value(i) as i64),
        DataType::Int16 => int(out, col.as_primitive::<Int16Type>().value(i) as i64),
        DataType::Int32 => int(out, col.as_primitive::<Int32Type>().value(i) as i64),
        DataType::Int64 => int(out, col.as_primitive::<Int64Type>().value(i)),
        DataType::UInt8 => int(out, col.as_primitive::<UInt8Type>().value(i) as i64),
        DataType::UInt16 => int(out, col.as_primitive::<UInt16Type>().value(i) as i64),
        DataType::UInt32 => int(out, col.as_primitive::<UInt32Type>().value(i) as i64),
        DataType::UInt64 => match i64::try_from(col.as_primitive::<UInt64Type>().value(i)) {
            Ok(v) => int(out, v),
            Err(_) => false,
        },
        DataType::Float32 => float(out, col.as_primitive::<Float32Type>().value(i) as f64),
        DataType::Float64 => float(out, col.as_primitive::<Float64Type>().value(i)),
        DataType::Decimal128(_, scale) => {
            write_decimal(out, col.as_primitive::<Decimal128Type>().value(i), *scale);
            true
        }
        _ => false,
    };
    if !ok {
        out.truncate(start);
    }
    ok
}

fn int(out: &mut String, v: i64) -> bool {
    let _ = write!(out, "{v}i");
    true
}

fn float(out: &mut String, v: f64) -> bool {
    if !v.is_finite() {
        return false;
    }
    let _ = write!(out, "{v}");
    true
}

/// What encoding a batch produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Encoded {
    /// Points written.
    pub points: usize,
    /// Tag values the rule for values InfluxDB cannot hold rewrote.
    pub rewritten: usize,
}

/// Encode every row of `batch` as a point of `measurement`, appending lines to `out`; returns how
/// many points were written. Rows with a null `time` or only null fields are skipped.
pub fn encode_batch(
    measurement: &str,
    mapping: &PointMapping,
    batch: &RecordBatch,
    out: &mut String,
) -> usize {
    encode_batch_counted(measurement, mapping, batch, out).points
}

/// [`encode_batch`], also counting the tag values that had to be rewritten.
pub fn encode_batch_counted(
    measurement: &str,
    mapping: &PointMapping,
    batch: &RecordBatch,
    out: &mut String,
) -> Encoded {
    let measurement = escape_measurement(measurement);
    let time = batch.column(mapping.time);
    let mut done = Encoded::default();
    for i in 0..batch.num_rows() {
        let Some(ts) = time_ms(time, i) else { continue };
        let line_start = out.len();
        let mut rewritten = 0;
        out.push_str(&measurement);
        for (c, key) in &mapping.tags {
            let col = batch.column(*c);
            if col.is_null(i) {
                continue;
            }
            let Ok(value) = array_value_to_string(col, i) else {
                continue;
            };
            let (value, changed) = tag_value(&value);
            rewritten += usize::from(changed);
            out.push(',');
            out.push_str(key);
            out.push('=');
            out.push_str(&value);
        }
        let mut sep = ' ';
        for (c, key) in &mapping.fields {
            let mark = out.len();
            out.push(sep);
            if write_field(out, key, batch.column(*c), i) {
                sep = ',';
            } else {
                out.truncate(mark);
            }
        }
        if sep == ' ' {
            out.truncate(line_start);
            continue;
        }
        let _ = writeln!(out, " {ts}");
        done.points += 1;
        done.rewritten += rewritten;
    }
    done
}

#[cfg(test)]
mod tests;
