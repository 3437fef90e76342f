#![cfg(feature = "services")]
//! Tests that stop and start the SHARED services (a Kafka broker restart, HDFS safe mode). They
//! are `#[ignore]`d so the parallel suite never sees a service go away under it; `deploy/test.sh`
//! runs them alone, one at a time, after everything else.

mod common;

use std::process::Command;
use std::time::Duration;

use common::engine::EngineProcess;
use common::services::*;
use common::setup::*;

fn services(args: &[&str]) {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(repo.join("deploy/services.sh"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "services.sh {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Item 1 of the stays-up issue: the broker goes away for 15 s in the middle of a run; the engine
/// keeps running, reports the trouble, and the run ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the shared Kafka broker: run alone (deploy/test.sh does)"]
async fn the_engine_rides_out_a_kafka_broker_restart() {
    let s = setup("brokerrestart").await;
    let n = 60_000;
    produce(&s.kafka, &s.topic.name, 151, n, &[]).await;
    let mut env = s.env("carflow-brokerrestart");
    set_env(&mut env, "CARFLOW_BATCH_MAX_ROWS", "2000".into());
    let mut e = EngineProcess::start(&env, s.logs.path(), "brokerrestart");
    wait_for("some progress", Duration::from_secs(120), || {
        let e = &e;
        async move { e.processed().await.values().sum::<i64>() > 5_000 }
    })
    .await;
    services(&["down", "kafka"]);
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(e.is_running(), "the engine exited:\n{}", e.log_tail());
    services(&["up", "kafka"]);
    s.wait_done(&mut [&mut e], Duration::from_secs(600)).await;
    assert!(e.stop(), "{}", e.log_tail());
    s.check(n as i64, 0).await;
}

fn safe_mode(on: bool) {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cp = Command::new(repo.join("deploy/services.sh"))
        .args(["classpath", "hdfs"])
        .output()
        .unwrap();
    let cp = String::from_utf8_lossy(&cp.stdout).trim().to_string();
    let url = env_or("CARFLOW_HDFS_URL", "hdfs://127.0.0.1:9000");
    let out = Command::new("java")
        .args(["-cp", &cp, "org.apache.hadoop.hdfs.tools.DFSAdmin"])
        .args(["-fs", &url, "-safemode", if on { "enter" } else { "leave" }])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "safemode: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Item 4 of the stays-up issue: HDFS in safe mode (read-only) shows as degraded within 30 s;
/// the engine resumes on its own when safe mode ends, and the run is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "puts the shared HDFS in safe mode: run alone (deploy/test.sh does)"]
async fn hdfs_safe_mode_shows_in_health_and_the_engine_resumes_after_it() {
    let s = setup_with("safemode", 2).await;
    let n = 20_000;
    produce(&s.kafka, &s.topic.name, 161, n, &[]).await;
    let mut env = s.env("carflow-safemode");
    set_env(&mut env, "CARFLOW_BATCH_MAX_ROWS", "1000".into());
    let mut e = EngineProcess::start(&env, s.logs.path(), "safemode");
    wait_for("some progress", Duration::from_secs(120), || {
        let e = &e;
        async move { e.processed().await.values().sum::<i64>() > 2_000 }
    })
    .await;
    safe_mode(true);
    let result = std::panic::AssertUnwindSafe(async {
        wait_for(
            "/health to say the lake is degraded",
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
    });
    let outcome = futures::FutureExt::catch_unwind(result).await;
    safe_mode(false);
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
    s.wait_done(&mut [&mut e], Duration::from_secs(600)).await;
    assert!(e.stop(), "{}", e.log_tail());
    s.check(n as i64, 0).await;
}
