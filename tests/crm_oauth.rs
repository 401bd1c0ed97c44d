//! amoCRM OAuth 2.0 end to end: `fleetgate crm authorize CODE` exchanges the code once and
//! stores the pair in the database (no token printed); the daemon refreshes the access token
//! before it expires and once after a 401, storing each rotated refresh token (the fake refuses
//! an old one); the CRM keys are validated with errors naming the key.

mod common;
mod crm_fake;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Api;
use serde_json::json;

const AREA: &str = r#"{"type": "FeatureCollection", "features": [{"type": "Feature",
  "properties": {"name": "area", "kind": "service_area"},
  "geometry": {"type": "Polygon", "coordinates": [[[37, 55], [38, 55], [38, 56], [37, 56], [37, 55]]]}}]}"#;

fn crm_toml(url: &str) -> String {
    format!(
        r#"
[crm]
kind = "amocrm"
base_url = "{url}"
backoff_initial_s = 0.05
backoff_max_s = 0.5
poll_ms = 50
auth_pause_s = 1
[crm.amocrm]
client_id = "cid-1"
client_secret = "csecret-1"
redirect_uri = "https://fleet.example.ru/amocrm"
refresh_before_s = 3600
[crm.stages]
on_line = {{ pipeline_id = 7001, status_id = 142001 }}
wants_to_return = {{ pipeline_id = 7001, status_id = 142002 }}
"#
    )
}

