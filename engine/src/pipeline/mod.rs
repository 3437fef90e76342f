//! The pipeline: source → micro-batch → transforms → lake and InfluxDB → commit.
//!
//! One batch at a time ([`batch`]): decode (bad messages become dead letters); per Kafka partition,
//! run the lake transforms on the rows the lake does not hold yet, isolating rows a transform
//! cannot take; write per-row Influx points; fold the rows into the partial aggregates of the open
//! windows; commit each partition's files, dead letters, event-time progress and window state in
//! one ledger step; then write the points of every window the batch touched, merged over every
//! partition of the topic; then record the source positions. A sink that is down makes the batch
//! wait and retry (nothing is committed meanwhile); bad data never stops the pipeline; a transform
//! that fails for every row stops it, and says so, until the query is fixed.
//!
//! While a batch waits on a store (the lake commit, an InfluxDB write), the next batch's messages
//! are read and decoded on a blocking thread ([`crate::batcher::read_ahead_while`]); nothing of
//! the pipeline's state moves until that batch is processed in its turn. When a batch is waiting
//! and no other engine shares the topic, a batch's window points are written while the next batch
//! is processed; they land before that batch's commit (and before the run returns).
//!
//! The pipeline is owned parts: the [`Queries`] it runs, the [`Sinks`] it writes, the partitions
//! it knows ([`partitions`]), and the run's [`RunSummary`].

/// `read_ahead_while` over the pipeline's source and read-ahead buffer (a macro, since the work
/// awaited borrows other fields of the pipeline).
macro_rules! reading_ahead {
    ($p:expr, $work:expr) => {
        crate::batcher::read_ahead_while(
            &mut $p.source,
            &$p.options.limits,
            &$p.options.rules,
            &mut $p.ahead,
            $work,
        )
    };
}

mod batch;
mod compaction;
mod gate;
mod holes;
mod lake_step;
mod overlap;
mod part;
pub mod partitions;
mod points;
mod queries;
mod seed;
mod windows_step;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use tokio_util::sync::CancellationToken;

use crate::batcher::{BatchEnd, BatchLimits, Collected, DecodeRules, ReadAhead, collect_batch};
use crate::config::{Config, OnNewTopic};
use crate::ledger::LedgerError;
use crate::metrics::{Health, Metrics};
use crate::retry::{Backoff, RetryError, Transient, retry_reporting};
use crate::sink::influx::{InfluxError, InfluxSink, InfluxTarget};
use crate::sink::lake::{LakeError, LakeSink};
use crate::source::{Source, SourceError, SourceEvent, TopicPartition, TopicView};
use crate::transform::QueryError;
use crate::windows::state::{PartitionWindows, QueryState};
use crate::windows::watermark::TopicClock;
pub use compaction::CompactOptions;
pub use gate::{DatasetShape, Records};
use partitions::{Observed, Owned};
pub use queries::Queries;

/// Errors that stop the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Query files that do not plan (at start, when none of them can run).
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
    /// The topic was deleted and created again (or is a mirror): its offsets are not the ones the
    /// ledger recorded.
    #[error(
        "{tp}: the topic id is {now}, but the lake's ledger recorded topic id {was} (the topic was \
         deleted and created again, or this is another cluster's copy). Its offsets start over, so \
         they cannot be checked against the ledger. To start a new ledger for the new topic (what \
         the lake holds stays), set lake.on_new_topic = \"new-ledger\" (CARFLOW_LAKE_ON_NEW_TOPIC); \
         otherwise point lake.root at another directory"
    )]
    TopicChanged {
        /// The partition.
        tp: TopicPartition,
        /// The id the ledger recorded.
        was: String,
        /// The id now.
        now: String,
    },
    /// DataFusion failed outside a transform.
    #[error("datafusion: {0}")]
    DataFusion(#[from] DataFusionError),
    /// Arrow failed (an internal error, not bad input).
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
}

impl Transient for LakeError {
    fn is_transient(&self) -> bool {
        matches!(
            self,
            LakeError::Store { .. } | LakeError::Ledger(LedgerError::Store { .. })
        )
    }
}

impl Transient for LedgerError {
    fn is_transient(&self) -> bool {
        matches!(self, LedgerError::Store { .. })
    }
}

