//! The `carflow` binary as a subprocess (`carflow run`), as users run it: configured by
//! environment variables, stopped with SIGTERM, or killed with SIGKILL for crash tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `carflow run`.
pub struct EngineProcess {
    child: Option<Child>,
    pub addr: String,
    env: Vec<(String, String)>,
    args: Vec<String>,
    pub log: PathBuf,
    http: reqwest::Client,
}

/// The `carflow` binary the tests run: `CARFLOW_TEST_BIN` when set (e.g. an older build, to show
/// that a new test fails on it), else the one cargo built with the tests.
pub fn carflow_bin() -> String {
    std::env::var("CARFLOW_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_carflow").to_string())
}

impl EngineProcess {
    /// Start `carflow run` with `env` (CARFLOW_* overrides); logs go to `log_dir`.
    pub fn start(env: &[(&str, String)], log_dir: &std::path::Path, name: &str) -> Self {
        Self::start_with_args(env, &[], log_dir, name)
    }

    /// [`EngineProcess::start`] with global arguments before `run` (e.g. `--config F`).
    pub fn start_with_args(
        env: &[(&str, String)],
        args: &[&str],
        log_dir: &std::path::Path,
        name: &str,
    ) -> Self {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let mut e = Self {
            child: None,
            addr: String::new(),
            env,
            args: args.iter().map(|a| a.to_string()).collect(),
            log: log_dir.join(format!("{name}.log")),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        };
        e.spawn(name);
        e
    }

    fn spawn(&mut self, name: &str) {
        self.addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(carflow_bin())
            .args(&self.args)
            .args(["run", "--engine-id", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .envs(self.env.iter().cloned())
            .env("CARFLOW_HTTP_LISTEN", &self.addr)
            .env("CARFLOW_LOG", "info")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start carflow run");
        self.child = Some(child);
    }

    /// The `/health` document (null when the engine does not answer).
    pub async fn health(&self) -> serde_json::Value {
        match self
            .http
            .get(format!("http://{}/health", self.addr))
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        }
    }

    /// Next offsets per `topic/partition` this engine has fully processed, from `/health`.
    pub async fn processed(&self) -> BTreeMap<String, i64> {
        let v = self.health().await;
        let m = v["processed"].as_object().cloned().unwrap_or_default();
        m.into_iter()
            .map(|(k, v)| (k, v.as_i64().unwrap_or(0)))
            .collect()
    }

    /// Partitions this engine owns now, from `/health`.
    pub async fn owned(&self) -> Vec<String> {
        let v = self.health().await;
        let a = v["owned"].as_array().cloned().unwrap_or_default();
        a.iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect()
    }

    /// One counter or gauge from `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    /// Prometheus text from `/metrics`.
    pub async fn metrics(&self) -> String {
        match self
            .http
            .get(format!("http://{}/metrics", self.addr))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the process freezes (a zombie in the making), its sockets stay open.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`EngineProcess::pause`].
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([&format!("-{sig}"), &c.id().to_string()])
                .status();
        }
    }

    /// The process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Exit status if the process has ended (it is reaped).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Start again with the same configuration.
    pub fn restart(&mut self, name: &str) {
        self.kill9();
        self.spawn(name);
    }

    /// SIGTERM, then wait (up to 30 s) for a clean exit; returns the exit status success.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        for _ in 0..300 {
            if let Ok(Some(s)) = c.try_wait() {
                return s.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        false
    }

    /// The log so far (for failure messages).
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
