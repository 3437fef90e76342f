#![cfg(feature = "services")]
//! The engine stays up and its windowed numbers stay right, against the real Kafka, HDFS and
//! InfluxDB: repeated `kill -9`, sinks down for longer than Kafka's poll interval, a far-future
//! event, InfluxDB refusing some points, HDFS unreachable, a live stream at 5,000 tx/s, tag values
//! InfluxDB cannot hold, and consumer lag on a quiet topic.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use carflow_engine::generator::{Clock, Generator, GeneratorConfig};
use carflow_engine::producer::producer;
use common::engine::EngineProcess;
use common::services::*;
use common::setup::*;
use common::verify::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// The group's committed offsets, per partition (`-1` when none).
fn committed(kafka: &Kafka, topic: &str, group: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

/// Item 0 of the stays-up issue: kill -9 and restart the engine at seeded random 2–6 s
/// intervals while it works through 200,000 records on 6 partitions; every InfluxDB point must
/// still equal the aggregate over the lake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_kill_9_leaves_every_influx_point_equal_to_the_lake() {
    let s = setup("kill9").await;
    let (n, bad) = (200_000, bad_records());
    produce(&s.kafka, &s.topic.name, 22, n, &bad).await;
    let total: i64 = s.kafka.end_offsets(&s.topic.name).iter().sum();
    let mut e = EngineProcess::start(&s.env("carflow-kill9"), s.logs.path(), "k0");
    let mut rng = Lcg(2026);
    let mut kills = 0;
    // Commits staged while the previous one was landing (`lake.prestage`), by every engine.
    let mut prestaged = 0.0;
    while kills < 8 {
        tokio::time::sleep(rng.millis(2_000, 6_000)).await;
        let at: i64 = e.processed().await.values().sum();
        if at >= total {
            break;
        }
        prestaged += e.metric("carflow_lake_commits_prestaged_total").await;
        e.restart(&format!("k{}", kills + 1));
        kills += 1;
    }
    assert!(kills >= 5, "only {kills} kills before the engine finished");
    s.wait_done(&mut [&mut e], Duration::from_secs(900)).await;
    prestaged += e.metric("carflow_lake_commits_prestaged_total").await;
    assert!(prestaged > 0.0, "commits were staged early");
    assert!(e.stop(), "{}", e.log_tail());
    s.check(n as i64, bad.len()).await;
}

/// Item 1 of the stays-up issue: InfluxDB unreachable for longer than `max.poll.interval.ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_influx_outage_longer_than_the_poll_interval_does_not_stop_the_engine() {
    let s = setup_with("pollint", 3).await;
    let n = 20_000;
    produce(&s.kafka, &s.topic.name, 24, n, &[]).await;
    let influx_host = s.influx.url.trim_start_matches("http://").to_string();
    let proxy = common::proxy::Proxy::start(&influx_host, false).await;
    let mut env = s.env("carflow-pollint");
    set_env(
        &mut env,
        "CARFLOW_INFLUX_URL",
        format!("http://{}", proxy.addr),
    );
    let config = s.logs.path().join("pollint.toml");
    std::fs::write(
        &config,
        "[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"2000\"\n\"max.poll.interval.ms\" = \"7000\"\n",
    )
    .unwrap();
    let mut e = EngineProcess::start_with_args(
        &env,
        &["--config", config.to_str().unwrap()],
        s.logs.path(),
        "pollint",
    );
    // Four poll intervals without InfluxDB.
    tokio::time::sleep(Duration::from_secs(28)).await;
    assert!(e.is_running(), "the engine exited:\n{}", e.log_tail());
    assert_eq!(e.health().await["status"], "degraded");
    proxy.up();
    s.wait_done(&mut [&mut e], Duration::from_secs(600)).await;
    assert!(e.stop(), "{}", e.log_tail());
    s.check(n as i64, 0).await;
}

