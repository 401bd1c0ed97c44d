//! Request pacing toward the CRM: a leaky bucket (rate per second, burst) that callers wait
//! on, optionally a sliding window ("at most N in any second", amoCRM's rule), plus a pause
//! the whole connector honours after a 429 / `QUERY_LIMIT_EXCEEDED`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    window: Option<(usize, Duration)>,
    inner: Mutex<Bucket>,
    /// Woken when an in-flight request finishes and frees a window slot.
    freed: Notify,
    /// Shutting down: no request starts any more (see [`RateLimiter::close`]).
    closed: tokio_util::sync::CancellationToken,
}

struct Bucket {
    tokens: f64,
    at: Instant,
    paused_until: Option<Instant>,
    /// Completion times within the window, oldest first.
    sent: VecDeque<Instant>,
    /// Requests let through whose response has not come back yet.
    in_flight: usize,
}

/// One request's slot. Hold it until the response is in: the window counts a request from
/// the moment its response arrived, because the server may have seen it any time between
/// send and response. Counting from the send time lets network jitter squeeze 8 arrivals
/// into the server's second (seen on a loaded CI machine).
#[must_use = "hold the permit until the response has arrived"]
pub struct Permit<'a> {
    limiter: &'a RateLimiter,
    windowed: bool,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.windowed {
            return;
        }
        {
            let mut b = self.limiter.lock();
            b.in_flight = b.in_flight.saturating_sub(1);
            b.sent.push_back(Instant::now());
        }
        self.limiter.freed.notify_waiters();
    }
}

enum Wait {
    Until(Instant),
    For(Duration),
    Freed,
}

impl RateLimiter {
    pub fn new(rate_per_s: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimiter {
            rate: rate_per_s.max(0.001),
            burst,
            window: None,
            inner: Mutex::new(Bucket {
                tokens: burst,
                at: Instant::now(),
                paused_until: None,
                sent: VecDeque::new(),
                in_flight: 0,
            }),
            freed: Notify::new(),
            closed: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Let no further request start: every `acquire` from now on waits forever (its caller
    /// is dropped by the shutdown's bound). Requests already holding a permit go on.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Also never more than `n` requests within any `window`.
    pub fn with_window(mut self, n: usize, window: Duration) -> Self {
        self.window = Some((n.max(1), window));
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        // A panic while holding this lock cannot leave the bucket inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until one request may go; keep the permit until its response is in.
    pub async fn acquire(&self) -> Permit<'_> {
        loop {
            if self.closed.is_cancelled() {
                std::future::pending::<()>().await;
            }
            let freed = self.freed.notified();
            let wait = match self.try_take(Instant::now()) {
                Ok(permit) => return permit,
                Err(w) => w,
            };
            match wait {
                Wait::Until(t) => tokio::time::sleep_until(t).await,
                Wait::For(d) => tokio::time::sleep(d).await,
                // A response that never comes is bounded by the HTTP client's timeout; the
                // sleep only guards against a lost wake-up.
                Wait::Freed => {
                    let _ = tokio::time::timeout(Duration::from_millis(100), freed).await;
                }
            }
        }
    }

    fn try_take(&self, now: Instant) -> Result<Permit<'_>, Wait> {
        let mut b = self.lock();
        if let Some(p) = b.paused_until.filter(|p| *p > now) {
            return Err(Wait::Until(p));
        }
        b.paused_until = None;
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at = now;
        if let Some((n, w)) = self.window {
            while b
                .sent
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= w)
            {
                b.sent.pop_front();
            }
            if b.sent.len() + b.in_flight >= n {
                return Err(match b.sent.front() {
                    Some(oldest) => Wait::Until(*oldest + w),
                    None => Wait::Freed,
                });
            }
        }
        // The epsilon absorbs float error: 1/7 s of refill at 7/s is 0.999….
        if b.tokens >= 1.0 - 1e-6 {
            b.tokens = (b.tokens - 1.0).max(0.0);
            let windowed = self.window.is_some();
            if windowed {
                b.in_flight += 1;
            }
            return Ok(Permit {
                limiter: self,
                windowed,
            });
        }
        // Timers have millisecond resolution: never sleep for less.
        Err(Wait::For(
            Duration::from_secs_f64((1.0 - b.tokens) / self.rate).max(Duration::from_millis(1)),
        ))
    }

    /// The CRM said "too many requests": nobody sends for `d`, and the bucket starts empty.
    pub async fn pause(&self, d: Duration) {
        let mut b = self.lock();
        let until = Instant::now() + d;
        if b.paused_until.map_or(true, |p| p < until) {
            b.paused_until = Some(until);
        }
        b.tokens = 0.0;
        b.at = until;
    }
}

/// Exponential backoff with full jitter: a random delay in [base/2, base] where
/// base = initial · 2^(attempt-1), capped at `max`.
pub fn backoff(attempt: u32, initial_s: f64, max_s: f64) -> Duration {
    let exp = initial_s * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
    let base = exp.min(max_s);
    let jittered = base * (0.5 + rand::random::<f64>() * 0.5);
    Duration::from_secs_f64(jittered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_to_the_rate_after_the_burst() {
        let l = RateLimiter::new(7.0, 7);
        let t0 = Instant::now();
        for _ in 0..21 {
            drop(l.acquire().await);
        }
        let took = t0.elapsed().as_secs_f64();
        assert!((1.9..2.1).contains(&took), "7 at once, then 7/s: {took}");
    }

    #[tokio::test(start_paused = true)]
    async fn window_never_lets_8_through_in_one_second() {
        let l = RateLimiter::new(7.0, 7).with_window(7, Duration::from_millis(1020));
        let mut sent = Vec::new();
        for _ in 0..30 {
            let permit = l.acquire().await;
            sent.push(Instant::now());
            drop(permit);
        }
        for w in sent.windows(8) {
            assert!(w[7] - w[0] > Duration::from_secs(1), "8 within a second");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slow_responses_count_until_they_arrive() {
        let l = std::sync::Arc::new(
            RateLimiter::new(7.0, 7).with_window(7, Duration::from_millis(1020)),
        );
        let mut tasks = Vec::new();
        for i in 0..20u64 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                let permit = l.acquire().await;
                let got = Instant::now();
                // Responses take 50..450 ms: the server saw each request somewhere in there.
                tokio::time::sleep(Duration::from_millis(50 + (i * 137) % 400)).await;
                drop(permit);
                (got, Instant::now())
            }));
        }
        let mut spans = Vec::new();
        for t in tasks {
            spans.push(t.await.unwrap());
        }
        // Whenever one request goes, fewer than 7 others went before it and had not been
        // answered a full second earlier, so no server-side second can hold 8 arrivals.
        for (got, _) in &spans {
            let busy = spans
                .iter()
                .filter(|(g, r)| g < got && *r + Duration::from_secs(1) > *got)
                .count();
            assert!(busy < 7, "{busy} requests still counted when one more went");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pause_holds_everyone() {
        let l = RateLimiter::new(100.0, 10);
        l.pause(Duration::from_secs(30)).await;
        let t0 = Instant::now();
        let _permit = l.acquire().await;
        assert!(t0.elapsed() >= Duration::from_secs(30));
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        for a in 1..20 {
            let d = backoff(a, 1.0, 300.0).as_secs_f64();
            let base = (2f64.powi(a as i32 - 1)).min(300.0);
            assert!(d >= base / 2.0 && d <= base, "attempt {a}: {d}");
        }
    }
}
