//! SQL transforms: every `.sql` file in the queries directory is one transform.
//!
//! A file holds one statement, `INSERT INTO lake.<dataset> [PARTITION (col, …)] SELECT …` or
//! `INSERT INTO influx.<measurement> SELECT …`, reading the `transactions` table. Files are parsed
//! with DataFusion's SQL parser and planned once; a file that does not parse or plan is refused
//! with its file name, line and column and the planner's message ([`QueryError`]), and the other
//! files go on. Sink roots come from configuration, never from SQL, so the same files run in the
//! demo and in production. [`TransformSet::reload`] picks up added, changed, renamed and removed
//! files at a batch boundary: the whole new set is checked at once (so renaming a file is not a
//! clash with its old name), each new or changed transform must also pass the caller's [`Gate`]
//! (the pipeline checks a lake dataset's shape against what the lake holds and runs the transform
//! on sample rows), and a changed file that is refused keeps its previous version running.

pub mod isolate;
pub mod slot;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Spanned, Statement, TableObject};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::line_protocol::PointMapping;
use crate::schema::{SOURCE_TABLE, source_schema};
use crate::windows::{self as window, Windowing};
use slot::SlotTable;

/// A query file that cannot run, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    /// The file.
    pub file: PathBuf,
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

impl std::error::Error for QueryError {}

/// Where a transform's rows go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A dataset of the Parquet lake, Hive-partitioned by these columns.
    Lake {
        /// Dataset name (a directory under the lake root).
        dataset: String,
        /// Partition columns, in path order.
        partition_by: Vec<String>,
    },
    /// An InfluxDB measurement.
    Influx {
        /// Measurement name.
        measurement: String,
        /// Column roles.
        mapping: PointMapping,
        /// How rows relate to points.
        windowing: Windowing,
    },
}

/// A planned transform, ready to run on every batch.
#[derive(Debug, Clone)]
pub struct Transform {
    /// The file it came from.
    pub file: PathBuf,
    /// The file name without `.sql`.
    pub name: String,
    /// Its sink.
    pub target: Target,
    /// The planned SELECT.
    pub plan: LogicalPlan,
    /// The SELECT as SQL text (to run the same query elsewhere, e.g. over the lake).
    pub select: String,
    /// Columns it outputs.
    pub schema: SchemaRef,
    /// Line and column of the statement in its file.
    pub at: (u64, u64),
}

impl Transform {
    /// The sink as it is written in SQL: `lake.cars`, `influx.sales_by_brand`.
    pub fn target_name(&self) -> String {
        match &self.target {
            Target::Lake { dataset, .. } => format!("lake.{dataset}"),
            Target::Influx { measurement, .. } => format!("influx.{measurement}"),
        }
    }

    /// A fingerprint of what the transform computes (its target and normalized SELECT): state
    /// kept for one version is not reused by another.
    pub fn fingerprint(&self) -> String {
        // FNV-1a: stable across builds and Rust versions (state outlives a binary).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self
            .target_name()
            .bytes()
            .chain([0])
            .chain(self.select.bytes())
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }

    /// Run the plan on whatever the planner's slot holds now.
    pub async fn execute(&self, ctx: &SessionContext) -> Result<Vec<RecordBatch>, DataFusionError> {
        ctx.execute_logical_plan(self.plan.clone())
            .await?
            .collect()
            .await
    }
}

/// Plans transforms and holds the `transactions` table they run against: the rows of the
/// current micro-batch (or of a part of it) put in the slot before each run.
#[derive(Clone)]
pub struct Planner {
    /// Context whose `transactions` is [`Planner::batch`].
    pub batch_ctx: SessionContext,
    /// The current batch.
    pub batch: Arc<SlotTable>,
}

impl fmt::Debug for Planner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Planner").finish_non_exhaustive()
    }
}

fn context(slot: &Arc<SlotTable>) -> Result<SessionContext, DataFusionError> {
    let mut config = SessionConfig::new().with_target_partitions(2);
    config.options_mut().sql_parser.collect_spans = true;
    let ctx = SessionContext::new_with_config(config);
    ctx.register_table(SOURCE_TABLE, Arc::clone(slot) as _)?;
    Ok(ctx)
}

