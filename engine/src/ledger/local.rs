//! Renames on a local lake, where stock readers (DuckDB, datafusion-cli) list directories with
//! no knowledge of the ledger.
//!
//! A merge must make its merged file appear and its sources disappear in one step, or a reader
//! listing the directory in between counts rows twice (or misses them). Local file systems have
//! that step for directories: `renameat2(…, RENAME_EXCHANGE)` swaps two paths atomically. So the
//! directory is rebuilt beside the lake (hard links to every file it keeps, plus the merged
//! file) and exchanged with the live one. A file renamed into the directory while it is rebuilt
//! would be left behind in the old copy, so every rename into a dataset (commits, roll-forwards,
//! merges) holds the dataset's lock: an exclusive `flock` on `_carflow/locks/<dataset>.lock`,
//! which the kernel releases when its process dies, so a `kill -9` leaves no stale lock.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock of a dataset, held until dropped.
pub struct DatasetLock {
    _file: File,
}

/// Take the lock of the dataset that `visible` (an absolute path inside `root`) belongs to.
pub fn lock(root: &Path, visible: &Path) -> io::Result<DatasetLock> {
    let dataset = visible
        .strip_prefix(root)
        .ok()
        .and_then(|rel| rel.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_else(|| "_outside".into());
    let dir = root.join("_carflow/locks");
    std::fs::create_dir_all(&dir)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!("{dataset}.lock")))?;
    loop {
        // SAFETY: flock on a descriptor this function owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(DatasetLock { _file: file });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Rename `from` to `to` (creating `to`'s directory), holding the dataset's lock. A rename
/// already done (no `from`, `to` there) is fine.
pub fn rename_locked(root: &Path, from: &Path, to: &Path) -> io::Result<()> {
    let _lock = lock(root, to)?;
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && to.exists() => Ok(()),
        other => other,
    }
}

/// Exchange two paths atomically.
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths; renameat2 does not keep them.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Make `merged` visible at `visible` and remove `replaces` (names in the same directory) in one
/// step for readers. Idempotent: a merge already done leaves nothing to do.
///
/// When the directory holds anything but files, or the file system cannot exchange, it falls
/// back to rename-then-delete (carflow's readers stay exact; a stock reader could see the
/// sources and the merged file together for that moment) and says so in the log.
pub fn swap_in(root: &Path, staged: &Path, visible: &Path, replaces: &[String]) -> io::Result<()> {
    let Some(dir) = visible.parent() else {
        return Err(io::Error::other("a merged file needs a directory"));
    };
    let Some(name) = visible.file_name() else {
        return Err(io::Error::other("a merged file needs a name"));
    };
    let _lock = lock(root, visible)?;
    let staged_there = staged.exists();
    let leftovers: Vec<&String> = replaces.iter().filter(|r| dir.join(r).exists()).collect();
    if !staged_there && leftovers.is_empty() {
        return Ok(());
    }
    if !staged_there && !visible.exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "merged file {} is neither staged nor visible",
                staged.display()
            ),
        ));
    }
    std::fs::create_dir_all(dir)?;
    let swaps = root.join("_carflow/swap");
    // Rebuilt copies of earlier merges that died before their exchange: only hard links.
    if let Ok(old) = std::fs::read_dir(&swaps) {
        for e in old.flatten() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let fresh: PathBuf = swaps.join(uuid::Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(&fresh)?;
    let built = (|| -> io::Result<bool> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if !e.file_type()?.is_file() {
                return Ok(false);
            }
            let n = e.file_name();
            if replaces.iter().any(|r| n.as_os_str() == r.as_str()) || n.as_os_str() == name {
                continue;
            }
            std::fs::hard_link(e.path(), fresh.join(&n))?;
        }
        let from = if staged_there { staged } else { visible };
        std::fs::hard_link(from, fresh.join(name))?;
        Ok(true)
    })();
    let swapped = match built {
        Ok(true) => match exchange(&fresh, dir) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e,
                    "cannot exchange directories here; merging by rename, then delete");
                false
            }
        },
        Ok(false) => {
            tracing::warn!(dir = %dir.display(),
                "the directory holds more than files; merging by rename, then delete");
            false
        }
        Err(e) => {
            // E.g. a file system without hard links: the exchange cannot be prepared.
            tracing::warn!(dir = %dir.display(), error = %e,
                "cannot rebuild the directory beside it; merging by rename, then delete");
            false
        }
    };
    if swapped {
        // `fresh` now holds the directory as it was.
        std::fs::remove_dir_all(&fresh)?;
        if staged_there {
            std::fs::remove_file(staged)?;
        }
    } else {
        std::fs::remove_dir_all(&fresh)?;
        if staged_there {
            std::fs::rename(staged, visible)?;
        }
        for r in replaces {
            match std::fs::remove_file(dir.join(r)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_swap_shows_the_merged_file_and_hides_its_sources_at_once_and_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let dir = root.join("cars/dt=2026-01-01");
        std::fs::create_dir_all(&dir).unwrap();
        for n in ["a.parquet", "b.parquet", "keep.parquet"] {
            std::fs::write(dir.join(n), n).unwrap();
        }
        let staging = root.join("_carflow/staging/x");
        std::fs::create_dir_all(&staging).unwrap();
        let staged = staging.join("c00000.parquet");
        std::fs::write(&staged, "merged").unwrap();
        let visible = dir.join("ab.parquet");
        let replaces = vec!["a.parquet".to_string(), "b.parquet".to_string()];
        swap_in(root, &staged, &visible, &replaces).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["ab.parquet", "keep.parquet"]);
        assert_eq!(std::fs::read_to_string(&visible).unwrap(), "merged");
        assert!(!staged.exists());
        // Rolled forward again (a reader, a new owner): nothing changes.
        swap_in(root, &staged, &visible, &replaces).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        assert_eq!(
            std::fs::read_dir(root.join("_carflow/swap"))
                .unwrap()
                .count(),
            0
        );
        // Neither staged nor visible: an error, not a silent loss.
        let gone = dir.join("gone.parquet");
        assert!(swap_in(root, &staged, &gone, &["keep.parquet".into()]).is_err());
    }

    #[test]
    fn renames_create_directories_and_accept_a_rename_already_done() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let from = root.join("staged.parquet");
        std::fs::write(&from, "x").unwrap();
        let to = root.join("cars/dt=2026-01-01/f.parquet");
        rename_locked(root, &from, &to).unwrap();
        rename_locked(root, &from, &to).unwrap();
        assert!(to.exists());
        assert!(rename_locked(root, &from, &root.join("cars/other.parquet")).is_err());
    }
}
