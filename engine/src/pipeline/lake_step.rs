//! The lake step of a batch: per Kafka partition, the rows the lake does not hold yet go through
//! every lake transform and are committed with the offset ledger (dead letters with them).

use arrow::array::RecordBatch;
use tokio_util::sync::CancellationToken;

use super::{PipelineError, Stop, partitions};
use crate::batcher::DeadLetter;
use crate::checkpoint::{LedgerError, PartitionLedger};
use crate::retry::Backoff;
use crate::retry::{RetryError, retry};
use crate::sink::dead_letter;
use crate::sink::lake::{DatasetOutput, EncodedFile, LakeError, LakeSink};
use crate::source::Source;
use crate::transform::Target;
use crate::windows::TopicPartition;

use super::Pipeline;
use super::influx_step::run_transform;

/// One partition's lake commit, encoded and waiting for its I/O.
pub(super) struct PreparedCommit {
    tp: TopicPartition,
    last: i64,
    ledger: PartitionLedger,
    files: Vec<EncodedFile>,
    written: Vec<(String, u64)>,
}

/// One partition's input to the lake step of a batch.
pub(super) struct LakeInput<'a> {
    pub tp: &'a TopicPartition,
    /// First offset, last offset and message count of the partition in the batch.
    pub range: (i64, i64, u64),
    pub rows: Option<&'a RecordBatch>,
    pub dead: &'a [&'a DeadLetter],
}