impl Planner {
    /// A planner whose `transactions` has the source schema.
    pub fn new() -> Result<Self, DataFusionError> {
        let batch = Arc::new(SlotTable::new(source_schema()));
        Ok(Self {
            batch_ctx: context(&batch)?,
            batch,
        })
    }

    /// Parse and plan one file.
    pub async fn plan_file(&self, file: &Path, sql: &str) -> Result<Transform, QueryError> {
        let at = |line: u64, column: u64, message: String| QueryError {
            file: file.to_path_buf(),
            line: line.max(1),
            column: column.max(1),
            message,
        };
        let parsed = parse_insert(sql).map_err(|(l, c, m)| at(l, c, m))?;
        let (line, col) = (parsed.line, parsed.column);
        let select = parsed.query.to_string();
        let state = self.batch_ctx.state();
        let statement = DfStatement::Statement(Box::new(Statement::Query(parsed.query)));
        let plan = state
            .statement_to_plan(statement.clone())
            .await
            .map_err(|e| {
                let (l, c) = error_location(&e, sql).unwrap_or((line, col));
                at(l, c, clean_message(&e))
            })?;
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = match parsed.namespace.as_str() {
            "lake" => {
                validate_dataset(&parsed.name).map_err(|m| at(line, col, m))?;
                for (p, (pl, pc)) in parsed.partition_by.iter().zip(&parsed.partition_at) {
                    let f = schema.field_with_name(p).map_err(|_| {
                        at(
                            *pl,
                            *pc,
                            format!("PARTITION column `{p}` is not a column of the SELECT"),
                        )
                    })?;
                    if !hive_type(f.data_type()) {
                        return Err(at(
                            *pl,
                            *pc,
                            format!(
                                "PARTITION column `{p}` has type {}; use a date, integer or string",
                                f.data_type()
                            ),
                        ));
                    }
                }
                let data_fields: Vec<_> = schema
                    .fields()
                    .iter()
                    .filter(|f| !parsed.partition_by.contains(f.name()))
                    .cloned()
                    .collect();
                crate::schema::parquet_writable(&Arc::new(arrow::datatypes::Schema::new(
                    data_fields,
                )))
                .map_err(|e| {
                    at(
                        line,
                        col,
                        format!(
                            "lake.{}: Parquet cannot store this output ({e}); cast the column to a \
                             string, number, decimal, boolean, date or timestamp",
                            parsed.name
                        ),
                    )
                })?;
                Target::Lake {
                    dataset: parsed.name.clone(),
                    partition_by: parsed.partition_by.clone(),
                }
            }
            "influx" => {
                if !parsed.partition_by.is_empty() {
                    return Err(at(
                        line,
                        col,
                        "PARTITION applies to lake datasets only".into(),
                    ));
                }
                let mapping = PointMapping::from_schema(&schema)
                    .map_err(|e| at(line, col, format!("influx.{}: {e}", parsed.name)))?;
                let windowing = window::analyze(&plan)
                    .map_err(|m| at(line, col, format!("influx.{}: {m}", parsed.name)))?;
                if let Windowing::Windowed(w) = &windowing {
                    let ok = source_schema()
                        .field_with_name(&w.column)
                        .is_ok_and(|f| matches!(f.data_type(), DataType::Timestamp(_, _)));
                    if !ok {
                        return Err(at(
                            line,
                            col,
                            format!(
                                "influx.{}: the window column `{}` must be a timestamp column of transactions (e.g. sold_at)",
                                parsed.name, w.column
                            ),
                        ));
                    }
                }
                Target::Influx {
                    measurement: parsed.name.clone(),
                    mapping,
                    windowing,
                }
            }
            other => {
                return Err(at(
                    line,
                    col,
                    format!(
                        "unknown sink namespace `{other}`: write INSERT INTO lake.<dataset> or INSERT INTO influx.<measurement>"
                    ),
                ));
            }
        };
        Ok(Transform {
            file: file.to_path_buf(),
            name,
            target,
            plan,
            select,
            schema,
            at: (line, col),
        })
    }
}

