//! The Influx sink: line protocol to InfluxDB's `/api/v2/write` (through the `influxdb2` crate)
//! or, in embedded mode, appended to a `.lp` file.
//!
//! Points of a window are rewritten whole after every batch that touches it; InfluxDB keeps the
//! last write of a (series, timestamp), so the stored point is the full aggregate. The `.lp` file
//! is the same stream: the last line of a (series, timestamp) wins when it is replayed into
//! InfluxDB. Requests are bounded in lines; a server that is down or slow makes the pipeline wait
//! and retry (nothing is committed meanwhile), while a request InfluxDB rejects as bad (HTTP 400,
//! e.g. a field type conflict) is logged and counted, not retried forever.

use std::path::PathBuf;
use std::time::Duration;

use influxdb2::api::write::TimestampPrecision;
use tokio::io::AsyncWriteExt;

use crate::retry::Transient;

/// Lines per HTTP request.
pub const LINES_PER_REQUEST: usize = 5_000;

/// Errors of the Influx sink.
#[derive(Debug, thiserror::Error)]
pub enum InfluxError {
    /// The server could not be reached or failed; retried.
    #[error("influxdb {url}: {message}")]
    Unavailable {
        /// Server.
        url: String,
        /// What happened.
        message: String,
    },
    /// The server refused the points as bad data; not retried.
    #[error("influxdb {url} rejected the points (HTTP {status}): {message}")]
    Rejected {
        /// Server.
        url: String,
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The line-protocol file could not be written; retried.
    #[error("line-protocol file {path}: {source}")]
    File {
        /// File.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// The configuration cannot work.
    #[error("influx sink: {0}")]
    Config(String),
}

impl Transient for InfluxError {
    fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::File { .. })
    }
}

/// Where points go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfluxTarget {
    /// Append to a line-protocol file (embedded mode).
    File(PathBuf),
    /// An InfluxDB server (1.8 with the 2.x compatibility API, or 2.x).
    Http {
        /// Base URL, e.g. `http://127.0.0.1:8086`.
        url: String,
        /// Organization (ignored by 1.8).
        org: String,
        /// Bucket (`db` or `db/rp` on 1.8).
        bucket: String,
        /// Token (`user:password` on 1.8; empty when auth is off).
        token: String,
        /// Request timeout.
        timeout: Duration,
    },
}

impl InfluxTarget {
    /// Where `[influx]` sends points: the server when `url` is set, else the file.
    pub fn from_config(c: &crate::config::InfluxConfig) -> Self {
        if c.url.is_empty() {
            Self::File(c.file.clone())
        } else {
            Self::Http {
                url: c.url.clone(),
                org: c.org.clone(),
                bucket: c.bucket.clone(),
                token: c.token.0.clone(),
                timeout: c.timeout.0,
            }
        }
    }
}

/// Writes line protocol to its target.
pub struct InfluxSink {
    target: InfluxTarget,
    client: Option<influxdb2::Client>,
}

impl std::fmt::Debug for InfluxSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            InfluxTarget::File(p) => write!(f, "InfluxSink(file {})", p.display()),
            InfluxTarget::Http { url, bucket, .. } => {
                write!(f, "InfluxSink({url}, bucket {bucket}, token redacted)")
            }
        }
    }
}

impl InfluxSink {
    /// A sink for `target`. A bad URL is refused here rather than at the first write.
    pub fn new(target: InfluxTarget) -> Result<Self, InfluxError> {
        let client = match &target {
            InfluxTarget::File(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| InfluxError::File {
                        path: path.clone(),
                        source,
                    })?;
                }
                None
            }
            InfluxTarget::Http {
                url,
                org,
                token,
                timeout,
                ..
            } => {
                url::Url::parse(url).map_err(|e| {
                    InfluxError::Config(format!(
                        "url `{url}` is not a URL ({e}); e.g. http://127.0.0.1:8086"
                    ))
                })?;
                let http = reqwest::ClientBuilder::new()
                    .timeout(*timeout)
                    .connect_timeout(Duration::from_secs(5));
                let client = influxdb2::ClientBuilder::with_builder(http, url, org, token)
                    .build()
                    .map_err(|e| InfluxError::Config(e.to_string()))?;
                Some(client)
            }
        };
        Ok(Self { target, client })
    }

    /// Where points go.
    pub fn target(&self) -> &InfluxTarget {
        &self.target
    }

    /// Write `body` (complete lines) once; the caller retries transient errors.
    ///
    /// The body goes in chunks of [`LINES_PER_REQUEST`] lines. A chunk InfluxDB refuses in part
    /// or in whole as bad data (HTTP 400/422: a field type conflict, a line it cannot parse) does
    /// not stop the others: InfluxDB 1.8 writes the good points of a chunk and names the dropped
    /// ones, which are counted in the report. A chunk too large for the server (413) is split in
    /// halves until it passes. 401/403 are configuration errors ([`InfluxError::Config`]): no
    /// retry helps.
    pub async fn write(&self, body: &str) -> Result<WriteReport, InfluxError> {
        let mut report = WriteReport::default();
        if body.is_empty() {
            return Ok(report);
        }
        match (&self.target, &self.client) {
            (InfluxTarget::File(path), _) => append(path, body).await.map(|()| report),
            (
                InfluxTarget::Http {
                    url, org, bucket, ..
                },
                Some(client),
            ) => {
                let mut todo: Vec<&str> = chunks(body, LINES_PER_REQUEST).collect();
                todo.reverse();
                while let Some(chunk) = todo.pop() {
                    let sent = client
                        .write_line_protocol_with_precision(
                            org,
                            bucket,
                            chunk.to_string(),
                            TimestampPrecision::Milliseconds,
                        )
                        .await
                        .map_err(|e| classify(url, e));
                    match sent {
                        Ok(()) => {}
                        Err(InfluxError::Rejected {
                            status: 413,
                            message,
                            ..
                        }) => {
                            let lines = chunk.lines().count();
                            if lines <= 1 {
                                report.rejected_points += 1;
                                report.reasons.push(format!("a point too large: {message}"));
                            } else {
                                let half: Vec<&str> = chunks(chunk, lines.div_ceil(2)).collect();
                                todo.extend(half.into_iter().rev());
                            }
                        }
                        Err(InfluxError::Rejected { message, .. }) => {
                            report.rejected_points += dropped_points(&message, chunk);
                            report.reasons.push(message);
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(report)
            }
            (InfluxTarget::Http { .. }, None) => {
                Err(InfluxError::Config("client not built".into()))
            }
        }
    }

    /// Is the target reachable? (`/health` of the server; the file's directory for a file.)
    pub async fn health(&self) -> Result<(), InfluxError> {
        match (&self.target, &self.client) {
            (InfluxTarget::File(_), _) => Ok(()),
            (InfluxTarget::Http { url, .. }, Some(client)) => client
                .health()
                .await
                .map(|_| ())
                .map_err(|e| classify(url, e)),
            (InfluxTarget::Http { .. }, None) => {
                Err(InfluxError::Config("client not built".into()))
            }
        }
    }
}

/// What a write did beyond succeeding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// Points InfluxDB refused as bad data (the others of their request were written).
    pub rejected_points: usize,
    /// InfluxDB's messages for the refusals.
    pub reasons: Vec<String>,
}

/// How many points of `chunk` a refusal dropped: InfluxDB 1.8 says `dropped=N` for a partial
/// write and names each line it cannot parse; otherwise the whole chunk counts.
fn dropped_points(message: &str, chunk: &str) -> usize {
    if let Some(n) = message
        .rsplit("dropped=")
        .next()
        .filter(|_| message.contains("dropped="))
        .and_then(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse::<usize>()
                .ok()
        })
    {
        return n;
    }
    let unparsable = message.matches("unable to parse").count();
    if unparsable > 0 {
        return unparsable;
    }
    chunk.lines().count()
}

