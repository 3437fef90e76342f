//! The offset ledger: which Kafka offsets the lake already holds, kept beside the data.
//!
//! Each (topic, partition) has a log of small JSON entries under
//! `<lake>/_carflow/ledger/<topic>/<partition>/<seq>.json`. An entry says "everything of this
//! partition below `next_offset` is in the lake" and lists the files its commit made visible.
//! A commit is: stage the data files and the next entry under `_carflow/staging/` (at the same
//! time), move the entry into the ledger with rename-if-absent (the commit point), then rename the
//! staged files into their datasets. Because the entry's move fails when the entry exists, two processes that both think they own a partition (a zombie after a
//! rebalance) cannot both commit the same step: the loser gets [`LedgerError::Fenced`]. Loading a
//! partition finishes the renames of its latest entry (roll forward), so a crash anywhere in a
//! commit leaves either nothing visible or, after the next load, everything.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::storage::Location;

/// Name of a staged ledger entry inside its commit's staging directory.
const STAGED_ENTRY: &str = "_entry.json";

/// A ledger entry written to the staging area, waiting to be published.
#[derive(Debug, Clone)]
pub struct StagedEntry {
    entry: LedgerEntry,
    body: Vec<u8>,
    staged: Path,
    path: Path,
}

/// How many older ledger entries are kept behind the latest (for inspection; only the latest is read).
const KEEP_ENTRIES: u64 = 4;

/// Errors of the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Another writer committed this step first: this process no longer owns the partition.
    #[error(
        "ledger {topic}/{partition}: entry {seq} was written by another process (partition moved?)"
    )]
    Fenced {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The entry both tried to write.
        seq: u64,
    },
    /// Storage failed; the caller retries.
    #[error("ledger {path}: {source}")]
    Store {
        /// The path involved.
        path: String,
        /// The store's error.
        source: object_store::Error,
    },
    /// An entry could not be read.
    #[error("ledger {path}: corrupt entry: {source}")]
    Corrupt {
        /// The path involved.
        path: String,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// A staged file and where its commit makes it visible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMove {
    /// Where the file was written (not visible to readers).
    pub staged: String,
    /// Where it becomes visible.
    pub visible: String,
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Position in the partition's log, from 1.
    pub seq: u64,
    /// Every offset below this is in the lake.
    pub next_offset: i64,
    /// The files this commit made visible.
    pub files: Vec<FileMove>,
    /// Which process wrote it.
    pub writer: String,
    /// When, in milliseconds since the epoch.
    pub committed_at_ms: i64,
}

/// The ledger state of one partition, as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLedger {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Sequence number of the latest entry (0: none yet).
    pub seq: u64,
    /// Offsets below this are already in the lake; replays of them are skipped.
    pub next_offset: i64,
}

/// Reads and writes ledger entries under a lake root.
#[derive(Debug, Clone)]
pub struct OffsetLedger {
    location: Location,
    writer: String,
}

fn store_err(path: &Path) -> impl FnOnce(object_store::Error) -> LedgerError + '_ {
    move |source| LedgerError::Store {
        path: path.to_string(),
        source,
    }
}

