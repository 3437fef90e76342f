//! Reference tables for enrichment: every `.csv` (with a header line) and `.parquet` file of the
//! reference directory (`reference.dir`, default `reference/`) is a table the queries can JOIN,
//! named after the file: `reference/dealers.csv` is `dealers`, so a query can say
//! `JOIN dealers USING (dealer_id)`.
//!
//! A table is read whole into memory when the engine starts and read again when its file changes
//! (size or modification time), at a batch boundary: the batches after it see the new rows. The
//! queries keep their plans (a table's rows sit in a [`SlotTable`], swapped in place), so a
//! reload must keep the table's columns: a file whose new version does not parse, or whose
//! columns changed (other names, or types the old ones cannot be cast from), is refused, the
//! previous version stays in use, and the error names the file (logged, and on `/health` as
//! `reference`). A new file becomes a table at the next batch boundary, for the queries planned
//! from then on; a removed file keeps its last version until a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};

use crate::schema::SOURCE_TABLE;
use crate::transform::slot::SlotTable;

type Stamp = (Option<SystemTime>, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().ok(), m.len()))
}

/// One loaded table.
#[derive(Debug)]
struct Loaded {
    file: PathBuf,
    stamp: Stamp,
    slot: Arc<SlotTable>,
    rows: usize,
}

/// What a refresh did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refresh {
    /// Tables (re)loaded, with their row counts.
    pub loaded: Vec<(String, usize)>,
    /// Files refused now, with why (the previous version, if any, stays).
    pub refused: Vec<(PathBuf, String)>,
}

/// The reference tables of a directory, registered in a session.
#[derive(Debug)]
pub struct ReferenceTables {
    dir: PathBuf,
    tables: BTreeMap<String, Loaded>,
    /// Files whose last version was refused, with why (until they change again).
    refused: BTreeMap<PathBuf, (Option<Stamp>, String)>,
}

/// A table name for `file`, or why it cannot be one.
fn table_name(file: &Path) -> Result<String, String> {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ok = !stem.is_empty()
        && stem
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !stem.starts_with(|c: char| c.is_ascii_digit());
    if !ok {
        return Err(format!(
            "`{stem}` is not a table name: name reference files with lowercase letters, digits and `_`"
        ));
    }
    if stem == SOURCE_TABLE {
        return Err(format!(
            "`{SOURCE_TABLE}` is the micro-batch; rename the file"
        ));
    }
    Ok(stem)
}

/// Read a CSV (with a header line; column types inferred) or Parquet file whole.
pub async fn read_file(path: &Path) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
    let ctx = SessionContext::new();
    let p = path.to_string_lossy().into_owned();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let df = match ext.as_str() {
        "csv" => {
            ctx.read_csv(p.as_str(), CsvReadOptions::new().has_header(true))
                .await
        }
        "parquet" => {
            ctx.read_parquet(p.as_str(), ParquetReadOptions::default())
                .await
        }
        other => {
            return Err(format!(
                "`.{other}` files are not read; use .csv or .parquet"
            ));
        }
    }
    .map_err(|e| clean(&e))?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    if schema.fields().is_empty() {
        return Err("no columns (a CSV file needs a header line)".into());
    }
    let batches = df.collect().await.map_err(|e| clean(&e))?;
    Ok((schema, batches))
}

fn clean(e: &DataFusionError) -> String {
    e.to_string().replace('\n', " ")
}

