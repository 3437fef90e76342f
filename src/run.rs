//! `carflow run`: the long-running engine.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use carflow_engine::config::{Config, SourceKind};
use carflow_engine::generator::{Clock, Generator, GeneratorConfig};
use carflow_engine::metrics::{Health, Metrics, serve};
use carflow_engine::pipeline::{Pipeline, RunSummary};
use carflow_engine::source::Source;
use carflow_engine::source::generator::GeneratorSource;
use carflow_engine::source::kafka::{KafkaSource, check_topic};
use tokio_util::sync::CancellationToken;

use crate::cli::{Global, RunArgs};

pub async fn run(global: &Global, args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = match Config::load(global.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    let engine_id = args.engine_id.clone().unwrap_or_else(default_engine_id);
    tracing::info!(engine = %engine_id, config = ?config, "starting");
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    if !config.http.listen.is_empty() {
        let addr = config.http.listen.parse().context("http.listen")?;
        let bound = serve(addr, metrics.clone(), health.clone(), shutdown.clone())
            .await
            .with_context(|| format!("http.listen {addr}: cannot listen (in use? set http.listen or CARFLOW_HTTP_LISTEN)"))?;
        tracing::info!(%bound, "serving /metrics and /health");
    }
    let summary = match config.source {
        SourceKind::Kafka => {
            let (brokers, topic) = (config.kafka.brokers.clone(), config.kafka.topic.clone());
            let partitions = tokio::task::spawn_blocking(move || {
                check_topic(&brokers, &topic, Duration::from_secs(10))
            })
            .await?
            .map_err(anyhow::Error::msg)?;
            tracing::info!(topic = %config.kafka.topic, partitions, group = %config.kafka.group_id, "consuming");
            let source = KafkaSource::with_error_counter(
                &config.kafka,
                config.batch.max_bytes,
                metrics.error_counter("source"),
            )?;
            drive(source, &config, &engine_id, metrics, health, &shutdown).await?
        }
        SourceKind::Generator => {
            let start_ms = config.generator.start.ms();
            let generator = Generator::new(GeneratorConfig {
                seed: config.generator.seed,
                clock: Clock::Simulated {
                    start_ms,
                    mean_per_hour: config.generator.mean_per_hour,
                },
            });
            let source =
                GeneratorSource::new(generator, config.generator.rate, config.generator.count);
            drive(source, &config, &engine_id, metrics, health, &shutdown).await?
        }
    };
    tracing::info!(
        records = summary.records_in,
        batches = summary.batches,
        dead_letters = summary.dead_letters,
        "stopped"
    );
    Ok(ExitCode::SUCCESS)
}

async fn drive<S: Source>(
    source: S,
    config: &Config,
    engine_id: &str,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: &CancellationToken,
) -> anyhow::Result<RunSummary> {
    let mut pipeline = Pipeline::from_config(source, config, engine_id, metrics, health).await?;
    Ok(pipeline.run(shutdown).await?)
}

fn default_engine_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "carflow".into());
    format!("{host}-{}", std::process::id())
}

/// Ctrl-C or SIGTERM: finish the batch in progress, commit, stop.
pub fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        tracing::info!("shutdown requested: finishing the batch in progress");
        shutdown.cancel();
    });
}
