//! One SQL for stream and history: the points an Influx query gives over the lake's history
//! ([`expected_points`]), what InfluxDB holds ([`InfluxReader`]), their differences ([`diff`]) and
//! how to repair them ([`repair`]). Used by `carflow backfill` and `carflow reconcile`.
//!
//! **The boundary with the live engine.** A windowed query's window is *closed* once every
//! partition of the topic has passed it by the allowed lateness; the engine records that boundary
//! in each ledger entry (`progress.closed_before_ms`). A closed window is final: the stream never
//! writes its point again, so a backfill or a repair of it cannot race the live engine. Open
//! windows belong to the live engine (a new query's open windows are seeded from the lake when it
//! starts, `pipeline/seed.rs`), so backfill and reconcile stop at [`Boundary::closed_before`]
//! unless told otherwise. When no engine ever closed a window of the column, the boundary is the
//! oldest partition's newest event less the allowed lateness (a window ending before it can take
//! no more rows that are not late).
//!
//! The points are computed the way the stream computes them: the rows the stream counted
//! ([`History::window_input`]: late rows and rows the query refused are left out), DataFusion's
//! partial aggregate per Kafka partition, merged, then the final aggregate and the query's own
//! projection ([`WindowQuery`]), then the engine's own point mapping and line-protocol encoding.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use arrow::array::{BooleanArray, RecordBatch};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::LogicalPlan;
use serde::Serialize;

use crate::history::{History, Range};
use crate::ledger::OffsetLedger;
use crate::line_protocol::{encode_batch_counted, split_escaped, unescape_key};
use crate::schema::{COL_OFFSET, COL_PARTITION, EVENT_TIME};
use crate::storage::Location;
use crate::transform::{Planner, Target, Transform};
use crate::windows::aggregate::WindowQuery;
use crate::windows::{WindowSpec, Windowing};

fn internal(m: impl Into<String>) -> DataFusionError {
    DataFusionError::Execution(m.into())
}

/// (sorted tags, time in ms) of a point of one measurement.
pub type SeriesTime = (Vec<(String, String)>, i64);

/// One point: its fields (numbers as f64, booleans as 0/1) and, for an expected point, the line
/// that writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Field values.
    pub fields: BTreeMap<String, f64>,
    /// The line protocol that writes this point (expected points only).
    #[serde(skip)]
    pub line: String,
}

/// Points of one measurement by series and time.
pub type Points = BTreeMap<SeriesTime, Point>;

/// Parse one line of line protocol: measurement, (sorted tags, time), fields.
pub fn parse_line(line: &str) -> Option<(String, SeriesTime, BTreeMap<String, f64>)> {
    let sections = split_escaped(line, ' ');
    let [head, fields, time] = sections.as_slice() else {
        return None;
    };
    let head = split_escaped(head, ',');
    let measurement = unescape_key(head.first()?);
    let mut tags = Vec::new();
    for kv in &head[1..] {
        let kv = split_escaped(kv, '=');
        tags.push((unescape_key(kv.first()?), unescape_key(kv.get(1)?)));
    }
    tags.sort();
    let mut out = BTreeMap::new();
    for kv in split_escaped(fields, ',') {
        let kv = split_escaped(&kv, '=');
        let v = kv.get(1)?;
        let v = match v.as_str() {
            "true" | "t" | "T" => 1.0,
            "false" | "f" | "F" => 0.0,
            v => v.trim_end_matches(['i', 'u']).parse().ok()?,
        };
        out.insert(unescape_key(kv.first()?), v);
    }
    Some((measurement, (tags, time.parse().ok()?), out))
}

/// Where the live engine stands for one event-time column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Boundary {
    /// Windows ending at or before this (ms) are closed.
    pub closed_before: Option<i64>,
    /// Whether the boundary was committed by the engine (`true`) or derived from the newest
    /// events and the allowed lateness (`false`).
    pub committed: bool,
}

/// The committed closed boundary of `column` over every partition of the lake's ledger.
pub async fn boundary(location: &Location, column: &str, lateness: Duration) -> Result<Boundary> {
    let ledger = OffsetLedger::new(location.clone(), "reader");
    let ext = |e: crate::ledger::LedgerError| DataFusionError::External(Box::new(e));
    let mut closed = None;
    let mut oldest_newest: Option<i64> = None;
    for tp in ledger.partitions().await.map_err(ext)? {
        let Some(entry) = ledger.latest(&tp).await.map_err(ext)? else {
            continue;
        };
        if let Some(c) = entry.progress.closed_before_ms.get(column) {
            closed = closed.max(Some(*c));
        }
        if let Some(m) = entry.progress.max_event_ms.get(column) {
            oldest_newest = Some(oldest_newest.map_or(*m, |o| o.min(*m)));
        }
    }
    if closed.is_some() {
        return Ok(Boundary {
            closed_before: closed,
            committed: true,
        });
    }
    let lateness = i64::try_from(lateness.as_millis()).unwrap_or(i64::MAX);
    Ok(Boundary {
        closed_before: oldest_newest.map(|m| m.saturating_sub(lateness)),
        committed: false,
    })
}