/// Item 2 of the stays-up issue: one record dated 2030 on one of three partitions, 40 s of
/// silence, then traffic: points keep coming, nothing is late, offsets advance, also after a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_future_event_neither_closes_windows_nor_freezes_offsets() {
    let s = setup_with("future", 3).await;
    let p = producer(&s.kafka.brokers, &Default::default()).unwrap();
    let mut g = generator(91);
    let mut next = |n: usize| next_records(&mut g, n);
    let group = "carflow-future";
    let env = s.env(group);
    send_all(&p, &s.topic.name, next(6_000)).await;
    let skewed = with_field(
        &generator(92).next_transaction().to_json(),
        "sold_at",
        "\"2030-06-01T12:00:00.000Z\"",
    );
    send_all(
        &p,
        &s.topic.name,
        [("skew".to_string(), skewed.into_bytes())],
    )
    .await;
    let mut e = EngineProcess::start(&env, s.logs.path(), "future");
    s.wait_done(&mut [&mut e], Duration::from_secs(300)).await;
    tokio::time::sleep(Duration::from_secs(40)).await;
    send_all(&p, &s.topic.name, next(6_000)).await;
    s.wait_done(&mut [&mut e], Duration::from_secs(300)).await;
    assert_eq!(
        e.metric("carflow_late_rows_total").await,
        0.0,
        "{}",
        e.log_tail()
    );
    let ends = s.kafka.end_offsets(&s.topic.name);
    wait_for(
        "committed offsets at the end",
        Duration::from_secs(60),
        || {
            let (k, t, ends) = (&s.kafka, &s.topic.name, &ends);
            async move { committed(k, t, group, 3) == *ends }
        },
    )
    .await;
    e.restart("future-2");
    send_all(&p, &s.topic.name, next(3_000)).await;
    s.wait_done(&mut [&mut e], Duration::from_secs(300)).await;
    assert_eq!(
        e.metric("carflow_late_rows_total").await,
        0.0,
        "{}",
        e.log_tail()
    );
    assert!(e.stop(), "{}", e.log_tail());
    let ctx = lake_context(&s.lake.url).await;
    assert_lake_exact(&ctx, 15_000).await;
    assert_eq!(
        scalar(
            &ctx,
            "SELECT count(*) FROM dead_letters WHERE reason LIKE '%sold_at%'"
        )
        .await,
        1,
        "the far-future record is a dead letter"
    );
    s.check_points(&ctx, &queries()).await;
}

/// Item 3 of the stays-up issue: a field type conflict makes InfluxDB refuse one measurement's
/// points; every other point of the (large) batch is still written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influx_refusing_some_points_keeps_every_other_point() {
    let s = setup_with("reject", 2).await;
    let n = 50_000;
    produce(&s.kafka, &s.topic.name, 101, n, &[]).await;
    // `sales` of sales_by_brand is a string in this shard: every integer `sales` conflicts.
    let r = reqwest::Client::new()
        .post(format!("{}/write", s.influx.url))
        .query(&[("db", s.db.name.as_str()), ("precision", "ms")])
        .body(format!(
            "sales_by_brand,brand=Zzz sales=\"oops\" {START_MS}"
        ))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let mut env = s.env("carflow-reject");
    set_env(&mut env, "CARFLOW_BATCH_MAX_ROWS", "50000".into());
    set_env(&mut env, "CARFLOW_BATCH_LINGER", "3s".into());
    let mut e = EngineProcess::start(&env, s.logs.path(), "reject");
    s.wait_done(&mut [&mut e], Duration::from_secs(600)).await;
    let rejected = e.metric("carflow_influx_rejected_points_total").await;
    assert!(e.stop(), "{}", e.log_tail());
    let ctx = lake_context(&s.lake.url).await;
    let mut expected = expected_points(&ctx, &queries()).await;
    let mut actual = s.db.points().await;
    expected.retain(|k, _| k.0 != "sales_by_brand");
    actual.retain(|k, _| k.0 != "sales_by_brand");
    assert!(expected.len() > 5_000, "{} points", expected.len());
    assert_points_match(&expected, &actual, "every point InfluxDB did not refuse");
    assert!(rejected > 0.0, "refused points are counted");
}

