//! `carflow dead-letters list|replay`: look at dead letters and replay the ones that decode now,
//! exactly once (the design is in engine/src/replay.rs).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use carflow_engine::batcher::{DecodeRules, decode_batch_with};
use carflow_engine::catalog::register_lake;
use carflow_engine::config::Config;
use carflow_engine::producer::{dealer_key, producer};
use carflow_engine::replay::{
    Origin, REPLAY_HEADER, RUNNING_FOR, ReplayLedger, ReplayRecord, header_value, parse_header,
    run_id,
};
use carflow_engine::source::Message;
use carflow_engine::storage::Location;
use datafusion::arrow;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{
    DataType, Int32Type, Int64Type, TimeUnit, TimestampMillisecondType,
};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use serde::Serialize;

use crate::cli::{DeadLettersArgs, DeadLettersCommand, Format, Global, ListArgs, ReplayArgs};

/// A dead letter as read from the lake.
#[derive(Debug, Clone, Serialize)]
struct Letter {
    #[serde(flatten)]
    origin: Origin,
    reason: String,
    transform: Option<String>,
    #[serde(skip)]
    payload: Vec<u8>,
    #[serde(skip)]
    kafka_ts: Option<i64>,
    payload_text: String,
    /// replayed | fails-again | not-replayed | not-replayable
    status: String,
    /// The reason it fails for with the rules of its last replay.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason_now: Option<String>,
}

async fn letters(ctx: &SessionContext, filter: Option<&str>) -> anyhow::Result<Vec<Letter>> {
    let sql = format!(
        "SELECT topic, \"partition\", \"offset\", reason, transform, payload, kafka_ts, payload_text \
         FROM dead_letters {} ORDER BY topic, \"partition\", \"offset\"",
        filter.map(|w| format!("WHERE ({w})")).unwrap_or_default()
    );
    let batches = ctx
        .sql(&sql)
        .await
        .with_context(|| format!("--where: {sql}"))?
        .collect()
        .await?;
    let mut out = Vec::new();
    for b in batches {
        out.extend(rows_of(&b)?);
    }
    Ok(out)
}

fn rows_of(b: &RecordBatch) -> anyhow::Result<Vec<Letter>> {
    let text = |i: usize| -> anyhow::Result<Arc<dyn Array>> {
        Ok(arrow::compute::cast(b.column(i), &DataType::Utf8)?)
    };
    let (topic, reason, transform, ptext) = (text(0)?, text(3)?, text(4)?, text(7)?);
    let (topic, reason, transform, ptext) = (
        topic.as_string::<i32>(),
        reason.as_string::<i32>(),
        transform.as_string::<i32>(),
        ptext.as_string::<i32>(),
    );
    let part = arrow::compute::cast(b.column(1), &DataType::Int32)?;
    let part = part.as_primitive::<Int32Type>();
    let off = arrow::compute::cast(b.column(2), &DataType::Int64)?;
    let off = off.as_primitive::<Int64Type>();
    let payload = arrow::compute::cast(b.column(5), &DataType::Binary)?;
    let payload = payload.as_binary::<i32>();
    let ts = arrow::compute::cast(
        b.column(6),
        &DataType::Timestamp(TimeUnit::Millisecond, None),
    )?;
    let ts = ts.as_primitive::<TimestampMillisecondType>();
    Ok((0..b.num_rows())
        .map(|i| Letter {
            origin: Origin {
                topic: topic.value(i).to_string(),
                partition: part.value(i),
                offset: off.value(i),
            },
            reason: reason.value(i).to_string(),
            transform: (!transform.is_null(i)).then(|| transform.value(i).to_string()),
            payload: payload.value(i).to_vec(),
            kafka_ts: (!ts.is_null(i)).then(|| ts.value(i)),
            payload_text: ptext.value(i).to_string(),
            status: String::new(),
            reason_now: None,
        })
        .collect())
}

struct Lake {
    config: Config,
    ctx: SessionContext,
    ledger: ReplayLedger,
}

async fn open(global: &Global, lake: Option<&str>) -> anyhow::Result<Lake> {
    let config = Config::load(global.config.as_deref())?;
    let root = lake.map(str::to_string).unwrap_or(config.lake.root.clone());
    let location = Location::open(&root).with_context(|| format!("opening the lake at {root}"))?;
    let ctx = carflow_engine::catalog::lake_context()?;
    register_lake(&ctx, &location)
        .await
        .with_context(|| format!("reading the lake at {root}"))?;
    Ok(Lake {
        config,
        ctx,
        ledger: ReplayLedger::new(location),
    })
}

pub async fn run(global: &Global, args: DeadLettersArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DeadLettersCommand::List(a) => list(global, a).await,
        DeadLettersCommand::Replay(a) => replay(global, a).await,
    }
}

