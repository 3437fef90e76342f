//! Configuration: a TOML file, then the environment, then validation that lists every problem.
//!
//! Every key has a default that runs the embedded demo, so an empty file is a valid config.
//! Every key can be overridden by an environment variable named after its path:
//! `kafka.brokers` → `CARFLOW_KAFKA_BROKERS`, `batch.linger` → `CARFLOW_BATCH_LINGER`. Durations
//! are written as `250ms`, `1s`, `4m`, `1h`. Unknown keys are errors (a typo must not silently
//! fall back to a default). Secrets (`influx.token`, `api.token`) never appear in `Debug` output
//! or logs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written for people: `500ms`, `1s`, `4m`, `1h`, `2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Parse `500ms`, `1s`, `1.5s`, `4m`, `1h`, `2d`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration; write e.g. 500ms, 1s, 4m, 1h"))?;
        let scale = match unit.trim() {
            "ms" => 0.001,
            "s" | "" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            other => {
                return Err(format!(
                    "unknown duration unit `{other}` in `{s}`; use ms, s, m, h or d"
                ));
            }
        };
        Ok(Self(Duration::from_secs_f64(n * scale)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            0 => write!(f, "0s"),
            ms if ms % 3_600_000 == 0 => write!(f, "{}h", ms / 3_600_000),
            ms if ms % 60_000 == 0 => write!(f, "{}m", ms / 60_000),
            ms if ms % 1000 == 0 => write!(f, "{}s", ms / 1000),
            ms => write!(f, "{ms}ms"),
        }
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Every default that docs, messages and more than one component refer to, in one place.
pub mod defaults {
    /// `batch.max_rows`: close a batch at this many messages.
    pub const BATCH_MAX_ROWS: usize = 50_000;
    /// `generator.seed`: the same seed gives the same transactions.
    pub const GENERATOR_SEED: u64 = 42;
    /// `generator.mean_per_hour`: transactions per hour of event time (the simulated business).
    pub const GENERATOR_MEAN_PER_HOUR: f64 = 30_000.0;
    /// `generator.start`: event time of the first generated transaction (2026-01-01T00:00:00Z).
    pub const GENERATOR_START_MS: i64 = 1_767_225_600_000;
    /// `generator.rate`: transactions per second of wall time.
    pub const GENERATOR_RATE: f64 = 2000.0;
    /// `events.min_time`: the earliest accepted `sold_at` (2000-01-01T00:00:00Z).
    pub const EVENTS_MIN_TIME_MS: i64 = 946_684_800_000;
    /// `windows.max_rows`: rows of open-window state before the oldest windows close early.
    pub const WINDOWS_MAX_ROWS: usize = 2_000_000;
}

/// A point in time written as RFC 3339 (`2026-01-01T00:00:00Z`, any offset), held in
/// milliseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Milliseconds since the epoch.
    pub fn ms(self) -> i64 {
        self.0
    }
}

impl std::str::FromStr for Timestamp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        chrono::DateTime::parse_from_rfc3339(s.trim())
            .map(|t| Self(t.timestamp_millis()))
            .map_err(|_| format!("`{s}` is not an RFC 3339 time; write e.g. 2026-01-01T00:00:00Z"))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match chrono::DateTime::from_timestamp_millis(self.0) {
            Some(t) => write!(
                f,
                "{}",
                t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            ),
            None => write!(f, "{} ms", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a consumer group with no committed offset starts reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// The oldest message the topic still holds.
    #[default]
    Earliest,
    /// Only messages produced after the engine joins.
    Latest,
}

impl StartFrom {
    /// librdkafka's `auto.offset.reset` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Earliest => "earliest",
            Self::Latest => "latest",
        }
    }
}

/// A secret string: shown as `***` by `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            write!(f, "\"\"")
        } else {
            write!(f, "***")
        }
    }
}