/// Item 4 of the stays-up issue: HDFS unreachable shows as degraded in /health within 30 s and in
/// `carflow_errors_total{sink="lake"}`; SIGTERM in the middle of the retries stops the engine
/// within 10 s; once HDFS is back the run is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hdfs_unreachable_shows_in_health_and_sigterm_still_stops_the_engine() {
    let s = setup_with("hdfsdown", 2).await;
    let n = 5_000;
    produce(&s.kafka, &s.topic.name, 121, n, &[]).await;
    let namenode = s
        .lake
        .url
        .trim_start_matches("hdfs://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let path = s.lake.url.trim_start_matches("hdfs://")[namenode.len()..].to_string();
    let proxy = common::proxy::Proxy::start(&namenode, false).await;
    let mut env = s.env("carflow-hdfsdown");
    set_env(
        &mut env,
        "CARFLOW_LAKE_ROOT",
        format!("hdfs://{}{path}", proxy.addr),
    );
    let mut e = EngineProcess::start(&env, s.logs.path(), "hdfsdown");
    wait_for(
        "/health to say the lake is down",
        Duration::from_secs(30),
        || {
            let e = &e;
            async move {
                let h = e.health().await;
                h["status"] == "degraded"
                    && h["problem"].as_str().unwrap_or_default().contains("lake")
            }
        },
    )
    .await;
    assert!(e.metric("carflow_errors_total{sink=\"lake\"}").await >= 1.0);
    let asked = Instant::now();
    let stopped = e.stop();
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?}:\n{}",
        asked.elapsed(),
        e.log_tail()
    );
    assert!(stopped, "clean exit:\n{}", e.log_tail());
    proxy.up();
    let mut e = EngineProcess::start(&env, s.logs.path(), "hdfsdown-2");
    s.wait_done(&mut [&mut e], Duration::from_secs(300)).await;
    assert!(e.stop(), "{}", e.log_tail());
    s.check(n as i64, 0).await;
}

/// Peak resident memory of a process, from /proc (MB).
fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Item 5 of the stays-up issue (CI version): a live stream at 5,000 tx/s with wall-clock event
/// times for 60 s, with window state capped at 100,000 rows: nothing late, nothing closed early,
/// every point equal to the lake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stream_at_5000_per_second_keeps_windows_exact_in_bounded_state() {
    let s = setup("live").await;
    let mut env = s.env("carflow-live");
    set_env(&mut env, "CARFLOW_WINDOWS_MAX_ROWS", "100000".into());
    set_env(&mut env, "CARFLOW_BATCH_LINGER", "1s".into());
    let mut e = EngineProcess::start(&env, s.logs.path(), "live");
    let (rate, secs) = (5_000.0, 60.0);
    let n = (rate * secs) as usize;
    let p = producer(&s.kafka.brokers, &Default::default()).unwrap();
    let mut g = Generator::new(GeneratorConfig {
        seed: 131,
        clock: Clock::Wall,
    })
    .with_jitter(true);
    let started = Instant::now();
    let mut sent = 0;
    while sent < n {
        let k = 500.min(n - sent);
        let records: Vec<_> = (0..k)
            .map(|_| {
                let t = g.next_transaction();
                (t.dealer_id.clone(), t.to_json().into_bytes())
            })
            .collect();
        send_all(&p, &s.topic.name, records).await;
        sent += k;
        let due = started + Duration::from_secs_f64(sent as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
    }
    s.wait_done(&mut [&mut e], Duration::from_secs(600)).await;
    let late = e.metric("carflow_late_rows_total").await;
    let early = e.metric("carflow_windows_closed_early_total").await;
    let rss = e.pid().map_or(0.0, peak_rss_mb);
    eprintln!(
        "live 5000 tx/s for {secs}s: peak RSS {rss:.0} MB, late {late}, closed early {early}"
    );
    assert!(e.stop(), "{}", e.log_tail());
    assert_eq!(late, 0.0, "late rows");
    assert_eq!(early, 0.0, "windows closed early");
    s.check(n as i64, 0).await;
}

