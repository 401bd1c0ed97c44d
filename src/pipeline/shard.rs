//! One shard: the single owner of its devices' state. It filters each fix, advances the
//! odometer and the latest state, and hands accepted fixes to the writer.

use std::collections::{HashMap, VecDeque};

use rustc_hash::{FxHashMap, FxHashSet};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::config::FiltersConfig;
use super::filter::{self, haversine_m, LastFix, Reject};
use super::reanchor::{JumpVerdict, Reanchor};
use super::store::{DeviceState, NewPosition, Store, StoredPosition, WriteItem};
use super::writer::{WriteReq, WriterMsg};
use super::{Accepted, ShardMsg};
use crate::model::{DeviceId, Position};
use crate::protocols::Protocol;

/// Fix times remembered per device for duplicate detection; the database's primary key
/// catches anything older.
const RECENT_FIXES: usize = 2048;

#[derive(Default)]
struct Recent {
    order: VecDeque<i64>,
    // Fix times are the device's own numbers, but a device can only collide its own entries:
    // nothing to gain from SipHash's flooding resistance here, and it was a visible share of
    // the shard's time.
    set: FxHashSet<i64>,
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
    /// Jump-rejected fixes agreeing with one another, since the last accepted fix.
    reanchor: Reanchor,
    recent: Recent,
    /// Fix times handed to the writer whose commit has not returned yet (how many writes
    /// carry each). A resend of one of these is not a duplicate to ack at once: the first
    /// write may still fail, so the resend is written (idempotently) and acked after its own
    /// commit.
    pending: FxHashMap<i64, u32>,
    /// Whole hours the device's clock runs ahead (taken off its fix times).
    clock: super::clock::ClockSkew,
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
            reanchor: Reanchor::default(),
            recent: Recent::default(),
            pending: FxHashMap::default(),
            clock: Default::default(),
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
            reanchor: Reanchor::default(),
            recent,
            pending: FxHashMap::default(),
            clock: Default::default(),
        }
    }
}

pub struct Shard {
    filters: FiltersConfig,
    /// Boxed: a map stores its values inline in a table up to twice the size of its entries,
    /// and a device's state is ~500 bytes; every connected tracker has one, idle or not.
    devices: HashMap<DeviceId, Box<Device>>,
    writer: mpsc::Sender<WriterMsg>,
    /// This shard's own queue, to learn how each write ended ([`ShardMsg::Settled`]).
    me: Option<mpsc::WeakSender<ShardMsg>>,
    /// Packs each accepted packet in the store's format here, in parallel with the other
    /// shards, rather than inside the single writer's commit ([`Store::pack`]).
    packer: Option<std::sync::Arc<dyn Store>>,
}

impl Shard {
    pub fn new(
        filters: FiltersConfig,
        seed: Vec<DeviceState>,
        writer: mpsc::Sender<WriterMsg>,
    ) -> Self {
        let devices = seed
            .into_iter()
            .map(|s| (s.device_id.clone(), Box::new(Device::from_state(s))))
            .collect();
        Shard {
            filters,
            devices,
            writer,
            me: None,
            packer: None,
        }
    }

    /// Pack accepted packets with `store` before handing them to the writer.
    pub(crate) fn with_packer(mut self, store: std::sync::Arc<dyn Store>) -> Self {
        self.packer = Some(store);
        self
    }

    /// Let the shard hear how its writes ended (needed to tell a resend of a fix still being
    /// committed from one already stored).
    pub(crate) fn with_queue(mut self, me: mpsc::WeakSender<ShardMsg>) -> Self {
        self.me = Some(me);
        self
    }