/// Where the pipeline reads from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A Kafka consumer group (`[kafka]`).
    Kafka,
    /// The built-in generator (`[generator]`), in process.
    #[default]
    Generator,
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `kafka` or `generator`. Default: `generator` (the embedded demo).
    pub source: SourceKind,
    /// The Kafka consumer.
    pub kafka: KafkaConfig,
    /// The built-in generator.
    pub generator: GeneratorSettings,
    /// Micro-batch limits.
    pub batch: BatchConfig,
    /// The SQL transforms.
    pub queries: QueriesConfig,
    /// Reference tables the queries can JOIN.
    pub reference: ReferenceConfig,
    /// The Parquet lake.
    pub lake: LakeConfig,
    /// The Influx sink.
    pub influx: InfluxConfig,
    /// Event-time windows for Influx aggregates.
    pub windows: WindowsConfig,
    /// Which event times are accepted.
    pub events: EventsConfig,
    /// The engine's own HTTP endpoint (`/metrics`, `/health`).
    pub http: HttpConfig,
    /// The HTTP intake service (`carflow api`).
    pub api: ApiConfig,
}

/// `[kafka]`
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers. Default `127.0.0.1:9092`.
    pub brokers: String,
    /// Topic of car transactions. Default `car-transactions-logs`.
    pub topic: String,
    /// Consumer group: engines with the same group share the partitions. Default `carflow`.
    pub group_id: String,
    /// Where a group with no committed offset starts: `earliest` or `latest`. Default `earliest`.
    pub start_from: StartFrom,
    /// Extra librdkafka properties, e.g. `"fetch.max.bytes" = "52428800"`.
    pub properties: std::collections::BTreeMap<String, String>,
}

/// Is a librdkafka property a secret (a password, key, token or credential)? Its value is never
/// logged nor printed.
pub fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "credential",
        "sasl.oauthbearer.config",
        "sasl.jaas",
    ]
    .iter()
    .any(|w| k.contains(w))
        || k.ends_with(".key")
        || k.contains("key.pem")
        || k.contains("keystore")
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: std::collections::BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let shown = if is_secret_property(k) && !v.is_empty() {
                    "***"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("group_id", &self.group_id)
            .field("start_from", &self.start_from)
            .field("properties", &properties)
            .finish()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "car-transactions-logs".into(),
            group_id: "carflow".into(),
            start_from: StartFrom::Earliest,
            properties: Default::default(),
        }
    }
}

/// `[generator]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeneratorSettings {
    /// Seed: the same seed gives the same transactions. Default [`defaults::GENERATOR_SEED`].
    pub seed: u64,
    /// Transactions per second of wall time; 0 means as fast as possible. Default
    /// [`defaults::GENERATOR_RATE`].
    pub rate: f64,
    /// Stop after this many transactions; 0 means no limit. Default 0.
    pub count: u64,
    /// Average transactions per hour of event time (the simulated business). Default
    /// [`defaults::GENERATOR_MEAN_PER_HOUR`].
    pub mean_per_hour: f64,
    /// Event time of the first transaction (RFC 3339). Default `2026-01-01T00:00:00Z`
    /// ([`defaults::GENERATOR_START_MS`]).
    pub start: Timestamp,
}

impl Default for GeneratorSettings {
    fn default() -> Self {
        Self {
            seed: defaults::GENERATOR_SEED,
            rate: defaults::GENERATOR_RATE,
            count: 0,
            mean_per_hour: defaults::GENERATOR_MEAN_PER_HOUR,
            start: Timestamp(defaults::GENERATOR_START_MS),
        }
    }
}

/// `[batch]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Close a batch at this many messages. Default [`defaults::BATCH_MAX_ROWS`] (50000).
    pub max_rows: usize,
    /// Close a batch at this many payload bytes. Default 33554432 (32 MiB).
    pub max_bytes: usize,
    /// Close a batch this long after its first message. Default `1s`.
    pub linger: HumanDuration,
    /// Larger messages are dead letters. Default 1048576 (1 MiB).
    pub max_message_bytes: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_rows: defaults::BATCH_MAX_ROWS,
            max_bytes: 32 << 20,
            linger: HumanDuration(Duration::from_millis(1000)),
            max_message_bytes: 1 << 20,
        }
    }
}

/// `[queries]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueriesConfig {
    /// Directory of `.sql` transforms. Default `queries`.
    pub dir: PathBuf,
    /// Pick up added, changed and removed files while running. Default true.
    pub reload: bool,
}

