//! The queries a pipeline runs: the transform set, the windowed queries' aggregate machinery, the
//! sample rows and the records kept in the lake; loading at start and reloading at batch
//! boundaries.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::gate::{PipelineGate, Records};
use super::{PipelineError, PipelineOptions};
use crate::line_protocol::PointMapping;
use crate::metrics::{Health, Metrics};
use crate::reference::ReferenceTables;
use crate::storage::Location;
use crate::transform::isolate::Canary;
use crate::transform::{Planner, Target, TransformSet};
use crate::windows::Windowing;
use crate::windows::aggregate::WindowQuery;

/// A windowed Influx query, ready to run.
#[derive(Debug, Clone)]
pub struct WindowEntry {
    /// Which version of the query this is.
    pub fingerprint: String,
    /// Its aggregate machinery.
    pub query: WindowQuery,
    /// The measurement.
    pub measurement: String,
    /// Columns → point parts.
    pub mapping: PointMapping,
}

/// What the pipeline runs.
pub struct Queries {
    /// Plans and runs transforms over the current batch.
    pub planner: Planner,
    /// The running transforms.
    pub transforms: TransformSet,
    /// Windowed queries by target name (`influx.<measurement>`).
    pub windows: BTreeMap<String, WindowEntry>,
    /// Sample rows for telling a broken transform from bad data.
    pub canary: Canary,
    /// Dataset shapes and accepted versions, kept in the lake.
    pub records: Records,
    /// Lake datasets written since the start (for accounting).
    pub datasets_from_start: Vec<String>,
    /// Reference tables the queries can JOIN.
    pub reference: ReferenceTables,
    /// Files refused now, with why.
    refused: BTreeMap<PathBuf, String>,
    location: Location,
    dir: PathBuf,
}