/// The range of window starts of `spec` in `range` whose windows end at or before
/// `closed_before` (when given).
pub fn closed_range(spec: &WindowSpec, range: Range, closed_before: Option<i64>) -> Range {
    let Some(b) = closed_before else {
        return range;
    };
    // A window [s, s + w) is closed when s + w <= b: the last such start is start_of(b - w).
    let last = spec.start_of(b.saturating_sub(spec.width_ms));
    let to = last.saturating_add(1);
    Range {
        from: range.from,
        to: Some(range.to.map_or(to, |t| t.min(to))),
    }
}

/// An Influx transform, ready to be run over history.
pub struct HistoryQuery {
    /// The transform.
    pub transform: Transform,
    /// Its measurement.
    pub measurement: String,
    /// The window machinery, for a windowed query.
    pub window: Option<WindowQuery>,
    /// Output fields that come from approximate aggregates (compared with a tolerance).
    pub approximate: BTreeSet<String>,
}

impl HistoryQuery {
    /// Prepare `t` (an `influx.*` transform planned by `planner`); a `lake.*` one is refused.
    pub async fn new(t: &Transform, planner: &Planner) -> Result<Self> {
        let Target::Influx {
            measurement,
            windowing,
            ..
        } = &t.target
        else {
            return Err(internal(format!(
                "{} ({}) writes the lake: only influx.* queries can be backfilled or reconciled",
                t.target_name(),
                t.file.display()
            )));
        };
        planner.batch.set(Vec::new());
        let window = match windowing {
            Windowing::Windowed(spec) => {
                Some(WindowQuery::new(&t.plan, spec.clone(), &planner.batch_ctx).await?)
            }
            Windowing::PerRow => None,
        };
        Ok(Self {
            approximate: approximate_fields(&t.plan),
            measurement: measurement.clone(),
            transform: t.clone(),
            window,
        })
    }

    /// The window, for a windowed query.
    pub fn spec(&self) -> Option<&WindowSpec> {
        self.window.as_ref().map(|w| &w.spec)
    }

    /// The points the stream writes for `range` (window starts for a windowed query, event times
    /// for a per-row one), computed from the lake; and how many raw rows they came from.
    pub async fn expected(
        &self,
        history: &History,
        planner: &Planner,
        lateness: Duration,
        range: Range,
    ) -> Result<(Points, usize)> {
        let t = &self.transform;
        let (out, rows) = match &self.window {
            Some(w) => {
                let rows = history
                    .window_input(t, &w.spec, lateness, range, None)
                    .await?;
                let n = rows.num_rows();
                if n == 0 {
                    return Ok((Points::new(), 0));
                }
                planner.batch.set(vec![rows]);
                let partial = w.partial(&planner.batch_ctx).await;
                planner.batch.set(Vec::new());
                let reduced = w.reduce(partial?, &planner.batch_ctx).await?;
                (w.finish(reduced, &planner.batch_ctx).await?, n)
            }
            None => {
                let rows = history.rows(EVENT_TIME, range, None).await?;
                let rows = without_refused(history, t, rows).await?;
                let n = rows.num_rows();
                if n == 0 {
                    return Ok((Points::new(), 0));
                }
                (history.run(planner, t, rows).await?, n)
            }
        };
        let Target::Influx { mapping, .. } = &t.target else {
            return Err(internal("not an influx query"));
        };
        let mut body = String::new();
        for b in &out {
            encode_batch_counted(&self.measurement, mapping, b, &mut body);
        }
        let mut points = Points::new();
        for line in body.lines() {
            if let Some((_, key, fields)) = parse_line(line) {
                points.insert(
                    key,
                    Point {
                        fields,
                        line: line.to_string(),
                    },
                );
            }
        }
        Ok((points, rows))
    }
}

