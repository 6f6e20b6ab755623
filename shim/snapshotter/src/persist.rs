//! Crash-safe persistence of one JSON file: write a temporary file beside it, fsync it,
//! rename it over the old one, fsync the directory. A crash at any point leaves either
//! the old or the new file, never a mix; leftover temporary files are removed on load.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Suffix of temporary files (`<file>.tmp.<pid>.<n>`).
const TMP_MARK: &str = ".tmp.";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `path` atomically (see the module doc). The file gets mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = parent_dir(path);
    let tmp = tmp_path(path, COUNTER.fetch_add(1, Ordering::Relaxed));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        file.write_all(bytes).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        fs::rename(&tmp, path).map_err(io_err(path))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&dir))
    })();
    if result.is_err() {
        // Best effort: the temporary file may or may not exist at this point.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads `path`; `None` when it does not exist. Removes leftover temporary files of
/// `path` (from a crash during [`write_atomic`]).
pub fn read(path: &Path) -> Result<Option<Vec<u8>>> {
    remove_stale_tmp(path)?;
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Removes `<path>.tmp.*` files left by an interrupted write.
pub fn remove_stale_tmp(path: &Path) -> Result<()> {
    let dir = parent_dir(path);
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(());
    };
    let prefix = format!("{name}{TMP_MARK}");
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(&dir))?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(&prefix))
        {
            let stale = entry.path();
            tracing::warn!(path = %stale.display(), "removing temporary metadata file left by an interrupted write");
            fs::remove_file(&stale).map_err(io_err(&stale))?;
        }
    }
    Ok(())
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn tmp_path(path: &Path, n: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!("{TMP_MARK}{}.{n}", std::process::id()));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn write_replaces_and_read_returns_new_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        assert_eq!(read(&path).unwrap(), None);
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(read(&path).unwrap().as_deref(), Some(&b"two"[..]));
        // Only the file itself is left: no temporary files.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("m.json")]);
    }

    #[test]
    fn interrupted_write_leaves_old_content_and_tmp_is_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        write_atomic(&path, b"old").unwrap();
        // A crash after writing the temporary file but before the rename.
        fs::write(tmp_path(&path, 99), b"half-writ").unwrap();
        assert_eq!(read(&path).unwrap().as_deref(), Some(&b"old"[..]));
        assert!(!tmp_path(&path, 99).exists());
    }

    #[test]
    fn failed_write_keeps_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        write_atomic(&path, b"old").unwrap();
        // Make the rename fail: a directory with the temporary name cannot be opened.
        let missing = dir.path().join("gone").join("m.json");
        assert!(write_atomic(&missing, b"new").is_err());
        assert_eq!(read(&path).unwrap().as_deref(), Some(&b"old"[..]));
    }
}
