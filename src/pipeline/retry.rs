//! Retrying a group commit that failed for a reason that passes (SQLite busy or locked past
//! its busy timeout, a PostgreSQL restart dropping the connection, a pool timeout). Retrying
//! is safe because a batch is idempotent: positions already stored are ignored and device
//! states are upserts. The retries have a time budget so a tracker is not kept waiting for an
//! ack longer than it waits anyway; after it the batch fails, nothing is acked, and the
//! trackers resend on their next connection.

use std::future::Future;
use std::time::Duration;

use super::store::StorageError;

/// When to try a failed commit again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// No new attempt starts once this long has passed since the first one.
    pub budget: Duration,
    /// Wait before the second attempt; doubles each time up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            budget: Duration::from_secs(5),
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt number `attempt + 1` (the first retry is `attempt == 1`), or
    /// `None` to give up: the error is permanent or the budget is spent.
    pub fn delay(&self, attempt: u32, elapsed: Duration, transient: bool) -> Option<Duration> {
        if !transient || attempt == 0 {
            return None;
        }
        let factor = 1u32 << (attempt - 1).min(16);
        let wait = self
            .first_backoff
            .saturating_mul(factor)
            .min(self.max_backoff);
        (elapsed + wait < self.budget).then_some(wait)
    }

    /// Run `op` until it succeeds, fails permanently, or the budget is spent; returns the
    /// last result and how many attempts were made.
    pub async fn run<T, F, Fut>(&self, mut op: F) -> (Result<T, StorageError>, u32)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StorageError>>,
    {
        let started = tokio::time::Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let e = match op().await {
                Ok(v) => return (Ok(v), attempt),
                Err(e) => e,
            };
            match self.delay(attempt, started.elapsed(), is_transient(&e)) {
                Some(wait) => {
                    metrics::counter!("fleetgate_storage_commit_retries_total").increment(1);
                    tracing::warn!(error = %e, attempt, ?wait, "commit failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                None => return (Err(e), attempt),
            }
        }
    }
}

/// Errors worth another attempt: the database was busy, locked, restarting or unreachable.
/// A constraint violation or a bad query fails the same way every time and is not retried.
pub fn is_transient(e: &StorageError) -> bool {
    let e = match e {
        StorageError::Timeout { .. } => return true,
        StorageError::Db(e) => e,
        StorageError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
            return transient_code(&f.extended_code.to_string())
        }
        _ => return false,
    };
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| transient_code(&c)),
        _ => false,
    }
}

/// SQLite result codes (primary code in the low byte) and PostgreSQL SQLSTATEs that pass.
fn transient_code(code: &str) -> bool {
    // A SQLSTATE is always five characters; SQLite's codes (extended ones too) have at most four digits.
    if code.len() < 5 {
        let Ok(n) = code.parse::<i64>() else {
            return false;
        };
        // SQLITE_BUSY = 5, SQLITE_LOCKED = 6, SQLITE_IOERR = 10, SQLITE_PROTOCOL = 15;
        // extended codes (BUSY_SNAPSHOT = 517…) carry the primary code in the low byte.
        return matches!(n & 0xff, 5 | 6 | 10 | 15);
    }
    // 08xxx connection exceptions, 57P0x admin/crash shutdown and cannot-connect-now,
    // 40001 serialization failure, 40P01 deadlock, 53300 too many connections.
    code.starts_with("08")
        || code.starts_with("57P0")
        || matches!(code, "40001" | "40P01" | "53300")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// The default policy scaled down 50× so the tests run in real time quickly.
    fn fast() -> RetryPolicy {
        RetryPolicy {
            budget: Duration::from_millis(100),
            first_backoff: Duration::from_millis(2),
            max_backoff: Duration::from_millis(20),
        }
    }

    fn transient() -> StorageError {
        StorageError::Db(sqlx::Error::PoolTimedOut)
    }

    #[test]
    fn backoff_doubles_caps_and_stops_at_the_budget() {
        let p = RetryPolicy::default();
        let z = Duration::ZERO;
        assert_eq!(p.delay(1, z, true), Some(Duration::from_millis(100)));
        assert_eq!(p.delay(2, z, true), Some(Duration::from_millis(200)));
        assert_eq!(p.delay(5, z, true), Some(Duration::from_secs(1)));
        assert_eq!(p.delay(40, z, true), Some(Duration::from_secs(1)));
        assert_eq!(p.delay(1, Duration::from_millis(4950), true), None);
        assert_eq!(
            p.delay(1, z, false),
            None,
            "permanent errors are not retried"
        );
    }

    #[test]
    fn only_passing_database_conditions_are_transient() {
        assert!(is_transient(&transient()));
        assert!(is_transient(&StorageError::Db(sqlx::Error::Io(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused)
        ))));
        assert!(!is_transient(&StorageError::Invalid("x".into())));
        let timeout = StorageError::Timeout {
            what: "commit attempt".into(),
            after: Duration::from_secs(5),
        };
        assert!(is_transient(&timeout), "a deadline missed is tried again");
        assert_eq!(timeout.to_string(), "commit attempt took over 5s");
        assert!(!is_transient(&StorageError::Db(sqlx::Error::RowNotFound)));
        let sqlite = |code| {
            StorageError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                None,
            ))
        };
        assert!(is_transient(&sqlite(rusqlite::ffi::SQLITE_BUSY_SNAPSHOT)));
        assert!(is_transient(&sqlite(rusqlite::ffi::SQLITE_IOERR_FSYNC)));
        assert!(!is_transient(&sqlite(
            rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
        )));
        for c in ["5", "517", "6", "262", "08006", "57P01", "57P03", "40001"] {
            assert!(transient_code(c), "{c}");
        }
        for c in ["19", "2067", "23505", "42P01", "1"] {
            assert!(!transient_code(c), "{c}");
        }
    }

    #[tokio::test]
    async fn a_transient_failure_is_retried_until_it_succeeds() {
        let calls = AtomicU32::new(0);
        let (r, attempts) = fast()
            .run(|| async {
                if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(transient())
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(attempts, 4);
    }

    #[tokio::test]
    async fn a_lasting_outage_fails_within_the_budget() {
        let started = tokio::time::Instant::now();
        let (r, attempts) = fast().run(|| async { Err::<(), _>(transient()) }).await;
        assert!(r.is_err());
        assert!(attempts > 3, "{attempts}");
        assert!(started.elapsed() < Duration::from_millis(100) + Duration::from_millis(60));
    }

    #[tokio::test]
    async fn a_permanent_failure_is_tried_once() {
        let (r, attempts) = fast()
            .run(|| async { Err::<(), _>(StorageError::Invalid("bad".into())) })
            .await;
        assert!(r.is_err());
        assert_eq!(attempts, 1);
    }
}