/// `rows` without those `t` refused (dead letters naming it).
async fn without_refused(
    history: &History,
    t: &Transform,
    rows: RecordBatch,
) -> Result<RecordBatch> {
    use arrow::array::AsArray;
    use arrow::datatypes::{Int32Type, Int64Type};
    let refused = history.refused_by(&t.target_name()).await?;
    if refused.is_empty() {
        return Ok(rows);
    }
    let p = rows
        .column_by_name(COL_PARTITION)
        .ok_or_else(|| internal("no _partition"))?
        .as_primitive::<Int32Type>();
    let o = rows
        .column_by_name(COL_OFFSET)
        .ok_or_else(|| internal("no _offset"))?
        .as_primitive::<Int64Type>();
    let keep: BooleanArray = (0..rows.num_rows())
        .map(|i| Some(!refused.contains(&(p.value(i), o.value(i)))))
        .collect();
    Ok(arrow::compute::filter_record_batch(&rows, &keep)?)
}

/// Output columns of `plan` computed by an approximate aggregate (`approx_percentile_cont`, …):
/// their values depend on the order rows are merged in.
fn approximate_fields(plan: &LogicalPlan) -> BTreeSet<String> {
    let mut at = plan;
    loop {
        if let LogicalPlan::Projection(p) = at {
            return p
                .expr
                .iter()
                .zip(p.schema.fields())
                .filter(|(e, _)| e.to_string().to_lowercase().contains("approx"))
                .map(|(_, f)| f.name().clone())
                .collect();
        }
        match at.inputs().as_slice() {
            [only] => at = only,
            _ => return BTreeSet::new(),
        }
    }
}

/// How a point differs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Difference {
    /// The lake gives the point; InfluxDB does not have it.
    Missing {
        /// Tags.
        tags: Vec<(String, String)>,
        /// Time (ms).
        time: i64,
        /// Expected fields.
        expected: BTreeMap<String, f64>,
    },
    /// InfluxDB has a point the lake does not give.
    Extra {
        /// Tags.
        tags: Vec<(String, String)>,
        /// Time (ms).
        time: i64,
        /// Fields InfluxDB holds.
        actual: BTreeMap<String, f64>,
    },
    /// Both have the point with different values.
    Wrong {
        /// Tags.
        tags: Vec<(String, String)>,
        /// Time (ms).
        time: i64,
        /// Fields that differ: (expected, actual), NaN for absent.
        fields: BTreeMap<String, (f64, f64)>,
    },
}

impl Difference {
    /// The point's series and time.
    pub fn key(&self) -> (&[(String, String)], i64) {
        match self {
            Self::Missing { tags, time, .. }
            | Self::Extra { tags, time, .. }
            | Self::Wrong { tags, time, .. } => (tags, *time),
        }
    }
}

/// Relative tolerance of exact fields (decimal → float conversions) and of approximate ones.
const EXACT_TOLERANCE: f64 = 1e-9;
/// Relative tolerance of approximate aggregates (t-digest merges depend on the order of rows).
pub const APPROXIMATE_TOLERANCE: f64 = 0.05;

fn same(e: f64, a: f64, approximate: bool) -> bool {
    let tol = if approximate {
        APPROXIMATE_TOLERANCE
    } else {
        EXACT_TOLERANCE
    };
    (e - a).abs() <= tol * e.abs().max(a.abs()).max(1.0)
}

/// The differences between `expected` (from the lake) and `actual` (InfluxDB).
pub fn diff(expected: &Points, actual: &Points, approximate: &BTreeSet<String>) -> Vec<Difference> {
    let mut out = Vec::new();
    for ((tags, time), e) in expected {
        match actual.get(&(tags.clone(), *time)) {
            None => out.push(Difference::Missing {
                tags: tags.clone(),
                time: *time,
                expected: e.fields.clone(),
            }),
            Some(a) => {
                let names: BTreeSet<&String> = e.fields.keys().chain(a.fields.keys()).collect();
                let mut fields = BTreeMap::new();
                for f in names {
                    let (ev, av) = (e.fields.get(f), a.fields.get(f));
                    let ok = match (ev, av) {
                        (Some(x), Some(y)) => same(*x, *y, approximate.contains(f)),
                        (None, None) => true,
                        _ => false,
                    };
                    if !ok {
                        fields.insert(
                            f.clone(),
                            (
                                ev.copied().unwrap_or(f64::NAN),
                                av.copied().unwrap_or(f64::NAN),
                            ),
                        );
                    }
                }
                if !fields.is_empty() {
                    out.push(Difference::Wrong {
                        tags: tags.clone(),
                        time: *time,
                        fields,
                    });
                }
            }
        }
    }
    for ((tags, time), a) in actual {
        if !expected.contains_key(&(tags.clone(), *time)) {
            out.push(Difference::Extra {
                tags: tags.clone(),
                time: *time,
                actual: a.fields.clone(),
            });
        }
    }
    out
}

