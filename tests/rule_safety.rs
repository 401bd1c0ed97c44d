//! Rule safety: noisy traces along the shipped service area's border (Moscow + Moscow Oblast,
//! `geofences/service_area.geojson`) replayed through the real pipeline — Teltonika over TCP
//! into storage, the zone stage and the immobiliser's service-area rule — give no wrongful
//! `outside_service_area` block and miss no real exit.
//!
//! Traces are generated deterministically (seeded RNG, `FLEETGATE_RULE_SEED` to vary it) from
//! the real boundary polygon: the generator walks along the ring and offsets the true path
//! inwards (cars that stay inside, many within the 200 m hysteresis band) or across it (cars
//! that really leave). On top of the true path: GPS jitter (σ 15 m) and multipath errors of
//! up to 180 m, jumps of 10–60 km (single and runs of three), invalid fixes and a 0°/0° fix
//! far away, batches of random size, some uploaded newest-first, some delivered out of order
//! or twice, and tracker clocks one hour behind or ahead (stayers and leavers).
//!
//! Stayers: no service-area exit event, no `outside_service_area` reason, no engine command.
//! Leavers: exactly one exit, confirmed after the true crossing and within 5 minutes of it,
//! no re-entry, and the reason set.

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{Api, Tracker};
use fleetgate::geofence::ZoneSet;
use fleetgate::protocols::teltonika::{encode_avl_packet, encode_imei, AvlRecord, CODEC_8E};
use fleetgate::protocols::{Protocol, Transport};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const AREA: &str = "moscow_region";
const M_PER_DEG: f64 = 111_320.0;
/// Seconds between true fixes.
const STEP_S: i64 = 10;

fn offset((lat, lon): (f64, f64), north_m: f64, east_m: f64) -> (f64, f64) {
    (
        lat + north_m / M_PER_DEG,
        lon + east_m / (M_PER_DEG * lat.to_radians().cos()),
    )
}

fn metres(a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
    let north = (b.0 - a.0) * M_PER_DEG;
    let east = (b.1 - a.1) * M_PER_DEG * a.0.to_radians().cos();
    (north, east)
}

/// The service area's ring, walkable by arc length.
struct Border {
    set: ZoneSet,
    ring: Vec<(f64, f64)>,
    /// Arc length at each vertex, metres.
    at: Vec<f64>,
}

