//! A decoder specialised to the declared schema, for messages in the forms producers write.
//!
//! arrow-json decodes a batch in two passes over a tape, and the dead-letter checks parse every
//! message once more with serde_json (arrow-json does not check an object's commas). This
//! decoder reads each message once, straight into the columns, but only when the message is in
//! a form whose meaning is beyond doubt: one flat JSON object, each declared field once, with
//! * a string for a `Utf8` field,
//! * an integer in range for an `Int32`/`Int64` field,
//! * a number with at most `scale` decimals and at most `precision` digits for a decimal,
//! * an RFC 3339 string with `Z` or a `±HH:MM` offset, or an integer (milliseconds), for the
//!   event time,
//! * `null` (or nothing) only for a nullable field,
//! * extra fields whose values are strings, numbers, booleans or null.
//!
//! Anything else — broken JSON, a wrong type, a missing field, a duplicate key, an escaped key,
//! nested values in an extra field, a time in another format — is not decided here: the message
//! goes to the arrow-json path ([`super::decode_batch_reference`]), which decodes it or names
//! its problem in a dead letter. So the fast path never refuses a message, and for every message
//! it takes it must produce exactly the row arrow-json produces: `engine/tests/props_decode.rs`
//! checks that on arbitrary messages.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, Decimal128Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};

use crate::schema::transaction_schema;
use crate::source::Message;

/// What the fast path made of a batch.
pub(super) struct FastDecoded {
    /// The rows of the messages it took, in message order, with the `transaction` schema.
    pub record: RecordBatch,
    /// Indices (into the batch) of the messages it took, ascending.
    pub good: Vec<usize>,
    /// Indices of the messages left to the arrow-json path, ascending.
    pub rest: Vec<usize>,
}

/// Decode what the fast path can take of `messages`; `None` when the declared schema has a type
/// it does not know (then everything goes the arrow-json way).
pub(super) fn decode(messages: &[Message], max_message_bytes: usize) -> Option<FastDecoded> {
    let plan = PLAN.as_ref()?;
    let mut columns: Vec<Column> = plan
        .fields
        .iter()
        .map(|f| Column::new(f, messages.len()))
        .collect();
    let mut values: Vec<Option<Val<'_>>> = vec![None; plan.fields.len()];
    let (mut good, mut rest) = (Vec::with_capacity(messages.len()), Vec::new());
    for (i, m) in messages.iter().enumerate() {
        let taken = m
            .payload
            .as_deref()
            .filter(|p| p.len() <= max_message_bytes)
            .and_then(|p| std::str::from_utf8(p).ok())
            .is_some_and(|text| plan.read(text, &mut values).is_some());
        if taken {
            for (c, v) in columns.iter_mut().zip(values.iter_mut()) {
                c.push(v.take().unwrap_or(Val::Null));
            }
            good.push(i);
        } else {
            rest.push(i);
        }
    }
    let arrays: Vec<ArrayRef> = columns.into_iter().map(Column::finish).collect();
    let record = RecordBatch::try_new(Arc::clone(&plan.schema), arrays).ok()?;
    Some(FastDecoded { record, good, rest })
}

static PLAN: LazyLock<Option<Plan>> = LazyLock::new(|| Plan::new(transaction_schema()));

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Utf8,
    Int32,
    Int64,
    Decimal { precision: u8, scale: u8 },
    Millis,
}

struct FieldPlan {
    name: String,
    kind: Kind,
    nullable: bool,
    data_type: DataType,
}

struct Plan {
    schema: SchemaRef,
    fields: Vec<FieldPlan>,
}

/// A field's value as read, before it is appended.
#[derive(Debug, Clone)]
enum Val<'a> {
    Null,
    Str(Cow<'a, str>),
    Int(i64),
    Dec(i128),
}