impl Queries {
    /// Plan and check every file of the queries directory. A refused file runs its last accepted
    /// version if the lake recorded one (and `/health` says so); the pipeline refuses to start
    /// only when no transform can run.
    pub async fn load(
        options: &PipelineOptions,
        location: &Location,
        metrics: &Metrics,
        health: &Health,
    ) -> Result<Self, PipelineError> {
        let planner = Planner::new()?;
        let mut reference = ReferenceTables::new(&options.reference_dir);
        reference.refresh_logged(&planner.batch_ctx).await;
        health.set("reference", reference.problem());
        let canary = Canary::new()?;
        // Short: SIGTERM is not looked at before the pipeline runs.
        let startup_limit = options.lake_timeout.min(std::time::Duration::from_secs(5));
        let records = match tokio::time::timeout(startup_limit, Records::load(location)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                metrics.error("lake");
                health.set("lake", Some(format!("cannot read the lake's records: {e}")));
                tracing::warn!(error = %e, "cannot read the lake's dataset records; shapes are checked once it answers");
                Records::empty(location)
            }
            Err(_) => {
                health.set(
                    "lake",
                    Some("the lake does not answer (lake.timeout)".into()),
                );
                tracing::warn!("the lake does not answer; dataset shapes are checked once it does");
                Records::empty(location)
            }
        };
        let mut q = Self {
            planner,
            transforms: TransformSet::default(),
            windows: BTreeMap::new(),
            canary,
            records,
            datasets_from_start: Vec::new(),
            reference,
            refused: BTreeMap::new(),
            location: location.clone(),
            dir: options.queries_dir.clone(),
        };
        let report = q.scan().await.map_err(|source| PipelineError::QueriesDir {
            dir: options.queries_dir.clone(),
            source,
        })?;
        // A refused file runs its last accepted version, if there is one.
        for e in &report.refused {
            if let Some(accepted) = q.records.accepted(&e.file).await {
                match q.planner.plan_file(&e.file, &accepted.sql).await {
                    Ok(t) => {
                        tracing::error!(file = %e.file.display(), error = %e,
                            "query file refused; running its last accepted version instead");
                        let stamp = std::fs::metadata(&e.file)
                            .map(|m| (m.modified().ok(), m.len()))
                            .unwrap_or((None, 0));
                        q.transforms.run_instead(e.file.clone(), stamp, t);
                    }
                    Err(e2) => tracing::error!(file = %e.file.display(), error = %e2,
                        "the last accepted version does not plan either"),
                }
            }
            tracing::error!(error = %e, "query file refused");
            metrics.query_errors.inc();
            q.refused.insert(e.file.clone(), e.to_string());
        }
        if q.transforms.is_empty() && !report.refused.is_empty() {
            return Err(PipelineError::Queries(report.refused));
        }
        for t in q.transforms.iter() {
            tracing::info!(file = %t.file.display(), target = %t.target_name(), "transform loaded");
        }
        q.datasets_from_start = q
            .transforms
            .iter()
            .filter_map(|t| match &t.target {
                Target::Lake { dataset, .. } => Some(dataset.clone()),
                Target::Influx { .. } => None,
            })
            .collect();
        let _ = q.rebuild_windows().await;
        q.remember(&report.loaded).await;
        metrics.transforms.set(q.transforms.len() as i64);
        health.set("transform", q.refused_problem());
        Ok(q)
    }

    async fn scan(&mut self) -> std::io::Result<crate::transform::ReloadReport> {
        let mut gate = PipelineGate {
            planner: &self.planner,
            canary: &self.canary,
            records: &self.records,
        };
        let dir = self.dir.clone();
        self.transforms.reload(&self.planner, &dir, &mut gate).await
    }

    /// Pick up added, changed, renamed and removed files; returns the keys of windowed queries
    /// that are new or of a new version (their state starts empty and is seeded from the lake).
    pub async fn reload(
        &mut self,
        _o: &PipelineOptions,
        metrics: &Metrics,
        health: &Health,
    ) -> Vec<String> {
        if !self.records.is_loaded()
            && let Ok(Ok(r)) = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                Records::load(&self.location),
            )
            .await
        {
            self.records = r;
        }
        self.reference.refresh_logged(&self.planner.batch_ctx).await;
        health.set("reference", self.reference.problem());
        let r = match self.scan().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, dir = %self.dir.display(), "cannot scan the queries directory");
                return Vec::new();
            }
        };
        for f in &r.loaded {
            tracing::info!(file = %f.display(), "transform (re)loaded; it applies from the next batch");
        }
        for f in &r.removed {
            tracing::info!(file = %f.display(), "transform removed");
        }
        for e in &r.errors {
            tracing::error!(error = %e, "query file refused; the transforms already running go on");
            metrics.query_errors.inc();
        }
        self.refused = r
            .refused
            .iter()
            .map(|e| (e.file.clone(), e.to_string()))
            .collect();
        health.set("transform", self.refused_problem());
        let changed = !(r.loaded.is_empty() && r.removed.is_empty());
        let mut started = Vec::new();
        if changed {
            metrics.transforms.set(self.transforms.len() as i64);
            started = self.rebuild_windows().await;
            self.remember(&r.loaded).await;
        }
        started
    }

    /// Record accepted versions (and dataset shapes) in the lake.
    async fn remember(&mut self, loaded: &[PathBuf]) {
        let accepted: Vec<_> = self
            .transforms
            .iter()
            .filter(|t| loaded.contains(&t.file))
            .cloned()
            .collect();
        for t in accepted {
            let Ok(sql) = std::fs::read_to_string(&t.file) else {
                continue;
            };
            if let Err(e) = self.records.accept(&t, &sql).await {
                tracing::warn!(file = %t.file.display(), error = %e, "cannot record the accepted query in the lake");
            }
        }
    }

    /// Rebuild the windowed queries' machinery; returns the keys that are new or of a new version.
    async fn rebuild_windows(&mut self) -> Vec<String> {
        let mut started = Vec::new();
        let mut next = BTreeMap::new();
        self.planner.batch.set(Vec::new());
        for t in self.transforms.iter() {
            let Target::Influx {
                measurement,
                mapping,
                windowing: Windowing::Windowed(spec),
            } = &t.target
            else {
                continue;
            };
            let key = t.target_name();
            let fingerprint = crate::windows::digests::fingerprint(&t.plan, t.fingerprint());
            if let Some(existing) = self.windows.get(&key)
                && existing.fingerprint == fingerprint
            {
                next.insert(key, existing.clone());
                continue;
            }
            match WindowQuery::new(&t.plan, spec.clone(), &self.planner.batch_ctx).await {
                Ok(query) => {
                    started.push(key.clone());
                    next.insert(
                        key,
                        WindowEntry {
                            fingerprint,
                            query,
                            measurement: measurement.clone(),
                            mapping: mapping.clone(),
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(file = %t.file.display(), error = %e, "windowed query cannot run as partial aggregates")
                }
            }
        }
        self.windows = next;
        started
    }

    /// Keys of the windowed queries running now.
    pub fn window_keys(&self) -> BTreeSet<String> {
        self.windows.keys().cloned().collect()
    }

    /// The refused files, for `/health`.
    pub fn refused_problem(&self) -> Option<String> {
        (!self.refused.is_empty()).then(|| {
            self.refused
                .values()
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// Errors of refused files.
    pub fn refused(&self) -> impl Iterator<Item = &String> {
        self.refused.values()
    }
}
