//! Backfills of lake datasets, recorded beside the ledger.
//!
//! A `carflow backfill` of a `lake.*` query writes the offsets its dataset does not hold (see
//! [`coverage`](super::coverage)) and commits them as one record
//! `<lake>/_carflow/backfill/<dataset>/<seq>.json`: which offsets of which partition it wrote and
//! the files it made visible. Like a ledger entry, a record is staged with its files (under
//! `_carflow/backfill-staging/<dataset>/<run>/`), published with rename-if-absent (the commit
//! point: two backfills of one dataset cannot both commit the same step, and the loser publishes
//! nothing) and its files renamed into place afterwards; readers and the next backfill finish the
//! renames of a record whose writer died in between. Records are never pruned: together with the
//! ledger's coverage they are what the dataset holds.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::{FileMove, LedgerError, OffsetLedger, store_err};
use crate::storage::Location;

/// Staged files of a backfill that never committed are removed by a later backfill once nothing
/// was written to them for this long (a running backfill stages files steadily).
const ABANDONED_AFTER: chrono::Duration = chrono::Duration::hours(6);

/// One committed backfill of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillRecord {
    /// Position in the dataset's records, from 1.
    pub seq: u64,
    /// The dataset.
    pub dataset: String,
    /// The query file that computed it.
    pub query: String,
    /// The query's fingerprint.
    pub fingerprint: String,
    /// Per partition (`<topic>/<partition>` as in the ledger), the offsets `[from, to)` written.
    pub offsets: BTreeMap<String, Vec<(i64, i64)>>,
    /// Rows written.
    pub rows: u64,
    /// The files made visible.
    pub files: Vec<FileMove>,
    /// Which process wrote it.
    pub writer: String,
    /// When, in milliseconds since the epoch.
    pub committed_at_ms: i64,
}

/// The backfill records of one dataset.
#[derive(Debug, Clone)]
pub struct Backfills {
    ledger: OffsetLedger,
    dataset: String,
}

impl Backfills {
    /// The records of `dataset` in the lake of `ledger`.
    pub fn new(ledger: OffsetLedger, dataset: &str) -> Self {
        Self {
            ledger,
            dataset: dataset.to_string(),
        }
    }

    fn location(&self) -> &Location {
        self.ledger.location()
    }

    fn store(&self) -> &std::sync::Arc<dyn ObjectStore> {
        &self.location().store
    }

    fn dir(&self) -> Path {
        self.location().path(&["_carflow/backfill", &self.dataset])
    }

    /// Where the run `run` stages its files.
    pub fn staging(&self, run: &str) -> Path {
        self.location()
            .path(&["_carflow/backfill-staging", &self.dataset, run])
    }

    /// Every committed record, by sequence number.
    pub async fn records(&self) -> Result<Vec<BackfillRecord>, LedgerError> {
        let dir = self.dir();
        let listed = match self.store().list_with_delimiter(Some(&dir)).await {
            Ok(l) => l.objects,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(store_err(&dir)(e)),
        };
        let mut out = Vec::new();
        for m in listed {
            if !m.location.filename().is_some_and(|f| f.ends_with(".json")) {
                continue;
            }
            let bytes = self
                .store()
                .get(&m.location)
                .await
                .map_err(store_err(&m.location))?
                .bytes()
                .await
                .map_err(store_err(&m.location))?;
            let r: BackfillRecord =
                serde_json::from_slice(&bytes).map_err(|source| LedgerError::Corrupt {
                    path: m.location.to_string(),
                    source,
                })?;
            out.push(r);
        }
        out.sort_by_key(|r| r.seq);
        Ok(out)
    }

    /// Stage `bytes` as file `i` of run `run`; returns its staged path.
    pub async fn stage_file(
        &self,
        run: &str,
        i: usize,
        bytes: bytes::Bytes,
    ) -> Result<String, LedgerError> {
        let path = self.staging(run).join(format!("{i:06}.parquet"));
        self.store()
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(store_err(&path))?;
        Ok(path.to_string())
    }

