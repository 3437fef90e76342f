//! The pipeline: source → micro-batch → transforms → lake and Influx → commit.
//!
//! One batch at a time, in order: decode (bad messages become dead letters); for each Kafka
//! partition of the batch, run the lake transforms on the rows the lake does not hold yet and
//! commit their files with the ledger; add the rows to the open windows and rewrite every
//! touched window's points in InfluxDB; then commit source offsets no further than what every
//! sink holds and what the open windows still need. A sink that is down stops the loop (retried
//! with backoff, nothing committed); bad data never does.

mod influx_step;
mod lake_step;
mod partitions;
pub mod state;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batcher::{BatchEnd, BatchLimits, DeadLetter, collect_batch, decode_batch};
use crate::checkpoint::PartitionLedger;
use crate::config::Config;
use crate::metrics::{Health, Metrics};
use crate::retry::{Backoff, RetryError, Transient, retry};
use crate::sink::influx::{InfluxError, InfluxSink};
use crate::sink::lake::{LakeError, LakeSink};
use crate::source::{Message, PartitionCommit, Source, SourceError, SourceEvent};
use crate::transform::window::{WindowSpec, Windowing};
use crate::transform::{Planner, QueryError, Target, TransformSet};
use crate::windows::{TopicPartition, Watermarks, WindowStore};
use lake_step::LakeInput;
use partitions::{offset_ranges, split_by_partition};
use state::{CommitMeta, store_key};

/// Errors that stop the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Query files that do not plan (at start every file must plan).
    #[error("{} query file(s) refused:\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Queries(Vec<QueryError>),
    /// The queries directory cannot be read.
    #[error(
        "queries directory {} cannot be read: run from the project directory, or set queries.dir \
         (CARFLOW_QUERIES_DIR) or --queries",
        dir.display()
    )]
    QueriesDir {
        /// Directory.
        dir: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// The source failed for good.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The lake failed for good (e.g. a corrupt ledger).
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// The Influx sink cannot work (configuration).
    #[error(transparent)]
    Influx(#[from] InfluxError),
    /// DataFusion failed outside a transform.
    #[error("datafusion: {0}")]
    DataFusion(#[from] DataFusionError),
    /// Arrow failed (an internal error, not bad input).
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
}

impl Transient for LakeError {
    fn is_transient(&self) -> bool {
        use crate::checkpoint::LedgerError;
        matches!(
            self,
            LakeError::Store { .. } | LakeError::Ledger(LedgerError::Store { .. })
        )
    }
}

/// What the pipeline needs beyond its sinks.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Batch limits.
    pub limits: BatchLimits,
    /// Directory of `.sql` files.
    pub queries_dir: PathBuf,
    /// Pick up query changes at batch boundaries.
    pub reload_queries: bool,
    /// Allowed lateness of events.
    pub lateness: Duration,
    /// Idle partitions stop holding the watermark after this.
    pub idle_timeout: Duration,
    /// Cap on rows held for open windows.
    pub max_window_rows: usize,
    /// Backoff of sink retries.
    pub backoff: Backoff,
    /// Name of this engine process (tag `engine` of the `carflow_engine` measurement).
    pub engine_id: String,
    /// Write the engine's own per-batch metrics to the Influx sink.
    pub engine_metrics: bool,
}

impl PipelineOptions {
    /// Options from a configuration.
    pub fn from_config(c: &Config, engine_id: impl Into<String>) -> Self {
        Self {
            limits: c.batch.limits(),
            queries_dir: c.queries.dir.clone(),
            reload_queries: c.queries.reload,
            lateness: c.windows.allowed_lateness.0,
            idle_timeout: c.windows.idle_timeout.0,
            max_window_rows: c.windows.max_rows,
            backoff: Backoff::default(),
            engine_id: engine_id.into(),
            engine_metrics: true,
        }
    }
}

/// Totals of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Messages consumed.
    pub records_in: u64,
    /// Rows that decoded.
    pub rows: u64,
    /// Dead letters written.
    pub dead_letters: u64,
    /// Rows too late for their window.
    pub late_rows: u64,
    /// Messages the lake already held (replays).
    pub replayed: u64,
    /// Rows written per lake dataset.
    pub lake_rows: BTreeMap<String, u64>,
    /// Influx points written.
    pub points: u64,
    /// Batches committed.
    pub batches: u64,
}

