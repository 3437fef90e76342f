//! The CPU ceiling of the engine core: decode (the engine's own `decode_batch`, with its
//! dead-letter checks) + snappy Parquet encode of the same generated transactions the end-to-end
//! benchmark reads from Kafka (seed 42), on one thread, nothing else — no SQL, no I/O.
//!
//! It also decodes the same messages with arrow-json alone (`decode_batch_reference`, the
//! decoder before the one specialised to the schema) and prints both decode rates and their
//! ratio, measured in the same run.
//!
//! ```text
//! cargo bench --bench core_ceiling -- [--records N] [--batch ROWS] [--out FILE.json]
//! ```
//!
//! Prints records per CPU-second (= per core) and, with `--out`, writes
//! `{"records_per_cpu_s": …, "records": …, "cpu_s": …, "source": …}` for `benches/harness`.
//! The messages are generated before the clock starts; CPU time is the process's user + system
//! time (getrusage) around the decode + encode loop.

mod common;

use std::time::Instant;

use carflow_engine::batcher::{DecodeRules, decode_batch, decode_batch_reference};
use carflow_engine::sink::lake::encode_parquet;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    assert_eq!(rc, 0, "getrusage failed");
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn main() {
    let mut records = 1_000_000usize;
    let mut batch = 50_000usize;
    let mut out: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--records" => {
                records = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--records N")
            }
            "--batch" => {
                batch = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--batch ROWS")
            }
            "--out" => out = args.next(),
            // `cargo bench` passes `--bench`; criterion-style filters are ignored.
            _ => {}
        }
    }
    let messages = common::messages(records);
    let json_bytes: usize = messages.iter().map(|m| m.size()).sum();
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();

    // Decode alone, each decoder, before the measured decode + encode.
    let rules = DecodeRules::with_max_message_bytes(1 << 20);
    let decode_rate = |reference: bool| {
        let cpu0 = cpu_seconds();
        let mut rows = 0;
        for chunk in messages.chunks(batch) {
            let d = if reference {
                decode_batch_reference(chunk, &rules)
            } else {
                decode_batch(chunk, 1 << 20)
            }
            .expect("decode");
            rows += d.rows.num_rows();
        }
        assert_eq!(rows, records);
        records as f64 / (cpu_seconds() - cpu0)
    };
    let (reference_rate, decode_only) = (decode_rate(true), decode_rate(false));
    println!(
        "decode alone: {decode_only:.0} records per CPU-second; arrow-json alone (the reference \
         decoder): {reference_rate:.0}; {:.2}x",
        decode_only / reference_rate
    );

    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let (mut rows, mut parquet_bytes) = (0usize, 0usize);
    for chunk in messages.chunks(batch) {
        let decoded = decode_batch(chunk, 1 << 20).expect("decode");
        assert!(
            decoded.dead_letters.is_empty(),
            "generated rows must decode"
        );
        rows += decoded.rows.num_rows();
        parquet_bytes += encode_parquet(&decoded.rows, &props).expect("encode").len();
    }
    let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    assert_eq!(rows, records);

    let rate = records as f64 / cpu;
    println!(
        "core ceiling: {records} records ({:.1} MB JSON → {:.1} MB Parquet) decoded + encoded in \
         {cpu:.2} CPU s ({wall:.2} s wall), batches of {batch}: {rate:.0} records per CPU-second",
        json_bytes as f64 / 1e6,
        parquet_bytes as f64 / 1e6,
    );
    if let Some(path) = out {
        let fig = format!(
            "{{\"records_per_cpu_s\": {rate:.1}, \"records\": {records}, \"cpu_s\": {cpu:.4}, \
             \"wall_s\": {wall:.4}, \"json_bytes\": {json_bytes}, \"parquet_bytes\": {parquet_bytes}, \
             \"batch\": {batch}, \"decode_per_cpu_s\": {decode_only:.1}, \
             \"reference_decode_per_cpu_s\": {reference_rate:.1}, \"source\": \"cargo bench --bench core_ceiling (decode_batch + \
             encode_parquet, snappy, one thread)\"}}\n"
        );
        std::fs::write(&path, fig).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
    }
}