fn hive_type(t: &DataType) -> bool {
    t.is_integer()
        || matches!(
            t,
            DataType::Date32
                | DataType::Date64
                | DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Boolean
        )
}

fn validate_dataset(name: &str) -> Result<(), String> {
    if name == crate::schema::DEAD_LETTERS {
        return Err(format!(
            "lake.{name} is reserved for messages that could not be processed; choose another dataset name"
        ));
    }
    let ok = !name.is_empty()
        && !name.starts_with('_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "dataset name `{name}`: use lowercase letters, digits and `_`, not starting with `_` (reserved for carflow)"
        ))
    }
}

struct ParsedInsert {
    namespace: String,
    name: String,
    partition_by: Vec<String>,
    partition_at: Vec<(u64, u64)>,
    query: Box<datafusion::sql::sqlparser::ast::Query>,
    line: u64,
    column: u64,
}

type Located = (u64, u64, String);

fn parse_insert(sql: &str) -> Result<ParsedInsert, Located> {
    let statements = Parser::new(&GenericDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| {
            let m = e.to_string();
            let (l, c) = parser_location(&m).unwrap_or((1, 1));
            (l, c, strip_location(&m))
        })?;
    let mut it = statements.into_iter();
    let Some(first) = it.next() else {
        return Err((1, 1, "the file holds no statement: write INSERT INTO lake.<dataset> SELECT … FROM transactions".into()));
    };
    if let Some(second) = it.next() {
        let s = second.span().start;
        return Err((
            s.line,
            s.column,
            "one statement per file: move this statement to a file of its own".into(),
        ));
    }
    let start = first.span().start;
    let Statement::Insert(insert) = first else {
        return Err((start.line, start.column, "a transform is an INSERT INTO lake.<dataset> or influx.<measurement> … SELECT … FROM transactions".into()));
    };
    let TableObject::TableName(table) = &insert.table else {
        return Err((
            start.line,
            start.column,
            "INSERT INTO needs a table name like lake.cars".into(),
        ));
    };
    let parts: Vec<String> = table
        .0
        .iter()
        .map(|p| p.to_string().trim_matches('"').to_string())
        .collect();
    let [namespace, name] = parts.as_slice() else {
        return Err((
            start.line,
            start.column,
            format!("INSERT INTO {table}: name the sink as lake.<dataset> or influx.<measurement>"),
        ));
    };
    if !insert.columns.is_empty() {
        return Err((
            start.line,
            start.column,
            "a column list after the sink name is not supported: name the columns in the SELECT"
                .into(),
        ));
    }
    let Some(query) = insert.source else {
        return Err((
            start.line,
            start.column,
            "INSERT needs a SELECT … FROM transactions".into(),
        ));
    };
    let mut partition_by = Vec::new();
    let mut partition_at = Vec::new();
    for e in insert.partitioned.unwrap_or_default() {
        let s = e.span().start;
        match e {
            SqlExpr::Identifier(id) => {
                partition_by.push(id.value);
                partition_at.push((s.line, s.column));
            }
            other => {
                return Err((
                    s.line,
                    s.column,
                    format!("PARTITION ({other}): name output columns, e.g. PARTITION (dt)"),
                ));
            }
        }
    }
    Ok(ParsedInsert {
        namespace: namespace.to_lowercase(),
        name: name.clone(),
        partition_by,
        partition_at,
        query,
        line: start.line,
        column: start.column,
    })
}

/// `… at Line: 3, Column: 14` in a parser message.
fn parser_location(m: &str) -> Option<(u64, u64)> {
    let rest = &m[m.rfind("Line: ")? + 6..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let col: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.trim().parse().ok()?, col.parse().ok()?))
}

fn strip_location(m: &str) -> String {
    match m.rfind(" at Line: ") {
        Some(i) => m[..i].to_string(),
        None => m.to_string(),
    }
}

fn clean_message(e: &DataFusionError) -> String {
    let m = e.find_root().to_string();
    strip_location(&m)
}

