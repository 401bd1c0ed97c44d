//! Schemathesis against a running daemon, driven by our own `/api/v1/openapi.json`: property-
//! based requests to every operation (valid and invalid inputs), checking that no request
//! gets a server error and that responses match the document. Runs when the `schemathesis`
//! CLI is installed (`.ci/services` installs it with pip); prints why when it is not.
//! `FLEETGATE_SCHEMATHESIS_EXAMPLES` sets examples per operation (default 40).

mod common;

use std::process::Command;

const TOKEN: &str = "schemathesis-0123456789";

common::both_backends!(schemathesis_finds_no_server_error_and_no_schema_mismatch);
async fn schemathesis_finds_no_server_error_and_no_schema_mismatch() {
    let found = Command::new("schemathesis").arg("--version").output();
    let Ok(version) = found else {
        println!("skipped: the schemathesis CLI is not installed (pip install schemathesis)");
        common::backend::skipped();
        return;
    };
    println!("{}", String::from_utf8_lossy(&version.stdout).trim());
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), "");
    config.api.tokens = vec![fleetgate::config::TokenEntry::named("schemathesis", TOKEN)];
    let d = fleetgate::app::start(config).await.expect("starts");
    // A vehicle with a track, so the happy paths have data to return.
    let mut api = common::Api::new(d.api_addr);
    api.token = Some(TOKEN.into());
    let (s, _) = api
        .put(
            "/api/v1/vehicles/car-1",
            serde_json::json!({ "device_id": "356307042441013", "protocol": "teltonika", "plate": "A001AA77" }),
        )
        .await;
    assert_eq!(s, 200);

    let examples = std::env::var("FLEETGATE_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "40".into());
    let url = format!("http://{}/api/v1/openapi.json", d.api_addr);
    // Schemathesis keeps a `.schemathesis/` cache in its working directory: not in the repo.
    let cwd = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("schemathesis")
            // positive_data_acceptance is left out: `from` after `to` is schema-valid (no
            // schema can relate two parameters) yet rightly refused with 400.
            .args([
                "run",
                &url,
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance",
            ])
            .args(["--max-examples", &examples])
            .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
            .args(["--generation-deterministic", "--request-timeout", "10"])
            .env("SCHEMATHESIS_HOOKS", "")
            .current_dir(cwd)
            .output()
            .expect("run schemathesis")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    d.stop().await;
    assert!(
        out.status.success(),
        "schemathesis reported failures (see above)"
    );
}
