//! `/api/v1/vehicles…`: the fleet, one car, its track (JSON, GeoJSON, CSV, GPX), track
//! summary and daily summaries, registration.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Duration, NaiveDate, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::rows;
use super::summary::{summarize, TrackSummary, PAGE};
use super::track_format::{self, Format, TrackMeta};
use super::{ApiError, AppState};
use crate::archive::store::Day;
use crate::model::{DeviceId, VehicleId};
use crate::pipeline::store::{
    DeviceState, StoredPosition, TrackColumns, Vehicle, VEHICLE_STATUSES,
};
use crate::protocols::Protocol;

/// Most positions one track request returns.
pub(super) const MAX_TRACK_LIMIT: u32 = 100_000;

/// The latest fix as the API shows it.
#[derive(Debug, Serialize)]
pub struct LatestPosition {
    pub time: DateTime<Utc>,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: f64,
    pub course: f64,
    pub altitude: f64,
    pub satellites: Option<u16>,
    pub valid: bool,
    pub ignition: Option<bool>,
    pub outputs: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct VehicleView {
    #[serde(flatten)]
    pub vehicle: rows::Vehicle,
    pub online: bool,
    pub last_seen: Option<DateTime<Utc>>,
    pub position: Option<LatestPosition>,
    pub odometer_km: Option<f64>,
    /// `{inside_service_area, zones}`: debounced zone membership.
    pub zone: crate::geofence::stage::Membership,
    /// `{state, reasons, since}` of the engine block.
    pub immobiliser: Option<crate::immobiliser::actor::ImmobView>,
}

fn view(
    state: &AppState,
    vehicle: Vehicle,
    live: Option<DeviceState>,
    zone: Option<crate::geofence::stage::Membership>,
) -> VehicleView {
    let offline_after = Duration::seconds(state.settings.offline_after_s as i64);
    let last_seen = live.as_ref().map(|s| s.last_seen);
    let online = last_seen
        .map(|t| Utc::now() - t < offline_after)
        .unwrap_or(false);
    let odometer_km = live.as_ref().map(|s| {
        let device = s.position.as_ref().and_then(|p| p.odometer_m);
        device.unwrap_or(s.gps_odometer_m) / 1000.0
    });
    let position = live
        .and_then(|s| s.position)
        .map(|p: StoredPosition| LatestPosition {
            time: p.time,
            lat: p.lat,
            lon: p.lon,
            speed_kmh: p.speed_kmh,
            course: p.course,
            altitude: p.altitude,
            satellites: p.satellites,
            valid: p.valid,
            ignition: p.ignition,
            outputs: p.outputs,
        });
    VehicleView {
        vehicle: vehicle.into(),
        online,
        last_seen,
        position,
        odometer_km,
        zone: zone.unwrap_or_default(),
        immobiliser: None,
    }
}

async fn zone_of(
    state: &AppState,
    device: Option<&DeviceId>,
) -> Option<crate::geofence::stage::Membership> {
    state.zones.membership(device?).await
}

async fn live_state(
    state: &AppState,
    device: Option<&DeviceId>,
) -> Result<Option<DeviceState>, ApiError> {
    let Some(device) = device else {
        return Ok(None);
    };
    if let Some(s) = state.pipeline.state(device).await {
        return Ok(Some(s));
    }
    Ok(state.store.core.device_state(device).await?)
}

/// `GET /api/v1/vehicles?crm_deal_id=…&crm_company_id=…`: filters for a CRM integrator who
/// holds a deal or a company card and wants its car.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub crm_deal_id: Option<String>,
    pub crm_company_id: Option<String>,
}

