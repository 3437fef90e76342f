//! Checks shared by the end-to-end tests: the lake as tables, line protocol as a map of points,
//! and the points every Influx query should produce when run over the whole lake.

use std::collections::BTreeMap;
use std::path::Path;

use carflow_engine::catalog::register_lake;
use carflow_engine::line_protocol::{
    PointMapping, encode_batch, split_escaped as split, unescape_key as unescape,
};
use carflow_engine::storage::Location;
use carflow_engine::transform::{OpenGate, Planner, Target, TransformSet};
use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;

/// (measurement, sorted tags, time ms)
pub type PointKey = (String, Vec<(String, String)>, i64);
/// field → value (integers, floats and decimals as f64)
pub type Fields = BTreeMap<String, f64>;
/// Points by key.
pub type Points = BTreeMap<PointKey, Fields>;

/// Parse line protocol; a later line for the same (series, time) replaces an earlier one, as in
/// InfluxDB.
pub fn parse_line_protocol(text: &str) -> Points {
    let mut out = Points::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let sections = split(line, ' ');
        assert_eq!(sections.len(), 3, "bad line: {line}");
        let head = split(&sections[0], ',');
        let measurement = unescape(&head[0]);
        let mut tags: Vec<(String, String)> = head[1..]
            .iter()
            .map(|kv| {
                let kv = split(kv, '=');
                (unescape(&kv[0]), unescape(&kv[1]))
            })
            .collect();
        tags.sort();
        let mut fields = Fields::new();
        for kv in split(&sections[1], ',') {
            let kv = split(&kv, '=');
            let v = kv[1].trim_end_matches('i');
            let v = match v {
                "true" => 1.0,
                "false" => 0.0,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("field {kv:?} in {line}")),
            };
            fields.insert(unescape(&kv[0]), v);
        }
        let time: i64 = sections[2].parse().unwrap();
        out.insert((measurement, tags, time), fields);
    }
    out
}

/// The shipped reference tables' directory.
pub fn reference_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("reference")
}

/// A context with every lake dataset as a table, `transactions` as a view of `cars` and the
/// shipped reference tables (`dealers`, `vehicles`) read by DataFusion from their files.
pub async fn lake_context(root: &str) -> SessionContext {
    lake_context_with(root, &reference_dir()).await
}

/// [`lake_context`] with the reference tables of `reference`.
pub async fn lake_context_with(root: &str, reference: &Path) -> SessionContext {
    let ctx = SessionContext::new();
    let location = Location::open(root).unwrap();
    let found = register_lake(&ctx, &location).await.unwrap();
    if !ctx.table_exist("cars").unwrap_or(false) {
        // register_lake skips (with a warning) a dataset whose files it cannot read: say which
        // files the lake holds (seen once in a full run, not reproduced alone).
        use futures::TryStreamExt;
        let listed: Vec<String> = location
            .store
            .list(Some(&location.path(&["cars"])))
            .map_ok(|m| format!("{} ({} bytes)", m.location, m.size))
            .try_collect()
            .await
            .unwrap_or_else(|e| vec![format!("listing failed: {e}")]);
        panic!(
            "the lake at {root} has no readable `cars` dataset; datasets registered: {:?}; files under cars/: {listed:#?}",
            found.iter().map(|d| &d.name).collect::<Vec<_>>()
        );
    }
    for entry in std::fs::read_dir(reference).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "csv") {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            ctx.register_csv(
                name.as_str(),
                p.to_str().unwrap(),
                datafusion::prelude::CsvReadOptions::new(),
            )
            .await
            .unwrap();
        }
    }
    ctx.sql("CREATE VIEW transactions AS SELECT * FROM cars")
        .await
        .unwrap();
    ctx
}

/// Run a query and return its batches.
pub async fn query(ctx: &SessionContext, sql: &str) -> Vec<RecordBatch> {
    ctx.sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .unwrap()
}

/// A single integer result.
pub async fn scalar(ctx: &SessionContext, sql: &str) -> i64 {
    let b = query(ctx, sql).await;
    let v = datafusion::arrow::util::display::array_value_to_string(b[0].column(0), 0).unwrap();
    v.parse().unwrap_or_else(|_| panic!("{sql} gave {v}"))
}