/// Where a planning error points: the diagnostic's span, or the first mention of the name the
/// message is about.
fn error_location(e: &DataFusionError, sql: &str) -> Option<(u64, u64)> {
    if let Some(span) = e.iter().find_map(|e| e.diagnostic()).and_then(|d| d.span)
        && span.start.line > 0
    {
        return Some((span.start.line, span.start.column));
    }
    let m = e.find_root().to_string();
    let name = ["No field named ", "table '", "Invalid function '"]
        .iter()
        .find_map(|k| m.split_once(k).map(|(_, r)| r))?;
    let name: String = name
        .trim_start_matches(['"', '\''])
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
        .collect();
    let name = name.rsplit('.').next().filter(|n| !n.is_empty())?;
    let lower = sql.to_lowercase();
    let pos = lower.find(&name.to_lowercase())?;
    let line = sql[..pos].matches('\n').count() as u64 + 1;
    let column = (pos - sql[..pos].rfind('\n').map_or(0, |i| i + 1)) as u64 + 1;
    Some((line, column))
}

/// Fingerprint of a file for change detection: modification time and length.
pub type Stamp = (Option<SystemTime>, u64);

/// A check a new or changed transform must pass before it runs (besides planning).
pub trait Gate {
    /// `Err(message)` refuses `t`; `previous` is the version running now, if any.
    fn check(
        &mut self,
        t: &Transform,
        previous: Option<&Transform>,
    ) -> impl std::future::Future<Output = Result<(), String>>;
}

/// A gate that lets everything through (tools that only plan, e.g. `carflow check`).
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenGate;

impl Gate for OpenGate {
    async fn check(&mut self, _t: &Transform, _p: Option<&Transform>) -> Result<(), String> {
        Ok(())
    }
}

/// The transforms currently running, by file.
#[derive(Debug, Default)]
pub struct TransformSet {
    running: BTreeMap<PathBuf, (Stamp, Transform)>,
    /// The last outcome of planning and gating each file, by stamp (a file is planned once per
    /// change).
    tried: BTreeMap<PathBuf, (Stamp, Result<Transform, QueryError>)>,
    /// Errors already reported, so each is logged once per change.
    reported: BTreeMap<PathBuf, String>,
}

/// What [`TransformSet::reload`] changed.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// Files planned and now running (new or changed).
    pub loaded: Vec<PathBuf>,
    /// Files removed from the directory, no longer running.
    pub removed: Vec<PathBuf>,
    /// Files refused, reported once per change of the file.
    pub errors: Vec<QueryError>,
    /// Every file refused now, with its error (whether reported before or not).
    pub refused: Vec<QueryError>,
}

impl TransformSet {
    /// The running transforms, ordered by file name.
    pub fn iter(&self) -> impl Iterator<Item = &Transform> {
        self.running.values().map(|(_, t)| t)
    }

    /// How many transforms are running.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// True if none is running.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Run `t` for `file` as if it had been accepted at stamp `stamp` (the last accepted
    /// version of a file that is refused now, e.g. after a restart).
    pub fn run_instead(&mut self, file: PathBuf, stamp: Stamp, t: Transform) {
        self.running.insert(file, (stamp, t));
    }

