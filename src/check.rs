//! `carflow check`: validate the configuration and every SQL file.

use std::process::ExitCode;

use carflow_engine::config::{Config, SourceKind};
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
    if report.errors.is_empty() {
        println!("{} transform(s) ok", set.len());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{} file(s) refused", report.errors.len());
        Ok(ExitCode::from(1))
    }
}
