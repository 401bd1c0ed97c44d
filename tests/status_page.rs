//! The status page in a real headless Chromium: a daemon with the shipped service area and a
//! parking lot, three trackers reporting over Teltonika TCP, one vehicle never located. The
//! page (token passed once in the address, as an operator's bookmark would) must draw every
//! located vehicle as a dot with its state, the zones, and the fleet counts. A screenshot is
//! left in the test's temp dir (path printed).

#[path = "common/cdp.rs"]
mod cdp;
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
    // One install at a time: the tests beside this one ask too, and a second apt-get beside
    // the first fails on dpkg's lock.
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
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

common::both_backends!(status_page_draws_every_vehicle_in_headless_chromium);
async fn status_page_draws_every_vehicle_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        eprintln!(
            "\n\n*** SKIPPED status_page_draws_every_vehicle_in_headless_chromium: no chromium and \
             `.ci/tools chromium` could not install it ***\n\n"
        );
        common::backend::skipped();
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
        tokio::task::spawn_blocking(move || {
            browse(&b, &p, &["--dump-dom", "--window-size=1400,900"], &u)
        })
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
        tokio::task::spawn_blocking(move || {
            browse(&b, &p, &["--dump-dom", "--window-size=1400,900"], &u)
        })
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

fn car(lat: f64, lon: f64, speed: u16, ignition: bool, ago_s: i64) -> AvlRecord {
    AvlRecord {
        io: vec![(
            fleetgate::protocols::teltonika::io::IGNITION,
            1,
            u64::from(ignition),
        )],
        time: chrono::Utc::now() - chrono::Duration::seconds(ago_s),
        ..record(lat, lon, speed)
    }
}

/// Set an input's value as a person typing would, so its `input` listeners run.
fn type_into(id: &str, value: &str) -> String {
    format!(
        "(() => {{ const e = document.getElementById({id:?}); e.value = {value:?}; \
         e.dispatchEvent(new Event('input')); return [...document.querySelectorAll('#list li')].map(l => l.dataset.vehicle); }})()"
    )
}

