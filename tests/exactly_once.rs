#![cfg(feature = "services")]
//! Exactly once in the lake, against the real Kafka and HDFS: a zombie engine, messages no
//! transform can take, out-of-range event times, query files renamed or reshaped while running, a
//! recreated topic, and what readers see of a commit whose writer died before finishing it.

mod common;

use std::time::Duration;

use carflow_engine::producer::producer;
use common::engine::{EngineProcess, carflow_bin};
use common::services::*;
use common::setup::*;
use common::verify::*;
use object_store::ObjectStoreExt;

/// `count(*)` equals `count(DISTINCT (partition, offset))` in every dataset that carries origin.
async fn assert_no_duplicates(ctx: &datafusion::prelude::SessionContext) {
    for (table, p, o) in [
        ("cars", "_partition", "_offset"),
        ("dead_letters", "\"partition\"", "\"offset\""),
    ] {
        let all = scalar(ctx, &format!("SELECT count(*) FROM {table}")).await;
        let distinct = scalar(
            ctx,
            &format!("SELECT count(DISTINCT ({p}, {o})) FROM {table}"),
        )
        .await;
        assert_eq!(
            all, distinct,
            "{table}: {all} rows for {distinct} distinct offsets"
        );
    }
}

/// Item 1 of the lake issue: an engine frozen (SIGSTOP) longer than its session timeout loses its
/// partitions; the other engine commits many ledger entries for them; the frozen one wakes up with
/// a batch in flight. Three times. No row may land twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_engine_paused_past_its_session_timeout_writes_nothing_twice() {
    let s = setup("zombie").await;
    let bad = bad_records();
    // A backlog keeps both engines in the middle of a batch nearly all the time, so a pause
    // freezes an engine between loading a partition's ledger and publishing its next entry.
    let (prefill, live) = (120_000, 20_000);
    produce(&s.kafka, &s.topic.name, 31, prefill, &bad).await;
    let mut env = s.env("carflow-zombie");
    set_env(&mut env, "CARFLOW_BATCH_MAX_ROWS", "2000".into());
    let mut a = EngineProcess::start(&env, s.logs.path(), "a");
    let mut b = EngineProcess::start(&env, s.logs.path(), "b");
    wait_for(
        "both engines to own partitions",
        Duration::from_secs(120),
        || {
            let (a, b) = (&a, &b);
            async move { !a.owned().await.is_empty() && !b.owned().await.is_empty() }
        },
    )
    .await;
    let (kafka, topic) = (s.kafka.clone(), s.topic.name.clone());
    let traffic = tokio::spawn(async move {
        produce_at_rate(&kafka, &topic, 32, live, 500.0).await;
    });
    let mut rng = Lcg(7);
    for _ in 0..3 {
        tokio::time::sleep(rng.millis(1_000, 4_000)).await;
        a.pause();
        tokio::time::sleep(Duration::from_secs(25)).await;
        a.resume();
    }
    traffic.await.unwrap();
    s.wait_done(&mut [&mut a, &mut b], Duration::from_secs(600))
        .await;
    a.stop();
    b.stop();
    let ctx = lake_context(&s.lake.url).await;
    assert_no_duplicates(&ctx).await;
    assert_lake_exact(&ctx, (prefill + live) as i64).await;
    assert_eq!(
        scalar(&ctx, "SELECT count(*) FROM dead_letters").await,
        bad.len() as i64
    );
}

/// Records whose `sold_at` is out of the accepted range, or written as an epoch number in
/// another unit, and a query that fails on some rows (integer division by zero).
fn poison_records(n: usize) -> Vec<(String, Vec<u8>)> {
    let mut g = generator(41);
    let mut set = |sold_at: &str| {
        let json = g.next_transaction().to_json();
        (
            "poison".to_string(),
            with_field(&json, "sold_at", sold_at).into_bytes(),
        )
    };
    let mut out = vec![
        set("\"2300-01-01T00:00:00Z\""),
        set("\"2262-04-12T00:00:00Z\""),
        set("\"1969-07-20T20:17:00Z\""),
        set("\"1677-09-21T00:12:44Z\""),
        set("1767225600"),
        set("1767225600000000"),
        set("1767225600000000000"),
    ];
    out.truncate(n);
    out
}

