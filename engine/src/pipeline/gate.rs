//! What a query file must pass, beyond planning, before it runs; and the record of accepted
//! versions kept in the lake.
//!
//! - A lake dataset keeps its shape: the columns and types recorded for it in
//!   `_carflow/datasets/<dataset>.json` (written when the dataset is first accepted) may not change
//!   type or disappear, and its `PARTITION (…)` columns may not change. New columns are schema
//!   evolution: accepted (written as nullable; rows written before read as NULL).
//! - A transform must not fail on every sample transaction ([`Canary`]): an edit that plans but
//!   fails at run time for any data (a cast that always overflows, a division by a zero constant)
//!   is refused at reload instead of failing on every batch.
//! - A windowed query must work as mergeable partial aggregates ([`WindowQuery`]).
//!
//! Each accepted version of a file is recorded in `_carflow/transforms/<file name>.json`, so when a
//! file is refused at start (an edit made while the engine was stopped, or left in place after a
//! refusal) the last accepted version runs instead of nothing, and `/health` says so.

use std::collections::BTreeMap;

use datafusion::prelude::SessionContext;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::storage::Location;
use crate::transform::isolate::Canary;
use crate::transform::{Gate, Planner, Target, Transform};
use crate::windows::Windowing;
use crate::windows::aggregate::WindowQuery;

/// The recorded shape of a lake dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetShape {
    /// Data columns (partition columns apart) and their types, in order.
    pub columns: Vec<(String, String)>,
    /// Hive partition columns.
    pub partition_by: Vec<String>,
}

impl DatasetShape {
    /// The shape a lake transform writes.
    pub fn of(t: &Transform) -> Option<Self> {
        let Target::Lake { partition_by, .. } = &t.target else {
            return None;
        };
        Some(Self {
            columns: t
                .schema
                .fields()
                .iter()
                .filter(|f| !partition_by.contains(f.name()))
                .map(|f| (f.name().clone(), f.data_type().to_string()))
                .collect(),
            partition_by: partition_by.clone(),
        })
    }