/// The lake holds `good` rows in `cars`, each (partition, offset) and each transaction once.
pub async fn assert_lake_exact(ctx: &SessionContext, good: i64) {
    assert_eq!(
        scalar(ctx, "SELECT count(*) FROM cars").await,
        good,
        "every good record is in the lake"
    );
    let distinct = "SELECT count(DISTINCT (_partition, _offset)) FROM cars";
    assert_eq!(
        scalar(ctx, distinct).await,
        good,
        "each (partition, offset) once"
    );
    assert_eq!(
        scalar(ctx, "SELECT count(DISTINCT transaction_id) FROM cars").await,
        good,
        "each transaction once"
    );
}

/// The points every Influx query of `queries_dir` gives when run over the whole lake.
pub async fn expected_points(ctx: &SessionContext, queries_dir: &Path) -> Points {
    let planner = Planner::new().unwrap();
    // The queries plan against the reference tables the engine has.
    let mut reference = carflow_engine::reference::ReferenceTables::new(reference_dir());
    reference.refresh(&planner.batch_ctx).await;
    let mut set = TransformSet::default();
    let report = set
        .reload(&planner, queries_dir, &mut OpenGate)
        .await
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let mut body = String::new();
    for t in set.iter() {
        let Target::Influx { measurement, .. } = &t.target else {
            continue;
        };
        for b in query(ctx, &t.select).await {
            let mapping = PointMapping::from_schema(&b.schema()).unwrap();
            encode_batch(measurement, &mapping, &b, &mut body);
        }
    }
    parse_line_protocol(&body)
}

/// Fields that come from approximate aggregates and may differ with the order rows arrive in.
fn approximate(field: &str) -> bool {
    matches!(field, "p25" | "p50" | "p75" | "p90")
}

/// Compare points; differences are listed (at most 10) in the panic message.
pub fn assert_points_match(expected: &Points, actual: &Points, what: &str) {
    let mut diffs = points_differences(expected, actual);
    let n = diffs.len();
    diffs.truncate(10);
    assert!(
        n == 0,
        "{what}: {n} differences between the points and the lake's aggregates:\n{}",
        diffs.join("\n")
    );
}

/// Every difference between `expected` and `actual` points (missing, unexpected, other values).
pub fn points_differences(expected: &Points, actual: &Points) -> Vec<String> {
    let mut diffs = Vec::new();
    for (k, e) in expected {
        match actual.get(k) {
            None => diffs.push(format!("missing {k:?}")),
            Some(a) => {
                for (f, ev) in e {
                    let av = a.get(f).copied().unwrap_or(f64::NAN);
                    let tol = if approximate(f) {
                        0.05 * ev.abs().max(1.0)
                    } else {
                        1e-9 * ev.abs().max(1.0)
                    };
                    if (ev - av).abs() > tol || av.is_nan() {
                        diffs.push(format!("{k:?} {f}: expected {ev}, got {av}"));
                    }
                }
            }
        }
    }
    for k in actual.keys() {
        if !expected.contains_key(k) {
            diffs.push(format!("unexpected {k:?}"));
        }
    }
    diffs
}

/// A reader that queries `cars` again and again while the lake changes (commits, merges of small
/// files). It must never count a row twice (`count(*)` = distinct (partition, offset)) nor fewer
/// rows than it counted before; a query may fail only on a file a merge removed after the query
/// listed it (counted in `gone`).
pub struct WatchingReader {
    name: &'static str,
    /// Rows it counted last.
    pub last: i64,
    /// Queries that succeeded.
    pub reads: u64,
    /// Queries that failed on a merged-away file.
    pub gone: u64,
}

impl WatchingReader {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            last: 0,
            reads: 0,
            gone: 0,
        }
    }

    /// (all rows, distinct (partition, offset)) of `cars`.
    pub async fn counts(ctx: &SessionContext) -> datafusion::error::Result<(i64, i64)> {
        let b = ctx
            .sql("SELECT count(*), count(DISTINCT (_partition, _offset)) FROM cars")
            .await?
            .collect()
            .await?;
        let col = |i: usize| {
            b[0].column(i)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .unwrap()
                .value(0)
        };
        Ok((col(0), col(1)))
    }

    /// Query once and check what it saw.
    pub async fn read(&mut self, ctx: &SessionContext) {
        match Self::counts(ctx).await {
            Ok((all, distinct)) => {
                assert_eq!(all, distinct, "{} counted rows twice", self.name);
                assert!(
                    all >= self.last,
                    "{} lost rows: {all} after {}",
                    self.name,
                    self.last
                );
                self.last = all;
                self.reads += 1;
            }
            Err(e) => {
                let text = e.to_string();
                assert!(
                    carflow_engine::catalog::is_merged_away(&text),
                    "{}: {text}",
                    self.name
                );
                self.gone += 1;
            }
        }
    }
}
