//! The lake sink: Hive-partitioned Parquet under a root (`hdfs://…` or local), exactly once.
//!
//! For each Kafka partition of a micro-batch, [`LakeSink::encode`] turns every lake transform's
//! output into Parquet files, one per Hive partition (`<root>/<dataset>/dt=2026-11-27/…`), with
//! the partition columns moved into the path. File names are deterministic:
//! `part-<topic>[-<topic id>]-<partition>-<first offset>-<last offset>.parquet` (the topic id
//! keeps a recreated topic's files apart from the old one's). Columns are written as nullable, so
//! a dataset can gain a column ([schema evolution](crate::transform)) and older files read as
//! NULL for it. [`LakeSink::commit`] stages the files, then commits them through the
//! [`OffsetLedger`](crate::ledger::OffsetLedger): a file is visible only when complete, and a
//! replay of offsets the ledger already holds is filtered out before it reaches a transform, so
//! each record lands in each dataset once.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use arrow::util::display::array_value_to_string;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::ledger::{
    CommitState, Compaction, FileMove, LedgerError, OffsetLedger, PartitionLedger,
};
use crate::source::TopicPartition;
use crate::storage::Location;

/// Hive's name for a null partition value.
pub const HIVE_NULL: &str = "__HIVE_DEFAULT_PARTITION__";

/// Errors of the lake sink.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// Arrow or Parquet encoding failed.
    #[error("lake.{dataset}: encoding failed: {message}")]
    Encode {
        /// Dataset.
        dataset: String,
        /// What failed.
        message: String,
    },
    /// The store failed; the pipeline retries the batch.
    #[error("lake write {path}: {source}")]
    Store {
        /// Path.
        path: String,
        /// Store error.
        source: object_store::Error,
    },
    /// The ledger refused or failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// One dataset's output for one Kafka partition of a batch.
#[derive(Debug, Clone)]
pub struct DatasetOutput {
    /// Dataset name.
    pub dataset: String,
    /// Hive partition columns, in path order.
    pub partition_by: Vec<String>,
    /// The rows.
    pub batches: Vec<RecordBatch>,
}

/// An encoded file waiting to be committed.
#[derive(Debug, Clone)]
pub struct EncodedFile {
    /// Dataset it belongs to.
    pub dataset: String,
    /// Path relative to the dataset directory (`dt=…/part-….parquet`).
    pub relative: String,
    /// Rows in the file.
    pub rows: usize,
    /// The Parquet bytes.
    pub bytes: Bytes,
}

/// A merge of a partition's small files in one directory, encoded and waiting to be committed
/// (see [`crate::sink::compact`]).
#[derive(Debug, Clone)]
pub struct MergedFile {
    /// Dataset it belongs to.
    pub dataset: String,
    /// Path relative to the dataset directory of the merged file.
    pub relative: String,
    /// Names of the files it replaces, in the same directory.
    pub replaces: Vec<String>,
    /// Rows in it.
    pub rows: usize,
    /// The Parquet bytes.
    pub bytes: Bytes,
}

/// How long a partition's commit took, by phase.
#[derive(Debug, Clone, Copy)]
pub struct CommitTimes {
    /// Writing its files and ledger entry to the staging area (on HDFS mostly the wait for the
    /// namenode to confirm each file complete).
    pub staged: std::time::Duration,
    /// Publishing: the entry moved into place (the commit point), the files renamed, cleanup.
    pub published: std::time::Duration,
}

/// Writes datasets under one lake root.
#[derive(Debug, Clone)]
pub struct LakeSink {
    location: Location,
    ledger: OffsetLedger,
    props: WriterProperties,
}

impl LakeSink {
    /// A sink writing under `location`, committing as `writer`.
    pub fn new(location: Location, writer: &str) -> Self {
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("carflow {}", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            ledger: OffsetLedger::new(location.clone(), writer),
            location,
            props,
        }
    }

    /// The ledger this sink commits through.
    pub fn ledger(&self) -> &OffsetLedger {
        &self.ledger
    }

    /// Where the lake lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// How files are written (merged files are written the same way).
    pub fn props(&self) -> &WriterProperties {
        &self.props
    }