async fn list(global: &Global, args: ListArgs) -> anyhow::Result<ExitCode> {
    let lake = open(global, args.lake.as_deref()).await?;
    let (replayed, failing) = lake.ledger.state().await?;
    let mut all = letters(&lake.ctx, args.r#where.as_deref()).await?;
    for l in &mut all {
        l.status = if l.transform.is_some() {
            "not-replayable".into()
        } else if replayed.contains(&l.origin) {
            "replayed".into()
        } else if let Some(why) = failing.get(&l.origin) {
            l.reason_now = Some(why.clone());
            "fails-again".into()
        } else {
            "not-replayed".into()
        };
    }
    if args.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    for l in &all {
        *by_status.entry(l.status.as_str()).or_default() += 1;
        let payload: String = l.payload_text.chars().take(60).collect();
        println!(
            "{:<40} {:<14} {}{}\n    {payload}",
            l.origin.to_string(),
            l.status,
            l.reason_now.as_deref().unwrap_or(&l.reason),
            l.transform
                .as_deref()
                .map(|t| format!(" (refused by {t})"))
                .unwrap_or_default()
        );
    }
    println!(
        "{} dead letter(s): {}",
        all.len(),
        by_status
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// End offsets of every partition of `topic`.
fn end_offsets(c: &BaseConsumer, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("metadata of topic {topic}"))?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    anyhow::ensure!(
        !parts.is_empty(),
        "topic {topic} has no partitions (does it exist?)"
    );
    let mut out = BTreeMap::new();
    for p in parts {
        let (_, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        out.insert(p, high);
    }
    Ok(out)
}

fn consumer(brokers: &str) -> anyhow::Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "carflow-replay-check")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()?)
}

/// The origins of `run` found in `topic` from `from` to the current end.
fn produced_by(
    c: &BaseConsumer,
    topic: &str,
    from: &BTreeMap<i32, i64>,
    run: &str,
) -> anyhow::Result<Vec<Origin>> {
    let ends = end_offsets(c, topic)?;
    let mut tpl = TopicPartitionList::new();
    let mut left = 0;
    for (p, end) in &ends {
        let start = from.get(p).copied().unwrap_or(0);
        if start < *end {
            tpl.add_partition_offset(topic, *p, Offset::Offset(start))?;
            left += 1;
        }
    }
    let mut found = Vec::new();
    if left == 0 {
        return Ok(found);
    }
    c.assign(&tpl)?;
    let mut done = std::collections::BTreeSet::new();
    while done.len() < left {
        match c.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                if let Some(h) = m.headers() {
                    for i in 0..h.count() {
                        let h = h.get(i);
                        if h.key == REPLAY_HEADER
                            && let Some((r, o)) = h.value.and_then(parse_header)
                            && r == run
                        {
                            found.push(o);
                        }
                    }
                }
                if m.offset() + 1 >= ends[&m.partition()] {
                    done.insert(m.partition());
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                done.insert(p);
            }
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("reading {topic} to finish replay {run}: no answer in 10 s"),
        }
    }
    Ok(found)
}

/// Finish the runs that stopped between their intent and their done record.
async fn recover(
    lake: &Lake,
    c: &BaseConsumer,
    pending: Vec<ReplayRecord>,
) -> anyhow::Result<Vec<String>> {
    let mut notes = Vec::new();
    for intent in pending {
        let found = tokio::task::block_in_place(|| {
            produced_by(c, &intent.to_topic, &intent.start_offsets, &intent.run)
        })?;
        let wanted: std::collections::BTreeSet<&Origin> = intent.produced.iter().collect();
        let produced: Vec<Origin> = found.into_iter().filter(|o| wanted.contains(o)).collect();
        notes.push(format!(
            "finished replay {} (stopped before its end): {} of {} message(s) had reached {}; the others stay dead letters",
            intent.run,
            produced.len(),
            intent.produced.len(),
            intent.to_topic
        ));
        let done = ReplayRecord { produced, ..intent };
        lake.ledger.write_done(&done).await?;
    }
    Ok(notes)
}

#[derive(Debug, Serialize)]
struct ReplayReport {
    run: Option<String>,
    to_topic: String,
    chosen: usize,
    already_replayed: usize,
    not_replayable: usize,
    replayed: Vec<Origin>,
    still_failing: Vec<(Origin, String)>,
    recovered: Vec<String>,
    dry_run: bool,
    seconds: f64,
    messages_per_second: f64,
}

