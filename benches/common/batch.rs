//! What the group commit writes under the e2e load, built directly: shared by the storage
//! bench and the storage-ceiling target of the e2e bench.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use fleetgate::model::{AttrKey, AttrValue, DeviceId, Position};
use fleetgate::protocols::Protocol;
use fleetgate::storage::{DeviceState, NewPosition, StoredPosition, WriteItem};

/// Fix times never repeat across calls (a repeat would be ignored as a duplicate).
static NEXT_S: AtomicI64 = AtomicI64::new(1_700_000_000);

fn position(t: DateTime<Utc>, i: usize) -> Position {
    let mut p = Position::new(t, true, 55.75 + i as f64 * 1e-4, 37.62 - i as f64 * 1e-4);
    p.speed_kmh = 42.0;
    p.course = 270.0;
    p.altitude = 142.0;
    p.satellites = Some(11);
    p.ignition = Some(true);
    p.motion = Some(true);
    p.odometer_m = Some(120_000.0 + i as f64);
    p.power_v = Some(13.8);
    for (id, v) in [
        (21, 4),
        (69, 1),
        (181, 9),
        (182, 7),
        (24, 42),
        (16, 120_000),
    ] {
        p.attrs.push(AttrKey::Io(id), AttrValue::Int(v));
    }
    p
}

/// One group commit as `fleetgate sim` drives it flat out: `devices` packets of `per_device`
/// records (the writer takes whole packets), each record with 6 IO attributes, all new.
pub fn batch(devices: usize, per_device: usize, first_device: usize) -> Vec<WriteItem> {
    let start = NEXT_S.fetch_add(per_device as i64, Ordering::Relaxed);
    let now = Utc::now();
    (first_device..first_device + devices)
        .map(|d| {
            let device = DeviceId::new(format!("35620904{d:07}"));
            let positions: Vec<NewPosition> = (0..per_device)
                .map(|i| {
                    let t = DateTime::from_timestamp(start + i as i64, 0).unwrap_or_default();
                    NewPosition::new(position(t, i), i as f64 * 12.0)
                })
                .collect();
            let latest = positions
                .last()
                .map(|p| StoredPosition::from_position(&p.position, now, p.gps_odometer_m));
            WriteItem {
                packed: Vec::new(),
                origin: Default::default(),
                device: device.clone(),
                protocol: Protocol::Teltonika,
                server_time: now,
                positions,
                state: DeviceState {
                    device_id: device,
                    protocol: "teltonika".into(),
                    last_seen: now,
                    position: latest,
                    gps_odometer_m: 0.0,
                },
            }
        })
        .collect()
}
