//! The offset ledger: which Kafka offsets the lake and the windows already hold, kept beside the
//! data.
//!
//! Each (topic, partition) has a log of small JSON entries under
//! `<lake>/_carflow/ledger/<topic>/<partition>/<seq>.json`. An entry says "everything of this
//! partition below `next_offset` is in the lake", lists the files its commit made visible, and
//! carries the partition's event-time progress and the partial aggregates of its open windows (so
//! a restart or the partition's next owner continues exactly where the commit left off).
//!
//! A commit is: stage the data files and the entry under `_carflow/staging/` (at the same time),
//! move the entry into the log with rename-if-absent (the commit point), check that no later entry
//! exists, then rename the staged files into their datasets and remove the staging directory.
//!
//! **Fencing.** Two processes that both think they own a partition (a zombie after a rebalance)
//! cannot both commit the same step: the entry's move fails when the entry exists, and the loser
//! gets [`LedgerError::Fenced`]. Old entries are pruned (only the newest few are kept), so a
//! writer that was frozen for long could find its next step's slot free again; that is why a
//! published entry counts only if no later entry exists: the writer lists the log right after the
//! move, and when a later entry is there it removes its own (stale) entry, publishes none of its
//! files and reports [`LedgerError::Fenced`]. Readers and loaders follow the entry with the
//! highest sequence number only, so a stale entry that a crash left behind is never followed.
//!
//! **Roll forward.** Loading a partition finishes the renames of its latest entry, so a crash
//! anywhere in a commit leaves either nothing visible or, after the next load, everything. Readers
//! ([`OffsetLedger::roll_forward_all`], used by `carflow sql`) do the same, so they see exactly the
//! committed data even when no engine has loaded the partition since.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::source::TopicPartition;
use crate::storage::Location;

pub mod backfill;
pub mod coverage;
pub mod local;

pub use coverage::Coverage;

/// Name of a staged ledger entry inside its commit's staging directory.
const STAGED_ENTRY: &str = "_entry.json";

/// How many older ledger entries are kept behind the latest (for inspection; only the latest is
/// read).
const KEEP_ENTRIES: u64 = 4;

/// How many commits after a load sweep what dead writers staged beyond the loaded step (see
/// [`PartitionLedger::sweeps_left`]).
pub const SWEEPING_COMMITS: u8 = 2;

/// Errors of the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Another writer committed this step (or a later one) first: this process no longer owns the
    /// partition, or must reload it before committing again.
    #[error(
        "ledger {topic}/{partition}: entry {seq} lost to another writer (the partition moved, or a frozen writer woke up)"
    )]
    Fenced {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The entry both tried to write.
        seq: u64,
    },
    /// Another backfill of the dataset committed this step first.
    #[error(
        "backfill of lake.{dataset}: step {seq} was committed by another backfill running at the same time; nothing of this one was published: run it again to fill what is left"
    )]
    BackfillRace {
        /// Dataset.
        dataset: String,
        /// The record both tried to write.
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
    /// An entry could not be read or written as JSON.
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

/// A merge of a partition's small files in one directory, committed with a ledger entry: once
/// the entry is published, `file` becomes visible and the files it `replaces` go (see
/// [`crate::sink::compact`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compaction {
    /// The merged file: staged, and where it becomes visible.
    pub file: FileMove,
    /// Names of the merged files, in the directory of `file.visible`.
    pub replaces: Vec<String>,
    /// Rows in the merged file.
    pub rows: u64,
}

/// The partial aggregates of one windowed query's open windows, as committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowBlob {
    /// Which version of the query wrote it (state of another version is not reused).
    pub fingerprint: String,
    /// The state rows, an Arrow IPC stream (base64 in the entry's JSON). Shared, not copied,
    /// when the commit state is cloned (a commit staged early, a retried commit).
    #[serde(with = "base64_bytes")]
    pub ipc: bytes::Bytes,
}

