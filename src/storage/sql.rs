//! What SQLite and PostgreSQL share: statements written once with `$n` parameters (SQLite
//! reads `$1` as parameter 1 too), and rows decoded once, by column name, through [`Cols`].
//! The backend differences are named here: JSON columns are TEXT on SQLite and JSONB on
//! PostgreSQL ([`Dialect::json`]), and PostgreSQL's INTEGER columns decode as `i32`
//! ([`Cols::int`] widens them). Bulk inserts (UNNEST on PostgreSQL, the raw group commit on
//! SQLite) stay in each backend's own file.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Column, Row, TypeInfo};

use super::{from_millis, millis};
use crate::model::{DeviceId, VehicleId};
use crate::pipeline::store::{
    AttrsJson, DeviceState, StoredPosition, TrackColumns, TrackPoint, Vehicle, VehicleUpdate,
};

/// Which SQL a statement is rendered for, where the two differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Select JSON column `col` as text under its own name.
    pub(crate) fn json(self, col: &str) -> String {
        match self {
            Dialect::Sqlite => col.to_string(),
            Dialect::Postgres => format!("{col}::text AS {col}"),
        }
    }

    /// Bind a JSON text parameter (`$n`) into a JSON column.
    pub(crate) fn json_param(self, n: u8) -> String {
        match self {
            Dialect::Sqlite => format!("${n}"),
            Dialect::Postgres => format!("${n}::jsonb"),
        }
    }
}

/// A row read by column name, the same on both backends.
pub(crate) trait Cols {
    /// An integer column of any width (INTEGER on SQLite; INT4 or INT8 on PostgreSQL).
    fn opt_int(&self, c: &str) -> Result<Option<i64>, sqlx::Error>;
    fn opt_text(&self, c: &str) -> Result<Option<String>, sqlx::Error>;
    fn opt_real(&self, c: &str) -> Result<Option<f64>, sqlx::Error>;
    fn opt_flag(&self, c: &str) -> Result<Option<bool>, sqlx::Error>;

    fn int(&self, c: &str) -> Result<i64, sqlx::Error> {
        self.opt_int(c)?.ok_or_else(|| null(c))
    }
    fn text(&self, c: &str) -> Result<String, sqlx::Error> {
        self.opt_text(c)?.ok_or_else(|| null(c))
    }
    fn real(&self, c: &str) -> Result<f64, sqlx::Error> {
        self.opt_real(c)?.ok_or_else(|| null(c))
    }
    fn flag(&self, c: &str) -> Result<bool, sqlx::Error> {
        self.opt_flag(c)?.ok_or_else(|| null(c))
    }
    /// A time stored as Unix milliseconds.
    fn time(&self, c: &str) -> Result<DateTime<Utc>, sqlx::Error> {
        Ok(from_millis(self.int(c)?))
    }
    fn opt_time(&self, c: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        Ok(self.opt_int(c)?.map(from_millis))
    }
}

fn null(c: &str) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: c.to_string(),
        source: "unexpected NULL".into(),
    }
}

/// A stored text that names no known value (a state, an intent, a status).
pub(crate) fn unknown(what: &str, v: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("unknown {what} '{v}'").into())
}

impl Cols for SqliteRow {
    fn opt_int(&self, c: &str) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(c)
    }
    fn opt_text(&self, c: &str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(c)
    }
    fn opt_real(&self, c: &str) -> Result<Option<f64>, sqlx::Error> {
        self.try_get(c)
    }
    fn opt_flag(&self, c: &str) -> Result<Option<bool>, sqlx::Error> {
        self.try_get(c)
    }
}

impl Cols for PgRow {
    fn opt_int(&self, c: &str) -> Result<Option<i64>, sqlx::Error> {
        match self.try_column(c)?.type_info().name() {
            "INT4" => Ok(self.try_get::<Option<i32>, _>(c)?.map(i64::from)),
            "INT2" => Ok(self.try_get::<Option<i16>, _>(c)?.map(i64::from)),
            _ => self.try_get(c),
        }
    }
    fn opt_text(&self, c: &str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(c)
    }
    fn opt_real(&self, c: &str) -> Result<Option<f64>, sqlx::Error> {
        self.try_get(c)
    }
    fn opt_flag(&self, c: &str) -> Result<Option<bool>, sqlx::Error> {
        self.try_get(c)
    }
}

