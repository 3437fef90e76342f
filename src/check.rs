//! `carflow check`: validate the configuration and every SQL file.

use std::process::ExitCode;

use carflow_engine::config::{Config, SourceKind};
use carflow_engine::reference::ReferenceTables;
use carflow_engine::transform::{OpenGate, Planner, Target, TransformSet};

use crate::cli::{CheckArgs, Global};

pub async fn run(global: &Global, args: CheckArgs) -> anyhow::Result<ExitCode> {
    let config = match Config::load(global.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    if args.print_config {
        println!("{}", config.to_redacted_toml());
    }
    let source = match config.source {
        SourceKind::Kafka => format!(
            "kafka {} topic {} group {}",
            config.kafka.brokers, config.kafka.topic, config.kafka.group_id
        ),
        SourceKind::Generator => "built-in generator".to_string(),
    };
    let influx = if config.influx.url.is_empty() {
        format!("file {}", config.influx.file.display())
    } else {
        format!("{} bucket {}", config.influx.url, config.influx.bucket)
    };
    println!(
        "config ok: {source} → lake {} + influx {influx}",
        config.lake.root
    );
    let dir = args.queries.unwrap_or(config.queries.dir.clone());
    let planner = Planner::new()?;
    let mut reference = ReferenceTables::new(&config.reference.dir);
    let loaded = reference.refresh(&planner.batch_ctx).await;
    for (name, rows) in &loaded.loaded {
        println!(
            "  ok  reference table {name} ({rows} rows) from {}",
            config.reference.dir.display()
        );
    }
    for (file, why) in &loaded.refused {
        eprintln!("  error  reference {}: {why}", file.display());
    }
    let mut set = TransformSet::default();
    let report = match set.reload(&planner, &dir, &mut OpenGate).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "queries directory {}: {e} (set queries.dir or --queries)",
                dir.display()
            );
            return Ok(ExitCode::from(2));
        }
    };
    for t in set.iter() {
        let detail = match &t.target {
            Target::Lake { partition_by, .. } if !partition_by.is_empty() => {
                format!(" PARTITION ({})", partition_by.join(", "))
            }
            Target::Influx {
                windowing: carflow_engine::windows::Windowing::Windowed(w),
                ..
            } => {
                format!(
                    " (windows of {} on {})",
                    carflow_engine::config::HumanDuration(std::time::Duration::from_millis(
                        w.width_ms as u64
                    )),
                    w.column
                )
            }
            _ => String::new(),
        };
        println!("  ok  {} → {}{detail}", t.file.display(), t.target_name());
    }
    for e in &report.errors {
        eprintln!("  error  {e}");
    }
    if report.errors.is_empty() && loaded.refused.is_empty() {
        println!("{} transform(s) ok", set.len());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "{} file(s) refused",
            report.errors.len() + loaded.refused.len()
        );
        Ok(ExitCode::from(1))
    }
}

/// The planner the configured queries run on, with the reference tables of `reference.dir`
/// (a refused reference file is an error here).
pub async fn planner(config: &Config) -> anyhow::Result<Planner> {
    let planner = Planner::new()?;
    let mut reference = ReferenceTables::new(&config.reference.dir);
    let r = reference.refresh(&planner.batch_ctx).await;
    if let Some((file, why)) = r.refused.first() {
        anyhow::bail!("reference table {}: {why}", file.display());
    }
    Ok(planner)
}
