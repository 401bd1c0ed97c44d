//! Zone changes that move cars are guarded, end to end: a real fleet reports over Teltonika,
//! then operators change the service area through the API (named token) and the files
//! (SIGHUP's reload). Swapped `[lat, lon]` uploads and mass exits are refused and never
//! stored; a forced mass exit is applied and audited per car with the operator's name.

mod common;

use chrono::Utc;
use common::teltonika::{login, send_records};
use common::Api;
use fleetgate::config::TokenEntry;
use fleetgate::protocols::teltonika::AvlRecord;
use fleetgate::protocols::{Protocol, Transport};
use serde_json::{json, Value};

const OPS: &str = "ops-token-0123456789abcdef";

/// A lon/lat box as a counter-clockwise GeoJSON ring.
fn ring(lon0: f64, lat0: f64, lon1: f64, lat1: f64) -> Value {
    json!([[
        [lon0, lat0],
        [lon1, lat0],
        [lon1, lat1],
        [lon0, lat1],
        [lon0, lat0]
    ]])
}

fn feature(name: &str, kind: &str, rings: Value) -> Value {
    json!({"type": "Feature", "properties": {"name": name, "kind": kind},
           "geometry": {"type": "Polygon", "coordinates": rings}})
}

/// The same box written as [lat, lon] pairs.
fn swapped(lon0: f64, lat0: f64, lon1: f64, lat1: f64) -> Value {
    ring(lat0, lon0, lat1, lon1)
}

fn write_area(dir: &std::path::Path, rings: Value) {
    let doc =
        json!({"type": "FeatureCollection", "features": [feature("area", "service_area", rings)]});
    std::fs::write(dir.join("area.geojson"), doc.to_string()).unwrap();
}