pub async fn list_route(
    State(state): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<VehicleView>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let Json(all) = list(State(state)).await?;
    let keep = |want: &Option<String>, have: &Option<String>| {
        want.as_ref().map_or(true, |w| have.as_ref() == Some(w))
    };
    Ok(Json(
        all.into_iter()
            .filter(|v| {
                keep(&q.crm_deal_id, &v.vehicle.crm_deal_id)
                    && keep(&q.crm_company_id, &v.vehicle.crm_company_id)
            })
            .collect(),
    ))
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<VehicleView>>, ApiError> {
    let vehicles = state.store.core.vehicles().await?;
    let live: std::collections::HashMap<_, _> = state
        .pipeline
        .states()
        .await
        .into_iter()
        .map(|s| (s.device_id.clone(), s))
        .collect();
    let stored: std::collections::HashMap<_, _> = state
        .store
        .core
        .device_states()
        .await?
        .into_iter()
        .map(|s| (s.device_id.clone(), s))
        .collect();
    let zones: std::collections::HashMap<_, _> =
        state.zones.memberships().await.into_iter().collect();
    let immob = state.immobiliser.views().await.unwrap_or_default();
    let views = vehicles
        .into_iter()
        .map(|v| {
            let s = v
                .device_id
                .as_ref()
                .and_then(|d| live.get(d).or_else(|| stored.get(d)).cloned());
            let z = v.device_id.as_ref().and_then(|d| zones.get(d).cloned());
            let im = immob.get(&v.id).cloned();
            let mut out = view(&state, v, s, z);
            out.immobiliser =
                Some(im.unwrap_or_else(crate::immobiliser::actor::ImmobView::running));
            out
        })
        .collect();
    Ok(Json(views))
}

async fn find(state: &AppState, id: &str) -> Result<Vehicle, ApiError> {
    state
        .store
        .core
        .vehicle(&VehicleId(id.to_string()))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("vehicle '{id}' not found")))
}

pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<VehicleView>, ApiError> {
    let v = find(&state, &id).await?;
    let live = live_state(&state, v.device_id.as_ref()).await?;
    let zone = zone_of(&state, v.device_id.as_ref()).await;
    let im = state.immobiliser.view(&v.id).await.ok();
    let mut out = view(&state, v, live, zone);
    out.immobiliser = im;
    Ok(Json(out))
}

pub async fn put(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<rows::VehicleBody>, JsonRejection>,
) -> Result<Json<VehicleView>, ApiError> {
    let Json(update) = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(e.body_text())
        } else {
            ApiError::BadRequest(e.body_text())
        }
    })?;
    let before = state.store.core.vehicle(&VehicleId(id.clone())).await?;
    // A new vehicle's id must be safe to show and log; an existing one (say, a long id
    // registered before this check) stays editable.
    if before.is_none() {
        VehicleId::check_new(&id).map_err(ApiError::BadRequest)?;
    }
    if let Some(p) = &update.protocol {
        if Protocol::from_name(p).is_none() {
            return Err(ApiError::BadRequest(format!(
                "protocol: unknown protocol '{p}'"
            )));
        }
    }
    if let Some(s) = &update.status {
        if !VEHICLE_STATUSES.contains(&s.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "status: '{s}' is not one of {}",
                VEHICLE_STATUSES.join(", ")
            )));
        }
    }
    if let Some(d) = &update.device_id {
        if d.is_empty() || d.len() > 64 || !d.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::BadRequest(
                "device_id must be 1 to 64 printable ASCII characters without spaces".into(),
            ));
        }
    }
    let v = state
        .store
        .core
        .upsert_vehicle(&VehicleId(id), &update.into())
        .await?;
    state.admission.invalidate();
    // A tracker moved between cars: its old car's commands must never reach the new car.
    let old_device = before.and_then(|b| b.device_id);
    if old_device != v.device_id {
        if let Err(e) = state.immobiliser.rebind(&v.id).await {
            tracing::error!(vehicle = %v.id, error = %e, "immobiliser: re-pairing not applied");
        }
    }
    // The CRM rules see a status, driver or deal change at once (a returned car starts a
    // new shift), not at their next periodic re-read.
    state.crm.refresh().await;
    let live = live_state(&state, v.device_id.as_ref()).await?;
    let zone = zone_of(&state, v.device_id.as_ref()).await;
    let im = state.immobiliser.view(&v.id).await.ok();
    let mut out = view(&state, v, live, zone);
    out.immobiliser = im;
    Ok(Json(out))
}

#[derive(Debug, Deserialize)]
pub struct TrackQuery {
    #[serde(default, deserialize_with = "super::params::opt_time")]
    pub from: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "super::params::opt_time")]
    pub to: Option<DateTime<Utc>>,
    pub limit: Option<u32>,
    /// `json` (default), `geojson` or `csv` (`/track` only).
    pub format: Option<String>,
}

fn range(q: &TrackQuery) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let to = q.to.unwrap_or_else(|| Utc::now() + Duration::minutes(10));
    let from = q.from.unwrap_or(to - Duration::hours(24));
    if from > to {
        return Err(ApiError::BadRequest("from must not be after to".into()));
    }
    Ok((from, to))
}