/// What the pipeline needs beyond its sinks.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Batch limits.
    pub limits: BatchLimits,
    /// What a message must satisfy to become a row.
    pub rules: DecodeRules,
    /// Directory of `.sql` files.
    pub queries_dir: PathBuf,
    /// Pick up query changes at batch boundaries.
    pub reload_queries: bool,
    /// Directory of reference tables (`reference.dir`).
    pub reference_dir: PathBuf,
    /// Allowed lateness of events.
    pub lateness: Duration,
    /// Idle partitions stop holding the watermark after this.
    pub idle_timeout: Duration,
    /// Cap on window state rows.
    pub max_window_rows: usize,
    /// Backoff of sink retries.
    pub backoff: Backoff,
    /// How long one storage operation may take.
    pub lake_timeout: Duration,
    /// What to do when the topic's id changed.
    pub on_new_topic: OnNewTopic,
    /// The lake dataset that keeps every transaction (history for new windowed queries).
    pub raw_dataset: String,
    /// Name of this engine process (tag `engine` of the `carflow_engine` measurement).
    pub engine_id: String,
    /// Write the engine's own per-batch metrics to the Influx sink.
    pub engine_metrics: bool,
    /// When to merge small lake files.
    pub compact: CompactOptions,
    /// Let a batch's lake commit go on while the next batch is processed, when this engine is
    /// alone on the topic and behind it (see `pipeline::overlap`).
    pub overlap_commits: bool,
    /// Stage a batch's commit while the previous batch's commit is still going on
    /// (`lake.prestage`; see [`lake_step`]).
    pub prestage_commits: bool,
}

impl PipelineOptions {
    /// Options from a configuration.
    pub fn from_config(c: &Config, engine_id: impl Into<String>) -> Self {
        Self {
            limits: BatchLimits::from_config(&c.batch),
            rules: DecodeRules::from_config(c),
            queries_dir: c.queries.dir.clone(),
            reload_queries: c.queries.reload,
            reference_dir: c.reference.dir.clone(),
            lateness: c.windows.allowed_lateness.0,
            idle_timeout: c.windows.idle_timeout.0,
            max_window_rows: c.windows.max_rows,
            backoff: Backoff::default(),
            lake_timeout: c.lake.timeout.0,
            on_new_topic: c.lake.on_new_topic,
            raw_dataset: c.lake.raw_dataset.clone(),
            engine_id: engine_id.into(),
            engine_metrics: true,
            compact: CompactOptions {
                min_files: c.lake.compact_files,
                max_bytes: c.lake.compact_bytes,
                interval: c.lake.compact_interval.0,
            },
            overlap_commits: true,
            prestage_commits: c.lake.prestage,
        }
    }
}

/// Totals of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Messages consumed (each once: replays the lake held are counted in `replayed`).
    pub records_in: u64,
    /// Rows that decoded.
    pub rows: u64,
    /// Dead letters written (messages that did not decode, and rows a transform could not take).
    pub dead_letters: u64,
    /// Of those, messages that did not decode.
    pub undecodable: u64,
    /// Rows too late for their window.
    pub late_rows: u64,
    /// Messages the lake already held (replays).
    pub replayed: u64,
    /// Rows written per lake dataset.
    pub lake_rows: BTreeMap<String, u64>,
    /// Rows given to each lake dataset's transform.
    pub lake_inputs: BTreeMap<String, u64>,
    /// Rows each transform could not take (dead letters naming it).
    pub transform_dead_letters: BTreeMap<String, u64>,
    /// Influx points written.
    pub points: u64,
    /// Batches committed.
    pub batches: u64,
}

impl RunSummary {
    /// Does every message add up? Messages = decoded rows + undecodable dead letters, and every
    /// lake dataset took each decoded row or dead-lettered it. Returns the differences, if any.
    pub fn discrepancies(&self, datasets_from_start: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        if self.records_in != self.rows + self.undecodable {
            out.push(format!(
                "messages in {} ≠ rows {} + undecodable dead letters {}",
                self.records_in, self.rows, self.undecodable
            ));
        }
        for d in datasets_from_start {
            let took = self.lake_inputs.get(d).copied().unwrap_or(0);
            let refused = self
                .transform_dead_letters
                .get(&format!("lake.{d}"))
                .copied()
                .unwrap_or(0);
            if took != self.rows {
                out.push(format!(
                    "lake.{d} was given {took} rows of {} decoded ({refused} of them dead letters)",
                    self.rows
                ));
            }
        }
        out
    }
}

