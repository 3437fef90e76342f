//! The real services the tests run against, one helper each: connect (or say in one line how to
//! start the service), wait until ready, and give every test its own topic / HDFS directory /
//! database, cleaned up on drop.

use std::sync::Arc;
use std::time::Duration;

use carflow_engine::storage::Location;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;

use super::kafka::block_on_thread;
pub use super::kafka::env_or;
#[allow(unused_imports)]
pub use super::kafka::{Kafka, Topic, unique, wait_for};

/// HDFS (a MiniDFSCluster namenode).
#[derive(Clone)]
pub struct Hdfs {
    pub url: String,
}

impl Hdfs {
    /// The namenode of `CARFLOW_HDFS_URL` (default hdfs://127.0.0.1:9000), reachable.
    pub async fn get() -> Self {
        let url = env_or("CARFLOW_HDFS_URL", "hdfs://127.0.0.1:9000");
        let loc = Location::open(&format!("{url}/")).unwrap();
        let probe =
            tokio::time::timeout(Duration::from_secs(10), loc.store.list_with_delimiter(None))
                .await;
        match probe {
            Ok(Ok(_)) => Self { url },
            Ok(Err(e)) => panic!(
                "HDFS is not reachable at {url} ({e}): start it with deploy/services.sh up hdfs"
            ),
            Err(_) => panic!(
                "HDFS at {url} did not answer in 10s: start it with deploy/services.sh up hdfs"
            ),
        }
    }

    /// A new directory under /carflow-tests, removed when dropped.
    pub fn dir(&self, prefix: &str) -> HdfsDir {
        HdfsDir {
            url: format!("{}/carflow-tests/{}", self.url, unique(prefix)),
        }
    }
}

/// A test directory on HDFS.
pub struct HdfsDir {
    pub url: String,
}

impl HdfsDir {
    /// Every file and directory below `rel` (recursively, through WebHDFS, which also shows
    /// empty directories); empty when `rel` does not exist.
    pub async fn children(&self, rel: &str) -> Vec<String> {
        let http = env_or("CARFLOW_HDFS_HTTP_URL", "http://127.0.0.1:9870");
        let path = self
            .url
            .trim_start_matches("hdfs://")
            .split_once('/')
            .map_or(String::new(), |(_, p)| p.to_string());
        let client = reqwest::Client::new();
        let mut out = Vec::new();
        let mut todo = vec![format!("/{path}/{rel}")];
        while let Some(dir) = todo.pop() {
            let r = client
                .get(format!("{http}/webhdfs/v1{dir}?op=LISTSTATUS"))
                .send()
                .await
                .unwrap();
            if r.status() == reqwest::StatusCode::NOT_FOUND {
                continue;
            }
            let v: serde_json::Value = r.json().await.unwrap();
            for f in v["FileStatuses"]["FileStatus"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let child = format!("{dir}/{}", f["pathSuffix"].as_str().unwrap_or_default());
                if f["type"] == "DIRECTORY" {
                    todo.push(child.clone());
                }
                out.push(child);
            }
        }
        out
    }
}

impl Drop for HdfsDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failed test's lake stays, to be read: `carflow sql --lake <url>`.
            eprintln!("lake of the failed test kept at {}", self.url);
            return;
        }
        let url = self.url.clone();
        block_on_thread(async move {
            let Ok(loc) = Location::open(&url) else {
                return;
            };
            let files: Vec<_> = loc
                .store
                .list(Some(&loc.prefix))
                .try_collect()
                .await
                .unwrap_or_default();
            for f in files {
                let _ = loc.store.delete(&f.location).await;
            }
        });
    }
}

/// InfluxDB 1.8.
#[derive(Clone)]
pub struct Influx {
    pub url: String,
    http: reqwest::Client,
}

impl Influx {
    /// The server of `CARFLOW_INFLUX_URL` (default http://127.0.0.1:8086), reachable.
    pub async fn get() -> Self {
        let url = env_or("CARFLOW_INFLUX_URL", "http://127.0.0.1:8086");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        match http.get(format!("{url}/ping")).send().await {
            Ok(r) if r.status().is_success() => Self { url, http },
            other => panic!(
                "InfluxDB is not reachable at {url} ({other:?}): start it with deploy/services.sh up influxdb"
            ),
        }
    }

    /// A new database, dropped when the guard is dropped.
    pub async fn database(&self, prefix: &str) -> InfluxDb {
        let name = unique(prefix).replace('-', "_");
        self.influxql(&name, &format!("CREATE DATABASE \"{name}\""))
            .await;
        InfluxDb {
            name,
            influx: self.clone(),
        }
    }

    /// Run InfluxQL (POST /query) and return the JSON answer.
    pub async fn influxql(&self, db: &str, q: &str) -> serde_json::Value {
        let r = self
            .http
            .post(format!("{}/query", self.url))
            .query(&[("db", db), ("epoch", "ms"), ("q", q)])
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{q}: HTTP {}", r.status());
        let v: serde_json::Value = r.json().await.unwrap();
        if let Some(e) = v["results"][0]["error"].as_str() {
            panic!("{q}: {e}");
        }
        v
    }
}

/// A test database.
pub struct InfluxDb {
    pub name: String,
    influx: Influx,
}

/// The first column of an InfluxQL answer's first series (e.g. SHOW MEASUREMENTS), as strings.
fn first_column(answer: &serde_json::Value) -> Vec<String> {
    answer["results"][0]["series"][0]["values"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|x| x[0].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

impl InfluxDb {
    /// Every point of every measurement except `carflow_engine`, as parsed points.
    pub async fn points(&self) -> super::verify::Points {
        let mut out = super::verify::Points::new();
        let ms = self.influx.influxql(&self.name, "SHOW MEASUREMENTS").await;
        let names = first_column(&ms);
        for m in names.into_iter().filter(|m| m != "carflow_engine") {
            let tags = self
                .influx
                .influxql(&self.name, &format!("SHOW TAG KEYS FROM \"{m}\""))
                .await;
            let tag_keys = first_column(&tags);
            let v = self
                .influx
                .influxql(&self.name, &format!("SELECT * FROM \"{m}\""))
                .await;
            let series = &v["results"][0]["series"][0];
            let cols: Vec<String> = series["columns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_string())
                .collect();
            for row in series["values"].as_array().unwrap() {
                let time = row[0].as_i64().unwrap();
                let mut tags = Vec::new();
                let mut fields = super::verify::Fields::new();
                for (c, val) in cols.iter().zip(row.as_array().unwrap()).skip(1) {
                    if val.is_null() {
                        continue;
                    }
                    if tag_keys.contains(c) {
                        tags.push((c.clone(), val.as_str().unwrap().to_string()));
                    } else if let Some(v) = val.as_f64() {
                        // String fields (not written by carflow) are left out.
                        fields.insert(c.clone(), v);
                    }
                }
                tags.sort();
                out.insert((m.clone(), tags, time), fields);
            }
        }
        out
    }
}

impl Drop for InfluxDb {
    fn drop(&mut self) {
        let (db, influx) = (self.name.clone(), self.influx.clone());
        block_on_thread(async move {
            let drop_db = [("q", format!("DROP DATABASE \"{db}\""))];
            let _ = influx
                .http
                .post(format!("{}/query", influx.url))
                .query(&drop_db)
                .send()
                .await;
        });
    }
}

/// Keep `Arc` in use for helpers that share a client.
pub type Shared<T> = Arc<T>;
