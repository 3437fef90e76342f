//! The lake as SQL tables: every dataset directory under the root becomes a table.
//!
//! Used by `carflow sql` and by tests. A dataset is a directory under the lake root whose name
//! does not start with `_` or `.`; its Hive partition columns (`dt=…/`) are read from the
//! directory names, so `SELECT … FROM cars WHERE dt = '2026-01-01'` prunes to one directory.
//! Partition values are strings, as Hive writes them in paths.
//!
//! Before listing, the latest commit of every partition is rolled forward (a writer that died
//! between its commit point and its renames leaves its files staged; see [`crate::ledger`]), so
//! readers see exactly the committed data. `dead_letters` is always a table, empty when nothing
//! went wrong.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::{DataFusionError, Result};
use datafusion::prelude::SessionContext;
use object_store::ObjectStore;
use object_store::path::Path;

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

/// Register every dataset of the lake as a table of `ctx` (and the lake's store, for HDFS).
pub async fn register_lake(ctx: &SessionContext, location: &Location) -> Result<Vec<Dataset>> {
    ctx.register_object_store(&location.store_url, Arc::clone(&location.store));
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
        let config = match ListingTableConfig::new(url)
            .with_listing_options(options)
            .infer_schema(&ctx.state())
            .await
        {
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
