//! `fleetgate check-config` reports what `run` would refuse or degrade on, each naming its key
//! or file: a table of broken configurations run through the real binary.

use std::path::Path;
use std::process::Command;

const AREA: &str = r#"{"type": "FeatureCollection", "features": [{"type": "Feature",
  "properties": {"name": "area", "kind": "service_area"},
  "geometry": {"type": "Polygon", "coordinates": [[[37, 55], [38, 55], [38, 56], [37, 56], [37, 55]]]}}]}"#;

const BOW_TIE: &str = r#"{"type": "Feature",
  "properties": {"name": "bow", "kind": "service_area"},
  "geometry": {"type": "Polygon", "coordinates": [[[37, 55], [38, 56], [38, 55], [37, 56], [37, 55]]]}}"#;

/// Run `check-config` on `toml` (with `[geofences] dir` pointing at `files`); status and stderr.
fn check(dir: &Path, toml: &str, files: &[(&str, &str)]) -> (i32, String) {
    let zones = dir.join("zones");
    let _ = std::fs::remove_dir_all(&zones);
    std::fs::create_dir_all(&zones).unwrap();
    for (name, text) in files {
        std::fs::write(zones.join(name), text).unwrap();
    }
    let text = format!("{toml}\n[geofences]\ndir = \"{}\"\n", zones.display());
    let path = dir.join("fleetgate.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .arg("check-config")
        .arg(&path)
        .env_remove("FLEETGATE_CONFIG")
        .output()
        .expect("run fleetgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (what, config, zone files, what the error must name; empty: must pass).
type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, &'a str);

#[test]
fn check_config_refuses_each_broken_config_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let storage = format!(
        "[storage]\nurl = \"sqlite://{}/fleetgate.db\"\n",
        dir.path().display()
    );
    let area = ("area.geojson", AREA);
    let cases: Vec<Case> = vec![
        ("malformed zone file", storage.clone(), vec![area, ("lots.geojson", "{ not json")], "lots.geojson: invalid JSON"),
        ("zone file of the wrong shape", storage.clone(), vec![area, ("lots.geojson", r#"{"type": "Feature", "properties": {"name": "x", "kind": "nowhere"}, "geometry": null}"#)], "geofences.dir: "),
        ("duplicate zone names", storage.clone(), vec![area, ("b.geojson", AREA)], "zone name 'area' is used twice"),
        ("self-intersecting service area", storage.clone(), vec![area, ("bow.geojson", BOW_TIE)], "intersects itself"),
        ("two listeners on one port", format!("{storage}[listeners]\nteltonika = \"0.0.0.0:6000\"\ngt06 = \"127.0.0.1:6000\"\n"), vec![area], "listeners.gt06: "),
        ("a listener on the API port", format!("{storage}[api]\nlisten = \"127.0.0.1:6001\"\n[listeners]\nwialon = \"0.0.0.0:6001\"\n"), vec![area], "listeners.wialon: "),
        ("max_connections = 0", format!("{storage}[limits]\nmax_connections = 0\n"), vec![area], "limits.max_connections: "),
        ("max_connections_per_ip = 0", format!("{storage}[limits]\nmax_connections_per_ip = 0\n"), vec![area], "limits.max_connections_per_ip: "),
        ("handshake_timeout_s = 0", format!("{storage}[limits]\nhandshake_timeout_s = 0\n"), vec![area], "limits.handshake_timeout_s: "),
        ("idle_timeout_s = 0", format!("{storage}[limits]\nidle_timeout_s = 0\n"), vec![area], "limits.idle_timeout_s: "),
        ("max_block_speed_kmh = 500", format!("{storage}[immobiliser]\nmax_block_speed_kmh = 500\n"), vec![area], "immobiliser.max_block_speed_kmh: "),
        ("safe_for = 0", format!("{storage}[immobiliser]\nsafe_for = 0\n"), vec![area], "immobiliser.safe_for: "),
        ("safe_fixes = 0", format!("{storage}[immobiliser]\nsafe_fixes = 0\n"), vec![area], "immobiliser.safe_fixes: "),
        ("max_fix_ahead_s = 3600", format!("{storage}[immobiliser]\nmax_fix_ahead_s = 3600\n"), vec![area], "immobiliser.max_fix_ahead_s: "),
        ("takeover_silence_s = 0", format!("{storage}[devices]\ntakeover_silence_s = 0\n"), vec![area], "devices.takeover_silence_s: "),
        ("an unknown identity_conflict policy", format!("{storage}[devices]\nidentity_conflict = \"trust_all\"\n"), vec![area], "identity_conflict"),
        ("max_speed_kmh = 50", format!("{storage}[filters]\nmax_speed_kmh = 50\n"), vec![area], "filters.max_speed_kmh: "),
        ("a token of 16 spaces", format!("{storage}[api]\ntokens = [\"                \"]\n"), vec![area], "api.tokens[0]: "),
        ("an SQLite database that is a directory", format!("[storage]\nurl = \"sqlite://{}\"\n", dir.path().display()), vec![area], "storage.url: "),
        ("an SQLite folder under a file", format!("[storage]\nurl = \"sqlite://{}/fleetgate.toml/sub/db\"\n", dir.path().display()), vec![area], "storage.url: "),
        ("sqlite:// without a file", "[storage]\nurl = \"sqlite://\"\n".into(), vec![area], "storage.url: "),
        ("sqlite: with only options", "[storage]\nurl = \"sqlite:?mode=rwc\"\n".into(), vec![area], "storage.url: "),
        ("audit kept shorter than positions", format!("{storage}[retention]\npositions_days = 90\naudit_days = 30\n"), vec![area], "retention.audit_days: audit entries must be kept at least as long as positions"),
        ("audit_days while positions are kept forever", format!("{storage}[retention]\naudit_days = 30\n"), vec![area], "retention.audit_days: "),
        ("positions_days = 0", format!("{storage}[retention]\npositions_days = 0\n"), vec![area], "retention.positions_days: "),
        ("events_days = -1", format!("{storage}[retention]\nevents_days = -1\n"), vec![area], "events_days"),
        ("an unknown retention key", format!("{storage}[retention]\npositions_day = 30\n"), vec![area], "positions_day"),
        ("retention interval_s = 0", format!("{storage}[retention]\ninterval_s = 0\n"), vec![area], "retention.interval_s: "),
        (
            "a full retention section is accepted",
            format!("{storage}[retention]\npositions_days = 180\nevents_days = 365\ncommands_days = 365\naudit_days = 180\ncompact_grace_s = 600\n"),
            vec![area],
            "",
        ),
        (
            "the safest edge values are accepted",
            format!("{storage}[immobiliser]\nmax_block_speed_kmh = 30\nsafe_for = 1\n"),
            vec![area],
            "",
        ),
    ];
    for (what, toml, files, expect) in cases {
        let (code, err) = check(dir.path(), &toml, &files);
        if expect.is_empty() {
            assert_eq!(code, 0, "{what}: {err}");
            continue;
        }
        assert_eq!(code, 2, "{what}: exit {code}, {err}");
        assert!(err.contains(expect), "{what}: expected {expect:?} in {err}");
    }
    let (code, err) = check(dir.path(), &storage, &[area]);
    assert_eq!(code, 0, "a good config: {err}");
}

/// `run` names the file or the server it cannot open, and a typo in an environment override
/// names the variable.
#[test]
fn start_up_errors_name_the_path_the_server_and_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let run = |toml: &str, env: &[(&str, &str)]| {
        let path = dir.path().join("run.toml");
        std::fs::write(&path, toml).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetgate"));
        cmd.arg("run")
            .arg("--config")
            .arg(&path)
            .env_remove("FLEETGATE_CONFIG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run fleetgate");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout),
        )
    };
    // The database "file" is a directory: SQLite cannot open it.
    let db = dir.path().join("a-directory.db");
    std::fs::create_dir_all(&db).unwrap();
    let (code, err) = run(
        &format!("[storage]\nurl = \"sqlite://{}\"\n", db.display()),
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains(&db.display().to_string()), "{err}");
    // Nothing listens on port 9 of the loopback.
    let (code, err) = run(
        "[storage]\nurl = \"postgres://fleet@127.0.0.1:9/fleetdb\"\n",
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("127.0.0.1:9/fleetdb"), "{err}");
    let (code, err) = run("", &[("FLEETGATE_DEVICES_REGISTR_UNKNOWN", "false")]);
    assert_ne!(code, 0);
    assert!(err.contains("FLEETGATE_DEVICES_REGISTR_UNKNOWN"), "{err}");
}
