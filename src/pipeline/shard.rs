//! One shard: the single owner of its devices' state. It filters each fix, advances the
//! odometer and the latest state, and hands accepted fixes to the writer.

use std::collections::{HashMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::filter::{self, haversine_m, LastFix, Reject};
use super::writer::{WriteReq, WriterMsg};
use super::{Accepted, ShardMsg};
use crate::config::FiltersConfig;
use crate::model::{DeviceId, Position};
use crate::protocols::Protocol;
use crate::storage::{DeviceState, NewPosition, StoredPosition, WriteItem};

/// Fix times remembered per device for duplicate detection; the database's primary key
/// catches anything older.
const RECENT_FIXES: usize = 2048;

#[derive(Default)]
struct Recent {
    order: VecDeque<i64>,
    set: HashSet<i64>,
}

impl Recent {
    fn contains(&self, t: i64) -> bool {
        self.set.contains(&t)
    }
    fn insert(&mut self, t: i64) {
        if self.set.insert(t) {
            self.order.push_back(t);
            if self.order.len() > RECENT_FIXES {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
    fn remove(&mut self, t: i64) {
        if self.set.remove(&t) {
            self.order.retain(|x| *x != t);
        }
    }
}

struct Device {
    state: DeviceState,
    last: Option<LastFix>,
    recent: Recent,
}

impl Device {
    fn new(id: DeviceId, protocol: Protocol, now: DateTime<Utc>) -> Self {
        Device {
            state: DeviceState {
                device_id: id,
                protocol: protocol.name().to_string(),
                last_seen: now,
                position: None,
                gps_odometer_m: 0.0,
            },
            last: None,
            recent: Recent::default(),
        }
    }

    fn from_state(state: DeviceState) -> Self {
        let last = state.position.as_ref().map(|p| LastFix {
            time: p.time,
            lat: p.lat,
            lon: p.lon,
        });
        let mut recent = Recent::default();
        if let Some(l) = &last {
            recent.insert(l.time.timestamp_millis());
        }
        Device {
            state,
            last,
            recent,
        }
    }
}

pub struct Shard {
    filters: FiltersConfig,
    devices: HashMap<DeviceId, Device>,
    writer: mpsc::Sender<WriterMsg>,
}

impl Shard {
    pub fn new(
        filters: FiltersConfig,
        seed: Vec<DeviceState>,
        writer: mpsc::Sender<WriterMsg>,
    ) -> Self {
        let devices = seed
            .into_iter()
            .map(|s| (s.device_id.clone(), Device::from_state(s)))
            .collect();
        Shard {
            filters,
            devices,
            writer,
        }
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<ShardMsg>) {
        while let Some(msg) = rx.recv().await {
            match msg {
                ShardMsg::Ingest {
                    device,
                    protocol,
                    positions,
                    received,
                    done,
                } => {
                    let (item, accepted) = self.accept(device, protocol, positions, received);
                    match item {
                        Some(item) => {
                            if let Err(e) = self
                                .writer
                                .send(WriterMsg::Write(WriteReq {
                                    item,
                                    accepted,
                                    done,
                                }))
                                .await
                            {
                                if let WriterMsg::Write(r) = e.0 {
                                    let _ = r.done.send(Err(super::PipelineError::Closed));
                                }
                            }
                        }
                        None => {
                            let _ = done.send(Ok(accepted));
                        }
                    }
                }
                ShardMsg::Seen {
                    device,
                    protocol,
                    at,
                } => {
                    let d = self
                        .devices
                        .entry(device.clone())
                        .or_insert_with(|| Device::new(device, protocol, at));
                    d.state.last_seen = d.state.last_seen.max(at);
                }
                ShardMsg::Forget { device, times } => {
                    if let Some(d) = self.devices.get_mut(&device) {
                        for t in times {
                            d.recent.remove(t.timestamp_millis());
                        }
                    }
                }
                ShardMsg::Query { device, reply } => {
                    let _ = reply.send(self.devices.get(&device).map(|d| d.state.clone()));
                }
                ShardMsg::QueryAll { reply } => {
                    let _ = reply.send(self.devices.values().map(|d| d.state.clone()).collect());
                }
                ShardMsg::Probe { reply } => {
                    // Through the writer, behind this shard's queued writes.
                    let _ = self.writer.send(WriterMsg::Probe(reply)).await;
                }
            }
        }
    }

    /// Filter a batch and advance the device's state; the write for the accepted fixes.
    fn accept(
        &mut self,
        id: DeviceId,
        protocol: Protocol,
        positions: Vec<Position>,
        now: DateTime<Utc>,
    ) -> (Option<WriteItem>, Accepted) {
        let filters = &self.filters;
        let d = self
            .devices
            .entry(id.clone())
            .or_insert_with(|| Device::new(id.clone(), protocol, now));
        d.state.last_seen = d.state.last_seen.max(now);
        d.state.protocol = protocol.name().to_string();
        let mut accepted = Accepted::default();
        let mut out = Vec::with_capacity(positions.len());
        let mut newest: Option<usize> = None;
        // Oldest first, so the odometer and the latest state advance in fix order even when a
        // device uploads its buffer newest-first.
        let mut positions = positions;
        positions.sort_by_key(|p| p.fix_time);
        for p in positions {
            let t = p.fix_time.timestamp_millis();
            let verdict = if d.recent.contains(t) {
                Err(Reject::Duplicate)
            } else {
                filter::check(&p, d.last.as_ref(), now, filters)
            };
            if let Err(reason) = verdict {
                metrics::counter!("fleetgate_pipeline_rejects_total", "reason" => reason.label())
                    .increment(1);
                if reason == Reject::Duplicate {
                    // Already stored: acking it again is right, the device just resent.
                    accepted.stored += 1;
                } else {
                    accepted.rejected += 1;
                }
                continue;
            }
            d.recent.insert(t);
            let newer = d.last.map(|l| p.fix_time > l.time).unwrap_or(true);
            if newer {
                if let Some(l) = d.last {
                    d.state.gps_odometer_m += haversine_m(l.lat, l.lon, p.lat, p.lon);
                }
                d.last = Some(LastFix {
                    time: p.fix_time,
                    lat: p.lat,
                    lon: p.lon,
                });
                // The latest state is rendered once per batch, below (its attributes as JSON
                // are the costly part of a record).
                newest = Some(out.len());
            }
            accepted.stored += 1;
            out.push(NewPosition {
                gps_odometer_m: d.state.gps_odometer_m,
                position: p,
            });
        }
        metrics::counter!("fleetgate_pipeline_records_total", "protocol" => protocol.name(), "result" => "accepted")
            .increment(out.len() as u64);
        if out.is_empty() {
            return (None, accepted);
        }
        if let Some(i) = newest {
            let np: &NewPosition = &out[i];
            d.state.position = Some(StoredPosition::from_position(
                &np.position,
                now,
                np.gps_odometer_m,
            ));
        }
        let item = WriteItem {
            device: id,
            protocol,
            server_time: now,
            positions: out,
            state: d.state.clone(),
        };
        (Some(item), accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn shard() -> Shard {
        let (tx, _rx) = mpsc::channel(1);
        Shard::new(FiltersConfig::default(), Vec::new(), tx)
    }

    fn fix(t: i64, lat: f64) -> Position {
        let t0 = Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap();
        Position::new(t0 + Duration::seconds(t), true, lat, 37.6)
    }

    #[test]
    fn resent_batch_is_acked_but_not_written_twice() {
        let mut s = shard();
        let now = Utc.with_ymd_and_hms(2026, 3, 1, 11, 0, 0).unwrap();
        let dev = DeviceId::new("1");
        let (item, acc) = s.accept(
            dev.clone(),
            Protocol::Teltonika,
            vec![fix(0, 55.0), fix(10, 55.001)],
            now,
        );
        assert_eq!(item.unwrap().positions.len(), 2);
        assert_eq!(
            acc,
            Accepted {
                stored: 2,
                rejected: 0
            }
        );
        let (item, acc) = s.accept(
            dev,
            Protocol::Teltonika,
            vec![fix(0, 55.0), fix(10, 55.001)],
            now,
        );
        assert!(item.is_none());
        assert_eq!(
            acc,
            Accepted {
                stored: 2,
                rejected: 0
            }
        );
    }

    #[test]
    fn newest_first_upload_advances_odometer_in_fix_order() {
        let mut s = shard();
        let now = Utc.with_ymd_and_hms(2026, 3, 1, 11, 0, 0).unwrap();
        let dev = DeviceId::new("1");
        let batch = vec![fix(20, 55.002), fix(10, 55.001), fix(0, 55.0)];
        let (item, _) = s.accept(dev.clone(), Protocol::Teltonika, batch, now);
        let item = item.unwrap();
        assert_eq!(item.positions[0].position.fix_time, fix(0, 0.0).fix_time);
        let km = item.state.gps_odometer_m / 1000.0;
        assert!((km - 0.2224).abs() < 0.001, "{km}");
        assert_eq!(item.state.position.unwrap().lat, 55.002);
        // An older fix arriving later is stored but does not move the latest state back.
        let (item, _) = s.accept(dev, Protocol::Teltonika, vec![fix(5, 55.0005)], now);
        assert_eq!(item.unwrap().state.position.unwrap().lat, 55.002);
    }

    #[test]
    fn filtered_fixes_are_counted_not_written() {
        let mut s = shard();
        let now = Utc.with_ymd_and_hms(2026, 3, 1, 11, 0, 0).unwrap();
        let mut bad = fix(0, 55.0);
        bad.valid = false;
        let mut zero = fix(1, 0.0);
        zero.lon = 0.0;
        let (item, acc) = s.accept(
            DeviceId::new("1"),
            Protocol::Teltonika,
            vec![bad, zero],
            now,
        );
        assert!(item.is_none());
        assert_eq!(
            acc,
            Accepted {
                stored: 0,
                rejected: 2
            }
        );
    }
}
