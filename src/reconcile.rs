//! `carflow reconcile`: recompute every windowed influx.* query from the lake and compare with
//! what InfluxDB holds; `--repair` rewrites what differs.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use carflow_engine::reconcile::{
    Boundary, Difference, HistoryQuery, InfluxReader, Repaired, diff, repair_body, show_time,
    tag_keys,
};
use carflow_engine::sink::influx::{InfluxSink, InfluxTarget};
use carflow_engine::transform::{OpenGate, Target, TransformSet};
use carflow_engine::windows::Windowing;
use serde::Serialize;

use crate::cli::{Format, Global, ReconcileArgs};
use crate::history::{Job, Timing, show_boundary, show_range};

#[derive(Debug, Serialize)]
struct Measurement {
    measurement: String,
    file: String,
    from: Option<i64>,
    to: Option<i64>,
    boundary: Boundary,
    rows: usize,
    lake_points: usize,
    influx_points: usize,
    differences: Vec<Difference>,
    repaired: Option<Repaired>,
    /// Differences left after the repair (compared again).
    remaining: Option<usize>,
}

#[derive(Debug, Serialize)]
struct Report {
    measurements: Vec<Measurement>,
    skipped: Vec<String>,
    differences: usize,
    remaining: usize,
    rows: usize,
    timing: Timing,
}

