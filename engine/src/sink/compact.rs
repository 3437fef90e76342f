//! Compaction: fewer, larger lake files, with every reader exact while it happens.
//!
//! Each commit writes one file per (dataset, Hive directory, Kafka partition): at 1,000 rows a
//! second a day directory would gather thousands of files an hour. So after a commit, the owner
//! of a Kafka partition merges that partition's newest small files in a directory into one,
//! and the merge is committed like a batch, as part of the partition's next ledger entry
//! ([`crate::ledger::Compaction`]): fenced against other writers, rolled forward after a crash.
//!
//! **Names.** Files are named `part-<topic>[-<topic id>]-<partition>-<first>-<last>.parquet`
//! (zero-padded offsets); a merged file is named after the offsets it spans, so it *covers* the
//! names of its sources. Only the partition's owner writes names of its prefix, and only newer
//! offsets than the ledger holds, so no other file of that prefix can appear inside a merged
//! file's range.
//!
//! **Readers never see a row twice or miss one.**
//! - On a local lake the merged file appears and its sources disappear in one step: the
//!   directory is rebuilt beside it (hard links) and exchanged with it (`renameat2`
//!   `RENAME_EXCHANGE`), under a per-dataset lock that every rename into the dataset takes; so
//!   stock readers (DuckDB, datafusion-cli) are exact too.
//! - On HDFS there is no such step: the merged file is renamed into place, then its sources are
//!   deleted. `carflow`'s readers skip a file whose range another listed file covers
//!   ([`covered`], applied by [`crate::catalog`] to every listing), so they are exact.
//! - A query that listed a directory before a merge and opens a source after it fails with "not
//!   found" (never with a wrong answer); `carflow sql` runs such a query again.
//!
//! **What gets merged** ([`plan_run`]): of a directory's files of one partition (by first
//! offset), the newest run of at least `lake.compact_files`, extended to older files while each is
//! no larger than the run so far and the run stays under `lake.compact_bytes` — size-tiered, so a
//! row is rewritten about log₂(files) times, and a directory holds at most
//! `compact_files` + log₂(…) files per partition.

use std::collections::HashSet;

use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::WriterProperties;

/// The parsed name of a lake data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartName {
    /// `part-<topic>[-<topic id>]-<partition>`: which partition's offsets it holds.
    pub prefix: String,
    /// First offset it covers.
    pub first: i64,
    /// Last offset it covers.
    pub last: i64,
}

/// The prefix of a partition's file names.
pub fn part_prefix(topic: &str, topic_id: Option<&str>, partition: i32) -> String {
    let id = topic_id
        .map(|id| {
            format!(
                "-{}",
                crate::ledger::safe_segment(&id.chars().take(8).collect::<String>())
            )
        })
        .unwrap_or_default();
    format!(
        "part-{}{id}-{partition}",
        crate::ledger::safe_segment(topic)
    )
}

/// A file name of `prefix` covering `first..=last`.
pub fn part_file_name(prefix: &str, first: i64, last: i64) -> String {
    format!("{prefix}-{first:020}-{last:020}.parquet")
}

/// Parse a data file's name (`None` for anything else: backfill files, foreign files).
pub fn parse_part_name(name: &str) -> Option<PartName> {
    let stem = name.strip_suffix(".parquet")?;
    if !stem.starts_with("part-") {
        return None;
    }
    let mut it = stem.rsplitn(3, '-');
    let last = it.next()?;
    let first = it.next()?;
    let prefix = it.next()?;
    let offset = |s: &str| {
        (s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<i64>().ok())
            .flatten()
    };
    let (first, last) = (offset(first)?, offset(last)?);
    (first <= last && prefix.len() > "part-".len()).then(|| PartName {
        prefix: prefix.to_string(),
        first,
        last,
    })
}

