//! The lake as SQL tables: every dataset directory under the root becomes a table.
//!
//! Used by `carflow sql` and by tests. A dataset is a directory under the lake root whose name
//! does not start with `_` or `.`; its Hive partition columns (`dt=…/`) are read from the
//! directory names, so `SELECT … FROM cars WHERE dt = '2026-01-01'` prunes to one directory.
//! Partition values are strings, as Hive writes them in paths.
//!
//! Before listing, the latest commit of every partition is rolled forward (a writer that died
//! between its commit point and its renames leaves its files staged; see [`crate::ledger`]), so
//! readers see exactly the committed data. Every listing skips the sources of a merge whose
//! merged file is already there ([`SkipCovered`]; see [`crate::sink::compact`]), and nothing is
//! cached between queries ([`lake_runtime`]). `dead_letters` is always a table, empty when
//! nothing went wrong.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::DataType;
use async_trait::async_trait;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionContext;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use crate::storage::Location;

/// A dataset found in the lake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// Table name (the directory name).
    pub name: String,
    /// Its URL.
    pub url: String,
    /// Hive partition columns, in path order.
    pub partition_cols: Vec<String>,
}

/// List the datasets under `location`.
pub async fn datasets(location: &Location) -> Result<Vec<Dataset>> {
    let store = &location.store;
    let top = store
        .list_with_delimiter(Some(&location.prefix))
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    let mut out = Vec::new();
    for dir in top.common_prefixes {
        let Some(name) = dir.filename().map(str::to_string) else {
            continue;
        };
        if name.starts_with('_') || name.starts_with('.') {
            continue;
        }
        let partition_cols = partition_columns(store.as_ref(), &dir).await?;
        out.push(Dataset {
            url: location.dir_url(&name),
            name,
            partition_cols,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

async fn partition_columns(store: &dyn ObjectStore, dir: &Path) -> Result<Vec<String>> {
    let mut cols = Vec::new();
    let mut at = dir.clone();
    loop {
        let l = store
            .list_with_delimiter(Some(&at))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let Some(next) = l
            .common_prefixes
            .iter()
            .find(|p| p.filename().is_some_and(|f| f.contains('=')))
        else {
            return Ok(cols);
        };
        let seg = next.filename().unwrap_or_default();
        cols.push(seg.split('=').next().unwrap_or_default().to_string());
        at = next.clone();
    }
}

/// A runtime for sessions that read the lake: DataFusion caches a table's file listing for the
/// whole session by default, which would hide every later commit from a long `carflow sql`
/// session (and, after a merge, name files that are gone). Listings are not cached here.
pub fn lake_runtime() -> RuntimeEnvBuilder {
    RuntimeEnvBuilder::new()
        .with_cache_manager(CacheManagerConfig::default().with_list_files_cache_limit(0))
}

/// A session on [`lake_runtime`], for reading the lake with [`register_lake`].
pub fn lake_context() -> Result<SessionContext> {
    Ok(SessionContext::new_with_config_rt(
        datafusion::prelude::SessionConfig::new(),
        lake_runtime().build_arc()?,
    ))
}

/// Did reading the lake fail because a merge of small files (lake.compact_files) removed a file
/// the reader had listed? Then the lake is consistent and the read is right when run again.
/// Stores say it in their own words: object_store's local and in-memory stores "not found" /
/// "No such file", HDFS a remote `java.io.FileNotFoundException` ("File does not exist").
pub fn is_merged_away(text: &str) -> bool {
    text.contains("part-")
        && [
            "not found",
            "No such file",
            "FileNotFoundException",
            "File does not exist",
        ]
        .iter()
        .any(|m| text.contains(m))
}

/// An object store whose listings leave out the files a visible merged file covers (the sources
/// of a merge on HDFS, between the merged file's rename and their deletion).
#[derive(Debug)]
pub struct SkipCovered {
    inner: Arc<dyn ObjectStore>,
}

impl SkipCovered {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self { inner }
    }
}

impl fmt::Display for SkipCovered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SkipCovered({})", self.inner)
    }
}

/// `objects` without those a merged file in the same directory covers.
fn without_covered(objects: Vec<ObjectMeta>) -> Vec<ObjectMeta> {
    let mut by_dir: BTreeMap<Vec<String>, Vec<usize>> = BTreeMap::new();
    for (i, o) in objects.iter().enumerate() {
        let parts: Vec<String> = o.location.parts().map(|p| p.as_ref().to_string()).collect();
        let dir = parts[..parts.len().saturating_sub(1)].to_vec();
        by_dir.entry(dir).or_default().push(i);
    }
    let mut skip = vec![false; objects.len()];
    for idx in by_dir.values() {
        let names: Vec<&str> = idx
            .iter()
            .map(|&i| objects[i].location.filename().unwrap_or_default())
            .collect();
        let covered = crate::sink::compact::covered(names.iter().copied());
        if covered.is_empty() {
            continue;
        }
        for (&i, n) in idx.iter().zip(&names) {
            skip[i] = covered.contains(n);
        }
    }
    objects
        .into_iter()
        .zip(skip)
        .filter_map(|(o, s)| (!s).then_some(o))
        .collect()
}

#[async_trait]
impl ObjectStore for SkipCovered {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let all = self.inner.list(prefix);
        futures::stream::once(async move {
            let objects: Vec<ObjectMeta> = all.try_collect().await?;
            Ok::<_, object_store::Error>(futures::stream::iter(
                without_covered(objects).into_iter().map(Ok),
            ))
        })
        .try_flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let mut l = self.inner.list_with_delimiter(prefix).await?;
        l.objects = without_covered(std::mem::take(&mut l.objects));
        Ok(l)
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// Register every dataset of the lake as a table of `ctx` (and the lake's store, for HDFS),
/// listed through [`SkipCovered`]. Build `ctx` on [`lake_runtime`], or a long session keeps
/// the listings of its first query.
pub async fn register_lake(ctx: &SessionContext, location: &Location) -> Result<Vec<Dataset>> {
    ctx.register_object_store(
        &location.store_url,
        Arc::new(SkipCovered::new(Arc::clone(&location.store))),
    );
    let ledger = crate::ledger::OffsetLedger::new(location.clone(), "reader");
    if let Err(e) = ledger.roll_forward_all().await {
        tracing::warn!(error = %e, "cannot finish an interrupted commit; the lake may show less than is committed");
    }
    let found = datasets(location).await?;
    for d in &found {
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(
                d.partition_cols
                    .iter()
                    .map(|c| (c.clone(), DataType::Utf8))
                    .collect(),
            );
        let url = ListingTableUrl::parse(&d.url)?;
        // Inferring the schema lists the files and reads footers: a merge that removed a listed
        // file in between fails it; listed again, the merged file is there.
        let mut attempt = 0;
        let inferred = loop {
            let config = ListingTableConfig::new(url.clone()).with_listing_options(options.clone());
            match config.infer_schema(&ctx.state()).await {
                Err(e) if attempt < 3 && is_merged_away(&e.to_string()) => attempt += 1,
                other => break other,
            }
        };
        let config = match inferred {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(dataset = %d.name, error = %e, "skipping a lake directory that holds no readable Parquet");
                continue;
            }
        };
        let table = ListingTable::try_new(config)?;
        ctx.register_table(d.name.as_str(), Arc::new(table))?;
    }
    let registered: Vec<Dataset> = found
        .into_iter()
        .filter(|d| ctx.table_exist(d.name.as_str()).unwrap_or(false))
        .collect();
    let dead = crate::sink::dead_letter::DATASET;
    if !ctx.table_exist(dead).unwrap_or(false) {
        let schema = crate::sink::dead_letter::schema();
        let empty = datafusion::datasource::MemTable::try_new(schema, vec![vec![]])?;
        ctx.register_table(dead, Arc::new(empty))?;
    }
    Ok(registered)
}

#[cfg(test)]
mod merged_away_tests {
    use super::is_merged_away;

    /// Each store's words for a file a merge removed after a reader listed it.
    #[test]
    fn a_file_a_merge_removed_is_recognised_in_each_stores_words() {
        let part = "cars/dt=2026-01-01/part-merge-263d8ba085-hnVW8IoA-1-00000000000000002281-00000000000000002880.parquet";
        let local =
            format!("Object at location {part} not found: No such file or directory (os error 2)");
        let hdfs = format!(
            "Parquet error: External: Generic HdfsObjectStore error: RPC error: \
             java.io.FileNotFoundException File does not exist: /carflow-tests/merge-cbae305d23/{part}\n\
             \tat org.apache.hadoop.hdfs.server.namenode.INodeFile.valueOf(INodeFile.java:87)"
        );
        assert!(is_merged_away(&local));
        assert!(is_merged_away(&hdfs), "{hdfs}");
        // Another error, or a missing file that is not a lake part, is not a merge.
        assert!(!is_merged_away(
            "Object at location _carflow/ledger/x not found"
        ));
        assert!(!is_merged_away(&format!(
            "Parquet error: corrupt footer in {part}"
        )));
    }
}