impl Default for QueriesConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("queries"),
            reload: true,
        }
    }
}

/// `[reference]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReferenceConfig {
    /// Directory of reference tables: every `.csv` (with a header) and `.parquet` file is a
    /// table named after the file, reloaded when it changes. Default `reference`.
    pub dir: PathBuf,
}

impl Default for ReferenceConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("reference"),
        }
    }
}

/// What to do when the topic's Kafka id differs from the one the lake's ledger recorded (the
/// topic was deleted and created again, or the engine now reads a mirror on another cluster).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnNewTopic {
    /// Refuse to process the partition and say how to accept the new topic (the default: its
    /// offsets start again at 0 and would otherwise be skipped as replays, or duplicate rows).
    #[default]
    Refuse,
    /// Start a new ledger for the new topic at its first offset; what the lake holds stays.
    NewLedger,
}

/// `[lake]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LakeConfig {
    /// Root of the lake: `hdfs://host:port/path`, `file:///abs/path` or a local path.
    /// Default `./data/lake`.
    pub root: String,
    /// When the topic's id differs from the ledger's: `refuse` or `new-ledger`. Default `refuse`.
    pub on_new_topic: OnNewTopic,
    /// How long one storage operation (a commit's files, a ledger read) may take before it is
    /// counted as failed and retried. Default `20s`.
    pub timeout: HumanDuration,
    /// The dataset that keeps every transaction with its origin columns (`SELECT * … FROM
    /// transactions`): history for backfills, reconciles and new windowed queries. Default `cars`.
    pub raw_dataset: String,
    /// Merge a Kafka partition's small files in a lake directory into one once it has this many
    /// (each commit writes one file per dataset, directory and partition; merges keep a day's
    /// directory at tens of files instead of thousands). 0 turns merging off. Default 16.
    pub compact_files: usize,
    /// A merged file stays below this many bytes. A merge holds its sources and the merged file
    /// in memory, so this bounds what a merge adds to the engine's memory (about twice it).
    /// Default 33554432 (32 MiB).
    pub compact_bytes: u64,
    /// Merges come in rounds, at most one this often: a query running while a merge replaces
    /// files it listed fails with "not found" (and is right when run again), so merges are kept
    /// to one short moment a round. Default `60s`.
    pub compact_interval: HumanDuration,
    /// While a batch's commit goes on in the background, stage the next batch's commit (write
    /// its files and ledger entry to the staging area) before that commit has landed, and
    /// publish it once it landed as expected: on HDFS the two commits' waits for the namenode
    /// overlap. `false` stages each commit only after the previous one landed. Default `true`.
    pub prestage: bool,
}

impl Default for LakeConfig {
    fn default() -> Self {
        Self {
            root: "./data/lake".into(),
            on_new_topic: OnNewTopic::Refuse,
            timeout: HumanDuration(Duration::from_secs(20)),
            raw_dataset: "cars".into(),
            compact_files: 16,
            compact_bytes: 32 << 20,
            compact_interval: HumanDuration(Duration::from_secs(60)),
            prestage: true,
        }
    }
}

/// `[influx]`: either `url` (a server) or `file` (line protocol appended to a file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InfluxConfig {
    /// InfluxDB base URL, e.g. `http://127.0.0.1:8086`. Empty: write `file` instead. Default empty.
    pub url: String,
    /// Line-protocol file used when `url` is empty. Default `./data/metrics.lp`.
    pub file: PathBuf,
    /// Bucket (`db` or `db/rp` on InfluxDB 1.8). Default `carflow`.
    pub bucket: String,
    /// Organization (ignored by 1.8). Default `carflow`.
    pub org: String,
    /// Token: `user:password` on 1.8 with auth, an API token on 2.x. Default empty.
    pub token: Secret,
    /// Request timeout. Default `10s`.
    pub timeout: HumanDuration,
}

impl Default for InfluxConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            file: PathBuf::from("./data/metrics.lp"),
            bucket: "carflow".into(),
            org: "carflow".into(),
            token: Secret::default(),
            timeout: HumanDuration(Duration::from_secs(10)),
        }
    }
}

