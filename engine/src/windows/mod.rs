//! Event-time windows of the windowed Influx queries, kept as mergeable partial aggregates.
//!
//! An Influx query that aggregates must group by a fixed-width window of an event-time column and
//! name it `time`: `date_bin(INTERVAL '1 minute', sold_at) AS time` or
//! `date_trunc('minute', sold_at) AS time` ([`analyze`] reads the [`WindowSpec`] from the plan).
//! A query without aggregation maps rows to points one to one and needs no window.
//!
//! For each windowed query, each window and each Kafka partition the engine keeps the *partial
//! aggregate state* of DataFusion's two-phase aggregation ([`aggregate`]): what
//! `AggregateMode::Partial` produces over the partition's rows of that window, merged batch after
//! batch with `AggregateMode::PartialReduce`. A point is the `Final` merge of every partition's
//! state for its window, so it is exact however many batches, restarts, rebalances and engines
//! the window spans; memory grows with windows × groups, not with rows. The state of a partition
//! is committed with the partition's ledger entry ([`state`]), atomically with its lake files.
//!
//! **Lateness** ([`watermark`]). A row is late — counted, kept in the lake, left out of its
//! window — when its window ended at least `allowed_lateness` before the newest event its own
//! partition had shown before the batch, or when its window was closed already. A window closes
//! (its state is dropped) when every partition of the topic, owned by this engine or not, has
//! passed it by the allowed lateness; a partition counts as idle (and stops holding windows open)
//! only when it has nothing left to read for `idle_timeout`, never because it is unassigned or
//! unread. Event times are bounded at decode by the wall clock plus `events.max_future`.

pub mod aggregate;
pub mod digests;
pub mod state;
pub mod watermark;

use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, Projection};
use datafusion::scalar::ScalarValue;

use crate::line_protocol::TIME_COLUMN;

/// A fixed-width event-time window: `[origin + k·width, origin + (k+1)·width)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WindowSpec {
    /// The event-time column of `transactions` the window is taken over.
    pub column: String,
    /// Window width in milliseconds.
    pub width_ms: i64,
    /// Alignment origin in milliseconds since the epoch.
    pub origin_ms: i64,
}

impl WindowSpec {
    /// Start of the window holding `t_ms` (saturating at the ends of the i64 range; event times
    /// are bounded long before that at decode).
    pub fn start_of(&self, t_ms: i64) -> i64 {
        let (t, o, w) = (
            i128::from(t_ms),
            i128::from(self.origin_ms),
            i128::from(self.width_ms.max(1)),
        );
        let start = o + (t - o).div_euclid(w) * w;
        start.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// End of the window starting at `start` (exclusive), saturating.
    pub fn end_of(&self, start: i64) -> i64 {
        start.saturating_add(self.width_ms)
    }
}

/// An event time (ms since the epoch) for messages: RFC 3339 in UTC, or the raw number when it
/// is outside chrono's range.
pub fn fmt_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// How an Influx query relates rows to points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Windowing {
    /// No aggregation: each batch's rows map to points directly.
    PerRow,
    /// Aggregation over a window: points are rewritten whole as their window fills.
    Windowed(WindowSpec),
}

const HOW: &str = "group by a window of an event-time column and name it `time`, e.g. \
    `SELECT date_bin(INTERVAL '1 minute', sold_at) AS time, brand, count(*) AS sales \
    FROM transactions GROUP BY 1, 2`";

/// Find the window of an Influx query, or say what is wrong with the query.
pub fn analyze(plan: &LogicalPlan) -> Result<Windowing, String> {
    let projection = find_projection(plan).ok_or("the query has no SELECT list")?;
    let idx = projection
        .schema
        .fields()
        .iter()
        .position(|f| f.name() == TIME_COLUMN)
        .ok_or_else(|| format!("an influx query needs a column named `time`: {HOW}"))?;
    let time_expr = unalias(&projection.expr[idx]);
    let Some(aggregate) = find_aggregate(&projection.input) else {
        return Ok(Windowing::PerRow);
    };
    let group = match time_expr {
        Expr::Column(c) => aggregate
            .schema
            .fields()
            .iter()
            .take(aggregate.group_expr.len())
            .position(|f| f.name() == &c.name)
            .map(|i| unalias(&aggregate.group_expr[i])),
        _ => None,
    }
    .ok_or_else(|| format!("`time` must be one of the GROUP BY expressions: {HOW}"))?;
    window_of(group).map(Windowing::Windowed)
}

