//! Influx points of a batch that need no window: per-row queries (one point per row) and the
//! engine's own metrics point; and writing line protocol with retries.

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::part::{MessageIndex, PartBatch, refused_rows, route, run_on};
use super::{Pipeline, PipelineError, Stop};
use crate::line_protocol::encode_batch_counted;
use crate::retry::{RetryError, Transient, retry_reporting};
use crate::schema::source_schema;
use std::sync::Arc;

use crate::sink::influx::{InfluxError, WriteReport};
use crate::source::Source;
use crate::transform::isolate::run_isolating;
use crate::transform::{Target, Transform};
use crate::windows::Windowing;

impl<S: Source> Pipeline<S> {
    /// Points of every per-row Influx query over the batch's fresh rows, appended to `body`.
    pub(super) async fn row_points(
        &mut self,
        parts: &mut [PartBatch],
        index: &mut MessageIndex<'_>,
        body: &mut String,
    ) -> Result<u64, Stop> {
        let per_row: Vec<Transform> = self
            .queries
            .transforms
            .iter()
            .filter(|t| {
                matches!(
                    t.target,
                    Target::Influx {
                        windowing: Windowing::PerRow,
                        ..
                    }
                )
            })
            .cloned()
            .collect();
        if per_row.is_empty() {
            return Ok(0);
        }
        let fresh: Vec<RecordBatch> = parts.iter().filter_map(|p| p.fresh.clone()).collect();
        if fresh.is_empty() {
            return Ok(0);
        }
        let rows = concat_batches(&source_schema(), &fresh)?;
        let mut points = 0u64;
        for t in &per_row {
            let Target::Influx {
                measurement,
                mapping,
                ..
            } = &t.target
            else {
                continue;
            };
            let planner = &self.queries.planner;
            let iso = run_isolating(&rows, |r| run_on(planner, t, r)).await;
            if iso.all_failed(rows.num_rows())
                && let Some(e) = self.queries.canary.broken(|r| run_on(planner, t, r)).await
            {
                return Err(Stop::Stalled(format!(
                    "{} ({}) fails on every row, sample rows included: {e}",
                    t.target_name(),
                    t.file.display()
                )));
            }
            let refused = refused_rows(index, &rows, &iso.poison, t)?;
            route(parts, refused);
            let mut n = 0;
            for b in &iso.outputs {
                let done = encode_batch_counted(measurement, mapping, b, body);
                n += done.points as u64;
                self.metrics.tag_rewrites.inc_by(done.rewritten as u64);
            }
            self.metrics.rows("influx", measurement, n);
            points += n;
        }
        self.queries.planner.batch.set(Vec::new());
        Ok(points)
    }

    /// Write line protocol, retrying while InfluxDB is down; points it refuses as bad data are
    /// counted and logged (the others are written); a configuration error stops the engine. A
    /// write still in flight ([`Self::write_influx_later`]) lands first.
    pub(super) async fn write_influx(
        &mut self,
        body: &str,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        self.settle_points().await?;
        if body.is_empty() {
            return Ok(());
        }
        let (sink, metrics, health) = (&self.sinks.influx, &self.metrics, &self.health);
        let write = retry_reporting(
            "influx write",
            &self.options.backoff,
            shutdown,
            |e: &InfluxError| {
                metrics.error("influx");
                if e.is_transient() {
                    health.set("influx", Some(e.to_string()));
                }
            },
            || sink.write(body),
        );
        // While InfluxDB answers, the next batch is read (and decoded).
        let attempt = reading_ahead!(self, write).await;
        self.influx_outcome(attempt)
    }