/// `[windows]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowsConfig {
    /// How late (in event time, behind the newest event of its partition) a transaction may
    /// arrive and still count in its window. Later ones are counted as late and kept in the
    /// lake. Default `4m` (the generator's jitter is at most 3m).
    pub allowed_lateness: HumanDuration,
    /// A partition without messages for this long no longer holds windows open. Default `30s`.
    pub idle_timeout: HumanDuration,
    /// At most this many partial-aggregate state rows (windows × groups × partitions) are kept
    /// for open windows; beyond it the oldest windows close early (counted). Default 2000000.
    pub max_rows: usize,
}

impl Default for WindowsConfig {
    fn default() -> Self {
        Self {
            allowed_lateness: HumanDuration(Duration::from_secs(240)),
            idle_timeout: HumanDuration(Duration::from_secs(30)),
            max_rows: defaults::WINDOWS_MAX_ROWS,
        }
    }
}

/// `[events]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// The earliest accepted `sold_at` (RFC 3339); earlier ones are dead letters.
    /// Default `2000-01-01T00:00:00Z` ([`defaults::EVENTS_MIN_TIME_MS`]).
    pub min_time: Timestamp,
    /// How far past the wall clock a `sold_at` may be (producer clocks ahead of ours); later
    /// ones are dead letters. Default `10m`.
    pub max_future: HumanDuration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            min_time: Timestamp(defaults::EVENTS_MIN_TIME_MS),
            max_future: HumanDuration(Duration::from_secs(600)),
        }
    }
}

impl EventsConfig {
    /// The earliest accepted event time in milliseconds.
    pub fn min_time_ms(&self) -> i64 {
        self.min_time.ms()
    }
}

/// `[http]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of `/metrics` and `/health`; empty turns it off. Default `127.0.0.1:9464`.
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// `[api]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address of the intake service. Default `127.0.0.1:8080`.
    pub listen: String,
    /// Bearer token for `POST /api/logs`; required when `listen` is not loopback. Default empty.
    pub token: Secret,
    /// Largest request body accepted. Default 8388608 (8 MiB).
    pub max_body_bytes: usize,
    /// Most records in flight to Kafka before intake answers 503. Default 10000.
    pub max_in_flight: usize,
    /// Most open `GET /api/stream_car_transactions` streams; beyond it 429 + `Retry-After`.
    /// Default 64.
    pub max_streams: usize,
    /// Most bytes of `POST /api/logs` bodies read or processed at once, over all requests; beyond
    /// it 503 + `Retry-After`. At least `max_body_bytes`. Default 67108864 (64 MiB).
    pub max_in_flight_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            token: Secret::default(),
            max_body_bytes: 8 << 20,
            max_in_flight: 10_000,
            max_streams: 64,
            max_in_flight_body_bytes: 64 << 20,
        }
    }
}

/// One thing wrong with a configuration: the key and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key, e.g. `batch.max_rows`.
    pub key: String,
    /// What is wrong and the fix.
    pub message: String,
}

/// A configuration that cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: {message}")]
    Read {
        /// File.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The file is not valid TOML for carflow (includes unknown keys, with line and column).
    #[error("config {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// Values that do not work.
    #[error("{}", format_problems(.0))]
    Invalid(Vec<Problem>),
}

fn format_problems(p: &[Problem]) -> String {
    let mut s = format!(
        "configuration has {} problem{}:",
        p.len(),
        if p.len() == 1 { "" } else { "s" }
    );
    for x in p {
        s.push_str(&format!("\n  {}: {}", x.key, x.message));
    }
    s
}

/// The environment-variable name of a key path: `batch.max_rows` → `CARFLOW_BATCH_MAX_ROWS`.
pub fn env_name(path: &str) -> String {
    format!("CARFLOW_{}", path.replace('.', "_").to_uppercase())
}

