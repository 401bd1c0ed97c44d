//! A deadline on every storage call, and no pool connection left behind on a dead path.
//!
//! When the network path to PostgreSQL goes silent (no FIN, no RST: a stateful firewall
//! dropping packets), a query waits for the kernel's TCP retransmission timeout, ~15 minutes.
//! Two things then strand pool connections, and each needs its own fix:
//!
//! 1. A task that queries without a deadline keeps its connection as long as the query hangs.
//!    [`Timed`] wraps every port ([`Store`], [`ZoneStore`], [`CrmStore`],
//!    [`ImmobiliserStore`]) and bounds each call with `tokio::time::timeout`: past
//!    `[storage] statement_timeout_s` (`bulk_timeout_s` for the calls that move whole tables)
//!    the call's future is dropped and it returns [`StorageError::Timeout`].
//! 2. Dropping a future mid-query does not free the connection. sqlx 0.8 (`PoolConnection`'s
//!    `Drop` → `Floating::return_to_pool`, sqlx-core 0.8.6 `pool/connection.rs`) spawns a task
//!    that pings the connection before putting it back, with no deadline; on a frozen socket
//!    that ping never returns, and the task holds the pool's permit for good — measured: with
//!    the deadline alone, `tests/storage_deadline.rs` found the pool still dry after the path
//!    came back. [`released_alive`] (the pool's `after_release` hook, which sqlx runs before
//!    its own ping) pings under the same deadline and, past it, returns an error, on which
//!    sqlx closes the socket without a goodbye (`close_hard`) and frees the permit. The cost
//!    is one more round trip per release on a healthy path.
//!
//! TCP keepalive would not replace either: sqlx 0.8 has no option for it on PostgreSQL
//! sockets, and a silent peer that still acknowledges at the TCP level (the frozen proxy of
//! the outage test, a hung server) is never noticed by it.
//!
//! The archive's port (`ArchiveStore`) is bounded too, each call under [`Deadlines::bulk`]
//! (one device-day, one partition, one batch of rows at a time). `archive::Layout`, the
//! conversion of an old database (`fleetgate migrate`), is passed through without a deadline,
//! like the migrations: scanning a large legacy table may legitimately take long.

use crate::pipeline::store::TrackColumns;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::archive::Layout;
use super::{
    DeviceState, StorageError, Store, StoredPosition, TrackPoint, Vehicle, VehicleUpdate, WriteItem,
};
use crate::archive::store::{
    ArchiveStore, Compacted, DailySummary, Day, DeviceDay, Expiring, PartitionStats,
};
use crate::crm::event::{NewEvent, OutboxEvent, Status};
use crate::crm::store::{CrmStore, StateWrite};
use crate::geofence::store::{
    EventQuery, StoredMembership, StoredZone, StoredZoneEvent, ZoneChange, ZoneStore,
};
use crate::immobiliser::store::{
    AuditEntry, AuditQuery, Fitting, ImmobChanges, ImmobSnapshot, ImmobiliserStore, VehicleImmobRow,
};
use crate::immobiliser::Command;
use crate::model::{DeviceId, VehicleId};

/// How long storage calls may take (from `[storage] statement_timeout_s` and `bulk_timeout_s`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// One query or short transaction.
    pub call: Duration,
    /// A call that reads or writes in bulk: a group commit, a whole-table load at start-up.
    pub bulk: Duration,
}

/// `fut` under `after`; past it, [`StorageError::Timeout`] naming `what`, counted in
/// `fleetgate_storage_timeouts_total{call}`.
pub async fn bounded<T>(
    what: &'static str,
    after: Duration,
    fut: impl Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    match tokio::time::timeout(after, fut).await {
        Ok(r) => r,
        Err(_) => {
            metrics::counter!("fleetgate_storage_timeouts_total", "call" => what).increment(1);
            tracing::warn!(
                call = what,
                ?after,
                "storage call abandoned past its deadline"
            );
            Err(StorageError::Timeout {
                what: what.to_string(),
                after,
            })
        }
    }
}

