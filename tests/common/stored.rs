//! What a daemon has stored, read back the way fleetgate reads it: through the library's own
//! storage (both tiers of the archive: packed chunks and rows not packed yet, and on
//! PostgreSQL a legacy table still being converted; one position per device and fix time,
//! the first stored). Tests count with this rather than `SELECT … FROM positions`, which sees
//! only the rows the archive has not packed yet.

use chrono::{TimeZone, Utc};
use fleetgate::model::DeviceId;
use fleetgate::storage::config::StorageConfig;

/// Every stored (device, fix time in ms), by device then time. `url` as in `[storage] url`.
pub async fn fix_times(url: &str) -> Vec<(String, i64)> {
    let stores = open(url).await;
    let mut out = Vec::new();
    let mut devices: Vec<DeviceId> = stores
        .core
        .device_states()
        .await
        .expect("read device states")
        .into_iter()
        .map(|s| s.device_id)
        .collect();
    devices.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    for d in devices {
        for t in device_fix_times_in(&stores, &d).await {
            out.push((d.as_str().to_string(), t));
        }
    }
    out
}

/// Fix times (ms) stored for one device, in order.
pub async fn device_fix_times(url: &str, device: &str) -> Vec<i64> {
    let stores = open(url).await;
    device_fix_times_in(&stores, &DeviceId::new(device)).await
}

async fn open(url: &str) -> fleetgate::storage::Stores {
    let cfg = StorageConfig {
        url: url.to_string(),
        min_free_mb: 0,
        max_connections: 2,
        ..Default::default()
    };
    fleetgate::storage::open(&cfg)
        .await
        .expect("open the daemon's storage")
}

async fn device_fix_times_in(stores: &fleetgate::storage::Stores, device: &DeviceId) -> Vec<i64> {
    let from = Utc.timestamp_millis_opt(0).unwrap();
    let to = Utc.with_ymd_and_hms(2200, 1, 1, 0, 0, 0).unwrap();
    stores
        .core
        .track(device, from, to, u32::MAX)
        .await
        .expect("read the track")
        .into_iter()
        .map(|p| p.time.timestamp_millis())
        .collect()
}
