//! The transaction record: the owned [`Transaction`] struct with its serde
//! mapping, the exact-decimal [`Price`] type, and the allocation-free JSON
//! writer shared by [`Transaction::write_json`] and the generator's fast
//! path (so both produce byte-identical output to `serde_json`).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::calendar::format_timestamp_ms;

/// A price in integer cents that (de)serializes as a JSON number with
/// exactly two decimals, e.g. `28450.00` or `31999.99`.
///
/// Serialization goes through `serde_json::value::RawValue`, so it needs
/// serde_json's `raw_value` feature and is meant for JSON serializers.
/// Deserialization accepts a JSON number (integer or float, rounded to the
/// nearest cent — exact for any realistic price) or a decimal string.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Price(pub i64);

impl Price {
    /// Price from integer cents.
    pub const fn from_cents(cents: i64) -> Self {
        Self(cents)
    }

    /// The amount in integer cents.
    pub const fn cents(self) -> i64 {
        self.0
    }

    /// The amount as `f64` dollars (for display or arithmetic only; lossy
    /// in the last bits, never use it to serialize).
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 100.0
    }

    /// Appends the decimal text (`-`?digits`.`dd) to `out`.
    pub fn write_to(self, out: &mut Vec<u8>) {
        if self.0 < 0 {
            out.push(b'-');
        }
        let abs = self.0.unsigned_abs();
        write_u64(out, abs / 100);
        let frac = (abs % 100) as u8;
        out.extend_from_slice(&[b'.', b'0' + frac / 10, b'0' + frac % 10]);
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = Vec::with_capacity(24);
        self.write_to(&mut buf);
        f.write_str(std::str::from_utf8(&buf).unwrap_or("0.00"))
    }
}

/// Error returned when parsing a [`Price`] from text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsePriceError(String);

impl fmt::Display for ParsePriceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid price {:?}: expected digits with at most 2 decimals",
            self.0
        )
    }
}

impl std::error::Error for ParsePriceError {}

impl FromStr for Price {
    type Err = ParsePriceError;

    /// Parses `[-]digits[.d[d]]` exactly (no rounding, no exponent).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePriceError(s.to_owned());
        let (neg, body) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        let all_digits = |t: &str| t.bytes().all(|c| c.is_ascii_digit());
        if int.is_empty() || !all_digits(int) || !all_digits(frac) || frac.len() > 2 {
            return Err(err());
        }
        if body.contains('.') && frac.is_empty() {
            return Err(err());
        }
        let whole: i64 = int.parse().map_err(|_| err())?;
        let mut cents: i64 = frac.bytes().fold(0, |a, c| a * 10 + i64::from(c - b'0'));
        if frac.len() == 1 {
            cents *= 10;
        }
        let total = whole
            .checked_mul(100)
            .and_then(|v| v.checked_add(cents))
            .ok_or_else(err)?;
        Ok(Self(if neg { -total } else { total }))
    }
}

impl Serialize for Price {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw = serde_json::value::RawValue::from_string(self.to_string())
            .map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PriceVisitor;