    /// Encode `outputs` of one Kafka partition covering offsets `first..=last` into files.
    pub fn encode(
        &self,
        tp: &TopicPartition,
        topic_id: Option<&str>,
        (first, last): (i64, i64),
        outputs: &[DatasetOutput],
    ) -> Result<Vec<EncodedFile>, LakeError> {
        let prefix = crate::sink::compact::part_prefix(&tp.topic, topic_id, tp.partition);
        let name = crate::sink::compact::part_file_name(&prefix, first, last);
        let mut files = Vec::new();
        for out in outputs {
            let err = |message: String| LakeError::Encode {
                dataset: out.dataset.clone(),
                message,
            };
            for (dir, batch) in split_hive(out).map_err(|e| err(e.to_string()))? {
                if batch.num_rows() == 0 {
                    continue;
                }
                let bytes = encode_parquet(&batch, &self.props).map_err(|e| err(e.to_string()))?;
                let relative = if dir.is_empty() {
                    name.clone()
                } else {
                    format!("{dir}/{name}")
                };
                files.push(EncodedFile {
                    dataset: out.dataset.clone(),
                    relative,
                    rows: batch.num_rows(),
                    bytes,
                });
            }
        }
        Ok(files)
    }

    /// Stage `files` (and the merged files of `merges`) and commit them with the ledger entry
    /// `next_offset` for this partition: [`Self::stage`], then [`Self::publish`].
    pub async fn commit(
        &self,
        ledger: &mut PartitionLedger,
        next_offset: i64,
        files: Vec<EncodedFile>,
        merges: Vec<MergedFile>,
        state: CommitState,
    ) -> Result<CommitTimes, LakeError> {
        let staged = self
            .stage(ledger, next_offset, files, merges, state)
            .await?;
        self.publish(ledger, staged).await
    }

    /// Write `files` (and the merged files of `merges`) and the ledger entry of the step after
    /// `ledger` to that step's staging directory; nothing is visible yet. `ledger` may be the
    /// one a commit still going on will leave ([`PartitionLedger::after_commit`]): the staged
    /// commit is then published only if that commit leaves exactly this ledger, else discarded
    /// ([`Self::discard`]).
    ///
    /// The files and the ledger entry are staged concurrently: on HDFS each file's close waits
    /// for the datanode to report the block (hdfs-native retries `complete` after 500 ms), so one
    /// file after the other would cost that wait per file.
    pub async fn stage(
        &self,
        ledger: &PartitionLedger,
        next_offset: i64,
        files: Vec<EncodedFile>,
        merges: Vec<MergedFile>,
        state: CommitState,
    ) -> Result<StagedCommit, LakeError> {
        let started = std::time::Instant::now();
        let staging = self.ledger.staging_dir(&ledger.tp, ledger.seq + 1);
        let moves = files
            .iter()
            .enumerate()
            .map(|(i, f)| FileMove {
                staged: staging.clone().join(format!("{i:05}.parquet")).to_string(),
                visible: self.location.path(&[&f.dataset, &f.relative]).to_string(),
            })
            .collect::<Vec<_>>();
        let compactions: Vec<Compaction> = merges
            .iter()
            .enumerate()
            .map(|(i, m)| Compaction {
                file: FileMove {
                    staged: staging.clone().join(format!("c{i:05}.parquet")).to_string(),
                    visible: self.location.path(&[&m.dataset, &m.relative]).to_string(),
                },
                replaces: m.replaces.clone(),
                rows: m.rows as u64,
            })
            .collect();
        let merged_moves: Vec<FileMove> = compactions.iter().map(|c| c.file.clone()).collect();
        let staged_files = files
            .into_iter()
            .map(|f| f.bytes)
            .zip(&moves)
            .chain(merges.into_iter().map(|m| m.bytes).zip(&merged_moves));
        let puts = staged_files.map(|(bytes, m)| async move {
            let staged = Path::from(m.staged.as_str());
            self.location
                .store
                .put(&staged, PutPayload::from(bytes))
                .await
                .map_err(|source| LakeError::Store {
                    path: m.staged.clone(),
                    source,
                })
        });
        let entry =
            self.ledger
                .next_entry(ledger, next_offset, moves.clone(), compactions, state)?;
        let stage_entry = async {
            self.ledger
                .stage_entry(&entry)
                .await
                .map_err(LakeError::from)
        };
        futures::future::try_join(futures::future::try_join_all(puts), stage_entry).await?;
        Ok(StagedCommit {
            entry,
            staged: started.elapsed(),
        })
    }

    /// Publish a staged commit as the next step of `ledger` (the commit point; see
    /// [`OffsetLedger::publish`]). On success `ledger` is advanced.
    pub async fn publish(
        &self,
        ledger: &mut PartitionLedger,
        staged: StagedCommit,
    ) -> Result<CommitTimes, LakeError> {
        let started = std::time::Instant::now();
        self.ledger.publish(ledger, staged.entry).await?;
        Ok(CommitTimes {
            staged: staged.staged,
            published: started.elapsed(),
        })
    }

