//! The lake's history as the stream saw it, for running a query over the past: a backfill of a
//! new query, a reconcile of InfluxDB against the lake, and the seeding of a new windowed query's
//! open windows.
//!
//! The raw dataset (`lake.raw_dataset`, default `cars`: every transaction with its `_topic`,
//! `_partition`, `_offset` and `_kafka_ts`) is read back as `transactions`. For a windowed query
//! the rows the stream left out of its windows are left out here too: rows it counted late (judged
//! per partition in offset order by [`late_rows`], the stream's own rule) and rows the query
//! refused (dead letters naming it). So the query over this history gives the points the stream
//! wrote.
//!
//! What it cannot know: a row the raw dataset's own query refused (a dead letter naming
//! `lake.cars`) was still counted by the windows; a row late only because another partition had
//! closed its window (a partition waking up after long idleness) was not. Both are rare and show
//! as differences in a reconcile.

use std::collections::HashSet;
use std::time::Duration;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, Int32Type, Int64Type, TimeUnit, TimestampMillisecondType};
use datafusion::error::{DataFusionError, Result};
use datafusion::prelude::SessionContext;

use crate::catalog::register_lake;
use crate::schema::{COL_OFFSET, COL_PARTITION, COL_TOPIC, DEAD_LETTERS, source_schema};
use crate::storage::Location;
use crate::transform::{Planner, Transform};
use crate::windows::WindowSpec;
use crate::windows::watermark::late_rows;

/// An event-time range `[from, to)` in milliseconds; either end open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Range {
    /// Inclusive start.
    pub from: Option<i64>,
    /// Exclusive end.
    pub to: Option<i64>,
}

impl Range {
    /// Does `t` fall in the range?
    pub fn contains(&self, t: i64) -> bool {
        self.from.is_none_or(|f| t >= f) && self.to.is_none_or(|e| t < e)
    }
}

/// The lake, opened for reading its history.
pub struct History {
    ctx: SessionContext,
    location: Location,
    raw: String,
    has_dt: bool,
}

fn internal(m: impl Into<String>) -> DataFusionError {
    DataFusionError::Execution(m.into())
}

fn sql_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// SQL conditions for `column` in `range`.
fn range_filters(column: &str, range: Range) -> Vec<String> {
    let mut filters = Vec::new();
    if let Some(f) = range.from {
        filters.push(format!("\"{column}\" >= TIMESTAMP '{}'", sql_time(f)));
    }
    if let Some(t) = range.to {
        filters.push(format!("\"{column}\" < TIMESTAMP '{}'", sql_time(t)));
    }
    filters
}

/// `WHERE a AND b`, or nothing.
fn where_of(filters: &[String]) -> String {
    if filters.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", filters.join(" AND "))
    }
}

impl History {
    /// Open the lake at `location`; `raw` names its raw dataset.
    pub async fn open(location: &Location, raw: &str) -> Result<Self> {
        let ctx = crate::catalog::lake_context()?;
        let found = register_lake(&ctx, location).await?;
        let Some(d) = found.iter().find(|d| d.name == raw) else {
            return Err(internal(format!(
                "the lake at {} has no dataset `{raw}` (lake.raw_dataset): it is written by the query \
                 that keeps every transaction, e.g. queries/cars.sql",
                location.url
            )));
        };
        Ok(Self {
            location: location.clone(),
            has_dt: d.partition_cols.iter().any(|c| c == "dt"),
            raw: raw.to_string(),
            ctx,
        })
    }

    /// The session with every dataset of the lake as a table.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The raw rows with `column` in `range` (and, when given, of one partition), in the
    /// `transactions` schema, ordered by partition and offset.
    pub async fn rows(
        &self,
        column: &str,
        range: Range,
        partition: Option<i32>,
    ) -> Result<RecordBatch> {
        let mut filters = range_filters(column, range);
        if let Some(f) = range.from
            && self.has_dt
            && column == crate::schema::EVENT_TIME
        {
            // The raw dataset's days: prune whole directories.
            let day = sql_time(f.div_euclid(86_400_000) * 86_400_000);
            filters.push(format!("dt >= '{}'", &day[..10]));
        }
        if let Some(p) = partition {
            filters.push(format!("\"{COL_PARTITION}\" = {p}"));
        }
        self.rows_where(&filters).await
    }

    /// The raw rows of one Kafka partition with offsets in `[from, to)`, in the `transactions`
    /// schema, ordered by offset.
    pub async fn rows_at(
        &self,
        topic: &str,
        partition: i32,
        (from, to): (i64, i64),
    ) -> Result<RecordBatch> {
        self.rows_where(&[
            format!("\"{COL_TOPIC}\" = '{}'", topic.replace('\'', "''")),
            format!("\"{COL_PARTITION}\" = {partition}"),
            format!("\"{COL_OFFSET}\" >= {from}"),
            format!("\"{COL_OFFSET}\" < {to}"),
        ])
        .await
    }