/// `batches` cast to `schema` (same column names, castable types), or why not.
fn conform(
    schema: &SchemaRef,
    new: &SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>, String> {
    let names = |s: &SchemaRef| {
        s.fields()
            .iter()
            .map(|f| f.name().clone())
            .collect::<Vec<_>>()
    };
    if names(schema) != names(new) {
        return Err(format!(
            "its columns changed from ({}) to ({}): a running engine keeps a table's columns; restart it to use the new ones",
            names(schema).join(", "),
            names(new).join(", ")
        ));
    }
    batches
        .iter()
        .map(|b| {
            crate::schema::cast_to(b, schema).map_err(|e| {
                format!(
                    "a column no longer reads as its type ({e}); restart the engine to change a column's type"
                )
            })
        })
        .collect()
}

impl ReferenceTables {
    /// No tables yet; [`ReferenceTables::refresh`] reads `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            tables: BTreeMap::new(),
            refused: BTreeMap::new(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Table names and row counts.
    pub fn tables(&self) -> Vec<(String, usize)> {
        self.tables
            .iter()
            .map(|(k, v)| (k.clone(), v.rows))
            .collect()
    }

    /// Files refused now, for `/health` (None when all are in use).
    pub fn problem(&self) -> Option<String> {
        (!self.refused.is_empty()).then(|| {
            self.refused
                .iter()
                .map(|(f, (_, why))| format!("{}: {why}", f.display()))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// Read the files that are new or changed since the last refresh and register them in `ctx`.
    /// A directory that does not exist has no tables.
    pub async fn refresh(&mut self, ctx: &SessionContext) -> Refresh {
        let mut out = Refresh::default();
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.extension().is_some_and(|e| {
                            e.eq_ignore_ascii_case("csv") || e.eq_ignore_ascii_case("parquet")
                        })
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        files.sort();
        self.refused.retain(|f, _| files.contains(f));
        let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
        for file in files {
            let now = stamp(&file);
            let refuse = |why: String, out: &mut Refresh, me: &mut Self| {
                if me
                    .refused
                    .get(&file)
                    .is_none_or(|(s, w)| *s != now || *w != why)
                {
                    out.refused.push((file.clone(), why.clone()));
                }
                me.refused.insert(file.clone(), (now, why));
            };
            let name = match table_name(&file) {
                Ok(n) => n,
                Err(why) => {
                    refuse(why, &mut out, self);
                    continue;
                }
            };
            if let Some(other) = seen.get(&name) {
                let why = format!("table `{name}` comes from {} already", other.display());
                refuse(why, &mut out, self);
                continue;
            }
            seen.insert(name.clone(), file.clone());
            let current = self.tables.get(&name);
            if current.is_some_and(|l| l.file == file && Some(l.stamp) == now) {
                continue;
            }
            if self
                .refused
                .get(&file)
                .is_some_and(|(s, _)| *s == now && now.is_some())
            {
                continue;
            }
            let Some(now) = now else { continue };
            let (schema, batches) = match read_file(&file).await {
                Ok(r) => r,
                Err(why) => {
                    refuse(why, &mut out, self);
                    continue;
                }
            };
            match self.tables.get_mut(&name) {
                Some(l) => {
                    let table_schema = datafusion::catalog::TableProvider::schema(l.slot.as_ref());
                    match conform(&table_schema, &schema, batches) {
                        Ok(b) => {
                            l.rows = b.iter().map(RecordBatch::num_rows).sum();
                            l.slot.set(b);
                            l.stamp = now;
                            l.file = file.clone();
                            self.refused.remove(&file);
                            out.loaded.push((name.clone(), l.rows));
                        }
                        Err(why) => refuse(why, &mut out, self),
                    }
                }
                None => {
                    let slot = Arc::new(SlotTable::new(Arc::clone(&schema)));
                    let rows = batches.iter().map(RecordBatch::num_rows).sum();
                    slot.set(batches);
                    match ctx.register_table(name.as_str(), Arc::clone(&slot) as _) {
                        Ok(_) => {
                            self.refused.remove(&file);
                            self.tables.insert(
                                name.clone(),
                                Loaded {
                                    file: file.clone(),
                                    stamp: now,
                                    slot,
                                    rows,
                                },
                            );
                            out.loaded.push((name.clone(), rows));
                        }
                        Err(e) => refuse(clean(&e), &mut out, self),
                    }
                }
            }
        }
        out
    }

    /// [`ReferenceTables::refresh`], logging what happened.
    pub async fn refresh_logged(&mut self, ctx: &SessionContext) -> Refresh {
        let r = self.refresh(ctx).await;
        for (name, rows) in &r.loaded {
            tracing::info!(table = %name, rows, dir = %self.dir.display(), "reference table loaded; it applies from the next batch");
        }
        for (file, why) in &r.refused {
            tracing::error!(file = %file.display(), reason = %why, "reference file refused; the previous version stays in use");
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_reload_keeps_the_previous_version() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("dealers.csv");
        std::fs::write(&f, "dealer_id,region\nD0001,Northeast\nD0002,West\n").unwrap();
        let ctx = SessionContext::new();
        let mut r = ReferenceTables::new(dir.path());
        let done = r.refresh(&ctx).await;
        assert_eq!(done.loaded, vec![("dealers".to_string(), 2)]);
        let count = |ctx: SessionContext| async move {
            let b = ctx
                .sql("SELECT count(*) FROM dealers WHERE region = 'West'")
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            arrow::util::display::array_value_to_string(b[0].column(0), 0).unwrap()
        };
        assert_eq!(count(ctx.clone()).await, "1");
        // Other columns: refused, the old rows stay.
        std::fs::write(&f, "id,area,extra\nD0001,West,1\n").unwrap();
        let done = r.refresh(&ctx).await;
        assert!(done.loaded.is_empty());
        assert_eq!(done.refused.len(), 1, "{done:?}");
        assert!(r.problem().unwrap().contains("dealers.csv"));
        assert_eq!(count(ctx.clone()).await, "1");
        // A good edit applies.
        std::fs::write(&f, "dealer_id,region\nD0001,West\nD0002,West\nD0003,West\n").unwrap();
        let done = r.refresh(&ctx).await;
        assert_eq!(done.loaded, vec![("dealers".to_string(), 3)]);
        assert!(r.problem().is_none());
        assert_eq!(count(ctx.clone()).await, "3");
    }
}