fn unalias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => unalias(&a.expr),
        other => other,
    }
}

fn find_projection(plan: &LogicalPlan) -> Option<&Projection> {
    match plan {
        LogicalPlan::Projection(p) => Some(p),
        other => match other.inputs().as_slice() {
            [only] => find_projection(only),
            _ => None,
        },
    }
}

fn find_aggregate(plan: &LogicalPlan) -> Option<&Aggregate> {
    match plan {
        LogicalPlan::Aggregate(a) => Some(a),
        LogicalPlan::Filter(_) | LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => {
            match plan.inputs().as_slice() {
                [only] => find_aggregate(only),
                _ => None,
            }
        }
        _ => None,
    }
}

fn column_name(e: &Expr) -> Option<String> {
    match unalias(e) {
        Expr::Column(c) => Some(c.name.clone()),
        Expr::Cast(c) => column_name(&c.expr),
        _ => None,
    }
}

fn literal(e: &Expr) -> Option<&ScalarValue> {
    match unalias(e) {
        Expr::Literal(v, _) => Some(v),
        Expr::Cast(c) => literal(&c.expr),
        _ => None,
    }
}

fn interval_ms(v: &ScalarValue) -> Option<i64> {
    let ms = match v {
        ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => {
            i64::from(i.days) * 86_400_000 + i.nanoseconds / 1_000_000
        }
        ScalarValue::IntervalDayTime(Some(i)) => {
            i64::from(i.days) * 86_400_000 + i64::from(i.milliseconds)
        }
        _ => return None,
    };
    (ms > 0).then_some(ms)
}

fn timestamp_ms(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::TimestampSecond(Some(s), _) => Some(s * 1000),
        ScalarValue::TimestampMillisecond(Some(s), _) => Some(*s),
        ScalarValue::TimestampMicrosecond(Some(s), _) => Some(s.div_euclid(1000)),
        ScalarValue::TimestampNanosecond(Some(s), _) => Some(s.div_euclid(1_000_000)),
        _ => None,
    }
}

fn window_of(group: &Expr) -> Result<WindowSpec, String> {
    let Expr::ScalarFunction(f) = group else {
        return Err(format!("`time` is not a window: {HOW}"));
    };
    let args = &f.args;
    let column = args
        .get(1)
        .and_then(column_name)
        .ok_or_else(|| format!("the window must be taken over a column of transactions: {HOW}"))?;
    match f.func.name() {
        "date_bin" => {
            let width_ms = args.first().and_then(literal).and_then(interval_ms).ok_or(
                "date_bin needs a fixed interval literal of whole milliseconds (no months), \
                 e.g. INTERVAL '1 minute'",
            )?;
            let origin_ms = match args.get(2) {
                None => 0,
                Some(o) => literal(o).and_then(timestamp_ms).ok_or(
                    "the origin of date_bin must be a timestamp literal, e.g. TIMESTAMP '2000-01-01T00:00:00Z'",
                )?,
            };
            Ok(WindowSpec {
                column,
                width_ms,
                origin_ms,
            })
        }
        "date_trunc" => {
            let unit = args.first().and_then(literal).and_then(|v| match v {
                ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
                    Some(s.to_lowercase())
                }
                _ => None,
            });
            let width_ms = match unit.as_deref() {
                Some("second") => 1_000,
                Some("minute") => 60_000,
                Some("hour") => 3_600_000,
                Some("day") => 86_400_000,
                other => {
                    return Err(format!(
                        "date_trunc unit {other:?} is not a fixed width; use second, minute, hour or day, \
                         or date_bin(INTERVAL '…', {column})"
                    ));
                }
            };
            Ok(WindowSpec {
                column,
                width_ms,
                origin_ms: 0,
            })
        }
        other => Err(format!("`time` is {other}(…), not a window: {HOW}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_align_to_their_origin() {
        let w = WindowSpec {
            column: "t".into(),
            width_ms: 60_000,
            origin_ms: 0,
        };
        assert_eq!(w.start_of(119_999), 60_000);
        assert_eq!(w.start_of(120_000), 120_000);
        assert_eq!(w.start_of(-1), -60_000);
        let shifted = WindowSpec {
            origin_ms: 15_000,
            ..w
        };
        assert_eq!(shifted.start_of(70_000), 15_000);
        assert_eq!(shifted.start_of(80_000), 75_000);
    }
}