/// The PostgreSQL pool's `after_release` hook: whether a connection handed back may be
/// reused, found by a ping under `bound`. A connection whose query was abandoned still owes
/// that query's answer; on a live path the ping drains it, on a silent one the ping fails
/// and the error makes sqlx close the socket at once (see the module doc, point 2).
pub(crate) async fn released_alive(
    conn: &mut sqlx::PgConnection,
    bound: Duration,
) -> Result<bool, sqlx::Error> {
    use sqlx::Connection;
    match tokio::time::timeout(bound, conn.ping()).await {
        Ok(Ok(())) => Ok(true),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            metrics::counter!("fleetgate_storage_connections_abandoned_total").increment(1);
            tracing::warn!(?bound, "PostgreSQL connection silent on release: closed");
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer to a ping within {bound:?}"),
            )))
        }
    }
}

/// `opts` with the server-side half of the deadline: PostgreSQL ends a session left idle inside
/// a transaction for longer than one call may take (`idle_in_transaction_session_timeout`),
/// unless the URL's `options` set that already. A path that froze mid-transaction leaves the
/// server holding that transaction — and its row locks on `device_state` — for as long as its
/// side of the socket stays open: every later commit of those devices then waits on the lock
/// and times out, and ingest never recovers (2 of 22 runs of
/// `tests/storage_outage_postgres.rs` before this). Our transactions never pause between
/// statements, so no legitimate one is cut.
pub(crate) fn server_bounds(
    opts: sqlx::postgres::PgConnectOptions,
    d: Deadlines,
) -> sqlx::postgres::PgConnectOptions {
    const KEY: &str = "idle_in_transaction_session_timeout";
    if opts.get_options().is_some_and(|o| o.contains(KEY)) {
        return opts;
    }
    opts.options([(KEY, d.call.as_millis())])
}

/// Every port of `S`, each call under a deadline.
pub struct Timed<S> {
    inner: S,
    d: Deadlines,
}

impl<S> Timed<S> {
    pub fn new(inner: S, d: Deadlines) -> Self {
        Timed { inner, d }
    }
}

#[async_trait]
impl<S: Store> Store for Timed<S> {
    async fn write_batch(&self, items: &[WriteItem]) -> Result<(), StorageError> {
        // The writer bounds each attempt more tightly itself (`pipeline::writer::ATTEMPT_TIMEOUT`).
        bounded("write_batch", self.d.bulk, self.inner.write_batch(items)).await
    }

    async fn device_states(&self) -> Result<Vec<DeviceState>, StorageError> {
        bounded("device_states", self.d.bulk, self.inner.device_states()).await
    }

    async fn device_state(&self, device: &DeviceId) -> Result<Option<DeviceState>, StorageError> {
        bounded("device_state", self.d.call, self.inner.device_state(device)).await
    }

    async fn track_columns(
        &self,
        device: &DeviceId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
        cols: TrackColumns,
    ) -> Result<Vec<StoredPosition>, StorageError> {
        let f = self.inner.track_columns(device, from, to, limit, cols);
        bounded("track", self.d.bulk, f).await
    }

