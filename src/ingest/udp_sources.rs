//! The UDP listener's table of sources (one per `ip:port`): each source's protocol session and
//! its datagram budget. Bounded in entries: past `max` sources the least recently heard one is
//! evicted (it starts afresh if it comes back), and sources silent for `ttl` are swept. A
//! source over its rate is refused before its datagram is decoded.
//!
//! Pure: the caller passes the time. Before this, 1 M spoofed sources were kept for 15 min at
//! 168 B each and never bounded (issue #21).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What became of one datagram's source.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Within its rate: decode it with the source's session.
    Pass,
    /// Over its rate: drop the datagram unread.
    RateLimited,
}

struct Entry<S> {
    state: S,
    /// Recency stamp: the key of this source in `order`.
    stamp: u64,
    /// Last datagram (also the last token refill).
    seen: Instant,
    /// Datagrams the source may still send now (token bucket, refilled at `rate` per second).
    tokens: f32,
}

pub struct Sources<S> {
    map: HashMap<SocketAddr, Entry<S>>,
    /// Sources by recency, least recent first.
    order: BTreeMap<u64, SocketAddr>,
    next_stamp: u64,
    max: usize,
    ttl: Duration,
    /// Datagrams per second per source, and the bucket size (one second's worth).
    rate: f32,
}

impl<S> Sources<S> {
    pub fn new(max: usize, ttl: Duration, datagrams_per_s: u32) -> Self {
        Sources {
            map: HashMap::new(),
            order: BTreeMap::new(),
            next_stamp: 0,
            max: max.max(1),
            ttl,
            rate: datagrams_per_s.max(1) as f32,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A datagram from `peer` at `now`: take one of its tokens, creating its entry (with
    /// `new()`) when unknown. Returns the verdict and how many sources were evicted to make
    /// room (0 or 1).
    pub fn admit(
        &mut self,
        peer: SocketAddr,
        now: Instant,
        new: impl FnOnce() -> S,
    ) -> (Admit, usize) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let mut evicted = 0;
        if let Some(e) = self.map.get_mut(&peer) {
            self.order.remove(&e.stamp);
            e.stamp = stamp;
            let refill = now.saturating_duration_since(e.seen).as_secs_f32() * self.rate;
            e.tokens = (e.tokens + refill).min(self.rate);
            e.seen = now;
        } else {
            while self.map.len() >= self.max {
                let Some((_, oldest)) = self.order.pop_first() else {
                    break;
                };
                self.map.remove(&oldest);
                evicted += 1;
            }
            self.map.insert(
                peer,
                Entry {
                    state: new(),
                    stamp,
                    seen: now,
                    tokens: self.rate,
                },
            );
        }
        self.order.insert(stamp, peer);
        let e = self.map.get_mut(&peer);
        let verdict = match e {
            Some(e) if e.tokens >= 1.0 => {
                e.tokens -= 1.0;
                Admit::Pass
            }
            _ => Admit::RateLimited,
        };
        (verdict, evicted)
    }

    /// The state of `peer` (after [`Sources::admit`]).
    pub fn state(&mut self, peer: &SocketAddr) -> Option<&mut S> {
        self.map.get_mut(peer).map(|e| &mut e.state)
    }

    /// Forget sources silent for `ttl` at `now`; returns how many.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let mut gone = 0;
        while let Some((&stamp, peer)) = self.order.first_key_value() {
            let expired = match self.map.get(peer) {
                Some(e) => now.saturating_duration_since(e.seen) >= self.ttl,
                None => true,
            };
            if !expired {
                break;
            }
            let peer = *peer;
            self.order.remove(&stamp);
            self.map.remove(&peer);
            gone += 1;
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn past_its_size_the_table_evicts_the_least_recently_heard_source() {
        let mut t = Sources::new(3, Duration::from_secs(900), 100);
        let now = Instant::now();
        for p in 1..=3 {
            assert_eq!(t.admit(peer(p), now, || p), (Admit::Pass, 0));
        }
        // Source 1 speaks again: source 2 is now the least recent.
        t.admit(peer(1), now, || 0);
        assert_eq!(t.admit(peer(4), now, || 4), (Admit::Pass, 1));
        assert_eq!(t.len(), 3);
        assert!(t.state(&peer(2)).is_none(), "least recent evicted");
        assert_eq!(t.state(&peer(1)), Some(&mut 1), "its session kept");
        for p in 5..1000 {
            t.admit(peer(p), now, || p);
        }
        assert_eq!(t.len(), 3);
        assert_eq!(t.order.len(), 3, "the recency index stays in step");
    }

    #[test]
    fn a_source_over_its_rate_is_refused_until_its_budget_refills() {
        let mut t = Sources::new(10, Duration::from_secs(900), 5);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(t.admit(peer(1), t0, || ()).0, Admit::Pass);
        }
        assert_eq!(t.admit(peer(1), t0, || ()).0, Admit::RateLimited);
        assert_eq!(
            t.admit(peer(2), t0, || ()).0,
            Admit::Pass,
            "other sources have their own budget"
        );
        // 5 per second: after 0.4 s two more pass.
        let t1 = t0 + Duration::from_millis(400);
        assert_eq!(t.admit(peer(1), t1, || ()).0, Admit::Pass);
        assert_eq!(t.admit(peer(1), t1, || ()).0, Admit::Pass);
        assert_eq!(t.admit(peer(1), t1, || ()).0, Admit::RateLimited);
        // A long silence refills no more than one second's worth.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(t.admit(peer(1), t2, || ()).0, Admit::Pass);
        }
        assert_eq!(t.admit(peer(1), t2, || ()).0, Admit::RateLimited);
    }

    #[test]
    fn silent_sources_are_swept_and_recent_ones_kept() {
        let mut t = Sources::new(10, Duration::from_secs(60), 100);
        let t0 = Instant::now();
        t.admit(peer(1), t0, || ());
        t.admit(peer(2), t0 + Duration::from_secs(30), || ());
        assert_eq!(t.sweep(t0 + Duration::from_secs(59)), 0);
        assert_eq!(t.sweep(t0 + Duration::from_secs(61)), 1);
        assert!(t.state(&peer(1)).is_none());
        assert!(t.state(&peer(2)).is_some());
        assert_eq!(t.sweep(t0 + Duration::from_secs(100)), 1);
        assert!(t.is_empty() && t.order.is_empty());
    }
}