/// Item 9 of the stays-up issue: tag values InfluxDB cannot hold as they are (empty, control
/// characters) follow the documented rule, and every other value (unicode, separators,
/// backslashes, quotes) round-trips: per-tag sums read back from InfluxDB equal the lake's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_values_influx_cannot_hold_follow_the_documented_rule() {
    let s = setup_with("tags", 2).await;
    let cities = [
        "",
        "New\nYork",
        "Tab\tCity",
        "São Paulo",
        "東京",
        "a,b c=d",
        "back\\slash\\",
        "quote\"d",
        " lead",
        "Austin",
    ];
    let p = producer(&s.kafka.brokers, &Default::default()).unwrap();
    let mut g = generator(141);
    let records: Vec<_> = (0..2_000)
        .map(|i| {
            let mut t = g.next_transaction();
            t.dealer_city = cities[i % cities.len()].to_string();
            (t.dealer_id.clone(), serde_json::to_vec(&t).unwrap())
        })
        .collect();
    send_all(&p, &s.topic.name, records).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(queries().join("cars.sql"), dir.path().join("cars.sql")).unwrap();
    std::fs::write(
        dir.path().join("sales_by_city.sql"),
        "INSERT INTO influx.sales_by_city\nSELECT date_bin(INTERVAL '1 hour', sold_at) AS time, dealer_city AS city, count(*) AS sales\nFROM transactions GROUP BY 1, 2;\n",
    )
    .unwrap();
    let mut e = EngineProcess::start(
        &s.env_with_queries("carflow-tags", dir.path()),
        s.logs.path(),
        "tags",
    );
    s.wait_done(&mut [&mut e], Duration::from_secs(300)).await;
    assert!(e.stop(), "{}", e.log_tail());
    let ctx = lake_context(&s.lake.url).await;
    let mut lake: BTreeMap<String, i64> = BTreeMap::new();
    for b in query(&ctx, "SELECT dealer_city, count(*) FROM cars GROUP BY 1").await {
        for i in 0..b.num_rows() {
            let city =
                datafusion::arrow::util::display::array_value_to_string(b.column(0), i).unwrap();
            let n: i64 = datafusion::arrow::util::display::array_value_to_string(b.column(1), i)
                .unwrap()
                .parse()
                .unwrap();
            // The documented rule: an empty value becomes `(empty)`; each control character
            // and a trailing backslash become U+FFFD.
            let tag = if city.is_empty() {
                "(empty)".to_string()
            } else {
                let mut t: String = city
                    .chars()
                    .map(|c| if c.is_control() { '\u{fffd}' } else { c })
                    .collect();
                if t.ends_with('\\') {
                    t.pop();
                    t.push('\u{fffd}');
                }
                t
            };
            *lake.entry(tag).or_default() += n;
        }
    }
    let answer = s
        .influx
        .influxql(
            &s.db.name,
            "SELECT sum(sales) FROM sales_by_city GROUP BY city",
        )
        .await;
    let mut influx: BTreeMap<String, i64> = BTreeMap::new();
    for series in answer["results"][0]["series"].as_array().unwrap() {
        let city = series["tags"]["city"].as_str().unwrap().to_string();
        influx.insert(city, series["values"][0][1].as_i64().unwrap());
    }
    assert_eq!(influx, lake, "per-city sales in InfluxDB vs the lake");
}

