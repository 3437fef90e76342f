//! The Influx step of a batch: per-row points from the batch, windowed points recomputed from
//! every touched window, the engine's own metrics point, and the write with retries.

use std::collections::HashMap;

use tokio::time::Instant;

use arrow::array::RecordBatch;
use tokio_util::sync::CancellationToken;

use super::{PipelineError, Stop, partitions};
use crate::metrics::Metrics;
use crate::retry::Transient;
use crate::retry::{RetryError, retry};
use crate::sink::influx::InfluxError;
use crate::sink::line_protocol::encode_batch;
use crate::source::Source;
use crate::transform::window::Windowing;
use crate::transform::{Target, Transform};
use crate::windows::TopicPartition;

use super::Pipeline;

impl<S: Source> Pipeline<S> {
    /// Points of every Influx transform for this batch: (body, points, late rows).
    pub(super) async fn influx_points(
        &mut self,
        rows: &RecordBatch,
        groups: &HashMap<TopicPartition, RecordBatch>,
        replay_below: &HashMap<TopicPartition, i64>,
    ) -> Result<(String, u64, u64), Stop> {
        let mut body = String::new();
        let mut points = 0u64;
        let mut late = 0u64;
        let per_row: Vec<&Transform> = self
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
            .collect();
        if !per_row.is_empty() && rows.num_rows() > 0 {
            self.planner.batch.set(vec![rows.clone()]);
            for t in per_row {
                points += emit(t, &self.planner.batch_ctx, &self.metrics, &mut body).await;
            }
        }
        for (spec, st) in &mut self.stores {
            for (tp, part) in groups {
                if let Some(max) =
                    partitions::max_time(part, &spec.column).map_err(PipelineError::from)?
                {
                    st.marks.observe(tp.clone(), max);
                }
            }
            let added = st
                .store
                .add(rows, replay_below)
                .map_err(PipelineError::from)?;
            late += added.late_rows as u64;
            if added.late_rows > 0 {
                tracing::warn!(
                    late = added.late_rows,
                    closed_before = ?st.store.closed_before(),
                    watermark = ?st.marks.current(),
                    clocks = %st.marks.describe(),
                    "rows later than the allowed lateness: kept in the lake, not in their (closed) windows"
                );
            }
            if !added.touched.is_empty() {
                self.planner.windows.set(st.store.rows_of(&added.touched));
                for t in self.transforms.iter() {
                    if matches!(&t.target, Target::Influx { windowing: Windowing::Windowed(w), .. } if w == spec)
                    {
                        points += emit(t, &self.planner.window_ctx, &self.metrics, &mut body).await;
                    }
                }
            }
            let (_, early) = st
                .store
                .close(st.marks.current(), self.options.max_window_rows);
            if early > 0 {
                tracing::warn!(
                    windows = early,
                    max_rows = self.options.max_window_rows,
                    "closed windows early: windows.max_rows reached"
                );
                self.metrics.windows_closed_early.inc_by(early as u64);
            }
        }
        self.planner.windows.set(Vec::new());
        Ok((body, points, late))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn engine_point(
        &self,
        body: &mut String,
        records: u64,
        rows: u64,
        dead: usize,
        late: u64,
        points: u64,
        started: Instant,
        lag: Option<i64>,
    ) {
        use std::fmt::Write as _;
        let id = crate::sink::line_protocol::escape_key(&self.options.engine_id);
        let _ = writeln!(
            body,
            "carflow_engine,engine={id} records_in={records}i,rows_out={rows}i,dead_letters={dead}i,late_rows={late}i,points={points}i,batch_ms={:.3},lag={}i {}",
            started.elapsed().as_secs_f64() * 1000.0,
            lag.unwrap_or(0),
            chrono::Utc::now().timestamp_millis()
        );
    }

    pub(super) async fn write_influx(
        &mut self,
        body: &str,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        if body.is_empty() {
            return Ok(());
        }
        let sink = &self.influx;
        let metrics = &self.metrics;
        let health = &self.health;
        let attempt = retry("influx write", &self.options.backoff, shutdown, || async {
            let r = sink.write(body).await;
            if let Err(e) = &r {
                metrics.error("influx");
                if e.is_transient() {
                    health.set_problem(Some(e.to_string()));
                }
            }
            r
        })
        .await;
        match attempt {
            Ok(()) => Ok(()),
            Err(RetryError::Permanent(InfluxError::Rejected {
                status, message, ..
            })) => {
                tracing::error!(status, %message, "InfluxDB rejected this batch's points; they are skipped (the lake has every row)");
                self.metrics.influx_rejected.inc();
                Ok(())
            }
            Err(RetryError::Permanent(e)) => Err(Stop::Failed(e.into())),
            Err(RetryError::Shutdown(_)) => Err(Stop::Shutdown),
        }
    }
}

/// Run a transform; a runtime failure is logged and counted, and the batch goes on without it.
pub(super) async fn run_transform(
    t: &Transform,
    ctx: &datafusion::prelude::SessionContext,
    metrics: &Metrics,
) -> Option<Vec<RecordBatch>> {
    match t.execute(ctx).await {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::error!(file = %t.file.display(), target = %t.target_name(), error = %e, "transform failed on this batch; its output for the batch is skipped");
            metrics.error("transform");
            None
        }
    }
}

async fn emit(
    t: &Transform,
    ctx: &datafusion::prelude::SessionContext,
    metrics: &Metrics,
    body: &mut String,
) -> u64 {
    let Target::Influx {
        measurement,
        mapping,
        ..
    } = &t.target
    else {
        return 0;
    };
    let Some(batches) = run_transform(t, ctx, metrics).await else {
        return 0;
    };
    let mut n = 0;
    for b in &batches {
        n += encode_batch(measurement, mapping, b, body) as u64;
    }
    metrics.rows("influx", measurement, n);
    n
}