/// Bytes as a base64 JSON string, encoded straight into the serializer's output (no base64 copy
/// of the whole blob in between).
mod base64_bytes {
    use base64::Engine as _;
    use base64::display::Base64Display;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &bytes::Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&Base64Display::new(b, &STANDARD))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bytes::Bytes, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map(bytes::Bytes::from)
            .map_err(|e| serde::de::Error::custom(format!("window state is not base64: {e}")))
    }
}

/// Event-time progress of a partition, as committed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Newest event time seen (ms), per event-time column.
    #[serde(default)]
    pub max_event_ms: BTreeMap<String, i64>,
    /// Windows ending at or before this were closed (their state dropped), per column.
    #[serde(default)]
    pub closed_before_ms: BTreeMap<String, i64>,
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Position in the partition's log, from 1.
    pub seq: u64,
    /// Every offset below this is in the lake and in the windows.
    pub next_offset: i64,
    /// The files this commit made visible.
    pub files: Vec<FileMove>,
    /// Which process wrote it.
    pub writer: String,
    /// When, in milliseconds since the epoch.
    pub committed_at_ms: i64,
    /// Kafka's id of the topic the offsets belong to (absent when the source has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_id: Option<String>,
    /// Event-time progress.
    #[serde(default)]
    pub progress: Progress,
    /// Open windows' partial aggregates, per windowed query (`influx.<measurement>`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub windows: BTreeMap<String, WindowBlob>,
    /// Which offsets each lake dataset holds (absent in entries of an older carflow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<Coverage>,
    /// Merges of small files committed with this entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compactions: Vec<Compaction>,
}

/// The ledger state of one partition, as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLedger {
    /// The partition.
    pub tp: TopicPartition,
    /// Sequence number of the latest entry (0: none yet).
    pub seq: u64,
    /// Offsets below this are already in the lake; replays of them are skipped.
    pub next_offset: i64,
    /// Topic id the offsets belong to, if known.
    pub topic_id: Option<String>,
    /// How many of this owner's next commits sweep the staging area after publishing: staged
    /// files of the step just taken that a writer left when it died are swept (the load sweeps
    /// only up to the loaded step). A load sets [`SWEEPING_COMMITS`]: a writer that dies can
    /// leave two steps staged beyond the latest entry (one commit in flight and the next one
    /// staged early, `lake.prestage`).
    pub sweeps_left: u8,
    /// Which offsets each lake dataset holds, as of the latest entry.
    pub coverage: Option<Coverage>,
}

impl PartitionLedger {
    /// The ledger as the next step's commit (of everything below `next_offset`, with `state`)
    /// leaves it once published: what [`OffsetLedger::publish`] sets, known before it runs.
    pub fn after_commit(&self, next_offset: i64, state: &CommitState) -> PartitionLedger {
        PartitionLedger {
            tp: self.tp.clone(),
            seq: self.seq + 1,
            next_offset,
            topic_id: state.topic_id.clone(),
            sweeps_left: self.sweeps_left.saturating_sub(1),
            coverage: Some(Coverage::advance(
                self.coverage.as_ref(),
                self.seq > 0,
                self.next_offset,
                &state.datasets,
            )),
        }
    }
}

/// What the next commit of a partition records besides its files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitState {
    /// Kafka's topic id.
    pub topic_id: Option<String>,
    /// Event-time progress after the commit.
    pub progress: Progress,
    /// Open windows after the commit.
    pub windows: BTreeMap<String, WindowBlob>,
    /// The lake datasets the running queries write (their coverage runs on from this commit).
    pub datasets: Vec<String>,
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

/// A staged entry, written to the staging area and waiting to be published.
#[derive(Debug, Clone)]
pub struct StagedEntry {
    /// The entry without its window state (which only the body carries: it can be megabytes).
    entry: LedgerEntry,
    body: bytes::Bytes,
    staged: Path,
    path: Path,
    dir: Path,
}

impl StagedEntry {
    /// The entry, without its window state (`windows` is empty here; the staged file has it).
    pub fn entry(&self) -> &LedgerEntry {
        &self.entry
    }
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