        impl Visitor<'_> for PriceVisitor {
            type Value = Price;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a price as a JSON number or decimal string")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Price, E> {
                v.checked_mul(100)
                    .map(Price)
                    .ok_or_else(|| E::custom("price out of range"))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Price, E> {
                i64::try_from(v)
                    .ok()
                    .and_then(|v| v.checked_mul(100))
                    .map(Price)
                    .ok_or_else(|| E::custom("price out of range"))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Price, E> {
                let cents = (v * 100.0).round();
                // 2^53: beyond it cents are no longer exact in f64.
                if cents.is_finite() && cents.abs() <= 9_007_199_254_740_992.0 {
                    Ok(Price(cents as i64))
                } else {
                    Err(E::custom("price out of range"))
                }
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Price, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_any(PriceVisitor)
    }
}

/// `sold_at` (de)serialization: RFC 3339 UTC with milliseconds and `Z`.
mod sold_at_format {
    use super::*;

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        let buf = format_timestamp_ms(t.timestamp_millis());
        s.serialize_str(std::str::from_utf8(&buf).map_err(serde::ser::Error::custom)?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(de::Error::custom)
    }
}

/// One car-sale transaction, as serialized on the wire (field order is the
/// JSON key order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    /// Random (seeded) UUID in v4 format, lowercase hex.
    pub transaction_id: String,
    /// Event time; serialized as `"2026-11-27T14:03:12.345Z"` (UTC, ms).
    #[serde(with = "sold_at_format")]
    pub sold_at: DateTime<Utc>,
    /// Dealer id, e.g. `"D0042"`.
    pub dealer_id: String,
    /// Dealer city, e.g. `"Austin"`.
    pub dealer_city: String,
    /// Two-letter dealer state, e.g. `"TX"`.
    pub dealer_state: String,
    /// Brand, e.g. `"Toyota"`.
    pub brand: String,
    /// Model, e.g. `"RAV4"`.
    pub model: String,
    /// Model year.
    pub model_year: u16,
    /// Body type (`sedan`, `suv`, `pickup`, `hatchback`, `coupe`, `van`,
    /// `wagon`, `convertible`).
    pub body_type: String,
    /// Fuel type (`gasoline`, `hybrid`, `electric`, `diesel`,
    /// `plug-in hybrid`).
    pub fuel_type: String,
    /// Paint color, e.g. `"white"`.
    pub color: String,
    /// `new`, `used` or `certified`.
    pub condition: String,
    /// Odometer in km (under 50 for new cars).
    pub mileage_km: u32,
    /// Sale price (integer cents; two decimals on the wire).
    pub price: Price,
    /// Always `"USD"`.
    pub currency: String,
    /// `cash`, `loan` or `lease`.
    pub payment_method: String,
    /// Buyer age 18–90, or `null` (about 4%).
    pub customer_age: Option<u16>,
    /// Salesperson id, e.g. `"D0042-S07"`.
    pub salesperson_id: String,
    /// `completed`, `cancelled` or `refunded`.
    pub status: String,
}

impl Transaction {
    /// Event time in milliseconds since the Unix epoch.
    pub fn sold_at_ms(&self) -> i64 {
        self.sold_at.timestamp_millis()
    }

    /// Appends this record as one compact JSON object (no newline);
    /// byte-identical to `serde_json::to_vec(self)`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.as_ref_record().write_json(out);
    }

    /// This record as a compact JSON string; identical to
    /// `serde_json::to_string(self)`.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(448);
        self.write_json(&mut out);
        // The writer only emits UTF-8 (it copies `str`s and ASCII).
        String::from_utf8(out).unwrap_or_default()
    }

    fn as_ref_record(&self) -> RecordRef<'_> {
        RecordRef {
            transaction_id: &self.transaction_id,
            sold_at_ms: self.sold_at_ms(),
            dealer_id: &self.dealer_id,
            dealer_city: &self.dealer_city,
            dealer_state: &self.dealer_state,
            brand: &self.brand,
            model: &self.model,
            model_year: self.model_year,
            body_type: &self.body_type,
            fuel_type: &self.fuel_type,
            color: &self.color,
            condition: &self.condition,
            mileage_km: self.mileage_km,
            price: self.price,
            currency: &self.currency,
            payment_method: &self.payment_method,
            customer_age: self.customer_age,
            salesperson_id: &self.salesperson_id,
            status: &self.status,
        }
    }
}

/// Borrowed view of a record: what the JSON writer needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordRef<'a> {
    pub transaction_id: &'a str,
    pub sold_at_ms: i64,
    pub dealer_id: &'a str,
    pub dealer_city: &'a str,
    pub dealer_state: &'a str,
    pub brand: &'a str,
    pub model: &'a str,
    pub model_year: u16,
    pub body_type: &'a str,
    pub fuel_type: &'a str,
    pub color: &'a str,
    pub condition: &'a str,
    pub mileage_km: u32,
    pub price: Price,
    pub currency: &'a str,
    pub payment_method: &'a str,
    pub customer_age: Option<u16>,
    pub salesperson_id: &'a str,
    pub status: &'a str,
}