common::both_backends!(operator_console_lists_filters_blocks_and_goes_stale_in_a_real_browser);
/// The console a dispatcher keeps open, in a real headless Chromium driven over the DevTools
/// protocol: the list and its counts, search and filters, the vehicle panel, a block from the
/// page that reaches the tracker once the car stands, the audit naming the token, a read-only
/// token that gets no buttons (and a 403), and a stopped daemon turning the page stale.
async fn operator_console_lists_filters_blocks_and_goes_stale_in_a_real_browser() {
    let Some(chromium) = chromium() else {
        eprintln!(
            "\n\n*** SKIPPED operator_console_lists_filters_blocks_and_goes_stale_in_a_real_browser: \
             no chromium and `.ci/tools chromium` could not install it ***\n\n"
        );
        common::backend::skipped();
        return;
    };
    const OPS: &str = "console-ops-token-0001";
    const SCREEN: &str = "console-wall-screen-0002";
    let dir = tempfile::tempdir().unwrap();
    let extra = "[status]\nrefresh_s = 1\n[immobiliser]\nsafe_for = 10\n";
    let mut config = common::config(dir.path(), extra);
    config.api.tokens = vec![
        TokenEntry::named("ops", OPS),
        TokenEntry::Named {
            name: "wall".into(),
            token: SCREEN.into(),
            role: Some("read".into()),
        },
    ];
    config.geofences.dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("geofences")
        .display()
        .to_string();
    let daemon = fleetgate::app::start(config).await.expect("daemon starts");
    let mut api = Api::new(daemon.api_addr);
    api.token = Some(OPS.into());
    let addr = daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    for (id, body) in [
        (
            "car-a",
            serde_json::json!({"plate": "A123BC77", "device_id": "356307042441201",
                                     "protocol": "teltonika", "driver_id": "drv-anna", "status": "issued"}),
        ),
        (
            "car-b",
            serde_json::json!({"plate": "B456KM77", "device_id": "356307042441202",
                                     "protocol": "teltonika", "driver_id": "drv-boris", "status": "issued"}),
        ),
        (
            "spare-1",
            serde_json::json!({"plate": "A001AA77", "status": "in_repair"}),
        ),
    ] {
        let (st, v) = api.put(&format!("/api/v1/vehicles/{id}"), body).await;
        assert_eq!(st, 200, "{v}");
    }
    // Car A is parked in the centre, engine off; car B drives in the south.
    let mut a = Tracker::connect(addr).await;
    a.send(&encode_imei("356307042441201")).await;
    assert_eq!(a.read(1).await, [1]);
    a.send(&encode_avl_packet(
        CODEC_8E,
        &[car(55.75, 37.62, 0, false, 30)],
    ))
    .await;
    assert_eq!(a.read(4).await, [0, 0, 0, 1]);
    let mut b = Tracker::connect(addr).await;
    b.send(&encode_imei("356307042441202")).await;
    assert_eq!(b.read(1).await, [1]);
    b.send(&encode_avl_packet(
        CODEC_8E,
        &[car(55.62, 37.70, 45, true, 5)],
    ))
    .await;
    assert_eq!(b.read(4).await, [0, 0, 0, 1]);

    let mut br = cdp::Browser::launch(&chromium, &dir.path().join("profile-ops"));
    br.open(
        &format!("http://{}/#token={OPS}", daemon.api_addr),
        1400,
        900,
    );
    br.wait_for(
        "document.querySelectorAll('#list li').length === 3",
        Duration::from_secs(20),
    );
    let counts = br.eval(
        "['total','online','offline','blocked','pending','no_position','in_repair']\
         .map(k => document.getElementById('n-' + k).textContent).join(',')",
    );
    assert_eq!(counts, "3,2,1,0,0,1,1", "header counts");
    assert_eq!(
        br.eval("document.getElementById('listinfo').textContent"),
        "3 of 3 vehicles"
    );
    // Search by plate (any case), by IMEI, by driver; filters match the header's words.
    assert_eq!(
        br.eval(&type_into("search", "b456")),
        serde_json::json!(["car-b"])
    );
    assert_eq!(
        br.eval(&type_into("search", "441201")),
        serde_json::json!(["car-a"])
    );
    assert_eq!(
        br.eval(&type_into("search", "drv-boris")),
        serde_json::json!(["car-b"])
    );
    br.eval(&type_into("search", ""));
    assert_eq!(
        br.eval(&type_into("filter", "in_repair")),
        serde_json::json!(["spare-1"])
    );
    assert_eq!(
        br.eval(&type_into("filter", "offline")),
        serde_json::json!(["spare-1"])
    );
    assert_eq!(
        br.eval(&type_into("filter", "online"))
            .as_array()
            .unwrap()
            .len(),
        2
    );
    br.eval(&type_into("filter", "all"));
    // Two located cars, two dots (far apart: not clustered); the unlocated one is listed only.
    assert_eq!(
        br.eval("document.querySelectorAll('#vehicles circle.vehicle').length"),
        2
    );
    assert!(
        br.eval("document.querySelectorAll('#labels text').length")
            .as_u64()
            .is_some_and(|n| n > 0),
        "parking lots and depots are labelled"
    );

    // The panel: click the car in the list; an operating token gets the buttons.
    br.eval("document.querySelector('#list li[data-vehicle=\"car-a\"]').click()");
    br.wait_for(
        "document.getElementById('p-title').textContent.includes('A123BC77')",
        Duration::from_secs(10),
    );
    let facts = br
        .wait_for(
            "(t => t.includes('drv-anna') && t.includes('356307042441201') && t) \
             (document.getElementById('p-facts').textContent)",
            Duration::from_secs(10),
        )
        .to_string();
    assert!(
        facts.contains("Ignition") && facts.contains("off"),
        "{facts}"
    );
    assert_eq!(
        br.eval("getComputedStyle(document.getElementById('actions')).display"),
        "block"
    );
    // Block from the page: a confirmation first, then the API call as the `ops` token.
    br.eval("document.getElementById('a-comment').value = 'driver not answering'");
    br.eval("document.getElementById('a-block').click()");
    assert_eq!(
        br.eval("getComputedStyle(document.getElementById('confirm')).display"),
        "block",
        "nothing is sent before the confirmation"
    );
    let (_, v) = api.get("/api/v1/vehicles/car-a").await;
    assert_eq!(v["immobiliser"]["state"], "running", "{v}");
    br.eval("document.getElementById('confirm-yes').click()");
    br.wait_for(
        "document.getElementById('actionresult').textContent.includes('block accepted')",
        Duration::from_secs(10),
    );
    // Pending is not blocked: the page and the CRM's summary say the same.
    br.wait_for(
        "document.getElementById('n-pending').textContent === '1' && \
         document.getElementById('n-blocked').textContent === '0'",
        Duration::from_secs(10),
    );
    let (_, fs) = api.get("/api/v1/fleet/summary").await;
    assert_eq!(
        (fs["blocked"].clone(), fs["block_pending"].clone()),
        (serde_json::json!(0), serde_json::json!(1)),
        "{fs}"
    );
    // The car stands with the engine off: the block reaches the tracker.
    a.send(&encode_avl_packet(
        CODEC_8E,
        &[
            car(55.75, 37.62, 0, false, 3),
            car(55.75, 37.62, 0, false, 2),
            car(55.75, 37.62, 0, false, 1),
        ],
    ))
    .await;
    assert_eq!(a.read(4).await, [0, 0, 0, 3]);
    assert_eq!(common::teltonika::read_command(&mut a).await, "setdigout 1");
    a.send(&fleetgate::protocols::teltonika::encode_codec12_response(
        b"DOUT1:1",
    ))
    .await;
    let v = common::wait_vehicle(&api, "car-a", "blocked", |v| {
        v["immobiliser"]["state"] == "blocked"
    })
    .await;
    let why = &v["immobiliser"]["reason_details"][0];
    assert_eq!(
        (
            why["reason"].clone(),
            why["actor"].clone(),
            why["comment"].clone()
        ),
        (
            serde_json::json!("manual"),
            serde_json::json!("ops"),
            serde_json::json!("driver not answering")
        ),
        "the audit names the token and keeps the comment: {v}"
    );
    br.wait_for(
        "document.getElementById('n-blocked').textContent === '1' && \
         document.querySelector('#vehicles circle[data-id=\"car-a\"]').classList.contains('blocked')",
        Duration::from_secs(10),
    );
    let (_, fs) = api.get("/api/v1/fleet/summary").await;
    assert_eq!(
        (fs["blocked"].clone(), fs["block_pending"].clone()),
        (serde_json::json!(1), serde_json::json!(0)),
        "{fs}"
    );
    br.wait_for(
        "document.getElementById('feed').textContent.includes('block reason manual added by ops')",
        Duration::from_secs(10),
    );
    assert!(br.errors.is_empty(), "console errors: {:?}", br.errors);

    // A wall screen's read-only token: the same data, no buttons, and the API refuses it.
    let mut wall = cdp::Browser::launch(&chromium, &dir.path().join("profile-wall"));
    wall.open(
        &format!("http://{}/#token={SCREEN}", daemon.api_addr),
        1400,
        900,
    );
    wall.wait_for(
        "document.querySelectorAll('#list li').length === 3",
        Duration::from_secs(20),
    );
    wall.eval("document.querySelector('#list li[data-vehicle=\"car-a\"]').click()");
    wall.wait_for(
        "document.getElementById('p-title').textContent.includes('A123BC77')",
        Duration::from_secs(10),
    );
    assert_eq!(
        wall.eval("getComputedStyle(document.getElementById('actions')).display"),
        "none",
        "a read-only token sees no block button"
    );
    assert!(wall.errors.is_empty(), "console errors: {:?}", wall.errors);
    let mut ro = Api::new(daemon.api_addr);
    ro.token = Some(SCREEN.into());
    let (st, e) = ro
        .post("/api/v1/vehicles/car-b/block", serde_json::json!({}))
        .await;
    assert_eq!(st, 403, "{e}");
    assert!(e.to_string().contains("read-only"), "{e}");
    let (st, who) = ro.get("/api/v1/whoami").await;
    assert_eq!((st, who["role"].clone()), (200, serde_json::json!("read")));

    // The daemon stops: the page says so and greys out instead of showing old counts as live.
    daemon.stop().await;
    let banner = br.wait_for(
        "document.body.classList.contains('stale') && document.getElementById('stale').textContent",
        Duration::from_secs(30),
    );
    assert!(
        banner
            .as_str()
            .unwrap()
            .contains("No answer from the gateway"),
        "{banner}"
    );
    let shot = dir.path().join("console-stale.png");
    br.screenshot(&shot);
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    eprintln!("stale console screenshot: {}", shot.display());
}
