//! The lake step of a batch: per Kafka partition, the rows the lake does not hold yet go through
//! every lake transform and are committed with the offset ledger (dead letters with them).

use arrow::array::RecordBatch;
use tokio_util::sync::CancellationToken;

use super::{PipelineError, Stop, partitions};
use crate::batcher::DeadLetter;
use crate::retry::{RetryError, retry};
use crate::sink::dead_letter;
use crate::sink::lake::{DatasetOutput, LakeError};
use crate::source::Source;
use crate::transform::Target;
use crate::windows::TopicPartition;

use super::Pipeline;
use super::influx_step::run_transform;

impl<S: Source> Pipeline<S> {
    /// Write one partition's new rows to every lake dataset; returns rows written.
    pub(super) async fn write_lake(
        &mut self,
        tp: &TopicPartition,
        (first, last, count): (i64, i64, u64),
        rows: Option<&RecordBatch>,
        dead: &[&DeadLetter],
        shutdown: &CancellationToken,
    ) -> Result<u64, Stop> {
        loop {
            let Some(ledger) = self.partitions.get(tp).map(|s| s.ledger.clone()) else {
                return Ok(0);
            };
            let from = ledger.next_offset;
            if last < from {
                self.note_replayed(count);
                return Ok(0);
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
            let written: Vec<(String, u64)> = files
                .iter()
                .map(|f| (f.dataset.clone(), f.rows as u64))
                .collect();
            let lake = self.lake.clone();
            let attempt = retry("lake commit", &self.options.backoff, shutdown, || {
                let (lake, mut ledger, files) = (lake.clone(), ledger.clone(), files.clone());
                async move {
                    lake.commit(&mut ledger, last + 1, files)
                        .await
                        .map(|()| ledger)
                }
            })
            .await;
            match attempt {
                Ok(ledger) => {
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
                    return Ok(total);
                }
                Err(RetryError::Permanent(LakeError::Ledger(
                    crate::checkpoint::LedgerError::Fenced { .. },
                ))) => {
                    tracing::warn!(topic = %tp.0, partition = tp.1, "lake ledger moved on under us (another writer or a retried commit); reloading it");
                    self.partitions.remove(tp);
                    self.ensure_partition(tp).await?;
                }
                Err(RetryError::Permanent(e)) => return Err(Stop::Failed(e.into())),
                Err(RetryError::Shutdown(_)) => return Err(Stop::Shutdown),
            }
        }
    }

    pub(super) fn note_replayed(&mut self, n: u64) {
        if n > 0 {
            self.metrics.replayed.inc_by(n);
            self.summary.replayed += n;
        }
    }
}
