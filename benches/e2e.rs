//! End-to-end ingest benchmark: the same `fleetgate sim` load (Teltonika Codec 8E,
//! stop-and-wait, flat out) against, in turn,
//!
//! 1. `fleetgate baseline-server` — frames and acks without decoding or storing: the ceiling;
//! 2. `fleetgate run` with SQLite, `sqlite_synchronous = "full"` (every commit fsynced);
//! 3. `fleetgate run` with PostgreSQL (FLEETGATE_TEST_PG_URL, default
//!    postgres://postgres@127.0.0.1:5432/test), in a fresh schema dropped afterwards;
//!
//! each a separate process on this machine, and prints records/s, the ratio to the baseline,
//! ack latency percentiles and whether the positions stored (read back through the library, one
//! per device and fix time) equal the acked records.
//!
//! Before each storage target it also measures that storage alone: this process commits
//! batches shaped like the load's (one packet of every device, through `Store::write_batch`,
//! back to back, no network, decoding or rules) into a separate database for a few seconds.
//! That rate is the ceiling the storage sets on this machine; the table gives fleetgate's
//! rate as a share of it.
//!
//! Run: `cargo bench --bench e2e` (options after `--`: `--seconds 10 --devices 200
//! --records-per-packet 25 --only baseline,sqlite,postgres`). Not part of `cargo test`.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/batch.rs"]
mod batch;
#[path = "common/pg.rs"]
mod pg;

const BIN: &str = env!("CARGO_BIN_EXE_fleetgate");
const GOALS: [(&str, f64); 2] = [("sqlite", 0.25), ("postgres", 0.15)];

struct Opts {
    seconds: f64,
    devices: usize,
    records_per_packet: usize,
    only: Vec<String>,
}

