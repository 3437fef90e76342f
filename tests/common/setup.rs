//! One end-to-end setup against the real services: a topic, an HDFS lake directory and an InfluxDB
//! database per test, the environment that points `carflow run` at them, producing generated (and
//! bad) records, waiting until engines are done, and the exactness checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use carflow_engine::generator::Generator;
use carflow_engine::producer::producer;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::engine::EngineProcess;
use super::services::*;
use super::verify::*;

#[allow(unused_imports)]
pub use carflow_testkit::data::{START_MS, bad_records, generator, queries, with_field};

/// A copy of the shipped queries in a temporary directory (tests that edit or rename files).
pub fn queries_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(queries()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "sql") {
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// Send `payloads` (key, value) to `topic`, awaiting every delivery (at most 20,000 in flight).
pub async fn send_all(
    p: &FutureProducer,
    topic: &str,
    payloads: impl IntoIterator<Item = (String, Vec<u8>)>,
) {
    let mut pending = FuturesUnordered::new();
    for (key, value) in payloads {
        pending.push(
            p.send_result(FutureRecord::to(topic).key(&key).payload(&value))
                .map_err(|(e, _)| e)
                .unwrap(),
        );
        while pending.len() > 20_000 {
            pending.next().await.unwrap().unwrap().unwrap();
        }
    }
    while let Some(r) = pending.next().await {
        r.unwrap().unwrap();
    }
}

/// Produce `n` generated transactions (keyed by dealer) and the `bad` payloads spread among them.
pub async fn produce(kafka: &Kafka, topic: &str, seed: u64, n: usize, bad: &[Vec<u8>]) {
    let p = producer(&kafka.brokers, &Default::default()).unwrap();
    let mut g = generator(seed);
    let every = if bad.is_empty() {
        usize::MAX
    } else {
        (n / bad.len()).max(1)
    };
    let mut records = Vec::with_capacity(n + bad.len());
    for i in 0..n {
        let t = g.next_transaction();
        records.push((t.dealer_id.clone(), t.to_json().into_bytes()));
        if i % every == every - 1
            && let Some(b) = bad.get(i / every)
        {
            records.push(("bad".to_string(), b.clone()));
        }
    }
    send_all(&p, topic, records).await;
}

/// Generated transactions sent in several rounds, event time going on from one round to the next
/// (a second `produce` with a new generator would start over at [`START_MS`]: late data).
pub struct Feed {
    producer: FutureProducer,
    topic: String,
    generator: Generator,
}

impl Feed {
    /// A feed of `topic` with generator `seed`.
    pub fn new(kafka: &Kafka, topic: &str, seed: u64) -> Self {
        Self {
            producer: producer(&kafka.brokers, &Default::default()).unwrap(),
            topic: topic.to_string(),
            generator: generator(seed),
        }
    }

    /// Send the next `n` transactions (keyed by dealer) and wait for every delivery.
    pub async fn send(&mut self, n: usize) {
        let records = next_records(&mut self.generator, n);
        send_all(&self.producer, &self.topic, records).await;
    }
}

/// The next `n` transactions of `g` as Kafka records: (dealer as key, JSON).
pub fn next_records(g: &mut Generator, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|_| {
            let t = g.next_transaction();
            (t.dealer_id.clone(), t.to_json().into_bytes())
        })
        .collect()
}

/// Produce `n` generated transactions at about `per_second`, in steps of 100 ms.
pub async fn produce_at_rate(kafka: &Kafka, topic: &str, seed: u64, n: usize, per_second: f64) {
    let p = producer(&kafka.brokers, &Default::default()).unwrap();
    let mut g = generator(seed);
    let step = ((per_second / 10.0).ceil() as usize).max(1);
    let started = std::time::Instant::now();
    let mut sent = 0;
    while sent < n {
        let k = step.min(n - sent);
        let records: Vec<_> = (0..k)
            .map(|_| {
                let t = g.next_transaction();
                (t.dealer_id.clone(), t.to_json().into_bytes())
            })
            .collect();
        send_all(&p, topic, records).await;
        sent += k;
        let due = started + Duration::from_secs_f64(sent as f64 / per_second);
        tokio::time::sleep_until(due.into()).await;
    }
}

/// A topic, a lake directory on HDFS and an InfluxDB database for one test.
pub struct Setup {
    pub kafka: Kafka,
    pub topic: Topic,
    pub lake: HdfsDir,
    pub db: InfluxDb,
    pub influx: Influx,
    pub logs: Logs,
}

/// Where a test's engines write their logs: a temporary directory, or (to read them after a
/// failure) a kept directory under `CARFLOW_TEST_LOGS`.
pub enum Logs {
    /// Removed when dropped.
    Temp(tempfile::TempDir),
    /// Kept.
    Kept(PathBuf),
}

