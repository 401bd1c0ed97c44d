//! Connection limits: total and per source address. A refused connection is closed at once
//! and counted; it never affects the others.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Held by a connection task; releases its slot when dropped.
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl ConnLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(ConnLimits {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a new connection from `ip`, or the name of the limit it hit.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, &'static str> {
        let mut per_ip = self.per_ip.lock().expect("not poisoned");
        if self.total.load(Ordering::Relaxed) >= self.max_total {
            return Err("max_connections");
        }
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err("max_connections_per_ip");
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(ConnSlot {
            limits: self.clone(),
            ip,
        })
    }

    pub fn current(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut per_ip = self.limits.per_ip.lock().expect("not poisoned");
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_and_total_limits_hold_and_release() {
        let l = ConnLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = l.acquire(a).unwrap();
        let _s2 = l.acquire(a).unwrap();
        assert_eq!(l.acquire(a).err(), Some("max_connections_per_ip"));
        let _s3 = l.acquire(b).unwrap();
        assert_eq!(l.acquire(b).err(), Some("max_connections"));
        drop(s1);
        assert!(l.acquire(a).is_ok());
    }
}