/// Reads points back from InfluxDB with InfluxQL (`/query`, what Grafana uses) and deletes
/// points that should not be there.
pub struct InfluxReader {
    url: String,
    db: String,
    rp: Option<String>,
    token: String,
    http: reqwest::Client,
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn quote_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl InfluxReader {
    /// A reader of the database behind `[influx]` (`bucket` is `db` or `db/rp`).
    pub fn new(url: &str, bucket: &str, token: &str, timeout: Duration) -> Result<Self> {
        let (db, rp) = match bucket.split_once('/') {
            Some((d, r)) => (d.to_string(), Some(r.to_string())),
            None => (bucket.to_string(), None),
        };
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| internal(format!("http client: {e}")))?;
        Ok(Self {
            url: url.trim_end_matches('/').to_string(),
            db,
            rp,
            token: token.to_string(),
            http,
        })
    }

    async fn influxql(&self, q: &str, post: bool) -> Result<serde_json::Value> {
        let mut params = vec![
            ("db", self.db.clone()),
            ("epoch", "ms".into()),
            ("q", q.into()),
        ];
        if let Some(rp) = &self.rp {
            params.push(("rp", rp.clone()));
        }
        let url = format!("{}/query", self.url);
        let req = if post {
            self.http.post(&url)
        } else {
            self.http.get(&url)
        }
        .query(&params);
        let req = if self.token.is_empty() {
            req
        } else {
            req.header("Authorization", format!("Token {}", self.token))
        };
        let r = req
            .send()
            .await
            .map_err(|e| internal(format!("InfluxDB at {}: {e}", self.url)))?;
        let status = r.status();
        let body = r
            .bytes()
            .await
            .map_err(|e| internal(format!("InfluxDB at {}: {e}", self.url)))?;
        if !status.is_success() {
            return Err(internal(format!(
                "InfluxDB at {} answered {status} to `{q}`: {}",
                self.url,
                String::from_utf8_lossy(&body)
            )));
        }
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| internal(format!("InfluxDB answer to `{q}`: {e}")))?;
        if let Some(e) = v["results"][0]["error"].as_str() {
            return Err(internal(format!("InfluxDB: `{q}`: {e}")));
        }
        Ok(v)
    }

    /// The points of `measurement` with time in `range`.
    pub async fn points(&self, measurement: &str, range: Range) -> Result<Points> {
        let keys = self
            .influxql(
                &format!("SHOW TAG KEYS FROM {}", quote_ident(measurement)),
                false,
            )
            .await?;
        let tag_keys: BTreeSet<String> = keys["results"][0]["series"][0]["values"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|x| x[0].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut filters = Vec::new();
        if let Some(f) = range.from {
            filters.push(format!("time >= {f}ms"));
        }
        if let Some(t) = range.to {
            filters.push(format!("time < {t}ms"));
        }
        let q = format!(
            "SELECT * FROM {}{}",
            quote_ident(measurement),
            if filters.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", filters.join(" AND "))
            }
        );
        let v = self.influxql(&q, false).await?;
        let mut out = Points::new();
        let Some(series) = v["results"][0]["series"].as_array() else {
            return Ok(out);
        };
        for s in series {
            let cols: Vec<String> = s["columns"]
                .as_array()
                .map(|c| {
                    c.iter()
                        .map(|x| x.as_str().unwrap_or_default().to_string())
                        .collect()
                })
                .unwrap_or_default();
            for row in s["values"].as_array().into_iter().flatten() {
                let Some(row) = row.as_array() else { continue };
                let Some(time) = row.first().and_then(|t| t.as_i64()) else {
                    continue;
                };
                let mut tags = Vec::new();
                let mut fields = BTreeMap::new();
                for (c, val) in cols.iter().zip(row).skip(1) {
                    if val.is_null() {
                        continue;
                    }
                    if tag_keys.contains(c) {
                        tags.push((c.clone(), val.as_str().unwrap_or_default().to_string()));
                    } else if let Some(x) = val.as_f64() {
                        fields.insert(c.clone(), x);
                    } else if let Some(b) = val.as_bool() {
                        fields.insert(c.clone(), if b { 1.0 } else { 0.0 });
                    }
                }
                tags.sort();
                out.insert(
                    (tags, time),
                    Point {
                        fields,
                        line: String::new(),
                    },
                );
            }
        }
        Ok(out)
    }

    /// Delete the point of `measurement` at (`tags`, `time`); tags the point lacks are matched
    /// as empty.
    pub async fn delete(
        &self,
        measurement: &str,
        tags: &[(String, String)],
        time: i64,
        all_tags: &[String],
    ) -> Result<()> {
        let mut conds: Vec<String> = all_tags
            .iter()
            .map(|k| {
                let v = tags
                    .iter()
                    .find(|(t, _)| t == k)
                    .map(|(_, v)| v.as_str())
                    .unwrap_or("");
                format!("{} = {}", quote_ident(k), quote_str(v))
            })
            .collect();
        conds.push(format!(
            "time >= {time}ms AND time < {}ms",
            time.saturating_add(1)
        ));
        let q = format!(
            "DELETE FROM {} WHERE {}",
            quote_ident(measurement),
            conds.join(" AND ")
        );
        self.influxql(&q, true).await.map(|_| ())
    }
}

