//! Merging a partition's small lake files in the background (the design is in
//! [`crate::sink::compact`]).
//!
//! After a partition's commit, a task lists the directories that commit wrote to and merges the
//! partition's newest small files there; the merged files ride along with the partition's next
//! commit (one ledger entry: fenced, rolled forward after a crash), so nothing of the batch loop
//! waits for them. One task per partition at a time; work begun for an earlier ownership of the
//! partition is dropped.
//!
//! **Rounds.** A query that listed a directory before a merge and opens a merged-away file after
//! it fails (see [`crate::sink::compact`]), so merges come in rounds, at most one every
//! `lake.compact_interval`: every partition of a batch that has files to merge starts then, and
//! their merges land together with the next commits, one short moment a round for readers
//! instead of one every few seconds.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use futures::FutureExt;
use object_store::ObjectStoreExt;
use tokio::task::JoinHandle;

use crate::sink::compact::{self, Listed};
use crate::sink::lake::{LakeSink, MergedFile};
use crate::source::TopicPartition;

/// When to merge (`lake.compact_files`, `lake.compact_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactOptions {
    /// Merge once a partition has this many small files in a directory (0: never).
    pub min_files: usize,
    /// A merged file stays below this.
    pub max_bytes: u64,
    /// At most one round of merges this often.
    pub interval: std::time::Duration,
}

struct Job {
    epoch: u64,
    handle: JoinHandle<Vec<MergedFile>>,
}