pub async fn run(global: &Global, args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    let job = Job::open(global, &args.range).await?;
    let influx = &job.config.influx;
    anyhow::ensure!(
        !influx.url.is_empty(),
        "reconcile reads InfluxDB back with InfluxQL: set influx.url (it is a line-protocol file, {}, here)",
        influx.file.display()
    );
    let reader = InfluxReader::new(
        &influx.url,
        &influx.bucket,
        &influx.token.0,
        influx.timeout.0,
    )?;
    let sink = InfluxSink::new(InfluxTarget::from_config(influx))?;
    let dir = args
        .queries
        .clone()
        .unwrap_or(job.config.queries.dir.clone());
    let mut set = TransformSet::default();
    let report = set
        .reload(&job.planner, &dir, &mut OpenGate)
        .await
        .with_context(|| format!("reading the queries directory {}", dir.display()))?;
    for e in &report.errors {
        eprintln!("refused (not reconciled): {e}");
    }
    let started = Instant::now();
    let mut out = Report {
        measurements: Vec::new(),
        skipped: Vec::new(),
        differences: 0,
        remaining: 0,
        rows: 0,
        timing: Timing::of(started, 0),
    };
    for t in set.iter() {
        let Target::Influx {
            measurement,
            windowing,
            ..
        } = &t.target
        else {
            continue;
        };
        if !args.only.is_empty() && !args.only.contains(measurement) {
            continue;
        }
        if *windowing == Windowing::PerRow {
            out.skipped.push(format!(
                "{} ({}): per-row, not windowed (use carflow backfill to rewrite it)",
                t.target_name(),
                t.file.display()
            ));
            continue;
        }
        let q = HistoryQuery::new(t, &job.planner).await?;
        let (range, boundary) = job.plan(&q).await?;
        let bar = job.bar(&t.target_name());
        let (expected, rows) = job.expected(&q, range, &bar).await?;
        bar.finish_and_clear();
        let actual = reader.points(measurement, range).await?;
        let differences = diff(&expected, &actual, &q.approximate);
        let mut m = Measurement {
            measurement: measurement.clone(),
            file: t.file.display().to_string(),
            from: range.from,
            to: range.to,
            boundary,
            rows,
            lake_points: expected.len(),
            influx_points: actual.len(),
            differences,
            repaired: None,
            remaining: None,
        };
        if args.repair && !m.differences.is_empty() {
            let body = repair_body(&expected, &m.differences);
            let written = sink.write(&body).await?;
            let mut done = Repaired {
                written: body.lines().count() - written.rejected_points,
                deleted: 0,
            };
            let tags: Vec<String> = match &t.target {
                Target::Influx { mapping, .. } => mapping
                    .tag_columns(&t.schema)
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
                Target::Lake { .. } => Vec::new(),
            };
            let all_tags = tag_keys(&m.differences, &tags);
            for d in &m.differences {
                if let Difference::Extra { tags, time, .. } = d {
                    reader.delete(measurement, tags, *time, &all_tags).await?;
                    done.deleted += 1;
                }
            }
            m.repaired = Some(done);
            let again = reader.points(measurement, range).await?;
            m.remaining = Some(diff(&expected, &again, &q.approximate).len());
        }
        out.rows += rows;
        out.differences += m.differences.len();
        out.remaining += m.remaining.unwrap_or(m.differences.len());
        if job.format == Format::Text {
            print_measurement(&m, &job, &q, args.show);
        }
        out.measurements.push(m);
    }
    out.timing = Timing::of(started, out.rows);
    match job.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&out)?),
        Format::Text => print_summary(&out, args.repair),
    }
    Ok(if out.remaining == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn show_tags(tags: &[(String, String)]) -> String {
    if tags.is_empty() {
        return "(no tags)".into();
    }
    tags.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn show_fields(f: &std::collections::BTreeMap<String, f64>) -> String {
    f.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_measurement(m: &Measurement, job: &Job, q: &HistoryQuery, show: usize) {
    println!(
        "influx.{} ({}): {}; {}",
        m.measurement,
        m.file,
        show_range(
            q,
            carflow_engine::history::Range {
                from: m.from,
                to: m.to
            }
        ),
        show_boundary(&m.boundary, job.include_open)
    );
    println!(
        "  {} rows → {} points from the lake, {} in InfluxDB: {} difference(s)",
        m.rows,
        m.lake_points,
        m.influx_points,
        m.differences.len()
    );
    for d in m.differences.iter().take(show) {
        match d {
            Difference::Missing {
                tags,
                time,
                expected,
            } => println!(
                "  missing  {} {}  lake: {}",
                show_tags(tags),
                show_time(*time),
                show_fields(expected)
            ),
            Difference::Extra { tags, time, actual } => println!(
                "  extra    {} {}  influx: {}",
                show_tags(tags),
                show_time(*time),
                show_fields(actual)
            ),
            Difference::Wrong { tags, time, fields } => println!(
                "  wrong    {} {}  {}",
                show_tags(tags),
                show_time(*time),
                fields
                    .iter()
                    .map(|(k, (e, a))| format!("{k}: lake {e}, influx {a}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }
    }
    if m.differences.len() > show {
        println!("  … and {} more (--show N)", m.differences.len() - show);
    }
    if let (Some(r), Some(left)) = (&m.repaired, m.remaining) {
        println!(
            "  repaired: {} point(s) written, {} deleted; compared again: {} difference(s)",
            r.written, r.deleted, left
        );
    }
}

fn print_summary(r: &Report, repair: bool) {
    for s in &r.skipped {
        println!("skipped {s}");
    }
    let (mut missing, mut extra, mut wrong) = (0, 0, 0);
    for m in &r.measurements {
        for d in &m.differences {
            match d {
                Difference::Missing { .. } => missing += 1,
                Difference::Extra { .. } => extra += 1,
                Difference::Wrong { .. } => wrong += 1,
            }
        }
    }
    let points: usize = r.measurements.iter().map(|m| m.lake_points).sum();
    println!(
        "reconciled {} measurement(s), {} points from {} lake rows in {:.1}s ({} rows/s): {} difference(s) ({missing} missing, {extra} extra, {wrong} wrong){}",
        r.measurements.len(),
        points,
        r.rows,
        r.timing.seconds,
        r.timing.rows_per_second,
        r.differences,
        if repair && r.differences > 0 {
            format!("; after the repair: {}", r.remaining)
        } else if r.differences > 0 {
            "; carflow reconcile --repair rewrites them".into()
        } else {
            String::new()
        }
    );
}