    /// Commit `record` (its files staged under [`Self::staging`] of `run`): rename-if-absent of
    /// its record, then its files into place. Another backfill that committed this step first
    /// wins: the run's files are discarded and [`LedgerError::BackfillRace`] returned.
    pub async fn publish(&self, run: &str, record: &BackfillRecord) -> Result<(), LedgerError> {
        let staging = self.staging(run);
        let staged = staging.clone().join("_record.json");
        let body = serde_json::to_vec_pretty(record).map_err(|source| LedgerError::Corrupt {
            path: staged.to_string(),
            source,
        })?;
        self.store()
            .put(&staged, PutPayload::from(body))
            .await
            .map_err(store_err(&staged))?;
        let path = self.dir().join(format!("{:020}.json", record.seq));
        if let Err(source) = self.store().rename_if_not_exists(&staged, &path).await {
            if matches!(source, object_store::Error::AlreadyExists { .. })
                || self.store().head(&path).await.is_ok()
            {
                self.discard(&staging).await;
                self.remove_staging_chain(&staging).await;
                return Err(LedgerError::BackfillRace {
                    dataset: self.dataset.clone(),
                    seq: record.seq,
                });
            }
            return Err(LedgerError::Store {
                path: path.to_string(),
                source,
            });
        }
        self.ledger.finish_moves(&record.files).await?;
        self.remove_staging_chain(&staging).await;
        Ok(())
    }

    /// Finish the renames of committed records whose writer stopped before them; returns how
    /// many files were moved.
    pub async fn roll_forward(&self) -> Result<usize, LedgerError> {
        let mut moved = 0;
        for r in self.records().await? {
            let mut pending = Vec::new();
            for f in &r.files {
                let staged = Path::from(f.staged.as_str());
                if self.store().head(&staged).await.is_ok() {
                    pending.push(f.clone());
                }
            }
            if !pending.is_empty() {
                tracing::info!(dataset = %self.dataset, seq = r.seq, files = pending.len(),
                    "finishing a backfill whose writer stopped before its renames");
                self.ledger.finish_moves(&pending).await?;
                moved += pending.len();
                if let Some(dir) = pending
                    .first()
                    .and_then(|f| f.staged.rsplit_once('/').map(|(d, _)| Path::from(d)))
                {
                    self.remove_staging_chain(&dir).await;
                }
            }
        }
        Ok(moved)
    }

    /// Remove staged runs that never committed and wrote nothing for [`ABANDONED_AFTER`]
    /// (`keep` is the caller's own run). Returns how many runs were removed.
    pub async fn sweep_abandoned(&self, keep: &str) -> Result<usize, LedgerError> {
        let root = self
            .location()
            .path(&["_carflow/backfill-staging", &self.dataset]);
        let runs = match self.store().list_with_delimiter(Some(&root)).await {
            Ok(l) => l.common_prefixes,
            Err(object_store::Error::NotFound { .. }) => return Ok(0),
            Err(e) => return Err(store_err(&root)(e)),
        };
        let committed: Vec<String> = self
            .records()
            .await?
            .iter()
            .flat_map(|r| r.files.iter().map(|f| f.staged.clone()))
            .collect();
        let cutoff = chrono::Utc::now() - ABANDONED_AFTER;
        let mut removed = 0;
        for run in runs {
            if run.filename() == Some(keep) {
                continue;
            }
            let files: Vec<_> = self
                .store()
                .list(Some(&run))
                .try_collect()
                .await
                .unwrap_or_default();
            let fresh = files.iter().any(|f| f.last_modified > cutoff);
            let referenced = files
                .iter()
                .any(|f| committed.contains(&f.location.to_string()));
            if fresh || referenced {
                continue;
            }
            tracing::info!(path = %run, "removing an abandoned backfill's staged files");
            self.discard(&run).await;
            removed += 1;
        }
        Ok(removed)
    }

    /// Remove a run's (empty) staging directory, then the dataset's and the area's when empty
    /// (a non-recursive delete: another run's files are never touched).
    async fn remove_staging_chain(&self, run: &Path) {
        let _ = self.location().delete_dir(run).await;
        let dataset = self
            .location()
            .path(&["_carflow/backfill-staging", &self.dataset]);
        if self.location().delete_dir(&dataset).await.is_ok() {
            let area = self.location().path(&["_carflow/backfill-staging"]);
            let _ = self.location().delete_dir(&area).await;
        }
    }

    async fn discard(&self, dir: &Path) {
        self.ledger.discard_staging(dir).await;
    }

    /// Every dataset that has backfill records.
    pub async fn datasets(ledger: &OffsetLedger) -> Result<Vec<String>, LedgerError> {
        let root = ledger.location().path(&["_carflow/backfill"]);
        match ledger
            .location()
            .store
            .list_with_delimiter(Some(&root))
            .await
        {
            Ok(l) => Ok(l
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename().map(str::to_string))
                .collect()),
            Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(store_err(&root)(e)),
        }
    }
}
