//! Test data shared by every test crate: the shipped queries, a seeded generator, and catalogues
//! of malformed payloads.

use std::path::PathBuf;

use carflow_engine::generator::{Clock, Generator, GeneratorConfig};

/// The shipped queries directory (`queries/` at the top of the repository).
pub fn queries() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../queries")
        .canonicalize()
        .unwrap_or_else(|e| panic!("the shipped queries/ directory: {e}"))
}

/// The first event time of generated test data: 2026-01-01T00:00:00Z.
pub const START_MS: i64 = carflow_engine::config::defaults::GENERATOR_START_MS;

/// A generator of test data with `seed`, starting at [`START_MS`], 30,000 transactions per hour
/// of event time.
pub fn generator(seed: u64) -> Generator {
    Generator::new(GeneratorConfig {
        seed,
        clock: Clock::Simulated {
            start_ms: START_MS,
            mean_per_hour: 30_000.0,
        },
    })
}

/// `json` (one generated record) with `field`'s value replaced by the raw JSON `value`.
pub fn with_field(json: &str, field: &str, value: &str) -> String {
    let key = format!("\"{field}\":");
    let at = json.find(&key).expect("field in record") + key.len();
    let rest = &json[at..];
    let end = if let Some(quoted) = rest.strip_prefix('"') {
        quoted.find('"').expect("closing quote") + 2
    } else {
        rest.find([',', '}']).expect("end of value")
    };
    format!("{}{value}{}", &json[..at], &rest[end..])
}

/// Malformed payloads Kafka can carry as values: truncated, a wrong type, a missing field,
/// invalid UTF-8, not JSON.
pub fn bad_records() -> Vec<Vec<u8>> {
    let good = generator(1).next_transaction().to_json();
    let mut utf8 = good.clone().into_bytes();
    utf8[25] = 0xff;
    vec![
        b"{\"transaction_id\": \"truncated".to_vec(),
        good.replace("\"mileage_km\":", "\"mileage_km\":\"far\",\"_\":")
            .into_bytes(),
        good.replace("\"sold_at\":", "\"sold\":").into_bytes(),
        utf8,
        b"not json at all".to_vec(),
    ]
}

/// Bad message values including what only an in-process source carries easily: a tombstone
/// (`None`) and a 2 MiB value (beyond `batch.max_message_bytes`), besides a truncated object, a
/// wrong type, a missing field and invalid UTF-8.
pub fn bad_payloads() -> Vec<Option<Vec<u8>>> {
    let good = generator(1).next_transaction().to_json();
    let mut invalid_utf8 = good.clone().into_bytes();
    invalid_utf8[30] = 0xc3;
    invalid_utf8[31] = 0x28;
    vec![
        Some(b"{\"transaction_id\": \"x\", \"sold_at\": ".to_vec()),
        Some(
            good.replace("\"model_year\":", "\"model_year\":\"new\",\"x\":")
                .into_bytes(),
        ),
        Some(good.replace(",\"price\":", ",\"cost\":").into_bytes()),
        Some(invalid_utf8),
        None,
        Some(format!("{{\"pad\":\"{}\"}}", "x".repeat(2 << 20)).into_bytes()),
    ]
}