    /// Where the lake lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    fn entries_dir(&self, tp: &TopicPartition) -> Path {
        self.location.path(&[
            "_carflow/ledger",
            &safe_segment(&tp.topic),
            &tp.partition.to_string(),
        ])
    }

    fn entry_path(&self, tp: &TopicPartition, seq: u64) -> Path {
        self.entries_dir(tp).join(format!("{seq:020}.json"))
    }

    fn partition_staging(&self, tp: &TopicPartition) -> Path {
        self.location.path(&[
            "_carflow/staging",
            &safe_segment(&tp.topic),
            &tp.partition.to_string(),
        ])
    }

    /// Where files of commit `seq` are staged (flat: one directory per commit).
    pub fn staging_dir(&self, tp: &TopicPartition, seq: u64) -> Path {
        self.partition_staging(tp)
            .join(format!("{seq:020}-{}", self.writer))
    }

    /// Sequence numbers of the entries in a partition's log, ascending.
    async fn sequences(&self, tp: &TopicPartition) -> Result<Vec<u64>, LedgerError> {
        let dir = self.entries_dir(tp);
        let listed = self
            .store()
            .list_with_delimiter(Some(&dir))
            .await
            .map_err(store_err(&dir))?;
        let mut seqs: Vec<u64> = listed
            .objects
            .iter()
            .filter_map(|m| {
                m.location
                    .filename()
                    .and_then(|f| f.strip_suffix(".json"))
                    .and_then(|n| n.parse().ok())
            })
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// The sequence number of a partition's latest entry (0: none).
    pub async fn latest_seq(&self, tp: &TopicPartition) -> Result<u64, LedgerError> {
        Ok(self.sequences(tp).await?.last().copied().unwrap_or(0))
    }

    /// The latest entry of a partition, if any.
    pub async fn latest(&self, tp: &TopicPartition) -> Result<Option<LedgerEntry>, LedgerError> {
        // An entry can be pruned between the listing and the read (a newer one exists then):
        // list again.
        for _ in 0..5 {
            let Some(&seq) = self.sequences(tp).await?.last() else {
                return Ok(None);
            };
            let path = self.entry_path(tp, seq);
            match self.store().get(&path).await {
                Ok(r) => {
                    let bytes = r.bytes().await.map_err(store_err(&path))?;
                    return serde_json::from_slice(&bytes).map(Some).map_err(|source| {
                        LedgerError::Corrupt {
                            path: path.to_string(),
                            source,
                        }
                    });
                }
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(store_err(&path)(e)),
            }
        }
        Err(LedgerError::Store {
            path: self.entries_dir(tp).to_string(),
            source: object_store::Error::Generic {
                store: "ledger",
                source: "the latest entry kept disappearing while being read".into(),
            },
        })
    }

    /// Take ownership of a partition: read its latest entry, finish that entry's renames and
    /// remove what failed commits left in the staging area.
    pub async fn load(
        &self,
        tp: &TopicPartition,
    ) -> Result<(PartitionLedger, Option<LedgerEntry>), LedgerError> {
        let latest = self.latest(tp).await?;
        if let Some(entry) = &latest {
            self.finish_entry(entry).await?;
        }
        let seq = latest.as_ref().map_or(0, |e| e.seq);
        self.remove_orphans(tp, seq).await?;
        self.remove_stale_entries(tp, seq).await;
        let ledger = PartitionLedger {
            tp: tp.clone(),
            seq,
            next_offset: latest.as_ref().map_or(0, |e| e.next_offset),
            topic_id: latest.as_ref().and_then(|e| e.topic_id.clone()),
            sweeps_left: SWEEPING_COMMITS,
            coverage: latest.as_ref().and_then(|e| e.coverage.clone()),
        };
        Ok((ledger, latest))
    }

    /// Commit `files` (already staged by the caller under [`OffsetLedger::staging_dir`] of
    /// `ledger.seq + 1`) as the next step: everything below `next_offset` is then committed.
    /// On success `ledger` is advanced.
    pub async fn commit(
        &self,
        ledger: &mut PartitionLedger,
        next_offset: i64,
        files: Vec<FileMove>,
        state: CommitState,
    ) -> Result<(), LedgerError> {
        let entry = self.next_entry(ledger, next_offset, files, Vec::new(), state)?;
        self.stage_entry(&entry).await?;
        self.publish(ledger, entry).await
    }

    /// The entry that commits `files` (and the merges `compactions`) as the next step of
    /// `ledger` (not written yet).
    pub fn next_entry(
        &self,
        ledger: &PartitionLedger,
        next_offset: i64,
        files: Vec<FileMove>,
        compactions: Vec<Compaction>,
        state: CommitState,
    ) -> Result<StagedEntry, LedgerError> {
        let after = ledger.after_commit(next_offset, &state);
        let seq = after.seq;
        let mut entry = LedgerEntry {
            seq,
            next_offset,
            files,
            writer: self.writer.clone(),
            committed_at_ms: chrono::Utc::now().timestamp_millis(),
            topic_id: state.topic_id,
            progress: state.progress,
            windows: state.windows,
            coverage: after.coverage,
            compactions,
        };
        let path = self.entry_path(&ledger.tp, seq);
        // Sized up front: the window state (base64, 4 bytes per 3) is most of an entry, and a
        // growing Vec would hold up to twice the entry while it is written.
        let state: usize = entry
            .windows
            .values()
            .map(|w| w.ipc.len() / 3 * 4 + 8)
            .sum();
        let mut body = Vec::with_capacity(state + 4096 + 512 * entry.files.len());
        serde_json::to_writer(&mut body, &entry).map_err(|source| LedgerError::Corrupt {
            path: path.to_string(),
            source,
        })?;
        entry.windows = BTreeMap::new();
        let dir = self.staging_dir(&ledger.tp, seq);
        Ok(StagedEntry {
            entry,
            body: body.into(),
            staged: dir.clone().join(STAGED_ENTRY),
            path,
            dir,
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
    /// HDFS and local disks), make sure no later entry exists (a stale writer's entry in a pruned
    /// slot), then make the files visible and clean up. Every data file of the entry must be
    /// staged before this is called.
    pub async fn publish(
        &self,
        ledger: &mut PartitionLedger,
        e: StagedEntry,
    ) -> Result<(), LedgerError> {
        let seq = e.entry.seq;
        let fenced = || LedgerError::Fenced {
            topic: ledger.tp.topic.to_string(),
            partition: ledger.tp.partition,
            seq,
        };
        if let Err(source) = self.store().rename_if_not_exists(&e.staged, &e.path).await {
            // Stores report an existing destination differently (HDFS: a remote
            // FileAlreadyExistsException): look at the destination rather than at the error.
            if matches!(source, object_store::Error::AlreadyExists { .. })
                || self.store().head(&e.path).await.is_ok()
            {
                self.discard_staging(&e.dir).await;
                self.remove_dir_chain(&e.dir, &ledger.tp).await;
                return Err(fenced());
            }
            return Err(LedgerError::Store {
                path: e.path.to_string(),
                source,
            });
        }
        // A later entry means this writer was frozen while others went on: its entry landed in
        // a slot that pruning had freed. Take it back; nothing of it becomes visible.
        let later = self.sequences(&ledger.tp).await?;
        if later.last().is_some_and(|&last| last > seq) {
            tracing::warn!(partition = %ledger.tp, seq, latest = ?later.last(),
                "a later ledger entry exists: this writer is stale; its commit is withdrawn");
            let _ = self.store().delete(&e.path).await;
            self.discard_staging(&e.dir).await;
            self.remove_dir_chain(&e.dir, &ledger.tp).await;
            return Err(fenced());
        }
        ledger.seq = seq;
        ledger.next_offset = e.entry.next_offset;
        ledger.topic_id = e.entry.topic_id.clone();
        ledger.coverage = e.entry.coverage.clone();
        self.finish_entry(&e.entry).await?;
        self.remove_dir_chain(&e.dir, &ledger.tp).await;
        if ledger.sweeps_left > 0 {
            ledger.sweeps_left -= 1;
            if let Err(err) = self.remove_orphans(&ledger.tp, seq).await {
                tracing::debug!(partition = %ledger.tp, error = %err, "cannot sweep the staging area");
            }
        }
        if seq > KEEP_ENTRIES {
            let old = self.entry_path(&ledger.tp, seq - KEEP_ENTRIES);
            let _ = self.store().delete(&old).await;
        }
        Ok(())
    }

    /// Delete a commit's staging directory and whatever it holds (a commit that lost).
    pub(crate) async fn discard_staging(&self, dir: &Path) {
        let files: Vec<_> = self
            .store()
            .list(Some(dir))
            .try_collect()
            .await
            .unwrap_or_default();
        for f in files {
            let _ = self.store().delete(&f.location).await;
        }
        let _ = self.location.delete_dir(dir).await;
    }

    /// Delete what step `seq` of this writer staged for `tp` (a staged commit that will not be
    /// published), and the staging directories it leaves empty.
    pub(crate) async fn discard_step(&self, tp: &TopicPartition, seq: u64) {
        let dir = self.staging_dir(tp, seq);
        self.discard_staging(&dir).await;
        self.remove_dir_chain(&dir, tp).await;
    }

    /// Remove a commit's (empty) staging directory, then its partition's and topic's directories
    /// when they are empty too.
    async fn remove_dir_chain(&self, dir: &Path, tp: &TopicPartition) {
        let _ = self.location.delete_dir(dir).await;
        let partition = self.partition_staging(tp);
        if self.location.delete_dir(&partition).await.is_ok() {
            let topic = self
                .location
                .path(&["_carflow/staging", &safe_segment(&tp.topic)]);
            let _ = self.location.delete_dir(&topic).await;
        }
    }

    /// Delete staged files of commits up to `seq` that never became visible (a commit that
    /// crashed before its entry, or lost to another writer). Later ones may still be in flight.
    async fn remove_orphans(&self, tp: &TopicPartition, seq: u64) -> Result<(), LedgerError> {
        let dir = self.partition_staging(tp);
        let listed = match self.store().list_with_delimiter(Some(&dir)).await {
            Ok(l) => l,
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(store_err(&dir)(e)),
        };
        for commit in listed.common_prefixes {
            let commit_seq = commit
                .filename()
                .and_then(|f| f.split('-').next())
                .and_then(|n| n.parse::<u64>().ok());
            if commit_seq.is_some_and(|s| s <= seq) {
                tracing::info!(path = %commit, "removing a failed commit's staged files");
                self.discard_staging(&commit).await;
            }
        }
        if self.location.delete_dir(&dir).await.is_ok() {
            let topic = self
                .location
                .path(&["_carflow/staging", &safe_segment(&tp.topic)]);
            let _ = self.location.delete_dir(&topic).await;
        }
        Ok(())
    }

    /// Remove entries that a stale writer's crash left behind, and entries older than the kept
    /// ones (best effort).
    async fn remove_stale_entries(&self, tp: &TopicPartition, latest: u64) {
        let Ok(seqs) = self.sequences(tp).await else {
            return;
        };
        for s in seqs {
            if s + KEEP_ENTRIES <= latest {
                let _ = self.store().delete(&self.entry_path(tp, s)).await;
            }
        }
    }

    /// Make an entry's files visible and finish its merges.
    async fn finish_entry(&self, entry: &LedgerEntry) -> Result<(), LedgerError> {
        self.finish_moves(&entry.files).await?;
        self.finish_compactions(&entry.compactions).await
    }

    /// Run `work` (file system calls on a local lake, given the lake root's path) on a blocking
    /// thread; its error is a store error at `path`.
    async fn on_local_disk(
        &self,
        path: &str,
        work: impl FnOnce(&std::path::Path) -> std::io::Result<()> + Send + 'static,
    ) -> Result<(), LedgerError> {
        let root = self.location.local_path(self.location.prefix.as_ref());
        tokio::task::spawn_blocking(move || work(&root))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(|e| LedgerError::Store {
                path: path.to_string(),
                source: object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(e),
                },
            })
    }

    /// Make merged files visible and remove their sources; what is done already is skipped. On
    /// a local lake each merge is one atomic exchange of its directory; elsewhere the merged file
    /// is renamed in first, then the sources deleted (readers skip covered files meanwhile).
    pub(crate) async fn finish_compactions(&self, all: &[Compaction]) -> Result<(), LedgerError> {
        for c in all {
            if self.location.local {
                let (staged, visible) = (
                    self.location.local_path(&c.file.staged),
                    self.location.local_path(&c.file.visible),
                );
                let replaces = c.replaces.clone();
                self.on_local_disk(&c.file.visible, move |root| {
                    local::swap_in(root, &staged, &visible, &replaces)
                })
                .await?;
                continue;
            }
            self.finish_moves(std::slice::from_ref(&c.file)).await?;
            let visible = Path::from(c.file.visible.as_str());
            let dir: Vec<_> = visible.parts().collect();
            let dir = Path::from_iter(dir[..dir.len().saturating_sub(1)].iter().cloned());
            let deletes = c.replaces.iter().map(|name| {
                let path = dir.clone().join(name.as_str());
                async move {
                    match self.store().delete(&path).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                        // Stores report a missing file differently: look at it.
                        Err(e) if self.store().head(&path).await.is_ok() => {
                            Err(store_err(&path)(e))
                        }
                        Err(_) => Ok(()),
                    }
                }
            });
            futures::future::try_join_all(deletes).await?;
        }
        Ok(())
    }

    /// Rename staged files to their visible names; a move already done is skipped.
    pub(crate) async fn finish_moves(&self, files: &[FileMove]) -> Result<(), LedgerError> {
        if self.location.local {
            let moves: Vec<(std::path::PathBuf, std::path::PathBuf)> = files
                .iter()
                .map(|f| {
                    let l = &self.location;
                    (l.local_path(&f.staged), l.local_path(&f.visible))
                })
                .collect();
            let first = files.first().map_or("", |f| f.staged.as_str());
            return self
                .on_local_disk(first, move |root| {
                    moves
                        .iter()
                        .try_for_each(|(from, to)| local::rename_locked(root, from, to))
                })
                .await;
        }
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

    /// Every partition that has a ledger, by topic directory name and partition.
    pub async fn partitions(&self) -> Result<Vec<TopicPartition>, LedgerError> {
        let root = self.location.path(&["_carflow/ledger"]);
        let topics = match self.store().list_with_delimiter(Some(&root)).await {
            Ok(l) => l.common_prefixes,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(store_err(&root)(e)),
        };
        let mut out = Vec::new();
        for t in topics {
            let Some(topic) = t.filename().map(str::to_string) else {
                continue;
            };
            let parts = self
                .store()
                .list_with_delimiter(Some(&t))
                .await
                .map_err(store_err(&t))?;
            for p in parts.common_prefixes {
                if let Some(n) = p.filename().and_then(|f| f.parse::<i32>().ok()) {
                    out.push(TopicPartition::new(topic.as_str(), n));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// For readers: finish the renames of every partition's latest entry, so what is visible is
    /// exactly what is committed even if a writer died between its commit point and its renames.
    /// Returns how many files were moved into place.
    pub async fn roll_forward_all(&self) -> Result<usize, LedgerError> {
        let mut moved = 0;
        for dataset in backfill::Backfills::datasets(self).await? {
            moved += backfill::Backfills::new(self.clone(), &dataset)
                .roll_forward()
                .await?;
        }
        for tp in self.partitions().await? {
            if let Some(entry) = self.latest(&tp).await? {
                let pending = futures::future::join_all(entry.files.iter().map(|f| async {
                    self.store()
                        .head(&Path::from(f.visible.as_str()))
                        .await
                        .is_err()
                }))
                .await;
                let missing: Vec<FileMove> = entry
                    .files
                    .iter()
                    .zip(pending)
                    .filter(|(_, m)| *m)
                    .map(|(f, _)| f.clone())
                    .collect();
                if !missing.is_empty() {
                    tracing::info!(partition = %tp, files = missing.len(), "finishing a commit whose writer stopped before its renames");
                    self.finish_moves(&missing).await?;
                    moved += missing.len();
                }
                if !entry.compactions.is_empty() {
                    // Idempotent, and cheap when done: each merge is checked by its files.
                    self.finish_compactions(&entry.compactions).await?;
                }
            }
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests;
