//! API security over HTTP: named bearer tokens (wrong, missing or malformed ones get 401, the
//! right one's name is the actor), the refusal to start an open API on a public address, and
//! the OpenAPI document kept in step with the router.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::Api;

const CRM: &str = "crm-secret-0123456789";
const OPS: &str = "ops-secret-9876543210";

fn tokens() -> String {
    format!(
        "[api]\nlisten = \"127.0.0.1:0\"\ntokens = [{{ name = \"crm\", token = \"{CRM}\" }}, {{ name = \"ops\", token = \"{OPS}\" }}]\n"
    )
}

/// A daemon whose API requires the two tokens above.
async fn start(dir: &Path) -> fleetgate::app::Running {
    let mut config = common::config(dir, "");
    let with_tokens: fleetgate::config::Config = toml::from_str(&tokens()).expect("token config");
    config.api.tokens = with_tokens.api.tokens;
    config.validate().expect("valid");
    fleetgate::app::start(config).await.expect("starts")
}

async fn get_with(api: &Api, path: &str, auth: Option<&str>) -> (u16, String, Option<String>) {
    let mut rb = api.client.get(format!("{}{path}", api.base));
    if let Some(a) = auth {
        rb = rb.header("authorization", a);
    }
    let r = rb.send().await.expect("GET");
    let status = r.status().as_u16();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or("").to_string());
    (status, r.text().await.unwrap_or_default(), challenge)
}

common::both_backends!(bearer_tokens_are_required_and_name_the_actor);
async fn bearer_tokens_are_required_and_name_the_actor() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path()).await;
    let api = Api::new(d.api_addr);

    for (auth, why) in [
        (None, "no Authorization header"),
        (
            Some("Bearer wrong-secret-0123456789".to_string()),
            "unknown token",
        ),
        (
            Some(format!("Bearer {}", &CRM[..CRM.len() - 1])),
            "a prefix of a real token",
        ),
        (
            Some(format!("Bearer {CRM}x")),
            "a real token with a byte appended",
        ),
        (Some(format!("Basic {CRM}")), "another scheme"),
        (Some(format!("bearer{CRM}")), "malformed"),
        (Some("Bearer ".to_string()), "empty token"),
    ] {
        for path in [
            "/api/v1/vehicles",
            "/api/v1/whoami",
            "/api/v1/vehicles/x/track",
        ] {
            let (status, body, challenge) = get_with(&api, path, auth.as_deref()).await;
            assert_eq!(status, 401, "{why} on {path}: {body}");
            assert_eq!(challenge.as_deref(), Some("Bearer"), "{why}");
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
            assert!(v["error"].as_str().unwrap().contains("token"), "{body}");
        }
    }

    for (secret, name) in [(CRM, "crm"), (OPS, "ops")] {
        let auth = format!("Bearer {secret}");
        let (status, body, _) = get_with(&api, "/api/v1/whoami", Some(&auth)).await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["actor"], name, "the token's name is the actor");
        let (status, _, _) = get_with(&api, "/api/v1/vehicles", Some(&auth)).await;
        assert_eq!(status, 200);
    }

    // Probes and the API description stay open: they hold no fleet data.
    for path in ["/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"] {
        let (status, _, _) = get_with(&api, path, None).await;
        assert_eq!(status, 200, "{path}");
    }
    let failures = common::metric(&api, "fleetgate_api_errors_total", &[("status", "401")]).await;
    assert!(failures >= 21.0, "refusals counted: {failures}");
    d.stop().await;
}

common::both_backends!(an_open_loopback_api_names_the_caller_anonymous);
async fn an_open_loopback_api_names_the_caller_anonymous() {
    let dir = tempfile::tempdir().unwrap();
    let d = common::start(dir.path(), "").await;
    let api = Api::new(d.api_addr);
    let (status, v) = api.get("/api/v1/whoami").await;
    assert_eq!(status, 200);
    assert_eq!(v["actor"], "anonymous");
    d.stop().await;
}