    async fn track_points(
        &self,
        device: &DeviceId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<TrackPoint>, StorageError> {
        let f = self.inner.track_points(device, from, to, limit);
        bounded("track_points", self.d.bulk, f).await
    }

    async fn vehicles(&self) -> Result<Vec<Vehicle>, StorageError> {
        bounded("vehicles", self.d.bulk, self.inner.vehicles()).await
    }

    async fn vehicle(&self, id: &VehicleId) -> Result<Option<Vehicle>, StorageError> {
        bounded("vehicle", self.d.call, self.inner.vehicle(id)).await
    }

    async fn vehicle_by_device(&self, device: &DeviceId) -> Result<Option<Vehicle>, StorageError> {
        let f = self.inner.vehicle_by_device(device);
        bounded("vehicle_by_device", self.d.call, f).await
    }

    async fn upsert_vehicle(
        &self,
        id: &VehicleId,
        update: &VehicleUpdate,
    ) -> Result<Vehicle, StorageError> {
        let f = self.inner.upsert_vehicle(id, update);
        bounded("upsert_vehicle", self.d.call, f).await
    }

    async fn ping(&self) -> Result<(), StorageError> {
        bounded("ping", self.d.call, self.inner.ping()).await
    }

    fn pack(&self, item: &mut WriteItem) {
        // Pure CPU in the caller's task: nothing to bound.
        self.inner.pack(item)
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

#[async_trait]
impl<S: ZoneStore> ZoneStore for Timed<S> {
    async fn zones(&self) -> Result<Vec<StoredZone>, StorageError> {
        bounded("zones", self.d.bulk, self.inner.zones()).await
    }

    async fn put_zone(&self, zone: &StoredZone) -> Result<(), StorageError> {
        bounded("put_zone", self.d.call, self.inner.put_zone(zone)).await
    }

    async fn delete_zone(&self, name: &str) -> Result<bool, StorageError> {
        bounded("delete_zone", self.d.call, self.inner.delete_zone(name)).await
    }

    async fn memberships(&self) -> Result<Vec<StoredMembership>, StorageError> {
        bounded("memberships", self.d.bulk, self.inner.memberships()).await
    }

    async fn save_zone_changes(&self, changes: &[ZoneChange]) -> Result<(), StorageError> {
        let f = self.inner.save_zone_changes(changes);
        bounded("save_zone_changes", self.d.bulk, f).await
    }

    async fn save_zone_change(
        &self,
        membership: &StoredMembership,
        events: &[StoredZoneEvent],
    ) -> Result<(), StorageError> {
        let f = self.inner.save_zone_change(membership, events);
        bounded("save_zone_change", self.d.call, f).await
    }

    async fn vehicle_of(&self, device: &DeviceId) -> Result<Option<VehicleId>, StorageError> {
        let f = ZoneStore::vehicle_of(&self.inner, device);
        bounded("zone_vehicle_of", self.d.call, f).await
    }

    async fn zone_events(&self, q: &EventQuery) -> Result<Vec<StoredZoneEvent>, StorageError> {
        bounded("zone_events", self.d.bulk, self.inner.zone_events(q)).await
    }
}

#[async_trait]
impl<S: CrmStore> CrmStore for Timed<S> {
    async fn crm_commit(
        &self,
        states: &[StateWrite],
        events: &[NewEvent],
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> Result<(), StorageError> {
        let f = self.inner.crm_commit(states, events, now, ttl);
        bounded("crm_commit", self.d.bulk, f).await
    }

    async fn crm_states(&self, scope: &str) -> Result<Vec<(String, String)>, StorageError> {
        bounded("crm_states", self.d.bulk, self.inner.crm_states(scope)).await
    }

    async fn crm_state(&self, scope: &str, id: &str) -> Result<Option<String>, StorageError> {
        bounded("crm_state", self.d.call, self.inner.crm_state(scope, id)).await
    }

    async fn crm_state_many(
        &self,
        keys: &[(&str, &str)],
    ) -> Result<Vec<Option<String>>, StorageError> {
        let f = self.inner.crm_state_many(keys);
        bounded("crm_state_many", self.d.call, f).await
    }

    async fn outbox_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>, StorageError> {
        bounded("outbox_due", self.d.call, self.inner.outbox_due(now, limit)).await
    }

    async fn outbox_claim(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        claimer: &str,
        lease: chrono::Duration,
    ) -> Result<Vec<OutboxEvent>, StorageError> {
        let f = self.inner.outbox_claim(now, limit, claimer, lease);
        bounded("outbox_claim", self.d.call, f).await
    }

    async fn outbox_next_due(&self) -> Result<Option<DateTime<Utc>>, StorageError> {
        bounded("outbox_next_due", self.d.call, self.inner.outbox_next_due()).await
    }

    async fn outbox_delivered(&self, id: i64, at: DateTime<Utc>) -> Result<(), StorageError> {
        let f = self.inner.outbox_delivered(id, at);
        bounded("outbox_delivered", self.d.call, f).await
    }

    async fn outbox_retry(
        &self,
        id: i64,
        attempts: u32,
        next: DateTime<Utc>,
        error: &str,
    ) -> Result<(), StorageError> {
        let f = self.inner.outbox_retry(id, attempts, next, error);
        bounded("outbox_retry", self.d.call, f).await
    }

    async fn outbox_dead(&self, id: i64, attempts: u32, error: &str) -> Result<(), StorageError> {
        let f = self.inner.outbox_dead(id, attempts, error);
        bounded("outbox_dead", self.d.call, f).await
    }

    async fn outbox_drop(
        &self,
        vehicle: &VehicleId,
        keep_deal: Option<&str>,
        why: &str,
    ) -> Result<u64, StorageError> {
        let f = self.inner.outbox_drop(vehicle, keep_deal, why);
        bounded("outbox_drop", self.d.call, f).await
    }

    async fn outbox_drop_one(&self, id: i64, why: &str) -> Result<(), StorageError> {
        let f = self.inner.outbox_drop_one(id, why);
        bounded("outbox_drop_one", self.d.call, f).await
    }

    async fn outbox_requeue(&self, id: i64, now: DateTime<Utc>) -> Result<bool, StorageError> {
        let f = self.inner.outbox_requeue(id, now);
        bounded("outbox_requeue", self.d.call, f).await
    }

    async fn outbox_list(
        &self,
        status: Option<Status>,
        vehicle: Option<&VehicleId>,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>, StorageError> {
        let f = self.inner.outbox_list(status, vehicle, limit);
        bounded("outbox_list", self.d.bulk, f).await
    }

    async fn outbox_counts(&self) -> Result<Vec<(Status, u64)>, StorageError> {
        bounded("outbox_counts", self.d.call, self.inner.outbox_counts()).await
    }

    async fn outbox_purge(&self, before: DateTime<Utc>) -> Result<u64, StorageError> {
        bounded("outbox_purge", self.d.bulk, self.inner.outbox_purge(before)).await
    }

    async fn crm_vehicles(&self) -> Result<Vec<Vehicle>, StorageError> {
        bounded("crm_vehicles", self.d.bulk, self.inner.crm_vehicles()).await
    }

    async fn crm_set_company(
        &self,
        vehicle: &VehicleId,
        company: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        let f = self.inner.crm_set_company(vehicle, company, now);
        bounded("crm_set_company", self.d.call, f).await
    }
}

#[async_trait]
impl<S: ImmobiliserStore> ImmobiliserStore for Timed<S> {
    async fn immobiliser_load(&self) -> Result<ImmobSnapshot, StorageError> {
        bounded(
            "immobiliser_load",
            self.d.bulk,
            self.inner.immobiliser_load(),
        )
        .await
    }

    async fn immobiliser_apply(&self, changes: &ImmobChanges) -> Result<(), StorageError> {
        let f = self.inner.immobiliser_apply(changes);
        bounded("immobiliser_apply", self.d.bulk, f).await
    }

    async fn immobiliser_vehicle(
        &self,
        vehicle: &VehicleId,
    ) -> Result<(Option<VehicleImmobRow>, Vec<Command>), StorageError> {
        let f = self.inner.immobiliser_vehicle(vehicle);
        bounded("immobiliser_vehicle", self.d.call, f).await
    }

    async fn fitting(&self, vehicle: &VehicleId) -> Result<Option<Fitting>, StorageError> {
        bounded("fitting", self.d.call, self.inner.fitting(vehicle)).await
    }

    async fn vehicle_of(&self, device: &DeviceId) -> Result<Option<VehicleId>, StorageError> {
        let f = ImmobiliserStore::vehicle_of(&self.inner, device);
        bounded("immobiliser_vehicle_of", self.d.call, f).await
    }

    async fn reserve_command_ids(&self, n: u32) -> Result<Vec<i64>, StorageError> {
        let f = self.inner.reserve_command_ids(n);
        bounded("reserve_command_ids", self.d.call, f).await
    }

    async fn commands(
        &self,
        vehicle: &VehicleId,
        limit: u32,
    ) -> Result<Vec<Command>, StorageError> {
        bounded("commands", self.d.call, self.inner.commands(vehicle, limit)).await
    }

    async fn command(&self, id: i64) -> Result<Option<Command>, StorageError> {
        bounded("command", self.d.call, self.inner.command(id)).await
    }

    async fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StorageError> {
        bounded("audit", self.d.bulk, self.inner.audit(q)).await
    }
}

#[async_trait]
impl<S: ArchiveStore> ArchiveStore for Timed<S> {
    async fn ensure_partitions(&self, from: Day, to: Day) -> Result<(), StorageError> {
        let f = self.inner.ensure_partitions(from, to);
        bounded("ensure_partitions", self.d.bulk, f).await
    }

    async fn unpacked_days(&self, before: Day, limit: u32) -> Result<Vec<DeviceDay>, StorageError> {
        let f = self.inner.unpacked_days(before, limit);
        bounded("unpacked_days", self.d.bulk, f).await
    }

    async fn compact_day(&self, dd: &DeviceDay) -> Result<Compacted, StorageError> {
        bounded("compact_day", self.d.bulk, self.inner.compact_day(dd)).await
    }

    async fn expire_days(&self, before: Day) -> Result<Vec<Day>, StorageError> {
        bounded("expire_days", self.d.bulk, self.inner.expire_days(before)).await
    }

    async fn retained_from(&self) -> Result<Option<Day>, StorageError> {
        bounded("retained_from", self.d.call, self.inner.retained_from()).await
    }

    async fn partition_stats(&self) -> Result<Vec<PartitionStats>, StorageError> {
        bounded("partition_stats", self.d.bulk, self.inner.partition_stats()).await
    }

    async fn expire_rows(
        &self,
        table: Expiring,
        before: DateTime<Utc>,
        batch: u32,
    ) -> Result<u64, StorageError> {
        let f = self.inner.expire_rows(table, before, batch);
        bounded("expire_rows", self.d.bulk, f).await
    }

    async fn put_summaries(&self, rows: &[DailySummary]) -> Result<(), StorageError> {
        bounded("put_summaries", self.d.bulk, self.inner.put_summaries(rows)).await
    }

    async fn summaries(
        &self,
        vehicle: &VehicleId,
        from: Day,
        to: Day,
    ) -> Result<Vec<DailySummary>, StorageError> {
        let f = self.inner.summaries(vehicle, from, to);
        bounded("summaries", self.d.bulk, f).await
    }
}

/// Passed through without a deadline: see the module doc.
#[async_trait]
impl<S: Layout> Layout for Timed<S> {
    async fn old_layout(&self) -> Result<bool, StorageError> {
        self.inner.old_layout().await
    }

    async fn old_days(&self, limit: u32) -> Result<Vec<DeviceDay>, StorageError> {
        self.inner.old_days(limit).await
    }

    async fn finish_migration(&self) -> Result<(), StorageError> {
        self.inner.finish_migration().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_deadline_is_a_timeout_naming_it() {
        let started = tokio::time::Instant::now();
        let r: Result<(), _> = bounded(
            "device_state",
            Duration::from_secs(10),
            std::future::pending(),
        )
        .await;
        match r {
            Err(StorageError::Timeout { what, after }) => {
                assert_eq!(what, "device_state");
                assert_eq!(after, Duration::from_secs(10));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert!(crate::pipeline::retry::is_transient(
            &StorageError::Timeout {
                what: "x".into(),
                after: Duration::from_secs(1),
            }
        ));
    }

    #[test]
    fn the_server_ends_sessions_idle_in_a_transaction_unless_the_url_says_otherwise() {
        use std::str::FromStr;
        let d = Deadlines {
            call: Duration::from_secs(10),
            bulk: Duration::from_secs(60),
        };
        let url = "postgres://u@h/db?options=-c%20search_path%3Dfleet";
        let opts = server_bounds(sqlx::postgres::PgConnectOptions::from_str(url).unwrap(), d);
        assert_eq!(
            opts.get_options(),
            Some("-c search_path=fleet -c idle_in_transaction_session_timeout=10000")
        );
        let own = "postgres://u@h/db?options=-c%20idle_in_transaction_session_timeout%3D0";
        let opts = server_bounds(sqlx::postgres::PgConnectOptions::from_str(own).unwrap(), d);
        assert_eq!(
            opts.get_options(),
            Some("-c idle_in_transaction_session_timeout=0")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_within_its_deadline_returns_its_own_result() {
        let ok = bounded("ping", Duration::from_secs(10), async {
            tokio::time::sleep(Duration::from_secs(9)).await;
            Ok::<_, StorageError>(7)
        })
        .await;
        assert_eq!(ok.unwrap(), 7);
        let err: Result<(), _> = bounded("ping", Duration::from_secs(10), async {
            Err(StorageError::Invalid("bad".into()))
        })
        .await;
        assert!(matches!(err, Err(StorageError::Invalid(m)) if m == "bad"));
    }
}