/// The merges in progress.
pub(super) struct Compactor {
    options: CompactOptions,
    jobs: HashMap<TopicPartition, Job>,
    /// Partitions whose merges were taken into a commit that has not landed yet (with the
    /// ownership it was for): a new look at their directories would still see the merged files'
    /// sources and merge them again.
    carrying: HashMap<TopicPartition, u64>,
    next_round: Option<std::time::Instant>,
    /// One merge at a time: a merge holds its sources and its result in memory (up to about
    /// twice `lake.compact_bytes`), and a round starts one for every partition at once.
    one_at_a_time: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Compactor {
    pub(super) fn new(options: CompactOptions) -> Self {
        Self {
            options,
            jobs: HashMap::new(),
            carrying: HashMap::new(),
            next_round: None,
            one_at_a_time: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// Is a round of merges due with this batch's commits? (Then the next is an interval away.)
    pub(super) fn round_due(&mut self) -> bool {
        if self.options.min_files < 2 {
            return false;
        }
        let now = std::time::Instant::now();
        if self.next_round.is_some_and(|at| now < at) {
            return false;
        }
        self.next_round = Some(now + self.options.interval);
        true
    }

    /// The merges of `tp` that are ready, if they were made for this ownership (`epoch`).
    pub(super) fn take_ready(&mut self, tp: &TopicPartition, epoch: u64) -> Vec<MergedFile> {
        if !self.jobs.get(tp).is_some_and(|j| j.handle.is_finished()) {
            return Vec::new();
        }
        let Some(job) = self.jobs.remove(tp) else {
            return Vec::new();
        };
        if job.epoch != epoch {
            return Vec::new();
        }
        match job.handle.now_or_never() {
            Some(Ok(merges)) => {
                if !merges.is_empty() {
                    self.carrying.insert(tp.clone(), epoch);
                }
                merges
            }
            Some(Err(e)) => {
                tracing::warn!(partition = %tp, error = %e, "a merge of small lake files failed; the files stay as they are");
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    /// A commit of `tp` that carried merges landed.
    pub(super) fn carried(&mut self, tp: &TopicPartition) {
        self.carrying.remove(tp);
    }

    /// After a commit of `tp` that wrote into `dirs` (dataset, directory relative to it): look
    /// for files to merge there, unless a merge of `tp` is in progress or waits in a commit.
    pub(super) fn after_commit(
        &mut self,
        lake: &LakeSink,
        tp: &TopicPartition,
        topic_id: Option<&str>,
        epoch: u64,
        dirs: BTreeSet<(String, String)>,
    ) {
        if self.options.min_files < 2 || dirs.is_empty() {
            return;
        }
        match self.carrying.get(tp) {
            Some(e) if *e == epoch => return,
            Some(_) => {
                // Taken by an earlier ownership, whose commit was fenced.
                self.carrying.remove(tp);
            }
            None => {}
        }
        if let Some(job) = self.jobs.get(tp) {
            if job.epoch == epoch {
                return;
            }
            job.handle.abort();
        }
        let prefix = compact::part_prefix(&tp.topic, topic_id, tp.partition);
        let (lake, options, partition) = (lake.clone(), self.options, tp.clone());
        let permit = std::sync::Arc::clone(&self.one_at_a_time);
        let handle = tokio::spawn(async move {
            let Ok(_permit) = permit.acquire_owned().await else {
                return Vec::new();
            };
            let mut out = Vec::new();
            for (dataset, dir) in dirs {
                match merge_dir(&lake, options, &prefix, &dataset, &dir).await {
                    Ok(Some(m)) => out.push(m),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(partition = %partition, dataset = %dataset, dir = %dir, error = %e,
                            "cannot merge small lake files; trying again after a later commit");
                    }
                }
            }
            out
        });
        self.jobs.insert(tp.clone(), Job { epoch, handle });
    }

    /// Drop the work of a partition no longer owned.
    pub(super) fn forget(&mut self, tp: &TopicPartition) {
        if let Some(job) = self.jobs.remove(tp) {
            job.handle.abort();
        }
        self.carrying.remove(tp);
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        for job in self.jobs.values() {
            job.handle.abort();
        }
    }
}

/// Merge the newest small files of `prefix` in one directory, if there are enough.
async fn merge_dir(
    lake: &LakeSink,
    options: CompactOptions,
    prefix: &str,
    dataset: &str,
    dir: &str,
) -> Result<Option<MergedFile>, Box<dyn std::error::Error + Send + Sync>> {
    let location = lake.location();
    let path = location.path(&[dataset, dir]);
    let listed = location.store.list_with_delimiter(Some(&path)).await?;
    let names: Vec<(String, u64)> = listed
        .objects
        .iter()
        .filter_map(|m| m.location.filename().map(|f| (f.to_string(), m.size)))
        .collect();
    let skip = compact::covered(names.iter().map(|(n, _)| n.as_str()));
    let mut files: Vec<Listed> = names
        .iter()
        .filter(|(n, _)| !skip.contains(n.as_str()))
        .filter_map(|(name, size)| {
            let part = compact::parse_part_name(name)?;
            (part.prefix == prefix).then(|| Listed {
                name: name.clone(),
                part,
                size: *size,
            })
        })
        .collect();
    files.sort_by_key(|f| f.part.first);
    let Some(run) = compact::plan_run(&files, options.min_files, options.max_bytes) else {
        return Ok(None);
    };
    let run = &files[run];
    let fetches = run.iter().map(|f| {
        let p = path.clone().join(f.name.as_str());
        async move {
            let got = location.store.get(&p).await?;
            got.bytes().await
        }
    });
    let bytes: Vec<Bytes> = futures::future::try_join_all(fetches).await?;
    let props = lake.props().clone();
    let min = options.min_files;
    let Some(merged) =
        tokio::task::spawn_blocking(move || compact::merge(&bytes, &props, min)).await??
    else {
        return Ok(None);
    };
    let sources = &run[run.len() - merged.sources..];
    let (Some(first), Some(last)) = (sources.first(), sources.last()) else {
        return Ok(None);
    };
    let name = compact::part_file_name(prefix, first.part.first, last.part.last);
    let relative = if dir.is_empty() {
        name
    } else {
        format!("{dir}/{name}")
    };
    Ok(Some(MergedFile {
        dataset: dataset.to_string(),
        relative,
        replaces: sources.iter().map(|f| f.name.clone()).collect(),
        rows: merged.rows,
        bytes: merged.bytes,
    }))
}
