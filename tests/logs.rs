//! What the daemon writes to stderr when it is not a terminal (journald, a pipe): plain lines
//! without ANSI colour codes, and a start-up line that tells the open-files limit as it is.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Start the daemon with stderr on a pipe, wait until it is ready, stop it, return its log.
async fn daemon_log(dir: &std::path::Path, env: &[(&str, &str)]) -> String {
    let storage = format!("url = \"sqlite://{}/fleetgate.db\"", dir.display());
    let cfg = common::process::teltonika_only(dir, &storage);
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["run", "--config"])
        .arg(&cfg.config)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fleetgate");
    common::process::wait_ready(&cfg.api).await;
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let mut stderr = child.stderr.take().expect("piped");
    let out = tokio::task::spawn_blocking(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        let _ = child.wait();
        s
    });
    tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the daemon stops on SIGTERM")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_to_a_pipe_are_plain_lines_without_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    // FORCE_COLOR and CLICOLOR_FORCE are not ours to honour: a pipe stays plain.
    let log = daemon_log(dir.path(), &[("CLICOLOR_FORCE", "1")]).await;
    assert!(log.lines().count() > 3, "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escapes in a pipe: {log:?}");
    assert!(log.contains(" INFO "), "{log}");

    // The open-files line says "raised" only when the soft limit went up.
    let line = log
        .lines()
        .find(|l| l.contains("open-files limit"))
        .expect("the open-files line");
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {line}"))
    };
    let (before, soft) = (field("soft_before"), field("soft"));
    assert_eq!(line.contains("raised"), soft > before, "{line}");
    assert_eq!(line.contains("already"), soft == before, "{line}");
}
