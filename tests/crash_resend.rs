//! The group commit writes one small chunk per packet; a tracker re-sends what it was not
//! acked for (and, here, sometimes what it was). The real binary under load is killed with
//! SIGKILL at random moments and restarted, on SQLite and on PostgreSQL; every tracker's first
//! packets after a restart re-send its previous two (one acked, one in flight at the kill)
//! with other coordinates. Afterwards:
//! every acked record is stored, each fix time once, and a record acked before the kill keeps
//! the coordinates of that first copy — before and after `fleetgate storage compact`.

mod common;

use common::process::{spawn, teltonika_only, wait_ready, TeltonikaOnly};
use common::Api;
use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use fleetgate::protocols::teltonika::{encode_avl_packet, encode_imei, AvlRecord, CODEC_8E};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the trackers saw acked: (imei, fix ms) → the latitudes acked for it, in order.
type Acked = Arc<Mutex<BTreeMap<(String, i64), Vec<f64>>>>;
/// Each tracker's last two packets sent (fix times and latitudes: the one in flight at the
/// kill and the one acked before it), to re-send after a restart.
type Last = Arc<Mutex<HashMap<String, Vec<Vec<(i64, f64)>>>>>;

/// A re-sent copy's latitude shift: small enough for the jump filter (about a metre), a tenth
/// of the step between a packet's original latitudes (1e-4°), so copies tell apart.
const RESEND: f64 = 1e-5;

fn record(t: i64, lat: f64) -> AvlRecord {
    AvlRecord {
        time: Utc.timestamp_millis_opt(t).unwrap(),
        lat,
        lon: 37.6,
        speed_kmh: 30,
        course: 0,
        altitude: 100,
        satellites: 9,
        io: vec![],
    }
}

/// Re-send the previous two packets (latitudes moved by [`RESEND`]), then send new packets of 5 records
/// until the connection breaks; record every acked packet.
async fn tracker(port: u16, imei: String, start_ms: i64, acked: Acked, last: Last) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return;
    };
    if s.write_all(&encode_imei(&imei)).await.is_err() {
        return;
    }
    let mut one = [0u8; 1];
    if s.read_exact(&mut one).await.is_err() || one[0] != 1 {
        return;
    }
    let mut resend: std::collections::VecDeque<Vec<(i64, f64)>> = last
        .lock()
        .unwrap()
        .get(&imei)
        .map(|packets| {
            packets
                .iter()
                .map(|p| p.iter().map(|(t, lat)| (*t, lat + RESEND)).collect())
                .collect()
        })
        .unwrap_or_default();
    let mut t = start_ms;
    loop {
        let recs: Vec<(i64, f64)> = match resend.pop_front() {
            Some(p) => p,
            None => (0..5)
                .map(|i| {
                    t += 1000;
                    (t, 55.7 + (i as f64) * 1e-4)
                })
                .collect(),
        };
        {
            let mut l = last.lock().unwrap();
            let mine = l.entry(imei.clone()).or_default();
            mine.push(recs.clone());
            if mine.len() > 2 {
                mine.remove(0);
            }
        }
        let avl: Vec<AvlRecord> = recs.iter().map(|(t, lat)| record(*t, *lat)).collect();
        if s.write_all(&encode_avl_packet(CODEC_8E, &avl))
            .await
            .is_err()
        {
            return;
        }
        let mut ack = [0u8; 4];
        match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut ack)).await {
            Ok(Ok(_)) if ack == [0, 0, 0, 5] => {
                let mut a = acked.lock().unwrap();
                for (t, lat) in &recs {
                    a.entry((imei.clone(), *t)).or_default().push(*lat);
                }
            }
            _ => return,
        }
    }
}

