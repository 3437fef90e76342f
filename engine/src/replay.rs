//! Replaying dead letters exactly once (`carflow dead-letters replay`).
//!
//! Only messages that did not decode (`transform IS NULL`) are replayed: a row a transform refused
//! is in the raw lake already. Each chosen message is decoded again with the current rules; the
//! ones that decode now are produced to the topic (the engine then takes them into the lake and
//! the windows exactly once, as any message); the ones that still fail are not produced and stay
//! dead letters, with the reason they fail for now recorded.
//!
//! **Exactly once, across crashes.** The replay ledger is beside the offset ledger, in
//! `_carflow/replay/`; every file is written under a temporary name and renamed (atomic on HDFS
//! and local disks). A run:
//! 1. finishes any earlier run that left an *intent* (below);
//! 2. chooses the dead letters not marked replayed by any *done* record;
//! 3. writes its intent `<run>.intent.json`: the origins it will produce and the target topic's
//!    end offsets before it produces anything;
//! 4. produces each message with the header `carflow-replay: <run> <topic>/<partition>/<offset>`
//!    (idempotent producer, every delivery awaited);
//! 5. writes `<run>.done.json` (origins produced, and the ones still failing with their reason),
//!    then deletes the intent.
//!
//! A crash before 3 produced nothing and marked nothing. A crash between 3 and 5 leaves an intent:
//! the next run reads the target topic from the intent's end offsets to its end and marks exactly
//! the origins whose header it finds (they are in Kafka, so in the pipeline); the others were not
//! produced and stay eligible. A crash after the done record only leaves an intent to delete. So
//! no replayed message is lost or produced twice. Two replays must not run at the same time
//! (a run refuses to start while another's intent is younger than a minute).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::storage::Location;

/// The header a replayed message carries.
pub const REPLAY_HEADER: &str = "carflow-replay";

/// Where a dead letter came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Origin {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

impl Origin {
    /// Parse `topic/partition/offset`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.rsplitn(3, '/');
        let offset = it.next()?.parse().ok()?;
        let partition = it.next()?.parse().ok()?;
        Some(Self {
            topic: it.next()?.to_string(),
            partition,
            offset,
        })
    }
}

/// One replay run, as recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayRecord {
    /// Run id.
    pub run: String,
    /// Where the messages went.
    pub to_topic: String,
    /// When it started (ms).
    pub started_ms: i64,
    /// The target topic's end offsets before anything was produced (intent).
    #[serde(default)]
    pub start_offsets: BTreeMap<i32, i64>,
    /// Intent: the origins to produce. Done: the origins produced.
    pub produced: Vec<Origin>,
    /// Origins that still do not decode, with why.
    #[serde(default)]
    pub still_failing: Vec<(Origin, String)>,
}

/// Errors of the replay ledger.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Storage failed.
    #[error("replay ledger at {path}: {source}")]
    Store {
        /// The path.
        path: String,
        /// The error.
        source: object_store::Error,
    },
    /// A record did not parse.
    #[error("replay record {path}: {message}")]
    Json {
        /// The path.
        path: String,
        /// The error.
        message: String,
    },
}

/// The replay ledger under a lake root.
pub struct ReplayLedger {
    location: Location,
}

fn store_err(path: &Path) -> impl Fn(object_store::Error) -> ReplayError + '_ {
    move |source| ReplayError::Store {
        path: path.to_string(),
        source,
    }
}

impl ReplayLedger {
    /// The ledger of the lake at `location`.
    pub fn new(location: Location) -> Self {
        Self { location }
    }

    fn dir(&self) -> Path {
        self.location.path(&["_carflow/replay"])
    }

    fn store(&self) -> &dyn ObjectStore {
        self.location.store.as_ref()
    }