impl<S: Source> Pipeline<S> {
    /// Write every partition's new rows to every lake dataset; returns rows written.
    ///
    /// The transforms and the encoding run one partition after the other; the commits (staged
    /// files, ledger entry, renames) of all partitions then run concurrently, since on HDFS they
    /// are bound by round trips, not CPU. Each partition's commit stays atomic on its own.
    pub(super) async fn write_lake_all(
        &mut self,
        inputs: &[LakeInput<'_>],
        shutdown: &CancellationToken,
    ) -> Result<u64, Stop> {
        let mut prepared = Vec::with_capacity(inputs.len());
        for input in inputs {
            if let Some(p) = self.prepare_lake(input).await? {
                prepared.push(p);
            }
        }
        let results = {
            let (lake, backoff) = (&self.lake, &self.options.backoff);
            futures::future::join_all(prepared.into_iter().map(|p| async move {
                let result = commit_with_retry(lake, backoff, shutdown, &p).await;
                (p, result)
            }))
            .await
        };
        let mut total = 0;
        for (p, result) in results {
            total += match result {
                Ok(ledger) => self.apply_lake(&p.tp, ledger, p.written),
                Err(RetryError::Permanent(LakeError::Ledger(LedgerError::Fenced { .. }))) => {
                    self.on_fenced(&p.tp).await?;
                    let input = inputs.iter().find(|i| *i.tp == p.tp);
                    match input {
                        Some(input) => self.write_lake(input, shutdown).await?,
                        None => 0,
                    }
                }
                Err(RetryError::Permanent(e)) => return Err(Stop::Failed(e.into())),
                Err(RetryError::Shutdown(_)) => return Err(Stop::Shutdown),
            };
        }
        Ok(total)
    }

    /// Write one partition's new rows to every lake dataset; returns rows written.
    async fn write_lake(
        &mut self,
        input: &LakeInput<'_>,
        shutdown: &CancellationToken,
    ) -> Result<u64, Stop> {
        loop {
            let Some(p) = self.prepare_lake(input).await? else {
                return Ok(0);
            };
            match commit_with_retry(&self.lake, &self.options.backoff, shutdown, &p).await {
                Ok(ledger) => return Ok(self.apply_lake(&p.tp, ledger, p.written)),
                Err(RetryError::Permanent(LakeError::Ledger(LedgerError::Fenced { .. }))) => {
                    self.on_fenced(&p.tp).await?;
                }
                Err(RetryError::Permanent(e)) => return Err(Stop::Failed(e.into())),
                Err(RetryError::Shutdown(_)) => return Err(Stop::Shutdown),
            }
        }
    }

    /// Run the lake transforms over the rows of `input` the lake does not hold yet and encode
    /// them (with the dead letters); `None` when the lake holds all of them already.
    async fn prepare_lake(
        &mut self,
        input: &LakeInput<'_>,
    ) -> Result<Option<PreparedCommit>, Stop> {
        let LakeInput {
            tp,
            range: (first, last, count),
            rows,
            dead,
        } = *input;
        let Some(ledger) = self.partitions.get(tp).map(|s| s.ledger.clone()) else {
            return Ok(None);
        };
        let from = ledger.next_offset;
        if last < from {
            self.note_replayed(count);
            return Ok(None);
        }
        let fresh = rows
            .map(|r| partitions::from_offset(r, from))
            .transpose()
            .map_err(PipelineError::from)?;
        let fresh_dead: Vec<&DeadLetter> =
            dead.iter().copied().filter(|d| d.offset >= from).collect();
        let fresh_count = fresh.as_ref().map_or(0, |r| r.num_rows()) + fresh_dead.len();
        self.note_replayed(count.saturating_sub(fresh_count as u64));
        let mut outputs = Vec::new();
        if let Some(fresh) = fresh.filter(|r| r.num_rows() > 0) {
            self.planner.batch.set(vec![fresh]);
            for t in self.transforms.iter() {
                let Target::Lake {
                    dataset,
                    partition_by,
                } = &t.target
                else {
                    continue;
                };
                if let Some(batches) =
                    run_transform(t, &self.planner.batch_ctx, &self.metrics).await
                {
                    outputs.push(DatasetOutput {
                        dataset: dataset.clone(),
                        partition_by: partition_by.clone(),
                        batches,
                    });
                }
            }
        }
        if !fresh_dead.is_empty() {
            let now = chrono::Utc::now().timestamp_millis();
            outputs.push(dead_letter::output(&fresh_dead, now).map_err(PipelineError::from)?);
        }
        let files = self
            .lake
            .encode(&tp.0, tp.1, (first.max(from), last), &outputs)
            .map_err(PipelineError::from)?;
        let written = files
            .iter()
            .map(|f| (f.dataset.clone(), f.rows as u64))
            .collect();
        Ok(Some(PreparedCommit {
            tp: tp.clone(),
            last,
            ledger,
            files,
            written,
        }))
    }

    /// Record a partition's successful commit; returns the rows written (dead letters apart).
    fn apply_lake(
        &mut self,
        tp: &TopicPartition,
        ledger: PartitionLedger,
        written: Vec<(String, u64)>,
    ) -> u64 {
        if let Some(s) = self.partitions.get_mut(tp) {
            s.ledger = ledger;
        }
        let mut total = 0;
        for (dataset, n) in written {
            self.metrics.rows("lake", &dataset, n);
            if dataset == dead_letter::DATASET {
                self.metrics.dead_letters.inc_by(n);
                self.summary.dead_letters += n;
            } else {
                total += n;
            }
            *self.summary.lake_rows.entry(dataset).or_default() += n;
        }
        total
    }

    /// Another writer (or a retried commit of ours) moved the ledger on: reload it.
    async fn on_fenced(&mut self, tp: &TopicPartition) -> Result<(), Stop> {
        tracing::warn!(topic = %tp.0, partition = tp.1, "lake ledger moved on under us (another writer or a retried commit); reloading it");
        self.partitions.remove(tp);
        Ok(self.ensure_partition(tp).await?)
    }

    pub(super) fn note_replayed(&mut self, n: u64) {
        if n > 0 {
            self.metrics.replayed.inc_by(n);
            self.summary.replayed += n;
        }
    }
}

/// Commit one prepared partition, retrying transient store errors.
async fn commit_with_retry(
    lake: &LakeSink,
    backoff: &Backoff,
    shutdown: &CancellationToken,
    p: &PreparedCommit,
) -> Result<PartitionLedger, RetryError<LakeError>> {
    retry("lake commit", backoff, shutdown, || {
        let (mut ledger, files) = (p.ledger.clone(), p.files.clone());
        async move {
            lake.commit(&mut ledger, p.last + 1, files)
                .await
                .map(|()| ledger)
        }
    })
    .await
}
