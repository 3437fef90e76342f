//! Criterion micro-benchmarks of the engine's hot parts, on generated car transactions:
//! JSON decode (arrow-json + dead-letter checks), the SQL transforms, Parquet encode, line
//! protocol encode, and the whole in-process pipeline (generator messages → lake + .lp file).
//!
//! `cargo bench --bench engine` — figures are rows per second of one batch on one thread
//! (DataFusion may use the second core for the transform). `benches/README.md` lists the latest.

mod common;

use std::path::Path;
use std::sync::Arc;

use carflow_engine::batcher::decode_batch;
use carflow_engine::config::Config;
use carflow_engine::line_protocol::{PointMapping, encode_batch};
use carflow_engine::metrics::{Health, Metrics};
use carflow_engine::pipeline::Pipeline;
use carflow_engine::sink::lake::encode_parquet;
use carflow_engine::source::Message;
use carflow_engine::source::memory::MemorySource;
use carflow_engine::transform::{OpenGate, Planner, Target, TransformSet};
use common::messages;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use datafusion::arrow::array::RecordBatch;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

const ROWS: usize = 20_000;

fn queries() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("queries")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn decode(c: &mut Criterion) {
    let msgs = messages(ROWS);
    let bytes: usize = msgs.iter().map(Message::size).sum();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("json_to_arrow_20k", |b| {
        b.iter(|| decode_batch(&msgs, 1 << 20).unwrap())
    });
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("json_to_arrow_20k_bytes", |b| {
        b.iter(|| decode_batch(&msgs, 1 << 20).unwrap())
    });
    // Raw arrow-json, without carflow's per-message checks: the decode ceiling.
    let joined: Vec<u8> = msgs
        .iter()
        .flat_map(|m| m.payload.clone().unwrap_or_default())
        .collect();
    g.bench_function("arrow_json_raw_20k_bytes", |b| {
        b.iter(|| {
            let mut d =
                arrow_json::ReaderBuilder::new(carflow_engine::schema::transaction_schema())
                    .with_batch_size(ROWS + 1)
                    .build_decoder()
                    .unwrap();
            d.decode(&joined).unwrap();
            d.flush().unwrap()
        })
    });
    g.finish();
}

/// A runtime and a planner holding one batch of `ROWS` decoded transactions, with every file of
/// `queries/` planned.
fn planned() -> (tokio::runtime::Runtime, Planner, TransformSet) {
    let rt = runtime();
    let rows = decode_batch(&messages(ROWS), 1 << 20).unwrap().rows;
    let planner = Planner::new().unwrap();
    let mut set = TransformSet::default();
    rt.block_on(set.reload(&planner, &queries(), &mut OpenGate))
        .unwrap();
    planner.batch.set(vec![rows.clone()]);
    (rt, planner, set)
}

fn transforms(c: &mut Criterion) {
    let (rt, planner, set) = planned();
    let mut g = c.benchmark_group("transform");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.sample_size(20);
    for t in set.iter() {
        let ctx = &planner.batch_ctx;
        g.bench_with_input(BenchmarkId::new("query", &t.name), t, |b, t| {
            b.iter(|| rt.block_on(t.execute(ctx)).unwrap())
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let (rt, planner, set) = planned();
    let lake_rows: Vec<RecordBatch> = {
        let cars = set.iter().find(|t| t.name == "cars").unwrap();
        rt.block_on(cars.execute(&planner.batch_ctx)).unwrap()
    };
    let batch =
        datafusion::arrow::compute::concat_batches(&lake_rows[0].schema(), &lake_rows).unwrap();
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(ROWS as u64));
    let snappy = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    g.bench_function("parquet_snappy_20k", |b| {
        b.iter(|| encode_parquet(&batch, &snappy).unwrap())
    });
    let by_brand = set.iter().find(|t| t.name == "sales_by_model").unwrap();
    let points = rt.block_on(by_brand.execute(&planner.batch_ctx)).unwrap();
    let n: usize = points.iter().map(RecordBatch::num_rows).sum();
    let Target::Influx {
        mapping,
        measurement,
        ..
    } = &by_brand.target
    else {
        unreachable!()
    };
    let _ = PointMapping::from_schema(&points[0].schema()).unwrap();
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("line_protocol_points", |b| {
        b.iter(|| {
            let mut out = String::with_capacity(n * 96);
            for p in &points {
                encode_batch(measurement, mapping, p, &mut out);
            }
            out
        })
    });
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let rt = runtime();
    let n = 100_000;
    let msgs = messages(n);
    let mut g = c.benchmark_group("pipeline");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("in_process_100k_to_local_lake", |b| {
        b.iter_with_setup(
            || (tempfile::tempdir().unwrap(), msgs.clone()),
            |(dir, msgs)| {
                let mut config = Config::default();
                config.lake.root = dir.path().join("lake").display().to_string();
                config.influx.file = dir.path().join("m.lp");
                config.queries.dir = queries();
                rt.block_on(async {
                    let mut p = Pipeline::from_config(
                        MemorySource::new(msgs),
                        &config,
                        "bench",
                        Arc::new(Metrics::new()),
                        Arc::new(Health::default()),
                    )
                    .await
                    .unwrap();
                    p.run(&tokio_util::sync::CancellationToken::new())
                        .await
                        .unwrap()
                })
            },
        )
    });
    g.finish();
}

criterion_group!(benches, decode, transforms, encode, pipeline);
criterion_main!(benches);