struct PartitionState {
    ledger: PartitionLedger,
    next_processed: Option<i64>,
}

struct StoreState {
    store: WindowStore,
    marks: Watermarks,
}

/// The running job.
pub struct Pipeline<S: Source> {
    source: S,
    options: PipelineOptions,
    planner: Planner,
    transforms: TransformSet,
    lake: LakeSink,
    influx: InfluxSink,
    partitions: HashMap<TopicPartition, PartitionState>,
    restored: HashMap<TopicPartition, CommitMeta>,
    revoked: HashSet<TopicPartition>,
    carry: Option<Message>,
    stores: HashMap<WindowSpec, StoreState>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    summary: RunSummary,
}

impl<S: Source> Pipeline<S> {
    /// Plan every query file; refuse to start if any does not plan (all errors listed).
    pub async fn new(
        source: S,
        options: PipelineOptions,
        lake: LakeSink,
        influx: InfluxSink,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Self, PipelineError> {
        let planner = Planner::new()?;
        let mut transforms = TransformSet::default();
        let report = transforms
            .reload(&planner, &options.queries_dir)
            .await
            .map_err(|source| PipelineError::QueriesDir {
                dir: options.queries_dir.clone(),
                source,
            })?;
        if !report.errors.is_empty() {
            return Err(PipelineError::Queries(report.errors));
        }
        for t in transforms.iter() {
            tracing::info!(file = %t.file.display(), target = %t.target_name(), "transform loaded");
        }
        metrics.transforms.set(transforms.len() as i64);
        let mut p = Self {
            source,
            options,
            planner,
            transforms,
            lake,
            influx,
            partitions: HashMap::new(),
            restored: HashMap::new(),
            revoked: HashSet::new(),
            carry: None,
            stores: HashMap::new(),
            metrics,
            health,
            summary: RunSummary::default(),
        };
        p.sync_stores();
        Ok(p)
    }

    /// Open the sinks a configuration names and plan its queries.
    pub async fn from_config(
        source: S,
        config: &Config,
        engine_id: &str,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Self, PipelineError> {
        let location = crate::storage::Location::open(&config.lake.root).map_err(|e| {
            PipelineError::Lake(LakeError::Encode {
                dataset: "lake.root".into(),
                message: e.to_string(),
            })
        })?;
        let writer = format!(
            "{}-{}",
            crate::checkpoint::safe_segment(engine_id),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let lake = LakeSink::new(location, &writer);
        let influx = InfluxSink::new(config.influx.target())?;
        let options = PipelineOptions::from_config(config, engine_id);
        Self::new(source, options, lake, influx, metrics, health).await
    }

    /// The source (for tests that inspect commits).
    pub fn source(&self) -> &S {
        &self.source
    }

    /// Stop using the pipeline and take its source back.
    pub fn into_source(self) -> S {
        self.source
    }

    /// The running transforms.
    pub fn transforms(&self) -> &TransformSet {
        &self.transforms
    }

    /// Run until the source ends or `shutdown` fires; a batch in progress is finished first.
    pub async fn run(&mut self, shutdown: &CancellationToken) -> Result<RunSummary, PipelineError> {
        loop {
            self.apply_events().await?;
            let waiting = Instant::now();
            let (messages, end) = collect_batch(
                &mut self.source,
                &self.options.limits,
                shutdown,
                &mut self.carry,
            )
            .await?;
            if !matches!(end, BatchEnd::Full | BatchEnd::Rebalance) {
                // The source ran dry for a while: that time counts towards partition idleness.
                for st in self.stores.values_mut() {
                    st.marks.advance_idle_clock(waiting.elapsed());
                }
            }
            if !messages.is_empty() {
                match self.process(messages, shutdown).await {
                    Ok(()) => {}
                    Err(Stop::Shutdown) => break,
                    Err(Stop::Failed(e)) => return Err(e),
                }
            }
            if matches!(end, BatchEnd::SourceExhausted | BatchEnd::Shutdown)
                || shutdown.is_cancelled()
            {
                break;
            }
            if self.options.reload_queries {
                self.reload_queries().await;
            }
        }
        Ok(self.summary.clone())
    }

    async fn reload_queries(&mut self) {
        match self
            .transforms
            .reload(&self.planner, &self.options.queries_dir)
            .await
        {
            Ok(r) => {
                for f in &r.loaded {
                    tracing::info!(file = %f.display(), "transform (re)loaded; it applies from the next batch");
                }
                for f in &r.removed {
                    tracing::info!(file = %f.display(), "transform removed");
                }
                for e in &r.errors {
                    tracing::error!(error = %e, "query file refused; the transforms already running go on");
                    self.metrics.query_errors.inc();
                }
                if !(r.loaded.is_empty() && r.removed.is_empty()) {
                    self.metrics.transforms.set(self.transforms.len() as i64);
                    self.sync_stores();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, dir = %self.options.queries_dir.display(), "cannot scan queries directory")
            }
        }
    }

    /// Make sure one window store exists per window spec in use, and none that is not.
    fn sync_stores(&mut self) {
        let specs: HashSet<WindowSpec> = self
            .transforms
            .iter()
            .filter_map(|t| match &t.target {
                Target::Influx {
                    windowing: Windowing::Windowed(w),
                    ..
                } => Some(w.clone()),
                _ => None,
            })
            .collect();
        self.stores.retain(|s, _| specs.contains(s));
        for spec in specs {
            if self.stores.contains_key(&spec) {
                continue;
            }
            let mut st = StoreState {
                store: WindowStore::new(spec.clone()),
                marks: Watermarks::new(self.options.lateness, self.options.idle_timeout),
            };
            for tp in self.partitions.keys() {
                let meta = self.restored.get(tp);
                st.marks.assign(tp.clone());
                if let Some(c) = meta.and_then(|m| m.closed.get(&store_key(&spec))) {
                    st.store.restore_closed(*c);
                }
            }
            self.stores.insert(spec, st);
        }
    }

    /// Apply ownership changes; returns the partitions revoked by them.
    async fn apply_events(&mut self) -> Result<HashSet<TopicPartition>, PipelineError> {
        let mut revoked_now = HashSet::new();
        for event in self.source.take_events() {
            match event {
                SourceEvent::Revoked(tps) => {
                    for tp in tps {
                        tracing::info!(topic = %tp.0, partition = tp.1, "partition revoked");
                        self.partitions.remove(&tp);
                        self.restored.remove(&tp);
                        self.health.forget(&tp.0, tp.1);
                        for st in self.stores.values_mut() {
                            st.store.drop_partition(&tp)?;
                            st.marks.revoke(&tp);
                        }
                        self.revoked.insert(tp.clone());
                        revoked_now.insert(tp);
                    }
                }
                SourceEvent::Assigned(tps) => {
                    for tp in tps {
                        tracing::info!(topic = %tp.0, partition = tp.1, "partition assigned");
                        self.revoked.remove(&tp);
                        self.partitions.remove(&tp);
                        self.ensure_partition(&tp).await?;
                    }
                }
            }
        }
        Ok(revoked_now)
    }

    /// Load a partition's ledger and restore its watermark state, once per ownership.
    async fn ensure_partition(&mut self, tp: &TopicPartition) -> Result<(), PipelineError> {
        if self.partitions.contains_key(tp) {
            return Ok(());
        }
        let ledger = self.lake.ledger().clone();
        let loaded = retry(
            "lake ledger load",
            &self.options.backoff,
            &CancellationToken::new(),
            || {
                let ledger = ledger.clone();
                let tp = tp.clone();
                async move { ledger.load(&tp.0, tp.1).await.map_err(LakeError::from) }
            },
        )
        .await
        .map_err(|e| match e {
            RetryError::Permanent(e) => PipelineError::Lake(e),
            RetryError::Shutdown(e) => PipelineError::Lake(e.unwrap_or(LakeError::Encode {
                dataset: String::new(),
                message: "shutdown".into(),
            })),
        })?;
        let committed = self.source.committed(&tp.0, tp.1).await?;
        let meta = committed
            .as_ref()
            .and_then(|(_, m)| CommitMeta::parse(m))
            .unwrap_or_default();
        self.health
            .own(&tp.0, tp.1, committed.as_ref().map(|(o, _)| *o));
        tracing::info!(topic = %tp.0, partition = tp.1, lake_next_offset = loaded.next_offset,
            committed = ?committed.as_ref().map(|c| c.0), "partition ready");
        for (spec, st) in &mut self.stores {
            st.marks.assign(tp.clone());
            if let Some(c) = meta.closed.get(&store_key(spec)) {
                st.store.restore_closed(*c);
            }
        }
        self.restored.insert(tp.clone(), meta);
        self.partitions.insert(
            tp.clone(),
            PartitionState {
                ledger: loaded,
                next_processed: None,
            },
        );
        Ok(())
    }

    async fn process(
        &mut self,
        messages: Vec<Message>,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        let started = Instant::now();
        // Messages of a batch predate the ownership changes applied here (see `collect_batch`):
        // those of a partition revoked now are dropped even if it came back, since Kafka
        // re-delivers it from the committed offset.
        let revoked_now = self.apply_events().await?;
        let messages = self.owned_in_order(messages, &revoked_now);
        if messages.is_empty() {
            return Ok(());
        }
        let bytes: usize = messages.iter().map(Message::size).sum();
        let decoded = decode_batch(&messages, self.options.limits.max_message_bytes)
            .map_err(PipelineError::from)?;
        let ranges = offset_ranges(&messages);
        drop(messages);
        for tp in ranges.keys() {
            self.ensure_partition(tp).await?;
        }
        let groups = split_by_partition(&decoded.rows).map_err(PipelineError::from)?;
        let mut dead: HashMap<TopicPartition, Vec<&DeadLetter>> = HashMap::new();
        for d in &decoded.dead_letters {
            dead.entry((Arc::clone(&d.topic), d.partition))
                .or_default()
                .push(d);
        }
        if let Some(first) = decoded.dead_letters.first() {
            tracing::warn!(count = decoded.dead_letters.len(), topic = %first.topic, partition = first.partition, offset = first.offset, reason = %first.reason, "dead letters in batch (first shown)");
        }
        // What was processed before this batch (the lake's ledger): rows below it are replays.
        let replay_below: HashMap<TopicPartition, i64> = ranges
            .keys()
            .filter_map(|tp| {
                self.partitions
                    .get(tp)
                    .map(|p| (tp.clone(), p.ledger.next_offset))
            })
            .collect();
        let decoded_at = Instant::now();
        let inputs: Vec<LakeInput<'_>> = ranges
            .iter()
            .map(|(tp, range)| LakeInput {
                tp,
                range: *range,
                rows: groups.get(tp),
                dead: dead.get(tp).map(Vec::as_slice).unwrap_or_default(),
            })
            .collect();
        let lake_rows = self.write_lake_all(&inputs, shutdown).await?;
        drop(inputs);
        let lake_at = Instant::now();
        let (body, points, late) = self
            .influx_points(&decoded.rows, &groups, &replay_below)
            .await?;
        let mut body = body;
        self.summary.records_in += ranges.values().map(|r| r.2).sum::<u64>();
        let lag = self.source.lag();
        if self.options.engine_metrics {
            self.engine_point(
                &mut body,
                ranges.values().map(|r| r.2).sum(),
                lake_rows,
                decoded.dead_letters.len(),
                late,
                points,
                started,
                lag,
            );
        }
        let transformed_at = Instant::now();
        self.write_influx(&body, shutdown).await?;
        let influx_at = Instant::now();
        for (tp, range) in &ranges {
            if let Some(p) = self.partitions.get_mut(tp) {
                p.next_processed = Some(range.1 + 1);
            }
            self.health.processed(&tp.0, tp.1, range.1 + 1);
        }
        self.commit_source().await;
        let n = ranges.values().map(|r| r.2).sum::<u64>();
        self.metrics.records_in.inc_by(n);
        self.metrics.bytes_in.inc_by(bytes as u64);
        self.metrics.late_rows.inc_by(late);
        self.metrics.batches.inc();
        self.metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.consumer_lag.set(lag.unwrap_or(0));
        self.metrics
            .window_rows
            .set(self.stores.values().map(|s| s.store.rows() as i64).sum());
        self.summary.rows += decoded.rows.num_rows() as u64;
        self.summary.late_rows += late;
        self.summary.points += points;
        self.summary.batches += 1;
        self.health.committed();
        tracing::debug!(
            records = n,
            rows = decoded.rows.num_rows(),
            dead = decoded.dead_letters.len(),
            late,
            points,
            ms = started.elapsed().as_millis() as u64,
            decode_ms = (decoded_at - started).as_millis() as u64,
            lake_ms = (lake_at - decoded_at).as_millis() as u64,
            windows_ms = (transformed_at - lake_at).as_millis() as u64,
            influx_ms = (influx_at - transformed_at).as_millis() as u64,
            commit_ms = influx_at.elapsed().as_millis() as u64,
            "batch committed"
        );
        Ok(())
    }

    /// Keep messages of partitions this process still owns, in offset order, each offset once,
    /// and none this ownership already processed (a re-delivery after a rebalance).
    fn owned_in_order(
        &self,
        mut messages: Vec<Message>,
        revoked_now: &HashSet<TopicPartition>,
    ) -> Vec<Message> {
        messages.retain(|m| {
            let tp = (Arc::clone(&m.topic), m.partition);
            let done = self.partitions.get(&tp).and_then(|p| p.next_processed);
            !self.revoked.contains(&tp)
                && !revoked_now.contains(&tp)
                && done.is_none_or(|n| m.offset >= n)
        });
        let sorted = messages.windows(2).all(|w| {
            (&w[0].topic, w[0].partition, w[0].offset) < (&w[1].topic, w[1].partition, w[1].offset)
        });
        if !sorted {
            messages.sort_by(|a, b| {
                (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset))
            });
            messages.dedup_by(|a, b| {
                a.topic == b.topic && a.partition == b.partition && a.offset == b.offset
            });
        }
        messages
    }

    /// Commit, per owned partition, the lowest offset any sink or open window still needs.
    async fn commit_source(&mut self) {
        let mut commits = Vec::new();
        for (tp, p) in &self.partitions {
            let Some(next) = p.next_processed else {
                continue;
            };
            let mut meta = CommitMeta {
                v: 1,
                ..Default::default()
            };
            let mut at = next;
            for (spec, st) in &self.stores {
                if let Some(low) = st.store.low_water(tp) {
                    at = at.min(low);
                }
                if let Some(c) = st.store.closed_before() {
                    meta.closed.insert(store_key(spec), c);
                }
            }
            tracing::debug!(topic = %tp.0, partition = tp.1, processed = next, commit = at, "offset commit");
            commits.push(PartitionCommit {
                topic: Arc::clone(&tp.0),
                partition: tp.1,
                next_offset: at,
                metadata: meta.render(),
            });
        }
        if commits.is_empty() {
            return;
        }
        if let Err(e) = self.source.commit(&commits).await {
            // Not fatal: the next batch commits later positions; a replay is deduplicated.
            tracing::warn!(error = %e, "offset commit failed; it will be retried with the next batch");
            self.metrics.error("source");
        }
    }
}

/// Why processing stopped.
enum Stop {
    Shutdown,
    Failed(PipelineError),
}

impl From<PipelineError> for Stop {
    fn from(e: PipelineError) -> Self {
        Stop::Failed(e)
    }
}
