//! What both backends' archive (`crate::archive::store::ArchiveStore`) share: day table names,
//! the merge of the two tiers (first stored wins), the daily-summary and row-expiry statements,
//! and the conversion of a database made before the archive ([`Layout`], [`migrate`]).
//!
//! Priority when one fix time is stored twice, which is the order of storage (first stored
//! wins): a compacted chunk ([`KIND_PACKED`]: packed first, or packed from what was stored
//! first) over a legacy row over a hot row (rows were written only by versions before the
//! group commit wrote chunks, each after the chunk of its day) over the group commit's small
//! chunks ([`KIND_COMMIT`]) in the order they were inserted (SQLite rowid, PostgreSQL `id`).

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use std::sync::Arc;

use sqlx::query::Query;

use super::sql::{Bind, Cols};
use super::{from_millis, millis, StorageError};
pub use crate::archive::store::DeviceDay;
use crate::archive::store::{DailySummary, Day, Expiring, PartitionStats, Tier};
use crate::model::{DeviceId, VehicleId};
use crate::pipeline::store::{StoredPosition, TrackColumns, TrackPoint};

/// Hot rows' table (PostgreSQL: its day partitions are `positions_dYYYYMMDD`).
pub(crate) const HOT: &str = "positions";
/// Packed chunks' table (PostgreSQL: partitioned; SQLite: one table per day).
pub(crate) const CHUNKS: &str = "position_chunks";
/// The chunk format byte, also stored in its own column (a later format can be found and
/// re-packed by SQL).
pub(crate) const CHUNK_FORMAT: i64 = super::chunk::FORMAT as i64;

/// `kind` of a chunk made by compaction (or before the group commit wrote chunks): it holds
/// everything stored for its device-day before it, so it comes first.
pub(crate) const KIND_PACKED: i64 = 0;
/// `kind` of a chunk written by the group commit: one packet's positions of one day, ordered
/// among its kind by insertion.
pub(crate) const KIND_COMMIT: i64 = 1;

/// One packet's positions of each UTC day they fall on, packed at the hot-path zstd level
/// (`chunk::HOT_LEVEL`); a fix time given twice in the packet keeps its first copy, as a
/// row insert that ignores a stored key did.
pub(crate) fn pack(item: &crate::pipeline::store::WriteItem) -> Vec<crate::storage::Packed> {
    // Attributes go to the codec as values, made once from the model's (not as JSON text
    // made and parsed again).
    let mut fixes: Vec<Packing> = item
        .positions
        .iter()
        .map(|np| Packing {
            p: StoredPosition::without_attributes(
                &np.position,
                item.server_time,
                np.gps_odometer_m,
            ),
            attributes: np.position.attrs.to_json(),
        })
        .collect();
    sort_dedup(&mut fixes);
    let (points, attributes): (Vec<StoredPosition>, Vec<serde_json::Value>) =
        fixes.into_iter().map(|f| (f.p, f.attributes)).unzip();
    let mut out = Vec::with_capacity(1);
    let mut at = 0;
    while let Some(first) = points.get(at) {
        let day = Day::of(first.time);
        let end = at + points[at..].partition_point(|p| Day::of(p.time) == day);
        let this = &points[at..end];
        out.push(crate::storage::Packed {
            first_ms: millis(first.time),
            last_ms: this.last().map_or(millis(first.time), |p| millis(p.time)),
            n: this.len() as u32,
            data: super::chunk::encode_with(this, &attributes[at..end], super::chunk::HOT_LEVEL),
        });
        at = end;
    }
    out
}

/// A position on its way into a small chunk, with its attributes as a value.
struct Packing {
    p: StoredPosition,
    attributes: serde_json::Value,
}

impl Fix for Packing {
    fn fix_ms(&self) -> i64 {
        millis(self.p.time)
    }
}

