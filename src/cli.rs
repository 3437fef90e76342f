//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Streaming ETL for car-sale transactions: Kafka → SQL transforms (DataFusion) → a Hive-partitioned
/// Parquet lake (HDFS or local) + InfluxDB for Grafana.
#[derive(Debug, Parser)]
#[command(name = "carflow", version, about, long_about = None, after_help = "\
Start here:
  carflow demo --duration 20s         the whole job on this machine, nothing installed
  carflow sql -c \"SELECT brand, count(*) FROM cars GROUP BY brand\"
  carflow check --config deploy/carflow.toml
  carflow run --config deploy/carflow.toml   real Kafka → HDFS + InfluxDB

Transforms are the .sql files in queries/ (INSERT INTO lake.<dataset> | influx.<measurement> SELECT … FROM transactions).
Every config key can be set from the environment: kafka.brokers → CARFLOW_KAFKA_BROKERS.")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Configuration file (TOML). Without one, the embedded defaults apply; see deploy/carflow.toml.
    #[arg(long, global = true, env = "CARFLOW_CONFIG")]
    pub config: Option<PathBuf>,
    /// More log output (-v: info, -vv: debug). CARFLOW_LOG=<filter> overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole job locally: built-in generator → engine → ./data/lake (Parquet) + ./data/metrics.lp.
    #[command(after_help = "\
The demo starts fresh: it replaces a previous demo's ./data/lake and metrics file.
Example:
  carflow demo --duration 20s --rate 5000 --seed 7
  carflow sql -c \"SELECT count(*) FROM cars\"")]
    Demo(DemoArgs),
    /// Query the lake with SQL: the DataFusion CLI with every dataset registered as a table.
    #[command(after_help = "\
Tables: one per dataset directory of the lake (cars, dead_letters, …); Hive partitions (dt=…) are columns.
The lake is lake.root of the config (default ./data/lake), or --lake.
Examples:
  carflow sql -c \"SELECT brand, avg(price) FROM cars WHERE dt = '2026-01-01' GROUP BY brand ORDER BY 2 DESC\"
  carflow sql --lake hdfs://127.0.0.1:9000/Cars -c \"SELECT reason, count(*) FROM dead_letters GROUP BY reason\"
  carflow sql                       (interactive; \\d lists tables, \\q quits)")]
    Sql(SqlArgs),
    /// Validate the configuration and every SQL file; exit non-zero with file:line on errors.
    Check(CheckArgs),
    /// Run the engine: the configured source (Kafka) → queries/*.sql → lake + InfluxDB, until stopped.
    #[command(after_help = "\
Serves /metrics (Prometheus) and /health on http.listen (default 127.0.0.1:9464).
Ctrl-C or SIGTERM finishes the batch in progress and commits it; kill -9 loses nothing either
(the next start replays from the committed offsets and the lake's ledger skips what it holds).
Example:
  carflow run --config deploy/carflow.toml")]
    Run(RunArgs),
    /// Produce generated transactions to Kafka (keyed by dealer), with a progress bar.
    #[command(after_help = "\
Example:
  carflow generate --count 200000                 as fast as possible
  carflow generate --duration 10m --rate 500      a steady stream
  carflow generate --duration 1h --rate 1000 --live   event times from the wall clock")]
    Generate(GenerateArgs),
    /// Run a query over the lake's history and write its output exactly as the stream would.
    #[command(after_help = "\
influx.* queries: runs the query over the lake's raw dataset (lake.raw_dataset, default cars) as
the stream saw it (late rows and rows the query refused are left out) and writes the same points
to [influx]. Idempotent: a point with the same series and time overwrites. Safe while `carflow
run` is live: for a windowed query only windows the live engine has closed (below the committed
closed boundary of its ledger) are written; open windows are the live engine's (a new query's open
windows are seeded from the lake when it starts).

