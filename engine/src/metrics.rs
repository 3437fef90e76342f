//! The engine's metrics (Prometheus text at `/metrics`) and health (`/health`).
//!
//! Metrics are counted per batch, never per row, and labels stay low-cardinality (sink kind and
//! target name, which come from the SQL files). [`serve`] runs the tiny HTTP endpoint on a
//! loopback address by default.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use warp::Filter;

/// Labels of per-sink counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    /// `lake` or `influx`.
    pub sink: String,
    /// Dataset or measurement.
    pub target: String,
}

/// Labels of per-sink error counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkKind {
    /// `lake`, `influx` or `source`.
    pub sink: String,
}

/// Labels of the per-step time counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    /// `collect`, `decode`, `prepare`, `lake_transform`, `points`, `windows`, `influx_write`,
    /// `lake_encode`, `lake_commit`, `window_merge`, `window_write`, `offsets`, `close`.
    pub step: &'static str,
}

/// Labels of the per-query window time.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryPhase {
    /// The windowed query (`influx.<measurement>`).
    pub query: String,
    /// `fold` (partial aggregates of a batch merged into the open windows) or `merge` (the
    /// final merge of the touched windows over every partition).
    pub phase: &'static str,
}

/// Every metric the engine keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Messages consumed.
    pub records_in: Counter,
    /// Bytes of payload consumed.
    pub bytes_in: Counter,
    /// Rows written, by sink and target.
    pub rows_out: Family<SinkLabels, Counter>,
    /// Messages sent to dead letters.
    pub dead_letters: Counter,
    /// Rows too late for their window (kept in the lake, not in Influx).
    pub late_rows: Counter,
    /// Messages replayed after a restart that the lake already held (skipped there).
    pub replayed: Counter,
    /// Batches processed.
    pub batches: Counter,
    /// Seconds from a batch's close to its commit.
    pub batch_seconds: Histogram,
    /// Messages behind the end of the assigned partitions.
    pub consumer_lag: Gauge,
    /// Partial-aggregate state rows held for open windows (windows × groups × partitions).
    pub window_rows: Gauge,
    /// Windows closed early because `windows.max_rows` was reached.
    pub windows_closed_early: Counter,
    /// Failed sink or source attempts (each retry counts).
    pub errors: Family<SinkKind, Counter>,
    /// Influx write requests InfluxDB refused (in part or in whole) as bad data.
    pub influx_rejected: Counter,
    /// Influx points InfluxDB refused as bad data (the others of their request were written).
    pub influx_rejected_points: Counter,
    /// Tag values rewritten because InfluxDB cannot hold them (empty, control characters).
    pub tag_rewrites: Counter,
    /// Rows a transform could not process, sent to dead letters naming it.
    pub transform_dead_letters: Counter,
    /// Rows whose window had been closed by another partition when the point was due.
    pub rows_after_close: Counter,
    /// Query files refused (at start or reload).
    pub query_errors: Counter,
    /// Transforms running.
    pub transforms: Gauge,
    /// Merges of small lake files committed (compaction).
    pub lake_merges: Counter,
    /// Small lake files those merges replaced.
    pub lake_files_merged: Counter,
    /// Batches whose lake commit went on while the next batch was processed.
    pub lake_commits_overlapped: Counter,
    /// Partition commits refused because another writer had moved the partition's ledger on.
    pub lake_commits_fenced: Counter,
    /// Partition commits staged while the previous batch's commit was still going on, published
    /// once it landed as expected.
    pub lake_commits_prestaged: Counter,
    /// Partition commits staged early and then discarded (the previous commit did not leave the
    /// ledger they were staged for, or staging failed); they were committed again the usual way.
    pub lake_prestages_discarded: Counter,
    /// Times a partition was read again from its ledger's position because the source delivered
    /// a message beyond it.
    pub source_rereads: Counter,
    /// Offsets a partition did not have even when read again (passed over).
    pub source_offsets_missing: Counter,
    /// Seconds a partition's lake commit spent staging its files and ledger entry.
    pub lake_stage_seconds: Histogram,
    /// Seconds a partition's lake commit spent publishing (entry into place, file renames).
    pub lake_publish_seconds: Histogram,
    /// Seconds spent in each step of the batch loop (where the time goes).
    pub step_seconds: Family<StepLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// Seconds each windowed query spent folding batches and merging windows.
    pub window_query_seconds: Family<QueryPhase, Counter<f64, std::sync::atomic::AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, registered under `carflow_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("carflow");
        let m = Self {
            records_in: Counter::default(),
            bytes_in: Counter::default(),
            rows_out: Family::default(),
            dead_letters: Counter::default(),
            late_rows: Counter::default(),
            replayed: Counter::default(),
            batches: Counter::default(),
            batch_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            lake_stage_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            lake_publish_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            consumer_lag: Gauge::default(),
            window_rows: Gauge::default(),
            windows_closed_early: Counter::default(),
            errors: Family::default(),
            influx_rejected: Counter::default(),
            influx_rejected_points: Counter::default(),
            tag_rewrites: Counter::default(),
            transform_dead_letters: Counter::default(),
            rows_after_close: Counter::default(),
            query_errors: Counter::default(),
            transforms: Gauge::default(),
            lake_merges: Counter::default(),
            lake_files_merged: Counter::default(),
            lake_commits_overlapped: Counter::default(),
            lake_commits_fenced: Counter::default(),
            lake_commits_prestaged: Counter::default(),
            lake_prestages_discarded: Counter::default(),
            source_rereads: Counter::default(),
            source_offsets_missing: Counter::default(),
            step_seconds: Family::default(),
            window_query_seconds: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "lake_merges",
            "Merges of a partition's small lake files into one, committed (lake.compact_files)",
            m.lake_merges.clone(),
        );
        registry.register(
            "lake_files_merged",
            "Small lake files replaced by those merges",
            m.lake_files_merged.clone(),
        );
        registry.register(
            "lake_commits_overlapped",
            "Batches whose lake commit went on while the next batch was processed (one engine on the topic, behind it)",
            m.lake_commits_overlapped.clone(),
        );
        registry.register(
            "lake_commits_fenced",
            "Partition commits refused because another writer moved the partition's ledger on (the partition is reloaded and its messages processed again)",
            m.lake_commits_fenced.clone(),
        );
        registry.register(
            "lake_commits_prestaged",
            "Partition commits staged while the previous batch's commit was still going on and published once it landed as expected",
            m.lake_commits_prestaged.clone(),
        );
        registry.register(
            "lake_prestages_discarded",
            "Partition commits staged early and discarded (the previous commit did not leave the ledger they were staged for, or staging failed), then committed the usual way",
            m.lake_prestages_discarded.clone(),
        );
        registry.register(
            "source_rereads",
            "Times a partition was read again from its ledger's position because the source delivered a message beyond it (messages it had left out)",
            m.source_rereads.clone(),
        );
        registry.register(
            "source_offsets_missing",
            "Offsets a partition did not have even when read again (deleted by retention before they were read, compacted away, transaction markers, aborted transactions): passed over",
            m.source_offsets_missing.clone(),
        );
        registry.register(
            "records_in",
            "Messages consumed from the source",
            m.records_in.clone(),
        );
        registry.register(
            "bytes_in",
            "Payload bytes consumed from the source",
            m.bytes_in.clone(),
        );
        registry.register(
            "rows_out",
            "Rows written, by sink and target",
            m.rows_out.clone(),
        );
        registry.register(
            "dead_letters",
            "Messages that did not decode, sent to dead letters",
            m.dead_letters.clone(),
        );
        registry.register(
            "late_rows",
            "Rows later than the allowed lateness (in the lake, not in Influx)",
            m.late_rows.clone(),
        );
        registry.register(
            "replayed",
            "Replayed messages the lake already held",
            m.replayed.clone(),
        );
        registry.register("batches", "Micro-batches committed", m.batches.clone());
        registry.register(
            "batch_duration_seconds",
            "Time from a batch's close to its commit",
            m.batch_seconds.clone(),
        );
        registry.register(
            "consumer_lag",
            "Messages behind the end of the assigned partitions",
            m.consumer_lag.clone(),
        );
        registry.register(
            "window_rows",
            "Partial-aggregate state rows held for open event-time windows (windows x groups x partitions)",
            m.window_rows.clone(),
        );
        registry.register(
            "windows_closed_early",
            "Windows closed before their time because windows.max_rows was reached",
            m.windows_closed_early.clone(),
        );
        registry.register(
            "errors",
            "Failed attempts of a sink or the source (each retry counts)",
            m.errors.clone(),
        );
        registry.register(
            "influx_rejected",
            "Influx writes refused by the server as bad data",
            m.influx_rejected.clone(),
        );
        registry.register(
            "influx_rejected_points",
            "Influx points refused by the server as bad data (the rest of their request was written)",
            m.influx_rejected_points.clone(),
        );
        registry.register(
            "tag_rewrites",
            "Tag values rewritten because InfluxDB cannot hold them (empty, control characters, a trailing backslash)",
            m.tag_rewrites.clone(),
        );
        registry.register(
            "transform_dead_letters",
            "Rows a transform could not process, sent to dead letters naming the transform",
            m.transform_dead_letters.clone(),
        );
        registry.register(
            "rows_after_close",
            "Rows applied to a window another engine had closed already (not in its point)",
            m.rows_after_close.clone(),
        );
        registry.register(
            "query_errors",
            "Query files refused at start or reload",
            m.query_errors.clone(),
        );
        registry.register("transforms", "Transforms running", m.transforms.clone());
        registry.register(
            "batch_step_seconds",
            "Seconds spent in each step of the batch loop: collect (waiting for messages), decode, prepare (ledgers, split), lake_transform, points (per-row influx), windows (fold), influx_write, lake_encode (Parquet), lake_commit (storage I/O), window_merge (final aggregates and line protocol of the touched windows), window_write (their InfluxDB write), offsets, close",
            m.step_seconds.clone(),
        );
        registry.register(
            "lake_stage_seconds",
            "Seconds each partition's lake commit spent writing its files and ledger entry to the staging area (on HDFS mostly the wait for the namenode to confirm each file complete)",
            m.lake_stage_seconds.clone(),
        );
        registry.register(
            "lake_publish_seconds",
            "Seconds each partition's lake commit spent publishing: its ledger entry moved into place (the commit point), its files renamed into the lake, cleanup",
            m.lake_publish_seconds.clone(),
        );
        registry.register(
            "window_query_seconds",
            "Seconds each windowed query spent: fold (a batch's partial aggregates merged into the open windows) and merge (the final merge of the touched windows over every partition); merges of several queries run at once",
            m.window_query_seconds.clone(),
        );
        Self { registry, ..m }
    }

    /// Add `secs` to windowed query `query`'s time in `phase` (`fold` or `merge`).
    pub fn window_query(&self, query: &str, phase: &'static str, secs: f64) {
        self.window_query_seconds
            .get_or_create(&QueryPhase {
                query: query.to_string(),
                phase,
            })
            .inc_by(secs);
    }

    /// The counter of failed attempts of `sink` (to hand to a component that counts by itself).
    pub fn error_counter(&self, sink: &str) -> Counter {
        self.errors
            .get_or_create(&SinkKind { sink: sink.into() })
            .clone()
    }

    /// Add the time since `*since` to `step` and move `*since` to now.
    pub fn step(&self, step: &'static str, since: &mut std::time::Instant) {
        let now = std::time::Instant::now();
        self.step_seconds
            .get_or_create(&StepLabel { step })
            .inc_by((now - *since).as_secs_f64());
        *since = now;
    }

    /// Count a failed attempt of `sink`.
    pub fn error(&self, sink: &str) {
        self.errors
            .get_or_create(&SinkKind { sink: sink.into() })
            .inc();
    }

    /// Count rows written to a sink target.
    pub fn rows(&self, sink: &str, target: &str, n: u64) {
        self.rows_out
            .get_or_create(&SinkLabels {
                sink: sink.into(),
                target: target.into(),
            })
            .inc_by(n);
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// What `/health` reports.
#[derive(Debug, Default)]
pub struct Health {
    last_commit_ms: AtomicI64,
    problems: Mutex<std::collections::BTreeMap<String, String>>,
    processed: Mutex<std::collections::BTreeMap<String, i64>>,
    owned: Mutex<std::collections::BTreeSet<String>>,
}

impl Health {
    /// A batch was committed.
    pub fn committed(&self) {
        self.last_commit_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// Every sink holds the records of `topic/partition` below `next_offset`.
    pub fn processed(&self, topic: &str, partition: i32, next_offset: i64) {
        let mut p = self.processed.lock().unwrap_or_else(|e| e.into_inner());
        p.insert(format!("{topic}/{partition}"), next_offset);
    }

    /// A partition is owned now; everything below `committed` is durable.
    pub fn own(&self, topic: &str, partition: i32, committed: Option<i64>) {
        let key = format!("{topic}/{partition}");
        self.owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone());
        if let Some(c) = committed {
            self.processed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, c);
        }
    }

    /// A partition is no longer owned.
    pub fn forget(&self, topic: &str, partition: i32) {
        let key = format!("{topic}/{partition}");
        self.processed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        self.owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }

    /// Something is wrong with `component` (`lake`, `influx`, `source`, `transform`); `None`
    /// clears it.
    pub fn set(&self, component: &str, problem: Option<String>) {
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        match problem {
            Some(m) => {
                p.insert(component.to_string(), m);
            }
            None => {
                p.remove(component);
            }
        }
    }

    /// Something is wrong with the Influx sink (kept for callers of the older API).
    pub fn set_problem(&self, p: Option<String>) {
        self.set("influx", p);
    }

    /// The health document and whether it is healthy.
    pub fn report(&self) -> (bool, serde_json::Value) {
        let problems = self
            .problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let problem = (!problems.is_empty()).then(|| {
            problems
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join("; ")
        });
        let last = self.last_commit_ms.load(Ordering::Relaxed);
        let processed = self
            .processed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let owned = self.owned.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let doc = serde_json::json!({
            "status": if problem.is_none() { "ok" } else { "degraded" },
            "problem": problem,
            "problems": problems,
            "last_commit_ms": if last == 0 { None } else { Some(last) },
            "processed": processed,
            "owned": owned,
        });
        (problem.is_none(), doc)
    }
}

/// Serve `/metrics` and `/health` on `addr` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let m = warp::path!("metrics").map(move || {
        warp::http::Response::builder()
            .header(
                warp::http::header::CONTENT_TYPE,
                warp::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )
            .body(metrics.encode())
            .unwrap_or_default()
    });
    let h = warp::path!("health").map(move || {
        let (ok, doc) = health.report();
        let code = if ok {
            warp::http::StatusCode::OK
        } else {
            warp::http::StatusCode::SERVICE_UNAVAILABLE
        };
        warp::reply::with_status(warp::reply::json(&doc), code)
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        warp::serve(m.or(h))
            .incoming(listener)
            .graceful(shutdown.cancelled_owned())
            .run()
            .await;
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_as_prometheus_text() {
        let m = Metrics::new();
        m.records_in.inc_by(3);
        m.rows("lake", "cars", 2);
        let text = m.encode();
        assert!(text.contains("carflow_records_in_total 3"), "{text}");
        assert!(
            text.contains("carflow_rows_out_total{sink=\"lake\",target=\"cars\"} 2"),
            "{text}"
        );
    }
}