    /// Start writing `body` and go on: the next [`Self::write_influx`] (through which every
    /// batch passes before its lake commit) and the end of the run wait for it. Writes started
    /// this way run one after the other, in the order they were started, so points land in the
    /// order they were made (and a line-protocol file is never written by two at once). A
    /// `best_effort` write is tried once and its failure ignored (the engine's own metrics).
    pub(super) fn write_influx_later(
        &mut self,
        body: String,
        best_effort: bool,
        shutdown: &CancellationToken,
    ) {
        if body.is_empty() {
            return;
        }
        let before = self.pending_points.take();
        let (sink, metrics, health) = (
            Arc::clone(&self.sinks.influx),
            Arc::clone(&self.metrics),
            Arc::clone(&self.health),
        );
        let (backoff, shutdown) = (self.options.backoff.clone(), shutdown.clone());
        self.pending_points = Some(tokio::spawn(async move {
            let mut report = match before {
                None => WriteReport::default(),
                Some(handle) => match handle.await {
                    Ok(Ok(report)) => report,
                    Ok(Err(e)) => return Err(e),
                    Err(e) => {
                        return Err(RetryError::Permanent(InfluxError::Config(format!(
                            "an earlier InfluxDB write task ended without an answer: {e}"
                        ))));
                    }
                },
            };
            if best_effort {
                if let Ok(r) = sink.write(&body).await {
                    report.rejected_points += r.rejected_points;
                    report.reasons.extend(r.reasons);
                }
                return Ok(report);
            }
            let r = retry_reporting(
                "influx write",
                &backoff,
                &shutdown,
                |e: &InfluxError| {
                    metrics.error("influx");
                    if e.is_transient() {
                        health.set("influx", Some(e.to_string()));
                    }
                },
                || sink.write(&body),
            )
            .await?;
            report.rejected_points += r.rejected_points;
            report.reasons.extend(r.reasons);
            Ok(report)
        }));
    }

    /// Wait for the write in flight, if any (reading ahead meanwhile).
    pub(super) async fn settle_points(&mut self) -> Result<(), Stop> {
        let Some(handle) = self.pending_points.take() else {
            return Ok(());
        };
        let joined = reading_ahead!(self, handle).await;
        let attempt = joined.map_err(|e| {
            Stop::Failed(PipelineError::Influx(InfluxError::Config(format!(
                "the InfluxDB write task ended without an answer: {e}"
            ))))
        })?;
        self.influx_outcome(attempt)?;
        // The batches whose points these were are done now.
        for done in std::mem::take(&mut self.unfinished) {
            self.record(done).await;
        }
        Ok(())
    }

    /// Health, metrics and logs of a write's outcome.
    fn influx_outcome(
        &mut self,
        attempt: Result<WriteReport, RetryError<InfluxError>>,
    ) -> Result<(), Stop> {
        match attempt {
            Ok(report) => {
                self.health.set("influx", None);
                if report.rejected_points > 0 {
                    self.metrics.influx_rejected.inc();
                    self.metrics
                        .influx_rejected_points
                        .inc_by(report.rejected_points as u64);
                    tracing::error!(points = report.rejected_points, reason = %report.reasons.join(" | "),
                        "InfluxDB refused some points as bad data; the others were written (the lake has every row)");
                }
                Ok(())
            }
            Err(RetryError::Permanent(e)) => {
                self.health.set("influx", Some(e.to_string()));
                Err(Stop::Failed(PipelineError::Influx(e)))
            }
            Err(RetryError::Shutdown(_)) => Err(Stop::Shutdown),
        }
    }
}

/// A write of window points in flight.
pub(super) type PendingWrite =
    tokio::task::JoinHandle<Result<WriteReport, RetryError<InfluxError>>>;

/// The engine's own metrics point for one batch.
#[allow(clippy::too_many_arguments)]
pub(super) fn engine_point(
    body: &mut String,
    engine_id: &str,
    records: u64,
    rows: u64,
    dead: usize,
    late: u64,
    points: u64,
    started: Instant,
    lag: Option<i64>,
) {
    use std::fmt::Write as _;
    let id = crate::line_protocol::escape_key(engine_id);
    let _ = writeln!(
        body,
        "carflow_engine,engine={id} records_in={records}i,rows_out={rows}i,dead_letters={dead}i,late_rows={late}i,points={points}i,batch_ms={:.3},lag={}i {}",
        started.elapsed().as_secs_f64() * 1000.0,
        lag.unwrap_or(0),
        chrono::Utc::now().timestamp_millis()
    );
}
