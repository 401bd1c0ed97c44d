//! Rate-limited warnings. A hostile or broken tracker can hit a limit thousands of times a
//! second; the log must say so once per window (with how many were suppressed), not flood the
//! journal. Pure: the caller passes the time, so the window logic is unit-tested.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often the same warning may be logged.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Remembers, per key, when it was last logged and how many times it was held back since.
pub struct LogLimiter {
    window: Duration,
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

/// Most distinct keys remembered; past this the oldest are forgotten (keys are bounded by
/// protocol × limit in practice, this only guards against a bug that makes them unbounded).
const MAX_KEYS: usize = 4096;

impl LogLimiter {
    pub fn new(window: Duration) -> Self {
        LogLimiter {
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(suppressed)` when `key` may be logged at `now` (with the number of occurrences
    /// held back since it was last logged), `None` when it must stay quiet.
    pub fn check(&self, key: &str, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((last, suppressed)) = seen.get_mut(key) {
            if now.saturating_duration_since(*last) < self.window {
                *suppressed += 1;
                return None;
            }
            let held = *suppressed;
            *last = now;
            *suppressed = 0;
            return Some(held);
        }
        if seen.len() >= MAX_KEYS {
            let window = self.window;
            seen.retain(|_, (last, _)| now.saturating_duration_since(*last) < window);
        }
        seen.insert(key.to_string(), (now, 0));
        Some(0)
    }
}

/// One connection's log budget: the first [`BURST`] lines of a window are logged, the rest only
/// counted; the count is reported on the next line logged and by [`Budget::finish`] when the
/// connection ends. Lives in the connection task (no lock); 24 bytes, as idle trackers keep it.
#[derive(Debug, Default)]
pub struct Budget {
    window_start: Option<Instant>,
    used: u32,
    suppressed: u32,
}

/// Lines one connection may log per [`WINDOW`] before the rest are counted instead.
pub const BURST: u32 = 5;

impl Budget {
    /// `Some(suppressed)` when a line may be logged at `now` (with the lines held back since
    /// the last one logged), `None` when it must only be counted.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let fresh = match self.window_start {
            Some(s) => now.saturating_duration_since(s) >= WINDOW,
            None => true,
        };
        if fresh {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used >= BURST {
            self.suppressed = self.suppressed.saturating_add(1);
            return None;
        }
        self.used += 1;
        Some(u64::from(std::mem::take(&mut self.suppressed)))
    }

    /// Lines held back and not yet reported: for the connection's closing summary.
    pub fn finish(&mut self) -> u64 {
        u64::from(std::mem::take(&mut self.suppressed))
    }
}

/// The process-wide limiter for limit-violation warnings.
pub fn warnings() -> &'static LogLimiter {
    static L: OnceLock<LogLimiter> = OnceLock::new();
    L.get_or_init(|| LogLimiter::new(WINDOW))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_once_per_window_and_reports_what_it_held_back() {
        let l = LogLimiter::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(l.check("teltonika/max_frame", t0), Some(0));
        for i in 1..=5 {
            assert_eq!(
                l.check("teltonika/max_frame", t0 + Duration::from_secs(i)),
                None
            );
        }
        assert_eq!(
            l.check("wialon/max_frame", t0 + Duration::from_secs(1)),
            Some(0),
            "keys are independent"
        );
        assert_eq!(
            l.check("teltonika/max_frame", t0 + Duration::from_secs(61)),
            Some(5)
        );
        assert_eq!(
            l.check("teltonika/max_frame", t0 + Duration::from_secs(62)),
            None
        );
    }

    #[test]
    fn a_connection_logs_a_burst_per_window_and_reports_the_rest() {
        let mut b = Budget::default();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(b.allow(t0), Some(0));
        }
        for i in 0..1000 {
            assert_eq!(b.allow(t0 + Duration::from_millis(i)), None);
        }
        // The next window's first line carries what was held back.
        assert_eq!(b.allow(t0 + WINDOW), Some(1000));
        assert_eq!(b.allow(t0 + WINDOW), Some(0));
        for _ in 0..(BURST + 7) {
            b.allow(t0 + WINDOW);
        }
        assert_eq!(b.finish(), 9, "held back since the last line logged");
        assert_eq!(b.finish(), 0);
        assert!(std::mem::size_of::<Budget>() <= 24);
    }

    #[test]
    fn key_count_stays_bounded() {
        let l = LogLimiter::new(Duration::from_millis(1));
        let t0 = Instant::now();
        for i in 0..(MAX_KEYS * 3) {
            l.check(&format!("k{i}"), t0 + Duration::from_millis(i as u64 * 2));
        }
        assert!(l.seen.lock().unwrap().len() <= MAX_KEYS);
    }
}