/// Every stored fix of each tracker, through the API: (imei, ms) → latitude; fails on a fix
/// time served twice.
async fn stored(api: &Api, imeis: &[String]) -> BTreeMap<(String, i64), f64> {
    let mut out = BTreeMap::new();
    for imei in imeis {
        let (status, track) = api
            .get(&format!(
                "/api/v1/vehicles/{imei}/track?from=2026-01-01T00:00:00Z&to=2027-01-01T00:00:00Z&limit=1000000"
            ))
            .await;
        assert_eq!(status, 200);
        for p in track.as_array().unwrap() {
            let ms = chrono::DateTime::parse_from_rfc3339(p["time"].as_str().unwrap())
                .unwrap()
                .timestamp_millis();
            let lat = p["lat"].as_f64().unwrap();
            assert!(
                out.insert((imei.clone(), ms), lat).is_none(),
                "{imei} {ms} served twice"
            );
        }
    }
    out
}

/// Nothing acked is lost, and the copy kept is never a later one than the first acked: a
/// record first acked as sent originally keeps exactly that copy; one first acked as a
/// re-send may keep an earlier copy that was committed but not acked before the kill (each
/// re-send moves the latitude by [`RESEND`]).
fn check(acked: &BTreeMap<(String, i64), Vec<f64>>, stored: &BTreeMap<(String, i64), f64>) {
    let mut resent = 0;
    for (key, lats) in acked {
        let Some(lat) = stored.get(key) else {
            panic!("acknowledged but lost: {key:?}");
        };
        let first = lats[0];
        // The Teltonika codec carries 1e-7 degrees: 0.01 of a step.
        let steps = (first - lat) / RESEND;
        assert!(
            steps > -0.01 && (steps - steps.round()).abs() < 0.01,
            "{key:?}: stored {lat}, first acked {first}: a later copy won"
        );
        let original = (((first - 55.7) / RESEND).round() as i64) % 10 == 0;
        if original {
            assert!(steps.abs() < 0.01, "{key:?}: stored {lat}, acked {first}");
        }
        resent += usize::from(lats.len() > 1);
    }
    println!("acked fix times: {}, acked twice: {resent}", acked.len());
}

async fn sigkill_with_resends_keeps_first_copies(storage: &str) {
    let dir = tempfile::tempdir().unwrap();
    let TeltonikaOnly {
        config,
        tracker_port,
        api,
    } = teltonika_only(dir.path(), storage);
    let acked: Acked = Default::default();
    let last: Last = Default::default();
    let imeis: Vec<String> = (0..6).map(|i| format!("35100000000{i:04}")).collect();
    let base = Utc
        .with_ymd_and_hms(2026, 6, 1, 0, 0, 0)
        .unwrap()
        .timestamp_millis();
    for round in 0..4i64 {
        let mut child = spawn(&config);
        wait_ready(&api).await;
        let tasks: Vec<_> = imeis
            .iter()
            .map(|imei| {
                tokio::spawn(tracker(
                    tracker_port,
                    imei.clone(),
                    base + round * 100_000_000,
                    acked.clone(),
                    last.clone(),
                ))
            })
            .collect();
        let wait = rand::thread_rng().gen_range(200..900);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        for t in tasks {
            let _ = t.await;
        }
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "load produced acks: {}", acked.len());

    let mut child = spawn(&config);
    wait_ready(&api).await;
    check(&acked, &stored(&api, &imeis).await);
    child.kill().unwrap();
    child.wait().unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["storage", "compact", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = spawn(&config);
    wait_ready(&api).await;
    let after = stored(&api, &imeis).await;
    check(&acked, &after);
    child.kill().unwrap();
    child.wait().unwrap();
    // Compacted, each fix time counts once.
    let out = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["storage", "stats", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stats = String::from_utf8_lossy(&out.stdout);
    let total = stats
        .lines()
        .find(|l| l.starts_with("total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no total in {stats}"));
    assert_eq!(total, after.len(), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sigkill_with_resends_keeps_first_copies() {
    let dir = tempfile::tempdir().unwrap();
    sigkill_with_resends_keeps_first_copies(&format!(
        "url = \"sqlite://{}/fg.db\"",
        dir.path().display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sigkill_with_resends_keeps_first_copies() {
    let schema = common::pg::PgSchema::create().await;
    sigkill_with_resends_keeps_first_copies(&format!("url = \"{}\"", schema.url)).await;
    drop(schema);
}
