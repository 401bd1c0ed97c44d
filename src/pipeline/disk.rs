//! The disk low-water mark (`[storage] min_free_mb`): below it the writer refuses new work
//! before SQLite hits the wall. A refused batch is not acked (the trackers keep it and resend),
//! `/readyz` says why, and commits resume by themselves once space is back. Checking is one
//! `statvfs` call, made at most once a second.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the free space is read.
const RECHECK: Duration = Duration::from_secs(1);

pub struct DiskGuard {
    dir: PathBuf,
    min_free: u64,
    /// When last read, and whether it was below the mark (with the free bytes).
    last: Mutex<Option<(Instant, Option<u64>)>>,
}

impl DiskGuard {
    /// A guard for the directory of an SQLite URL; `None` for PostgreSQL, an in-memory
    /// database, or `min_free_mb = 0`.
    pub fn for_url(url: &str, min_free_mb: u64) -> Option<DiskGuard> {
        if min_free_mb == 0 {
            return None;
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))?;
        let path = path.split('?').next().unwrap_or(path);
        if path.is_empty() || path.contains(":memory:") {
            return None;
        }
        let dir = match Path::new(path).parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Some(DiskGuard {
            dir,
            min_free: min_free_mb.saturating_mul(1024 * 1024),
            last: Mutex::new(None),
        })
    }

    /// `Err(reason)` when the free space is below the mark.
    pub fn check(&self, now: Instant) -> Result<(), String> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let low = match *last {
            Some((at, low)) if now.saturating_duration_since(at) < RECHECK => low,
            previous => {
                let free = free_bytes(&self.dir);
                if let Some(f) = free {
                    metrics::gauge!("fleetgate_storage_free_bytes").set(f as f64);
                }
                let low = free.filter(|f| *f < self.min_free);
                let was_low = previous.is_some_and(|(_, l)| l.is_some());
                match (was_low, low) {
                    (false, Some(f)) => tracing::error!(
                        dir = %self.dir.display(),
                        free_mb = f / (1024 * 1024),
                        min_free_mb = self.min_free / (1024 * 1024),
                        "disk space below [storage] min_free_mb: new records are not accepted until space is freed"
                    ),
                    (true, None) => {
                        tracing::info!(dir = %self.dir.display(), "disk space back above [storage] min_free_mb")
                    }
                    _ => {}
                }
                *last = Some((now, low));
                low
            }
        };
        match low {
            None => Ok(()),
            Some(f) => {
                metrics::counter!("fleetgate_storage_low_space_refusals_total").increment(1);
                Err(format!(
                    "{} MB free in {}, below [storage] min_free_mb = {}",
                    f / (1024 * 1024),
                    self.dir.display(),
                    self.min_free / (1024 * 1024)
                ))
            }
        }
    }
}

/// Bytes available to an unprivileged writer on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statvfs is a valid value for the call to overwrite.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `s` a valid statvfs the call writes into.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_is_kept_only_for_a_file_database_with_a_mark() {
        assert!(DiskGuard::for_url("postgres://x/y", 100).is_none());
        assert!(DiskGuard::for_url("sqlite::memory:", 100).is_none());
        assert!(DiskGuard::for_url("sqlite://data/fg.db", 0).is_none());
        let g = DiskGuard::for_url("sqlite://data/fg.db?mode=rwc", 100).unwrap();
        assert_eq!(g.dir, PathBuf::from("data"));
        let g = DiskGuard::for_url("sqlite://fg.db", 100).unwrap();
        assert_eq!(g.dir, PathBuf::from("."));
    }

    #[test]
    fn below_the_mark_refuses_with_the_reason_and_above_it_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/fg.db", dir.path().display());
        // No disk has a petabyte free.
        let g = DiskGuard::for_url(&url, 1 << 30).unwrap();
        let e = g.check(Instant::now()).unwrap_err();
        assert!(
            e.contains("below [storage] min_free_mb = 1073741824"),
            "{e}"
        );
        let g = DiskGuard::for_url(&url, 1).unwrap();
        assert_eq!(g.check(Instant::now()), Ok(()));
    }
}
