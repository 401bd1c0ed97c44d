//! Reads written once for both backends (the core store's, and the simple ones of the
//! feature ports): a shared statement, bound by
//! [`Bind`], run on the backend's own pool, decoded by column name ([`Cols`]).

use chrono::{DateTime, Utc};
use sqlx::query::Query;
use sqlx::{Database, Executor, IntoArguments};

use super::immobiliser::{self, COMMAND_SELECT};
use super::sql::{self, Bind, Cols, Dialect};
use super::{crm, zones, StorageError};
use crate::crm::event::{OutboxEvent, Status};
use crate::geofence::store::{StoredMembership, StoredZone};
use crate::immobiliser::Command;
use crate::model::{DeviceId, VehicleId};
use crate::pipeline::store::{DeviceState, StoredPosition, TrackColumns, TrackPoint, Vehicle};

pub(crate) async fn device_states<'c, DB, E>(
    ex: E,
    d: Dialect,
) -> Result<Vec<DeviceState>, StorageError>
where
    DB: Database,
    DB::Row: Cols,
    E: Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
{
    let q = sql::device_states(d);
    let rows = sqlx::query::<DB>(&q).fetch_all(ex).await?;
    Ok(rows
        .iter()
        .map(sql::device_state)
        .collect::<Result<_, _>>()?)
}

pub(crate) async fn device_state<'c, DB, E>(
    ex: E,
    d: Dialect,
    device: &DeviceId,
) -> Result<Option<DeviceState>, StorageError>
where
    DB: Database,
    DB::Row: Cols,
    E: Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> Query<'q, DB, <DB as Database>::Arguments<'q>>: Bind<'q>,
{
    let q = format!("{} WHERE device_id = $1", sql::device_states(d));
    let row = sqlx::query::<DB>(&q)
        .text(device.as_str())
        .fetch_optional(ex)
        .await?;
    Ok(row.as_ref().map(sql::device_state).transpose()?)
}

/// A device's positions of `(from, to, limit)` from one table of rows (`positions`, or
/// PostgreSQL's `positions_legacy`), in fix-time order.
pub(crate) async fn track_in<'c, DB, E>(
    ex: E,
    d: Dialect,
    table: &str,
    device: &DeviceId,
    (from, to, limit): (DateTime<Utc>, DateTime<Utc>, u32),
    cols: TrackColumns,
) -> Result<Vec<StoredPosition>, StorageError>
where
    DB: Database,
    DB::Row: Cols,
    E: Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> Query<'q, DB, <DB as Database>::Arguments<'q>>: Bind<'q>,
{
    let q = sql::track_in(d, table, cols);
    let rows = sql::bind_range(sqlx::query::<DB>(&q), device, from, to, limit)
        .fetch_all(ex)
        .await?;
    Ok(rows
        .iter()
        .map(|r| sql::position(r).map(|p| p.project(cols)))
        .collect::<Result<_, _>>()?)
}

pub(crate) async fn track_points<'c, DB, E>(
    ex: E,
    device: &DeviceId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<TrackPoint>, StorageError>
where
    DB: Database,
    DB::Row: Cols,
    E: Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> Query<'q, DB, <DB as Database>::Arguments<'q>>: Bind<'q>,
{
    track_points_in(ex, "positions", device, from, to, limit).await
}

/// [`track_points`] from one table of rows.
pub(crate) async fn track_points_in<'c, DB, E>(
    ex: E,
    table: &str,
    device: &DeviceId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<TrackPoint>, StorageError>
where
    DB: Database,
    DB::Row: Cols,
    E: Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> Query<'q, DB, <DB as Database>::Arguments<'q>>: Bind<'q>,
{
    let q = sql::track_points_in(table);
    let rows = sql::bind_range(sqlx::query::<DB>(&q), device, from, to, limit)
        .fetch_all(ex)
        .await?;
    Ok(rows
        .iter()
        .map(sql::track_point)
        .collect::<Result<_, _>>()?)
}

pub(crate) async fn vehicles<'c, DB, E>(ex: E) -> Result<Vec<Vehicle>, StorageError>
where
    DB: Database,
    DB::Row: Cols,
    E: Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
{
    let q = format!("{} ORDER BY id", sql::VEHICLE_SELECT);
    let rows = sqlx::query::<DB>(&q).fetch_all(ex).await?;
    Ok(rows.iter().map(sql::vehicle).collect::<Result<_, _>>()?)
}