/// `item.packed`, or packed here when the caller did not (tests, tools).
pub(crate) fn packed_of(
    item: &crate::pipeline::store::WriteItem,
) -> std::borrow::Cow<'_, [crate::storage::Packed]> {
    if item.packed.is_empty() && !item.positions.is_empty() {
        std::borrow::Cow::Owned(pack(item))
    } else {
        std::borrow::Cow::Borrowed(&item.packed)
    }
}

/// Days representable as `YYYYMMDD` table names (0001-01-01 ..= 9999-12-31).
const FIRST_DAY: i32 = -719_162;
const LAST_DAY: i32 = 2_932_896;

/// `day` clamped to the days a table can be named after.
pub(crate) fn clamp(day: Day) -> Day {
    Day(day.0.clamp(FIRST_DAY, LAST_DAY))
}

fn date(day: Day) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(clamp(day).0 + 719_163).unwrap_or(NaiveDate::MIN)
}

/// `positions_d20261207`, `position_chunks_d20261207`.
pub(crate) fn table(prefix: &str, day: Day) -> String {
    format!("{prefix}_d{}", date(day).format("%Y%m%d"))
}

/// The day a table made by [`table`] with `prefix` is for.
pub(crate) fn day_of_table(prefix: &str, name: &str) -> Option<Day> {
    let rest = name.strip_prefix(prefix)?.strip_prefix("_d")?;
    if rest.len() != 8 {
        return None;
    }
    NaiveDate::parse_from_str(rest, "%Y%m%d")
        .ok()
        .map(Day::from_date)
}

/// The days `[from, to)` touches.
pub(crate) fn days_of(from: DateTime<Utc>, to: DateTime<Utc>) -> (Day, Day) {
    let last = Day::of_ms(millis(to).saturating_sub(1).max(millis(from)));
    (clamp(Day::of(from)), clamp(last))
}

/// Something stored at a fix time.
pub(crate) trait Fix {
    fn fix_ms(&self) -> i64;
}

impl Fix for StoredPosition {
    fn fix_ms(&self) -> i64 {
        millis(self.time)
    }
}

impl Fix for TrackPoint {
    fn fix_ms(&self) -> i64 {
        millis(self.time)
    }
}

/// Sort by fix time (stable: of equal fix times the earlier in `v` stays first) and drop the
/// later copies of a fix time; returns how many went.
pub(crate) fn sort_dedup<T: Fix>(v: &mut Vec<T>) -> u64 {
    if !v.windows(2).all(|w| w[0].fix_ms() <= w[1].fix_ms()) {
        v.sort_by_key(Fix::fix_ms);
    }
    let before = v.len();
    v.dedup_by(|later, earlier| later.fix_ms() == earlier.fix_ms());
    (before - v.len()) as u64
}

/// Merge two fix-time-ordered lists without duplicates within each; on a fix time in both,
/// `first`'s copy stays. Returns the merge and how many of `second` were duplicates.
pub(crate) fn merge<T: Fix>(first: Vec<T>, second: Vec<T>) -> (Vec<T>, u64) {
    if second.is_empty() {
        return (first, 0);
    }
    if first.is_empty() {
        return (second, 0);
    }
    let mut out = Vec::with_capacity(first.len() + second.len());
    let mut dups = 0;
    let mut b = second.into_iter().peekable();
    for x in first {
        while let Some(y) = b.next_if(|y| y.fix_ms() < x.fix_ms()) {
            out.push(y);
        }
        if b.next_if(|y| y.fix_ms() == x.fix_ms()).is_some() {
            dups += 1;
        }
        out.push(x);
    }
    out.extend(b);
    (out, dups)
}