impl Plan {
    fn new(schema: SchemaRef) -> Option<Self> {
        let fields = schema
            .fields()
            .iter()
            .map(|f| {
                let kind = match f.data_type() {
                    DataType::Utf8 => Kind::Utf8,
                    DataType::Int32 => Kind::Int32,
                    DataType::Int64 => Kind::Int64,
                    DataType::Decimal128(p, s) if *p <= 38 && *s >= 0 && (*s as u8) <= *p => {
                        Kind::Decimal {
                            precision: *p,
                            scale: *s as u8,
                        }
                    }
                    DataType::Timestamp(TimeUnit::Millisecond, Some(tz)) if &**tz == "UTC" => {
                        Kind::Millis
                    }
                    _ => return None,
                };
                Some(FieldPlan {
                    name: f.name().clone(),
                    kind,
                    nullable: f.is_nullable(),
                    data_type: f.data_type().clone(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        (fields.len() <= 64).then_some(Self { schema, fields })
    }

    /// The field named `key`, looked for first where the previous key's successor is.
    fn field(&self, key: &str, after: usize) -> Option<usize> {
        if self.fields.get(after).is_some_and(|f| f.name == key) {
            return Some(after);
        }
        self.fields.iter().position(|f| f.name == key)
    }

    /// Read one message into `values` (one per field), or `None` when it is not in a form this
    /// path takes (then `values` may hold leftovers: the caller clears them by `take`).
    fn read<'a>(&self, text: &'a str, values: &mut [Option<Val<'a>>]) -> Option<()> {
        values.iter_mut().for_each(|v| *v = None);
        let mut c = Cursor { s: text, i: 0 };
        c.ws();
        c.eat(b'{')?;
        c.ws();
        let mut seen: u64 = 0;
        let mut next = 0;
        if !c.eat_if(b'}') {
            loop {
                c.eat(b'"')?;
                let key = c.string_body()?;
                let Cow::Borrowed(key) = key else {
                    return None; // an escaped key: arrow-json's matching decides
                };
                c.ws();
                c.eat(b':')?;
                c.ws();
                match self.field(key, next) {
                    Some(f) => {
                        let bit = 1u64 << f;
                        if seen & bit != 0 {
                            return None; // a duplicate key
                        }
                        seen |= bit;
                        values[f] = Some(self.value(&mut c, &self.fields[f])?);
                        next = f + 1;
                    }
                    None => c.skip_scalar()?,
                }
                c.ws();
                if c.eat_if(b',') {
                    c.ws();
                    continue;
                }
                c.eat(b'}')?;
                break;
            }
        }
        c.ws();
        if c.i != c.s.len() {
            return None;
        }
        for (f, v) in self.fields.iter().zip(values.iter()) {
            let null = matches!(v, None | Some(Val::Null));
            if null && !f.nullable {
                return None;
            }
        }
        Some(())
    }

    fn value<'a>(&self, c: &mut Cursor<'a>, f: &FieldPlan) -> Option<Val<'a>> {
        match c.peek()? {
            b'n' => {
                c.literal("null")?;
                f.nullable.then_some(Val::Null)
            }
            b'"' => {
                c.i += 1;
                let s = c.string_body()?;
                match f.kind {
                    Kind::Utf8 => Some(Val::Str(s)),
                    Kind::Millis => rfc3339_ms(&s).map(Val::Int),
                    _ => None,
                }
            }
            b'-' | b'0'..=b'9' => {
                let n = c.number()?;
                match f.kind {
                    Kind::Int64 | Kind::Millis => integer(n).map(Val::Int),
                    Kind::Int32 => integer(n)
                        .filter(|v| i32::try_from(*v).is_ok())
                        .map(Val::Int),
                    Kind::Decimal { precision, scale } => {
                        decimal(n, precision, scale).map(Val::Dec)
                    }
                    Kind::Utf8 => None,
                }
            }
            _ => None,
        }
    }
}

/// An integer written without fraction or exponent.
fn integer(n: &str) -> Option<i64> {
    if n.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
        return None;
    }
    n.parse().ok()
}

/// A number without exponent, with at most `scale` decimals and `precision` digits in all at
/// that scale, as the unscaled value.
fn decimal(n: &str, precision: u8, scale: u8) -> Option<i128> {
    if n.bytes().any(|b| matches!(b, b'e' | b'E')) {
        return None;
    }
    let (negative, digits) = match n.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, n),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if frac.len() > usize::from(scale) || whole.len() + usize::from(scale) > 38 {
        return None;
    }
    let mut v: i128 = 0;
    for b in whole.bytes().chain(frac.bytes()) {
        v = v * 10 + i128::from(b - b'0');
    }
    v *= 10i128.pow(u32::from(scale) - frac.len() as u32);
    if v >= 10i128.pow(u32::from(precision)) {
        return None;
    }
    Some(if negative { -v } else { v })
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|±HH:MM)` as milliseconds since the epoch (fractions beyond
/// milliseconds cut off, as arrow's parser does for times after 1970).
fn rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |acc, d| {
            d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
        })
    };
    let sep = |i: usize, c: u8| (b[i] == c).then_some(());
    let year = num(0..4)?;
    sep(4, b'-')?;
    let month = num(5..7)?;
    sep(7, b'-')?;
    let day = num(8..10)?;
    sep(10, b'T')?;
    let hour = num(11..13)?;
    sep(13, b':')?;
    let minute = num(14..16)?;
    sep(16, b':')?;
    let second = num(17..19)?;
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0u32;
    if b[i] == b'.' {
        let start = i + 1;
        let end = start + b[start..].iter().take_while(|d| d.is_ascii_digit()).count();
        let digits = end - start;
        if !(1..=9).contains(&digits) {
            return None;
        }
        for (k, d) in b[start..end].iter().take(3).enumerate() {
            millis += u32::from(d - b'0') * [100, 10, 1][k];
        }
        i = end;
    }
    let offset_s: i64 = match b.get(i)? {
        b'Z' if b.len() == i + 1 => 0,
        sign @ (b'+' | b'-') if b.len() == i + 6 => {
            if b[i + 3] != b':' {
                return None;
            }
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = i64::from(oh * 3600 + om * 60);
            if *sign == b'-' { -o } else { o }
        }
        _ => return None,
    };
    use chrono::Datelike;
    let date = chrono::NaiveDate::from_ymd_opt(year as i32, month, day)?;
    let days = i64::from(date.num_days_from_ce()) - 719_163;
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_s;
    if secs < 0 {
        return None; // before 1970 a cut-off fraction rounds the other way: leave it to arrow
    }
    Some(secs * 1000 + i64::from(millis))
}

/// A read position in a message known to be valid UTF-8.
struct Cursor<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Cursor<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.s.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.eat_if(c).then_some(())
    }

    fn eat_if(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        self.i += usize::from(hit);
        hit
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let hit = self.bytes()[self.i..].starts_with(word.as_bytes());
        self.i += if hit { word.len() } else { 0 };
        hit.then_some(())
    }

    /// The rest of a string after its opening quote, up to and past its closing quote.
    fn string_body(&mut self) -> Option<Cow<'a, str>> {
        let b = self.bytes();
        let start = self.i;
        let mut i = start;
        loop {
            match *b.get(i)? {
                b'"' => {
                    self.i = i + 1;
                    return Some(Cow::Borrowed(&self.s[start..i]));
                }
                b'\\' => break,
                c if c < 0x20 => return None,
                _ => i += 1,
            }
        }
        let mut out = String::with_capacity(i - start + 16);
        out.push_str(&self.s[start..i]);
        let mut run = i;
        loop {
            match *b.get(i)? {
                b'"' => {
                    out.push_str(&self.s[run..i]);
                    self.i = i + 1;
                    return Some(Cow::Owned(out));
                }
                b'\\' => {
                    out.push_str(&self.s[run..i]);
                    let e = *b.get(i + 1)?;
                    i += 2;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            if let Some(c) = escaped_pair(&b[i - 2..]) {
                                out.push(c);
                                i += 10;
                            } else {
                                let code = hex4(b.get(i..i + 4)?)?;
                                i += 4;
                                // A surrogate not in a pair is left to arrow-json's verdict.
                                out.push(char::from_u32(code)?);
                            }
                        }
                        _ => return None,
                    }
                    run = i;
                }
                c if c < 0x20 => return None,
                _ => i += 1,
            }
        }
    }

    /// A JSON number (validated to the grammar), as written.
    fn number(&mut self) -> Option<&'a str> {
        let b = self.bytes();
        let start = self.i;
        let mut i = start;
        let digits = |i: &mut usize| {
            let from = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i - from
        };
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => {
                digits(&mut i);
            }
            _ => return None,
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            if digits(&mut i) == 0 {
                return None;
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if digits(&mut i) == 0 {
                return None;
            }
        }
        self.i = i;
        Some(&self.s[start..i])
    }

    /// Skip an extra field's value: a string, number, `true`, `false` or `null`.
    fn skip_scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                self.string_body().map(|_| ())
            }
            b'-' | b'0'..=b'9' => self.number().map(|_| ()),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            _ => None,
        }
    }
}

/// The character of the escaped UTF-16 surrogate pair `b` starts with (`\ud83d\ude97`, 12
/// bytes), if it starts with a whole one.
pub(super) fn escaped_pair(b: &[u8]) -> Option<char> {
    let (hi, lo) = b.get(..12)?.split_at(6);
    if &hi[..2] != b"\\u" || &lo[..2] != b"\\u" {
        return None;
    }
    let (hi, lo) = (hex4(&hi[2..])?, hex4(&lo[2..])?);
    if !(0xD800..0xDC00).contains(&hi) || !(0xDC00..0xE000).contains(&lo) {
        return None;
    }
    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
}

fn hex4(b: &[u8]) -> Option<u32> {
    b.iter()
        .try_fold(0u32, |acc, &d| Some(acc * 16 + char::from(d).to_digit(16)?))
}

/// A column being built.
enum Column {
    Utf8(StringBuilder),
    I32(Int32Builder),
    I64(Int64Builder),
    Dec(Decimal128Builder, DataType),
    Millis(TimestampMillisecondBuilder, DataType),
}

impl Column {
    fn new(f: &FieldPlan, rows: usize) -> Self {
        match f.kind {
            Kind::Utf8 => Column::Utf8(StringBuilder::with_capacity(rows, rows * 16)),
            Kind::Int32 => Column::I32(Int32Builder::with_capacity(rows)),
            Kind::Int64 => Column::I64(Int64Builder::with_capacity(rows)),
            Kind::Decimal { .. } => {
                Column::Dec(Decimal128Builder::with_capacity(rows), f.data_type.clone())
            }
            Kind::Millis => Column::Millis(
                TimestampMillisecondBuilder::with_capacity(rows),
                f.data_type.clone(),
            ),
        }
    }

    /// Append `v`, which [`Plan::value`] read for this column's kind.
    fn push(&mut self, v: Val<'_>) {
        match (self, v) {
            (Column::Utf8(b), Val::Str(s)) => b.append_value(s),
            (Column::I32(b), Val::Int(n)) => b.append_value(n as i32),
            (Column::I64(b), Val::Int(n)) => b.append_value(n),
            (Column::Dec(b, _), Val::Dec(n)) => b.append_value(n),
            (Column::Millis(b, _), Val::Int(n)) => b.append_value(n),
            (Column::Utf8(b), _) => b.append_null(),
            (Column::I32(b), _) => b.append_null(),
            (Column::I64(b), _) => b.append_null(),
            (Column::Dec(b, _), _) => b.append_null(),
            (Column::Millis(b, _), _) => b.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Column::Utf8(mut b) => Arc::new(b.finish()),
            Column::I32(mut b) => Arc::new(b.finish()),
            Column::I64(mut b) => Arc::new(b.finish()),
            Column::Dec(mut b, t) => Arc::new(b.finish().with_data_type(t)),
            Column::Millis(mut b, t) => Arc::new(b.finish().with_data_type(t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_times_in_the_forms_taken() {
        assert_eq!(integer("-42"), Some(-42));
        assert_eq!(integer("4.0"), None);
        assert_eq!(integer("1e3"), None);
        assert_eq!(decimal("12.5", 12, 2), Some(1250));
        assert_eq!(decimal("-0.07", 12, 2), Some(-7));
        assert_eq!(decimal("9999999999.99", 12, 2), Some(999_999_999_999));
        assert_eq!(decimal("10000000000", 12, 2), None);
        assert_eq!(decimal("1.234", 12, 2), None);
        assert_eq!(
            rfc3339_ms("2026-01-01T00:00:00.123Z"),
            Some(1_767_225_600_123)
        );
        assert_eq!(
            rfc3339_ms("2026-01-01T05:30:00.1239+05:30"),
            Some(1_767_225_600_123)
        );
        assert_eq!(rfc3339_ms("2026-02-29T00:00:00Z"), None);
        assert_eq!(rfc3339_ms("2026-01-01 00:00:00Z"), None);
        assert_eq!(rfc3339_ms("2026-01-01T00:00:00"), None);
    }

    #[test]
    fn strings_unescape_and_odd_forms_are_left_to_arrow() {
        let read = |s: &'static str| {
            let mut c = Cursor { s, i: 1 };
            c.string_body().map(|v| v.into_owned())
        };
        assert_eq!(read(r#""plain""#).as_deref(), Some("plain"));
        assert_eq!(
            read(r#""a\"b\\c\/\n\u00e9\ud83d\ude97""#).as_deref(),
            Some("a\"b\\c/\né🚗")
        );
        assert_eq!(read(r#""lone \ud83d""#), None);
        assert_eq!(read("\"tab\tinside\""), None);
        assert_eq!(read(r#""unterminated"#), None);
    }
}