/// Where the pipeline writes.
pub struct Sinks {
    /// The lake (and, beside it, the ledger).
    pub lake: LakeSink,
    /// InfluxDB or its line-protocol file.
    pub influx: Arc<InfluxSink>,
}

/// The partitions the pipeline knows.
#[derive(Debug)]
pub struct Book {
    /// Owned now.
    pub owned: HashMap<TopicPartition, Owned>,
    /// The others of the topic, as last read from their ledgers.
    pub observed: HashMap<TopicPartition, Observed>,
    /// Revoked since the last batch (their messages in a batch are dropped).
    pub revoked: HashSet<TopicPartition>,
    /// Watermark bookkeeping.
    pub clock: TopicClock,
    /// Every partition of the topic and where it ends, with the topic's id.
    pub view: TopicView,
}

/// Why processing stopped.
enum Stop {
    Shutdown,
    Failed(PipelineError),
    /// A transform fails for every row (and for the sample rows): consumption waits for a fix.
    Stalled(String),
}

impl From<PipelineError> for Stop {
    fn from(e: PipelineError) -> Self {
        Stop::Failed(e)
    }
}

impl From<ArrowError> for Stop {
    fn from(e: ArrowError) -> Self {
        Stop::Failed(e.into())
    }
}

impl From<DataFusionError> for Stop {
    fn from(e: DataFusionError) -> Self {
        Stop::Failed(e.into())
    }
}

/// The running job.
pub struct Pipeline<S: Source> {
    source: S,
    options: PipelineOptions,
    queries: Queries,
    sinks: Sinks,
    book: Book,
    /// The next batch's messages, read while the current one commits.
    ahead: ReadAhead,
    /// Window points being written while the pipeline goes on.
    pending_points: Option<points::PendingWrite>,
    /// Batches committed whose points are in `pending_points` (recorded when those land).
    unfinished: Vec<batch::Done>,
    /// A batch whose lake commit is going on.
    in_flight: Option<overlap::InFlight>,
    /// Messages whose commit was fenced while in flight, to process again.
    redo: Vec<crate::source::Message>,
    /// Windowed queries whose open windows owned partitions must fill from the lake.
    to_seed: BTreeMap<String, Vec<TopicPartition>>,
    /// Merges of small lake files in progress.
    compactor: compaction::Compactor,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    summary: RunSummary,
}