    /// Every record: done ones and intents, by file name.
    async fn records(&self) -> Result<Vec<(String, ReplayRecord)>, ReplayError> {
        let dir = self.dir();
        let listed = match self.store().list_with_delimiter(Some(&dir)).await {
            Ok(l) => l.objects,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(store_err(&dir)(e)),
        };
        let mut out = Vec::new();
        for o in listed {
            let Some(name) = o.location.filename().map(str::to_string) else {
                continue;
            };
            if !name.ends_with(".json") {
                continue;
            }
            let bytes = self
                .store()
                .get(&o.location)
                .await
                .map_err(store_err(&o.location))?
                .bytes()
                .await
                .map_err(store_err(&o.location))?;
            let r: ReplayRecord =
                serde_json::from_slice(&bytes).map_err(|e| ReplayError::Json {
                    path: o.location.to_string(),
                    message: e.to_string(),
                })?;
            out.push((name, r));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Done records, oldest first.
    pub async fn done(&self) -> Result<Vec<ReplayRecord>, ReplayError> {
        Ok(self
            .records()
            .await?
            .into_iter()
            .filter(|(n, _)| n.ends_with(".done.json"))
            .map(|(_, r)| r)
            .collect())
    }

    /// Intents whose run has no done record.
    pub async fn pending(&self) -> Result<Vec<ReplayRecord>, ReplayError> {
        let all = self.records().await?;
        let done: BTreeSet<String> = all
            .iter()
            .filter(|(n, _)| n.ends_with(".done.json"))
            .map(|(_, r)| r.run.clone())
            .collect();
        Ok(all
            .into_iter()
            .filter(|(n, r)| n.ends_with(".intent.json") && !done.contains(&r.run))
            .map(|(_, r)| r)
            .collect())
    }

    /// Origins replayed already, and the latest reason of those that still failed.
    pub async fn state(&self) -> Result<(BTreeSet<Origin>, BTreeMap<Origin, String>), ReplayError> {
        let mut replayed = BTreeSet::new();
        let mut failing = BTreeMap::new();
        for r in self.done().await? {
            replayed.extend(r.produced);
            for (o, why) in r.still_failing {
                failing.insert(o, why);
            }
        }
        failing.retain(|o, _| !replayed.contains(o));
        Ok((replayed, failing))
    }

    /// Write `r` as `<run>.<kind>.json`, atomically (temporary name, then rename).
    async fn write(&self, r: &ReplayRecord, kind: &str) -> Result<(), ReplayError> {
        let body = serde_json::to_vec_pretty(r).map_err(|e| ReplayError::Json {
            path: r.run.clone(),
            message: e.to_string(),
        })?;
        let dir = self.dir();
        let tmp = Path::from(format!("{dir}/.{}.{kind}.json.tmp", r.run));
        let to = Path::from(format!("{dir}/{}.{kind}.json", r.run));
        self.store()
            .put(&tmp, PutPayload::from(body))
            .await
            .map_err(store_err(&tmp))?;
        self.store()
            .rename(&tmp, &to)
            .await
            .map_err(store_err(&to))?;
        Ok(())
    }

    /// Record the intent of a run (before producing anything).
    pub async fn write_intent(&self, r: &ReplayRecord) -> Result<(), ReplayError> {
        self.write(r, "intent").await
    }

    /// Record a run as done, then remove its intent.
    pub async fn write_done(&self, r: &ReplayRecord) -> Result<(), ReplayError> {
        self.write(r, "done").await?;
        let intent = Path::from(format!("{}/{}.intent.json", self.dir(), r.run));
        match self.store().delete(&intent).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(&intent)(e)),
        }
    }
}

/// A new run id: time and a random suffix (sorts by time).
pub fn run_id() -> String {
    let now = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{now}-{}", &rand[..8])
}

/// The value of the replay header for `origin` in `run`.
pub fn header_value(run: &str, origin: &Origin) -> String {
    format!("{run} {origin}")
}

/// Parse a replay header value into (run, origin).
pub fn parse_header(v: &[u8]) -> Option<(String, Origin)> {
    let s = std::str::from_utf8(v).ok()?;
    let (run, origin) = s.split_once(' ')?;
    Some((run.to_string(), Origin::parse(origin)?))
}

/// How long an intent is taken as a replay still running (not finished by the next one).
pub const RUNNING_FOR: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_and_headers_round_trip() {
        let o = Origin {
            topic: "car/tx".into(),
            partition: 2,
            offset: 42,
        };
        assert_eq!(Origin::parse(&o.to_string()), Some(o.clone()));
        let h = header_value("r1", &o);
        assert_eq!(parse_header(h.as_bytes()), Some(("r1".to_string(), o)));
    }

    #[tokio::test]
    async fn an_intent_stays_pending_until_its_run_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::open(dir.path().to_str().unwrap()).unwrap();
        let l = ReplayLedger::new(location);
        let o = Origin {
            topic: "t".into(),
            partition: 0,
            offset: 1,
        };
        let r = ReplayRecord {
            run: run_id(),
            to_topic: "t".into(),
            produced: vec![o.clone()],
            ..Default::default()
        };
        l.write_intent(&r).await.unwrap();
        assert_eq!(l.pending().await.unwrap().len(), 1);
        assert!(l.state().await.unwrap().0.is_empty());
        l.write_done(&r).await.unwrap();
        assert!(l.pending().await.unwrap().is_empty());
        assert!(l.state().await.unwrap().0.contains(&o));
    }
}
