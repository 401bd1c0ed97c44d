//! A Teltonika tracker as the end-to-end tests drive it: IMEI login, Codec 8E records that
//! must be acked, and Codec 12 commands read off the wire.

use chrono::{DateTime, Utc};
use fleetgate::protocols::teltonika::{encode_avl_packet, encode_imei, io, AvlRecord, CODEC_8E};

use super::Tracker;

/// A record `ago_s` seconds before now at central Moscow.
pub fn rec(ago_s: i64, speed: u16, ignition: bool, dout1: Option<bool>) -> AvlRecord {
    let mut io = vec![(io::IGNITION, 1, u64::from(ignition))];
    if let Some(d) = dout1 {
        io.push((io::DOUT1, 1, u64::from(d)));
    }
    AvlRecord {
        time: Utc::now() - chrono::Duration::seconds(ago_s),
        lat: 55.75,
        lon: 37.62,
        speed_kmh: speed,
        course: 90,
        altitude: 150,
        satellites: 10,
        io,
    }
}

pub async fn login(addr: std::net::SocketAddr, imei: &str) -> Tracker {
    let mut t = Tracker::connect(addr).await;
    t.send(&encode_imei(imei)).await;
    assert_eq!(t.read(1).await, [1], "IMEI accepted");
    t
}

/// Send one Codec 8E packet and expect the ack of every record in it.
pub async fn send_records(t: &mut Tracker, recs: &[AvlRecord]) {
    t.send(&encode_avl_packet(CODEC_8E, recs)).await;
    assert_eq!(t.read(4).await, (recs.len() as u32).to_be_bytes());
}

/// Read one Codec 12 command packet from the server; returns its text.
pub async fn read_command(t: &mut Tracker) -> String {
    let head = t.read(8).await;
    assert_eq!(&head[..4], [0, 0, 0, 0], "preamble");
    let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
    let rest = t.read(len + 4).await;
    assert_eq!(rest[0], 0x0C, "Codec 12");
    assert_eq!(rest[2], 0x05, "command type");
    let n = u32::from_be_bytes([rest[3], rest[4], rest[5], rest[6]]) as usize;
    String::from_utf8(rest[7..7 + n].to_vec()).expect("text command")
}

/// A tracker that never waits for acks: writes the packets `packet(0)`, `packet(1)`, … as
/// fast as the socket takes them until `until`. Returns the bytes it got into the socket.
pub async fn flood(
    mut s: tokio::net::TcpStream,
    until: std::time::Instant,
    mut packet: impl FnMut(i64) -> bytes::Bytes,
) -> usize {
    use tokio::io::AsyncWriteExt;
    let mut written = 0;
    let mut k = 0;
    while std::time::Instant::now() < until {
        let bytes = packet(k);
        k += 1;
        let left = until.saturating_duration_since(std::time::Instant::now());
        match tokio::time::timeout(left, s.write_all(&bytes)).await {
            Ok(Ok(())) => written += bytes.len(),
            _ => break,
        }
    }
    written
}

/// Three consecutive parked records (ignition off, 1 s apart) ending `ago_s` seconds before
/// now: the run of stopped fixes the immobiliser needs (`safe_fixes = 3`) to block.
pub fn parked(ago_s: i64, dout1: Option<bool>) -> Vec<AvlRecord> {
    (0..3)
        .rev()
        .map(|i| rec(ago_s + i, 0, false, dout1))
        .collect()
}

/// A car's tracker over a shift: one record every 5 s from `t0`, moving north (or south, at a
/// negative speed) at the given speed, its odometer (`TOTAL_ODOMETER`) following the distance.
pub struct Drive {
    pub t0: DateTime<Utc>,
    pub s: i64,
    pub lat: f64,
    pub odo_m: f64,
    /// The tracker reports its odometer (false: an odometer-less tracker).
    pub odometer: bool,
    pub recs: Vec<AvlRecord>,
}

impl Drive {
    pub fn new(t0: DateTime<Utc>) -> Drive {
        Drive {
            t0,
            s: 0,
            lat: 55.75,
            odo_m: 1_000_000.0,
            odometer: true,
            recs: Vec::new(),
        }
    }

    /// `secs` seconds at `speed` km/h (negative: southward), ignition as given.
    pub fn go(&mut self, secs: i64, speed: f64, ignition: bool) -> &mut Drive {
        for _ in 0..secs / 5 {
            self.s += 5;
            let m = speed / 3.6 * 5.0;
            self.lat += m / 111_195.0;
            self.odo_m += m.abs();
            let mut io = vec![
                (io::IGNITION, 1, u64::from(ignition)),
                (io::MOVEMENT, 1, u64::from(speed != 0.0)),
            ];
            if self.odometer {
                io.push((io::TOTAL_ODOMETER, 4, self.odo_m as u64));
            }
            self.recs.push(AvlRecord {
                time: self.t0 + chrono::Duration::seconds(self.s),
                lat: self.lat,
                lon: 37.61,
                speed_kmh: speed.abs() as u16,
                course: 0,
                altitude: 150,
                satellites: 12,
                io,
            });
        }
        self
    }

    /// Skip `secs` seconds without a record (parked, tracker asleep).
    pub fn pause(&mut self, secs: i64) -> &mut Drive {
        self.s += secs;
        self
    }

    /// Take the records made so far (to send them), keeping the car where it is.
    pub fn take(&mut self) -> Vec<AvlRecord> {
        std::mem::take(&mut self.recs)
    }
}