/// Of the file names listed in one directory, those a reader must skip: files whose offsets lie
/// within another listed file of the same prefix (the sources of a merge whose merged file is
/// already visible).
pub fn covered<'a>(names: impl IntoIterator<Item = &'a str>) -> HashSet<&'a str> {
    let mut parsed: Vec<(PartName, &str)> = names
        .into_iter()
        .filter_map(|n| parse_part_name(n).map(|p| (p, n)))
        .collect();
    // By prefix, then first offset ascending and last descending: a file is covered when an
    // earlier one of its prefix reaches at least as far.
    parsed.sort_by(|(a, _), (b, _)| {
        (a.prefix.as_str(), a.first, std::cmp::Reverse(a.last)).cmp(&(
            b.prefix.as_str(),
            b.first,
            std::cmp::Reverse(b.last),
        ))
    });
    let mut out = HashSet::new();
    let mut reach: Option<(&str, i64)> = None;
    for (p, name) in &parsed {
        match reach {
            Some((prefix, last)) if prefix == p.prefix && last >= p.last => {
                out.insert(*name);
            }
            Some((prefix, last)) if prefix == p.prefix => reach = Some((prefix, last.max(p.last))),
            _ => reach = Some((p.prefix.as_str(), p.last)),
        }
    }
    out
}

/// A file of a directory, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// File name.
    pub name: String,
    /// Parsed name.
    pub part: PartName,
    /// Size in bytes.
    pub size: u64,
}

/// Which files of one partition in one directory to merge: indexes into `files` (sorted by
/// first offset, covered files already left out), a contiguous newest run, or `None`.
pub fn plan_run(
    files: &[Listed],
    min_files: usize,
    max_bytes: u64,
) -> Option<std::ops::Range<usize>> {
    if min_files < 2 || files.len() < min_files {
        return None;
    }
    let n = files.len();
    let mut total = 0u64;
    let mut start = n;
    for i in (0..n).rev() {
        let size = files[i].size;
        if total + size > max_bytes {
            break;
        }
        // Once the run is long enough, take an older file only if it is not larger than the run:
        // runs merge with runs of their own size.
        if n - start >= min_files && size > total {
            break;
        }
        total += size;
        start = i;
    }
    (n - start >= min_files).then_some(start..n)
}

/// A merged file, encoded.
#[derive(Debug, Clone)]
pub struct Merged {
    /// Its bytes.
    pub bytes: Bytes,
    /// Rows in it (the sum of its sources').
    pub rows: usize,
    /// How many of the given sources it holds: the newest ones with one schema (a dataset that
    /// gained a column starts a new run).
    pub sources: usize,
}

