//! How many idle tracker connections this machine lets the daemon hold, and what each costs
//! in process memory. Starts `fleetgate run` (SQLite, Teltonika listener only), opens
//! Teltonika connections that each complete the IMEI handshake and then stay silent, in waves
//! of 500, until `--max` (default: the open-files hard limit less a margin) or until a connect
//! or handshake fails; prints the daemon's RSS (VmRSS of /proc/PID/status) before and after,
//! the delta per connection, and whether a fresh tracker is still served.
//!
//! Run: `cargo bench --bench idle` (or `cargo bench --bench idle -- --max 5000`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleetgate::protocols::teltonika::{encode_avl_packet, encode_imei, AvlRecord, CODEC_8E};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_fleetgate");

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn handshake(port: u16, imei: String) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(&encode_imei(&imei))
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut ack = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut ack))
        .await
        .map_err(|_| "no handshake ack in 30 s".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    Ok(s)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let lim = fleetgate::ops::rlimit::raise_nofile().expect("rlimit");
    let max = args
        .iter()
        .position(|a| a == "--max")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or((lim.hard as usize).saturating_sub(200));
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let api = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut listeners = String::new();
    for p in fleetgate::protocols::Protocol::ALL {
        if p.name() != "teltonika" {
            listeners.push_str(&format!("{} = \"off\"\n", p.name()));
        }
    }
    let config = format!(
        "[api]\nlisten = \"127.0.0.1:{api}\"\n[listeners]\nteltonika = \"127.0.0.1:{port}\"\n{listeners}\
         [limits]\nmax_connections_per_ip = 1000000\n[storage]\nurl = \"sqlite://{}/fleetgate.db\"\n[geofences]\ndir = \"{}/geofences\"\n[log]\nfilter = \"warn\"\n",
        dir.path().display(),
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::write(dir.path().join("f.toml"), config).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(dir.path().join("f.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("daemon starts");
    let pid = child.id();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let until = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < until, "daemon not listening");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // One served tracker first, so the pipeline's and storage's own allocations are made.
        let mut warm = handshake(port, "356307040000000".into()).await.unwrap();
        let rec = AvlRecord {
            time: chrono::Utc::now() - chrono::Duration::seconds(5),
            lat: 55.75,
            lon: 37.62,
            speed_kmh: 30,
            course: 90,
            altitude: 150,
            satellites: 9,
            io: vec![],
        };
        warm.write_all(&encode_avl_packet(CODEC_8E, std::slice::from_ref(&rec)))
            .await
            .unwrap();
        let mut ack = [0u8; 4];
        warm.read_exact(&mut ack).await.unwrap();
        drop(warm);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = rss_kib(pid);
        println!(
            "open-files limit of this process: soft {} hard {}; target {max} connections",
            lim.soft, lim.hard
        );
        println!("daemon RSS before: {before} KiB");
        let mut conns = Vec::new();
        let mut failure = None;
        'waves: while conns.len() < max {
            let wave = 500.min(max - conns.len());
            let mut set = tokio::task::JoinSet::new();
            for i in 0..wave {
                let imei = format!("3563070{:08}", conns.len() + i + 1);
                set.spawn(handshake(port, imei));
            }
            while let Some(r) = set.join_next().await {
                match r.unwrap() {
                    Ok(s) => conns.push(s),
                    Err(e) => failure = Some(e),
                }
            }
            if failure.is_some() {
                break 'waves;
            }
            if conns.len() % 5000 == 0 {
                println!(
                    "  {} connections, daemon RSS {} KiB",
                    conns.len(),
                    rss_kib(pid)
                );
            }
        }
        // The daemon goes on working after the last handshake (the immobiliser and the shards
        // take in each device's online event): read RSS once it has settled, so that runs
        // compare steady states rather than how far that work had got.
        let mut after = rss_kib(pid);
        let mut settled = None;
        for s in 1..=30 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = rss_kib(pid);
            let moved = now.abs_diff(after);
            after = now;
            if moved < 256 {
                settled = Some(s);
                break;
            }
        }
        match settled {
            Some(s) => println!("daemon RSS settled {s} s after the last handshake"),
            None => println!("daemon RSS still moving 30 s after the last handshake"),
        }
        let n = conns.len();
        println!(
            "held: {n} idle connections{}",
            failure
                .map(|e| format!(" (stopped: {e})"))
                .unwrap_or_default()
        );
        println!(
            "daemon RSS after: {after} KiB; delta {} KiB = {:.2} KiB ({:.0} bytes) per connection",
            after.saturating_sub(before),
            after.saturating_sub(before) as f64 / n.max(1) as f64,
            after.saturating_sub(before) as f64 * 1024.0 / n.max(1) as f64
        );
        // Make room for one more descriptor on this side, then check a newcomer is served.
        conns.pop();
        let mut fresh = handshake(port, "356307049999999".into()).await;
        let served = match fresh.as_mut() {
            Ok(s) => {
                s.write_all(&encode_avl_packet(CODEC_8E, &[rec]))
                    .await
                    .is_ok()
                    && tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut ack))
                        .await
                        .is_ok()
            }
            Err(_) => false,
        };
        println!(
            "fresh tracker served with {} idle connections held: {served}",
            conns.len()
        );
        drop(conns);
    });
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = child.wait();
}