impl<S: Source> Pipeline<S> {
    /// Plan every query file; refuse to start only when none can run (all errors listed).
    pub async fn new(
        source: S,
        options: PipelineOptions,
        sinks: Sinks,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Self, PipelineError> {
        let queries = Queries::load(&options, sinks.lake.location(), &metrics, &health).await?;
        let clock = TopicClock::new(options.lateness, options.idle_timeout);
        let compactor = compaction::Compactor::new(options.compact);
        Ok(Self {
            source,
            options,
            queries,
            sinks,
            book: Book {
                owned: HashMap::new(),
                observed: HashMap::new(),
                revoked: HashSet::new(),
                clock,
                view: TopicView::default(),
            },
            ahead: ReadAhead::default(),
            pending_points: None,
            unfinished: Vec::new(),
            in_flight: None,
            redo: Vec::new(),
            to_seed: BTreeMap::new(),
            compactor,
            metrics,
            health,
            summary: RunSummary::default(),
        })
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
            crate::ledger::safe_segment(engine_id),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let lake = LakeSink::new(location, &writer);
        let influx = InfluxSink::new(InfluxTarget::from_config(&config.influx))?;
        let options = PipelineOptions::from_config(config, engine_id);
        Self::new(
            source,
            options,
            Sinks {
                lake,
                influx: Arc::new(influx),
            },
            metrics,
            health,
        )
        .await
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
    pub fn transforms(&self) -> &crate::transform::TransformSet {
        &self.queries.transforms
    }

    /// Lake datasets written since the start (for accounting at the end of a run).
    pub fn datasets_from_start(&self) -> &[String] {
        &self.queries.datasets_from_start
    }

    /// Run until the source ends or `shutdown` fires; a batch in progress is finished first, and
    /// the points still being written land before this returns.
    pub async fn run(&mut self, shutdown: &CancellationToken) -> Result<RunSummary, PipelineError> {
        let out = self.run_batches(shutdown).await;
        let drained = self.drain(shutdown).await;
        let settled = self.settle_points().await;
        out?;
        for end in [drained, settled] {
            if let Err(Stop::Failed(e)) = end {
                return Err(e);
            }
        }
        Ok(self.summary.clone())
    }

    async fn run_batches(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<RunSummary, PipelineError> {
        let mut stalled_wait = Duration::from_secs(1);
        loop {
            match self.apply_events(shutdown).await {
                Ok(_) => {}
                Err(Stop::Shutdown) => break,
                Err(Stop::Failed(e)) => return Err(e),
                Err(Stop::Stalled(_)) => {}
            }
            let mut at = std::time::Instant::now();
            let Collected {
                messages,
                end,
                mut decoded,
            } = collect_batch(
                &mut self.source,
                &self.options.limits,
                shutdown,
                &mut self.ahead,
            )
            .await?;
            self.metrics.step("collect", &mut at);
            if end == BatchEnd::Idle {
                // A quiet topic: windows every partition has passed still close.
                self.close_windows_now().await;
            }
            let messages = Arc::new(messages);
            if !messages.is_empty() || !self.redo.is_empty() {
                loop {
                    match self.process(&messages, &mut decoded, shutdown).await {
                        Ok(()) => {
                            self.health.set("transform", self.queries.refused_problem());
                            stalled_wait = Duration::from_secs(1);
                            break;
                        }
                        Err(Stop::Shutdown) => return Ok(self.summary.clone()),
                        Err(Stop::Failed(e)) => return Err(e),
                        Err(Stop::Stalled(why)) => {
                            // Never skip: wait for the query to be fixed (or removed) and try the
                            // same batch again.
                            tracing::error!(problem = %why, retry_in_s = stalled_wait.as_secs(),
                                "consumption stopped: a transform fails for every row; fix or remove the query file");
                            match self.land(shutdown).await {
                                Ok(_) | Err(Stop::Stalled(_)) => {}
                                Err(Stop::Shutdown) => return Ok(self.summary.clone()),
                                Err(Stop::Failed(e)) => return Err(e),
                            }
                            self.health.set("transform", Some(why));
                            tokio::select! {
                                _ = shutdown.cancelled() => return Ok(self.summary.clone()),
                                _ = tokio::time::sleep(stalled_wait) => {}
                            }
                            stalled_wait = (stalled_wait * 2).min(Duration::from_secs(30));
                            match self.reload_queries(shutdown).await {
                                Ok(()) | Err(Stop::Stalled(_)) => {}
                                Err(Stop::Shutdown) => return Ok(self.summary.clone()),
                                Err(Stop::Failed(e)) => return Err(e),
                            }
                        }
                    }
                }
            }
            if !self.behind() {
                // Caught up: a commit in flight lands now (its batch counts as done when it is).
                match self.drain(shutdown).await {
                    Ok(()) | Err(Stop::Stalled(_)) => {}
                    Err(Stop::Shutdown) => return Ok(self.summary.clone()),
                    Err(Stop::Failed(e)) => return Err(e),
                }
            }
            if end == BatchEnd::Idle {
                // Offsets without a message at a partition's end (a transaction's marker).
                match self.mind_the_end(shutdown).await {
                    Ok(()) | Err(Stop::Stalled(_)) => {}
                    Err(Stop::Shutdown) => return Ok(self.summary.clone()),
                    Err(Stop::Failed(e)) => return Err(e),
                }
            }
            if !self.ahead.has_batch() {
                // No batch waiting to overlap with: points still being written land now, and
                // their batches count as done (a batch that kept no message, or a topic going
                // quiet, never leaves them pending).
                match self.settle_points().await {
                    Ok(()) | Err(Stop::Stalled(_)) => {}
                    Err(Stop::Shutdown) => return Ok(self.summary.clone()),
                    Err(Stop::Failed(e)) => return Err(e),
                }
            }
            if matches!(end, BatchEnd::SourceExhausted | BatchEnd::Shutdown)
                || shutdown.is_cancelled()
            {
                break;
            }
            if self.options.reload_queries {
                match self.reload_queries(shutdown).await {
                    Ok(()) | Err(Stop::Stalled(_)) => {}
                    Err(Stop::Shutdown) => break,
                    Err(Stop::Failed(e)) => return Err(e),
                }
            }
        }
        Ok(self.summary.clone())
    }

    async fn reload_queries(&mut self, shutdown: &CancellationToken) -> Result<(), Stop> {
        let started = self
            .queries
            .reload(&self.options, &self.metrics, &self.health)
            .await;
        if started.is_empty()
            && self.book.owned.values().all(|o| {
                o.windows
                    .queries
                    .keys()
                    .all(|k| self.queries.windows.contains_key(k))
            })
        {
            return Ok(());
        }
        // Seeding reads the lake: the commit in flight lands first. The windows a close held
        // for the next commit may be of a query version that stops now: their points land,
        // and the hold ends.
        self.land(shutdown).await?;
        self.settle_points().await?;
        for o in self.book.owned.values_mut() {
            o.held = None;
        }
        // State of a removed or another version of a query is not reused; a new or changed
        // windowed query fills its open windows from the lake.
        let live = self.queries.window_keys();
        let owned: Vec<TopicPartition> = self.book.owned.keys().cloned().collect();
        for o in self.book.owned.values_mut() {
            o.windows
                .queries
                .retain(|k, _| live.contains(k) && !started.contains(k));
        }
        for key in started {
            self.to_seed
                .entry(key)
                .or_default()
                .extend(owned.iter().cloned());
        }
        let wanted = std::mem::take(&mut self.to_seed);
        self.seed(wanted, shutdown).await
    }

    /// Apply ownership changes: drop revoked partitions' state, load assigned ones (and rewrite
    /// the points of their open windows). Returns the partitions revoked now.
    async fn apply_events(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<HashSet<TopicPartition>, Stop> {
        if self.source.has_events() {
            // Ownership moves: the commit in flight lands under the ownership it was made for.
            self.land(shutdown).await?;
        }
        let mut revoked_now = HashSet::new();
        let mut loaded = Vec::new();
        for event in self.source.take_events() {
            match event {
                SourceEvent::Revoked(tps) => {
                    for tp in tps {
                        tracing::info!(partition = %tp, "partition revoked");
                        self.book.owned.remove(&tp);
                        self.compactor.forget(&tp);
                        self.health.forget(&tp.topic, tp.partition);
                        self.book.revoked.insert(tp.clone());
                        revoked_now.insert(tp);
                    }
                }
                SourceEvent::Assigned(tps) => {
                    // Messages of these partitions read ahead before the assignment: the
                    // source reads them again from the committed position.
                    let fresh: HashSet<TopicPartition> = tps.iter().cloned().collect();
                    let dropped = self.ahead.forget(&fresh);
                    if dropped > 0 {
                        tracing::info!(
                            messages = dropped,
                            "messages read ahead before a partition assignment dropped; they are read again"
                        );
                    }
                    for tp in tps {
                        tracing::info!(partition = %tp, "partition assigned");
                        self.book.revoked.remove(&tp);
                        self.book.owned.remove(&tp);
                        self.ensure_loaded(&tp, shutdown).await?;
                        loaded.push(tp);
                    }
                }
            }
        }
        if !loaded.is_empty() {
            self.heal(&loaded, shutdown).await?;
        }
        if !self.to_seed.is_empty() {
            let wanted = std::mem::take(&mut self.to_seed);
            self.seed(wanted, shutdown).await?;
        }
        Ok(revoked_now)
    }

    /// Load a partition's ledger and window state, once per ownership.
    async fn ensure_loaded(
        &mut self,
        tp: &TopicPartition,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        if self.book.owned.contains_key(tp) {
            return Ok(());
        }
        let ledger = self.sinks.lake.ledger().clone();
        let timeout = self.options.lake_timeout;
        let (metrics, health) = (&self.metrics, &self.health);
        let loaded = retry_reporting(
            "lake ledger load",
            &self.options.backoff,
            shutdown,
            |e: &LedgerError| {
                metrics.error("lake");
                if e.is_transient() {
                    health.set("lake", Some(e.to_string()));
                }
            },
            || {
                let ledger = ledger.clone();
                let tp = tp.clone();
                async move { with_timeout(timeout, &tp.to_string(), ledger.load(&tp)).await }
            },
        )
        .await;
        let (ledger, entry) = match loaded {
            Ok(l) => l,
            Err(RetryError::Permanent(e)) => return Err(Stop::Failed(LakeError::from(e).into())),
            Err(RetryError::Shutdown(_)) => return Err(Stop::Shutdown),
        };
        self.health.set("lake", None);
        let mut windows = PartitionWindows::default();
        let committed: Vec<String> = entry
            .as_ref()
            .map(|e| e.windows.keys().cloned().collect())
            .unwrap_or_default();
        if let Some(entry) = &entry {
            for (key, blob) in &entry.windows {
                let Some(w) = self.queries.windows.get(key) else {
                    continue;
                };
                if w.fingerprint != blob.fingerprint {
                    tracing::info!(partition = %tp, query = %key,
                        "the committed window state belongs to another version of the query; starting it over");
                    continue;
                }
                match QueryState::from_blob(&w.query, blob) {
                    Ok(state) => {
                        windows.queries.insert(key.clone(), state);
                    }
                    Err(e) => {
                        tracing::warn!(partition = %tp, query = %key, error = %e,
                            "cannot read the committed window state; starting it over")
                    }
                }
            }
        }
        let progress = entry
            .as_ref()
            .map(|e| e.progress.clone())
            .unwrap_or_default();
        // A windowed query the commit knew nothing of (new, or of another version) fills its
        // open windows from the lake.
        if ledger.seq > 0 {
            for key in self.queries.windows.keys() {
                if !windows.queries.contains_key(key) || !committed.contains(key) {
                    self.to_seed
                        .entry(key.clone())
                        .or_default()
                        .push(tp.clone());
                }
            }
        }
        self.book.observed.remove(tp);
        self.book.owned.insert(
            tp.clone(),
            Owned {
                ledger,
                progress,
                windows,
                next_processed: None,
                epoch: Owned::next_epoch(),
                held: None,
                holes: Default::default(),
            },
        );
        // Is it still the topic the ledger recorded?
        self.refresh_view().await;
        self.check_topic_id(tp)?;
        if let Some(o) = self.book.owned.get(tp) {
            tracing::info!(partition = %tp, lake_next_offset = o.ledger.next_offset, seq = o.ledger.seq,
                windows = o.windows.rows(), "partition ready");
            self.health
                .own(&tp.topic, tp.partition, Some(o.ledger.next_offset));
        }
        Ok(())
    }

    /// Another writer moved `tp`'s ledger on: load the partition again (its ledger and window
    /// state as now committed) and rewrite its open windows' points.
    async fn reload_fenced(
        &mut self,
        tp: &TopicPartition,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        self.book.owned.remove(tp);
        self.ensure_loaded(tp, shutdown).await?;
        self.heal(std::slice::from_ref(tp), shutdown).await
    }

    /// The topic's id changed under a partition: refuse, or start a new ledger (by policy).
    fn check_topic_id(&mut self, tp: &TopicPartition) -> Result<(), Stop> {
        let Some(now) = self.book.view.ids.get(&tp.topic).cloned() else {
            return Ok(());
        };
        let Some(owned) = self.book.owned.get_mut(tp) else {
            return Ok(());
        };
        match owned.ledger.topic_id.clone() {
            Some(was) if was != now && owned.ledger.seq > 0 => match self.options.on_new_topic {
                OnNewTopic::Refuse => {
                    let e = PipelineError::TopicChanged {
                        tp: tp.clone(),
                        was,
                        now,
                    };
                    self.health.set("source", Some(e.to_string()));
                    Err(Stop::Failed(e))
                }
                OnNewTopic::NewLedger => {
                    tracing::warn!(partition = %tp, was = %was, now = %now,
                        "the topic id changed: starting a new ledger for the new topic at offset 0 (lake.on_new_topic = new-ledger)");
                    owned.ledger.next_offset = 0;
                    owned.ledger.topic_id = Some(now);
                    owned.progress = Default::default();
                    owned.windows = PartitionWindows::default();
                    owned.held = None;
                    owned.next_processed = None;
                    Ok(())
                }
            },
            _ => {
                owned.ledger.topic_id = Some(now);
                Ok(())
            }
        }
    }
}

/// Run a storage operation with a time limit; a timeout is a transient store error.
pub(crate) async fn with_timeout<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, LedgerError>>,
) -> Result<T, LedgerError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(LedgerError::Store {
            path: what.to_string(),
            source: object_store::Error::Generic {
                store: "lake",
                source: format!("no answer within {}s (lake.timeout)", limit.as_secs()).into(),
            },
        }),
    }
}

/// Which windows of which queries to rewrite.
pub(crate) type WindowSet = BTreeMap<String, BTreeSet<i64>>;
