//! Counters and the ack-latency histogram of a run. Each simulated device keeps its own
//! [`Stats`] (no sharing on the hot path); they are merged once at the end.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// One device's (or, merged, the whole run's) counts.
pub struct Stats {
    pub packets: u64,
    pub records: u64,
    pub commands: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// Ack latency in microseconds: from the packet's write to its ack's arrival.
    pub latency_us: Histogram<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            packets: 0,
            records: 0,
            commands: 0,
            errors: 0,
            last_error: None,
            // 1 µs .. 1 h at 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
        }
    }
}

impl Stats {
    pub fn record_ack(&mut self, latency: Duration, records: u64) {
        self.packets += 1;
        self.records += records;
        let us = (latency.as_micros() as u64).clamp(1, 3_600_000_000);
        let _ = self.latency_us.record(us);
    }

    pub fn error(&mut self, e: impl Into<String>) {
        self.errors += 1;
        self.last_error = Some(e.into());
    }

    pub fn merge(&mut self, other: &Stats) {
        self.packets += other.packets;
        self.records += other.records;
        self.commands += other.commands;
        self.errors += other.errors;
        if other.last_error.is_some() {
            self.last_error.clone_from(&other.last_error);
        }
        let _ = self.latency_us.add(&other.latency_us);
    }

    /// The summary over `elapsed`.
    pub fn report(&self, elapsed: Duration, devices: usize, protocol: &str) -> Report {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let ms = |q: f64| self.latency_us.value_at_quantile(q) as f64 / 1000.0;
        Report {
            protocol: protocol.to_string(),
            devices,
            seconds: secs,
            packets_acked: self.packets,
            records_acked: self.records,
            records_per_s: self.records as f64 / secs,
            packets_per_s: self.packets as f64 / secs,
            ack_p50_ms: ms(0.50),
            ack_p90_ms: ms(0.90),
            ack_p99_ms: ms(0.99),
            ack_max_ms: self.latency_us.max() as f64 / 1000.0,
            commands_answered: self.commands,
            errors: self.errors,
            last_error: self.last_error.clone(),
        }
    }
}

/// What `fleetgate sim` prints (as text, or one JSON line with `--json`).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub protocol: String,
    pub devices: usize,
    pub seconds: f64,
    pub packets_acked: u64,
    pub records_acked: u64,
    pub records_per_s: f64,
    pub packets_per_s: f64,
    pub ack_p50_ms: f64,
    pub ack_p90_ms: f64,
    pub ack_p99_ms: f64,
    pub ack_max_ms: f64,
    pub commands_answered: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} devices ({}) for {:.1} s",
            self.devices, self.protocol, self.seconds
        )?;
        writeln!(
            f,
            "acked: {} records, {} packets",
            self.records_acked, self.packets_acked
        )?;
        writeln!(
            f,
            "rate: {:.0} records/s, {:.0} packets/s",
            self.records_per_s, self.packets_per_s
        )?;
        writeln!(
            f,
            "ack latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
            self.ack_p50_ms, self.ack_p90_ms, self.ack_p99_ms, self.ack_max_ms
        )?;
        if self.commands_answered > 0 {
            writeln!(f, "commands answered: {}", self.commands_answered)?;
        }
        write!(f, "errors: {}", self.errors)?;
        if let Some(e) = &self.last_error {
            write!(f, " (last: {e})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_stats_report_rates_and_percentiles() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        for i in 1..=99 {
            a.record_ack(Duration::from_millis(i), 10);
        }
        b.record_ack(Duration::from_millis(500), 10);
        b.error("boom");
        a.merge(&b);
        let r = a.report(Duration::from_secs(10), 2, "teltonika");
        assert_eq!(r.records_acked, 1000);
        assert_eq!(r.packets_acked, 100);
        assert!((r.records_per_s - 100.0).abs() < 1e-9);
        assert!((r.ack_p50_ms - 50.0).abs() < 0.1, "{}", r.ack_p50_ms);
        assert!((r.ack_max_ms - 500.0).abs() < 0.5, "{}", r.ack_max_ms);
        assert_eq!(r.errors, 1);
        assert!(r.to_string().contains("p99"));
    }
}