/// Item 2 and 3 of the lake issue, on a topic with `partitions` partitions.
async fn poison_run(partitions: i32) {
    let s = setup_with("poison", partitions).await;
    let good = 10_000;
    let poison = poison_records(7);
    let p = producer(&s.kafka.brokers, &Default::default()).unwrap();
    let mut g = generator(40);
    let mut records = Vec::new();
    let every = good / poison.len();
    for i in 0..good {
        let t = g.next_transaction();
        records.push((t.dealer_id.clone(), t.to_json().into_bytes()));
        if i % every == every / 2
            && let Some(x) = poison.get(i / every)
        {
            records.push(x.clone());
        }
    }
    send_all(&p, &s.topic.name, records).await;
    let queries = queries_copy();
    // Fails at run time for every row with customer_age = 30 (about 1 in 70).
    std::fs::write(
        queries.path().join("age_ratio.sql"),
        "INSERT INTO lake.age_ratio\nSELECT transaction_id, _partition, _offset, 1000 / (customer_age - 30) AS ratio\nFROM transactions;\n",
    )
    .unwrap();
    let mut env = s.env_with_queries("carflow-poison", queries.path());
    set_env(&mut env, "CARFLOW_BATCH_MAX_ROWS", "2000".into());
    let mut e = EngineProcess::start(&env, s.logs.path(), "poison");
    s.wait_done(&mut [&mut e], Duration::from_secs(600)).await;
    assert!(e.stop(), "{}", e.log_tail());
    let ctx = lake_context(&s.lake.url).await;
    assert_no_duplicates(&ctx).await;
    let sent = (good + poison.len()) as i64;
    let cars = scalar(&ctx, "SELECT count(*) FROM cars").await;
    let decode_dead = scalar(
        &ctx,
        "SELECT count(*) FROM dead_letters WHERE transform IS NULL",
    )
    .await;
    assert_eq!(
        cars + decode_dead,
        sent,
        "cars + dead letters = messages sent"
    );
    assert_eq!(cars, good as i64, "every good record is in the raw lake");
    let out_of_range = scalar(
        &ctx,
        "SELECT count(*) FROM dead_letters WHERE transform IS NULL AND reason LIKE '%sold_at%'",
    )
    .await;
    assert_eq!(
        out_of_range,
        poison.len() as i64,
        "each out-of-range time is a dead letter naming sold_at"
    );
    // The failing query: the rows it could not take are dead letters naming it, the others are in.
    let ratio = scalar(&ctx, "SELECT count(*) FROM age_ratio").await;
    let ratio_dead = scalar(
        &ctx,
        "SELECT count(*) FROM dead_letters WHERE transform = 'lake.age_ratio' AND reason LIKE '%ivide by zero%'",
    )
    .await;
    let thirty = scalar(&ctx, "SELECT count(*) FROM cars WHERE customer_age = 30").await;
    assert!(thirty > 0, "the data has customers aged 30");
    assert_eq!(
        ratio_dead, thirty,
        "each row the query cannot take is a dead letter"
    );
    assert_eq!(
        ratio + ratio_dead,
        good as i64,
        "age_ratio + its dead letters = good records"
    );
    assert_eq!(
        scalar(
            &ctx,
            "SELECT count(DISTINCT (_partition, _offset)) FROM age_ratio"
        )
        .await,
        ratio
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_rows_on_one_partition_become_dead_letters_and_take_no_good_row_with_them() {
    poison_run(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_rows_on_three_partitions_become_dead_letters_and_take_no_good_row_with_them() {
    poison_run(3).await;
}

/// Item 4 of the lake issue: `mv queries/cars.sql queries/10_cars.sql` while running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_a_query_file_while_running_keeps_its_dataset_going() {
    let s = setup_with("rename", 3).await;
    let queries = queries_copy();
    let mut e = EngineProcess::start(
        &s.env_with_queries("carflow-rename", queries.path()),
        s.logs.path(),
        "rename",
    );
    let mut feed = Feed::new(&s.kafka, &s.topic.name, 51);
    feed.send(10_000).await;
    s.wait_done(&mut [&mut e], Duration::from_secs(300)).await;
    std::fs::rename(
        queries.path().join("cars.sql"),
        queries.path().join("10_cars.sql"),
    )
    .unwrap();
    // Let a few batch boundaries pass so the rename is picked up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    feed.send(10_000).await;
    s.wait_done(&mut [&mut e], Duration::from_secs(300)).await;
    assert!(e.stop(), "{}", e.log_tail());
    let ctx = lake_context(&s.lake.url).await;
    assert_lake_exact(&ctx, 20_000).await;
    s.check_points(&ctx, queries.path()).await;
}

/// Item 5 of the lake issue: an edit that changes a lake dataset's column type is refused with
/// file:line while the previous version keeps running, also after a restart; a new nullable
/// column is accepted and the lake stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_a_datasets_shape_is_refused_and_the_lake_stays_readable() {
    let s = setup_with("reshape", 2).await;
    let queries = queries_copy();
    let env = s.env_with_queries("carflow-reshape", queries.path());
    let mut e = EngineProcess::start(&env, s.logs.path(), "reshape");
    let mut feed = Feed::new(&s.kafka, &s.topic.name, 61);
    feed.send(5_000).await;
    s.wait_done(&mut [&mut e], Duration::from_secs(300)).await;
    // `price` becomes a float: a type change.
    let cars = queries.path().join("cars.sql");
    let original = std::fs::read_to_string(&cars).unwrap();
    std::fs::write(
        &cars,
        "-- price as a float\nINSERT INTO lake.cars PARTITION (dt)\nSELECT * REPLACE (CAST(price AS DOUBLE) AS price), CAST(date_trunc('day', sold_at) AS DATE) AS dt\nFROM transactions;\n",
    )
    .unwrap();
    wait_for("the refusal in the log", Duration::from_secs(60), || {
        let e = &e;
        async move { e.log_text().contains("cars.sql:") && e.log_text().contains("price") }
    })
    .await;
    feed.send(5_000).await;
    s.wait_done(&mut [&mut e], Duration::from_secs(300)).await;
    // A restart with the refused file in place still runs the accepted version.
    e.restart("reshape-2");
    feed.send(5_000).await;
    s.wait_done(&mut [&mut e], Duration::from_secs(300)).await;
    let health = e.health().await;
    assert!(
        health["problem"]
            .as_str()
            .unwrap_or_default()
            .contains("cars.sql"),
        "the refused file shows in /health: {health}"
    );
    // A new nullable column is schema evolution: accepted.
    std::fs::write(
        &cars,
        original.replace(
            "SELECT *,",
            "SELECT *, CASE WHEN customer_age > 60 THEN 'senior' END AS age_band,",
        ),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    feed.send(5_000).await;
    s.wait_done(&mut [&mut e], Duration::from_secs(300)).await;
    assert!(e.stop(), "{}", e.log_tail());
    let ctx = lake_context(&s.lake.url).await;
    assert_lake_exact(&ctx, 20_000).await;
    let typed = query(&ctx, "SELECT price FROM cars LIMIT 1").await;
    assert!(
        matches!(
            typed[0].schema().field(0).data_type(),
            datafusion::arrow::datatypes::DataType::Decimal128(12, 2)
        ),
        "price stays a decimal: {:?}",
        typed[0].schema()
    );
    let seniors = scalar(&ctx, "SELECT count(age_band) FROM cars").await;
    assert!(seniors > 0, "the new column is filled for new rows");
    assert!(
        seniors < scalar(&ctx, "SELECT count(*) FROM cars WHERE customer_age > 60").await,
        "and null for rows written before it existed"
    );
}

/// Item 6 of the lake issue: a topic deleted and created again starts at offset 0. Its new
/// records must never be skipped as replays of the old topic's offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_is_never_skipped_as_a_replay() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let s = setup_with("recreate", 1).await;
    let env = s.env("carflow-recreate");
    let mut e = EngineProcess::start(&env, s.logs.path(), "recreate");
    produce(&s.kafka, &s.topic.name, 71, 3_000, &[]).await;
    s.wait_done(&mut [&mut e], Duration::from_secs(300)).await;
    assert!(e.stop());
    let admin: AdminClient<_> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &s.kafka.brokers)
        .create()
        .unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    admin.delete_topics(&[&s.topic.name], &opts).await.unwrap();
    wait_for("the topic to be gone", Duration::from_secs(60), || {
        let admin = &admin;
        let opts = &opts;
        let t = NewTopic::new(&s.topic.name, 1, TopicReplication::Fixed(1));
        async move {
            matches!(
                admin.create_topics([&t], opts).await.as_deref(),
                Ok([Ok(_)])
            )
        }
    })
    .await;
    produce(&s.kafka, &s.topic.name, 72, 1_000, &[]).await;
    // The same lake, the same group: the new topic's offsets 0..1000 are below the ledger's 3000.
    let mut e = EngineProcess::start(&env, s.logs.path(), "recreate-2");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while e.exit_status().is_none() && !e.log_text().contains("topic id") {
        assert!(
            std::time::Instant::now() < deadline,
            "neither refused nor finished:\n{}",
            e.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = e.log_text();
    assert!(
        text.contains("topic id") && text.contains("lake.on_new_topic"),
        "a recreated topic is refused with the fix named:\n{}",
        e.log_tail()
    );
    e.kill9();
    // The operator accepts the new topic: its records land, the old ones stay.
    let mut env = env.clone();
    set_env(&mut env, "CARFLOW_LAKE_ON_NEW_TOPIC", "new-ledger".into());
    let mut e = EngineProcess::start(&env, s.logs.path(), "recreate-3");
    s.wait_done(&mut [&mut e], Duration::from_secs(300)).await;
    assert!(e.stop(), "{}", e.log_tail());
    let ctx = lake_context(&s.lake.url).await;
    assert_eq!(scalar(&ctx, "SELECT count(*) FROM cars").await, 4_000);
    assert_eq!(
        scalar(&ctx, "SELECT count(DISTINCT transaction_id) FROM cars").await,
        4_000
    );
}

/// Item 9 of the lake issue: a writer that published its ledger entry and died before moving the
/// files into place. `carflow sql` must show exactly the committed data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_a_commit_whose_writer_died_before_moving_its_files() {
    let s = setup_with("rollforward", 1).await;
    let mut e = EngineProcess::start(&s.env("carflow-rf"), s.logs.path(), "rf");
    produce(&s.kafka, &s.topic.name, 81, 2_000, &[]).await;
    s.wait_done(&mut [&mut e], Duration::from_secs(300)).await;
    assert!(e.stop());
    // Take the newest commit's files back to the staging area, as if its writer had died right
    // after publishing the entry.
    let loc = carflow_engine::storage::Location::open(&s.lake.url).unwrap();
    let dir = loc.path(&["_carflow/ledger"]);
    let entries: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(loc.store.list(Some(&dir)))
        .await
        .unwrap();
    let newest = entries
        .iter()
        .filter(|m| m.location.as_ref().ends_with(".json"))
        .max_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()))
        .unwrap();
    let entry: serde_json::Value = serde_json::from_slice(
        &loc.store
            .get(&newest.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let mut moved = 0;
    for f in entry["files"].as_array().unwrap() {
        let (staged, visible) = (
            f["staged"].as_str().unwrap(),
            f["visible"].as_str().unwrap(),
        );
        let (staged, visible) = (
            object_store::path::Path::from(staged),
            object_store::path::Path::from(visible),
        );
        if visible.as_ref().contains("/cars/") {
            loc.store.rename(&visible, &staged).await.unwrap();
            moved += 1;
        }
    }
    assert!(moved > 0, "the newest commit wrote cars files: {entry}");
    // carflow sql first: any reader must finish the commit itself.
    let out = std::process::Command::new(carflow_bin())
        .args([
            "sql",
            "--lake",
            &s.lake.url,
            "--format",
            "csv",
            "--quiet",
            "-c",
        ])
        .arg("SELECT count(*) AS n FROM cars")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: i64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next()
        .unwrap();
    assert_eq!(shown, 2_000, "carflow sql shows every committed row");
    // And so does the library's catalog, used by the tests and by `carflow sql`.
    let ctx = lake_context(&s.lake.url).await;
    assert_lake_exact(&ctx, 2_000).await;
}

/// A producer of transactions on `topic` (its transactional id named after the topic).
fn transactional(s: &Setup) -> rdkafka::producer::FutureProducer {
    use rdkafka::producer::Producer;
    let extra = [(
        "transactional.id".to_string(),
        format!("carflow-test-{}", s.topic.name),
    )]
    .into_iter()
    .collect();
    let tx = producer(&s.kafka.brokers, &extra).unwrap();
    tx.init_transactions(Duration::from_secs(30)).unwrap();
    tx
}

/// Send `records` to the setup's topic in one transaction, committed or aborted.
async fn in_transaction(
    s: &Setup,
    tx: &rdkafka::producer::FutureProducer,
    records: Vec<(String, Vec<u8>)>,
    commit: bool,
) {
    use rdkafka::producer::Producer;
    let t = Duration::from_secs(30);
    tx.begin_transaction().unwrap();
    send_all(tx, &s.topic.name, records).await;
    if commit {
        tx.commit_transaction(t).unwrap();
    } else {
        tx.abort_transaction(t).unwrap();
    }
}

/// Offsets without a message on the real Kafka — the messages of an aborted transaction (left out
/// under read_committed) and the transactions' markers — make the engine seek the partition back
/// to its ledger's position once (`Source::rewind` on the real consumer), then pass over what is
/// not there, counted in `carflow_source_offsets_missing_total`: every committed message is in the
/// lake once, no aborted one is, and the points equal the lake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_without_a_message_are_asked_for_again_then_passed_over() {
    let s = setup_with("holes", 2).await;
    let mut g = generator(52);
    let mut next = |n: usize| next_records(&mut g, n);
    let (before, aborted, committed, after) = (next(1_500), next(400), next(800), next(1_500));
    let plain = producer(&s.kafka.brokers, &Default::default()).unwrap();
    send_all(&plain, &s.topic.name, before.clone()).await;
    let tx = transactional(&s);
    in_transaction(&s, &tx, aborted, false).await;
    in_transaction(&s, &tx, committed.clone(), true).await;
    // Plain messages last: the topic ends with a message, not a marker.
    send_all(&plain, &s.topic.name, after.clone()).await;
    let good = (before.len() + committed.len() + after.len()) as i64;
    let ends: i64 = s.kafka.end_offsets(&s.topic.name).iter().sum();
    assert!(
        ends > good,
        "the transactions took offsets without a message"
    );

    let mut e = EngineProcess::start(&s.env("carflow-holes"), s.logs.path(), "holes");
    s.wait_done(&mut [&mut e], Duration::from_secs(300)).await;
    let missing = e.metric("carflow_source_offsets_missing_total").await as i64;
    let rereads = e.metric("carflow_source_rereads_total").await;
    assert!(e.stop(), "{}", e.log_tail());
    s.check(good, 0).await;
    assert_eq!(
        missing,
        ends - good,
        "every offset without a message counted once"
    );
    assert!(
        rereads >= 1.0,
        "a hole is asked for before it is passed over"
    );
}

/// A topic whose last offset holds no message — it ends with a committed transaction, so every
/// partition's last offset is the transaction's marker, which a consumer never receives — is
/// still processed to its end: the engine asks for the partition's end again once (there was no
/// hole before it), then reports each partition processed up to the end offset (what makes a
/// quiet partition idle, so its windows close), commits the group's position there (no lag of
/// one left for good), and counts the markers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_ends_in_a_transaction_marker_is_processed_to_its_end() {
    let s = setup_with("marker-end", 2).await;
    let mut g = generator(53);
    let mut next = |n: usize| next_records(&mut g, n);
    let (plain_records, committed) = (next(1_000), next(700));
    let plain = producer(&s.kafka.brokers, &Default::default()).unwrap();
    send_all(&plain, &s.topic.name, plain_records.clone()).await;
    let tx = transactional(&s);
    in_transaction(&s, &tx, committed.clone(), true).await;
    let good = (plain_records.len() + committed.len()) as i64;
    let ends = s.kafka.end_offsets(&s.topic.name);
    let total: i64 = ends.iter().sum();
    assert_eq!(total, good + 2, "one marker at the end of each partition");

    let group = "carflow-marker-end";
    let mut e = EngineProcess::start(&s.env(group), s.logs.path(), "marker-end");
    s.wait_done(&mut [&mut e], Duration::from_secs(120)).await;
    let missing = e.metric("carflow_source_offsets_missing_total").await as i64;
    let rereads = e.metric("carflow_source_rereads_total").await;
    let staged = e.metric("carflow_lake_stage_seconds_count").await;
    let published = e.metric("carflow_lake_publish_seconds_count").await;
    // The group's positions are committed after the lake's commit: wait for them.
    let kafka = s.kafka.clone();
    let topic = s.topic.name.clone();
    let want: Vec<Option<i64>> = ends.iter().map(|e| Some(*e)).collect();
    wait_for(
        "the group's positions at the ends",
        Duration::from_secs(30),
        || {
            let committed = kafka.committed_offsets(group, &topic);
            let want = want.clone();
            async move { committed == want }
        },
    )
    .await;
    assert!(e.stop(), "{}", e.log_tail());
    s.check(good, 0).await;
    assert_eq!(missing, 2, "each marker counted once");
    assert!(
        rereads >= 2.0,
        "each partition's end is asked for before it is passed over"
    );
    // Every partition commit's phases are timed (the passes over the markers are commits too).
    assert!(
        staged >= 4.0 && staged == published,
        "{staged} / {published}"
    );
}