impl Logs {
    fn new(name: &str) -> Self {
        match std::env::var_os("CARFLOW_TEST_LOGS") {
            Some(root) => {
                let dir = PathBuf::from(root).join(unique(name));
                std::fs::create_dir_all(&dir).unwrap();
                Logs::Kept(dir)
            }
            None => Logs::Temp(tempfile::tempdir().unwrap()),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        match self {
            Logs::Temp(t) => t.path(),
            Logs::Kept(p) => p,
        }
    }
}

impl Drop for Logs {
    /// A failing test keeps its engines' logs, and says where (a failure that does not come
    /// again is read from them).
    fn drop(&mut self) {
        if let Logs::Temp(t) = self
            && std::thread::panicking()
        {
            t.disable_cleanup(true);
            eprintln!(
                "engine logs of the failed test kept in {}",
                t.path().display()
            );
        }
    }
}

/// A [`Setup`] whose topic has `partitions` partitions.
pub async fn setup_with(name: &str, partitions: i32) -> Setup {
    let kafka = Kafka::get();
    let hdfs = Hdfs::get().await;
    let influx = Influx::get().await;
    Setup {
        topic: kafka.topic(name, partitions).await,
        lake: hdfs.dir(name),
        db: influx.database(name).await,
        influx,
        kafka,
        logs: Logs::new(name),
    }
}

/// A [`Setup`] with a 6-partition topic.
pub async fn setup(name: &str) -> Setup {
    setup_with(name, 6).await
}

impl Setup {
    /// The environment of `carflow run` for this setup, in consumer group `group`.
    pub fn env(&self, group: &str) -> Vec<(&'static str, String)> {
        vec![
            ("CARFLOW_SOURCE", "kafka".into()),
            ("CARFLOW_KAFKA_BROKERS", self.kafka.brokers.clone()),
            ("CARFLOW_KAFKA_TOPIC", self.topic.name.clone()),
            ("CARFLOW_KAFKA_GROUP_ID", group.into()),
            ("CARFLOW_LAKE_ROOT", self.lake.url.clone()),
            ("CARFLOW_INFLUX_URL", self.influx.url.clone()),
            ("CARFLOW_INFLUX_BUCKET", self.db.name.clone()),
            ("CARFLOW_QUERIES_DIR", queries().display().to_string()),
            ("CARFLOW_BATCH_MAX_ROWS", "5000".into()),
            ("CARFLOW_BATCH_LINGER", "300ms".into()),
        ]
    }

    /// [`Setup::env`] with the queries of `dir` instead of the shipped ones.
    pub fn env_with_queries(&self, group: &str, dir: &Path) -> Vec<(&'static str, String)> {
        let mut env = self.env(group);
        set_env(&mut env, "CARFLOW_QUERIES_DIR", dir.display().to_string());
        env
    }

    /// Wait until the engines together report every partition processed to its end.
    pub async fn wait_done(&self, engines: &mut [&mut EngineProcess], timeout: Duration) {
        let ends = self.kafka.end_offsets(&self.topic.name);
        let topic = self.topic.name.clone();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let mut done = vec![false; ends.len()];
            for e in engines.iter_mut() {
                assert!(e.is_running(), "engine exited:\n{}", e.log_tail());
                for (k, v) in e.processed().await {
                    if let Some(p) = k
                        .strip_prefix(&format!("{topic}/"))
                        .and_then(|p| p.parse::<usize>().ok())
                    {
                        done[p] |= v >= ends[p];
                    }
                }
            }
            if done.iter().all(|d| *d) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not done after {timeout:?}:\n{}",
                engines[0].log_tail()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The lake holds every good record once, dead letters hold the bad ones with reason and
    /// origin, and every Influx point equals DataFusion's aggregate over the lake.
    pub async fn check(&self, good: i64, bad: usize) {
        self.check_with(good, bad, &queries()).await;
    }

    /// [`Setup::check`] for the Influx queries of `queries_dir`.
    pub async fn check_with(&self, good: i64, bad: usize, queries_dir: &Path) {
        let ctx = lake_context(&self.lake.url).await;
        assert_lake_exact(&ctx, good).await;
        if bad > 0 {
            assert_eq!(
                scalar(&ctx, "SELECT count(*) FROM dead_letters").await,
                bad as i64,
                "dead letters"
            );
            let with_origin = format!(
                "SELECT count(*) FROM dead_letters WHERE topic = '{}' AND reason <> '' AND \"offset\" >= 0",
                self.topic.name
            );
            assert_eq!(
                scalar(&ctx, &with_origin).await,
                bad as i64,
                "dead letters carry origin and reason"
            );
        } else {
            assert_eq!(
                scalar(&ctx, "SELECT count(*) FROM dead_letters").await,
                0,
                "no dead letters without bad input"
            );
        }
        self.check_points(&ctx, queries_dir).await;
    }

    /// Every Influx point equals DataFusion's aggregate over the lake.
    pub async fn check_points(
        &self,
        ctx: &datafusion::prelude::SessionContext,
        queries_dir: &Path,
    ) {
        let expected = expected_points(ctx, queries_dir).await;
        let actual = self.db.points().await;
        assert!(expected.len() > 100, "{} points", expected.len());
        assert_points_match(&expected, &actual, "InfluxDB vs lake");
    }

    /// Wait until every Influx point equals DataFusion's aggregate over the lake (the engines
    /// may still be writing: a reload, a rewrite after another engine's commit); fail with the
    /// differences left after `timeout`.
    pub async fn wait_points_match(&self, queries_dir: &Path, timeout: Duration) {
        let ctx = lake_context(&self.lake.url).await;
        let expected = expected_points(&ctx, queries_dir).await;
        assert!(expected.len() > 100, "{} points", expected.len());
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let mut diffs = points_differences(&expected, &self.db.points().await);
            if diffs.is_empty() {
                return;
            }
            if std::time::Instant::now() >= deadline {
                let n = diffs.len();
                diffs.truncate(10);
                panic!(
                    "InfluxDB vs lake, still after {timeout:?}: {n} differences:\n{}",
                    diffs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Replace (or add) `key` in an engine environment.
pub fn set_env(env: &mut Vec<(&'static str, String)>, key: &'static str, value: String) {
    env.retain(|(k, _)| *k != key);
    env.push((key, value));
}

/// A small deterministic random source for fault timing (seeded, reproducible).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    pub fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.next() % (to - from))
    }
}