    /// Why `new` cannot replace this shape, or `Ok` (same, or only new columns).
    pub fn accepts(&self, new: &DatasetShape) -> Result<(), String> {
        if self.partition_by != new.partition_by {
            return Err(format!(
                "PARTITION ({}) differs from the dataset's PARTITION ({}) in the lake: a dataset \
                 keeps its partitioning; write to a new dataset (INSERT INTO lake.<new name>)",
                new.partition_by.join(", "),
                self.partition_by.join(", ")
            ));
        }
        for (name, ty) in &self.columns {
            match new.columns.iter().find(|(n, _)| n == name) {
                None => {
                    return Err(format!(
                        "column `{name}` ({ty}) is missing: the lake's rows have it; keep it (e.g. \
                         CAST(NULL AS …) AS {name}) or write to a new dataset"
                    ));
                }
                Some((_, t)) if t != ty => {
                    return Err(format!(
                        "column `{name}` would change type from {ty} to {t}: a dataset's columns \
                         keep their types; cast back, or write to a new dataset"
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// An accepted version of a query file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedQuery {
    /// The file it came from.
    pub file: String,
    /// Its SQL text.
    pub sql: String,
    /// When it was accepted (ms since the epoch).
    pub accepted_at_ms: i64,
}

/// Records kept in the lake: dataset shapes and accepted query versions.
#[derive(Debug, Clone)]
pub struct Records {
    location: Location,
    shapes: BTreeMap<String, DatasetShape>,
    loaded: bool,
}

impl Records {
    /// Read every dataset shape recorded under `location`.
    pub async fn load(location: &Location) -> Result<Self, object_store::Error> {
        let dir = location.path(&["_carflow/datasets"]);
        let listed = match location.store.list_with_delimiter(Some(&dir)).await {
            Ok(l) => l.objects,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut shapes = BTreeMap::new();
        for m in listed {
            let Some(name) = m.location.filename().and_then(|f| f.strip_suffix(".json")) else {
                continue;
            };
            let name = name.to_string();
            let bytes = location.store.get(&m.location).await?.bytes().await?;
            match serde_json::from_slice::<DatasetShape>(&bytes) {
                Ok(shape) => {
                    shapes.insert(name, shape);
                }
                Err(e) => {
                    tracing::warn!(path = %m.location, error = %e, "unreadable dataset record; ignored")
                }
            }
        }
        Ok(Self {
            location: location.clone(),
            shapes,
            loaded: true,
        })
    }

    /// No records (the lake could not be read yet).
    pub fn empty(location: &Location) -> Self {
        Self {
            location: location.clone(),
            shapes: BTreeMap::new(),
            loaded: false,
        }
    }

    /// Were the records read from the lake?
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// The recorded shape of `dataset`.
    pub fn shape(&self, dataset: &str) -> Option<&DatasetShape> {
        self.shapes.get(dataset)
    }

    fn query_path(&self, file: &std::path::Path) -> Path {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.location.path(&[
            "_carflow/transforms",
            &format!("{}.json", crate::ledger::safe_segment(&name)),
        ])
    }

    /// Record that `t` (from `sql`) is accepted: its dataset's shape (new columns included) and
    /// the version of its file.
    pub async fn accept(&mut self, t: &Transform, sql: &str) -> Result<(), object_store::Error> {
        if let (Some(shape), Target::Lake { dataset, .. }) = (DatasetShape::of(t), &t.target)
            && self.shapes.get(dataset) != Some(&shape)
        {
            let merged = match self.shapes.get(dataset) {
                // Keep the recorded order; new columns go after it.
                Some(old) => {
                    let mut columns = old.columns.clone();
                    for c in &shape.columns {
                        if !columns.iter().any(|(n, _)| n == &c.0) {
                            columns.push(c.clone());
                        }
                    }
                    DatasetShape {
                        columns,
                        partition_by: shape.partition_by.clone(),
                    }
                }
                None => shape,
            };
            let path = self
                .location
                .path(&["_carflow/datasets", &format!("{dataset}.json")]);
            let body = serde_json::to_vec_pretty(&merged).unwrap_or_default();
            self.location
                .store
                .put(&path, PutPayload::from(body))
                .await?;
            self.shapes.insert(dataset.clone(), merged);
        }
        let record = AcceptedQuery {
            file: t.file.display().to_string(),
            sql: sql.to_string(),
            accepted_at_ms: chrono::Utc::now().timestamp_millis(),
        };
        let body = serde_json::to_vec_pretty(&record).unwrap_or_default();
        self.location
            .store
            .put(&self.query_path(&t.file), PutPayload::from(body))
            .await?;
        Ok(())
    }

    /// The last accepted version of `file`, if any.
    pub async fn accepted(&self, file: &std::path::Path) -> Option<AcceptedQuery> {
        let r = self.location.store.get(&self.query_path(file)).await.ok()?;
        let bytes = r.bytes().await.ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// The pipeline's gate: shapes, the canary, window machinery.
pub struct PipelineGate<'a> {
    /// Where transforms run.
    pub planner: &'a Planner,
    /// Sample rows.
    pub canary: &'a Canary,
    /// Recorded shapes.
    pub records: &'a Records,
}

async fn run_on(
    planner: &Planner,
    t: &Transform,
    rows: arrow::array::RecordBatch,
) -> datafusion::error::Result<Vec<arrow::array::RecordBatch>> {
    planner.batch.set(vec![rows]);
    let out = t.execute(&planner.batch_ctx).await;
    planner.batch.set(Vec::new());
    out
}

impl Gate for PipelineGate<'_> {
    async fn check(&mut self, t: &Transform, previous: Option<&Transform>) -> Result<(), String> {
        if let Some(shape) = DatasetShape::of(t) {
            let Target::Lake { dataset, .. } = &t.target else {
                return Ok(());
            };
            let recorded = self
                .records
                .shape(dataset)
                .cloned()
                .or_else(|| previous.and_then(DatasetShape::of));
            if let Some(old) = recorded {
                old.accepts(&shape)
                    .map_err(|e| format!("lake.{dataset}: {e}"))?;
            }
        }
        if let Some(e) = self
            .canary
            .broken(|rows| run_on(self.planner, t, rows))
            .await
        {
            return Err(format!(
                "{} fails at run time on every sample transaction ({e}); fix the query — the \
                 previous version (if any) keeps running",
                t.target_name()
            ));
        }
        if let Target::Influx {
            windowing: Windowing::Windowed(spec),
            ..
        } = &t.target
        {
            let ctx: &SessionContext = &self.planner.batch_ctx;
            self.planner.batch.set(Vec::new());
            WindowQuery::new(&t.plan, spec.clone(), ctx)
                .await
                .map_err(|e| {
                    format!(
                        "{}: its aggregate cannot be kept as mergeable window state: {e}",
                        t.target_name()
                    )
                })?;
        }
        Ok(())
    }
}