/// Item 10 of the stays-up issue: on a topic that goes quiet, the group's committed offsets reach
/// the end within a minute (lag 0), and a restart right after stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_quiet_topic_the_committed_offsets_reach_the_end_and_a_restart_stays_exact() {
    let s = setup_with("lag", 3).await;
    let p = producer(&s.kafka.brokers, &Default::default()).unwrap();
    let mut g = generator(111);
    let mut next = |n: usize| next_records(&mut g, n);
    send_all(&p, &s.topic.name, next(20_000)).await;
    let group = "carflow-lag";
    let mut e = EngineProcess::start(&s.env(group), s.logs.path(), "lag");
    s.wait_done(&mut [&mut e], Duration::from_secs(300)).await;
    let ends = s.kafka.end_offsets(&s.topic.name);
    wait_for(
        "committed offsets at the log end",
        Duration::from_secs(60),
        || {
            let (k, t, ends) = (&s.kafka, &s.topic.name, &ends);
            async move { committed(k, t, group, 3) == *ends }
        },
    )
    .await;
    e.restart("lag-2");
    send_all(&p, &s.topic.name, next(5_000)).await;
    s.wait_done(&mut [&mut e], Duration::from_secs(300)).await;
    assert!(e.stop(), "{}", e.log_tail());
    s.check(25_000, 0).await;
}

/// A windowed query edited while two engines in one group run it: for a moment the engines run
/// different versions, and a point merged then must neither leave out the other engine's
/// partitions nor take their state of another version. Every edit is a new version that changes
/// the numbers (another price filter), so a merge with any older state shows. Each round edits
/// at a seeded moment while a backlog is being worked through, then again once both engines are
/// idle (no commit follows that edit: each engine's new state meets only the other's state of an
/// older version), and then every point must come to equal the lake's aggregate under the query
/// as it now is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windowed_query_edited_under_two_engines_keeps_every_point_equal_to_the_lake() {
    let s = setup("edit2").await;
    let queries = queries_copy();
    // Day windows: every window stays open through the test, so each point must follow the edits.
    let version = |v: u32| {
        format!(
            "-- version {v}, edited while running\n\
             INSERT INTO influx.payment_daily\n\
             SELECT date_bin(INTERVAL '1 day', sold_at) AS time, payment_method,\n\
                    count(*) AS sales, sum(price) AS revenue\n\
             FROM transactions\n\
             WHERE price > {}\n\
             GROUP BY 1, 2;\n",
            1_000 * v
        )
    };
    let probe = queries.path().join("payment_daily.sql");
    let edit = |v: u32| {
        let tmp = queries.path().join(".payment_daily.tmp");
        std::fs::write(&tmp, version(v)).unwrap();
        std::fs::rename(&tmp, &probe).unwrap();
    };
    edit(0);
    let env = s.env_with_queries("carflow-edit2", queries.path());
    let mut a = EngineProcess::start(&env, s.logs.path(), "a");
    let mut b = EngineProcess::start(&env, s.logs.path(), "b");
    let mut feed = Feed::new(&s.kafka, &s.topic.name, 71);
    feed.send(4_000).await;
    wait_for(
        "both engines to own partitions and make progress",
        Duration::from_secs(120),
        || {
            let (a, b) = (&a, &b);
            async move { !a.processed().await.is_empty() && !b.processed().await.is_empty() }
        },
    )
    .await;
    s.wait_done(&mut [&mut a, &mut b], Duration::from_secs(300))
        .await;
    let mut rng = Lcg(20261201);
    let mut v = 0;
    for round in 0..3 {
        // An edit at a seeded moment while both engines work through a backlog.
        let traffic = tokio::spawn(async move {
            feed.send(3_000).await;
            feed
        });
        tokio::time::sleep(rng.millis(0, 2_500)).await;
        v += 1;
        edit(v);
        feed = traffic.await.unwrap();
        s.wait_done(&mut [&mut a, &mut b], Duration::from_secs(300))
            .await;
        // Another once both are idle, at a seeded moment.
        tokio::time::sleep(rng.millis(500, 3_000)).await;
        v += 1;
        edit(v);
        eprintln!("round {round}: query version {v}");
        s.wait_points_match(queries.path(), Duration::from_secs(90))
            .await;
    }
    assert!(a.stop(), "{}", a.log_tail());
    assert!(b.stop(), "{}", b.log_tail());
    s.check_with(13_000, 0, queries.path()).await;
}