/// Merge Parquet files (oldest first) into one. Only the newest files sharing the newest file's
/// schema are merged; `None` when fewer than `min_files` do. Rows are written in the given
/// order, in row groups of up to 128k rows.
pub fn merge(
    files: &[Bytes],
    props: &WriterProperties,
    min_files: usize,
) -> Result<Option<Merged>, parquet::errors::ParquetError> {
    let mut readers = Vec::with_capacity(files.len());
    for f in files {
        readers.push(ParquetRecordBatchReaderBuilder::try_new(f.clone())?);
    }
    let Some(newest) = readers.last() else {
        return Ok(None);
    };
    let schema: SchemaRef = newest.schema().clone();
    let same = readers
        .iter()
        .rev()
        .take_while(|r| r.schema().fields() == schema.fields())
        .count();
    if same < min_files.max(2) {
        return Ok(None);
    }
    let skip = readers.len() - same;
    let expected: i64 = readers[skip..]
        .iter()
        .map(|r| r.metadata().file_metadata().num_rows())
        .sum();
    let props = props
        .clone()
        .into_builder()
        .set_max_row_group_row_count(Some(128 * 1024))
        .build();
    let total_bytes: usize = files[skip..].iter().map(Bytes::len).sum();
    let mut buf = Vec::with_capacity(total_bytes + 4096);
    let mut writer = ArrowWriter::try_new(&mut buf, schema, Some(props))?;
    let mut rows = 0usize;
    for r in readers.into_iter().skip(skip) {
        for batch in r.build()? {
            let batch = batch?;
            rows += batch.num_rows();
            writer.write(&batch)?;
        }
    }
    writer.close()?;
    if rows as i64 != expected {
        return Err(parquet::errors::ParquetError::General(format!(
            "merging {same} files read {rows} rows, their footers say {expected}"
        )));
    }
    Ok(Some(Merged {
        bytes: Bytes::from(buf),
        rows,
        sources: same,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn listed(first: i64, last: i64, size: u64) -> Listed {
        let name = part_file_name("part-t-0", first, last);
        Listed {
            part: parse_part_name(&name).unwrap(),
            name,
            size,
        }
    }

    #[test]
    fn names_round_trip_and_foreign_names_are_not_parsed() {
        let prefix = part_prefix("car.sales", Some("AbCdEfGh-123"), 3);
        assert_eq!(prefix, "part-car.sales-AbCdEfGh-3");
        let name = part_file_name(&prefix, 5, 1_000_000);
        assert_eq!(
            parse_part_name(&name),
            Some(PartName {
                prefix,
                first: 5,
                last: 1_000_000
            })
        );
        for other in [
            "backfill-t-0-00000000000000000000-00000000000000000009.parquet",
            "part-t-0-1-2.parquet",
            "part-t-0-00000000000000000009-00000000000000000000.parquet",
            "part-00000000000000000000-00000000000000000009.parquet",
            "part-t-0-00000000000000000000-00000000000000000009.json",
            "x.parquet",
        ] {
            assert_eq!(parse_part_name(other), None, "{other}");
        }
    }

    #[test]
    fn a_file_is_covered_only_by_a_wider_file_of_its_own_partition() {
        let a = part_file_name("part-t-0", 0, 9);
        let b = part_file_name("part-t-0", 10, 19);
        let merged = part_file_name("part-t-0", 0, 19);
        let later = part_file_name("part-t-0", 20, 29);
        let other = part_file_name("part-t-1", 0, 9);
        let other_wide = part_file_name("part-t-10", 0, 99);
        let names = [
            a.as_str(),
            b.as_str(),
            merged.as_str(),
            later.as_str(),
            other.as_str(),
            other_wide.as_str(),
            "backfill-x.parquet",
        ];
        let skip = covered(names);
        assert_eq!(skip, HashSet::from([a.as_str(), b.as_str()]));
        // Without the merged file nothing is covered.
        assert!(covered([a.as_str(), b.as_str(), later.as_str()]).is_empty());
    }

    #[test]
    fn runs_merge_the_newest_files_and_grow_by_size_tiers() {
        // Fewer than the minimum: nothing.
        let few: Vec<_> = (0..3).map(|i| listed(i * 10, i * 10 + 9, 100)).collect();
        assert_eq!(plan_run(&few, 4, 1 << 30), None);
        // Four small files after a big one: the four.
        let mut files = vec![listed(0, 99, 10_000)];
        files.extend((1..5).map(|i| listed(i * 100, i * 100 + 99, 100)));
        assert_eq!(plan_run(&files, 4, 1 << 30), Some(1..5));
        // A run of the same size before them joins.
        let mut files = vec![listed(0, 99, 10_000), listed(100, 499, 400)];
        files.extend((5..9).map(|i| listed(i * 100, i * 100 + 99, 100)));
        assert_eq!(plan_run(&files, 4, 1 << 30), Some(1..6));
        // Never past the size limit.
        assert_eq!(plan_run(&files, 4, 799), Some(2..6));
        assert_eq!(plan_run(&files, 4, 399), None);
        // A minimum below two never merges.
        assert_eq!(plan_run(&files, 1, 1 << 30), None);
    }

    fn file(schema: &Arc<Schema>, ids: std::ops::Range<i64>) -> Bytes {
        let cols: Vec<arrow::array::ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Int64 => Arc::new(Int64Array::from_iter_values(ids.clone())) as _,
                _ => Arc::new(StringArray::from_iter_values(
                    ids.clone().map(|i| format!("é{i}")),
                )) as _,
            })
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
        crate::sink::lake::encode_parquet(&batch, &WriterProperties::default()).unwrap()
    }

    #[test]
    fn merging_keeps_every_row_in_order_and_stops_at_a_schema_change() {
        let old = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let new = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let files = vec![
            file(&old, 0..5),
            file(&new, 5..10),
            file(&new, 10..20),
            file(&new, 20..21),
        ];
        let props = WriterProperties::default();
        let m = merge(&files, &props, 2).unwrap().unwrap();
        assert_eq!((m.rows, m.sources), (16, 3));
        let rows: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(m.bytes)
            .unwrap()
            .build()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let ids: Vec<i64> = rows
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(ids, (5..21).collect::<Vec<_>>());
        // Too few of the newest schema: nothing.
        assert!(merge(&files, &props, 4).unwrap().is_none());
    }
}