/// The columns [`position`] reads (`attributes` as NULL when left out).
pub(crate) fn position_columns(d: Dialect, cols: TrackColumns) -> String {
    let attributes = match cols {
        TrackColumns::All => d.json("attributes"),
        TrackColumns::WithoutAttributes | TrackColumns::Map => "NULL AS attributes".to_string(),
    };
    format!(
        "fix_time, server_time, valid, lat, lon, speed_kmh, course, altitude, satellites, \
         ignition, motion, odometer_m, gps_odometer_m, inputs, outputs, power_v, alarm, \
         {attributes}"
    )
}

/// A device's positions in `[$2, $3)` of fix time from `table` (`positions`, or PostgreSQL's
/// `positions_legacy`), in fix-time order, at most `$4`.
pub(crate) fn track_in(d: Dialect, table: &str, cols: TrackColumns) -> String {
    format!(
        "SELECT {} FROM {table} WHERE device_id = $1 AND fix_time >= $2 AND fix_time < $3 \
         ORDER BY fix_time LIMIT $4",
        position_columns(d, cols)
    )
}

/// Fix time, coordinates and speed of the same positions as [`track_in`].
pub(crate) fn track_points_in(table: &str) -> String {
    format!(
        "SELECT fix_time, lat, lon, speed_kmh FROM {table} WHERE device_id = $1 AND fix_time >= $2 \
         AND fix_time < $3 ORDER BY fix_time LIMIT $4"
    )
}

pub(crate) fn track_point(r: &impl Cols) -> Result<TrackPoint, sqlx::Error> {
    Ok(TrackPoint {
        time: r.time("fix_time")?,
        lat: r.real("lat")?,
        lon: r.real("lon")?,
        speed_kmh: r.real("speed_kmh")?,
    })
}

pub(crate) fn position(r: &impl Cols) -> Result<StoredPosition, sqlx::Error> {
    Ok(StoredPosition {
        time: r.time("fix_time")?,
        server_time: r.time("server_time")?,
        valid: r.flag("valid")?,
        lat: r.real("lat")?,
        lon: r.real("lon")?,
        speed_kmh: r.real("speed_kmh")?,
        course: r.real("course")?,
        altitude: r.real("altitude")?,
        satellites: r.opt_int("satellites")?.map(|v| v as u16),
        ignition: r.opt_flag("ignition")?,
        motion: r.opt_flag("motion")?,
        odometer_m: r.opt_real("odometer_m")?,
        gps_odometer_m: r.real("gps_odometer_m")?,
        inputs: r.opt_int("inputs")?.map(|v| v as u32),
        outputs: r.opt_int("outputs")?.map(|v| v as u32),
        power_v: r.opt_real("power_v")?,
        alarm: r.opt_text("alarm")?,
        attributes: AttrsJson::from_stored(r.opt_text("attributes")?.as_deref()),
    })
}

/// Every device's latest state; add `WHERE device_id = $1` for one.
pub(crate) fn device_states(d: Dialect) -> String {
    format!(
        "SELECT device_id, protocol, last_seen, fix_time, valid, lat, lon, speed_kmh, course, \
         altitude, satellites, ignition, motion, odometer_m, gps_odometer_m, inputs, outputs, \
         {}, power_v FROM device_state",
        d.json("attributes")
    )
}

pub(crate) fn device_state(r: &impl Cols) -> Result<DeviceState, sqlx::Error> {
    let position = match r.opt_int("fix_time")? {
        // device_state has no server_time/alarm columns: reuse last_seen and none.
        Some(fix) => Some(StoredPosition {
            time: from_millis(fix),
            server_time: r.time("last_seen")?,
            valid: r.opt_flag("valid")?.unwrap_or(false),
            lat: r.opt_real("lat")?.unwrap_or_default(),
            lon: r.opt_real("lon")?.unwrap_or_default(),
            speed_kmh: r.opt_real("speed_kmh")?.unwrap_or_default(),
            course: r.opt_real("course")?.unwrap_or_default(),
            altitude: r.opt_real("altitude")?.unwrap_or_default(),
            satellites: r.opt_int("satellites")?.map(|v| v as u16),
            ignition: r.opt_flag("ignition")?,
            motion: r.opt_flag("motion")?,
            odometer_m: r.opt_real("odometer_m")?,
            gps_odometer_m: r.real("gps_odometer_m")?,
            inputs: r.opt_int("inputs")?.map(|v| v as u32),
            outputs: r.opt_int("outputs")?.map(|v| v as u32),
            power_v: r.opt_real("power_v")?,
            alarm: None,
            attributes: AttrsJson::from_stored(r.opt_text("attributes")?.as_deref()),
        }),
        None => None,
    };
    Ok(DeviceState {
        device_id: DeviceId(r.text("device_id")?),
        protocol: r.text("protocol")?,
        last_seen: r.time("last_seen")?,
        position,
        gps_odometer_m: r.real("gps_odometer_m")?,
    })
}