impl Border {
    fn load() -> Border {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/geofences");
        let set = ZoneSet::load_dir(dir).unwrap();
        let fc: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{dir}/service_area.geojson")).unwrap(),
        )
        .unwrap();
        let f = fc["features"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["properties"]["name"] == AREA)
            .expect("the service area");
        assert_eq!(f["geometry"]["type"], "Polygon");
        let ring: Vec<(f64, f64)> = f["geometry"]["coordinates"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c[1].as_f64().unwrap(), c[0].as_f64().unwrap()))
            .collect();
        let mut at = vec![0.0];
        for w in ring.windows(2) {
            let (n, e) = metres(w[0], w[1]);
            at.push(at.last().unwrap() + n.hypot(e));
        }
        Border { set, ring, at }
    }

    fn perimeter(&self) -> f64 {
        *self.at.last().unwrap()
    }

    fn inside(&self, p: (f64, f64)) -> bool {
        self.set.containing(p.0, p.1).any(|z| z.name == AREA)
    }

    fn distance(&self, p: (f64, f64)) -> f64 {
        self.set.distance_to_boundary_m(AREA, p.0, p.1).unwrap()
    }

    /// The point at arc length `s` (wrapping around).
    fn point(&self, s: f64) -> (f64, f64) {
        let s = s.rem_euclid(self.perimeter());
        let i = self
            .at
            .partition_point(|&a| a <= s)
            .clamp(1, self.ring.len() - 1);
        let (a, b) = (self.ring[i - 1], self.ring[i]);
        let len = self.at[i] - self.at[i - 1];
        let f = if len > 0.0 {
            (s - self.at[i - 1]) / len
        } else {
            0.0
        };
        (a.0 + (b.0 - a.0) * f, a.1 + (b.1 - a.1) * f)
    }

    /// Unit normal (north, east) at arc length `s` pointing into the area, from the chord
    /// over ±150 m; `None` where the side cannot be told (a spike of the border).
    fn inward(&self, s: f64) -> Option<(f64, f64)> {
        let p = self.point(s);
        let (n, e) = metres(self.point(s - 150.0), self.point(s + 150.0));
        let len = n.hypot(e);
        if len < 50.0 {
            return None;
        }
        let normal = (-e / len, n / len);
        let plus = self.inside(offset(p, normal.0 * 300.0, normal.1 * 300.0));
        let minus = self.inside(offset(p, -normal.0 * 300.0, -normal.1 * 300.0));
        match (plus, minus) {
            (true, false) => Some(normal),
            (false, true) => Some((-normal.0, -normal.1)),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Fix {
    t: i64,
    lat: f64,
    lon: f64,
    sats: u8,
}

struct Car {
    imei: String,
    what: String,
    leaves: bool,
    /// Fix time (device clock) of the first true fix outside, for leavers.
    crossing: Option<i64>,
    /// In upload order.
    batches: Vec<Vec<Fix>>,
    /// True fixes within the 200 m band inside the border (stayers).
    in_band: usize,
    true_fixes: usize,
}

fn gauss(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// GPS error of one fix: jitter, sometimes a multipath error; never 200 m or more (that is
/// what the hysteresis band is for).
fn noisy(rng: &mut StdRng, p: (f64, f64)) -> (f64, f64) {
    let (mut n, mut e) = (gauss(rng) * 15.0, gauss(rng) * 15.0);
    if rng.gen_bool(0.04) {
        let a: f64 = rng.gen_range(0.0..std::f64::consts::TAU);
        let r = rng.gen_range(80.0..150.0);
        n += r * a.cos();
        e += r * a.sin();
    }
    let len = n.hypot(e);
    if len > 180.0 {
        n *= 180.0 / len;
        e *= 180.0 / len;
    }
    offset(p, n, e)
}

/// The true path plus everything a real tracker adds to it, cut into uploads.
fn dress(rng: &mut StdRng, truth: &[(i64, (f64, f64))], clock_s: i64) -> Vec<Vec<Fix>> {
    let mut fixes = Vec::new();
    for (k, &(t, p)) in truth.iter().enumerate() {
        let (lat, lon) = noisy(rng, p);
        fixes.push(Fix {
            t: t + clock_s,
            lat,
            lon,
            sats: rng.gen_range(5..14),
        });
        if k == 0 {
            continue;
        }
        if rng.gen_bool(0.06) {
            // A jump of tens of km, sometimes three fixes long.
            let a: f64 = rng.gen_range(0.0..std::f64::consts::TAU);
            let r = rng.gen_range(10_000.0..60_000.0);
            let far = offset(p, r * a.cos(), r * a.sin());
            let run = if rng.gen_bool(0.3) { 3 } else { 1 };
            for j in 0..run {
                fixes.push(Fix {
                    t: t + clock_s + 2 + 2 * j,
                    lat: far.0,
                    lon: far.1,
                    sats: 8,
                });
            }
        }
        if rng.gen_bool(0.05) {
            // No GPS lock: stale or random coordinates, flagged invalid.
            let far = offset(
                p,
                rng.gen_range(-40_000.0..40_000.0),
                rng.gen_range(-40_000.0..40_000.0),
            );
            fixes.push(Fix {
                t: t + clock_s + 7,
                lat: far.0,
                lon: far.1,
                sats: 0,
            });
        }
        if k == truth.len() / 3 {
            fixes.push(Fix {
                t: t + clock_s + 9,
                lat: 0.0,
                lon: 0.0,
                sats: 4,
            });
        }
    }
    fixes.sort_by_key(|f| f.t);
    let mut batches = Vec::new();
    let mut rest = &fixes[..];
    while !rest.is_empty() {
        let n = rng.gen_range(5..16).min(rest.len());
        let mut b = rest[..n].to_vec();
        if rng.gen_bool(0.3) {
            b.reverse(); // a buffered upload, newest first
        }
        batches.push(b);
        rest = &rest[n..];
    }
    // Out-of-order delivery and re-sent uploads. The first upload stays first: the zone
    // tracker takes a new device's initial membership from its first accepted fix (see
    // docs/reliability.md, "Rule safety", for what happens when that fix is an outlier).
    for i in 1..batches.len().saturating_sub(1) {
        if rng.gen_bool(0.15) {
            batches.swap(i, i + 1);
        }
    }
    for i in (0..batches.len()).rev() {
        if rng.gen_bool(0.1) {
            let again = batches[i].clone();
            let to = rng.gen_range(i + 1..=batches.len());
            batches.insert(to, again);
        }
    }
    batches
}

/// A car that stays inside, driving along the border (or parked on it) about `depth` metres
/// in: where the border wiggles, the true point is moved in (2, 4, 8 × depth) until inside.
/// How a stayer drives: about `depth` metres in, moving or parked, clock offset.
#[derive(Clone, Copy)]
struct Stay {
    depth: f64,
    moving: bool,
    clock_s: i64,
    what: &'static str,
}

fn stayer(rng: &mut StdRng, b: &Border, t0: i64, imei: &str, plan: &Stay) -> Car {
    let Stay {
        depth,
        moving,
        clock_s,
        what,
    } = *plan;
    for _attempt in 0..2000 {
        let s0 = rng.gen_range(0.0..b.perimeter());
        // m/s along the border
        let speed = if moving {
            rng.gen_range(8.0..20.0)
        } else {
            0.0
        };
        let mut truth = Vec::new();
        let mut ok = true;
        let mut in_band = 0;
        for k in 0..70i64 {
            let s = s0 + speed * (k * STEP_S) as f64;
            let Some(n) = b.inward(s) else {
                ok = false;
                break;
            };
            // Approach from 800 m inside, then along the border.
            let d = if k < 6 {
                800.0 - (800.0 - depth) * k as f64 / 6.0
            } else {
                depth
            };
            let Some(p) = [1.0, 2.0, 4.0, 8.0]
                .iter()
                .map(|m| offset(b.point(s), n.0 * d * m, n.1 * d * m))
                .find(|&p| b.inside(p))
            else {
                ok = false;
                break;
            };
            if let Some(&(_, last)) = truth.last() {
                let (dn, de) = metres(last, p);
                // A plausible drive: no hop the jump filter would take for a GPS jump.
                if dn.hypot(de) > 600.0 {
                    ok = false;
                    break;
                }
            }
            if b.distance(p) < 200.0 {
                in_band += 1;
            }
            truth.push((t0 + k * STEP_S, p));
        }
        if !ok || in_band < 40 {
            continue;
        }
        let true_fixes = truth.len();
        return Car {
            imei: imei.into(),
            what: what.into(),
            leaves: false,
            crossing: None,
            batches: dress(rng, &truth, clock_s),
            in_band,
            true_fixes,
        };
    }
    panic!("no usable stretch of border for {what}");
}

/// A car that crosses the border outwards and stays out.
/// A device clock offset as fleetgate stores the fixes: whole hours ahead are taken off
/// (a time zone set on the tracker, `pipeline::clock`); behind is kept (buffered uploads).
fn as_stored(clock_s: i64) -> i64 {
    if clock_s > 300 {
        clock_s - (clock_s + 1800).div_euclid(3600) * 3600
    } else {
        clock_s
    }
}

fn leaver(rng: &mut StdRng, b: &Border, t0: i64, imei: &str, clock_s: i64, what: &str) -> Car {
    for _attempt in 0..500 {
        let s0 = rng.gen_range(0.0..b.perimeter());
        let Some(n) = b.inward(s0) else { continue };
        let p = b.point(s0);
        // 1.5 km inside to 3 km outside at 10 m/s, then parked outside for 2 minutes.
        let mut truth = Vec::new();
        for k in 0..58i64 {
            let d = 1500.0 - 100.0 * (k.min(45) as f64);
            truth.push((t0 + k * STEP_S, offset(p, n.0 * d, n.1 * d)));
        }
        let sides: Vec<bool> = truth.iter().map(|&(_, q)| b.inside(q)).collect();
        let flips = sides.windows(2).filter(|w| w[0] != w[1]).count();
        let far_out = truth[40..].iter().all(|&(_, q)| b.distance(q) >= 1000.0);
        if !sides[0] || flips != 1 || !far_out || b.distance(truth[0].1) < 500.0 {
            continue;
        }
        let first_out = sides.iter().position(|s| !s).unwrap();
        return Car {
            imei: imei.into(),
            what: what.into(),
            leaves: true,
            crossing: Some(truth[first_out].0 + as_stored(clock_s)),
            batches: dress(rng, &truth, clock_s),
            in_band: 0,
            true_fixes: truth.len(),
        };
    }
    panic!("no usable crossing for {what}");
}

async fn replay(addr: std::net::SocketAddr, car: &Car) {
    let mut t = Tracker::connect(addr).await;
    t.send(&encode_imei(&car.imei)).await;
    assert_eq!(t.read(1).await, [1], "{}: login", car.what);
    for b in &car.batches {
        let recs: Vec<AvlRecord> = b
            .iter()
            .map(|f| AvlRecord {
                time: DateTime::from_timestamp(f.t, 0).unwrap(),
                lat: f.lat,
                lon: f.lon,
                speed_kmh: 40,
                course: 0,
                altitude: 150,
                satellites: f.sats,
                io: vec![],
            })
            .collect();
        t.send(&encode_avl_packet(CODEC_8E, &recs)).await;
        let ack = tokio::time::timeout(Duration::from_secs(30), read4(&mut t))
            .await
            .expect("ack within 30 s");
        assert_eq!(ack, (recs.len() as u32).to_be_bytes(), "{}: ack", car.what);
    }
}

async fn read4(t: &mut Tracker) -> [u8; 4] {
    use tokio::io::AsyncReadExt;
    let mut b = [0u8; 4];
    t.stream.read_exact(&mut b).await.expect("ack bytes");
    b
}

async fn area_events(api: &Api, imei: &str) -> Vec<Value> {
    let (status, e) = api.get(&format!("/api/v1/events?vehicle={imei}")).await;
    assert_eq!(status, 200, "{e}");
    e.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["zone"] == AREA)
        .cloned()
        .collect()
}

async fn reasons(api: &Api, imei: &str) -> Vec<String> {
    let (status, v) = api.get(&format!("/api/v1/vehicles/{imei}")).await;
    assert_eq!(status, 200, "{v}");
    v["immobiliser"]["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

common::both_backends!(noisy_border_traces_give_no_wrongful_block_and_no_missed_exit);
async fn noisy_border_traces_give_no_wrongful_block_and_no_missed_exit() {
    let seed: u64 = std::env::var("FLEETGATE_RULE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261124);
    println!("seed {seed} (FLEETGATE_RULE_SEED to change)");
    let mut rng = StdRng::seed_from_u64(seed);
    let border = Border::load();
    // Device time: live trackers, their traces around now (4 min 40 s back to 5 min ahead).
    // A clock one hour ahead is then an hour in the future, give or take `max_future_s`: what a
    // live tracker with a time zone set sends, and what confirms the offset (a correction is
    // never taken from fixes that are not a whole hour ahead). The last fixes of the
    // right-clock cars lie further ahead than `max_future_s` and are refused as future.
    let t0 = Utc::now().timestamp() - 280;
    let hour = 3600;
    let mut cars = Vec::new();
    for (i, (depth, moving, clock_s, what)) in [
        (10.0, true, 0, "rider ~10 m inside"),
        (25.0, true, 0, "rider ~25 m inside"),
        (60.0, true, 0, "rider ~60 m inside"),
        (150.0, true, 0, "rider ~150 m inside"),
        (5.0, false, 0, "parked ~5 m inside"),
        (
            20.0,
            true,
            -hour,
            "rider ~20 m inside, clock an hour behind",
        ),
        (20.0, true, hour, "rider ~20 m inside, clock an hour ahead"),
    ]
    .into_iter()
    .enumerate()
    {
        let imei = format!("35963210{:07}", 1000 + i);
        let plan = Stay {
            depth,
            moving,
            clock_s,
            what,
        };
        cars.push(stayer(&mut rng, &border, t0, &imei, &plan));
    }
    for (i, (clock, what)) in [
        (0, "leaver"),
        (0, "leaver (second crossing)"),
        (-hour, "leaver, clock an hour behind"),
        (hour, "leaver, clock an hour ahead"),
    ]
    .into_iter()
    .enumerate()
    {
        let imei = format!("35963210{:07}", 2000 + i);
        cars.push(leaver(&mut rng, &border, t0, &imei, clock, what));
    }
    let band: usize = cars.iter().map(|c| c.in_band).sum();
    let total: usize = cars
        .iter()
        .filter(|c| !c.leaves)
        .map(|c| c.true_fixes)
        .sum();
    // Valid fixes the stayers send from across the border (noise, not jumps).
    let across: usize = cars
        .iter()
        .filter(|c| !c.leaves)
        .flat_map(|c| c.batches.iter().flatten())
        .filter(|f| {
            f.sats > 0 && !border.inside((f.lat, f.lon)) && border.distance((f.lat, f.lon)) < 1000.0
        })
        .count();
    println!(
        "stayers: {band} of {total} true fixes within 200 m of the border; {across} noisy fixes sent from across it"
    );
    assert!(band * 2 > total, "the stayers hug the border");
    assert!(across > 20, "the noise crosses the border");

    let dir = tempfile::tempdir().unwrap();
    let daemon = common::start(dir.path(), "").await;
    let api = Api::new(daemon.api_addr);
    let addr = daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let started = Instant::now();
    // Stayers first, all at once; then the leavers. Rule stages work in commit order, so once
    // the leavers' exits are in, every stayer fix has been through the rules too.
    let (stayers, leavers): (Vec<&Car>, Vec<&Car>) = cars.iter().partition(|c| !c.leaves);
    futures::future::join_all(stayers.iter().map(|c| replay(addr, c))).await;
    futures::future::join_all(leavers.iter().map(|c| replay(addr, c))).await;

    for car in &leavers {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let exits = area_events(&api, &car.imei).await;
            let reasons = reasons(&api, &car.imei).await;
            if (!exits.is_empty() && reasons.iter().any(|r| r == "outside_service_area"))
                || Instant::now() > deadline
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut report = Vec::new();
    for car in &cars {
        let events = area_events(&api, &car.imei).await;
        let reasons = reasons(&api, &car.imei).await;
        let blocked = reasons.iter().any(|r| r == "outside_service_area");
        let exits: Vec<&Value> = events.iter().filter(|e| e["type"] == "exit").collect();
        report.push(format!(
            "{}: {} uploads, {} exits, reasons {reasons:?}",
            car.what,
            car.batches.len(),
            exits.len()
        ));
        if !car.leaves {
            assert!(exits.is_empty(), "{}: wrongful exit {exits:?}", car.what);
            assert!(!blocked, "{}: wrongfully blocked", car.what);
            let (_, cmds) = api
                .get(&format!("/api/v1/vehicles/{}/commands", car.imei))
                .await;
            assert_eq!(cmds, Value::Array(vec![]), "{}: engine commands", car.what);
            continue;
        }
        if exits.len() != 1 {
            // What the car sent and what fleetgate made of it, to diagnose.
            for bt in &car.batches {
                println!("--- batch");
                for f in bt {
                    println!(
                        "{} {:.6} {:.6} sats {} inside {} dist {:.0}",
                        f.t - t0,
                        f.lat,
                        f.lon,
                        f.sats,
                        border.inside((f.lat, f.lon)),
                        border.distance((f.lat, f.lon))
                    );
                }
            }
            let (_, v) = api.get(&format!("/api/v1/vehicles/{}", car.imei)).await;
            println!("{v}");
            let (_, tr) = api
                .get(&format!(
                    "/api/v1/vehicles/{}/track?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
                    car.imei
                ))
                .await;
            println!("stored {}", tr.as_array().map(|a| a.len()).unwrap_or(0));
        }
        assert_eq!(exits.len(), 1, "{}: one exit: {events:?}", car.what);
        assert!(
            !events.iter().any(|e| e["type"] == "enter"),
            "{}: flapped back in: {events:?}",
            car.what
        );
        let at = DateTime::parse_from_rfc3339(exits[0]["time"].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc)
            .timestamp();
        let crossing = car.crossing.unwrap();
        assert!(
            at >= crossing && at <= crossing + 300,
            "{}: exit at {at}, crossing at {crossing}",
            car.what
        );
        assert!(blocked, "{}: exit without the block reason", car.what);
    }
    println!("{}", report.join("\n"));
    println!("replayed and checked in {:?}", started.elapsed());
    daemon.stop().await;
}