/// A device's positions in the order of storage, put together one per fix time (the first
/// stored): `packed` (compacted chunks decoded in their order) over `rows` (hot and legacy
/// rows, fix-time ordered, duplicates already dropped) over `fresh` (the group commit's chunks
/// decoded in insertion order). Returns the merge and how many copies went.
pub(crate) fn merge_tiers<T: Fix>(
    mut packed: Vec<T>,
    rows: Vec<T>,
    mut fresh: Vec<T>,
) -> (Vec<T>, u64) {
    let mut dups = sort_dedup(&mut packed);
    let (v, d) = merge(packed, rows);
    dups += d + sort_dedup(&mut fresh);
    let (v, d) = merge(v, fresh);
    (v, dups + d)
}

/// A track read's tiers put together as [`merge_tiers`] does, kept to `[from, to)`, at most
/// `limit`.
pub(crate) fn track_of<T: Fix>(
    mut packed: Vec<T>,
    rows: Vec<T>,
    mut fresh: Vec<T>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: u32,
) -> Vec<T> {
    let (lo, hi) = (millis(from), millis(to));
    packed.retain(|p| (lo..hi).contains(&p.fix_ms()));
    fresh.retain(|p| (lo..hi).contains(&p.fix_ms()));
    let (mut v, _) = merge_tiers(packed, rows, fresh);
    v.truncate(limit as usize);
    v
}

/// A track's chunks decoded with `decode`, split by kind: the compacted ones ([`KIND_PACKED`])
/// and the group commit's, each kind in one vector sized once (a car-month is 259,200
/// positions of ~200 bytes: growing a vector chunk by chunk copied them again and again).
pub(crate) fn decode_kinds<T>(
    chunks: &[(DeviceDay, i64, Vec<u8>)],
    decode: impl Fn(&[u8], &DeviceDay) -> Result<Vec<T>, StorageError>,
) -> Result<(Vec<T>, Vec<T>), StorageError> {
    let mut parts = Vec::with_capacity(chunks.len());
    for (dd, kind, data) in chunks {
        parts.push((*kind == KIND_PACKED, decode(data, dd)?));
    }
    let size = |packed: bool| -> usize {
        parts
            .iter()
            .filter(|(k, _)| *k == packed)
            .map(|(_, v)| v.len())
            .sum()
    };
    let mut out = (
        Vec::with_capacity(size(true)),
        Vec::with_capacity(size(false)),
    );
    for (packed, part) in parts {
        if packed { &mut out.0 } else { &mut out.1 }.extend(part);
    }
    Ok(out)
}

/// Decoded chunks, mapping the codec's error into the store's.
pub(crate) fn decode(
    data: &[u8],
    what: &DeviceDay,
    cols: TrackColumns,
) -> Result<Vec<StoredPosition>, StorageError> {
    super::chunk::decode_columns(data, cols).map_err(|e| corrupt(what, &e))
}

pub(crate) fn decode_points(
    data: &[u8],
    what: &DeviceDay,
) -> Result<Vec<TrackPoint>, StorageError> {
    super::chunk::decode_points(data).map_err(|e| corrupt(what, &e))
}

fn corrupt(what: &DeviceDay, e: &dyn std::error::Error) -> StorageError {
    metrics::counter!("fleetgate_storage_chunk_errors_total").increment(1);
    StorageError::Invalid(format!(
        "position chunk of device {} on {}: {e}",
        what.device.as_str(),
        date(what.day)
    ))
}

/// The oldest day of a list of partitions, or the stored watermark when that is later.
pub(crate) fn retained_from(watermark: Option<i64>, oldest_present: Option<Day>) -> Option<Day> {
    match (watermark.map(|w| Day(w as i32)), oldest_present) {
        (Some(w), Some(o)) => Some(w.max(o)),
        (w, o) => w.or(o),
    }
}

