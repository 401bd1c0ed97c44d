//! `fleetgate sim`: simulated trackers for load tests and demos. Each device is one task with
//! one TCP connection that logs in, then sends its records and waits for each ack before the
//! next packet (stop-and-wait, like real devices). Routes are in [`route`], the wire format
//! in [`device`], scenarios in [`scenario`], counters and latency in [`stats`].

pub mod baseline;
pub mod device;
pub mod route;
pub mod scenario;
pub mod stats;

use std::path::PathBuf;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use device::SimProtocol;
pub use scenario::Scenario;
pub use stats::{Report, Stats};

use device::{Encoder, Expect, Record, ServerMsg};
use route::{Driver, Leg};
use scenario::{ControlApi, Places, Plan};

/// How long a device waits for an ack before it gives up on the connection.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The listener of the protocol (`host:port`).
    pub addr: String,
    pub protocol: SimProtocol,
    pub devices: usize,
    pub records_per_packet: usize,
    /// Packets per second per device; 0 = as fast as the acks come.
    pub rate: f64,
    /// Run time; `None` = until Ctrl-C.
    pub duration: Option<Duration>,
    pub scenario: Scenario,
    /// IMEI of device 0; device `i` is `imei_base + i`.
    pub imei_base: u64,
    /// Control API (`host:port` or URL) for the scenarios that use it.
    pub api: Option<String>,
    pub token: Option<String>,
    /// Geofence files the scenarios steer by.
    pub geofences: PathBuf,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            addr: "127.0.0.1:5027".into(),
            protocol: SimProtocol::Teltonika,
            devices: 10,
            records_per_packet: 1,
            rate: 1.0,
            duration: Some(Duration::from_secs(10)),
            scenario: Scenario::Drive,
            imei_base: 356_307_042_000_000,
            api: None,
            token: None,
            geofences: PathBuf::from("geofences"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("--{0}: {1}")]
    Invalid(&'static str, String),
}

impl SimOptions {
    pub fn validate(&self) -> Result<(), SimError> {
        if self.devices == 0 {
            return Err(SimError::Invalid("devices", "must be at least 1".into()));
        }
        if !(1..=255).contains(&self.records_per_packet) {
            return Err(SimError::Invalid(
                "records-per-packet",
                format!("must be 1..=255, got {}", self.records_per_packet),
            ));
        }
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            return Err(SimError::Invalid(
                "rate",
                format!("must be ≥ 0, got {}", self.rate),
            ));
        }
        if matches!(self.scenario, Scenario::LowBalance) && self.api.is_none() {
            return Err(SimError::Invalid(
                "api",
                "the low-balance scenario acts through the control API: give --api".into(),
            ));
        }
        Ok(())
    }

    /// How devices date their records: by the wall clock when a rate is set (a live demo, or a
    /// second run with the same IMEIs, must never send fixes older than the last one stored);
    /// flat out, on a compressed clock that starts a year back, one fix per second, so that a
    /// long run never reaches the future (which the filters drop) and two fixes of a device
    /// never share a timestamp (which would count as a resend). A rate faster than the
    /// protocol's time resolution (GT06 and Wialon date fixes in whole seconds) cannot be
    /// dated by the wall clock either, and ends at `now` on the compressed clock instead.
    fn clock(&self, now: DateTime<Utc>) -> FixClock {
        let res_ms = self.protocol.time_resolution_ms();
        if self.rate > 0.0 {
            let per_s = self.rate * self.records_per_packet as f64;
            let spacing_ms = 1000.0 / per_s;
            if spacing_ms >= res_ms as f64 {
                return FixClock::Live { spacing_ms, res_ms };
            }
            let step = res_ms as f64 / 1000.0;
            let secs = self.duration.map(|d| d.as_secs_f64()).unwrap_or(3600.0);
            let span = per_s * secs * step;
            FixClock::Compressed {
                step,
                t0: now - chrono::Duration::milliseconds((span * 1000.0) as i64),
            }
        } else {
            FixClock::Compressed {
                step: 1.0,
                t0: now - chrono::Duration::days(365),
            }
        }
    }
}

/// How a device dates its records (see [`SimOptions::clock`]).
#[derive(Clone, Copy, Debug, PartialEq)]
enum FixClock {
    /// The wall clock: a packet's records end at the moment it is built, `spacing_ms` apart,
    /// rounded down to the protocol's `res_ms`.
    Live { spacing_ms: f64, res_ms: i64 },
    /// Record `n` at `t0 + n·step` seconds.
    Compressed { step: f64, t0: DateTime<Utc> },
}

