//! The core store's reads, written once for both backends: a shared statement, bound by
//! [`Bind`], run on the backend's own pool, decoded by column name ([`Cols`]).

use chrono::{DateTime, Utc};
use sqlx::query::Query;
use sqlx::{Database, Executor, IntoArguments};

use super::sql::{self, Bind, Cols, Dialect};
use super::StorageError;
use crate::model::DeviceId;
use crate::pipeline::store::{DeviceState, StoredPosition, TrackPoint, Vehicle};

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

pub(crate) async fn track<'c, DB, E>(
    ex: E,
    d: Dialect,
    device: &DeviceId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<StoredPosition>, StorageError>
where
    DB: Database,
    DB::Row: Cols,
    E: Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> Query<'q, DB, <DB as Database>::Arguments<'q>>: Bind<'q>,
{
    let q = sql::track(d);
    let rows = sql::bind_range(sqlx::query::<DB>(&q), device, from, to, limit)
        .fetch_all(ex)
        .await?;
    Ok(rows.iter().map(sql::position).collect::<Result<_, _>>()?)
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
    let rows = sql::bind_range(
        sqlx::query::<DB>(sql::TRACK_POINTS),
        device,
        from,
        to,
        limit,
    )
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