/// Upsert one daily summary: `$1` vehicle … `$14` computed_at ([`bind_summary`]).
pub(crate) const UPSERT_SUMMARY: &str = "INSERT INTO daily_summaries (vehicle_id, day, device_id, \
     positions, distance_m, engine_s, moving_s, outside_s, max_speed_kmh, first_fix, last_fix, \
     odometer_first_m, odometer_last_m, computed_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
     ON CONFLICT (vehicle_id, day) DO UPDATE SET device_id = excluded.device_id, \
     positions = excluded.positions, distance_m = excluded.distance_m, \
     engine_s = excluded.engine_s, moving_s = excluded.moving_s, outside_s = excluded.outside_s, \
     max_speed_kmh = excluded.max_speed_kmh, first_fix = excluded.first_fix, \
     last_fix = excluded.last_fix, odometer_first_m = excluded.odometer_first_m, \
     odometer_last_m = excluded.odometer_last_m, computed_at = excluded.computed_at";

/// A vehicle's summaries with `$2 <= day <= $3`, oldest first.
pub(crate) const SUMMARIES: &str = "SELECT vehicle_id, day, device_id, positions, distance_m, \
     engine_s, moving_s, outside_s, max_speed_kmh, first_fix, last_fix, odometer_first_m, \
     odometer_last_m, computed_at FROM daily_summaries WHERE vehicle_id = $1 AND day >= $2 \
     AND day <= $3 ORDER BY day";

pub(crate) fn bind_summary<'q, Q: Bind<'q>>(q: Q, s: &'q DailySummary) -> Q {
    q.text(&s.vehicle.0)
        .int(i64::from(s.day.0))
        .text(s.device.as_str())
        .int(s.positions as i64)
        .real(s.distance_m)
        .int(s.engine_s)
        .int(s.moving_s)
        .int(s.outside_s)
        .real(s.max_speed_kmh)
        .int(millis(s.first_fix))
        .int(millis(s.last_fix))
        .opt_real(s.odometer_first_m)
        .opt_real(s.odometer_last_m)
        .int(millis(s.computed_at))
}

/// [`ArchiveStore::expire_rows`](crate::archive::store::ArchiveStore::expire_rows) on either
/// backend's writer pool.
pub(crate) async fn expire_rows_in<DB>(
    pool: &sqlx::Pool<DB>,
    t: Expiring,
    before: DateTime<Utc>,
    batch: u32,
) -> Result<u64, StorageError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>: Bind<'q>,
    DB::QueryResult: RowsAffected,
{
    let mut conn = pool.acquire().await?;
    let r = sqlx::query::<DB>(expire_rows(t))
        .int(millis(before))
        .int(i64::from(batch))
        .execute(&mut *conn)
        .await?;
    Ok(r.rows())
}