pub(crate) const VEHICLE_SELECT: &str =
    "SELECT id, device_id, protocol, plate, driver_id, crm_deal_id, crm_company_id, status, created_at, updated_at FROM vehicles";

/// Create a vehicle or update the fields given (`NULL` keeps a field): `$1` id, `$2`…`$6`
/// device, protocol, plate, driver, deal, `$7` status, `$8` now, `$9` company.
pub(crate) const UPSERT_VEHICLE: &str =
    "INSERT INTO vehicles (id, device_id, protocol, plate, driver_id, crm_deal_id, status, created_at, updated_at, crm_company_id) \
     VALUES ($1, $2, $3, $4, $5, $6, COALESCE($7, 'available'), $8, $8, $9) \
     ON CONFLICT (id) DO UPDATE SET device_id = COALESCE(excluded.device_id, vehicles.device_id), \
     protocol = COALESCE(excluded.protocol, vehicles.protocol), plate = COALESCE(excluded.plate, vehicles.plate), \
     driver_id = COALESCE(excluded.driver_id, vehicles.driver_id), \
     crm_deal_id = COALESCE(excluded.crm_deal_id, vehicles.crm_deal_id), \
     crm_company_id = COALESCE(excluded.crm_company_id, vehicles.crm_company_id), \
     status = COALESCE($7, vehicles.status), updated_at = excluded.updated_at";

/// The vehicle (other than `$2`) a device `$1` is fitted to.
pub(crate) const DEVICE_OWNER: &str = "SELECT id FROM vehicles WHERE device_id = $1 AND id <> $2";

pub(crate) fn vehicle(r: &impl Cols) -> Result<Vehicle, sqlx::Error> {
    Ok(Vehicle {
        id: VehicleId(r.text("id")?),
        device_id: r.opt_text("device_id")?.map(DeviceId),
        protocol: r.opt_text("protocol")?,
        plate: r.opt_text("plate")?,
        driver_id: r.opt_text("driver_id")?,
        crm_deal_id: r.opt_text("crm_deal_id")?,
        crm_company_id: r.opt_text("crm_company_id")?,
        status: r.text("status")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

/// A statement's parameters bound the same way on both backends, so that a statement shared
/// by them is also filled once (`bind_command`, `bind_vehicle`…). Integers bind as `i64`:
/// PostgreSQL assigns them to its INTEGER columns.
pub(crate) trait Bind<'q>: Sized {
    fn int(self, v: i64) -> Self;
    fn opt_int(self, v: Option<i64>) -> Self;
    fn text(self, v: &'q str) -> Self;
    fn opt_text(self, v: Option<&'q str>) -> Self;
    fn flag(self, v: bool) -> Self;
    fn real(self, v: f64) -> Self;
    fn opt_real(self, v: Option<f64>) -> Self;
}

impl<'q, DB> Bind<'q> for sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    f64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<f64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    fn int(self, v: i64) -> Self {
        self.bind(v)
    }
    fn opt_int(self, v: Option<i64>) -> Self {
        self.bind(v)
    }
    fn text(self, v: &'q str) -> Self {
        self.bind(v)
    }
    fn opt_text(self, v: Option<&'q str>) -> Self {
        self.bind(v)
    }
    fn flag(self, v: bool) -> Self {
        self.bind(v)
    }
    fn real(self, v: f64) -> Self {
        self.bind(v)
    }
    fn opt_real(self, v: Option<f64>) -> Self {
        self.bind(v)
    }
}

/// [`track_in`] or [`track_points_in`] for `device`, `[from, to)`, at most `limit`.
pub(crate) fn bind_range<'q, Q: Bind<'q>>(
    q: Q,
    device: &'q DeviceId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: u32,
) -> Q {
    q.text(device.as_str())
        .int(millis(from))
        .int(millis(to))
        .int(i64::from(limit))
}

/// [`UPSERT_VEHICLE`] for vehicle `id` with `u`, at `now`.
pub(crate) fn bind_vehicle<'q, Q: Bind<'q>>(
    q: Q,
    id: &'q VehicleId,
    u: &'q VehicleUpdate,
    now: DateTime<Utc>,
) -> Q {
    q.text(&id.0)
        .opt_text(u.device_id.as_deref())
        .opt_text(u.protocol.as_deref())
        .opt_text(u.plate.as_deref())
        .opt_text(u.driver_id.as_deref())
        .opt_text(u.crm_deal_id.as_deref())
        .opt_text(u.status.as_deref())
        .int(millis(now))
        .opt_text(u.crm_company_id.as_deref())
}
