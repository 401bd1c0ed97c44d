//! What every protocol's end-to-end test needs: the daemon, a UDP device, the track read back
//! through the API, and checksums computed here from the protocol documents (not through the
//! codec's own helpers), so an ack is checked against the bytes the protocol requires.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use crc::{Crc, CRC_16_IBM_SDLC, CRC_16_KERMIT, CRC_16_MODBUS};
use fleetgate::app::Running;
use fleetgate::protocols::{Protocol, Transport};
use serde_json::Value;
use tokio::net::UdpSocket;

pub use crate::common::{Api, Tracker};

/// CRC-ITU as the GT06 documents name it (CRC-16/X-25).
pub const CRC_ITU: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_SDLC);
/// Galileosky's checksum (CRC-16/MODBUS).
pub const CRC_MODBUS: Crc<u16> = Crc::<u16>::new(&CRC_16_MODBUS);
/// Ruptela's checksum (CRC-16/KERMIT).
pub const CRC_KERMIT: Crc<u16> = Crc::<u16>::new(&CRC_16_KERMIT);

/// A daemon with every protocol listening on an ephemeral loopback port.
pub struct Daemon {
    pub running: Running,
    pub api: Api,
    _dir: tempfile::TempDir,
}

impl Daemon {
    pub async fn start() -> Daemon {
        Daemon::start_with("").await
    }

    /// A daemon with `extra` appended to the test config (e.g. `[protocols.gl200]`).
    pub async fn start_with(extra: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let running = crate::common::start(dir.path(), extra).await;
        let api = Api::new(running.api_addr);
        Daemon {
            running,
            api,
            _dir: dir,
        }
    }

    pub fn addr(&self, p: Protocol, t: Transport) -> SocketAddr {
        self.running
            .addr(p, t)
            .unwrap_or_else(|| panic!("{p} listens on {t:?}"))
    }

    pub async fn tcp(&self, p: Protocol) -> Tracker {
        Tracker::connect(self.addr(p, Transport::Tcp)).await
    }

    pub async fn udp(&self, p: Protocol) -> UdpDevice {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
        sock.connect(self.addr(p, Transport::Udp))
            .await
            .expect("connect UDP");
        UdpDevice { sock }
    }

    /// The stored track of `device` on 2026-11-20 (UTC), in fix-time order.
    pub async fn track(&self, device: &str) -> Vec<Value> {
        let (status, body) = self
            .api
            .get(&format!(
                "/api/v1/vehicles/{device}/track?from=2026-11-20T00:00:00Z&to=2026-11-21T00:00:00Z"
            ))
            .await;
        assert_eq!(status, 200, "track of {device}: {body}");
        body.as_array().expect("track is an array").clone()
    }

    /// The value of one sample of the Prometheus text, 0 when absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, text) = self.api.text("/metrics").await;
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub async fn stop(self) {
        self.running.stop().await;
    }
}

/// A device's UDP socket, connected to the daemon's port.
pub struct UdpDevice {
    pub sock: UdpSocket,
}

impl UdpDevice {
    pub async fn send(&self, bytes: &[u8]) {
        self.sock.send(bytes).await.expect("send datagram");
    }

    /// The next datagram within 5 s.
    pub async fn recv(&self) -> Vec<u8> {
        let mut buf = vec![0; 65_536];
        let n = tokio::time::timeout(Duration::from_secs(5), self.sock.recv(&mut buf))
            .await
            .expect("reply datagram within 5 s")
            .expect("recv");
        buf.truncate(n);
        buf
    }

    /// Whatever datagram arrives within `ms`; empty when none does.
    pub async fn recv_for(&self, ms: u64) -> Vec<u8> {
        let mut buf = vec![0; 65_536];
        match tokio::time::timeout(Duration::from_millis(ms), self.sock.recv(&mut buf)).await {
            Ok(Ok(n)) => buf[..n].to_vec(),
            _ => Vec::new(),
        }
    }
}

/// What a stored fix must say.
pub struct Expect {
    pub time: DateTime<Utc>,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: f64,
}

/// Check the stored track against the fixes sent, one for one, to the given tolerances
/// (coordinates in degrees, speed in km/h): a protocol that carries degree-minutes or knots
/// rounds on the wire.
pub fn assert_track(track: &[Value], want: &[Expect], deg_tol: f64, speed_tol: f64) {
    assert_eq!(
        track.len(),
        want.len(),
        "one stored fix per fix sent: {track:?}"
    );
    for (i, (got, w)) in track.iter().zip(want).enumerate() {
        let time = w.time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        assert_eq!(
            got["time"].as_str(),
            Some(time.as_str()),
            "fix {i} time: {got}"
        );
        let lat = got["lat"].as_f64().expect("lat");
        let lon = got["lon"].as_f64().expect("lon");
        assert!(
            (lat - w.lat).abs() <= deg_tol,
            "fix {i} lat {lat} vs {}: {got}",
            w.lat
        );
        assert!(
            (lon - w.lon).abs() <= deg_tol,
            "fix {i} lon {lon} vs {}: {got}",
            w.lon
        );
        if w.speed_kmh.is_nan() {
            continue; // the protocol carries no speed for this fix
        }
        let speed = got["speed_kmh"].as_f64().unwrap_or(f64::NAN);
        assert!(
            (speed - w.speed_kmh).abs() <= speed_tol,
            "fix {i} speed {speed} vs {}: {got}",
            w.speed_kmh
        );
    }
}

/// 2026-11-20 09:00:00 UTC plus `s` seconds: the base time of every session.
pub fn t(s: i64) -> DateTime<Utc> {
    use chrono::TimeZone;
    Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 0).unwrap() + chrono::Duration::seconds(s)
}