fn classify(url: &str, e: influxdb2::RequestError) -> InfluxError {
    match e {
        influxdb2::RequestError::Http { status, text } if matches!(status.as_u16(), 401 | 403) => {
            InfluxError::Config(format!(
                "{url} refused the credentials (HTTP {status}: {}): set influx.token \
                 (CARFLOW_INFLUX_TOKEN) to `user:password` for InfluxDB 1.8 with auth, or an API \
                 token with write access to influx.bucket for 2.x",
                text.trim()
            ))
        }
        influxdb2::RequestError::Http { status, text }
            if matches!(status.as_u16(), 400 | 413 | 422) =>
        {
            InfluxError::Rejected {
                url: url.to_string(),
                status: status.as_u16(),
                message: text,
            }
        }
        influxdb2::RequestError::Http { status, text }
            if status.as_u16() == 404 && text.contains("database not found") =>
        {
            // Retried like an outage (an operator may create it; nothing is lost meanwhile), with
            // the fix in the message that /health and the log show.
            InfluxError::Unavailable {
                url: url.to_string(),
                message: format!(
                    "{} — influx.bucket names a database that does not exist: create it \
                     (InfluxQL `CREATE DATABASE <name>`) or set influx.bucket; carflow retries until then",
                    text.trim()
                ),
            }
        }
        other => InfluxError::Unavailable {
            url: url.to_string(),
            message: other.to_string(),
        },
    }
}

async fn append(path: &PathBuf, body: &str) -> Result<(), InfluxError> {
    let err = |source| InfluxError::File {
        path: path.clone(),
        source,
    };
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(err)?;
    f.write_all(body.as_bytes()).await.map_err(err)?;
    f.sync_data().await.map_err(err)?;
    Ok(())
}

/// Split `body` into pieces of at most `lines` complete lines.
pub fn chunks(body: &str, lines: usize) -> impl Iterator<Item = &str> {
    let mut rest = body;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = rest
            .match_indices('\n')
            .nth(lines.saturating_sub(1))
            .map_or(rest.len(), |(i, _)| i + 1);
        let (head, tail) = rest.split_at(cut);
        rest = tail;
        Some(head)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_split_on_whole_lines() {
        let body = "a 1\nb 2\nc 3\n";
        assert_eq!(
            chunks(body, 2).collect::<Vec<_>>(),
            vec!["a 1\nb 2\n", "c 3\n"]
        );
        assert_eq!(chunks(body, 10).collect::<Vec<_>>(), vec![body]);
        assert_eq!(chunks("", 2).count(), 0);
    }

    #[tokio::test]
    async fn the_file_target_appends_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("sub/metrics.lp");
        let sink = InfluxSink::new(InfluxTarget::File(path.clone())).unwrap();
        sink.write("m v=1i 1\n").await.unwrap();
        sink.write("m v=2i 1\n").await.unwrap();
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            "m v=1i 1\nm v=2i 1\n"
        );
    }

    #[test]
    fn a_bad_url_is_refused_with_an_example() {
        let err = InfluxSink::new(InfluxTarget::Http {
            url: "localhost 8086".into(),
            org: String::new(),
            bucket: "carflow".into(),
            token: String::new(),
            timeout: Duration::from_secs(1),
        })
        .unwrap_err();
        assert!(err.to_string().contains("http://127.0.0.1:8086"), "{err}");
    }
}