async fn delete(api: &Api, path: &str) -> (u16, Value) {
    let r = api
        .client
        .delete(format!("{}{path}", api.base))
        .bearer_auth(OPS)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn area_of(api: &Api) -> Value {
    let (status, f) = api.get("/api/v1/geofences/area").await;
    assert_eq!(status, 200, "{f}");
    f
}

common::both_backends!(
    swapped_and_mass_exit_uploads_are_refused_never_stored_and_forced_ones_audited
);
async fn swapped_and_mass_exit_uploads_are_refused_never_stored_and_forced_ones_audited() {
    let dir = tempfile::tempdir().unwrap();
    let zones = zones_dir(dir.path());
    let config = common::config(dir.path(), &geofences(&zones));
    guarded_changes(config, &zones).await;
}

/// A zone directory holding the service area: lon 37..38, lat 55..56.
fn zones_dir(dir: &std::path::Path) -> std::path::PathBuf {
    let zones = dir.join("zones");
    std::fs::create_dir(&zones).unwrap();
    write_area(&zones, ring(37.0, 55.0, 38.0, 56.0));
    zones
}

fn geofences(zones: &std::path::Path) -> String {
    format!("[geofences]\ndir = \"{}\"\n", zones.display())
}

async fn guarded_changes(mut config: fleetgate::config::Config, zones: &std::path::Path) {
    config.api.tokens = vec![TokenEntry::named("ops", OPS)];
    let daemon = fleetgate::app::start(config).await.expect("daemon starts");
    let mut api = Api::new(daemon.api_addr);
    api.token = Some(OPS.into());
    let reloader = daemon.zone_reloader();

    // Five parked cars inside: three in the south half, two in the north half.
    let addr = daemon.addr(Protocol::Teltonika, Transport::Tcp).unwrap();
    let cars = [
        (55.2, 37.5),
        (55.3, 37.5),
        (55.4, 37.5),
        (55.7, 37.5),
        (55.8, 37.5),
    ];
    for (i, (lat, lon)) in cars.iter().enumerate() {
        let imei = format!("35000000000000{i}");
        let mut t = login(addr, &imei).await;
        let r = AvlRecord {
            time: Utc::now() - chrono::Duration::seconds(5),
            lat: *lat,
            lon: *lon,
            speed_kmh: 0,
            course: 0,
            altitude: 150,
            satellites: 10,
            io: vec![],
        };
        send_records(&mut t, &[r]).await;
    }
    let original = area_of(&api).await;
    assert_eq!(original["properties"]["source"], "file");

    // [lat, lon] instead of [lon, lat]: refused against the zone it replaces...
    let (status, e) = api
        .put(
            "/api/v1/geofences/area",
            feature("area", "service_area", swapped(37.0, 55.0, 38.0, 56.0)),
        )
        .await;
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("[lat, lon]"), "{e}");
    // ...and, for a new zone, against the fleet's positions.
    let (status, e) = api
        .put(
            "/api/v1/geofences/lot",
            feature("lot", "parking", swapped(37.45, 55.15, 37.55, 55.25)),
        )
        .await;
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("[lat, lon]"), "{e}");
    assert_eq!(api.get("/api/v1/geofences/lot").await.0, 404);

    // A self-intersecting service area is refused.
    let bow = json!([[
        [37.0, 55.0],
        [38.0, 56.0],
        [38.0, 55.0],
        [37.0, 56.0],
        [37.0, 55.0]
    ]]);
    let (status, e) = api
        .put(
            "/api/v1/geofences/area",
            feature("area", "service_area", bow),
        )
        .await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("intersects itself"),
        "{e}"
    );

    // An unrelated zone file breaks. A valid edit still works (built on the set in force)...
    std::fs::write(zones.join("broken.geojson"), "{ not json").unwrap();
    let (status, f) = api
        .put(
            "/api/v1/geofences/lot",
            feature("lot", "parking", ring(37.45, 55.15, 37.55, 55.25)),
        )
        .await;
    assert_eq!(status, 200, "{f}");
    // ...and the shrunk area that would put 2 of the 5 cars outside is refused, not stored.
    let south = ring(37.0, 55.0, 38.0, 55.5);
    let (status, e) = api
        .put(
            "/api/v1/geofences/area",
            feature("area", "service_area", south.clone()),
        )
        .await;
    assert_eq!(status, 409, "{e}");
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.contains("2 of the 5 cars") && msg.contains("force=true"),
        "{msg}"
    );
    assert_eq!(area_of(&api).await, original);
    assert!(
        reloader.reload().await.is_err(),
        "the broken file stops the reload"
    );
    std::fs::remove_file(zones.join("broken.geojson")).unwrap();
    reloader.reload().await.expect("reload");
    assert_eq!(
        area_of(&api).await,
        original,
        "SIGHUP does not apply the refused change"
    );
    assert_eq!(api.get("/api/v1/geofences/lot").await.0, 200);

    // The same mass exit through a file edit is refused by the reload; the zones stay.
    write_area(zones, south.clone());
    let e = reloader.reload().await.unwrap_err().to_string();
    assert!(e.contains("max_exit_share"), "{e}");
    // A swapped file is refused too.
    write_area(zones, swapped(37.0, 55.0, 38.0, 56.0));
    let e = reloader.reload().await.unwrap_err().to_string();
    assert!(e.contains("[lat, lon]"), "{e}");
    write_area(zones, ring(37.0, 55.0, 38.0, 56.0));
    reloader.reload().await.expect("reload");
    assert_eq!(area_of(&api).await, original);

    // Forced (body field): applied, and each car it moves out has an audit row naming "ops".
    let mut body = feature("area", "service_area", south.clone());
    body["force"] = json!(true);
    let (status, f) = api.put("/api/v1/geofences/area", body).await;
    assert_eq!(status, 200, "{f}");
    assert_eq!(f["properties"]["source"], "file");
    assert_eq!(f["geometry"]["coordinates"], south);
    for (i, (lat, _)) in cars.iter().enumerate() {
        let (status, rows) = api
            .get(&format!("/api/v1/audit?vehicle=35000000000000{i}"))
            .await;
        assert_eq!(status, 200, "{rows}");
        let forced: Vec<&Value> = rows
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["event"] == "zone_change_forced")
            .collect();
        let leaves = *lat > 55.5;
        assert_eq!(forced.len(), usize::from(leaves), "car {i}: {rows}");
        if leaves {
            assert_eq!(forced[0]["actor"], "ops");
            assert_eq!(forced[0]["forced"], true);
            assert!(forced[0]["comment"]
                .as_str()
                .unwrap()
                .contains("zone 'area'"));
        }
    }
    // Deleting the API zone brings the file's back (nobody leaves: no force needed).
    let (status, e) = delete(&api, "/api/v1/geofences/area").await;
    assert_eq!(status, 204, "{e}");
    assert_eq!(area_of(&api).await, original);
    // A DELETE that empties the service area needs force as well: a second service area
    // covers every car, the file one moves away (a reload, nobody leaves), then the API one
    // is deleted.
    let (status, f) = api
        .put(
            "/api/v1/geofences/extra_area",
            feature("extra_area", "service_area", ring(37.4, 55.1, 37.6, 55.9)),
        )
        .await;
    assert_eq!(status, 200, "{f}");
    write_area(zones, ring(30.0, 59.0, 31.0, 60.0));
    reloader
        .reload()
        .await
        .expect("nobody leaves: extra_area holds every car");
    let (status, e) = delete(&api, "/api/v1/geofences/extra_area").await;
    assert_eq!(status, 409, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("5 of the 5 cars"),
        "{e}"
    );
    assert_eq!(
        api.get("/api/v1/geofences/extra_area").await.0,
        200,
        "not deleted"
    );
    let (status, e) = delete(&api, "/api/v1/geofences/extra_area?force=true").await;
    assert_eq!(status, 204, "{e}");
    assert_eq!(api.get("/api/v1/geofences/extra_area").await.0, 404);
    let (_, rows) = api.get("/api/v1/audit?vehicle=350000000000000").await;
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .any(|r| r["event"] == "zone_change_forced"
                && r["comment"].as_str().unwrap_or("").contains("extra_area")),
        "{rows}"
    );
    daemon.stop().await;
}