/// A path segment safe for any store: the topic name with anything unusual replaced.
pub fn safe_segment(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl OffsetLedger {
    /// A ledger under `location`, writing as `writer` (unique per process run).
    pub fn new(location: Location, writer: impl Into<String>) -> Self {
        Self {
            location,
            writer: writer.into(),
        }
    }

    fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.location.store
    }

    fn entries_dir(&self, topic: &str, partition: i32) -> Path {
        self.location.path(&[
            "_carflow/ledger",
            &safe_segment(topic),
            &partition.to_string(),
        ])
    }

    fn entry_path(&self, topic: &str, partition: i32, seq: u64) -> Path {
        self.entries_dir(topic, partition)
            .join(format!("{seq:020}.json"))
    }

    /// Where files of commit `seq` are staged.
    pub fn staging_dir(&self, topic: &str, partition: i32, seq: u64) -> Path {
        self.location.path(&[
            "_carflow/staging",
            &safe_segment(topic),
            &partition.to_string(),
            &format!("{seq:020}-{}", self.writer),
        ])
    }

    /// The latest entry of a partition, if any.
    pub async fn latest(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<LedgerEntry>, LedgerError> {
        let dir = self.entries_dir(topic, partition);
        let metas: Vec<_> = self
            .store()
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(store_err(&dir))?;
        let Some(last) = metas
            .iter()
            .filter(|m| m.location.as_ref().ends_with(".json"))
            .max_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()))
        else {
            return Ok(None);
        };
        let bytes = self
            .store()
            .get(&last.location)
            .await
            .map_err(store_err(&last.location))?
            .bytes()
            .await
            .map_err(store_err(&last.location))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| LedgerError::Corrupt {
                path: last.location.to_string(),
                source,
            })
    }

    /// Take ownership of a partition: read its latest entry and finish that entry's renames.
    pub async fn load(
        &self,
        topic: &Arc<str>,
        partition: i32,
    ) -> Result<PartitionLedger, LedgerError> {
        let latest = self.latest(topic, partition).await?;
        if let Some(entry) = &latest {
            self.finish_moves(&entry.files).await?;
        }
        let seq = latest.as_ref().map_or(0, |e| e.seq);
        self.remove_orphans(topic, partition, seq).await?;
        Ok(PartitionLedger {
            topic: Arc::clone(topic),
            partition,
            seq: latest.as_ref().map_or(0, |e| e.seq),
            next_offset: latest.as_ref().map_or(0, |e| e.next_offset),
        })
    }

    /// Commit: create entry `ledger.seq + 1` recording `next_offset` and `files`, then make the
    /// files visible. On success `ledger` is advanced.
    pub async fn commit(
        &self,
        ledger: &mut PartitionLedger,
        next_offset: i64,
        files: Vec<FileMove>,
    ) -> Result<(), LedgerError> {
        let entry = self.next_entry(ledger, next_offset, files)?;
        self.stage_entry(&entry).await?;
        self.publish(ledger, entry).await
    }

    /// The entry that commits `files` as the next step of `ledger` (not written yet).
    pub fn next_entry(
        &self,
        ledger: &PartitionLedger,
        next_offset: i64,
        files: Vec<FileMove>,
    ) -> Result<StagedEntry, LedgerError> {
        let seq = ledger.seq + 1;
        let entry = LedgerEntry {
            seq,
            next_offset,
            files,
            writer: self.writer.clone(),
            committed_at_ms: chrono::Utc::now().timestamp_millis(),
        };
        let path = self.entry_path(&ledger.topic, ledger.partition, seq);
        let body = serde_json::to_vec_pretty(&entry).map_err(|source| LedgerError::Corrupt {
            path: path.to_string(),
            source,
        })?;
        let staged = self
            .staging_dir(&ledger.topic, ledger.partition, seq)
            .join(STAGED_ENTRY);
        Ok(StagedEntry {
            entry,
            body,
            staged,
            path,
        })
    }

    /// Write the entry to the staging area. It can be written at the same time as the data
    /// files (on HDFS each file's close waits for the datanode's block report, so writing the
    /// entry after the files would wait twice); it counts only once [`Self::publish`] moved it.
    pub async fn stage_entry(&self, e: &StagedEntry) -> Result<(), LedgerError> {
        self.store()
            .put(&e.staged, PutPayload::from(e.body.clone()))
            .await
            .map_err(store_err(&e.staged))?;
        Ok(())
    }

    /// The commit point: move the staged entry to its place with rename-if-absent (atomic on
    /// HDFS and local disks; a second writer of the same step is fenced), then make the files
    /// visible. Every data file of the entry must be staged before this is called.
    pub async fn publish(
        &self,
        ledger: &mut PartitionLedger,
        e: StagedEntry,
    ) -> Result<(), LedgerError> {
        if let Err(source) = self.store().rename_if_not_exists(&e.staged, &e.path).await {
            // Stores report an existing destination differently (HDFS: a remote
            // FileAlreadyExistsException): look at the destination rather than at the error.
            if matches!(source, object_store::Error::AlreadyExists { .. })
                || self.store().head(&e.path).await.is_ok()
            {
                let _ = self.store().delete(&e.staged).await;
                return Err(LedgerError::Fenced {
                    topic: ledger.topic.to_string(),
                    partition: ledger.partition,
                    seq: e.entry.seq,
                });
            }
            return Err(LedgerError::Store {
                path: e.path.to_string(),
                source,
            });
        }
        let seq = e.entry.seq;
        ledger.seq = seq;
        ledger.next_offset = e.entry.next_offset;
        self.finish_moves(&e.entry.files).await?;
        if seq > KEEP_ENTRIES {
            let old = self.entry_path(&ledger.topic, ledger.partition, seq - KEEP_ENTRIES);
            let _ = self.store().delete(&old).await;
        }
        Ok(())
    }

    /// Delete staged files of commits up to `seq` that never became visible (a commit that
    /// crashed before its entry, or lost to another writer). Later ones may still be in flight.
    async fn remove_orphans(
        &self,
        topic: &str,
        partition: i32,
        seq: u64,
    ) -> Result<(), LedgerError> {
        let dir = self.location.path(&[
            "_carflow/staging",
            &safe_segment(topic),
            &partition.to_string(),
        ]);
        let depth = dir.parts().count();
        let metas: Vec<_> = self
            .store()
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(store_err(&dir))?;
        for m in metas {
            let commit_seq = m.location.parts().nth(depth).and_then(|p| {
                p.as_ref()
                    .split('-')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
            });
            if commit_seq.is_some_and(|s| s <= seq) {
                tracing::info!(path = %m.location, "removing orphaned staged file");
                let _ = self.store().delete(&m.location).await;
            }
        }
        Ok(())
    }

    /// Rename staged files to their visible names; a move already done is skipped.
    async fn finish_moves(&self, files: &[FileMove]) -> Result<(), LedgerError> {
        let moves = files.iter().map(|f| async move {
            let (from, to) = (
                Path::from(f.staged.as_str()),
                Path::from(f.visible.as_str()),
            );
            if let Err(e) = self.store().rename(&from, &to).await {
                // Already moved (by us before a crash, or by another loader) is fine. Stores
                // report a missing source differently (HDFS: a remote FileNotFoundException), so
                // look at the destination rather than at the error.
                if self.store().head(&to).await.is_err() {
                    return Err(LedgerError::Store {
                        path: f.staged.clone(),
                        source: e,
                    });
                }
            }
            Ok(())
        });
        futures::future::try_join_all(moves).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
