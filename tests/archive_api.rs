//! The position archive through the API of a running daemon (issue #17): the track formats
//! (GeoJSON, CSV, GPX) of what a tracker sent, daily summaries computed by the archive actor
//! for a closed day, and a track range before `retained_from` answered 410 (wholly expired) or
//! with the `Fleetgate-Retained-From` header (partly expired); the archive's scenarios on
//! SQLite and PostgreSQL.

mod common;

use std::time::Duration;

use chrono::{DateTime, Duration as Span, SecondsFormat, Utc};
use common::teltonika::{login, send_records, Drive};
use common::Api;
use fleetgate::protocols::{Protocol, Transport};

const IMEI: &str = "356307042441013";

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A daemon with `car-1` fitted with the Teltonika tracker `IMEI`.
async fn daemon(dir: &std::path::Path, extra: &str) -> (fleetgate::app::Running, Api) {
    let d = common::start(dir, extra).await;
    let api = Api::new(d.api_addr);
    let (s, v) = api
        .put(
            "/api/v1/vehicles/car-1",
            serde_json::json!({ "device_id": IMEI, "protocol": "teltonika" }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    (d, api)
}

/// Send `drive`'s records, 100 per packet, each packet acked.
async fn send(d: &fleetgate::app::Running, drive: &mut Drive) -> usize {
    let addr = d.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let mut t = login(addr, IMEI).await;
    let recs = drive.take();
    for chunk in recs.chunks(100) {
        send_records(&mut t, chunk).await;
    }
    recs.len()
}

common::both_backends!(a_track_comes_as_geojson_csv_and_gpx_with_every_fix);
async fn a_track_comes_as_geojson_csv_and_gpx_with_every_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (d, api) = daemon(dir.path(), "").await;
    let t0 = Utc::now() - Span::hours(1);
    let mut drive = Drive::new(t0);
    drive
        .go(300, 40.0, true)
        .go(100, 0.0, true)
        .go(200, 60.0, true);
    let n = send(&d, &mut drive).await;
    assert_eq!(n, 120);
    let range = format!("from={}&to={}", iso(t0), iso(Utc::now() + Span::minutes(1)));
    let (s, json) = api
        .get(&format!("/api/v1/vehicles/car-1/track?{range}"))
        .await;
    assert_eq!(s, 200);
    let json = json.as_array().unwrap().clone();
    assert_eq!(json.len(), n);

    let (s, g) = api
        .get(&format!(
            "/api/v1/vehicles/car-1/track?{range}&format=geojson"
        ))
        .await;
    assert_eq!(s, 200, "{g}");
    assert_eq!(g["type"], "Feature");
    assert_eq!(g["geometry"]["type"], "LineString");
    let coords = g["geometry"]["coordinates"].as_array().unwrap();
    let times = g["properties"]["times"].as_array().unwrap();
    assert_eq!((coords.len(), times.len()), (n, n));
    for (i, p) in json.iter().enumerate() {
        assert_eq!(coords[i][0], p["lon"]);
        assert_eq!(coords[i][1], p["lat"]);
        let a = DateTime::parse_from_rfc3339(times[i].as_str().unwrap()).unwrap();
        let b = DateTime::parse_from_rfc3339(p["time"].as_str().unwrap()).unwrap();
        assert_eq!(a, b);
    }
    assert_eq!(g["properties"]["vehicle_id"], "car-1");
    assert_eq!(g["properties"]["device_id"], IMEI);

    let r = api
        .client
        .get(format!(
            "{}/api/v1/vehicles/car-1/track?{range}&format=csv",
            api.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = r.text().await.unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("time,lat,lon,speed_kmh,course,altitude,satellites,valid,ignition,odometer_m")
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), n);
    assert!(
        rows.iter().all(|l| l.split(',').count() == 10),
        "{}",
        rows[0]
    );
    assert!(rows[0].ends_with(",12,true,true,1000055"), "{}", rows[0]);

    let r = api
        .client
        .get(format!(
            "{}/api/v1/vehicles/car-1/track.gpx?{range}",
            api.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/gpx+xml");
    let gpx = r.text().await.unwrap();
    let doc = roxmltree::Document::parse(&gpx).expect("GPX is XML");
    assert_eq!(doc.root_element().attribute("version"), Some("1.1"));
    let pts = doc
        .descendants()
        .filter(|n| n.has_tag_name("trkpt"))
        .count();
    assert_eq!(pts, n);

    // Bad parameters are 400 naming what was wrong.
    let (s, e) = api
        .get(&format!("/api/v1/vehicles/car-1/track?{range}&format=kml"))
        .await;
    assert_eq!(s, 400);
    assert!(
        e["error"].as_str().unwrap().contains("format: 'kml'"),
        "{e}"
    );
    let (s, e) = api
        .get("/api/v1/vehicles/car-1/summaries?from=07.12.2026")
        .await;
    assert_eq!(s, 400);
    assert!(e["error"].as_str().unwrap().contains("YYYY-MM-DD"), "{e}");
    let (s, e) = api
        .get("/api/v1/vehicles/car-1/summaries?from=2026-12-07&to=2026-12-01")
        .await;
    assert_eq!(s, 400);
    assert!(
        e["error"].as_str().unwrap().contains("must not be after"),
        "{e}"
    );
    let (s, _) = api
        .get("/api/v1/vehicles/car-1/summaries?from=2024-01-01&to=2026-01-01")
        .await;
    assert_eq!(s, 400);
    let (s, _) = api.get("/api/v1/vehicles/no-such-car/track.gpx").await;
    assert_eq!(s, 404);
    d.stop().await;
}

/// Poll `path` until `f` accepts its body (30 s at most: a pass every 10 s).
async fn wait_for(
    api: &Api,
    path: &str,
    f: impl Fn(u16, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..300 {
        let (s, v) = api.get(path).await;
        if f(s, &v) {
            return v;
        }
        last = v;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path}: not reached: {last}");
}

common::both_backends!(yesterday_gets_a_daily_summary_once_the_archive_packs_it);
async fn yesterday_gets_a_daily_summary_once_the_archive_packs_it() {
    daily_summary().await;
}

async fn daily_summary() {
    let dir = tempfile::tempdir().unwrap();
    let retention = "[retention]\ncompact_grace_s = 0\ninterval_s = 10\n";
    let (d, api) = daemon(dir.path(), retention).await;
    let today = Utc::now().date_naive();
    let yesterday = today - Span::days(1);
    let t0 = yesterday.and_hms_opt(9, 0, 0).unwrap().and_utc();
    let mut drive = Drive::new(t0);
    // 10 min at 36 km/h (6 km), 5 min standing with the engine on, 5 min parked.
    drive
        .go(600, 36.0, true)
        .go(300, 0.0, true)
        .go(300, 0.0, false);
    let n = send(&d, &mut drive).await;
    let path = format!("/api/v1/vehicles/car-1/summaries?from={yesterday}&to={today}");
    let v = wait_for(&api, &path, |s, v| {
        s == 200 && v["days"].as_array().is_some_and(|d| !d.is_empty())
    })
    .await;
    let day = &v["days"][0];
    assert_eq!(day["day"], yesterday.to_string());
    assert_eq!(day["positions"], n as u64);
    let km = day["distance_m"].as_f64().unwrap() / 1000.0;
    assert!((km - 6.0).abs() < 0.05, "{km}");
    assert_eq!(day["moving_s"], 600);
    assert_eq!(day["engine_s"], 900);
    assert_eq!(day["outside_s"], 0);
    assert_eq!(day["odometer_first_m"], 1_000_050.0);
    d.stop().await;
}

common::both_backends!(a_range_before_retained_from_is_gone_and_a_range_across_it_says_so);
async fn a_range_before_retained_from_is_gone_and_a_range_across_it_says_so() {
    expired_ranges().await;
}

async fn expired_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let retention = "[retention]\npositions_days = 2\ninterval_s = 10\n";
    let (d, api) = daemon(dir.path(), retention).await;
    let today = Utc::now().date_naive();
    // A buffered upload: ten days ago (expired on arrival) and yesterday (kept).
    let old = (today - Span::days(10))
        .and_hms_opt(12, 0, 0)
        .unwrap()
        .and_utc();
    let yday = (today - Span::days(1))
        .and_hms_opt(12, 0, 0)
        .unwrap()
        .and_utc();
    let mut drive = Drive::new(old);
    drive.go(60, 30.0, true);
    send(&d, &mut drive).await;
    let mut drive = Drive::new(yday);
    drive.go(60, 30.0, true);
    send(&d, &mut drive).await;
    let gone = format!(
        "/api/v1/vehicles/car-1/track?from={}&to={}",
        iso(old - Span::hours(1)),
        iso(old + Span::hours(1))
    );
    // The next pass drops the old day.
    let e = wait_for(&api, &gone, |s, _| s == 410).await;
    let retained_from = (today - Span::days(2)).to_string();
    let yesterday = (today - Span::days(1)).to_string();
    let rf = e["retained_from"].as_str().unwrap().to_string();
    assert!(rf == retained_from || rf == yesterday, "{e}");
    assert!(e["error"].as_str().unwrap().contains("have expired"), "{e}");
    // GPX and the track summary say the same.
    let (s, _) = api.get(&gone.replace("/track?", "/track.gpx?")).await;
    assert_eq!(s, 410);
    let (s, _) = api.get(&gone.replace("/track?", "/track/summary?")).await;
    assert_eq!(s, 410);
    // Across retained_from: what is held, and where it starts.
    let across = format!(
        "{}/api/v1/vehicles/car-1/track?from={}&to={}&format=geojson",
        api.base,
        iso(old - Span::hours(1)),
        iso(Utc::now())
    );
    let r = api.client.get(&across).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["fleetgate-retained-from"].to_str().unwrap(), rf);
    let g: serde_json::Value = r.json().await.unwrap();
    assert_eq!(g["properties"]["retained_from"], rf.as_str());
    assert_eq!(g["properties"]["count"], 12, "yesterday's fixes only: {g}");
    // A range wholly after it has no header.
    let r = api
        .client
        .get(format!(
            "{}/api/v1/vehicles/car-1/track?from={}",
            api.base,
            iso(yday - Span::hours(1))
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("fleetgate-retained-from").is_none());
    d.stop().await;
}