fn fleetgate(args: &[&str], config: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("FLEETGATE_CONFIG")
        .output()
        .expect("run fleetgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Notes POSTed with `Authorization: Bearer {token}` and accepted.
fn notes_with(fake: &crm_fake::Fake, token: &str) -> usize {
    fake.ok("POST")
        .iter()
        .filter(|c| {
            c.path == "/api/v4/leads/notes"
                && c.headers["authorization"].to_str().unwrap() == format!("Bearer {token}")
        })
        .count()
}

fn token_calls(fake: &crm_fake::Fake) -> Vec<crm_fake::Call> {
    fake.calls()
        .into_iter()
        .filter(|c| c.path == "/oauth2/access_token")
        .collect()
}

common::both_backends!(
    authorize_stores_tokens_and_the_daemon_refreshes_before_expiry_and_after_a_401
);
async fn authorize_stores_tokens_and_the_daemon_refreshes_before_expiry_and_after_a_401() {
    let _metrics = common::metric_lock("fleetgate_crm_auth_failed").await;
    let amo = crm_fake::start("amocrm").await;
    {
        let mut o = amo.fake.oauth.lock().unwrap();
        o.client_id = "cid-1".into();
        o.client_secret = "csecret-1".into();
        o.redirect_uri = "https://fleet.example.ru/amocrm".into();
        o.codes = vec!["def50200code".into()];
        // Valid an hour and 12 s: with refresh_before_s = 3600 a refresh is due after 12 s.
        o.expires_in = 3612;
    }
    *amo.fake.token.lock().unwrap() = "no-token-yet".into();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleetgate.toml");
    std::fs::write(
        &path,
        format!(
            "[storage]\nurl = \"{}\"\n{}",
            common::storage_url(dir.path()),
            crm_toml(&amo.url)
        ),
    )
    .unwrap();

    let authorized = Instant::now();
    let (code, out, err) = fleetgate(&["crm", "authorize", "def50200code"], &path);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("amoCRM authorized"), "{out}");
    for secret in ["acc-1", "ref-1", "csecret-1"] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} printed: {out}{err}"
        );
    }
    let first = &token_calls(&amo.fake)[0];
    assert_eq!(first.body["grant_type"], "authorization_code");
    assert_eq!(
        first.body["redirect_uri"],
        "https://fleet.example.ru/amocrm"
    );
    // A code works once: amoCRM's refusal is named.
    let (code, _, err) = fleetgate(&["crm", "authorize", "def50200code"], &path);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("Authorization code has been revoked"), "{err}");

    let daemon = fleetgate::app::start(common::config(dir.path(), &crm_toml(&amo.url)))
        .await
        .unwrap();
    let api = Api::new(daemon.api_addr);
    let (st, v) = api
        .put(
            "/api/v1/vehicles/car-1",
            json!({ "crm_deal_id": "4242", "driver_id": "drv-1", "status": "issued" }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let due = (chrono::Utc::now() + chrono::Duration::days(30)).date_naive();
    let (st, v) = api
        .post(
            "/api/v1/vehicles/car-1/inspection",
            json!({ "due_date": due }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let postpone = || async {
        let (st, v) = api
            .post(
                "/api/v1/vehicles/car-1/inspection/postpone",
                json!({ "reason": "запчасти" }),
            )
            .await;
        assert_eq!(st, 200, "{v}");
    };
    // The stored access token is used while it is fresh.
    postpone().await;
    assert!(
        crm_fake::wait_for(5, || notes_with(&amo.fake, "acc-1") == 1).await,
        "{:?}",
        amo.fake.calls()
    );
    assert!(
        authorized.elapsed() < Duration::from_secs(12),
        "the test ran too slowly to tell"
    );
    assert_eq!(token_calls(&amo.fake).len(), 2, "no refresh while fresh");

    // Inside refresh_before_s of the expiry: refreshed before the call, rotated token stored.
    tokio::time::sleep(Duration::from_secs(13).saturating_sub(authorized.elapsed())).await;
    postpone().await;
    assert!(
        crm_fake::wait_for(5, || notes_with(&amo.fake, "acc-2") == 1).await,
        "{:?}",
        amo.fake.calls()
    );
    let refresh = &token_calls(&amo.fake)[2];
    assert_eq!(refresh.body["grant_type"], "refresh_token");
    assert_eq!(refresh.body["refresh_token"], "ref-1");
    assert_eq!(refresh.status, 200);

    // A manager revokes the access token in amoCRM: one 401, one refresh, the call repeated.
    *amo.fake.token.lock().unwrap() = "revoked".into();
    amo.fake.oauth.lock().unwrap().expires_in = 86_400;
    postpone().await;
    assert!(
        crm_fake::wait_for(5, || notes_with(&amo.fake, "acc-3") >= 1).await,
        "{:?}",
        amo.fake.calls()
    );
    let calls = amo.fake.calls();
    let unauthorized = calls.iter().filter(|c| c.status == 401).count();
    assert_eq!(unauthorized, 1, "one 401 before the refresh");
    let refresh = &token_calls(&amo.fake)[3];
    assert_eq!(
        refresh.body["refresh_token"], "ref-2",
        "the rotated token was kept"
    );
    assert!(
        amo.fake.oauth.lock().unwrap().refused.is_empty(),
        "never an old refresh token"
    );
    assert_eq!(
        common::metric(&api, "fleetgate_crm_auth_failed", &[("crm", "amocrm")]).await,
        0.0,
        "a refreshed token is no auth failure"
    );
    daemon.stop().await;

    // The newest pair is in the database; the old refresh token no longer works at amoCRM.
    let cfg = common::config(dir.path(), &crm_toml(&amo.url));
    let stores = fleetgate::storage::open(&cfg.storage).await.unwrap();
    let stored = fleetgate::crm::oauth::load(stores.crm.as_ref())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.refresh_token, "ref-3");
    assert!(
        !format!("{stored:?}").contains("ref-3"),
        "Debug redacts tokens"
    );
    let r = reqwest::Client::new()
        .post(format!("{}/oauth2/access_token", amo.url))
        .json(&json!({ "client_id": "cid-1", "client_secret": "csecret-1",
            "grant_type": "refresh_token", "refresh_token": "ref-1",
            "redirect_uri": "https://fleet.example.ru/amocrm" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "amoCRM refuses a rotated refresh token");
}

common::both_backends!(a_revoked_refresh_token_pauses_until_authorized_again);
/// A refresh token revoked in amoCRM (the integration was reinstalled): the connector pauses
/// with `fleetgate_crm_auth_failed` = 1, and resumes by itself after `crm authorize` stores a
/// new pair.
async fn a_revoked_refresh_token_pauses_until_authorized_again() {
    let _metrics = common::metric_lock("fleetgate_crm_auth_failed").await;
    let amo = crm_fake::start("amocrm").await;
    {
        let mut o = amo.fake.oauth.lock().unwrap();
        o.client_id = "cid-1".into();
        o.client_secret = "csecret-1".into();
        o.redirect_uri = "https://fleet.example.ru/amocrm".into();
        o.codes = vec!["code-a".into(), "code-b".into()];
        o.expires_in = 86_400;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleetgate.toml");
    std::fs::write(
        &path,
        format!(
            "[storage]\nurl = \"{}\"\n{}",
            common::storage_url(dir.path()),
            crm_toml(&amo.url)
        ),
    )
    .unwrap();
    assert_eq!(fleetgate(&["crm", "authorize", "code-a"], &path).0, 0);
    // The integration's tokens are revoked in amoCRM.
    *amo.fake.token.lock().unwrap() = "revoked".into();
    amo.fake.oauth.lock().unwrap().refresh_token = None;

    let daemon = fleetgate::app::start(common::config(dir.path(), &crm_toml(&amo.url)))
        .await
        .unwrap();
    let api = Api::new(daemon.api_addr);
    let (st, v) = api
        .put(
            "/api/v1/vehicles/car-1",
            json!({ "crm_deal_id": "4242", "driver_id": "drv-1", "status": "issued" }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let due = (chrono::Utc::now() + chrono::Duration::days(30)).date_naive();
    let (st, v) = api
        .post(
            "/api/v1/vehicles/car-1/inspection",
            json!({ "due_date": due }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = api
        .post(
            "/api/v1/vehicles/car-1/inspection/postpone",
            json!({ "reason": "запчасти" }),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let mut failed = false;
    for _ in 0..200 {
        if common::metric(&api, "fleetgate_crm_auth_failed", &[("crm", "amocrm")]).await == 1.0 {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        failed,
        "auth failure raised: {:?} {:?}",
        amo.fake.calls(),
        api.get("/api/v1/crm/outbox?status=all").await
    );
    assert_eq!(notes_with(&amo.fake, "acc-1"), 0);

    // An administrator authorizes again: the daemon picks the new pair up and delivers.
    assert_eq!(fleetgate(&["crm", "authorize", "code-b"], &path).0, 0);
    assert!(
        crm_fake::wait_for(10, || notes_with(&amo.fake, "acc-2") == 1).await,
        "{:?}",
        amo.fake.calls()
    );
    daemon.stop().await;
}

/// `check-config` and `crm authorize` name the CRM key that is wrong.
#[test]
fn crm_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let zones = dir.path().join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    std::fs::write(zones.join("area.geojson"), AREA).unwrap();
    let base = format!(
        "[storage]\nurl = \"sqlite://{}/fleetgate.db\"\n[geofences]\ndir = \"{}\"\n",
        dir.path().display(),
        zones.display()
    );
    // amoCRM with `keys` under [crm] and `more` sections after it.
    let amo = |keys: &str, more: &str| {
        format!(
            "[crm]\nkind = \"amocrm\"\nbase_url = \"https://fleet.amocrm.ru\"\n{keys}\n\
             [crm.stages]\non_line = {{ pipeline_id = 1, status_id = 2 }}\n\
             wants_to_return = {{ pipeline_id = 1, status_id = 3 }}\n{more}"
        )
    };
    let oauth = "[crm.amocrm]\nclient_id = \"c\"\nclient_secret = \"s\"\nredirect_uri = \"https://x.ru/amo\"\n";
    let cases: Vec<(&str, String, &str)> = vec![
        ("car_entity typo", amo("token = \"t\"\ncar_entity = \"car\"", ""), "crm.car_entity: 'car' is not one of deal, company"),
        ("company on the plain webhook", "[crm]\nkind = \"webhook\"\nurl = \"https://x.ru/h\"\nsecret = \"s\"\ncar_entity = \"company\"\n".into(), "crm.car_entity: "),
        ("location interval over a day", amo("token = \"t\"\nlocation_interval_min = 5000", ""), "crm.location_interval_min: "),
        ("neither token nor OAuth", amo("", ""), "crm.token: required"),
        ("OAuth without the secret", amo("", "[crm.amocrm]\nclient_id = \"c\"\nredirect_uri = \"https://x.ru/amo\"\n"), "crm.amocrm.client_secret: "),
        ("token and OAuth both", amo("token = \"t\"", oauth), "crm.token: set either"),
        ("redirect_uri not a URL", amo("", &oauth.replace("https://x.ru/amo", "x.ru/amo")), "crm.amocrm.redirect_uri: "),
        ("OAuth keys on Bitrix24", format!("[crm]\nkind = \"bitrix24\"\nwebhook_url = \"https://b.ru/rest/1/x/\"\n[crm.stages]\non_line = {{ stage_id = \"A\" }}\nwants_to_return = {{ stage_id = \"B\" }}\n{oauth}"), "crm.amocrm: "),
        ("refresh margin too small", amo("", &format!("{oauth}refresh_before_s = 5\n")), "crm.amocrm.refresh_before_s: "),
        ("OAuth and company cards", amo("car_entity = \"company\"", oauth), ""),
        ("a long-lived token still does", amo("token = \"t\"", ""), ""),
    ];
    let path = dir.path().join("fleetgate.toml");
    for (what, crm, expect) in cases {
        std::fs::write(&path, format!("{base}{crm}")).unwrap();
        let (code, _, err) = fleetgate(&["check-config"], &path);
        if expect.is_empty() {
            assert_eq!(code, 0, "{what}: {err}");
        } else {
            assert_eq!(code, 2, "{what}: exit {code}, {err}");
            assert!(err.contains(expect), "{what}: expected {expect:?} in {err}");
        }
    }
    // `crm authorize` without OAuth keys says what it needs.
    std::fs::write(&path, format!("{base}{}", amo("token = \"t\"", ""))).unwrap();
    let (code, _, err) = fleetgate(&["crm", "authorize", "abc"], &path);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("[crm.amocrm] client_id, client_secret, redirect_uri"),
        "{err}"
    );
}
