//! An in-memory [`ArchiveStore`] that behaves as the design says (docs: the archive section
//! of the README), for the actor's and the API's unit tests: a hot tier written first-stored-
//! wins, one chunk per device-day written by compaction, day partitions dropped whole, rows of
//! the other tables expired in batches, summaries upserted by (vehicle, day).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::store::{
    ArchiveStore, Compacted, DailySummary, Day, DeviceDay, Expiring, PartitionStats, Tier,
};
use crate::model::{DeviceId, VehicleId};
use crate::pipeline::store::{StorageError, StoredPosition};

#[derive(Default)]
struct Inner {
    partitions: BTreeSet<Day>,
    /// (device, day) → fix ms → position: the hot tier.
    hot: BTreeMap<DeviceDay, BTreeMap<i64, StoredPosition>>,
    /// One chunk per device-day, in fix-time order.
    packed: BTreeMap<DeviceDay, Vec<StoredPosition>>,
    rows: Vec<(Expiring, DateTime<Utc>)>,
    summaries: BTreeMap<(VehicleId, Day), DailySummary>,
    /// Every `expire_rows` call: (table, before, batch).
    expire_calls: Vec<(Expiring, DateTime<Utc>, u32)>,
}

#[derive(Default)]
pub struct MemoryArchive {
    inner: Mutex<Inner>,
}

fn dd(device: &DeviceId, t: DateTime<Utc>) -> DeviceDay {
    DeviceDay {
        device: device.clone(),
        day: Day::of(t),
    }
}

impl MemoryArchive {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("memory archive lock")
    }

    /// What the group commit does: one hot row, its day's partition made on demand; a fix time
    /// already stored (in either tier) is kept as first stored. True when stored.
    pub fn insert(&self, device: &DeviceId, p: StoredPosition) -> bool {
        let mut g = self.lock();
        let key = dd(device, p.time);
        g.partitions.insert(key.day);
        let ms = p.time.timestamp_millis();
        if g.packed
            .get(&key)
            .is_some_and(|c| c.iter().any(|q| q.time == p.time))
        {
            return false;
        }
        let hot = g.hot.entry(key).or_default();
        if hot.contains_key(&ms) {
            return false;
        }
        hot.insert(ms, p);
        true
    }

    /// A row of an expiring table, dated `t`.
    pub fn insert_row(&self, table: Expiring, t: DateTime<Utc>) {
        self.lock().rows.push((table, t));
    }

    pub fn rows(&self, table: Expiring) -> Vec<DateTime<Utc>> {
        let mut v: Vec<_> = self
            .lock()
            .rows
            .iter()
            .filter(|(k, _)| *k == table)
            .map(|(_, t)| *t)
            .collect();
        v.sort();
        v
    }

    pub fn expire_calls(&self) -> Vec<(Expiring, DateTime<Utc>, u32)> {
        self.lock().expire_calls.clone()
    }

    /// The device-days held in each tier.
    pub fn tiers(&self) -> (Vec<DeviceDay>, Vec<DeviceDay>) {
        let g = self.lock();
        (
            g.hot.keys().cloned().collect(),
            g.packed.keys().cloned().collect(),
        )
    }

    pub fn partitions(&self) -> Vec<Day> {
        self.lock().partitions.iter().copied().collect()
    }

    /// A device's positions with `from <= time < to`, both tiers merged.
    pub fn track(
        &self,
        device: &DeviceId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<StoredPosition> {
        let g = self.lock();
        let mut out: BTreeMap<i64, StoredPosition> = BTreeMap::new();
        for (_, chunk) in g.packed.iter().filter(|(k, _)| &k.device == device) {
            for p in chunk {
                out.entry(p.time.timestamp_millis())
                    .or_insert_with(|| p.clone());
            }
        }
        for (_, hot) in g.hot.iter().filter(|(k, _)| &k.device == device) {
            for (ms, p) in hot {
                out.entry(*ms).or_insert_with(|| p.clone());
            }
        }
        out.into_values()
            .filter(|p| p.time >= from && p.time < to)
            .collect()
    }
}

#[async_trait]
impl ArchiveStore for MemoryArchive {
    async fn ensure_partitions(&self, from: Day, to: Day) -> Result<(), StorageError> {
        let mut g = self.lock();
        for d in from.0..=to.0 {
            g.partitions.insert(Day(d));
        }
        Ok(())
    }

