//! The shipped systemd files: `systemd-analyze verify` accepts the unit with no warning,
//! sysusers/tmpfiles apply to an empty root, and the example configuration is valid and
//! documents every key the daemon knows.

use std::path::{Path, PathBuf};
use std::process::Command;

use fleetgate::config::Config;
use fleetgate::protocols::Protocol;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// `tool` on PATH, installing it through `.ci/tools` when missing.
fn tool(tool: &str) -> Option<PathBuf> {
    let find = || {
        let out = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .ok()?;
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!p.is_empty()).then(|| PathBuf::from(p))
    };
    if let Some(p) = find() {
        return Some(p);
    }
    let _ = Command::new("bash")
        .arg(repo(".ci/tools"))
        .arg("systemd-analyze")
        .status();
    find()
}

fn skip(test: &str, why: &str) {
    eprintln!("\n\n*** SKIPPED {test}: {why} ***\n\n");
}

#[test]
fn unit_passes_systemd_analyze_verify_without_warnings() {
    let Some(analyze) = tool("systemd-analyze") else {
        return skip(
            "unit_passes_systemd_analyze_verify_without_warnings",
            "systemd-analyze missing and `.ci/tools` could not install the systemd package",
        );
    };
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(repo("systemd/fleetgate.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/fleetgate run --config /etc/fleetgate/fleetgate.toml")
    );
    let unit = unit.replace("/usr/bin/fleetgate", env!("CARGO_BIN_EXE_fleetgate"));
    let path = dir.path().join("fleetgate.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // Unknown keys and bad values are warnings with exit status 0: none allowed.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warned:\n{stderr}"
    );

    // The hardening the issue asks for, as systemd parses it.
    let show = |key: &str| -> String {
        let out = Command::new(&analyze)
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.contains(key))
            .unwrap_or_default()
            .to_string()
    };
    for key in [
        "NoNewPrivileges=",
        "ProtectSystem=",
        "SystemCallFilter=~@privileged",
    ] {
        let line = show(key);
        assert!(line.contains('✓'), "{key} not enforced: {line:?}");
    }
}

#[test]
fn sysusers_and_tmpfiles_apply_to_an_empty_root() {
    let (Some(sysusers), Some(tmpfiles)) = (tool("systemd-sysusers"), tool("systemd-tmpfiles"))
    else {
        return skip(
            "sysusers_and_tmpfiles_apply_to_an_empty_root",
            "systemd-sysusers/systemd-tmpfiles missing",
        );
    };
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    let out = Command::new(sysusers)
        .arg(format!("--root={}", root.path().display()))
        .arg(repo("systemd/fleetgate.sysusers"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    assert!(passwd.starts_with("fleetgate:x:"), "{passwd}");
    assert!(
        passwd.contains(":/var/lib/fleetgate:/usr/sbin/nologin"),
        "{passwd}"
    );
    let out = Command::new(tmpfiles)
        .arg(format!("--root={}", root.path().display()))
        .arg("--create")
        .arg(repo("systemd/fleetgate.tmpfiles"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let state = std::fs::metadata(root.path().join("var/lib/fleetgate")).unwrap();
    assert_eq!(state.permissions().mode() & 0o777, 0o750);
}

#[test]
fn example_config_is_valid_and_documents_every_key() {
    let path = repo("systemd/fleetgate.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let parsed = Config::from_toml_with_env(&text, "systemd/fleetgate.toml", Vec::new())
        .expect("the example configuration is valid");
    assert!(parsed
        .storage
        .url
        .starts_with("sqlite:///var/lib/fleetgate/"));
    // `fleetgate check-config` agrees.
    let out = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["check-config", "--config"])
        .arg(&path)
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let example: toml::Table = toml::from_str(&text).unwrap();
    let defaults = match toml::Value::try_from(Config::default()).unwrap() {
        toml::Value::Table(t) => t,
        other => panic!("{other:?}"),
    };
    let mut missing = Vec::new();
    for (section, keys) in &defaults {
        let Some(ex) = example.get(section).and_then(|v| v.as_table()) else {
            missing.push(format!("[{section}]"));
            continue;
        };
        if let Some(keys) = keys.as_table() {
            for key in keys.keys() {
                if !ex.contains_key(key) {
                    missing.push(format!("{section}.{key}"));
                }
            }
        }
    }
    let listeners = example["listeners"].as_table().unwrap();
    // Protocols without a socket (MQTT JSON arrives through [mqtt]) have no listener key.
    for p in Protocol::ALL.iter().filter(|p| !p.transports().is_empty()) {
        if !listeners.contains_key(p.name()) {
            missing.push(format!("listeners.{}", p.name()));
        }
    }
    assert!(missing.is_empty(), "not in the example config: {missing:?}");
}

/// The package's binary is stripped: the README's `cargo deb` command selects `[profile.deb]`,
/// which has no debug info and strips symbols (cargo-deb keeps whatever a profile with debug
/// info builds: 138 MB with the release profile's line tables), and the file it names is
/// the one cargo-deb writes (`<name>_<version>-<revision>_<arch>.deb`, revision 1).
#[test]
fn the_deb_packages_a_stripped_binary_under_the_name_the_readme_gives() {
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(repo("Cargo.toml")).unwrap()).unwrap();
    let deb = &manifest["profile"]["deb"];
    assert_eq!(deb["inherits"].as_str(), Some("release"));
    assert_eq!(deb["debug"].as_bool(), Some(false), "{deb}");
    assert_eq!(deb["strip"].as_str(), Some("symbols"), "{deb}");
    let assets = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .unwrap();
    assert!(
        assets
            .iter()
            .any(|a| a[0].as_str() == Some("target/release/fleetgate")),
        "cargo-deb maps target/release/ to the selected profile's directory"
    );
    assert!(
        manifest["package"]["metadata"]["deb"]
            .get("revision")
            .is_none(),
        "the README's file name assumes cargo-deb's default revision"
    );

    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.trim_start().starts_with("cargo deb"))
        .expect("the README's package command");
    assert!(line.contains("cargo deb --profile deb"), "{line}");
    assert!(
        line.contains("target/debian/fleetgate_<version>-1_<arch>.deb"),
        "{line}"
    );
}