/// What a repair did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Repaired {
    /// Points written (missing or wrong).
    pub written: usize,
    /// Points deleted (extra).
    pub deleted: usize,
}

/// The line protocol that rewrites the missing and wrong points of `differences`.
pub fn repair_body(expected: &Points, differences: &[Difference]) -> String {
    let mut body = String::new();
    for d in differences {
        if matches!(d, Difference::Extra { .. }) {
            continue;
        }
        let (tags, time) = d.key();
        if let Some(p) = expected.get(&(tags.to_vec(), time)) {
            body.push_str(&p.line);
            body.push('\n');
        }
    }
    body
}

/// The tag keys of `measurement`'s points in `differences` and `tag_columns`.
pub fn tag_keys(differences: &[Difference], tag_columns: &[String]) -> Vec<String> {
    let mut keys: BTreeSet<String> = tag_columns.iter().cloned().collect();
    for d in differences {
        keys.extend(d.key().0.iter().map(|(k, _)| k.clone()));
    }
    keys.into_iter().collect()
}

/// Milliseconds of a `--from`/`--to` argument: `2026-01-01`, `2026-01-01T10:00:00Z` (RFC 3339),
/// or `now`.
pub fn parse_time(s: &str) -> std::result::Result<i64, String> {
    if s == "now" {
        return Ok(chrono::Utc::now().timestamp_millis());
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc().timestamp_millis());
    }
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S") {
        return Ok(t.and_utc().timestamp_millis());
    }
    Err(format!(
        "`{s}` is not a time: use 2026-01-01, 2026-01-01T10:00:00Z or now"
    ))
}

/// A time in ms as RFC 3339.
pub fn show_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_back_to_points() {
        let (m, (tags, t), f) =
            parse_line("sales\\ x,region=West\\ Coast,brand=BMW sales=3i,avg=1.5 60000").unwrap();
        assert_eq!(m, "sales x");
        assert_eq!(
            tags,
            vec![
                ("brand".to_string(), "BMW".to_string()),
                ("region".to_string(), "West Coast".to_string())
            ]
        );
        assert_eq!(t, 60_000);
        assert_eq!(f["sales"], 3.0);
        assert_eq!(f["avg"], 1.5);
    }

    #[test]
    fn only_closed_windows_are_in_range() {
        let spec = WindowSpec {
            column: "sold_at".into(),
            width_ms: 60_000,
            origin_ms: 0,
        };
        // Closed before 150 s: the windows [0, 60 s) and [60 s, 120 s) are closed.
        let r = closed_range(&spec, Range::default(), Some(150_000));
        assert!(r.contains(60_000));
        assert!(!r.contains(120_000));
        let r = closed_range(&spec, Range::default(), Some(120_000));
        assert!(r.contains(60_000));
        assert!(!r.contains(120_000));
    }

    #[test]
    fn differences_are_missing_extra_or_wrong() {
        let p = |v: f64| Point {
            fields: [("n".to_string(), v)].into(),
            line: String::new(),
        };
        let expected: Points = [((vec![], 1), p(1.0)), ((vec![], 2), p(2.0))].into();
        let actual: Points = [((vec![], 2), p(3.0)), ((vec![], 3), p(1.0))].into();
        let d = diff(&expected, &actual, &BTreeSet::new());
        assert_eq!(d.len(), 3);
        assert!(matches!(d[0], Difference::Missing { time: 1, .. }));
        assert!(matches!(d[1], Difference::Wrong { time: 2, .. }));
        assert!(matches!(d[2], Difference::Extra { time: 3, .. }));
    }
}