/// Store daily summaries in one transaction, on either backend's writer pool.
pub(crate) async fn put_summaries_in<DB>(
    pool: &sqlx::Pool<DB>,
    rows: &[DailySummary],
) -> Result<(), StorageError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>: Bind<'q>,
{
    let mut tx = pool.begin().await?;
    for s in rows {
        bind_summary(sqlx::query::<DB>(UPSERT_SUMMARY), s)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A vehicle's summaries with `from <= day <= to`, oldest first, on either backend.
pub(crate) async fn summaries_in<DB>(
    pool: &sqlx::Pool<DB>,
    vehicle: &VehicleId,
    from: Day,
    to: Day,
) -> Result<Vec<DailySummary>, StorageError>
where
    DB: sqlx::Database,
    DB::Row: Cols,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>: Bind<'q>,
{
    let mut conn = pool.acquire().await?;
    let rows = sqlx::query::<DB>(SUMMARIES)
        .text(&vehicle.0)
        .int(i64::from(from.0))
        .int(i64::from(to.0))
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.iter().map(summary).collect::<Result<_, _>>()?)
}

/// Rows a statement changed, on either backend.
pub(crate) trait RowsAffected {
    fn rows(&self) -> u64;
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

pub(crate) fn summary(r: &impl Cols) -> Result<DailySummary, sqlx::Error> {
    Ok(DailySummary {
        vehicle: VehicleId(r.text("vehicle_id")?),
        device: DeviceId(r.text("device_id")?),
        day: Day(r.int("day")? as i32),
        positions: r.int("positions")?.max(0) as u64,
        distance_m: r.real("distance_m")?,
        engine_s: r.int("engine_s")?,
        moving_s: r.int("moving_s")?,
        outside_s: r.int("outside_s")?,
        max_speed_kmh: r.real("max_speed_kmh")?,
        first_fix: r.time("first_fix")?,
        last_fix: r.time("last_fix")?,
        odometer_first_m: r.opt_real("odometer_first_m")?,
        odometer_last_m: r.opt_real("odometer_last_m")?,
        computed_at: from_millis(r.int("computed_at")?),
    })
}

/// Delete up to `$2` rows older than `$1` (Unix ms) from `t`'s table, oldest first. A command
/// goes only once it also expired (`expires_at`): a queued one is never cut short.
pub(crate) fn expire_rows(t: Expiring) -> &'static str {
    match t {
        Expiring::ZoneEvents => {
            "DELETE FROM zone_events WHERE id IN \
             (SELECT id FROM zone_events WHERE time < $1 ORDER BY time LIMIT $2)"
        }
        Expiring::Commands => {
            "DELETE FROM immobiliser_commands WHERE id IN (SELECT id FROM immobiliser_commands \
             WHERE created_at < $1 AND expires_at < $1 ORDER BY created_at LIMIT $2)"
        }
        Expiring::Audit => {
            "DELETE FROM audit_log WHERE id IN \
             (SELECT id FROM audit_log WHERE time < $1 ORDER BY time LIMIT $2)"
        }
    }
}

/// A chunk table's stats from `(kind, positions, chunk bytes)` per kind: the group commit's
/// chunks as the hot tier (not compacted yet: a fix time re-sent in a later packet counts in
/// each chunk it is in until compaction keeps one), the compacted ones as packed (always
/// listed, so an empty table still shows). `bytes` (the table's) is shared out by chunk bytes.
pub(crate) fn kind_stats(
    day: Day,
    table: &str,
    kinds: &[(i64, i64, i64)],
    bytes: u64,
) -> Vec<PartitionStats> {
    let total: i64 = kinds.iter().map(|k| k.2.max(0)).sum();
    let share = |b: i64| -> u64 {
        if total <= 0 {
            0
        } else {
            (bytes as f64 * b.max(0) as f64 / total as f64).round() as u64
        }
    };
    let of = |kind: i64| kinds.iter().find(|k| k.0 == kind);
    let mut out = Vec::with_capacity(2);
    if let Some(k) = of(KIND_COMMIT) {
        out.push(PartitionStats {
            day,
            tier: Tier::Hot,
            table: table.into(),
            positions: k.1.max(0) as u64,
            bytes: share(k.2),
        });
    }
    let packed = of(KIND_PACKED);
    out.push(PartitionStats {
        day,
        tier: Tier::Packed,
        table: table.into(),
        positions: packed.map_or(0, |k| k.1.max(0) as u64),
        bytes: match packed {
            Some(k) => share(k.2),
            None if total <= 0 => bytes,
            None => 0,
        },
    });
    out
}

/// Set `fleetgate_storage_positions` and `fleetgate_storage_bytes{tier}` from a stats read.
pub fn publish(stats: &[PartitionStats]) {
    let (mut positions, mut hot, mut packed) = (0u64, 0u64, 0u64);
    for s in stats {
        positions += s.positions;
        match s.tier {
            Tier::Hot => hot += s.bytes,
            Tier::Packed => packed += s.bytes,
        }
    }
    metrics::gauge!("fleetgate_storage_positions").set(positions as f64);
    metrics::gauge!("fleetgate_storage_bytes", "tier" => Tier::Hot.as_str()).set(hot as f64);
    metrics::gauge!("fleetgate_storage_bytes", "tier" => Tier::Packed.as_str()).set(packed as f64);
}

/// A database made before the archive (issue #17): SQLite's closed days still as rows,
/// PostgreSQL's unpartitioned `positions_legacy`. Implemented by both backends; driven by
/// [`migrate`].
#[async_trait]
pub trait Layout: Send + Sync {
    /// Whether anything is left in the old layout.
    async fn old_layout(&self) -> Result<bool, StorageError>;
    /// Device-days still in the old layout, oldest first, at most `limit` (empty: done).
    async fn old_days(&self, limit: u32) -> Result<Vec<DeviceDay>, StorageError>;
    /// Forget the old layout once [`Layout::old_days`] is empty (PostgreSQL drops
    /// `positions_legacy`).
    async fn finish_migration(&self) -> Result<(), StorageError>;
}

/// How far a migration got.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    pub device_days: u64,
    pub positions: u64,
    pub bytes: u64,
}

