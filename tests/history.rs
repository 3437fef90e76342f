#![cfg(feature = "services")]
//! One SQL for stream and history, against the real Kafka, HDFS and InfluxDB: `carflow backfill`
//! of a new query equals what the stream writes, `carflow reconcile` finds and repairs points
//! that differ, reference tables JOINed by a query (and edited while the engine runs), and
//! `carflow dead-letters replay` exactly once.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::engine::{EngineProcess, carflow_bin};
use common::setup::*;
use common::verify::*;

/// A query the shipped set does not have: sales per color per minute.
const SALES_BY_COLOR: &str = "INSERT INTO influx.sales_by_color
SELECT date_bin(INTERVAL '1 minute', sold_at) AS time, color,
       count(*) AS sales, sum(price) AS revenue, avg(mileage_km) AS avg_mileage
FROM transactions GROUP BY 1, 2;
";

/// Run a `carflow` command with `env`; returns the exit code, stdout and stderr.
fn carflow(env: &[(&'static str, String)], args: &[&str]) -> (i32, String, String) {
    let out = Command::new(carflow_bin())
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .envs(env.iter().map(|(k, v)| (k.to_string(), v.clone())))
        .output()
        .expect("run carflow");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `carflow <args> --format json`, parsed; panics with the output when the exit code is not `code`.
fn carflow_json(env: &[(&'static str, String)], args: &[&str], code: i32) -> serde_json::Value {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--format", "json"]);
    let (c, out, err) = carflow(env, &all);
    assert_eq!(
        c, code,
        "carflow {args:?}: exit {c}\nstdout:\n{out}\nstderr:\n{err}"
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"))
}

/// A directory with the shipped queries and `extra` (file name, SQL).
fn queries_with(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = queries_copy();
    for (name, sql) in extra {
        std::fs::write(dir.path().join(name), sql).unwrap();
    }
    dir
}

/// The points of `measurement` with time in `[from, to)`.
fn only(points: &Points, measurement: &str, from: i64, to: i64) -> Points {
    points
        .iter()
        .filter(|((m, _, t), _)| m == measurement && *t >= from && *t < to)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn write_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A new query file backfilled over a lake of 100,000 rows, while the engine runs, writes exactly
/// the points the stream wrote for it (the stream ran it from the start, into another database),
/// reconcile reports no difference for any query, and a second backfill changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfilled_query_equals_what_the_stream_wrote() {
    let s = setup_with("hist-backfill", 3).await;
    let n = 100_000;
    let mut feed = Feed::new(&s.kafka, &s.topic.name, 151);
    feed.send(n).await;
    let with_color = queries_with(&[("sales_by_color.sql", SALES_BY_COLOR)]);
    let env = s.env_with_queries("carflow-hist-backfill", with_color.path());
    let mut e = EngineProcess::start(&env, s.logs.path(), "backfill");
    s.wait_done(&mut [&mut e], Duration::from_secs(900)).await;
    // The windows the engine closed while idle are recorded with its next commit.
    feed.send(300).await;
    s.wait_done(&mut [&mut e], Duration::from_secs(900)).await;
    // The engine stays up: backfill and reconcile run beside it (closed windows only).
    let streamed = s.db.points().await;

    // The same lake, a database that never saw the stream.
    let fresh = s.influx.database("hist_backfill_fresh").await;
    let mut fresh_env = env.clone();
    set_env(&mut fresh_env, "CARFLOW_INFLUX_BUCKET", fresh.name.clone());
    let file = with_color.path().join("sales_by_color.sql");
    let file = file.to_str().unwrap();
    let report = carflow_json(&fresh_env, &["backfill", file, "--from", "2026-01-01"], 0);
    // Every row of the closed windows (the engine closed most of the 100,000 rows' windows).
    let lake = lake_context(&s.lake.url).await;
    let closed_rows = scalar(
        &lake,
        &format!(
            "SELECT count(*) FROM cars WHERE CAST(sold_at AS BIGINT) >= {} AND CAST(sold_at AS BIGINT) < {}",
            report["from"].as_i64().unwrap(),
            report["to"].as_i64().unwrap() - 1 + 60_000
        ),
    )
    .await;
    assert_eq!(report["rows"].as_i64().unwrap(), closed_rows, "{report}");
    assert!(closed_rows > n as i64 * 9 / 10, "{report}");
    let (from, to) = (
        report["from"].as_i64().unwrap(),
        report["to"].as_i64().unwrap(),
    );
    assert_eq!(report["boundary"]["committed"], true, "{report}");
    let backfilled = fresh.points().await;
    assert!(backfilled.len() > 1000, "{} points", backfilled.len());
    let expected = only(&streamed, "sales_by_color", from, to);
    assert_points_match(
        &expected,
        &only(&backfilled, "sales_by_color", from, to),
        "backfill vs stream",
    );
    assert_eq!(backfilled.len(), expected.len(), "only closed windows");

    // Reconcile: the stream's database and the backfilled one hold what the lake gives.
    let r = carflow_json(&env, &["reconcile"], 0);
    assert_eq!(r["differences"], 0, "{r}");
    assert!(r["measurements"].as_array().unwrap().len() >= 6, "{r}");
    let r = carflow_json(
        &fresh_env,
        &[
            "reconcile",
            "--query",
            "sales_by_color",
            "--from",
            "2026-01-01",
        ],
        0,
    );
    assert_eq!(r["differences"], 0, "{r}");

    // Idempotent.
    carflow_json(&fresh_env, &["backfill", file, "--from", "2026-01-01"], 0);
    assert_eq!(
        fresh.points().await,
        backfilled,
        "a second backfill changes nothing"
    );

    // The raw dataset is the source of every backfill: refused with why.
    let (c, _, err) = carflow(&env, &["backfill", "queries/cars.sql"]);
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("lake.cars is the raw dataset"), "{err}");

    // The live engine goes on; the closed windows it wrote are still what the lake gives.
    feed.send(2_000).await;
    s.wait_done(&mut [&mut e], Duration::from_secs(900)).await;
    assert!(e.stop(), "{}", e.log_tail());
    let r = carflow_json(&env, &["reconcile"], 0);
    assert_eq!(r["differences"], 0, "{r}");
}

/// A lake query the shipped set does not have: the expensive cars, by day.
const EXPENSIVE: &str = "INSERT INTO lake.expensive PARTITION (dt)
SELECT *, CAST(date_trunc('day', sold_at) AS DATE) AS dt
FROM transactions WHERE price > 40000;
";

/// A lake.* query dropped into queries/ while the engine runs, then backfilled while the stream
/// goes on: its dataset holds exactly the raw rows the query keeps, each (partition, offset)
/// once — the offsets before the engine started it from the backfill, the rest from the engine —
/// a second backfill writes nothing, and event-time ranges are refused for lake.* queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfilled_lake_query_holds_every_offset_once_beside_the_live_engine() {
    let s = setup_with("hist-lake", 3).await;
    let mut feed = Feed::new(&s.kafka, &s.topic.name, 154);
    feed.send(100_000).await;
    let queries = queries_with(&[]);
    let env = s.env_with_queries("carflow-hist-lake", queries.path());
    let mut e = EngineProcess::start(&env, s.logs.path(), "lake");
    s.wait_done(&mut [&mut e], Duration::from_secs(900)).await;
    // Dropped while running: the engine writes it from the next batch on.
    let file = queries.path().join("expensive.sql");
    write_file(&file, EXPENSIVE);
    feed.send(3_000).await;
    s.wait_done(&mut [&mut e], Duration::from_secs(900)).await;
    let file = file.to_str().unwrap().to_string();

    let (c, _, err) = carflow(&env, &["backfill", &file, "--from", "2026-01-01"]);
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("backfilled whole"), "{err}");
    let plan = carflow_json(&env, &["backfill", &file, "--dry-run"], 0);
    assert_eq!(plan["dry_run"], true, "{plan}");
    assert!(
        plan["offsets"].as_object().unwrap().len() == 3,
        "every partition has offsets before the query started: {plan}"
    );

    // The backfill runs while the stream goes on.
    let (bg_env, bg_file) = (env.clone(), file.clone());
    let backfill = std::thread::spawn(move || carflow_json(&bg_env, &["backfill", &bg_file], 0));
    feed.send(20_000).await;
    let report = backfill.join().unwrap();
    s.wait_done(&mut [&mut e], Duration::from_secs(900)).await;
    assert_eq!(report["record"], 1, "{report}");
    assert_eq!(report["refused"], 0, "{report}");
    assert!(report["rows_in"].as_u64().unwrap() >= 100_000, "{report}");

    let again = carflow_json(&env, &["backfill", &file], 0);
    assert_eq!(again["rows_in"], 0, "{again}");
    assert!(
        again["record"].is_null(),
        "a second backfill commits nothing: {again}"
    );
    assert!(again["offsets"].as_object().unwrap().is_empty(), "{again}");
    assert!(
        s.lake
            .children("_carflow/backfill-staging")
            .await
            .is_empty(),
        "nothing left staged"
    );
    assert!(e.stop(), "{}", e.log_tail());

    let lake = lake_context(&s.lake.url).await;
    let total = 123_000;
    assert_eq!(scalar(&lake, "SELECT count(*) FROM cars").await, total);
    let expected = scalar(&lake, "SELECT count(*) FROM cars WHERE price > 40000").await;
    assert!(expected > 10_000, "{expected} expensive cars");
    assert_eq!(
        scalar(&lake, "SELECT count(*) FROM expensive").await,
        expected,
        "every expensive car once"
    );
    assert_eq!(
        scalar(
            &lake,
            "SELECT count(*) FROM (SELECT DISTINCT _partition, _offset FROM expensive)"
        )
        .await,
        expected,
        "no (partition, offset) twice"
    );
    assert_eq!(
        scalar(
            &lake,
            "SELECT count(*) FROM (SELECT _partition, _offset, transaction_id, price, dt FROM cars \
             WHERE price > 40000 EXCEPT SELECT _partition, _offset, transaction_id, price, dt FROM expensive)"
        )
        .await,
        0,
        "the same rows, values and days as the raw dataset"
    );
    let backfilled = report["rows_out"].as_i64().unwrap();
    assert!(
        backfilled > 0 && backfilled < expected,
        "the backfill wrote the rows before the engine started the query, the engine the rest: \
         {backfilled} of {expected}"
    );
}

/// Reconcile finds a point deleted from InfluxDB, a point with a wrong value and a point that
/// should not exist; --repair rewrites and deletes them, and a second reconcile finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_finds_and_repairs_corrupted_deleted_and_extra_points() {
    let s = setup_with("hist-reconcile", 3).await;
    let mut feed = Feed::new(&s.kafka, &s.topic.name, 152);
    feed.send(20_000).await;
    let env = s.env("carflow-hist-reconcile");
    let mut e = EngineProcess::start(&env, s.logs.path(), "reconcile");
    s.wait_done(&mut [&mut e], Duration::from_secs(600)).await;
    // The windows the engine closed while idle are recorded with its next commit.
    feed.send(300).await;
    s.wait_done(&mut [&mut e], Duration::from_secs(600)).await;
    assert!(e.stop(), "{}", e.log_tail());
    let r = carflow_json(&env, &["reconcile"], 0);
    assert_eq!(r["differences"], 0, "{r}");
    let r = carflow_json(&env, &["reconcile", "--query", "sales_by_brand"], 0);
    let m = &r["measurements"][0];
    let (measurement, to) = (
        m["measurement"].as_str().unwrap(),
        m["to"].as_i64().unwrap(),
    );
    let points = s.db.points().await;
    let closed: Vec<_> = only(&points, measurement, 0, to).into_iter().collect();
    assert!(closed.len() > 100, "{} closed points", closed.len());
    let tag_filter = |tags: &[(String, String)]| {
        tags.iter()
            .map(|(k, v)| format!("\"{k}\" = '{v}'"))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    // Delete one point.
    let ((_, gone_tags, gone_time), _) = &closed[10];
    s.influx
        .influxql(
            &s.db.name,
            &format!(
                "DELETE FROM \"{measurement}\" WHERE {} AND time >= {gone_time}ms AND time < {}ms",
                tag_filter(gone_tags),
                gone_time + 1
            ),
        )
        .await;
    // Corrupt another: every field of it set to 12345.
    let ((_, bad_tags, bad_time), bad_fields) = &closed[20];
    let mut line = measurement.to_string();
    for (k, v) in bad_tags {
        line.push_str(&format!(",{k}={}", v.replace(' ', "\\ ")));
    }
    let fields: Vec<String> = bad_fields
        .keys()
        .map(|k| format!("{k}={}", if k == "sales" { "12345i" } else { "12345" }))
        .collect();
    line.push_str(&format!(" {} {bad_time}", fields.join(",")));
    // And one that should not be there: a brand nobody sells.
    let ((_, extra_tags, extra_time), _) = &closed[30];
    let mut extra = measurement.to_string();
    for (k, _) in extra_tags {
        extra.push_str(&format!(",{k}=Trabant"));
    }
    extra.push_str(&format!(" {} {extra_time}", fields.join(",")));
    let http = reqwest::Client::new();
    let w = http
        .post(format!("{}/write", s.influx.url))
        .query(&[("db", s.db.name.as_str()), ("precision", "ms")])
        .body(format!("{line}\n{extra}\n"))
        .send()
        .await
        .unwrap();
    assert!(w.status().is_success(), "{:?}", w.text().await);

    let r = carflow_json(&env, &["reconcile", "--query", measurement], 1);
    let diffs = r["measurements"][0]["differences"].as_array().unwrap();
    let kinds: Vec<&str> = diffs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(diffs.len(), 3, "{r}");
    for k in ["missing", "wrong", "extra"] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    let (code, text, _) = carflow(&env, &["reconcile", "--query", measurement]);
    assert_eq!(code, 1);
    assert!(text.contains("closed windows only"), "{text}");
    assert!(
        text.contains("3 difference(s) (1 missing, 1 extra, 1 wrong)"),
        "{text}"
    );

    let r = carflow_json(&env, &["reconcile", "--repair"], 0);
    assert_eq!(r["differences"], 3, "{r}");
    assert_eq!(r["remaining"], 0, "{r}");
    let r = carflow_json(&env, &["reconcile"], 0);
    assert_eq!(r["differences"], 0, "{r}");
    assert_eq!(
        only(&s.db.points().await, measurement, 0, to),
        only(&points, measurement, 0, to)
    );
}

/// The transactions of `n` generated with `seed` from 2019-06-01 (before `events.min_time` when
/// it is set to 2020): valid JSON the engine refuses under that rule.
fn from_2019(seed: u64, n: usize) -> Vec<(String, Vec<u8>)> {
    use carflow_engine::generator::{Clock, Generator, GeneratorConfig};
    let mut g = Generator::new(GeneratorConfig {
        seed,
        clock: Clock::Simulated {
            start_ms: 1_559_347_200_000,
            mean_per_hour: 30_000.0,
        },
    });
    (0..n)
        .map(|_| {
            let t = g.next_transaction();
            (t.dealer_id.clone(), t.to_json().into_bytes())
        })
        .collect()
}

/// Dead letters refused by a rule that was too strict (events before 2020) are replayed after the
/// rule is fixed: they reach the lake exactly once, a second replay adds nothing, and a message
/// that still does not decode stays a dead letter with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_dead_letters_reach_the_lake_exactly_once() {
    let s = setup_with("hist-replay", 3).await;
    let (n, old) = (5_000usize, 40usize);
    produce(
        &s.kafka,
        &s.topic.name,
        154,
        n,
        &[b"not json at all".to_vec()],
    )
    .await;
    let p = carflow_engine::producer::producer(&s.kafka.brokers, &Default::default()).unwrap();
    send_all(&p, &s.topic.name, from_2019(155, old)).await;
    let mut strict = s.env("carflow-hist-replay");
    strict.push(("CARFLOW_EVENTS_MIN_TIME", "2020-01-01T00:00:00Z".into()));
    let mut e = EngineProcess::start(&strict, s.logs.path(), "strict");
    s.wait_done(&mut [&mut e], Duration::from_secs(600)).await;
    assert!(e.stop(), "{}", e.log_tail());
    let ctx = lake_context(&s.lake.url).await;
    assert_eq!(scalar(&ctx, "SELECT count(*) FROM cars").await, n as i64);
    assert_eq!(
        scalar(&ctx, "SELECT count(*) FROM dead_letters").await,
        old as i64 + 1
    );

    // The rule is fixed (the default events.min_time, 2000): replay.
    let fixed = s.env("carflow-hist-replay");
    let dry = carflow_json(&fixed, &["dead-letters", "replay", "--dry-run"], 0);
    assert_eq!(dry["replayed"].as_array().unwrap().len(), old, "{dry}");

    // A replay that crashed: its intent names 10 messages, 4 of which reached Kafka.
    use carflow_engine::replay::{Origin, REPLAY_HEADER, ReplayLedger, ReplayRecord, header_value};
    let picked = query(
        &ctx,
        "SELECT \"partition\", \"offset\", payload FROM dead_letters \
         WHERE reason LIKE '%sold_at%' ORDER BY \"partition\", \"offset\" LIMIT 10",
    )
    .await;
    let b = &picked[0];
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::compute::cast;
    use datafusion::arrow::datatypes::{DataType, Int32Type, Int64Type};
    let (parts, offsets, payloads) = (
        cast(b.column(0), &DataType::Int32).unwrap(),
        cast(b.column(1), &DataType::Int64).unwrap(),
        cast(b.column(2), &DataType::Binary).unwrap(),
    );
    let origins: Vec<(Origin, Vec<u8>)> = (0..b.num_rows())
        .map(|i| {
            (
                Origin {
                    topic: s.topic.name.clone(),
                    partition: parts.as_primitive::<Int32Type>().value(i),
                    offset: offsets.as_primitive::<Int64Type>().value(i),
                },
                payloads.as_binary::<i32>().value(i).to_vec(),
            )
        })
        .collect();
    assert_eq!(origins.len(), 10);
    let ends = s.kafka.end_offsets(&s.topic.name);
    let crashed = ReplayRecord {
        run: "20260101T000000.000Z-crashed".into(),
        to_topic: s.topic.name.clone(),
        started_ms: chrono::Utc::now().timestamp_millis() - 3_600_000,
        start_offsets: ends
            .iter()
            .enumerate()
            .map(|(p, e)| (p as i32, *e))
            .collect(),
        produced: origins.iter().map(|(o, _)| o.clone()).collect(),
        still_failing: Vec::new(),
    };
    let location = carflow_engine::storage::Location::open(&s.lake.url).unwrap();
    ReplayLedger::new(location)
        .write_intent(&crashed)
        .await
        .unwrap();
    for (o, payload) in &origins[..4] {
        let hv = header_value(&crashed.run, o);
        let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
            key: REPLAY_HEADER,
            value: Some(hv.as_bytes()),
        });
        p.send(
            rdkafka::producer::FutureRecord::to(&s.topic.name)
                .key("replay")
                .payload(payload)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    let r = carflow_json(&fixed, &["dead-letters", "replay"], 0);
    let recovered = r["recovered"].as_array().unwrap();
    assert_eq!(recovered.len(), 1, "{r}");
    assert!(
        recovered[0]
            .as_str()
            .unwrap()
            .contains("4 of 10 message(s)"),
        "{r}"
    );
    assert_eq!(r["replayed"].as_array().unwrap().len(), old - 4, "{r}");
    assert_eq!(r["already_replayed"], 4, "{r}");
    let failing = r["still_failing"].as_array().unwrap();
    assert_eq!(failing.len(), 1, "{r}");
    assert!(failing[0][1].as_str().unwrap().contains("JSON"), "{r}");
    let mut e = EngineProcess::start(&fixed, s.logs.path(), "fixed");
    s.wait_done(&mut [&mut e], Duration::from_secs(600)).await;

    // Replaying again adds nothing.
    let again = carflow_json(&fixed, &["dead-letters", "replay"], 0);
    assert_eq!(again["replayed"].as_array().unwrap().len(), 0, "{again}");
    assert_eq!(again["already_replayed"], old, "{again}");
    s.wait_done(&mut [&mut e], Duration::from_secs(600)).await;
    assert!(e.stop(), "{}", e.log_tail());
    let ctx = lake_context(&s.lake.url).await;
    assert_lake_exact(&ctx, (n + old) as i64).await;
    let list = carflow_json(&fixed, &["dead-letters", "list"], 0);
    let status = |st: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .filter(|l| l["status"] == st)
            .count()
    };
    assert_eq!(status("replayed"), old, "{list}");
    assert_eq!(status("fails-again"), 1, "{list}");
}

/// A query JOINing the reference tables writes the points DataFusion computes over the lake
/// joined with the CSV files; an edited file applies from the next batch; a file that does not
/// parse is refused (named on /health) and the previous version stays in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_tables_join_and_reload_at_the_next_batch() {
    let s = setup_with("hist-ref", 3).await;
    let dir = tempfile::tempdir().unwrap();
    for f in ["cars.sql", "sales_by_region.sql"] {
        std::fs::copy(queries().join(f), dir.path().join(f)).unwrap();
    }
    let reference = tempfile::tempdir().unwrap();
    for f in ["dealers.csv", "vehicles.csv"] {
        std::fs::copy(reference_dir().join(f), reference.path().join(f)).unwrap();
    }
    let mut env = s.env_with_queries("carflow-hist-ref", dir.path());
    env.push((
        "CARFLOW_REFERENCE_DIR",
        reference.path().display().to_string(),
    ));
    let mut feed = Feed::new(&s.kafka, &s.topic.name, 156);
    let n1 = 8_000;
    feed.send(n1).await;
    let mut e = EngineProcess::start(&env, s.logs.path(), "ref");
    s.wait_done(&mut [&mut e], Duration::from_secs(600)).await;
    // Every point equals DataFusion over the lake joined with the CSV files.
    let ctx = lake_context_with(&s.lake.url, reference.path()).await;
    let expected = expected_points(&ctx, dir.path()).await;
    assert!(expected.len() > 100, "{} points", expected.len());
    assert_points_match(
        &expected,
        &s.db.points().await,
        "sales_by_region vs lake ⋈ CSV",
    );

    // Edit: every region renamed. The engine reads it at the next batch boundary.
    let dealers = reference.path().join("dealers.csv");
    let text = std::fs::read_to_string(&dealers).unwrap();
    let renamed: String = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                format!("{l}\n")
            } else {
                let mut c: Vec<String> = l.split(',').map(str::to_string).collect();
                c[1] = format!("{} (2027 map)", c[1]);
                format!("{}\n", c.join(","))
            }
        })
        .collect();
    write_file(&dealers, &renamed);
    common::kafka::wait_for(
        "the edited dealers.csv loaded",
        Duration::from_secs(60),
        || {
            let log = e.log_text();
            async move { log.matches("table=dealers").count() >= 2 }
        },
    )
    .await;
    let n2 = 6_000;
    feed.send(n2).await;
    s.wait_done(&mut [&mut e], Duration::from_secs(600)).await;
    let sales = |points: &Points, renamed: bool| -> i64 {
        points
            .iter()
            .filter(|((m, tags, _), _)| {
                m == "sales_by_region"
                    && tags
                        .iter()
                        .any(|(k, v)| k == "region" && v.ends_with("(2027 map)") == renamed)
            })
            .map(|(_, f)| f["sales"] as i64)
            .sum()
    };
    let points = s.db.points().await;
    assert_eq!(
        sales(&points, false),
        n1 as i64,
        "the first batches: old regions"
    );
    assert_eq!(
        sales(&points, true),
        n2 as i64,
        "after the edit: new regions"
    );

    // A file that does not parse: refused, named on /health, the previous version stays.
    write_file(
        &dealers,
        "dealer_id,region,division,segment\nD0001,West,Pacific,volume,extra,fields\n",
    );
    let engine = &e;
    common::kafka::wait_for(
        "the refusal on /health",
        Duration::from_secs(60),
        || async move { engine.health().await.to_string().contains("dealers.csv") },
    )
    .await;
    let n3 = 3_000;
    feed.send(n3).await;
    s.wait_done(&mut [&mut e], Duration::from_secs(600)).await;
    assert!(e.stop(), "{}", e.log_tail());
    let points = s.db.points().await;
    assert_eq!(sales(&points, false), n1 as i64);
    assert_eq!(
        sales(&points, true),
        (n2 + n3) as i64,
        "the refused edit changed nothing"
    );
}
