//! The status page in a real headless Chromium: a daemon with the shipped service area and a
//! parking lot, three trackers reporting over Teltonika TCP, one vehicle never located. The
//! page (token passed once in the address, as an operator's bookmark would) must draw every
//! located vehicle as a dot with its state, the zones, and the fleet counts. A screenshot is
//! left in the test's temp dir (path printed).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Api, Tracker};
use fleetgate::config::TokenEntry;
use fleetgate::protocols::teltonika::{encode_avl_packet, encode_imei, AvlRecord, CODEC_8E};
use fleetgate::protocols::{Protocol, Transport};

const TOKEN: &str = "status-page-test-token";

fn chromium() -> Option<PathBuf> {
    let find = || {
        ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .find_map(|b| {
                let out = Command::new("sh")
                    .args(["-c", &format!("command -v {b}")])
                    .output()
                    .ok()?;
                let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
                (!p.is_empty()).then(|| PathBuf::from(p))
            })
    };
    if let Some(p) = find() {
        return Some(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/tools");
    let _ = Command::new("bash").arg(script).arg("chromium").status();
    find()
}

fn browse(chromium: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            // Lets the page's fetches and first render finish before the dump/screenshot.
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn record(lat: f64, lon: f64, speed: u16) -> AvlRecord {
    AvlRecord {
        time: chrono::Utc::now() - chrono::Duration::seconds(5),
        lat,
        lon,
        speed_kmh: speed,
        course: 0,
        altitude: 150,
        satellites: 10,
        io: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_draws_every_vehicle_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        eprintln!(
            "\n\n*** SKIPPED status_page_draws_every_vehicle_in_headless_chromium: no chromium and \
             `.ci/tools chromium` could not install it ***\n\n"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lots = dir.path().join("parking.geojson");
    std::fs::write(
        &lots,
        r#"{"type":"FeatureCollection","features":[
          {"type":"Feature","properties":{"name":"Lot Kotlyakovo","kind":"parking"},
           "geometry":{"type":"Polygon","coordinates":[[[37.64,55.64],[37.66,55.64],[37.66,55.655],[37.64,55.655],[37.64,55.64]]]}},
          {"type":"Feature","properties":{"name":"Depot North","kind":"depot","radius_m":800},
           "geometry":{"type":"Point","coordinates":[37.55,55.88]}}]}"#,
    )
    .unwrap();
    let extra = format!(
        "[status]\nmap_layers = [\"{}\"]\nrefresh_s = 2\n",
        lots.display()
    );
    let mut config = common::config(dir.path(), &extra);
    config.api.tokens.push(TokenEntry::Bare(TOKEN.into()));
    // The shipped zones (service area, Moscow, the Oblast, example sites) are the zone index.
    config.geofences.dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("geofences")
        .display()
        .to_string();
    let daemon = fleetgate::app::start(config).await.expect("daemon starts");
    let mut api = Api::new(daemon.api_addr);
    api.token = Some(TOKEN.into());
    let addr = daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap();

    let cars = [
        ("356307042441101", 55.75, 37.62),
        ("356307042441102", 55.65, 37.65),
        ("356307042441103", 55.43, 37.55),
    ];
    let mut trackers = Vec::new();
    for (imei, lat, lon) in cars {
        let mut t = Tracker::connect(addr).await;
        t.send(&encode_imei(imei)).await;
        assert_eq!(t.read(1).await, [1]);
        t.send(&encode_avl_packet(CODEC_8E, &[record(lat, lon, 35)]))
            .await;
        assert_eq!(t.read(4).await, [0, 0, 0, 1]);
        trackers.push(t);
    }
    let (status, _) = api
        .put(
            "/api/v1/vehicles/spare-1",
            serde_json::json!({"plate": "A001AA77", "status": "in_repair"}),
        )
        .await;
    assert_eq!(status, 200);

    // The data behind the page, as the page fetches it.
    let (status, map) = api.get("/api/v1/map/vehicles").await;
    assert_eq!(status, 200, "{map}");
    assert_eq!(map["summary"]["total"], 4, "{map}");
    assert_eq!(map["summary"]["online"], 3, "{map}");
    assert_eq!(map["summary"]["no_position"], 1, "{map}");
    assert_eq!(map["summary"]["in_repair"], 1, "{map}");
    let (status, _) = Api::new(daemon.api_addr).get("/api/v1/map").await;
    assert_eq!(status, 401, "the map data needs the token");
    let (status, page) = Api::new(daemon.api_addr).text("/").await;
    assert_eq!(status, 200);
    // Self-contained: the only URL in it is the SVG namespace; no links, scripts or fonts.
    assert_eq!(
        page.matches("http").count(),
        page.matches("http://www.w3.org/2000/svg").count(),
        "no external resources"
    );
    assert!(!page.contains(" src=") && !page.contains("@import"));
    // The one link is the favicon, inline (a data: URI): no request for /favicon.ico.
    assert_eq!(page.matches("<link").count(), 1, "only the favicon link");
    assert!(
        page.contains("<link rel=\"icon\" href=\"data:image/svg+xml,"),
        "inline favicon"
    );
    // A #token=… pasted into an open tab (only the fragment changes, no reload) is taken.
    assert!(page.contains("addEventListener(\"hashchange\""));

    let url = format!("http://{}/#token={TOKEN}", daemon.api_addr);
    let browser = chromium.clone();
    let profile = dir.path().join("chromium-profile");
    let dom = {
        let (b, p, u) = (browser.clone(), profile.clone(), url.clone());
        tokio::task::spawn_blocking(move || browse(&b, &p, &["--dump-dom"], &u))
            .await
            .unwrap()
    };
    let dots: Vec<&str> = dom
        .match_indices("class=\"vehicle ")
        .map(|(i, _)| &dom[i..i + 40])
        .collect();
    assert_eq!(dots.len(), 3, "one dot per located vehicle; DOM:\n{dom}");
    assert_eq!(
        dom.matches("class=\"vehicle online\"").count(),
        3,
        "{dots:?}"
    );
    for (imei, _, _) in cars {
        assert!(
            dom.contains(&format!("data-id=\"{imei}\"")),
            "dot for {imei}"
        );
    }
    assert!(
        dom.contains("data-zone=\"moscow_region\""),
        "service area (zone index) drawn"
    );
    assert!(
        dom.contains("data-zone=\"parking_komsomolskaya\""),
        "shipped parking lot drawn"
    );
    assert!(
        dom.contains("data-zone=\"Lot Kotlyakovo\""),
        "extra map layer drawn"
    );
    assert!(dom.contains("class=\"zone depot\""), "circle zone drawn");
    // Drawing order: the service area underneath, sites above it.
    let sa = dom.find("data-zone=\"moscow_region\"").unwrap();
    let lot = dom.find("data-zone=\"parking_komsomolskaya\"").unwrap();
    assert!(sa < lot, "service area drawn first");
    assert!(dom.contains("id=\"n-total\">4<"), "fleet count shown");
    assert!(dom.contains("id=\"n-online\">3<"), "on-line count shown");
    assert!(
        dom.contains("OpenStreetMap contributors"),
        "OSM attribution shown"
    );

    let shot = dir.path().join("status.png");
    {
        let (b, p, u, s) = (browser, profile, url, shot.clone());
        tokio::task::spawn_blocking(move || {
            browse(
                &b,
                &p,
                &[
                    &format!("--screenshot={}", s.display()),
                    "--window-size=1280,900",
                ],
                &u,
            )
        })
        .await
        .unwrap();
    }
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("status page screenshot: {}", shot.display());
    if let Ok(keep) = std::env::var("FLEETGATE_KEEP_SCREENSHOT") {
        let _ = std::fs::copy(&shot, keep);
    }

    // Without the token the page asks for one instead of showing data.
    let anon = {
        let p = dir.path().join("chromium-anon");
        let u = format!("http://{}/", daemon.api_addr);
        let b = chromium.clone();
        tokio::task::spawn_blocking(move || browse(&b, &p, &["--dump-dom"], &u))
            .await
            .unwrap()
    };
    assert!(
        !anon.contains("class=\"vehicle "),
        "no data without a token"
    );
    assert!(
        anon.contains("id=\"login\" style=\"display: block;\""),
        "token form shown"
    );

    drop(trackers);
    tokio::time::sleep(Duration::from_millis(50)).await;
    daemon.stop().await;
}