fn opts() -> Opts {
    let mut o = Opts {
        seconds: 10.0,
        devices: 200,
        records_per_packet: 25,
        only: vec!["baseline".into(), "sqlite".into(), "postgres".into()],
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().unwrap_or_default();
        match a.as_str() {
            "--seconds" => o.seconds = val().parse().expect("--seconds N"),
            "--devices" => o.devices = val().parse().expect("--devices N"),
            "--records-per-packet" => {
                o.records_per_packet = val().parse().expect("--records-per-packet N")
            }
            "--only" => o.only = val().split(',').map(str::to_string).collect(),
            _ => {} // `--bench` and filters cargo passes
        }
    }
    o
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_port(port: u16, child: &mut Child) {
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("server exited before listening: {st}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {port} after 60 s");
}

fn stop(mut child: Child) {
    // SIGTERM: the daemon drains and exits; the baseline just exits.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn sim(port: u16, o: &Opts) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["sim", "--protocol", "teltonika", "--rate", "0", "--json"])
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(["--devices", &o.devices.to_string()])
        .args(["--records-per-packet", &o.records_per_packet.to_string()])
        .args(["--duration", &o.seconds.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .expect("sim runs");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("sim output {text:?}: {e}"))
}

fn daemon(dir: &Path, port: u16, storage: &str) -> Child {
    let api = free_port();
    let mut listeners = String::new();
    for p in fleetgate::protocols::Protocol::ALL {
        if p.name() != "teltonika" {
            listeners.push_str(&format!("{} = \"off\"\n", p.name()));
        }
    }
    let geofences = concat!(env!("CARGO_MANIFEST_DIR"), "/geofences");
    let config = format!(
        "[api]\nlisten = \"127.0.0.1:{api}\"\n[listeners]\nteltonika = \"127.0.0.1:{port}\"\n{listeners}\
         [storage]\n{storage}\n[geofences]\ndir = \"{geofences}\"\n[log]\nfilter = \"warn\"\n"
    );
    let path = dir.join("fleetgate.toml");
    std::fs::write(&path, config).expect("write config");
    let log = std::fs::File::create(dir.join("daemon.log")).expect("log file");
    Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("daemon starts")
}

/// Positions stored, one per device and fix time, read the way fleetgate reads them (every
/// tier: the group commit's chunks, compacted chunks, rows of older versions).
async fn count(url: &str) -> Option<i64> {
    let cfg = fleetgate::config::StorageConfig {
        url: url.to_string(),
        min_free_mb: 0,
        ..Default::default()
    };
    let stores = fleetgate::storage::open(&cfg).await.ok()?;
    let from = chrono::DateTime::from_timestamp_millis(0)?;
    let to = chrono::DateTime::from_timestamp_millis(7_258_118_400_000)?; // 2200-01-01
    let mut n = 0i64;
    for s in stores.core.device_states().await.ok()? {
        n += stores
            .core
            .track_points(&s.device_id, from, to, u32::MAX)
            .await
            .ok()?
            .len() as i64;
    }
    Some(n)
}

/// Rows/s that `Store::write_batch` alone sustains on `url` for `seconds`, with batches like
/// the load's: what the storage allows before any network, decoding or rule runs.
fn storage_ceiling(rt: &tokio::runtime::Runtime, url: &str, o: &Opts) -> f64 {
    let cfg = fleetgate::config::StorageConfig {
        url: url.to_string(),
        sqlite_synchronous: "full".into(),
        ..Default::default()
    };
    rt.block_on(async {
        let store = match fleetgate::storage::open(&cfg).await {
            Ok(s) => s.core,
            Err(e) => {
                println!("storage ceiling on {url}: not measured ({e})");
                return 0.0;
            }
        };
        // One packet from every device: the whole load in flight, as one group commit takes it
        // (up to the default batch_max_rows).
        let per_batch = o.devices.min(10_000 / o.records_per_packet.max(1)).max(1);
        let seconds = o.seconds.clamp(1.0, 5.0);
        let start = Instant::now();
        let mut busy = Duration::ZERO;
        let mut rows = 0usize;
        let mut round = 0usize;
        while start.elapsed().as_secs_f64() < seconds {
            let first = (round * per_batch) % o.devices.max(per_batch);
            let mut items = batch::batch(per_batch, o.records_per_packet, first);
            // Packing each packet is the shards' work in the daemon (`Store::pack`).
            for it in &mut items {
                store.pack(it);
            }
            round += 1;
            // Only the commit is timed: building and packing the batch stand for the
            // pipeline's work.
            let t = Instant::now();
            store.write_batch(&items).await.expect("ceiling commit");
            busy += t.elapsed();
            rows += per_batch * o.records_per_packet;
        }
        rows as f64 / busy.as_secs_f64().max(1e-9)
    })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "nproc {n}, {cpu}, load average {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn main() {
    let o = opts();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "e2e ingest: {} devices × {} records/packet, Teltonika 8E, flat out, {} s per target",
        o.devices, o.records_per_packet, o.seconds
    );
    println!("machine: {}", machine());
    let mut rows: Vec<(String, serde_json::Value, Option<i64>)> = Vec::new();
    let mut ceilings: Vec<(String, f64)> = Vec::new();
    for target in o.only.clone() {
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir");
        let (report, stored) = match target.as_str() {
            "baseline" => {
                let mut child = Command::new(BIN)
                    .args(["baseline-server", "--listen", &format!("127.0.0.1:{port}")])
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("baseline starts");
                wait_port(port, &mut child);
                let r = sim(port, &o);
                stop(child);
                (r, None)
            }
            "sqlite" => {
                let ceiling = format!("sqlite://{}/ceiling.db", dir.path().display());
                ceilings.push((target.clone(), storage_ceiling(&rt, &ceiling, &o)));
                let url = format!("sqlite://{}/fleetgate.db", dir.path().display());
                let mut child = daemon(
                    dir.path(),
                    port,
                    &format!("url = \"{url}\"\nsqlite_synchronous = \"full\""),
                );
                wait_port(port, &mut child);
                let r = sim(port, &o);
                stop(child);
                (r, rt.block_on(count(&url)))
            }
            "postgres" => {
                let schema = match pg::Schema::create(&rt, "fgbench") {
                    Ok(s) => s,
                    Err(e) => {
                        println!("postgres: skipped ({e})");
                        continue;
                    }
                };
                let url = schema.url.clone();
                // The ceiling in a schema of its own, dropped before fleetgate runs.
                if let Ok(c) = pg::Schema::create(&rt, "fgceil") {
                    ceilings.push((target.clone(), storage_ceiling(&rt, &c.url, &o)));
                    c.drop(&rt);
                }
                // As docs/scaling.md deploys it: fuller batches per round trip.
                let storage = format!("url = \"{url}\"\nbatch_max_wait_ms = 2");
                let mut child = daemon(dir.path(), port, &storage);
                wait_port(port, &mut child);
                let r = sim(port, &o);
                stop(child);
                let n = rt.block_on(count(&url));
                schema.drop(&rt);
                (r, n)
            }
            other => panic!("--only: unknown target {other} (baseline, sqlite, postgres)"),
        };
        rows.push((target, report, stored));
    }
    let rate = |r: &serde_json::Value| r["records_per_s"].as_f64().unwrap_or(0.0);
    let base = rows
        .iter()
        .find(|(t, _, _)| t == "baseline")
        .map(|(_, r, _)| rate(r));
    println!();
    println!("| target | records/s | packets/s | ratio to baseline | storage alone rows/s | share of storage alone | ack p50 ms | ack p99 ms | ack max ms | errors | stored = acked |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (t, r, stored) in &rows {
        let ratio = base
            .filter(|b| *b > 0.0)
            .map(|b| format!("{:.1} %", 100.0 * rate(r) / b))
            .unwrap_or_else(|| "–".into());
        let acked = r["records_acked"].as_i64().unwrap_or(-1);
        let check = match stored {
            Some(n) if *n == acked => format!("yes ({n})"),
            Some(n) => format!("NO: {n} stored, {acked} acked"),
            None => "–".into(),
        };
        let ceiling = ceilings.iter().find(|(c, _)| c == t).map(|(_, v)| *v);
        let (alone, share) = match ceiling.filter(|c| *c > 0.0) {
            Some(c) => (format!("{c:.0}"), format!("{:.0} %", 100.0 * rate(r) / c)),
            None => ("–".into(), "–".into()),
        };
        println!(
            "| {t} | {:.0} | {:.0} | {ratio} | {alone} | {share} | {:.2} | {:.2} | {:.2} | {} | {check} |",
            rate(r),
            r["packets_per_s"].as_f64().unwrap_or(0.0),
            r["ack_p50_ms"].as_f64().unwrap_or(0.0),
            r["ack_p99_ms"].as_f64().unwrap_or(0.0),
            r["ack_max_ms"].as_f64().unwrap_or(0.0),
            r["errors"],
        );
    }
    if let Some(b) = base.filter(|b| *b > 0.0) {
        for (name, goal) in GOALS {
            if let Some((_, r, _)) = rows.iter().find(|(t, _, _)| t == name) {
                let ratio = rate(r) / b;
                println!(
                    "goal {name} ≥ {:.0} % of baseline: {:.1} % — {}",
                    goal * 100.0,
                    ratio * 100.0,
                    if ratio >= goal { "met" } else { "NOT met" }
                );
            }
        }
    }
}
