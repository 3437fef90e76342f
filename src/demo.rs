//! `carflow demo`: the whole job on one machine with nothing installed.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use carflow_engine::config::{Config, SourceKind};
use carflow_engine::generator::{Clock, Generator, GeneratorConfig};
use carflow_engine::metrics::{Health, Metrics};
use carflow_engine::pipeline::Pipeline;
use carflow_engine::source::generator::GeneratorSource;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::cli::{DemoArgs, Global};

fn demo_config(global: &Global, args: &DemoArgs) -> anyhow::Result<Config> {
    let mut c = Config::load(global.config.as_deref())?;
    c.source = SourceKind::Generator;
    c.lake.root = args.lake.clone();
    c.influx.url.clear();
    c.influx.file = args.metrics_file.clone();
    if let Some(q) = &args.queries {
        c.queries.dir = q.clone();
    }
    if let Some(r) = args.rate {
        c.generator.rate = r;
    }
    if let Some(n) = args.count {
        c.generator.count = n;
    }
    if let Some(s) = args.seed {
        c.generator.seed = s;
    }
    c.validate()?;
    Ok(c)
}

/// Remove what a previous demo wrote, so the counts this run prints are the lake's counts.
fn start_fresh(c: &Config) -> anyhow::Result<()> {
    let lake = std::path::Path::new(c.lake.root.strip_prefix("file://").unwrap_or(&c.lake.root));
    if lake.exists() {
        let ours = lake.join("_carflow").exists() || std::fs::read_dir(lake)?.next().is_none();
        anyhow::ensure!(
            ours,
            "{} exists and is not a carflow lake; choose another --lake or remove it",
            lake.display()
        );
        std::fs::remove_dir_all(lake)
            .with_context(|| format!("removing the previous demo lake {}", lake.display()))?;
    }
    if c.influx.file.exists() {
        std::fs::remove_file(&c.influx.file)?;
    }
    Ok(())
}

pub async fn run(global: &Global, args: DemoArgs) -> anyhow::Result<ExitCode> {
    let c = demo_config(global, &args)?;
    start_fresh(&c)?;
    let start_ms = c.generator.start.ms();
    let generator = Generator::new(GeneratorConfig {
        seed: c.generator.seed,
        clock: Clock::Simulated {
            start_ms,
            mean_per_hour: c.generator.mean_per_hour,
        },
    });
    let source = GeneratorSource::new(generator, c.generator.rate, c.generator.count);
    let metrics = Arc::new(Metrics::new());
    let mut pipeline = Pipeline::from_config(
        source,
        &c,
        "demo",
        metrics.clone(),
        Arc::new(Health::default()),
    )
    .await?;
    let names: Vec<String> = pipeline
        .transforms()
        .iter()
        .map(|t| t.target_name())
        .collect();
    eprintln!(
        "carflow demo: generator (seed {}, {}) → {} transforms ({}) → lake {} + {}",
        c.generator.seed,
        if c.generator.rate > 0.0 {
            format!("{}/s", c.generator.rate)
        } else {
            "as fast as possible".into()
        },
        names.len(),
        names.join(", "),
        c.lake.root,
        c.influx.file.display()
    );
    let shutdown = CancellationToken::new();
    if let Some(d) = args.duration {
        let s = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            s.cancel();
        });
    }
    let s = shutdown.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            s.cancel();
        }
    });
    let bar = progress(args.duration);
    let ticker = {
        let (bar, metrics, stop) = (bar.clone(), metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut last = (Instant::now(), 0u64);
            let mut rate = 0.0;
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let n = metrics.records_in.get();
                if last.0.elapsed() >= Duration::from_secs(1) {
                    rate = (n - last.1) as f64 / last.0.elapsed().as_secs_f64();
                    last = (Instant::now(), n);
                }
                bar.set_position(started.elapsed().as_millis() as u64);
                bar.set_message(format!(
                    "{n} transactions  {rate:.0} rows/s  dead letters {}",
                    metrics.dead_letters.get()
                ));
                if stop.is_cancelled() && bar.is_finished() {
                    break;
                }
            }
        })
    };
    let started = Instant::now();
    let result = pipeline.run(&shutdown).await;
    bar.finish_and_clear();
    ticker.abort();
    let summary = result?;
    let secs = started.elapsed().as_secs_f64();
    let generated = pipeline.source().emitted();
    println!(
        "generated {generated} transactions in {secs:.1}s ({:.0}/s)",
        summary.records_in as f64 / secs.max(1e-9)
    );
    for (dataset, rows) in &summary.lake_rows {
        println!("  lake.{dataset:<14} {rows} rows");
    }
    println!(
        "  influx points      {} (last write of a point wins) → {}",
        summary.points,
        c.influx.file.display()
    );
    println!(
        "  dead letters       {} ({} undecodable, {} refused by a transform)",
        summary.dead_letters,
        summary.undecodable,
        summary.dead_letters - summary.undecodable
    );
    println!("  late rows          {}", summary.late_rows);
    // The numbers must add up: every generated transaction is a row or a dead letter, and every
    // lake dataset that ran from the start took every row (or dead-lettered it).
    let mut problems = summary.discrepancies(pipeline.datasets_from_start());
    if generated != summary.records_in {
        problems.push(format!(
            "generated {generated} ≠ processed {}",
            summary.records_in
        ));
    }
    let me = invocation();
    println!("\nNext:");
    println!("  {me} sql -c \"SELECT count(*) FROM cars\"");
    println!(
        "  {me} sql -c \"SELECT brand, count(*) AS sales, avg(price) AS avg_price FROM cars GROUP BY brand ORDER BY sales DESC\""
    );
    println!("  {me} sql -c \"SELECT reason, count(*) FROM dead_letters GROUP BY reason\"");
    println!("  head {}", c.influx.file.display());
    println!("  {me} sql          (interactive)");
    if !problems.is_empty() {
        eprintln!("\nerror: the numbers do not add up:");
        for p in &problems {
            eprintln!("  {p}");
        }
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// How to run this binary again from here: `cargo run --` under cargo, `carflow` when it is on
/// the PATH, else its path.
fn invocation() -> String {
    let exe = std::env::current_exe().ok();
    if std::env::var_os("CARGO").is_some() {
        let release = exe
            .as_ref()
            .is_some_and(|p| p.components().any(|c| c.as_os_str() == "release"));
        return if release {
            "cargo run --release --".into()
        } else {
            "cargo run --".into()
        };
    }
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| {
            let candidate = d.join("carflow");
            exe.as_ref().is_some_and(|e| {
                std::fs::canonicalize(&candidate).ok() == std::fs::canonicalize(e).ok()
            })
        })
    });
    if on_path {
        return "carflow".into();
    }
    match exe {
        Some(e) => {
            let rel = std::env::current_dir().ok().and_then(|cwd| {
                e.strip_prefix(&cwd)
                    .ok()
                    .map(|r| format!("./{}", r.display()))
            });
            rel.unwrap_or_else(|| e.display().to_string())
        }
        None => "carflow".into(),
    }
}

fn progress(duration: Option<Duration>) -> ProgressBar {
    let (bar, template) = match duration {
        Some(d) => (
            ProgressBar::new(d.as_millis() as u64),
            "{spinner} [{bar:24}] {elapsed:>4} {msg}",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{spinner} {elapsed:>4} {msg}  (Ctrl-C stops)",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}
