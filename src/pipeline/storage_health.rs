//! Whether the writer can commit, as its last commits said: for `/readyz` (503 with the
//! reason), the `fleetgate_storage_healthy` gauge, and the systemd watchdog, which is
//! withheld once commits have failed for longer than [`STALL_BOUND`] (a restart is then the
//! one thing left to try; a full disk heals without it as soon as space returns).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Commits failing for this long make the supervisor withhold the watchdog ping. Longer than
/// the writer's retry budget (5 s) and a PostgreSQL restart or failover (~30 s measured in
/// tests/storage_outage_postgres.rs), short enough that a writer stuck for good is restarted.
pub const STALL_BOUND: Duration = Duration::from_secs(120);

#[derive(Default)]
pub struct StorageHealth {
    /// Since when commits fail, and the last error; `None` while they succeed.
    failing: Mutex<Option<(Instant, String)>>,
}

impl StorageHealth {
    /// A commit's outcome at `now`.
    pub fn record(&self, outcome: Result<(), &str>, now: Instant) {
        let mut f = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(()) => {
                if f.take().is_some() {
                    tracing::info!("storage commits again");
                }
            }
            Err(e) => match f.as_mut() {
                Some((_, last)) => *last = e.to_string(),
                None => *f = Some((now, e.to_string())),
            },
        }
        metrics::gauge!("fleetgate_storage_healthy").set(if f.is_some() { 0.0 } else { 1.0 });
    }

    /// `Err(reason)` while commits fail.
    pub fn check(&self, now: Instant) -> Result<(), String> {
        match &*self.failing.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some((since, e)) => Err(format!(
                "storage commits failing for {}s: {e}",
                now.saturating_duration_since(*since).as_secs()
            )),
        }
    }

    /// Commits have failed for longer than `bound`.
    pub fn stalled(&self, now: Instant, bound: Duration) -> bool {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|(since, _)| now.saturating_duration_since(*since) > bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_commits_are_reported_with_their_age_until_one_succeeds() {
        let h = StorageHealth::default();
        let t0 = Instant::now();
        assert_eq!(h.check(t0), Ok(()));
        h.record(Err("database or disk is full"), t0);
        h.record(Err("still full"), t0 + Duration::from_secs(30));
        let e = h.check(t0 + Duration::from_secs(61)).unwrap_err();
        assert_eq!(
            e, "storage commits failing for 61s: still full",
            "since the first failure, the last error"
        );
        assert!(!h.stalled(t0 + Duration::from_secs(61), STALL_BOUND));
        assert!(h.stalled(t0 + STALL_BOUND + Duration::from_secs(1), STALL_BOUND));
        h.record(Ok(()), t0 + Duration::from_secs(200));
        assert_eq!(h.check(t0 + Duration::from_secs(200)), Ok(()));
        assert!(!h.stalled(t0 + Duration::from_secs(999), STALL_BOUND));
    }
}