async fn replay(global: &Global, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let lake = open(global, args.lake.as_deref()).await?;
    let brokers = lake.config.kafka.brokers.clone();
    let to_topic = args
        .to_topic
        .clone()
        .unwrap_or(lake.config.kafka.topic.clone());
    let c = consumer(&brokers)?;
    // 1. Earlier runs that stopped half-way.
    let pending = lake.ledger.pending().await?;
    let now = chrono::Utc::now().timestamp_millis();
    if let Some(r) = pending
        .iter()
        .find(|r| now - r.started_ms < RUNNING_FOR.as_millis() as i64)
    {
        anyhow::bail!(
            "replay {} started {} s ago and has not finished: one replay at a time (run again in a minute to finish it if it died)",
            r.run,
            (now - r.started_ms) / 1000
        );
    }
    let recovered = if args.dry_run {
        Vec::new()
    } else {
        recover(&lake, &c, pending).await?
    };
    // 2. What to replay.
    let (replayed, failing_before) = lake.ledger.state().await?;
    let all = letters(&lake.ctx, args.r#where.as_deref()).await?;
    let chosen = all.len();
    let not_replayable = all.iter().filter(|l| l.transform.is_some()).count();
    let todo: Vec<Letter> = all
        .into_iter()
        .filter(|l| l.transform.is_none() && !replayed.contains(&l.origin))
        .collect();
    let already_replayed = chosen - not_replayable - todo.len();
    // Decode again with the current rules.
    let rules = DecodeRules::from_config(&lake.config);
    let mut good = Vec::new();
    let mut still_failing = Vec::new();
    for l in todo {
        let m = Message {
            topic: Arc::from(l.origin.topic.as_str()),
            partition: l.origin.partition,
            offset: l.origin.offset,
            timestamp_ms: l.kafka_ts,
            payload: Some(l.payload.clone().into()),
        };
        let d = decode_batch_with(std::slice::from_ref(&m), &rules)?;
        match d.dead_letters.first() {
            None if d.rows.num_rows() == 1 => good.push(l),
            Some(dl) => still_failing.push((l.origin, dl.reason.clone())),
            None => still_failing.push((l.origin, "did not decode".into())),
        }
    }
    let mut report = ReplayReport {
        run: None,
        to_topic: to_topic.clone(),
        chosen,
        already_replayed,
        not_replayable,
        replayed: Vec::new(),
        still_failing: still_failing.clone(),
        recovered,
        dry_run: args.dry_run,
        seconds: 0.0,
        messages_per_second: 0.0,
    };
    // Something to record: messages to produce, or new reasons for those that still fail.
    let news = still_failing
        .iter()
        .any(|(o, why)| failing_before.get(o) != Some(why));
    if !args.dry_run && (!good.is_empty() || news) {
        // 3. The intent, with where the target topic ends now.
        let start_offsets = tokio::task::block_in_place(|| end_offsets(&c, &to_topic))?;
        let mut record = ReplayRecord {
            run: run_id(),
            to_topic: to_topic.clone(),
            started_ms: chrono::Utc::now().timestamp_millis(),
            start_offsets,
            produced: good.iter().map(|l| l.origin.clone()).collect(),
            still_failing: still_failing.clone(),
        };
        lake.ledger.write_intent(&record).await?;
        // 4. Produce, every delivery awaited.
        let p = producer(&brokers, &lake.config.kafka.properties)?;
        let bar = ProgressBar::new(good.len() as u64);
        if args.format == Format::Json {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        if let Ok(style) = ProgressStyle::with_template(
            "replay [{bar:30}] {human_pos}/{human_len} messages  {per_sec}  ETA {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        let mut pending = FuturesUnordered::new();
        for l in &good {
            let hv = header_value(&record.run, &l.origin);
            let headers = OwnedHeaders::new().insert(Header {
                key: REPLAY_HEADER,
                value: Some(hv.as_bytes()),
            });
            let key = dealer_key(&l.payload).unwrap_or("replay").to_string();
            let rec = FutureRecord::to(&to_topic)
                .key(&key)
                .payload(&l.payload)
                .headers(headers);
            let delivery = p
                .send_result(rec)
                .map_err(|(e, _)| anyhow::anyhow!("producing to {to_topic}: {e}"))?;
            pending.push(delivery);
            while pending.len() > 1000 {
                await_one(&mut pending, &bar).await?;
            }
        }
        while !pending.is_empty() {
            await_one(&mut pending, &bar).await?;
        }
        bar.finish_and_clear();
        // 5. Done.
        lake.ledger.write_done(&record).await?;
        report.replayed = std::mem::take(&mut record.produced);
        report.run = Some(record.run);
    } else if args.dry_run {
        report.replayed = good.iter().map(|l| l.origin.clone()).collect();
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.messages_per_second = if report.seconds > 0.0 {
        (report.replayed.len() as f64 / report.seconds).round()
    } else {
        0.0
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => {
            for n in &report.recovered {
                println!("{n}");
            }
            for (o, why) in report.still_failing.iter().take(20) {
                println!("still fails  {o}  {why}");
            }
            println!(
                "{} {} dead letter(s) to {} in {:.1}s ({} messages/s); {} still fail (they stay dead letters, with the reason above); {} chosen, {} replayed before, {} refused by a transform (in the lake already, not replayable){}",
                if report.dry_run {
                    "would replay"
                } else {
                    "replayed"
                },
                report.replayed.len(),
                report.to_topic,
                report.seconds,
                report.messages_per_second,
                report.still_failing.len(),
                report.chosen,
                report.already_replayed,
                report.not_replayable,
                report
                    .run
                    .as_deref()
                    .map(|r| format!("; run {r} recorded in _carflow/replay/"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn await_one(
    pending: &mut FuturesUnordered<rdkafka::producer::DeliveryFuture>,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    if let Some(r) = pending.next().await {
        match r {
            Ok(Ok(_)) => bar.inc(1),
            Ok(Err((e, _))) => anyhow::bail!("Kafka did not take a replayed message: {e}"),
            Err(_) => anyhow::bail!("the producer stopped before a delivery"),
        }
    }
    Ok(())
}