    /// The raw rows matching every SQL condition of `filters`, ordered by partition and offset.
    async fn rows_where(&self, filters: &[String]) -> Result<RecordBatch> {
        let schema = source_schema();
        let cols: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| format!("\"{}\"", f.name()))
            .collect();
        let sql = format!(
            "SELECT {} FROM \"{}\" {} ORDER BY \"{COL_PARTITION}\", \"{COL_OFFSET}\"",
            cols.join(", "),
            self.raw,
            where_of(filters)
        );
        let batches = self.ctx.sql(&sql).await?.collect().await?;
        // Cast to the declared schema (the lake stores every column as nullable).
        let batches = batches
            .iter()
            .map(|b| crate::schema::cast_to(b, &schema))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(concat_batches(&schema, &batches)?)
    }

    /// The topics the raw dataset holds rows of.
    pub async fn topics(&self) -> Result<Vec<String>> {
        let sql = format!("SELECT DISTINCT \"{COL_TOPIC}\" FROM \"{}\"", self.raw);
        let mut out = Vec::new();
        for b in self.ctx.sql(&sql).await?.collect().await? {
            let c = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
            let c = c.as_string::<i32>();
            out.extend(
                (0..c.len())
                    .filter(|&i| !c.is_null(i))
                    .map(|i| c.value(i).to_string()),
            );
        }
        out.sort();
        Ok(out)
    }

    /// Where the lake lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The raw dataset's name.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The oldest and newest `column` (ms) and the number of raw rows with `column` in `range`.
    pub async fn span(
        &self,
        column: &str,
        range: Range,
    ) -> Result<(Option<i64>, Option<i64>, u64)> {
        let sql = format!(
            "SELECT min(\"{column}\"), max(\"{column}\"), count(*) FROM \"{}\" {}",
            self.raw,
            where_of(&range_filters(column, range))
        );
        let b = self.ctx.sql(&sql).await?.collect().await?;
        let Some(b) = b.first().filter(|b| b.num_rows() > 0) else {
            return Ok((None, None, 0));
        };
        let time = |i: usize| -> Result<Option<i64>> {
            let c = arrow::compute::cast(
                b.column(i),
                &DataType::Timestamp(TimeUnit::Millisecond, None),
            )?;
            let c = c.as_primitive::<TimestampMillisecondType>();
            Ok((!c.is_null(0)).then(|| c.value(0)))
        };
        let n = arrow::compute::cast(b.column(2), &DataType::Int64)?;
        let n = n.as_primitive::<Int64Type>().value(0);
        Ok((time(0)?, time(1)?, n.max(0) as u64))
    }

    /// (partition, offset) of every row dead-lettered by `transform` (`influx.<name>`).
    pub async fn refused_by(&self, transform: &str) -> Result<HashSet<(i32, i64)>> {
        let has_column = match self.ctx.table(DEAD_LETTERS).await {
            Ok(t) => t.schema().field_with_unqualified_name("transform").is_ok(),
            Err(_) => false,
        };
        let mut out = HashSet::new();
        if !has_column {
            return Ok(out);
        }
        let sql = format!(
            "SELECT \"partition\", \"offset\" FROM {DEAD_LETTERS} WHERE transform = '{}'",
            transform.replace('\'', "''")
        );
        for b in self.ctx.sql(&sql).await?.collect().await? {
            let p = arrow::compute::cast(b.column(0), &DataType::Int32)?;
            let o = arrow::compute::cast(b.column(1), &DataType::Int64)?;
            let (p, o) = (p.as_primitive::<Int32Type>(), o.as_primitive::<Int64Type>());
            for i in 0..b.num_rows() {
                out.insert((p.value(i), o.value(i)));
            }
        }
        Ok(out)
    }

    /// The rows a windowed query counted for the windows starting in `range`: the raw rows minus
    /// the late ones (judged per partition in offset order, from everything that could matter
    /// before) and minus those it refused.
    pub async fn window_input(
        &self,
        t: &Transform,
        spec: &WindowSpec,
        lateness: Duration,
        range: Range,
        partition: Option<i32>,
    ) -> Result<RecordBatch> {
        let lateness_ms = i64::try_from(lateness.as_millis()).unwrap_or(i64::MAX);
        // A row before `from` less the lateness and a window can no longer make a row of the
        // range late: reading from there gives the same decisions as the whole history.
        let read = Range {
            from: range
                .from
                .map(|f| f.saturating_sub(lateness_ms).saturating_sub(spec.width_ms)),
            // `range` holds window starts: read to the end of the last window starting in it.
            to: range
                .to
                .map(|t| spec.end_of(spec.start_of(t.saturating_sub(1)))),
        };
        let rows = self.rows(&spec.column, read, partition).await?;
        let refused = self.refused_by(&t.target_name()).await?;
        let times = arrow::compute::cast(
            rows.column_by_name(&spec.column)
                .ok_or_else(|| internal(format!("no column {}", spec.column)))?,
            &DataType::Timestamp(TimeUnit::Millisecond, None),
        )?;
        let times = times.as_primitive::<TimestampMillisecondType>();
        let parts = rows
            .column_by_name(COL_PARTITION)
            .ok_or_else(|| internal("no _partition"))?
            .as_primitive::<Int32Type>()
            .clone();
        let offsets = rows
            .column_by_name(COL_OFFSET)
            .ok_or_else(|| internal("no _offset"))?
            .as_primitive::<Int64Type>()
            .clone();
        let mut keep = vec![false; rows.num_rows()];
        let mut start = 0;
        while start < rows.num_rows() {
            let p = parts.value(start);
            let mut end = start;
            while end < rows.num_rows() && parts.value(end) == p {
                end += 1;
            }
            let late = late_rows(
                (start..end).map(|i| (!times.is_null(i)).then(|| times.value(i))),
                spec,
                lateness_ms,
                None,
                None,
            );
            for (k, i) in (start..end).enumerate() {
                let in_range = !times.is_null(i) && range.contains(spec.start_of(times.value(i)));
                keep[i] = in_range && !late[k] && !refused.contains(&(p, offsets.value(i)));
            }
            start = end;
        }
        Ok(filter_record_batch(&rows, &BooleanArray::from(keep))?)
    }

    /// Run `t`'s query over `rows` (as `transactions`).
    pub async fn run(
        &self,
        planner: &Planner,
        t: &Transform,
        rows: RecordBatch,
    ) -> Result<Vec<RecordBatch>> {
        planner.batch.set(vec![rows]);
        let out = t.execute(&planner.batch_ctx).await;
        planner.batch.set(Vec::new());
        out
    }
}
