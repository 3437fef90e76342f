//! Where the lake lives: a root URL turned into an object store and a path prefix.
//!
//! `hdfs://host:port/path` is HDFS through hdfs-native-object-store (pure Rust, no JVM or
//! libhdfs); `file:///abs/path`, `file://./relative` and plain paths are the local file system.
//! The same [`Location`] serves the lake sink and `carflow sql`, so what the engine writes is
//! what the CLI reads.

use std::path::PathBuf;
use std::sync::Arc;

use hdfs_native_object_store::HdfsObjectStoreBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use url::Url;

/// Errors in opening a storage root.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The root is not a URL or path carflow understands.
    #[error("lake root `{root}`: {reason}")]
    BadRoot {
        /// The root as given.
        root: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// The object store refused to open.
    #[error("lake root `{root}`: {source}")]
    Open {
        /// The root as given.
        root: String,
        /// The store's error.
        source: object_store::Error,
    },
    /// A local directory could not be created.
    #[error("lake root `{root}`: cannot create directory: {source}")]
    Io {
        /// The root as given.
        root: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// An opened storage root.
#[derive(Debug, Clone)]
pub struct Location {
    /// The root as a normalized URL (`file:///abs/path` or `hdfs://host:port/path`).
    pub url: Url,
    /// The URL of the store itself (scheme and authority), as DataFusion registers stores.
    pub store_url: Url,
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The root's path inside the store.
    pub prefix: Path,
    /// True for the local file system (directories are real and must be removed by hand).
    pub local: bool,
}

impl Location {
    /// Open `root`: `hdfs://host:port/path`, `file:///abs`, `file://./rel`, or a plain path.
    pub fn open(root: &str) -> Result<Self, StorageError> {
        let bad = |reason: &str| StorageError::BadRoot {
            root: root.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = root.strip_prefix("hdfs://") {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            if authority.is_empty() {
                return Err(bad(
                    "an HDFS root needs a namenode: hdfs://127.0.0.1:9000/Cars",
                ));
            }
            let store_url = Url::parse(&format!("hdfs://{authority}"))
                .map_err(|e| bad(&format!("not a URL ({e}); write hdfs://host:port/path")))?;
            let store = HdfsObjectStoreBuilder::new()
                .with_url(store_url.as_str())
                .build()
                .map_err(|source| StorageError::Open {
                    root: root.to_string(),
                    source,
                })?;
            let prefix = Path::from(path.trim_matches('/'));
            let url = Url::parse(&format!("hdfs://{authority}/{prefix}"))
                .map_err(|e| bad(&e.to_string()))?;
            return Ok(Self {
                url,
                store_url,
                store: Arc::new(store),
                prefix,
                local: false,
            });
        }
        let local = match root.strip_prefix("file://") {
            Some(p) => PathBuf::from(p),
            None if root.contains("://") => {
                return Err(bad(
                    "unsupported scheme; use hdfs://host:port/path, file:///path or a plain path",
                ));
            }
            None => PathBuf::from(root),
        };
        std::fs::create_dir_all(&local).map_err(|source| StorageError::Io {
            root: root.to_string(),
            source,
        })?;
        let abs = std::fs::canonicalize(&local).map_err(|source| StorageError::Io {
            root: root.to_string(),
            source,
        })?;
        let url = Url::from_directory_path(&abs).map_err(|()| bad("not an absolute path"))?;
        let prefix = Path::from_absolute_path(&abs).map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            url,
            store_url: Url::parse("file:///").map_err(|e| bad(&e.to_string()))?,
            store: Arc::new(LocalFileSystem::new()),
            prefix,
            local: true,
        })
    }

    /// The path of `parts` below the root.
    pub fn path(&self, parts: &[&str]) -> Path {
        let mut p = self.prefix.clone();
        for part in parts {
            for seg in part.split('/').filter(|s| !s.is_empty()) {
                p = p.join(seg);
            }
        }
        p
    }

    /// The local file system path of a store path (meaningful for local lakes only).
    pub fn local_path(&self, p: &str) -> PathBuf {
        PathBuf::from("/").join(p)
    }

    /// Remove the directory `dir` if it is empty (an error otherwise, or when it does not exist).
    /// Object stores have no directories, but HDFS and local disks do, and a commit's staging
    /// directory must not outlive it.
    pub async fn delete_dir(&self, dir: &Path) -> Result<(), object_store::Error> {
        if self.local {
            let fs = self.local_path(dir.as_ref());
            tokio::fs::remove_dir(&fs)
                .await
                .map_err(|source| object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(source),
                })
        } else {
            // HDFS: a non-recursive delete, which refuses a directory that is not empty.
            self.store.delete(dir).await
        }
    }

    /// The URL of a directory below the root, with a trailing slash (as listing tables want).
    pub fn dir_url(&self, dir: &str) -> String {
        let base = self.url.as_str().trim_end_matches('/');
        format!("{base}/{}/", dir.trim_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_roots_are_normalized_and_created() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("lake");
        let loc = Location::open(&format!("file://{}", root.display())).unwrap();
        assert!(root.is_dir());
        assert_eq!(loc.url.scheme(), "file");
        assert!(loc.dir_url("cars").ends_with("/lake/cars/"));
        assert_eq!(
            loc.path(&["cars", "dt=2026-01-01/x.parquet"]).as_ref(),
            format!("{}/cars/dt=2026-01-01/x.parquet", loc.prefix.as_ref())
        );
    }

    #[test]
    fn unknown_schemes_are_refused_with_the_fix() {
        let err = Location::open("s3://bucket/lake").unwrap_err().to_string();
        assert!(err.contains("hdfs://host:port/path"), "{err}");
    }

    #[test]
    fn hdfs_roots_keep_their_authority() {
        let loc = Location::open("hdfs://127.0.0.1:9000/Cars").unwrap();
        assert_eq!(loc.store_url.as_str(), "hdfs://127.0.0.1:9000");
        assert_eq!(loc.prefix.as_ref(), "Cars");
        assert_eq!(loc.dir_url("cars"), "hdfs://127.0.0.1:9000/Cars/cars/");
    }
}
