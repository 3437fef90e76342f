//! `carflow backfill FILE`: write an influx.* query's points over the lake's history, exactly as
//! the stream would.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use carflow_engine::reconcile::{Boundary, HistoryQuery};
use carflow_engine::sink::influx::{InfluxSink, InfluxTarget};
use carflow_engine::transform::Target;
use serde::Serialize;

use crate::cli::{BackfillArgs, Format, Global};
use crate::history::{Job, Timing, show_boundary, show_range};

#[derive(Debug, Serialize)]
struct Report {
    file: String,
    target: String,
    windowed: bool,
    from: Option<i64>,
    to: Option<i64>,
    boundary: Boundary,
    rows: usize,
    points: usize,
    rejected_points: usize,
    written_to: String,
    timing: Timing,
}

pub async fn run(global: &Global, args: BackfillArgs) -> anyhow::Result<ExitCode> {
    let job = Job::open(global, &args.range).await?;
    let sql = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let t = match job.planner.plan_file(&args.file, &sql).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    if let Target::Lake { dataset, .. } = &t.target {
        eprintln!(
            "{}: lake.{dataset} cannot be backfilled yet: a lake dataset is written exactly once per \
             Kafka offset under the offset ledger of the live query, and a backfill would need files \
             for exactly the offsets below where that query started, under names the ledger knows, \
             which is not built. Run the query over the lake instead: \
             carflow sql -c \"CREATE VIEW transactions AS SELECT * FROM {}; <your SELECT>\"",
            args.file.display(),
            job.config.lake.raw_dataset
        );
        return Ok(ExitCode::from(2));
    }
    let q = HistoryQuery::new(&t, &job.planner).await?;
    let (range, boundary) = job.plan(&q).await?;
    let sink = InfluxSink::new(InfluxTarget::from_config(&job.config.influx))?;
    let written_to = match sink.target() {
        InfluxTarget::File(p) => format!("file {}", p.display()),
        InfluxTarget::Http { url, bucket, .. } => format!("{url} bucket {bucket}"),
    };
    let started = Instant::now();
    let bar = job.bar(&t.target_name());
    let (points, rows) = job.expected(&q, range, &bar).await?;
    bar.finish_and_clear();
    let mut body = String::new();
    for p in points.values() {
        body.push_str(&p.line);
        body.push('\n');
    }
    let report = sink
        .write(&body)
        .await
        .with_context(|| format!("writing to {written_to}"))?;
    let out = Report {
        file: t.file.display().to_string(),
        target: t.target_name(),
        windowed: q.spec().is_some(),
        from: range.from,
        to: range.to,
        boundary,
        rows,
        points: points.len() - report.rejected_points,
        rejected_points: report.rejected_points,
        written_to,
        timing: Timing::of(started, rows),
    };
    match job.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&out)?),
        Format::Text => {
            println!(
                "backfilled {} ({}) → {}",
                out.target, out.file, out.written_to
            );
            println!("  {}", show_range(&q, range));
            if out.windowed {
                println!("  {}", show_boundary(&out.boundary, job.include_open));
            }
            println!(
                "  {} lake rows → {} points in {:.1}s ({} rows/s){}",
                out.rows,
                out.points,
                out.timing.seconds,
                out.timing.rows_per_second,
                if out.rejected_points > 0 {
                    format!(
                        "; InfluxDB refused {} point(s): {}",
                        out.rejected_points,
                        report.reasons.join(" | ")
                    )
                } else {
                    String::new()
                }
            );
            let dir = args.file.parent().filter(|d| !d.as_os_str().is_empty());
            let queries = match dir {
                Some(d) if d != job.config.queries.dir => format!(" --queries {}", d.display()),
                _ => String::new(),
            };
            println!(
                "  check it: carflow reconcile{queries} --query {}{}",
                q.measurement,
                args.range
                    .from
                    .as_deref()
                    .map(|f| format!(" --from {f}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(if out.rejected_points > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