fn format_of(q: &TrackQuery) -> Result<Format, ApiError> {
    match q.format.as_deref() {
        None | Some("json") => Ok(Format::Json),
        Some("geojson") => Ok(Format::GeoJson),
        Some("csv") => Ok(Format::Csv),
        Some(other) => Err(ApiError::BadRequest(format!(
            "format: '{other}' is not one of json, geojson, csv (GPX is GET /api/v1/vehicles/{{id}}/track.gpx)"
        ))),
    }
}

/// The header naming the first retained day when part of the range asked for has expired.
pub const RETAINED_FROM_HEADER: &str = "fleetgate-retained-from";

/// Whether `[from, to)` reaches before the oldest retained day: wholly (410 Gone naming
/// `retained_from`) or partly (`Some(retained_from)`, said in the answer). Only with
/// `[retention] positions_days` set: without it nothing expires, and a range before the first
/// position is simply empty.
async fn retained(
    state: &AppState,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Option<NaiveDate>, ApiError> {
    let Some(days) = state.settings.retention.positions_days else {
        return Ok(None);
    };
    let Some(day) = state.store.archive.retained_from().await? else {
        return Ok(None);
    };
    expiry(day, days, from, to)
}

/// The first instant of a UTC day.
fn day_start(day: Day) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(day.start_ms()).unwrap_or_default()
}

/// The rule of [`retained`] for a known oldest day: wholly before it is 410 Gone, across it
/// names it, after it is plain.
fn expiry(
    day: Day,
    days: u32,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Option<NaiveDate>, ApiError> {
    let start = day_start(day);
    if to <= start {
        return Err(ApiError::Gone {
            message: format!(
                "positions before {} have expired ([retention] positions_days = {days}); \
                 the range {} .. {} lies wholly before retained_from",
                day.date(),
                from.to_rfc3339_opts(SecondsFormat::Secs, true),
                to.to_rfc3339_opts(SecondsFormat::Secs, true),
            ),
            retained_from: day.date(),
        });
    }
    Ok((from < start).then(|| day.date()))
}

fn with_retained(mut resp: Response, retained_from: Option<NaiveDate>) -> Response {
    if let Some(d) = retained_from {
        if let Ok(v) = HeaderValue::from_str(&d.to_string()) {
            resp.headers_mut().insert(RETAINED_FROM_HEADER, v);
        }
    }
    resp
}

/// What a track request reads: the vehicle, `from <= fix time < to` and the most fixes.
struct TrackRange {
    v: Vehicle,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: u32,
    retained_from: Option<NaiveDate>,
}

async fn track_range(state: &AppState, id: &str, q: &TrackQuery) -> Result<TrackRange, ApiError> {
    let (from, to) = range(q)?;
    let limit = q.limit.unwrap_or(10_000).clamp(1, MAX_TRACK_LIMIT);
    let v = find(state, id).await?;
    let retained_from = retained(state, from, to).await?;
    // Across `retained_from`, answer from it on: a day being dropped at this moment (its
    // watermark already raised) never shows half of itself.
    let from = match retained_from {
        Some(d) => from.max(day_start(Day::from_date(d))),
        None => from,
    };
    Ok(TrackRange {
        v,
        from,
        to,
        limit,
        retained_from,
    })
}

fn meta<'a>(v: &'a Vehicle, retained_from: Option<NaiveDate>) -> TrackMeta<'a> {
    TrackMeta {
        vehicle: &v.id.0,
        device: v.device_id.as_ref().map(|d| d.as_str()).unwrap_or(""),
        retained_from,
    }
}

/// `GET /vehicles/{id}/track?format=json|geojson|csv`.
pub async fn track(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<TrackQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let format = format_of(&q)?;
    let r = track_range(&state, &id, &q).await?;
    let track = match &r.v.device_id {
        Some(device) => {
            let core = state.store.core.as_ref();
            format.read(core, device, r.from, r.to, r.limit).await?
        }
        None => format.empty(),
    };
    let resp = track_format::render(&meta(&r.v, r.retained_from), track);
    Ok(with_retained(resp, r.retained_from))
}

/// `GET /vehicles/{id}/track.gpx`: the same track as GPX 1.1.
pub async fn track_gpx(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<TrackQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if let Some(f) = q.format.as_deref().filter(|f| *f != "gpx") {
        return Err(ApiError::BadRequest(format!(
            "format: track.gpx is GPX; '{f}' is asked of /track?format={f}"
        )));
    }
    let r = track_range(&state, &id, &q).await?;
    // A GPX track point: coordinates, altitude, time, satellites.
    let positions = match &r.v.device_id {
        Some(device) => {
            let cols = TrackColumns::Map;
            let core = &state.store.core;
            core.track_columns(device, r.from, r.to, r.limit, cols)
                .await?
        }
        None => Vec::new(),
    };
    let resp = (
        [(CONTENT_TYPE, "application/gpx+xml")],
        track_format::gpx(&meta(&r.v, r.retained_from), &positions),
    )
        .into_response();
    Ok(with_retained(resp, r.retained_from))
}