common::both_backends!(
    a_broken_zone_file_at_start_keeps_the_other_zones_unless_no_service_area_is_left
);
async fn a_broken_zone_file_at_start_keeps_the_other_zones_unless_no_service_area_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let zones = dir.path().join("zones");
    std::fs::create_dir(&zones).unwrap();
    write_area(&zones, ring(37.0, 55.0, 38.0, 56.0));
    std::fs::write(zones.join("broken.geojson"), "{ not json").unwrap();
    let extra = format!("[geofences]\ndir = \"{}\"\n", zones.display());
    let daemon = fleetgate::app::start(common::config(dir.path(), &extra))
        .await
        .expect("starts without the broken file");
    let api = Api::new(daemon.api_addr);
    assert_eq!(area_of(&api).await["properties"]["kind"], "service_area");
    assert_eq!(
        common::metric(&api, "fleetgate_zone_files_broken", &[]).await,
        1.0
    );
    let (status, body) = api.text("/readyz").await;
    assert_eq!(status, 200, "running, with the other zones in force");
    assert!(body.contains("zone files left out"), "{body}");
    daemon.stop().await;

    // The service area's own file is the broken one: nothing could see a car leave.
    std::fs::write(zones.join("area.geojson"), "{ \"type\": \"Feature\"").unwrap();
    let lot = json!({"type": "FeatureCollection", "features": [feature("lot", "parking", ring(37.45, 55.15, 37.55, 55.25))]});
    std::fs::write(zones.join("lots.geojson"), lot.to_string()).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let e = fleetgate::app::start(common::config(dir2.path(), &extra))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("no service area remains") && e.contains("area.geojson"),
        "{e}"
    );
}