/// Convert the old layout into the archive's, one device-day per transaction (each either
/// happened or not: a kill loses nothing and the next run carries on), calling `progress`
/// after each. Returns the totals; `Ok` with nothing done when there was nothing to do.
pub async fn migrate(
    archive: &dyn crate::archive::store::ArchiveStore,
    layout: &dyn Layout,
    on_packed: &dyn crate::archive::store::OnPacked,
    mut progress: impl FnMut(&DeviceDay, &Progress),
) -> Result<Progress, StorageError> {
    let mut done = Progress::default();
    if !layout.old_layout().await? {
        return Ok(done);
    }
    loop {
        let days = layout.old_days(256).await?;
        if days.is_empty() {
            break;
        }
        for dd in &days {
            let c = archive.compact_day(dd).await?;
            on_packed.packed(dd, &c, Utc::now()).await;
            done.device_days += 1;
            done.positions += c.positions.len() as u64;
            done.bytes += c.bytes;
            progress(dd, &done);
        }
    }
    layout.finish_migration().await?;
    Ok(done)
}

/// Start-up upkeep the daemon runs beside ingest: the conversion of an old layout when it
/// finds one (with a log line saying so); every `every` the coming days' partitions made
/// sure of and the `fleetgate_storage_*` gauges refreshed.
pub fn spawn_upkeep(
    stores: &super::Stores,
    every: std::time::Duration,
    on_packed: Arc<dyn crate::archive::store::OnPacked>,
) {
    let (archive, layout) = (stores.archive.clone(), stores.layout.clone());
    tokio::spawn(async move {
        match layout.old_layout().await {
            Ok(true) => {
                tracing::warn!(
                    "storage: found positions in the layout of an older fleetgate; converting \
                     them to the archive layout in the background (fleetgate migrate does the \
                     same with progress)"
                );
                let mut last = std::time::Instant::now();
                let r = migrate(
                    archive.as_ref(),
                    layout.as_ref(),
                    on_packed.as_ref(),
                    |dd, p| {
                        if last.elapsed() >= std::time::Duration::from_secs(10) {
                            last = std::time::Instant::now();
                            tracing::info!(device_days = p.device_days, positions = p.positions,
                            day = %date(dd.day), "storage: converting the old layout");
                        }
                    },
                )
                .await;
                match r {
                    Ok(p) => tracing::info!(
                        device_days = p.device_days,
                        positions = p.positions,
                        bytes = p.bytes,
                        "storage: old layout converted"
                    ),
                    Err(e) => tracing::error!(error = %e,
                        "storage: converting the old layout failed; it resumes at the next start \
                         or with fleetgate migrate"),
                }
            }
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "storage: cannot check for an old layout"),
        }
        loop {
            // Today's and the next two days' partitions exist before their first commit
            // (PostgreSQL; the group commit would create a missing one itself).
            let today = Day::of(Utc::now());
            if let Err(e) = archive.ensure_partitions(today, Day(today.0 + 2)).await {
                tracing::warn!(error = %e, "storage: creating the coming days' partitions");
            }
            match archive.partition_stats().await {
                Ok(s) => publish(&s),
                Err(e) => tracing::warn!(error = %e, "storage: partition stats"),
            }
            tokio::time::sleep(every).await;
        }
    });
}