lake.* queries: writes the dataset's rows for every Kafka offset it does not hold yet (the offsets
before the live engine started the query, per partition, as its ledger records), computed from the
raw dataset, in the stream's layout, as one commit: readers see all of it or none. Each offset
lands once: running it twice writes nothing the second time, and the live engine (which writes
from where it started the query) never overlaps it. --from/--to do not apply (a dataset is
backfilled whole); rows the query cannot process are counted and named in the summary.
Examples:
  carflow backfill queries/sales_by_color.sql --from 2026-01-01
  carflow backfill queries/sales_by_color.sql --from 2026-01-01 --to 2026-01-02T12:00:00Z --format json
  carflow backfill queries/expensive_cars.sql           (a lake.* query dropped into queries/)")]
    Backfill(BackfillArgs),
    /// Recompute every windowed influx.* query from the lake and compare with InfluxDB.
    #[command(after_help = "\
Prints the points that differ (missing, extra, wrong value) and exits 1 when there is a difference.
Only windows the live engine has closed are compared (--include-open for all).
--repair writes the missing and wrong points, deletes the extra ones, then compares again.
Examples:
  carflow reconcile --config deploy/carflow.toml
  carflow reconcile --from 2026-01-01 --to 2026-01-02 --repair
  carflow reconcile --query sales_by_brand --format json")]
    Reconcile(ReconcileArgs),
    /// Dead letters: list them, or replay the ones that decode now, exactly once.
    #[command(after_help = "\
Examples:
  carflow dead-letters list
  carflow dead-letters list --where \"reason LIKE '%sold_at%'\" --format json
  carflow dead-letters replay --where \"dt = '2026-11-30'\" --dry-run
  carflow dead-letters replay                       (back into kafka.topic)
  carflow dead-letters replay --to-topic car-transactions-replay
Only messages that did not decode are replayed (a row a transform refused is in the lake already).
Each is decoded again with the current rules: those that decode are produced to the topic (the engine
takes them into the lake and the windows), each at most once across runs and crashes; those that still
fail stay dead letters, and `list` shows why they fail now. The design is in README.md.")]
    DeadLetters(DeadLettersArgs),
    /// Serve the HTTP API: POST /api/logs → Kafka, GET /api/stream_car_transactions, /health, /metrics.
    #[command(after_help = "\
Listens on api.listen (default 127.0.0.1:8080); a non-loopback address needs api.token (CARFLOW_API_TOKEN),
which POST /api/logs and ?publish=true then require as `Authorization: Bearer <token>`.
Ctrl-C or SIGTERM: stop accepting, end open streams, finish requests in progress, flush the producer.
Examples:
  carflow api --config deploy/carflow.toml
  curl -N 'http://127.0.0.1:8080/api/stream_car_transactions?rate=5&count=20&seed=7'
  curl -N -H 'Accept: text/event-stream' 'http://127.0.0.1:8080/api/stream_car_transactions?rate=2'
  curl -H 'Content-Type: application/x-ndjson' --data-binary @sales.ndjson http://127.0.0.1:8080/api/logs
  curl http://127.0.0.1:8080/openapi.json")]
    Api(ApiArgs),
}

#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Address to listen on (default: api.listen).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Brokers (default: kafka.brokers).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Topic (default: kafka.topic).
    #[arg(long)]
    pub topic: Option<String>,
    /// How long Kafka has to acknowledge a record before the request answers 503 for it.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub delivery_timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Name of this engine in metrics and logs (default: hostname-pid).
    #[arg(long)]
    pub engine_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// How many transactions.
    #[arg(long)]
    pub count: Option<u64>,
    /// For how long (e.g. 30s, 10m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Transactions per second (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Generator seed (default: generator.seed of the config).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Event time of the first transaction, RFC 3339 (default: generator.start).
    #[arg(long)]
    pub start: Option<carflow_engine::config::Timestamp>,
    /// Average transactions per hour of event time (default: generator.mean_per_hour).
    #[arg(long, conflicts_with = "live")]
    pub mean_per_hour: Option<f64>,
    /// Event times from the wall clock (with a little out-of-order jitter), as a live web API
    /// would produce them: for dashboards and soak tests. Without it, event times are simulated
    /// from --start at --mean-per-hour (deterministic for a seed).
    #[arg(long, conflicts_with = "start")]
    pub live: bool,
    /// Brokers (default: kafka.brokers).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Topic (default: kafka.topic).
    #[arg(long)]
    pub topic: Option<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Stop after this long (e.g. 20s, 2m). Default: run until Ctrl-C or --count.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Transactions per second (0: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stop after this many transactions.
    #[arg(long)]
    pub count: Option<u64>,
    /// Seed of the generator: the same seed gives the same transactions.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where the lake goes.
    #[arg(long, default_value = "./data/lake")]
    pub lake: String,
    /// Where the line protocol goes.
    #[arg(long, default_value = "./data/metrics.lp")]
    pub metrics_file: PathBuf,
    /// Directory of .sql transforms.
    #[arg(long)]
    pub queries: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// Run this SQL and exit (repeatable).
    #[arg(short = 'c', long = "command")]
    pub command: Vec<String>,
    /// Run the SQL in this file and exit (repeatable).
    #[arg(short, long)]
    pub file: Vec<PathBuf>,
    /// The lake root (default: lake.root of the config, else ./data/lake).
    #[arg(long)]
    pub lake: Option<String>,
    /// Output format: table, csv, tsv, json, nd-json, automatic.
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Print only results (no timing lines).
    #[arg(long)]
    pub quiet: bool,
}