/// Dates one device's records and says how far its car moved in between.
struct Dater {
    clock: FixClock,
    n: u64,
    last: Option<DateTime<Utc>>,
}

impl Dater {
    fn new(clock: FixClock) -> Dater {
        Dater {
            clock,
            n: 0,
            last: None,
        }
    }

    /// Times of the `k` records of a packet built at `now`, each with the seconds driven since
    /// the record before. Strictly increasing at the protocol's resolution.
    fn next(&mut self, k: usize, now: DateTime<Utc>) -> Vec<(DateTime<Utc>, f64)> {
        let mut out = Vec::with_capacity(k);
        for j in 0..k {
            let (t, dt) = match self.clock {
                FixClock::Compressed { step, t0 } => {
                    let ms = (self.n as f64 * step * 1000.0) as i64;
                    (t0 + chrono::Duration::milliseconds(ms), step)
                }
                FixClock::Live { spacing_ms, res_ms } => {
                    let back = ((k - 1 - j) as f64 * spacing_ms) as i64;
                    let mut ms = (now.timestamp_millis() - back).div_euclid(res_ms) * res_ms;
                    if let Some(last) = self.last {
                        ms = ms.max(last.timestamp_millis() + res_ms);
                    }
                    let t = DateTime::from_timestamp_millis(ms).unwrap_or(now);
                    let dt = match self.last {
                        Some(last) => (t - last).num_milliseconds() as f64 / 1000.0,
                        None => spacing_ms / 1000.0,
                    };
                    (t, dt)
                }
            };
            self.n += 1;
            self.last = Some(t);
            out.push((t, dt));
        }
        out
    }
}

/// How long `fleetgate sim` runs: `--duration` seconds (0 = until Ctrl-C); without it, a live
/// run (`--rate` > 0, a demo) goes on until Ctrl-C and a flat-out one (a load test) takes 10 s.
pub fn run_time(rate: f64, duration: Option<f64>) -> Option<Duration> {
    match duration {
        Some(d) if d > 0.0 => Some(Duration::from_secs_f64(d)),
        Some(_) => None,
        None if rate > 0.0 => None,
        None => Some(Duration::from_secs(10)),
    }
}

/// Run the simulation; returns the merged counters and the wall time they cover.
pub async fn run(opts: SimOptions) -> Result<(Stats, Duration), SimError> {
    opts.validate()?;
    let places = Places::load(&opts.geofences);
    let api = opts
        .api
        .as_deref()
        .map(|a| ControlApi::new(a, opts.token.clone()));
    let started = Instant::now();
    // At the deadline (or Ctrl-C) every device finishes the exchange in flight and stops, so
    // that every record the server committed was also counted as acked.
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        let deadline = opts.duration.map(|d| started + d);
        tokio::spawn(async move {
            let deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            // Ctrl-C (SIGINT) ends a run early whether or not it has a --duration.
            tokio::select! {
                _ = deadline => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            stop.cancel();
        });
    }
    let clock = opts.clock(Utc::now());
    let mut tasks = Vec::with_capacity(opts.devices);
    for i in 0..opts.devices {
        let dev = Device {
            imei: (opts.imei_base + i as u64).to_string(),
            plan: places.plan(opts.scenario, i),
            seed: opts.imei_base ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            clock,
        };
        let opts = opts.clone();
        let api = api.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            dev.run(&opts, api.as_ref(), &stop, &mut stats).await;
            stats
        }));
    }
    let mut total = Stats::default();
    for t in tasks {
        if let Ok(s) = t.await {
            total.merge(&s);
        }
    }
    Ok((total, started.elapsed()))
}

struct Device {
    imei: String,
    plan: Plan,
    seed: u64,
    clock: FixClock,
}

/// One connection: the socket and what has been read from it.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    protocol: SimProtocol,
    /// The relay state the last engine command asked for, not yet taken by the device.
    relay: Option<bool>,
}