/// Pack every device-day with hot rows, today's included (`fleetgate storage compact`), after
/// converting an old layout. One transaction per device-day, so it runs safely beside a live
/// daemon; rows that arrive meanwhile wait for the next compaction.
pub async fn compact_all(
    stores: &super::Stores,
    on_packed: &dyn crate::archive::store::OnPacked,
    mut progress: impl FnMut(&DeviceDay, &Progress),
) -> Result<Progress, StorageError> {
    let mut done = migrate(
        stores.archive.as_ref(),
        stores.layout.as_ref(),
        on_packed,
        &mut progress,
    )
    .await?;
    let days = stores
        .archive
        .unpacked_days(Day(LAST_DAY), u32::MAX)
        .await?;
    for dd in &days {
        let c = stores.archive.compact_day(dd).await?;
        on_packed.packed(dd, &c, Utc::now()).await;
        done.device_days += 1;
        done.positions += c.positions.len() as u64;
        done.bytes += c.bytes;
        progress(dd, &done);
    }
    Ok(done)
}

/// A progress line for stderr.
pub fn progress_line(what: &str, dd: &DeviceDay, p: &Progress) -> String {
    format!(
        "{what}: {} device-days, {} positions, {} bytes packed (last: {} on {})",
        p.device_days,
        p.positions,
        p.bytes,
        dd.device.as_str(),
        date(dd.day)
    )
}

/// The archive's tables reported per day, as `fleetgate storage stats` prints them.
pub fn stats_table(stats: &[PartitionStats]) -> String {
    let mut out = format!(
        "{:<10}  {:<6}  {:<28}  {:>12}  {:>14}  {:>9}\n",
        "day", "tier", "table", "positions", "bytes", "bytes/pos"
    );
    let (mut n, mut b) = (0u64, 0u64);
    for s in stats {
        n += s.positions;
        b += s.bytes;
        out.push_str(&format!(
            "{:<10}  {:<6}  {:<28}  {:>12}  {:>14}  {:>9}\n",
            date(s.day),
            s.tier.as_str(),
            s.table,
            s.positions,
            s.bytes,
            per(s.bytes, s.positions)
        ));
    }
    out.push_str(&format!(
        "{:<10}  {:<6}  {:<28}  {:>12}  {:>14}  {:>9}\n",
        "total",
        "",
        "",
        n,
        b,
        per(b, n)
    ));
    out
}

