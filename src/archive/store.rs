//! The archive's storage port. Positions live in day partitions (UTC days, see [`Day`]): a hot
//! tier of what the group commit wrote — one small chunk per packet and day (`storage::chunk`;
//! versions before that wrote one row per position, still read until compacted) — and a packed
//! tier of one chunk per device and day, written by compaction. Both tiers of a day are dropped
//! together when the day expires. Implemented by `crate::storage` for SQLite and PostgreSQL.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use crate::model::{DeviceId, VehicleId};
use crate::pipeline::store::{StorageError, StoredPosition};

/// A UTC calendar day as days since 1970-01-01: the partition key. UTC midnight is 03:00 in
/// Moscow, the quiet end of a taxi night, so a day's summary is one working day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub i32);

impl Day {
    pub const MS: i64 = 86_400_000;

    pub fn of(t: DateTime<Utc>) -> Day {
        Day::of_ms(t.timestamp_millis())
    }

    pub fn of_ms(ms: i64) -> Day {
        Day(ms.div_euclid(Day::MS) as i32)
    }

    /// First millisecond of the day.
    pub fn start_ms(self) -> i64 {
        self.0 as i64 * Day::MS
    }

    /// First millisecond of the next day.
    pub fn end_ms(self) -> i64 {
        self.start_ms() + Day::MS
    }

    pub fn date(self) -> NaiveDate {
        NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch") + chrono::Days::new(self.0 as u64)
    }

    pub fn from_date(d: NaiveDate) -> Day {
        Day((d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32)
    }
}

/// One device's positions of one day.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceDay {
    pub device: DeviceId,
    pub day: Day,
}

/// Where a partition's positions are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// As the group commit wrote them, not compacted yet: one small chunk per packet and day
    /// (or one row per position, from versions before that).
    Hot,
    /// Packed chunks.
    Packed,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Hot => "hot",
            Tier::Packed => "packed",
        }
    }
}

/// One partition as `fleetgate storage stats` prints it.
#[derive(Clone, Debug, PartialEq)]
pub struct PartitionStats {
    pub day: Day,
    pub tier: Tier,
    /// The table (PostgreSQL partition or SQLite table) holding it.
    pub table: String,
    pub positions: u64,
    pub bytes: u64,
}

/// The outcome of packing one device-day.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Compacted {
    /// Every position of the device-day after the merge, in fix-time order, one per fix time.
    pub positions: Vec<StoredPosition>,
    /// Positions moved into the chunk from the hot tier (hot rows and the group commit's
    /// chunks), copies of one fix time included.
    pub packed: u64,
    /// Copies of a fix time stored before dropped (each fix time kept once: the first stored).
    pub duplicates: u64,
    /// Size of the chunk written.
    pub bytes: u64,
}

/// Tables whose rows expire by age, row by row in small batches (they are small beside
/// positions): `[retention] events_days`, `commands_days`, `audit_days`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiring {
    ZoneEvents,
    Commands,
    Audit,
}

/// One vehicle's day, kept forever (mileage history outlives positions).
#[derive(Clone, Debug, PartialEq)]
pub struct DailySummary {
    pub vehicle: VehicleId,
    pub device: DeviceId,
    pub day: Day,
    pub positions: u64,
    pub distance_m: f64,
    /// Ignition on, seconds.
    pub engine_s: i64,
    pub moving_s: i64,
    /// Debounced outside the service area, seconds.
    pub outside_s: i64,
    pub max_speed_kmh: f64,
    pub first_fix: DateTime<Utc>,
    pub last_fix: DateTime<Utc>,
    /// Device odometer at the first and last fix, when it reports one.
    pub odometer_first_m: Option<f64>,
    pub odometer_last_m: Option<f64>,
    pub computed_at: DateTime<Utc>,
}

#[async_trait]
pub trait ArchiveStore: Send + Sync {
    /// Make sure the partitions of `from..=to` exist (the group commit also creates a late
    /// day's partition on demand).
    async fn ensure_partitions(&self, from: Day, to: Day) -> Result<(), StorageError>;
    /// Device-days with anything hot (rows, or chunks of the group commit) on days before
    /// `before`, oldest first, at most `limit`.
    async fn unpacked_days(&self, before: Day, limit: u32) -> Result<Vec<DeviceDay>, StorageError>;
    /// Pack one device-day in one transaction: its hot rows and every chunk it has are merged
    /// (one position per fix time, the first stored) into one chunk, and what was merged is
    /// removed. Idempotent; a device-day with nothing hot returns its positions unchanged.
    async fn compact_day(&self, dd: &DeviceDay) -> Result<Compacted, StorageError>;
    /// Drop every partition (both tiers) of days before `before`; returns the days dropped.
    async fn expire_days(&self, before: Day) -> Result<Vec<Day>, StorageError>;
    /// The oldest day that still has a partition (positions before it have expired).
    async fn retained_from(&self) -> Result<Option<Day>, StorageError>;
    async fn partition_stats(&self) -> Result<Vec<PartitionStats>, StorageError>;
    /// Delete up to `batch` rows of `table` older than `before`; returns how many went.
    async fn expire_rows(
        &self,
        table: Expiring,
        before: DateTime<Utc>,
        batch: u32,
    ) -> Result<u64, StorageError>;
    async fn put_summaries(&self, rows: &[DailySummary]) -> Result<(), StorageError>;
    /// Summaries of a vehicle with `from <= day <= to`, oldest first.
    async fn summaries(
        &self,
        vehicle: &VehicleId,
        from: Day,
        to: Day,
    ) -> Result<Vec<DailySummary>, StorageError>;
}

/// Told of each device-day packed outside the archive actor (`fleetgate migrate`,
/// `fleetgate storage compact`, the daemon's start-up conversion of an old layout), so that its
/// daily summary is computed there too: a day packed that way is never seen hot again by the
/// actor, and its summary would otherwise be missing for good once its positions expire.
#[async_trait]
pub trait OnPacked: Send + Sync {
    async fn packed(&self, dd: &DeviceDay, c: &Compacted, now: DateTime<Utc>);
}

/// For callers with nothing to do after packing (tests of the storage alone).
pub struct NothingOnPacked;

#[async_trait]
impl OnPacked for NothingOnPacked {
    async fn packed(&self, _: &DeviceDay, _: &Compacted, _: DateTime<Utc>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn days_are_utc_days() {
        let t = Utc.with_ymd_and_hms(2026, 12, 7, 23, 59, 59).unwrap();
        let d = Day::of(t);
        assert_eq!(d.date(), NaiveDate::from_ymd_opt(2026, 12, 7).unwrap());
        assert_eq!(Day::of_ms(d.end_ms()), Day(d.0 + 1));
        assert_eq!(Day::of_ms(d.start_ms() - 1), Day(d.0 - 1));
        assert_eq!(Day::from_date(d.date()), d);
        assert_eq!(Day::of_ms(-1), Day(-1));
    }
}