fn config_file(dir: &Path, api: &str) -> std::path::PathBuf {
    let mut text = format!("[api]\n{api}\n[listeners]\n");
    for p in fleetgate::protocols::Protocol::ALL {
        text.push_str(&format!("{} = \"off\"\n", p.name()));
    }
    text.push_str(&format!(
        "[storage]\nurl = \"sqlite://{}/fleetgate.db\"\n",
        dir.display()
    ));
    let path = dir.join("fleetgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_daemon_refuses_to_start_an_open_api_on_a_public_address() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(dir.path(), "listen = \"0.0.0.0:0\"");
    let out = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("FLEETGATE_API_TOKENS")
        .output()
        .expect("run fleetgate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("api.tokens"), "{stderr}");
    assert!(stderr.contains("refusing to start open"), "{stderr}");
    assert!(
        !dir.path().join("fleetgate.db").exists(),
        "refused before touching storage"
    );

    // The same address with a token is accepted (checked without starting).
    let path = config_file(
        dir.path(),
        &format!("listen = \"0.0.0.0:0\"\ntokens = [\"{CRM}\"]"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("check-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `.route("…", get(…).put(…))` in `src/api/`: (method, path literal).
fn routes_in_source() -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    let mut files = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api")];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if p.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let src = std::fs::read_to_string(&p).unwrap();
        let mut rest = src.as_str();
        while let Some(i) = rest.find(".route(\"") {
            rest = &rest[i + 8..];
            let end = rest.find('"').unwrap();
            let path = rest[..end].to_string();
            // The method router: up to the parenthesis closing `.route(`.
            let mut depth = 1;
            let mut stop = rest.len();
            for (j, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            stop = j;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let call = &rest[end..stop];
            for m in ["get", "put", "post", "delete", "patch"] {
                let plain = call.starts_with(&format!("\", {m}("))
                    || call.contains(&format!(" {m}("))
                    || call.contains(&format!(".{m}("))
                    || call.contains(&format!("routing::{m}("));
                if plain {
                    found.insert((m.to_string(), path.clone()));
                }
            }
        }
    }
    found
}

common::both_backends!(openapi_document_matches_the_router);
async fn openapi_document_matches_the_router() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path()).await;
    let mut api = Api::new(d.api_addr);
    api.token = Some(CRM.into());
    let (status, doc) = api.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in ["get", "put", "post", "delete", "patch"] {
            if item.get(m).is_some() {
                documented.insert((m.to_string(), path.clone()));
            }
        }
    }

    // Router → document: every route the code declares is described.
    let declared = routes_in_source();
    assert!(
        declared.len() >= 8,
        "route scan found too little: {declared:?}"
    );
    for (m, p) in &declared {
        let ok = documented.iter().any(|(dm, dp)| {
            dm == m && (dp == p || *dp == format!("/api/v1{p}") || dp.ends_with(p.as_str()))
        });
        assert!(
            ok,
            "{m} {p} is routed but missing from src/api/openapi.json"
        );
    }

    // Document → router: every documented operation is served (no router 404, no 405).
    for (m, p) in &documented {
        let url = format!("{}{}", api.base, p.replace("{id}", "no-such-car"));
        let method = reqwest::Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
        let r = api
            .client
            .request(method, &url)
            .bearer_auth(CRM)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        assert_ne!(status, 405, "{m} {p} documented but not routed");
        assert!(
            !(status == 404 && body.is_empty()),
            "{m} {p} documented but the router has no such path"
        );
    }

    // The protocol enum is every protocol fleetgate speaks.
    let mut listed: Vec<String> = doc["components"]["schemas"]["VehicleUpdate"]["properties"]
        ["protocol"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    listed.sort();
    let mut known: Vec<String> = fleetgate::protocols::Protocol::ALL
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    known.sort();
    assert_eq!(
        listed, known,
        "VehicleUpdate.protocol enum in src/api/openapi.json"
    );

    // Every operation has a unique operationId and documents 2xx and its error shape.
    let mut ids = BTreeSet::new();
    for (_, item) in doc["paths"].as_object().unwrap() {
        for (_, op) in item.as_object().unwrap() {
            let Some(id) = op.get("operationId") else {
                continue;
            };
            assert!(
                ids.insert(id.as_str().unwrap().to_string()),
                "duplicate {id}"
            );
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|k| k.starts_with('2')),
                "{id} documents no 2xx response"
            );
        }
    }
    d.stop().await;
}
