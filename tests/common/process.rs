//! The real `fleetgate` binary as a child process, for the tests that kill it, signal it or
//! measure its memory.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Api;

/// A loopback port nobody listens on right now, for a child daemon's config file. Taken below
/// the kernel's ephemeral range (32768–60999 on Linux): the daemons of tests running beside
/// this one bind their listeners to port 0, which the kernel picks from that range, so they
/// can never take this port between our check and the child's bind (a daemon that lost its
/// port that way never became ready).
pub fn free_port() -> u16 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..1000 {
        let mut h = RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `fleetgate run --config CONFIG`, quiet. The daemon is killed when the thread that started
/// it ends (`PR_SET_PDEATHSIG`), so a test that panics or is interrupted never leaves a daemon
/// holding ports and database connections for the tests after it.
pub fn spawn(config: &std::path::Path) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetgate"));
    cmd.args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    dies_with_test(&mut cmd);
    cmd.spawn().expect("spawn fleetgate")
}

/// The child gets SIGKILL when the spawning thread exits (Linux `PR_SET_PDEATHSIG`).
pub fn dies_with_test(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Until `/readyz` answers 200 (60 s at most: a loaded CI machine migrates slowly).
pub async fn wait_ready(api: &Api) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = api.client.get(format!("{}/readyz", api.base)).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("daemon not ready");
}

/// The child's resident memory, KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(child: &Child) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// A config file for the binary in `dir`: the API and only the Teltonika listener, each on a
/// free loopback port, and `storage` as the body of `[storage]`.
pub struct TeltonikaOnly {
    pub config: std::path::PathBuf,
    pub tracker_port: u16,
    pub api: Api,
}

pub fn teltonika_only(dir: &std::path::Path, storage: &str) -> TeltonikaOnly {
    let (tport, aport) = (free_port(), free_port());
    let mut cfg =
        format!("[api]\nlisten = \"127.0.0.1:{aport}\"\n[storage]\n{storage}\n[listeners]\n");
    for p in fleetgate::protocols::Protocol::ALL {
        let v = if *p == fleetgate::protocols::Protocol::Teltonika {
            format!("127.0.0.1:{tport}")
        } else {
            "off".into()
        };
        cfg.push_str(&format!("{} = \"{v}\"\n", p.name()));
    }
    let config = dir.join("fleetgate.toml");
    std::fs::write(&config, cfg).unwrap();
    TeltonikaOnly {
        config,
        tracker_port: tport,
        api: Api::new(format!("127.0.0.1:{aport}").parse().unwrap()),
    }
}