fn per(bytes: u64, positions: u64) -> String {
    if positions == 0 {
        "-".into()
    } else {
        format!("{:.1}", bytes as f64 / positions as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct P(i64, &'static str);
    impl Fix for P {
        fn fix_ms(&self) -> i64 {
            self.0
        }
    }

    #[test]
    fn a_fix_time_in_both_lists_keeps_the_first_lists_copy() {
        let (v, dups) = merge(
            vec![P(1, "a"), P(3, "a"), P(5, "a")],
            vec![P(0, "b"), P(3, "b"), P(4, "b"), P(6, "b")],
        );
        assert_eq!(
            v,
            vec![
                P(0, "b"),
                P(1, "a"),
                P(3, "a"),
                P(4, "b"),
                P(5, "a"),
                P(6, "b")
            ]
        );
        assert_eq!(dups, 1);
    }

    #[test]
    fn a_track_is_cut_to_its_range_and_limited_after_the_merge() {
        let t = |ms| from_millis(ms);
        let v = track_of(
            vec![P(9, "a"), P(2, "a"), P(5, "a"), P(2, "x")],
            // Rows come from a range query: already inside [from, to).
            vec![P(5, "b"), P(7, "b"), P(8, "b")],
            vec![P(7, "c"), P(1, "c")],
            t(2),
            t(9),
            3,
        );
        assert_eq!(v, vec![P(2, "a"), P(5, "a"), P(7, "b")]);
    }

    /// What reading a car-day costs before and after compaction: 8,640 fixes as 346 chunks of
    /// 25 (the group commit's) against one (compaction's), decoded and merged as a track read
    /// does. `cargo test --release --lib storage::archive::tests::a_day_of_small_chunks_reads
    /// -- --ignored --nocapture`; figures in docs/archive.md.
    #[test]
    #[ignore = "timing: run in release with --nocapture"]
    fn a_day_of_small_chunks_reads() {
        use crate::model::{AttrKey, AttrValue, Position};
        let t0 = from_millis(1_796_000_000_000);
        let day: Vec<StoredPosition> = (0..8_640i64)
            .map(|i| {
                let mut p = Position::new(
                    t0 + chrono::Duration::seconds(i * 10),
                    true,
                    55.75 + i as f64 * 1e-5,
                    37.6,
                );
                p.speed_kmh = (i % 60) as f64;
                for (id, v) in [(21, 4), (69, 1), (181, 9), (182, 7), (24, 42), (16, i)] {
                    p.attrs.push(AttrKey::Io(id), AttrValue::Int(v));
                }
                StoredPosition::from_position(&p, t0, i as f64)
            })
            .collect();
        let small: Vec<Vec<u8>> = day
            .chunks(25)
            .map(|c| crate::storage::chunk::encode_at(c, crate::storage::chunk::HOT_LEVEL))
            .collect();
        let whole = crate::storage::chunk::encode(&day);
        for (what, chunks) in [("346 small chunks", small), ("one chunk", vec![whole])] {
            let t = std::time::Instant::now();
            for _ in 0..5 {
                let mut fresh = Vec::new();
                for c in &chunks {
                    fresh.extend(crate::storage::chunk::decode(c).unwrap());
                }
                let (v, _) = merge_tiers(Vec::new(), Vec::new(), fresh);
                assert_eq!(v.len(), 8_640);
            }
            let full = t.elapsed() / 5;
            let t = std::time::Instant::now();
            for _ in 0..5 {
                let mut fresh = Vec::new();
                for c in &chunks {
                    fresh.extend(crate::storage::chunk::decode_points(c).unwrap());
                }
                let (v, _) = merge_tiers(Vec::new(), Vec::new(), fresh);
                assert_eq!(v.len(), 8_640);
            }
            let points = t.elapsed() / 5;
            eprintln!("{what}: track {full:?}, track_points {points:?}");
        }
    }

    #[test]
    fn table_names_are_dates_and_read_back() {
        let d = Day::from_date(NaiveDate::from_ymd_opt(2026, 12, 7).unwrap());
        assert_eq!(table(CHUNKS, d), "position_chunks_d20261207");
        assert_eq!(day_of_table(CHUNKS, "position_chunks_d20261207"), Some(d));
        assert_eq!(day_of_table(HOT, "position_chunks_d20261207"), None);
        assert_eq!(day_of_table(HOT, "positions_legacy"), None);
        assert_eq!(table(HOT, Day(i32::MIN)), "positions_d00010101");
    }

    #[test]
    fn a_range_ending_at_midnight_does_not_touch_the_next_day() {
        let d = Day(20_000);
        assert_eq!(
            days_of(from_millis(d.start_ms()), from_millis(d.end_ms())),
            (d, d)
        );
        assert_eq!(
            days_of(from_millis(d.start_ms()), from_millis(d.end_ms() + 1)),
            (d, Day(20_001))
        );
    }

    #[test]
    fn the_watermark_wins_over_an_older_partition_left_behind() {
        assert_eq!(retained_from(Some(10), Some(Day(8))), Some(Day(10)));
        assert_eq!(retained_from(Some(10), Some(Day(12))), Some(Day(12)));
        assert_eq!(retained_from(None, Some(Day(12))), Some(Day(12)));
        assert_eq!(retained_from(None, None), None);
    }
}