    async fn unpacked_days(&self, before: Day, limit: u32) -> Result<Vec<DeviceDay>, StorageError> {
        let g = self.lock();
        let mut days: Vec<DeviceDay> = g
            .hot
            .iter()
            .filter(|(k, rows)| k.day < before && !rows.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        days.sort_by(|a, b| (a.day, &a.device).cmp(&(b.day, &b.device)));
        days.truncate(limit as usize);
        Ok(days)
    }

    async fn compact_day(&self, key: &DeviceDay) -> Result<Compacted, StorageError> {
        let mut g = self.lock();
        let hot = g.hot.remove(key).unwrap_or_default();
        let chunk = g.packed.remove(key).unwrap_or_default();
        let mut merged: BTreeMap<i64, StoredPosition> = BTreeMap::new();
        for p in chunk {
            merged.entry(p.time.timestamp_millis()).or_insert(p);
        }
        let packed = hot.len() as u64;
        let mut duplicates = 0;
        for (ms, p) in hot {
            match merged.entry(ms) {
                std::collections::btree_map::Entry::Occupied(_) => duplicates += 1,
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(p);
                }
            }
        }
        let positions: Vec<StoredPosition> = merged.into_values().collect();
        if !positions.is_empty() {
            g.packed.insert(key.clone(), positions.clone());
        }
        Ok(Compacted {
            bytes: positions.len() as u64 * 16,
            positions,
            packed,
            duplicates,
        })
    }

    async fn expire_days(&self, before: Day) -> Result<Vec<Day>, StorageError> {
        let mut g = self.lock();
        let mut days: BTreeSet<Day> = g
            .partitions
            .iter()
            .copied()
            .filter(|d| *d < before)
            .collect();
        days.extend(
            g.hot
                .keys()
                .chain(g.packed.keys())
                .map(|k| k.day)
                .filter(|d| *d < before),
        );
        g.partitions.retain(|d| *d >= before);
        g.hot.retain(|k, _| k.day >= before);
        g.packed.retain(|k, _| k.day >= before);
        Ok(days.into_iter().collect())
    }

    async fn retained_from(&self) -> Result<Option<Day>, StorageError> {
        let g = self.lock();
        Ok(g.partitions
            .iter()
            .copied()
            .chain(g.hot.keys().chain(g.packed.keys()).map(|k| k.day))
            .min())
    }

    async fn partition_stats(&self) -> Result<Vec<PartitionStats>, StorageError> {
        let g = self.lock();
        let mut out = Vec::new();
        for day in &g.partitions {
            let hot: u64 = g
                .hot
                .iter()
                .filter(|(k, _)| k.day == *day)
                .map(|(_, v)| v.len() as u64)
                .sum();
            let packed: u64 = g
                .packed
                .iter()
                .filter(|(k, _)| k.day == *day)
                .map(|(_, v)| v.len() as u64)
                .sum();
            for (tier, n) in [(Tier::Hot, hot), (Tier::Packed, packed)] {
                out.push(PartitionStats {
                    day: *day,
                    tier,
                    table: format!("memory_{}_{}", tier.as_str(), day.0),
                    positions: n,
                    bytes: n * 16,
                });
            }
        }
        Ok(out)
    }

    async fn expire_rows(
        &self,
        table: Expiring,
        before: DateTime<Utc>,
        batch: u32,
    ) -> Result<u64, StorageError> {
        let mut g = self.lock();
        g.expire_calls.push((table, before, batch));
        let mut left = batch as u64;
        let mut gone = 0;
        g.rows.retain(|(k, t)| {
            if left > 0 && *k == table && *t < before {
                left -= 1;
                gone += 1;
                false
            } else {
                true
            }
        });
        Ok(gone)
    }

    async fn put_summaries(&self, rows: &[DailySummary]) -> Result<(), StorageError> {
        let mut g = self.lock();
        for r in rows {
            g.summaries.insert((r.vehicle.clone(), r.day), r.clone());
        }
        Ok(())
    }

    async fn summaries(
        &self,
        vehicle: &VehicleId,
        from: Day,
        to: Day,
    ) -> Result<Vec<DailySummary>, StorageError> {
        let g = self.lock();
        Ok(g.summaries
            .range((vehicle.clone(), from)..=(vehicle.clone(), to))
            .map(|(_, s)| s.clone())
            .collect())
    }
}
