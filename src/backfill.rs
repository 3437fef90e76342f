//! `carflow backfill FILE`: write an influx.* query's points, or a lake.* query's dataset, over
//! the lake's history, exactly as the stream would.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use carflow_engine::backfill::{self as lake_backfill, BackfillError, LakeOutcome, LakePlan};
use carflow_engine::reconcile::{Boundary, HistoryQuery};
use carflow_engine::sink::influx::{InfluxSink, InfluxTarget};
use carflow_engine::transform::Target;
use carflow_engine::transform::Transform;
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
    if matches!(t.target, Target::Lake { .. }) {
        return lake(&job, &args, &t).await;
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

#[derive(Debug, Serialize)]
struct LakeReport {
    file: String,
    target: String,
    dry_run: bool,
    /// Offsets to write (or written) per partition, `[from, to)`.
    offsets: std::collections::BTreeMap<String, Vec<(i64, i64)>>,
    /// Partitions whose offsets below this predate the ledger's coverage records.
    unknown_below: std::collections::BTreeMap<String, i64>,
    previous_backfills: u64,
    #[serde(flatten)]
    outcome: LakeOutcome,
    timing: Timing,
}

/// A lake.* query: its dataset's missing offsets, from the raw dataset, as one commit.
async fn lake(job: &Job, args: &BackfillArgs, t: &Transform) -> anyhow::Result<ExitCode> {
    if args.range.from.is_some() || args.range.to.is_some() || args.range.include_open {
        eprintln!(
            "{}: --from, --to and --include-open apply to influx.* queries; a lake.* dataset is \
             backfilled whole (every offset it does not hold yet), so that each offset lands in it \
             exactly once. Drop the options, or filter in the query's WHERE.",
            args.file.display()
        );
        return Ok(ExitCode::from(2));
    }
    let refused = |e: BackfillError| -> anyhow::Result<ExitCode> {
        match e {
            BackfillError::Refused(why) => {
                eprintln!("{}: {why}", args.file.display());
                Ok(ExitCode::from(2))
            }
            e => Err(anyhow::Error::new(e).context(format!("backfill of {}", t.target_name()))),
        }
    };
    let plan: LakePlan =
        match lake_backfill::plan(&job.location, &job.config.lake.raw_dataset, t).await {
            Ok(p) => p,
            Err(e) => return refused(e),
        };
    let started = Instant::now();
    let outcome = if args.dry_run || plan.offsets() == 0 {
        LakeOutcome::default()
    } else {
        let bar = job.bar(&t.target_name());
        bar.set_length(plan.offsets());
        let writer = format!(
            "backfill-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_millis()
        );
        let r = lake_backfill::run(&job.history, &job.planner, t, &plan, &writer, |n| {
            bar.inc(n)
        })
        .await;
        bar.finish_and_clear();
        match r {
            Ok(o) => o,
            Err(e) => return refused(e),
        }
    };
    let key = |p: &lake_backfill::PartitionGaps| format!("{}/{}", p.tp.topic, p.tp.partition);
    let out = LakeReport {
        file: t.file.display().to_string(),
        target: t.target_name(),
        dry_run: args.dry_run,
        offsets: plan
            .parts
            .iter()
            .filter(|p| !p.gaps.is_empty())
            .map(|p| (key(p), p.gaps.clone()))
            .collect(),
        unknown_below: plan
            .parts
            .iter()
            .filter_map(|p| p.unknown_below.map(|u| (key(p), u)))
            .collect(),
        previous_backfills: plan.previous,
        timing: Timing::of(started, outcome.rows_in as usize),
        outcome,
    };
    match job.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&out)?),
        Format::Text => print_lake(&out, plan.offsets()),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_lake(out: &LakeReport, offsets: u64) {
    let verb = if out.dry_run {
        "would backfill"
    } else {
        "backfilled"
    };
    if offsets == 0 {
        println!(
            "{} ({}): nothing to do — the dataset holds every offset the raw dataset has{}",
            out.target,
            out.file,
            if out.previous_backfills > 0 {
                format!(" ({} earlier backfill(s))", out.previous_backfills)
            } else {
                String::new()
            }
        );
    } else {
        println!("{verb} {} ({})", out.target, out.file);
        for (p, gaps) in &out.offsets {
            let shown: Vec<String> = gaps.iter().map(|(a, b)| format!("{a}..{b}")).collect();
            println!("  partition {p}: offsets {}", shown.join(", "));
        }
        if !out.dry_run {
            println!(
                "  {} raw rows → {} rows in {} file(s) in {:.1}s ({} rows/s); backfill record {}",
                out.outcome.rows_in,
                out.outcome.rows_out,
                out.outcome.files,
                out.timing.seconds,
                out.timing.rows_per_second,
                out.outcome
                    .record
                    .map_or("none (no rows)".to_string(), |s| s.to_string())
            );
        }
    }
    if out.outcome.refused > 0 {
        println!(
            "  {} row(s) the query cannot process were left out (the stream dead-letters them): {}",
            out.outcome.refused,
            out.outcome.refused_samples.join(" | ")
        );
    }
    for (p, below) in &out.unknown_below {
        println!(
            "  partition {p}: offsets below {below} were written by a carflow that did not record \
             which datasets hold them; left alone"
        );
    }
}