impl Conn {
    /// Write `bytes` and wait for the message `expect` names, answering commands meanwhile.
    async fn exchange(
        &mut self,
        bytes: &[u8],
        expect: Expect,
        stats: &mut Stats,
    ) -> Result<Duration, String> {
        let sent = Instant::now();
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))?;
        loop {
            let msg = device::next_message(self.protocol, expect == Expect::Login, &mut self.buf)?;
            match msg {
                Some(ServerMsg::Command { text, answer }) => {
                    tracing::info!(command = %text, "command received; answering");
                    stats.commands += 1;
                    if let Some(on) = device::relay_command(&text) {
                        self.relay = Some(on);
                    }
                    self.stream
                        .write_all(&answer)
                        .await
                        .map_err(|e| format!("write: {e}"))?;
                    continue;
                }
                Some(m) => {
                    device::matches(expect, &m)?;
                    return Ok(sent.elapsed());
                }
                None => {}
            }
            if self.buf.capacity() - self.buf.len() < 512 {
                self.buf.reserve(4096);
            }
            let n =
                tokio::time::timeout_at(sent + ACK_TIMEOUT, self.stream.read_buf(&mut self.buf))
                    .await
                    .map_err(|_| format!("no answer within {ACK_TIMEOUT:?}"))?
                    .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed by the server".into());
            }
        }
    }
}

impl Device {
    async fn connect(&self, opts: &SimOptions, stats: &mut Stats) -> Result<Conn, String> {
        let stream = TcpStream::connect(&opts.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", opts.addr))?;
        let _ = stream.set_nodelay(true);
        let mut conn = Conn {
            stream,
            buf: BytesMut::with_capacity(4096),
            protocol: opts.protocol,
            relay: None,
        };
        let (login, expect) = Encoder::new(opts.protocol, self.imei.clone()).login();
        conn.exchange(&login, expect, stats).await?;
        Ok(conn)
    }

    /// Drive and report until cancelled.
    async fn run(
        self,
        opts: &SimOptions,
        api: Option<&ControlApi>,
        stop: &CancellationToken,
        stats: &mut Stats,
    ) {
        let mut driver = Driver::new(self.seed, self.plan.start, self.plan.bearing, self.plan.leg);
        let mut enc = Encoder::new(opts.protocol, self.imei.clone());
        let mut packets: Vec<(Bytes, Expect)> = Vec::new();
        let mut records = Vec::with_capacity(opts.records_per_packet);
        let mut conn: Option<Conn> = None;
        let started = Instant::now();
        let total = opts.duration.unwrap_or(Duration::from_secs(3600));
        let mut dater = Dater::new(self.clock);
        let mut din2 = false;
        let mut relay = false;
        let mut api_done = false;
        let interval = (opts.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / opts.rate));
        // Spread rate-limited devices over the first interval instead of all at once.
        let mut next_send = started
            + interval
                .map(|i| i.mul_f64(fastrand_fraction(self.seed)))
                .unwrap_or_default();
        loop {
            if stop.is_cancelled() {
                return;
            }
            // Wait before building, so that live records carry the time they are sent at.
            if let Some(i) = interval {
                tokio::select! {
                    _ = tokio::time::sleep_until(next_send) => {}
                    _ = stop.cancelled() => return,
                }
                next_send += i;
            }
            if packets.is_empty() {
                // Scenario events, by share of the run elapsed.
                let elapsed = started.elapsed().as_secs_f64() / total.as_secs_f64().max(1e-9);
                match opts.scenario {
                    Scenario::LowBalance if elapsed > 1.0 / 3.0 && !api_done => {
                        api_done = true;
                        if let Some(api) = api {
                            if let Err(e) = api.low_balance(&self.imei).await {
                                stats.error(format!("api: {e}"));
                            }
                        }
                    }
                    Scenario::Return if elapsed > 0.5 && !api_done => {
                        api_done = true;
                        din2 = true;
                        driver.set_leg(Leg::Park {
                            target: self.plan.depot,
                        });
                        if let Some(api) = api {
                            if let Err(e) = api.return_request(&self.imei).await {
                                stats.error(format!("api: {e}"));
                            }
                        }
                    }
                    _ => {}
                }
                records.clear();
                for (time, dt) in dater.next(opts.records_per_packet, Utc::now()) {
                    records.push(Record {
                        time,
                        fix: driver.step(dt),
                        din2,
                        dout1: relay,
                    });
                }
                enc.data(&records, &mut packets);
                packets.reverse();
            }
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match self.connect(opts, stats).await {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        stats.error(e);
                        pause(stop).await;
                        continue;
                    }
                },
            };
            let (bytes, expect) = packets.last().expect("a packet is due").clone();
            let records_in = match expect {
                Expect::Records(k) => u64::from(k),
                _ => 1,
            };
            let result = c.exchange(&bytes, expect, stats).await;
            // The immobiliser's last word: the relay cuts (or frees) the engine, and the
            // records from now on report the relay, which is what confirms the command.
            if let Some(on) = c.relay.take() {
                relay = on;
                driver.set_immobilised(on);
            }
            match result {
                Ok(latency) => {
                    stats.record_ack(latency, records_in);
                    packets.pop();
                }
                Err(e) => {
                    // Like a device: drop the connection, reconnect, resend what was not acked.
                    stats.error(e);
                    conn = None;
                    pause(stop).await;
                }
            }
        }
    }
}

