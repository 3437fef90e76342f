//! Property tests of the intake's body validation (`carflow_api::validate::validate`): random
//! bodies never panic; for NDJSON every non-blank line is exactly one record or one rejected
//! line (the counts add up to the lines), line numbers are the body's, a record's span is its
//! trimmed line and its key is its `dealer_id`, and an untouched generated transaction is always
//! a record. A single-JSON body is one record, one rejected line, or a 400.
//!
//! Cases: `PROPTEST_CASES` (default 256). No service needed.

// The API under test: keep these imports together (module paths may move).
use carflow_api::validate::{BodyFormat, validate};
use carflow_engine::generator::{Generator, GeneratorConfig};

use std::collections::BTreeSet;

use bytes::Bytes;
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

/// A line of a body and whether it must be a record.
#[derive(Debug, Clone)]
struct Line {
    bytes: Vec<u8>,
    valid: bool,
}

fn generated(seed: u64) -> String {
    Generator::new(GeneratorConfig {
        seed,
        ..Default::default()
    })
    .json_lines(1)
    .remove(0)
}

fn json_ws() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec![" ", "\t", "\r"]), 0..3)
        .prop_map(|v| v.concat())
}

fn line() -> impl Strategy<Value = Line> {
    let valid = (any::<u64>(), json_ws(), json_ws()).prop_map(|(seed, a, b)| Line {
        bytes: format!("{a}{}{b}", generated(seed)).into_bytes(),
        valid: true,
    });
    // A generated transaction with one edit: a field renamed, a value replaced, or cut short.
    let edited = (any::<u64>(), any::<usize>(), any::<String>(), 0..3u8).prop_map(
        |(seed, at, junk, how)| {
            let t = generated(seed);
            let mut cut = at % (t.len() + 1);
            while !t.is_char_boundary(cut) {
                cut -= 1;
            }
            let junk = junk.replace('\n', " ");
            let s = match how {
                0 => format!("{}{junk}{}", &t[..cut], &t[cut..]),
                1 => t[..cut].to_string(),
                _ => t.replacen("\"price\":", &format!("\"price\":{junk:?},\"_\":"), 1),
            };
            Line {
                bytes: s.into_bytes(),
                valid: false,
            }
        },
    );
    let text = any::<String>().prop_map(|s| Line {
        bytes: s.replace('\n', "").into_bytes(),
        valid: false,
    });
    let bytes = prop::collection::vec(any::<u8>(), 0..40).prop_map(|mut b| {
        b.retain(|c| *c != b'\n');
        Line {
            bytes: b,
            valid: false,
        }
    });
    let blank =
        prop::sample::select(vec!["", " ", "\t", "\r", " \t\r", "\x0c"]).prop_map(|s| Line {
            bytes: s.as_bytes().to_vec(),
            valid: false,
        });
    let json = prop_oneof![
        Just("{}".to_string()),
        Just("null".to_string()),
        Just("[]".to_string()),
        Just("{\"dealer_id\":\"D1\"}".to_string()),
        Just("{\"a\":1} {\"b\":2}".to_string()),
    ]
    .prop_map(|s| Line {
        bytes: s.into_bytes(),
        valid: false,
    });
    prop_oneof![5 => valid, 3 => edited, 1 => text, 1 => bytes, 2 => blank, 1 => json]
}

fn is_blank(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_whitespace)
}

fn trimmed(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

fn dealer_of(b: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(b).ok()?;
    v["dealer_id"].as_str().map(str::to_string)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ndjson_lines_add_up(
        lines in prop::collection::vec(line(), 0..30),
        crlf in any::<bool>(),
        trailing in any::<bool>(),
        small in prop::sample::select(vec![1usize << 20, 1 << 20, 1 << 20, 300]),
    ) {
        let sep: &[u8] = if crlf { b"\r\n" } else { b"\n" };
        let mut body = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            if i > 0 {
                body.extend_from_slice(sep);
            }
            body.extend_from_slice(&l.bytes);
        }
        if trailing {
            body.extend_from_slice(sep);
        }
        let body = Bytes::from(body);
        // The body's own lines, numbered from 1, as the service numbers them.
        let numbered: Vec<(usize, &[u8])> = body
            .split(|b| *b == b'\n')
            .enumerate()
            .map(|(i, l)| (i + 1, l))
            .collect();
        let non_blank: BTreeSet<usize> = numbered
            .iter()
            .filter(|(_, l)| !is_blank(l))
            .map(|(n, _)| *n)
            .collect();
        match validate(&body, BodyFormat::Ndjson, small) {
            Err(e) => {
                prop_assert_eq!(e.status, 400);
                prop_assert!(non_blank.is_empty(), "a 400 for a body with lines: {:?}", e);
            }
            Ok(v) => {
                prop_assert_eq!(v.records.len() + v.rejected.len(), non_blank.len());
                let rec: Vec<usize> = v.records.iter().map(|r| r.line).collect();
                let rej: Vec<usize> = v.rejected.iter().map(|r| r.line).collect();
                prop_assert!(rec.windows(2).all(|w| w[0] < w[1]), "records in line order");
                prop_assert!(rej.windows(2).all(|w| w[0] < w[1]), "rejected in line order");
                let all: BTreeSet<usize> = rec.iter().chain(&rej).copied().collect();
                prop_assert_eq!(&all, &non_blank, "each non-blank line once");
                for r in &v.records {
                    let text = numbered[r.line - 1].1;
                    prop_assert_eq!(&body[r.span.clone()], trimmed(text), "span of line {}", r.line);
                    prop_assert_eq!(Some(r.key.clone()), dealer_of(trimmed(text)), "key of line {}", r.line);
                }
                for r in &v.rejected {
                    prop_assert!(!r.reason.is_empty());
                }
                // Untouched generated transactions that fit are records (line i of the input is
                // line i + 1 of the body).
                for (i, l) in lines.iter().enumerate() {
                    if l.valid && trimmed(&l.bytes).len() <= small {
                        prop_assert!(rec.contains(&(i + 1)), "line {} is valid: {:?}", i + 1, v.rejected);
                    }
                }
            }
        }
    }

    #[test]
    fn a_single_body_is_one_answer(l in line(), lead in json_ws(), trail in json_ws()) {
        let mut body = lead.into_bytes();
        body.extend_from_slice(&l.bytes);
        body.extend_from_slice(trail.as_bytes());
        let body = Bytes::from(body);
        match validate(&body, BodyFormat::Single, 1 << 20) {
            Err(e) => {
                prop_assert_eq!(e.status, 400);
                prop_assert!(!l.valid, "a valid transaction was refused: {:?}", e);
            }
            Ok(v) => {
                prop_assert_eq!(v.records.len() + v.rejected.len(), 1);
                if l.valid {
                    prop_assert_eq!(v.records.len(), 1, "{:?}", v.rejected);
                }
                for r in &v.records {
                    prop_assert_eq!(r.line, 1);
                    prop_assert_eq!(&body[r.span.clone()], trimmed(&body));
                }
            }
        }
    }
}