    /// Scan `dir`: plan new or changed `.sql` files, let `gate` check them, and swap in the new
    /// set; drop removed files. The new set is checked as a whole: two files may not write the
    /// same lake dataset (the one already running keeps it), and a renamed file simply replaces
    /// its old name. A file that fails keeps its previous version (if any) running.
    pub async fn reload<G: Gate>(
        &mut self,
        planner: &Planner,
        dir: &Path,
        gate: &mut G,
    ) -> Result<ReloadReport, std::io::Error> {
        let mut report = ReloadReport::default();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "sql") && p.is_file())
            .collect();
        files.sort();
        let mut stamps = BTreeMap::new();
        for path in &files {
            let Ok(meta) = std::fs::metadata(path) else {
                continue;
            };
            stamps.insert(path.clone(), (meta.modified().ok(), meta.len()));
        }
        // Plan what changed.
        for (path, stamp) in &stamps {
            if self.tried.get(path).is_some_and(|(s, _)| s == stamp) {
                continue;
            }
            let outcome = match std::fs::read_to_string(path) {
                Ok(sql) => planner.plan_file(path, &sql).await,
                Err(e) => Err(QueryError {
                    file: path.clone(),
                    line: 1,
                    column: 1,
                    message: format!("cannot read the file: {e}"),
                }),
            };
            self.tried.insert(path.clone(), (*stamp, outcome));
        }
        self.tried.retain(|p, _| stamps.contains_key(p));
        // The candidate set: every present file's planned version, else its running version.
        let mut next: BTreeMap<PathBuf, (Stamp, Transform)> = BTreeMap::new();
        let mut refused: BTreeMap<PathBuf, QueryError> = BTreeMap::new();
        for (path, (stamp, outcome)) in &self.tried {
            match outcome {
                Ok(t) => {
                    next.insert(path.clone(), (*stamp, t.clone()));
                }
                Err(e) => {
                    refused.insert(path.clone(), e.clone());
                    if let Some(running) = self.running.get(path) {
                        next.insert(path.clone(), running.clone());
                    }
                }
            }
        }
        // One file per lake dataset: a file already running for it keeps it.
        let mut owner: BTreeMap<String, PathBuf> = BTreeMap::new();
        for (path, (_, t)) in &next {
            if let Target::Lake { dataset, .. } = &t.target
                && self
                    .running
                    .get(path)
                    .is_some_and(|(_, r)| r.target == t.target)
            {
                owner.insert(dataset.clone(), path.clone());
            }
        }
        let paths: Vec<PathBuf> = next.keys().cloned().collect();
        for path in paths {
            let Some((_, t)) = next.get(&path) else {
                continue;
            };
            let Target::Lake { dataset, .. } = &t.target else {
                continue;
            };
            let dataset = dataset.clone();
            match owner.get(&dataset) {
                Some(o) if *o != path => {
                    let e = QueryError {
                        file: path.clone(),
                        line: 1,
                        column: 1,
                        message: format!(
                            "lake.{dataset} is already written by {}; one file per dataset",
                            o.display()
                        ),
                    };
                    match self.running.get(&path) {
                        Some(running) => {
                            next.insert(path.clone(), running.clone());
                        }
                        None => {
                            next.remove(&path);
                        }
                    }
                    refused.insert(path, e);
                }
                Some(_) => {}
                None => {
                    owner.insert(dataset, path);
                }
            }
        }
        // The gate, for what would change.
        let changed: Vec<PathBuf> = next
            .iter()
            .filter(|(p, (s, _))| self.running.get(*p).is_none_or(|(rs, _)| rs != s))
            .map(|(p, _)| p.clone())
            .collect();
        for path in changed {
            let Some((_, t)) = next.get(&path) else {
                continue;
            };
            let previous = self.running.get(&path).map(|(_, r)| r).or_else(|| {
                // A renamed file's previous version is the one that wrote its target.
                self.running
                    .values()
                    .map(|(_, r)| r)
                    .find(|r| r.target_name() == t.target_name() && !stamps.contains_key(&r.file))
            });
            if let Err(message) = gate.check(t, previous).await {
                let e = QueryError {
                    file: path.clone(),
                    line: t.at.0,
                    column: t.at.1,
                    message,
                };
                match self.running.get(&path) {
                    Some(running) => {
                        next.insert(path.clone(), running.clone());
                    }
                    None => {
                        next.remove(&path);
                    }
                }
                if let Some((s, _)) = self.tried.get(&path).cloned() {
                    self.tried.insert(path.clone(), (s, Err(e.clone())));
                }
                refused.insert(path, e);
            } else {
                report.loaded.push(path.clone());
            }
        }
        for path in self.running.keys() {
            if !next.contains_key(path) {
                report.removed.push(path.clone());
            }
        }
        self.running = next;
        for (path, e) in &refused {
            if self.reported.get(path) != Some(&e.message) {
                report.errors.push(e.clone());
            }
        }
        self.reported = refused
            .iter()
            .map(|(p, e)| (p.clone(), e.message.clone()))
            .collect();
        report.refused = refused.into_values().collect();
        Ok(report)
    }
}

#[cfg(test)]
mod tests;