/// A second's pause before reconnecting, cut short by the end of the run.
async fn pause(stop: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        _ = stop.cancelled() => {}
    }
}

/// A fraction in [0, 1) from a seed, to spread device start times.
fn fastrand_fraction(seed: u64) -> f64 {
    let x = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_780_000_000 + s, 0).unwrap()
    }

    #[test]
    fn a_rate_limited_run_dates_its_fixes_by_the_wall_clock() {
        let opts = SimOptions {
            duration: Some(Duration::from_secs(3600)),
            ..SimOptions::default()
        };
        let clock = opts.clock(at(0));
        assert!(matches!(clock, FixClock::Live { .. }), "{clock:?}");
        let mut d = Dater::new(clock);
        let first = d.next(1, at(0));
        assert_eq!(first[0].0, at(0), "the first fix is now, not an hour back");
        let later = d.next(1, at(5));
        assert_eq!(later[0], (at(5), 5.0), "the car drove the 5 s that passed");
        // A second run with the same IMEIs starts after the first one's last fix.
        let mut again = Dater::new(opts.clock(at(6)));
        assert!(again.next(1, at(6))[0].0 > later[0].0);
    }

    #[test]
    fn a_live_demo_runs_until_ctrl_c_unless_given_a_duration() {
        assert_eq!(run_time(1.0, None), None, "the demo's cars keep driving");
        assert_eq!(run_time(0.0, None), Some(Duration::from_secs(10)));
        assert_eq!(run_time(1.0, Some(30.0)), Some(Duration::from_secs(30)));
        assert_eq!(run_time(0.0, Some(0.0)), None, "0 = until Ctrl-C");
    }

    #[test]
    fn a_packet_of_live_records_ends_now_and_never_repeats_a_time() {
        let opts = SimOptions {
            protocol: SimProtocol::Wialon,
            rate: 0.2,
            records_per_packet: 5,
            ..SimOptions::default()
        };
        let mut d = Dater::new(opts.clock(at(0)));
        let p = d.next(5, at(100));
        let times: Vec<_> = p.iter().map(|(t, _)| *t).collect();
        assert_eq!(times, (96..=100).map(at).collect::<Vec<_>>());
        // Built again within the same second: still one second later each (Wialon's grain).
        let q = d.next(2, at(100));
        assert_eq!(q[0].0, at(101));
        assert_eq!(q[1].0, at(102));
    }

    #[test]
    fn flat_out_and_too_fast_runs_keep_a_compressed_clock_that_ends_in_the_past() {
        let flat = SimOptions {
            rate: 0.0,
            ..SimOptions::default()
        };
        let FixClock::Compressed { step, t0 } = flat.clock(at(0)) else {
            panic!("flat out is compressed");
        };
        assert_eq!((step, t0), (1.0, at(0) - chrono::Duration::days(365)));
        // GT06 dates whole seconds: 5 fixes a second cannot follow the wall clock.
        let fast = SimOptions {
            protocol: SimProtocol::Gt06,
            rate: 5.0,
            duration: Some(Duration::from_secs(10)),
            ..SimOptions::default()
        };
        let clock = fast.clock(at(0));
        let mut d = Dater::new(clock);
        let times: Vec<_> = (0..50).map(|_| d.next(1, at(0))[0].0).collect();
        assert!(times
            .windows(2)
            .all(|w| w[1] - w[0] == chrono::Duration::seconds(1)));
        assert!(*times.last().unwrap() < at(0));
        // Teltonika dates milliseconds: the same rate is live.
        let tel = SimOptions {
            rate: 5.0,
            ..SimOptions::default()
        };
        assert!(matches!(tel.clock(at(0)), FixClock::Live { .. }));
    }
}