    /// A write ended: its fix times are no longer pending; when it failed they are forgotten,
    /// so that a resend is written again rather than taken for a duplicate.
    fn settle(&mut self, device: &DeviceId, times: &[i64], ok: bool) {
        let Some(d) = self.devices.get_mut(device) else {
            return;
        };
        for t in times {
            if let Some(n) = d.pending.get_mut(t) {
                *n -= 1;
                if *n == 0 {
                    d.pending.remove(t);
                }
            }
            if !ok {
                d.recent.remove(*t);
            }
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
                    origin,
                    done,
                } => {
                    let (mut item, accepted) = self.accept(device, protocol, positions, received);
                    if let Some(i) = item.as_mut() {
                        i.origin = origin;
                        if let Some(p) = &self.packer {
                            p.pack(i);
                        }
                    }
                    match item {
                        Some(item) => {
                            // Learn the outcome before the connection does, so the shard has
                            // settled the fix times by the time a device acts on its ack.
                            let done = match self.me.as_ref().and_then(|m| m.upgrade()) {
                                Some(me) => {
                                    let times: Vec<i64> = item
                                        .positions
                                        .iter()
                                        .map(|p| p.position.fix_time.timestamp_millis())
                                        .collect();
                                    let device = item.device.clone();
                                    let (tx, rx) = tokio::sync::oneshot::channel();
                                    tokio::spawn(async move {
                                        let r =
                                            rx.await.unwrap_or(Err(super::PipelineError::Closed));
                                        let _ = me
                                            .send(ShardMsg::Settled {
                                                device,
                                                times,
                                                ok: r.is_ok(),
                                            })
                                            .await;
                                        let _ = done.send(r);
                                    });
                                    tx
                                }
                                None => done,
                            };
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
                        .or_insert_with(|| Box::new(Device::new(device, protocol, at)));
                    d.state.last_seen = d.state.last_seen.max(at);
                }
                ShardMsg::Settled { device, times, ok } => self.settle(&device, &times, ok),
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
            .or_insert_with(|| Box::new(Device::new(id.clone(), protocol, now)));
        d.state.last_seen = d.state.last_seen.max(now);
        d.state.protocol = protocol.name().to_string();
        let mut accepted = Accepted::default();
        let mut out = Vec::with_capacity(positions.len());
        let mut newest: Option<usize> = None;
        // Oldest first, so the odometer and the latest state advance in fix order even when a
        // device uploads its buffer newest-first.
        let mut positions = positions;
        if !positions.is_empty() {
            let times: Vec<DateTime<Utc>> = positions.iter().map(|p| p.fix_time).collect();
            let skew = d.clock.observe(&times, now, filters.max_future_s);
            if !skew.is_zero() {
                for p in &mut positions {
                    p.fix_time -= skew;
                }
                metrics::counter!("fleetgate_pipeline_clock_corrected_total")
                    .increment(positions.len() as u64);
            }
        }
        positions.sort_by_key(|p| p.fix_time);
        for p in positions {
            let t = p.fix_time.timestamp_millis();
            if d.recent.contains(t) && d.pending.contains_key(&t) {
                // Resent while its first write is still in flight (the device gave up
                // waiting): acking it now would ack before durability, and the first write
                // may yet fail. Write it again (storage ignores a row already stored) and ack
                // after that commit. The state has already advanced for it.
                *d.pending.entry(t).or_default() += 1;
                accepted.stored += 1;
                out.push(NewPosition::new(p, d.state.gps_odometer_m));
                continue;
            }
            let mut verdict = if d.recent.contains(t) {
                Err(Reject::Duplicate)
            } else {
                filter::check(&p, d.last.as_ref(), now, filters)
            };
            let mut reanchored = false;
            match verdict {
                Err(Reject::Jump) => {
                    let fix = LastFix {
                        time: p.fix_time,
                        lat: p.lat,
                        lon: p.lon,
                    };
                    let plausible =
                        |latest: &LastFix| filter::check(&p, Some(latest), now, filters).is_ok();
                    if let JumpVerdict::Reanchor { fixes } = d.reanchor.jump(fix, plausible) {
                        tracing::info!(device = %id, fixes, "jump filter re-anchored: the previous fix was the outlier");
                        reanchored = true;
                        verdict = Ok(());
                    }
                }
                Ok(()) => d.reanchor.accepted(),
                Err(_) => {}
            }
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
            *d.pending.entry(t).or_default() += 1;
            let newer = d.last.map(|l| p.fix_time > l.time).unwrap_or(true) || reanchored;
            if newer {
                if let (Some(l), false) = (d.last, reanchored) {
                    // Not across a re-anchoring: that distance was never driven.
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
            out.push(NewPosition::new(p, d.state.gps_odometer_m));
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
            origin: Default::default(),
            positions: out,
            state: d.state.clone(),
            packed: Vec::new(),
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
    fn a_clock_three_hours_ahead_is_stored_at_the_real_time_not_dropped_as_future() {
        let mut s = shard();
        // Fixes at 10:00–10:00:20 device time, received at 07:00:25 UTC: a tracker set to
        // Moscow time sending it as UTC.
        let now = Utc.with_ymd_and_hms(2026, 3, 1, 7, 0, 25).unwrap();
        let dev = DeviceId::new("1");
        let batch = vec![fix(0, 55.0), fix(10, 55.0005), fix(20, 55.001)];
        let (item, acc) = s.accept(dev.clone(), Protocol::Teltonika, batch.clone(), now);
        let item = item.expect("stored, not rejected as future");
        assert_eq!(acc.stored, 3);
        let first = item.positions[0].position.fix_time;
        assert_eq!(first, Utc.with_ymd_and_hms(2026, 3, 1, 7, 0, 0).unwrap());
        // The resend is recognised under the corrected times.
        let (_, acc) = s.accept(dev, Protocol::Teltonika, batch, now);
        assert_eq!(acc.stored, 3);
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
        let item = item.unwrap();
        assert_eq!(item.positions.len(), 2);
        assert_eq!(
            acc,
            Accepted {
                stored: 2,
                rejected: 0
            }
        );
        s.settle(&dev, &times(&item), true);
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

    fn times(item: &WriteItem) -> Vec<i64> {
        item.positions
            .iter()
            .map(|p| p.position.fix_time.timestamp_millis())
            .collect()
    }

    #[test]
    fn a_resend_while_the_first_write_is_pending_is_written_again_not_acked_at_once() {
        let mut s = shard();
        let now = Utc.with_ymd_and_hms(2026, 3, 1, 11, 0, 0).unwrap();
        let dev = DeviceId::new("1");
        let batch = vec![fix(0, 55.0), fix(10, 55.001)];
        let (first, _) = s.accept(dev.clone(), Protocol::Teltonika, batch.clone(), now);
        let first = first.unwrap();
        // The device gave up waiting and resends while the first commit is in flight.
        let (again, acc) = s.accept(dev.clone(), Protocol::Teltonika, batch.clone(), now);
        let again = again.expect("written again, to be acked after its own commit");
        assert_eq!(times(&again), times(&first));
        assert_eq!(acc.stored, 2);
        // The state does not advance twice.
        assert_eq!(again.state.gps_odometer_m, first.state.gps_odometer_m);
        // The first write fails, the second succeeds: from then on a resend is a duplicate.
        s.settle(&dev, &times(&first), false);
        s.settle(&dev, &times(&again), true);
        let (third, acc) = s.accept(dev.clone(), Protocol::Teltonika, batch.clone(), now);
        // Forgotten by the failure, so written once more (idempotent in storage).
        let third = third.expect("the failed write's times were forgotten");
        s.settle(&dev, &times(&third), true);
        assert_eq!(acc.stored, 2);
        let (fourth, acc) = s.accept(dev, Protocol::Teltonika, batch, now);
        assert!(fourth.is_none(), "committed: a plain duplicate");
        assert_eq!(acc.stored, 2);
    }

    #[test]
    fn a_bad_first_fix_does_not_freeze_the_device_but_a_short_burst_of_jumps_is_dropped() {
        let mut s = shard();
        let now = Utc.with_ymd_and_hms(2026, 3, 1, 11, 0, 0).unwrap();
        let dev = DeviceId::new("1");
        // The first fix ever is 40 km off (cold start), the true track follows every 10 s.
        let mut batch = vec![fix(0, 55.36)];
        batch.extend((1..=8).map(|i| fix(i * 10, 55.0 + i as f64 * 0.001)));
        let (item, acc) = s.accept(dev.clone(), Protocol::Teltonika, batch, now);
        let item = item.unwrap();
        // Fixes at 10, 20, 30 are rejected; the one at 40 completes 3 agreeing fixes over
        // 30 s and re-anchors; the rest follow it.
        assert_eq!(acc.rejected, 3, "{acc:?}");
        let kept: Vec<f64> = item.positions.iter().map(|p| p.position.lat).collect();
        assert_eq!(kept.len(), 6, "{kept:?}");
        assert_eq!(item.state.position.as_ref().unwrap().lat, 55.008);
        // The odometer does not count the 40 km back from the bad fix.
        assert!(
            item.state.gps_odometer_m < 1000.0,
            "{}",
            item.state.gps_odometer_m
        );
        s.settle(&dev, &times(&item), true);

        // A reflection: three identical fixes 30 km off within 4 s are all dropped.
        let burst = vec![
            fix(92, 55.3),
            fix(94, 55.3),
            fix(96, 55.3),
            fix(100, 55.0092),
        ];
        let (item, acc) = s.accept(dev, Protocol::Teltonika, burst, now);
        assert_eq!(acc.rejected, 3, "{acc:?}");
        assert_eq!(item.unwrap().state.position.unwrap().lat, 55.0092);
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
