//! Disk full (#21 item 1): the SQLite file lives on a small tmpfs that a filler file fills.
//! While it is full no record is acked, `/readyz` answers 503 with the reason and
//! `fleetgate_storage_healthy` is 0; once the filler is removed the same daemon (no restart)
//! commits again, and every record it acked is stored. Before the fix the writer's
//! connection stayed inside a transaction and every commit failed until a restart.
//!
//! Mounting needs root (CAP_SYS_ADMIN): without it the test says so and checks nothing.

mod common;

use common::process::{spawn, teltonika_only, wait_ready};
use common::Tracker;
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use fleetgate::protocols::teltonika::{encode_avl_packet, encode_imei, AvlRecord, CODEC_8};

struct Mount(std::path::PathBuf);

impl Mount {
    /// A tmpfs of `size` (e.g. `"6m"`) at `dir/mnt`; `None` where mounting is not allowed.
    fn tmpfs(dir: &std::path::Path, size: &str) -> Option<Mount> {
        let mnt = dir.join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            println!("SKIPPED: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(Mount(mnt))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn record(i: i64) -> AvlRecord {
    AvlRecord {
        time: Utc.with_ymd_and_hms(2026, 11, 21, 6, 0, 0).unwrap() + chrono::Duration::seconds(i),
        lat: 55.75 + i as f64 * 1e-5,
        lon: 37.61,
        speed_kmh: 20,
        course: 90,
        altitude: 150,
        satellites: 10,
        io: vec![],
    }
}

/// Log in as `imei`, send record `i`; whether it was acked within `wait`.
async fn send(addr: std::net::SocketAddr, imei: &str, i: i64, wait: Duration) -> bool {
    let mut t = Tracker::connect(addr).await;
    t.send(&encode_imei(imei)).await;
    let mut login = [0u8; 1];
    use tokio::io::AsyncReadExt;
    match tokio::time::timeout(wait, t.stream.read_exact(&mut login)).await {
        Ok(Ok(_)) if login[0] == 1 => {}
        _ => return false,
    }
    t.send(&encode_avl_packet(CODEC_8, &[record(i)])).await;
    let mut ack = [0u8; 4];
    matches!(
        tokio::time::timeout(wait, t.stream.read_exact(&mut ack)).await,
        Ok(Ok(_)) if ack == 1u32.to_be_bytes()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_acks_and_heals_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = Mount::tmpfs(dir.path(), "6m") else {
        return;
    };
    let mnt = mount.0.clone();
    let db = mnt.join("fg.db");
    // The low-water mark off: this test is about SQLite hitting the wall itself.
    let d = teltonika_only(
        dir.path(),
        &format!("url = \"sqlite://{}\"\nmin_free_mb = 0", db.display()),
    );
    let mut gw = spawn(&d.config);
    wait_ready(&d.api).await;
    let addr = format!("127.0.0.1:{}", d.tracker_port).parse().unwrap();

    let mut acked = Vec::new();
    for i in 0..5 {
        assert!(send(addr, "356307042441013", i, Duration::from_secs(30)).await);
        acked.push(i);
    }

    // Fill the filesystem.
    let mut filler = std::fs::File::create(mnt.join("filler")).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while filler.write_all(&chunk).is_ok() {}
    drop(filler);

    // Full: new devices (a vehicle row) and known ones (positions) are not acked.
    let mut refused = 0;
    for i in 5..15 {
        let imei = if i % 2 == 0 {
            "356307042441013"
        } else {
            "356307042449999"
        };
        if send(addr, imei, i, Duration::from_secs(3)).await {
            acked.push(i);
        } else {
            refused += 1;
        }
    }
    assert!(refused > 0, "a full disk refused nothing");
    let (status, body) = d.api.text("/readyz").await;
    assert_eq!(status, 503, "readyz while full: {body}");
    assert!(body.contains("storage commits failing"), "{body}");
    assert_eq!(
        common::metric(&d.api, "fleetgate_storage_healthy", &[]).await,
        0.0
    );

    // Space returns: the same daemon commits again (trackers resend what was not acked).
    std::fs::remove_file(mnt.join("filler")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut healed = false;
    while Instant::now() < deadline {
        if send(addr, "356307042441013", 100, Duration::from_secs(5)).await {
            healed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(healed, "no commit within 60 s of space returning");
    acked.push(100);
    for i in 5..15 {
        let imei = if i % 2 == 0 {
            "356307042441013"
        } else {
            "356307042449999"
        };
        assert!(
            send(addr, imei, i, Duration::from_secs(30)).await,
            "record {i} after the heal"
        );
    }
    assert_eq!(d.api.text("/readyz").await.0, 200);
    assert_eq!(
        common::metric(&d.api, "fleetgate_storage_healthy", &[]).await,
        1.0
    );

    gw.kill().unwrap();
    gw.wait().unwrap();
    let stored = common::stored::fix_times(&format!("sqlite://{}", db.display())).await;
    let base = record(0).time.timestamp_millis();
    for i in acked {
        let imei = if i % 2 == 0 || i == 100 || i < 5 {
            "356307042441013"
        } else {
            "356307042449999"
        };
        let t = base + i * 1000;
        assert!(
            stored.iter().any(|(d, f)| d == imei && *f == t),
            "acked record {i} of {imei} not stored"
        );
    }
}

/// `[storage] min_free_mb`: below the mark nothing is acked and SQLite never hits the wall;
/// `/readyz` names the mark; freeing space resumes commits without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_low_water_mark_refuses_work_before_the_disk_is_full_and_resumes_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = Mount::tmpfs(dir.path(), "12m") else {
        return;
    };
    let mnt = mount.0.clone();
    let db = mnt.join("fg.db");
    let d = teltonika_only(
        dir.path(),
        &format!("url = \"sqlite://{}\"\nmin_free_mb = 4", db.display()),
    );
    let mut gw = spawn(&d.config);
    wait_ready(&d.api).await;
    let addr = format!("127.0.0.1:{}", d.tracker_port).parse().unwrap();
    let imei = "356307042441014";
    assert!(send(addr, imei, 0, Duration::from_secs(30)).await);

    // Leave about 2 MB free: under the 4 MB mark, far from full.
    let free = |p: &std::path::Path| {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(p)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse::<u64>().ok())
            .unwrap()
    };
    let fill = free(&mnt).saturating_sub(2 * 1024 * 1024);
    std::fs::write(mnt.join("filler"), vec![0u8; fill as usize]).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        !send(addr, imei, 1, Duration::from_secs(3)).await,
        "acked below the mark"
    );
    let (status, body) = d.api.text("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("min_free_mb"), "{body}");
    assert!(common::metric(&d.api, "fleetgate_storage_low_space_refusals_total", &[]).await >= 1.0);
    assert!(free(&mnt) > 1024 * 1024, "SQLite never hit the wall");

    std::fs::remove_file(mnt.join("filler")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut resumed = false;
    while Instant::now() < deadline {
        if send(addr, imei, 1, Duration::from_secs(5)).await {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(resumed, "no ack after space came back");
    assert_eq!(d.api.text("/readyz").await.0, 200);
    gw.kill().unwrap();
    gw.wait().unwrap();
}