    /// Remove what staging the step after `ledger` wrote (a staged commit that will not be
    /// published, or whose staging failed half-way).
    pub async fn discard(&self, ledger: &PartitionLedger) {
        self.ledger.discard_step(&ledger.tp, ledger.seq + 1).await;
    }
}

/// A partition's commit written to its staging directory, waiting to be published
/// ([`LakeSink::stage`]).
#[derive(Debug)]
pub struct StagedCommit {
    entry: crate::ledger::StagedEntry,
    staged: std::time::Duration,
}

/// Encode one batch as a Parquet file in memory, every column nullable.
pub fn encode_parquet(
    batch: &RecordBatch,
    props: &WriterProperties,
) -> Result<Bytes, parquet::errors::ParquetError> {
    let batch = &nullable(batch)?;
    // Sized by the rows' own bytes (a slice of a larger batch reports all of that batch's
    // buffers in get_array_memory_size).
    let bytes: usize = batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
        .sum();
    let mut buf = Vec::with_capacity(bytes / 4 + 1024);
    let mut writer = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props.clone()))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(Bytes::from(buf))
}

/// `batch` with every field nullable (the lake's file schema: a dataset may gain columns).
pub fn nullable(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    let schema = batch.schema();
    if schema.fields().iter().all(|f| f.is_nullable()) {
        return Ok(batch.clone());
    }
    let loose = Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    );
    RecordBatch::try_new(Arc::new(loose), batch.columns().to_vec())
}

/// A Hive path segment: `key=value` with unusual characters percent-encoded.
pub fn hive_segment(key: &str, value: Option<&str>) -> String {
    let Some(value) = value else {
        return format!("{key}={HIVE_NULL}");
    };
    let mut out = String::with_capacity(key.len() + value.len() + 1);
    out.push_str(key);
    out.push('=');
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Split a dataset's rows by their partition values: (relative directory, rows without the
/// partition columns).
fn split_hive(out: &DatasetOutput) -> Result<Vec<(String, RecordBatch)>, arrow::error::ArrowError> {
    let Some(first) = out.batches.first() else {
        return Ok(Vec::new());
    };
    let batch = concat_batches(&first.schema(), &out.batches)?;
    if out.partition_by.is_empty() {
        return Ok(vec![(String::new(), batch)]);
    }
    let schema = batch.schema();
    let part_idx: Vec<usize> = out
        .partition_by
        .iter()
        .map(|c| schema.index_of(c))
        .collect::<Result<_, _>>()?;
    let keep: Vec<usize> = (0..schema.fields().len())
        .filter(|i| !part_idx.contains(i))
        .collect();
    let data_schema: SchemaRef = Arc::new(Schema::new(
        keep.iter()
            .map(|&i| schema.field(i).clone())
            .collect::<Vec<_>>(),
    ));
    let part_cols: Vec<ArrayRef> = part_idx
        .iter()
        .map(|&i| Arc::clone(batch.column(i)))
        .collect();
    let converter = RowConverter::new(
        part_cols
            .iter()
            .map(|a| SortField::new(a.data_type().clone()))
            .collect(),
    )?;
    let rows = converter.convert_columns(&part_cols)?;
    let mut groups: HashMap<_, Vec<u32>> = HashMap::new();
    for i in 0..batch.num_rows() {
        groups.entry(rows.row(i)).or_default().push(i as u32);
    }
    let mut result = Vec::with_capacity(groups.len());
    for (_, idx) in groups {
        let first_row = idx[0] as usize;
        let dir = out
            .partition_by
            .iter()
            .zip(&part_cols)
            .map(|(k, col)| {
                let v = (!col.is_null(first_row))
                    .then(|| array_value_to_string(col, first_row))
                    .transpose()?;
                Ok(hive_segment(k, v.as_deref()))
            })
            .collect::<Result<Vec<_>, arrow::error::ArrowError>>()?
            .join("/");
        let picked = take_record_batch(&batch, &UInt32Array::from(idx))?;
        let data = RecordBatch::try_new(
            Arc::clone(&data_schema),
            keep.iter().map(|&i| Arc::clone(picked.column(i))).collect(),
        )?;
        result.push((dir, data));
    }
    result.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hive_segments_escape_what_paths_cannot_hold() {
        assert_eq!(hive_segment("dt", Some("2026-11-27")), "dt=2026-11-27");
        assert_eq!(hive_segment("city", Some("New York")), "city=New%20York");
        assert_eq!(hive_segment("k", Some("a/b=c%")), "k=a%2Fb%3Dc%25");
        assert_eq!(hive_segment("k", None), "k=__HIVE_DEFAULT_PARTITION__");
    }
}