impl Config {
    /// Read `path` (if given), overlay the environment, and validate.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, |k| std::env::var(k).ok())
    }

    /// [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let (text, shown) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
                    path: p.to_path_buf(),
                    message: format!("{e} (create it, or copy deploy/carflow.toml)"),
                })?,
                p.to_path_buf(),
            ),
            None => (String::new(), PathBuf::from("<defaults>")),
        };
        let parse_err = |message: String| ConfigError::Parse {
            path: shown.clone(),
            message,
        };
        // Parse once as the typed config so errors (unknown keys, wrong types) carry line numbers.
        toml::from_str::<Config>(&text).map_err(|e| parse_err(e.to_string()))?;
        let mut value: toml::Table = toml::from_str(&text).map_err(|e| parse_err(e.to_string()))?;
        let defaults =
            toml::Table::try_from(Config::default()).map_err(|e| parse_err(e.to_string()))?;
        let mut problems = Vec::new();
        overlay_env(&mut value, &defaults, "", &env, &mut problems);
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        let config: Config = toml::Value::Table(value)
            .try_into()
            .map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Check values that parse but cannot work; list every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        let mut bad = |key: &str, message: String| {
            p.push(Problem {
                key: key.into(),
                message,
            })
        };
        if self.batch.max_rows == 0 {
            bad(
                "batch.max_rows",
                format!("must be at least 1 (default {})", defaults::BATCH_MAX_ROWS),
            );
        }
        if self.batch.max_bytes < 1024 {
            bad(
                "batch.max_bytes",
                "must be at least 1024 (default 33554432)".into(),
            );
        }
        if self.batch.linger.0.is_zero() || self.batch.linger.0 > Duration::from_secs(3600) {
            bad(
                "batch.linger",
                "must be between 1ms and 1h (default 1s)".into(),
            );
        }
        if self.batch.max_message_bytes == 0 {
            bad(
                "batch.max_message_bytes",
                "must be at least 1 (default 1048576)".into(),
            );
        }
        if self.source == SourceKind::Kafka {
            if self.kafka.brokers.trim().is_empty() {
                bad(
                    "kafka.brokers",
                    "is empty; set host:port of a broker, e.g. 127.0.0.1:9092".into(),
                );
            }
            if self.kafka.topic.trim().is_empty() {
                bad(
                    "kafka.topic",
                    "is empty; set the topic, e.g. car-transactions-logs".into(),
                );
            }
            if self.kafka.group_id.trim().is_empty() {
                bad(
                    "kafka.group_id",
                    "is empty; engines sharing a topic use one group id, e.g. carflow".into(),
                );
            }
        }
        if self.generator.rate < 0.0 || !self.generator.rate.is_finite() {
            bad(
                "generator.rate",
                "must be 0 (as fast as possible) or a positive rate per second".into(),
            );
        }
        if self.generator.mean_per_hour.is_nan() || self.generator.mean_per_hour <= 0.0 {
            bad(
                "generator.mean_per_hour",
                format!(
                    "must be positive (default {})",
                    defaults::GENERATOR_MEAN_PER_HOUR
                ),
            );
        }
        let root = self.lake.root.trim();
        if root.is_empty() {
            bad(
                "lake.root",
                "is empty; e.g. hdfs://127.0.0.1:9000/Cars or ./data/lake".into(),
            );
        } else if root.contains("://")
            && !root.starts_with("hdfs://")
            && !root.starts_with("file://")
        {
            bad(
                "lake.root",
                format!("`{root}`: use hdfs://host:port/path, file:///path or a local path"),
            );
        }
        if !self.influx.url.is_empty() {
            match url::Url::parse(&self.influx.url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => bad(
                    "influx.url",
                    format!(
                        "`{}` is not an http(s) URL; e.g. http://127.0.0.1:8086, or leave it empty to write influx.file",
                        self.influx.url
                    ),
                ),
            }
            if self.influx.bucket.is_empty() {
                bad(
                    "influx.bucket",
                    "is empty; the database (InfluxDB 1.8) or bucket (2.x), e.g. carflow".into(),
                );
            }
        } else if self.influx.file.as_os_str().is_empty() {
            bad(
                "influx.file",
                "is empty while influx.url is empty too; set one of them".into(),
            );
        }
        if self.windows.allowed_lateness.0 > Duration::from_secs(86_400) {
            bad(
                "windows.allowed_lateness",
                "must be at most 1d (default 4m)".into(),
            );
        }
        if self.lake.timeout.0 < Duration::from_secs(1) {
            bad("lake.timeout", "must be at least 1s (default 20s)".into());
        }
        if self.lake.compact_files == 1 {
            bad(
                "lake.compact_files",
                "is 1, which would merge a file with itself; use 0 (no merging) or 2 and up (default 16)".into(),
            );
        }
        if self.lake.compact_files > 1 && self.lake.compact_bytes < 1 << 20 {
            bad(
                "lake.compact_bytes",
                "must be at least 1048576 (1 MiB) when lake.compact_files merges (default 33554432)".into(),
            );
        }
        if self.windows.max_rows == 0 {
            bad(
                "windows.max_rows",
                "must be at least 1 (default 2000000)".into(),
            );
        }
        for (key, addr) in [
            ("http.listen", &self.http.listen),
            ("api.listen", &self.api.listen),
        ] {
            if !addr.is_empty() && addr.parse::<std::net::SocketAddr>().is_err() {
                bad(key, format!("`{addr}` is not ip:port; e.g. 127.0.0.1:9464"));
            }
        }
        if let Ok(addr) = self.api.listen.parse::<std::net::SocketAddr>()
            && !addr.ip().is_loopback()
            && self.api.token.0.is_empty()
        {
            bad(
                "api.token",
                format!(
                    "is required when api.listen ({addr}) is not a loopback address; set CARFLOW_API_TOKEN"
                ),
            );
        }
        if self.api.max_streams == 0 {
            bad("api.max_streams", "must be at least 1 (default 64)".into());
        }
        if self.api.max_in_flight_body_bytes < self.api.max_body_bytes {
            bad(
                "api.max_in_flight_body_bytes",
                format!(
                    "must be at least api.max_body_bytes ({}) (default 67108864)",
                    self.api.max_body_bytes
                ),
            );
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(p))
        }
    }

    /// The configuration as TOML, with secrets redacted (for `carflow check --print-config`).
    pub fn to_redacted_toml(&self) -> String {
        let mut c = self.clone();
        for s in [&mut c.influx.token, &mut c.api.token] {
            if !s.0.is_empty() {
                s.0 = "***".into();
            }
        }
        for (k, v) in c.kafka.properties.iter_mut() {
            if is_secret_property(k) && !v.is_empty() {
                *v = "***".into();
            }
        }
        toml::to_string_pretty(&c).unwrap_or_default()
    }
}