/// Output format of the history commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For a person: a progress bar on a terminal, then a summary.
    Text,
    /// One JSON document on stdout, for scripts.
    Json,
}

/// Options shared by backfill and reconcile.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// From this event time (2026-01-01, 2026-01-01T10:00:00Z); default: the lake's oldest.
    #[arg(long)]
    pub from: Option<String>,
    /// Up to this event time, exclusive; default: the closed boundary of the live engine.
    #[arg(long)]
    pub to: Option<String>,
    /// Also windows the live engine has not closed yet (they may still change).
    #[arg(long)]
    pub include_open: bool,
    /// The lake root (default: lake.root of the config).
    #[arg(long)]
    pub lake: Option<String>,
    /// text or json.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// The query file (INSERT INTO influx.<measurement> or lake.<dataset> … FROM transactions).
    pub file: PathBuf,
    /// lake.*: show what would be written (offsets per partition) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub range: HistoryArgs,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Directory of .sql transforms (default: queries.dir of the config).
    #[arg(long)]
    pub queries: Option<PathBuf>,
    /// Only these measurements (repeatable; default: every windowed influx.* query).
    #[arg(long = "query")]
    pub only: Vec<String>,
    /// Write the missing and wrong points, delete the extra ones, and compare again.
    #[arg(long)]
    pub repair: bool,
    /// Print at most this many differences per measurement (text format).
    #[arg(long, default_value = "20")]
    pub show: usize,
    #[command(flatten)]
    pub range: HistoryArgs,
}

#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    #[command(subcommand)]
    pub command: DeadLettersCommand,
}

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// List dead letters with their reason, origin and replay status.
    List(ListArgs),
    /// Replay the chosen dead letters that decode with the current rules, exactly once.
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Choose dead letters with a SQL condition over the dead_letters table (topic, partition,
    /// offset, reason, transform, payload_text, received_at, dt).
    #[arg(long = "where")]
    pub r#where: Option<String>,
    /// The lake root (default: lake.root of the config).
    #[arg(long)]
    pub lake: Option<String>,
    /// text or json.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Choose dead letters with a SQL condition over the dead_letters table (topic, partition,
    /// offset, reason, transform, payload_text, received_at, dt).
    #[arg(long = "where")]
    pub r#where: Option<String>,
    /// Produce to this topic (default: kafka.topic).
    #[arg(long)]
    pub to_topic: Option<String>,
    /// Say what would be replayed; produce and record nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The lake root (default: lake.root of the config).
    #[arg(long)]
    pub lake: Option<String>,
    /// text or json.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Directory of .sql transforms (default: queries.dir of the config).
    #[arg(long)]
    pub queries: Option<PathBuf>,
    /// Also print the effective configuration (secrets redacted).
    #[arg(long)]
    pub print_config: bool,
}

/// Parse `500ms`, `20s`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    carflow_engine::config::HumanDuration::parse(s).map(|d| d.0)
}