/// The vehicle whose `column` (`id` or `device_id`) is `value`.
pub(crate) async fn vehicle_where<'c, DB, E>(
    ex: E,
    column: &'static str,
    value: &str,
) -> Result<Option<Vehicle>, StorageError>
where
    DB: Database,
    DB::Row: Cols,
    E: Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> Query<'q, DB, <DB as Database>::Arguments<'q>>: Bind<'q>,
{
    let q = format!("{} WHERE {column} = $1", sql::VEHICLE_SELECT);
    let row = sqlx::query::<DB>(&q).text(value).fetch_optional(ex).await?;
    Ok(row.as_ref().map(sql::vehicle).transpose()?)
}

/// A vehicle's commands, newest first, at most `limit`.
pub(crate) async fn commands<'c, DB, E>(
    ex: E,
    vehicle: &VehicleId,
    limit: u32,
) -> Result<Vec<Command>, StorageError>
where
    DB: Database,
    DB::Row: Cols,
    E: Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> Query<'q, DB, <DB as Database>::Arguments<'q>>: Bind<'q>,
{
    let q = format!("{COMMAND_SELECT} WHERE vehicle_id = $1 ORDER BY id DESC LIMIT $2");
    let rows = sqlx::query::<DB>(&q)
        .text(&vehicle.0)
        .int(i64::from(limit))
        .fetch_all(ex)
        .await?;
    Ok(rows
        .iter()
        .map(immobiliser::command)
        .collect::<Result<_, _>>()?)
}

pub(crate) async fn command<'c, DB, E>(ex: E, id: i64) -> Result<Option<Command>, StorageError>
where
    DB: Database,
    DB::Row: Cols,
    E: Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> Query<'q, DB, <DB as Database>::Arguments<'q>>: Bind<'q>,
{
    let q = format!("{COMMAND_SELECT} WHERE id = $1");
    let row = sqlx::query::<DB>(&q).int(id).fetch_optional(ex).await?;
    Ok(row.as_ref().map(immobiliser::command).transpose()?)
}

/// Every rule state of `scope`: (id, JSON).
pub(crate) async fn crm_states<'c, DB, E>(
    ex: E,
    scope: &str,
) -> Result<Vec<(String, String)>, StorageError>
where
    DB: Database,
    DB::Row: Cols,
    E: Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> Query<'q, DB, <DB as Database>::Arguments<'q>>: Bind<'q>,
{
    let rows = sqlx::query::<DB>(crm::STATES_OF_SCOPE)
        .text(scope)
        .fetch_all(ex)
        .await?;
    rows.iter()
        .map(|r| Ok((r.text("id")?, r.text("state")?)))
        .collect()
}

/// Outbox events, newest first, optionally of one status and/or vehicle.
pub(crate) async fn outbox_list<'c, DB, E>(
    ex: E,
    status: Option<Status>,
    vehicle: Option<&VehicleId>,
    limit: u32,
) -> Result<Vec<OutboxEvent>, StorageError>
where
    DB: Database,
    DB::Row: Cols,
    E: Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> Query<'q, DB, <DB as Database>::Arguments<'q>>: Bind<'q>,
{
    let q = crm::outbox_list();
    let rows = sqlx::query::<DB>(&q)
        .opt_text(status.map(Status::as_str))
        .opt_text(vehicle.map(|v| v.0.as_str()))
        .int(i64::from(limit))
        .fetch_all(ex)
        .await?;
    rows.iter().map(crm::outbox_event).collect()
}

/// How many outbox events have each status.
pub(crate) async fn outbox_counts<'c, DB, E>(ex: E) -> Result<Vec<(Status, u64)>, StorageError>
where
    DB: Database,
    DB::Row: Cols,
    E: Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
{
    let rows = sqlx::query::<DB>(crm::COUNTS).fetch_all(ex).await?;
    crm::counts(&rows)
}

pub(crate) async fn zones<'c, DB, E>(ex: E, d: Dialect) -> Result<Vec<StoredZone>, StorageError>
where
    DB: Database,
    DB::Row: Cols,
    E: Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
{
    let q = zones::zones(d);
    let rows = sqlx::query::<DB>(&q).fetch_all(ex).await?;
    rows.iter().map(zones::zone).collect()
}

pub(crate) async fn memberships<'c, DB, E>(
    ex: E,
    d: Dialect,
) -> Result<Vec<StoredMembership>, StorageError>
where
    DB: Database,
    DB::Row: Cols,
    E: Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
{
    let q = zones::memberships(d);
    let rows = sqlx::query::<DB>(&q).fetch_all(ex).await?;
    rows.iter().map(zones::membership).collect()
}