/// Put `CARFLOW_…` values over `table` for every leaf key the defaults have.
fn overlay_env(
    table: &mut toml::Table,
    defaults: &toml::Table,
    prefix: &str,
    env: &impl Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    for (key, default) in defaults {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match default {
            toml::Value::Table(sub) => {
                if path == "kafka.properties" {
                    continue;
                }
                let entry = table
                    .entry(key.clone())
                    .or_insert_with(|| toml::Value::Table(Default::default()));
                if let toml::Value::Table(t) = entry {
                    overlay_env(t, sub, &path, env, problems);
                }
            }
            leaf => {
                let name = env_name(&path);
                let Some(raw) = env(&name) else { continue };
                let parsed = match leaf {
                    toml::Value::String(_) => Ok(toml::Value::String(raw.clone())),
                    toml::Value::Integer(_) => raw
                        .trim()
                        .parse()
                        .map(toml::Value::Integer)
                        .map_err(|_| "an integer"),
                    toml::Value::Float(_) => raw
                        .trim()
                        .parse()
                        .map(toml::Value::Float)
                        .map_err(|_| "a number"),
                    toml::Value::Boolean(_) => raw
                        .trim()
                        .parse()
                        .map(toml::Value::Boolean)
                        .map_err(|_| "true or false"),
                    _ => Err("a value of the documented type"),
                };
                match parsed {
                    Ok(v) => {
                        table.insert(key.clone(), v);
                    }
                    Err(want) => problems.push(Problem {
                        key: path.clone(),
                        message: format!("environment variable {name}=`{raw}` must be {want}"),
                    }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