pub async fn summary(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<TrackQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if q.format.is_some() {
        return Err(ApiError::BadRequest(
            "format: /track/summary answers JSON only".into(),
        ));
    }
    let (from, to) = range(&q)?;
    let v = find(&state, &id).await?;
    let retained_from = retained(&state, from, to).await?;
    let from = match retained_from {
        Some(d) => from.max(day_start(Day::from_date(d))),
        None => from,
    };
    let Some(device) = v.device_id else {
        return Ok(with_retained(
            Json(TrackSummary::default()).into_response(),
            retained_from,
        ));
    };
    let s = summarize(state.store.core.as_ref(), &device, from, to, PAGE).await?;
    Ok(with_retained(Json(s).into_response(), retained_from))
}

/// Most days one `/summaries` request spans.
pub const MAX_SUMMARY_DAYS: i64 = 366;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummariesQuery {
    #[serde(default, deserialize_with = "super::params::opt_date")]
    pub from: Option<NaiveDate>,
    #[serde(default, deserialize_with = "super::params::opt_date")]
    pub to: Option<NaiveDate>,
}

/// `GET /vehicles/{id}/summaries?from=YYYY-MM-DD&to=YYYY-MM-DD`: the vehicle's daily
/// summaries, both days included (default: the last 31 days up to today, UTC).
pub async fn summaries(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<SummariesQuery>, QueryRejection>,
) -> Result<Json<rows::DaySummaries>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let to = q.to.unwrap_or_else(|| Utc::now().date_naive());
    let from = q.from.unwrap_or_else(|| {
        to.checked_sub_days(chrono::Days::new(30))
            .unwrap_or(NaiveDate::MIN)
    });
    if from > to {
        return Err(ApiError::BadRequest(format!(
            "from ({from}) must not be after to ({to})"
        )));
    }
    let span = (to - from).num_days() + 1;
    if span > MAX_SUMMARY_DAYS {
        return Err(ApiError::BadRequest(format!(
            "from..to spans {span} days; at most {MAX_SUMMARY_DAYS} per request"
        )));
    }
    let v = find(&state, &id).await?;
    let days = state
        .store
        .archive
        .summaries(&v.id, Day::from_date(from), Day::from_date(to))
        .await?;
    Ok(Json(rows::DaySummaries {
        vehicle_id: v.id,
        from,
        to,
        days: days.into_iter().map(Into::into).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_range_wholly_before_retained_from_is_gone_across_it_names_it_after_it_is_plain() {
        let day = Day::from_date(NaiveDate::from_ymd_opt(2026, 12, 1).unwrap());
        let at = |d: u32, h: u32| Utc.with_ymd_and_hms(2026, 12, d, h, 0, 0).unwrap();
        // `to` is exclusive: a range ending at the first retained millisecond is all gone.
        let nov20 = Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0).unwrap();
        match expiry(day, 30, nov20, at(1, 0)) {
            Err(ApiError::Gone {
                message,
                retained_from,
            }) => {
                assert_eq!(retained_from.to_string(), "2026-12-01");
                assert!(message.contains("positions_days = 30"), "{message}");
                assert!(message.contains("2026-11-20T00:00:00Z"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let across = expiry(day, 30, at(1, 0) - Duration::hours(1), at(1, 1)).unwrap();
        assert_eq!(across.map(|d| d.to_string()).as_deref(), Some("2026-12-01"));
        assert_eq!(expiry(day, 30, at(1, 0), at(2, 0)).unwrap(), None);
    }

    #[test]
    fn an_unknown_format_is_refused_naming_the_choices() {
        let q = |f: Option<&str>| TrackQuery {
            from: None,
            to: None,
            limit: None,
            format: f.map(str::to_string),
        };
        assert_eq!(format_of(&q(None)).unwrap(), Format::Json);
        assert_eq!(format_of(&q(Some("geojson"))).unwrap(), Format::GeoJson);
        assert_eq!(format_of(&q(Some("csv"))).unwrap(), Format::Csv);
        let e = format_of(&q(Some("gpx"))).unwrap_err().to_string();
        assert!(
            e.contains("json, geojson, csv") && e.contains("track.gpx"),
            "{e}"
        );
    }
}
