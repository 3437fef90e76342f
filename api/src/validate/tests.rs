use super::*;
use carflow_engine::generator::{Generator, GeneratorConfig};

fn good(n: usize) -> Vec<String> {
    Generator::new(GeneratorConfig::default()).json_lines(n)
}

#[test]
fn content_types_pick_the_format() {
    use BodyFormat::*;
    assert_eq!(
        BodyFormat::from_content_type(Some("application/json")).unwrap(),
        Single
    );
    assert_eq!(
        BodyFormat::from_content_type(Some("Application/JSON; charset=utf-8")).unwrap(),
        Single
    );
    assert_eq!(
        BodyFormat::from_content_type(Some("application/x-ndjson")).unwrap(),
        Ndjson
    );
    for bad in [None, Some("text/plain"), Some("application/xml")] {
        assert_eq!(BodyFormat::from_content_type(bad).unwrap_err().status, 415);
    }
}

#[test]
fn ndjson_lines_are_numbered_and_checked_by_the_engine() {
    let g = good(3);
    let body = format!(
        "{}\n\n{{\"transaction_id\": 1\n{}\r\n{}\n{}\n",
        g[0],
        g[1].replace("\"model_year\":", "\"model_year\":\"x\",\"_\":"),
        g[1].replace(",\"dealer_city\"", ",\"_dealer_city\""),
        g[2]
    );
    let v = validate(&Bytes::from(body.clone()), BodyFormat::Ndjson, 1 << 20).unwrap();
    let lines: Vec<usize> = v.records.iter().map(|r| r.line).collect();
    assert_eq!(lines, [1, 6]);
    assert_eq!(&body.as_bytes()[v.records[0].span.clone()], g[0].as_bytes());
    assert_eq!(&body.as_bytes()[v.records[1].span.clone()], g[2].as_bytes());
    let want_key = |s: &str| {
        let t: serde_json::Value = serde_json::from_str(s).unwrap();
        t["dealer_id"].as_str().unwrap().to_string()
    };
    assert_eq!(v.records[0].key, want_key(&g[0]));
    assert_eq!(v.records[1].key, want_key(&g[2]));
    let rejected: Vec<usize> = v.rejected.iter().map(|r| r.line).collect();
    assert_eq!(rejected, [3, 4, 5], "{:?}", v.rejected);
    assert!(
        v.rejected[0].reason.starts_with("malformed JSON"),
        "{:?}",
        v.rejected
    );
    assert!(
        v.rejected[2].reason.contains("dealer_city"),
        "{:?}",
        v.rejected
    );
}

#[test]
fn a_single_body_is_one_object() {
    let g = good(1);
    let body = Bytes::from(format!(" {}\n", g[0]));
    let v = validate(&body, BodyFormat::Single, 1 << 20).unwrap();
    assert_eq!(v.records.len(), 1);
    assert_eq!(&body[v.records[0].span.clone()], g[0].as_bytes());
    for bad in ["", "  \n", "{\"a\":", "not json", "[1,2]", "{} {}"] {
        let e = validate(&Bytes::from(bad), BodyFormat::Single, 1 << 20).unwrap_err();
        assert_eq!(e.status, 400, "{bad:?}: {e:?}");
    }
    let v = validate(&Bytes::from("{\"a\":1}"), BodyFormat::Single, 1 << 20).unwrap();
    assert!(v.records.is_empty());
    assert!(
        v.rejected[0].reason.contains("missing required field"),
        "{:?}",
        v.rejected
    );
}

#[test]
fn oversize_records_are_rejected_like_the_engine_does() {
    let g = good(1);
    let v = validate(&Bytes::from(g[0].clone()), BodyFormat::Ndjson, 64).unwrap();
    assert!(
        v.rejected[0].reason.contains("max_message_bytes"),
        "{:?}",
        v.rejected
    );
}

#[test]
fn commas_the_engine_reader_lets_through_are_rejected() {
    // Found by the property test (api/tests/props_validate.rs): the engine's JSON reader decoded
    // these as rows, and the intake sent them to Kafka.
    let g = good(2);
    let bad = [
        g[0].replacen(",\"currency\"", ",,\"currency\"", 1),
        format!("{},}}", &g[0][..g[0].len() - 1]),
        format!("{{,{}", &g[0][1..]),
        g[0].replacen(",\"currency\"", " \"currency\"", 1),
    ];
    let body = format!("{}\n{}\n{}\n{}\n{}\n", bad[0], bad[1], g[1], bad[2], bad[3]);
    let v = validate(&Bytes::from(body), BodyFormat::Ndjson, 1 << 20).unwrap();
    let lines: Vec<usize> = v.records.iter().map(|r| r.line).collect();
    assert_eq!(lines, [3]);
    let rejected: Vec<usize> = v.rejected.iter().map(|r| r.line).collect();
    assert_eq!(rejected, [1, 2, 4, 5], "{:?}", v.rejected);
    for r in &v.rejected {
        assert!(r.reason.starts_with("malformed JSON"), "{r:?}");
    }
}