impl RecordRef<'_> {
    /// Appends the compact JSON object; key order matches [`Transaction`].
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        out.reserve(448);
        // Each literal closes the previous string value and opens the next.
        out.extend_from_slice(b"{\"transaction_id\":\"");
        write_str_body(out, self.transaction_id);
        out.extend_from_slice(b"\",\"sold_at\":\"");
        out.extend_from_slice(&format_timestamp_ms(self.sold_at_ms));
        out.extend_from_slice(b"\",\"dealer_id\":\"");
        write_str_body(out, self.dealer_id);
        out.extend_from_slice(b"\",\"dealer_city\":\"");
        write_str_body(out, self.dealer_city);
        out.extend_from_slice(b"\",\"dealer_state\":\"");
        write_str_body(out, self.dealer_state);
        out.extend_from_slice(b"\",\"brand\":\"");
        write_str_body(out, self.brand);
        out.extend_from_slice(b"\",\"model\":\"");
        write_str_body(out, self.model);
        out.extend_from_slice(b"\",\"model_year\":");
        write_u64(out, u64::from(self.model_year));
        out.extend_from_slice(b",\"body_type\":\"");
        write_str_body(out, self.body_type);
        out.extend_from_slice(b"\",\"fuel_type\":\"");
        write_str_body(out, self.fuel_type);
        out.extend_from_slice(b"\",\"color\":\"");
        write_str_body(out, self.color);
        out.extend_from_slice(b"\",\"condition\":\"");
        write_str_body(out, self.condition);
        out.extend_from_slice(b"\",\"mileage_km\":");
        write_u64(out, u64::from(self.mileage_km));
        out.extend_from_slice(b",\"price\":");
        self.price.write_to(out);
        out.extend_from_slice(b",\"currency\":\"");
        write_str_body(out, self.currency);
        out.extend_from_slice(b"\",\"payment_method\":\"");
        write_str_body(out, self.payment_method);
        out.extend_from_slice(b"\",\"customer_age\":");
        match self.customer_age {
            Some(age) => write_u64(out, u64::from(age)),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"salesperson_id\":\"");
        write_str_body(out, self.salesperson_id);
        out.extend_from_slice(b"\",\"status\":\"");
        write_str_body(out, self.status);
        out.extend_from_slice(b"\"}");
    }
}

/// Two-digit lookup table for integer formatting.
const DIGITS2: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Appends the decimal representation of `v`.
pub(crate) fn write_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    while v >= 100 {
        let d = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGITS2[d..d + 2]);
    }
    if v >= 10 {
        let d = v as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGITS2[d..d + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + v as u8;
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends `s` as a JSON string literal, escaped exactly like serde_json
/// (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other controls as `\u00xx`;
/// everything else, including non-ASCII, verbatim).
#[cfg(test)]
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    write_str_body(out, s);
    out.push(b'"');
}

/// True if any byte of `bytes` needs JSON escaping (`< 0x20`, `"` or `\`),
/// checked eight bytes at a time.
#[inline]
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Exact "has a zero byte" / "has a byte < n (n <= 128)" word tests.
    let has_less = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & HIGH != 0;
    let flagged = |w: u64| {
        has_less(w, 0x20) || has_less(w ^ (ONES * 0x22), 1) || has_less(w ^ (ONES * 0x5C), 1)
    };
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if flagged(u64::from_ne_bytes(word)) {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&c| c < 0x20 || c == b'"' || c == b'\\')
}

/// Appends the escaped contents of a JSON string literal (no quotes).
#[inline]
fn write_str_body(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &c) in bytes.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0C => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1F => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(c >> 4)],
                HEX[usize::from(c & 0xF)],
            ]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}
