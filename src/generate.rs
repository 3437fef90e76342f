//! `carflow generate`: produce generated transactions to Kafka.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use carflow_engine::config::Config;
use carflow_engine::generator::{Clock, Generator, GeneratorConfig};
use carflow_engine::producer::{flush, producer};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;
use tokio_util::sync::CancellationToken;

use crate::cli::{GenerateArgs, Global};

/// Deliveries awaited at once; beyond it, generation waits (bounded memory).
const IN_FLIGHT: usize = 20_000;

pub async fn run(global: &Global, args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let config = match Config::load(global.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    anyhow::ensure!(
        args.count.is_some() || args.duration.is_some(),
        "give --count N or --duration D (e.g. --count 100000)"
    );
    let brokers = args.brokers.clone().unwrap_or(config.kafka.brokers.clone());
    let topic = args.topic.clone().unwrap_or(config.kafka.topic.clone());
    let start_ms = args.start.unwrap_or(config.generator.start).ms();
    let mean_per_hour = args.mean_per_hour.unwrap_or(config.generator.mean_per_hour);
    let seed = args.seed.unwrap_or(config.generator.seed);
    let mut generator = if args.live {
        Generator::new(GeneratorConfig {
            seed,
            clock: Clock::Wall,
        })
        .with_jitter(true)
    } else {
        Generator::new(GeneratorConfig {
            seed,
            clock: Clock::Simulated {
                start_ms,
                mean_per_hour,
            },
        })
    };
    let producer = producer(&brokers, &Default::default())?;
    let shutdown = CancellationToken::new();
    crate::run::spawn_signal_handler(shutdown.clone());
    let bar = match args.count {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{bar:30}] {pos}/{len} {per_sec} {msg} ({eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    let started = Instant::now();
    let deadline = args.duration.map(|d| started + d);
    let rate = args.rate.unwrap_or(0.0);
    let mut pending = FuturesUnordered::new();
    let mut sent = 0u64;
    let mut failed = 0u64;
    let mut payload = Vec::with_capacity(512);
    while args.count.is_none_or(|n| sent < n)
        && deadline.is_none_or(|d| Instant::now() < d)
        && !shutdown.is_cancelled()
    {
        if rate > 0.0 {
            let due = started + Duration::from_secs_f64(sent as f64 / rate);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let t = generator.next_transaction();
        payload.clear();
        t.write_json(&mut payload);
        let mut record = FutureRecord::to(&topic).key(&t.dealer_id).payload(&payload);
        let delivery = loop {
            match producer.send_result(record) {
                Ok(d) => break d,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(e.into()),
            }
        };
        pending.push(delivery);
        sent += 1;
        while pending.len() >= IN_FLIGHT {
            if let Some(r) = pending.next().await {
                failed += delivery_failed(r);
            }
            bar.inc(1);
        }
    }
    while let Some(r) = pending.next().await {
        failed += delivery_failed(r);
        bar.inc(1);
    }
    flush(&producer, Duration::from_secs(30))?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "produced {} transactions to {topic} on {brokers} in {secs:.1}s ({:.0}/s); {failed} failed",
        sent - failed,
        (sent - failed) as f64 / secs
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn delivery_failed(
    r: Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> u64 {
    match r {
        Ok(Ok(_)) => 0,
        Ok(Err((e, _))) => {
            tracing::error!(error = %e, "delivery failed");
            1
        }
        Err(_) => {
            tracing::error!("delivery canceled (producer closed)");
            1
        }
    }
}
