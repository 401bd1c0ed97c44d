//! Geofences: zone model, index, exact point-in-polygon, debounced per-vehicle state.
//!
//! - [`zone`]: a [`Zone`] is one GeoJSON Feature (`name`, `kind`, optional `buffer_m` and
//!   debounce overrides; Polygon, MultiPolygon or Point + `radius_m`). Shipped zones live in
//!   `geofences/*.geojson` (OSM data, ODbL: see `geofences/NOTICE.md`).
//! - [`index`]: [`ZoneSet`], immutable per load (swap an `Arc` on reload): an R-tree of zone
//!   envelopes, then an exact grid-accelerated point-in-polygon per candidate (`pip`), and
//!   boundary distances from a lazily built edge R-tree (`distance`).
//! - [`guard`] and [`edit`]: checks a zone change passes before it is stored or installed
//!   (geometry, `[lat, lon]` order, how many cars it moves out of the service area).
//! - [`stage`]: the task that runs committed fixes through every device's zones and stores
//!   memberships and events through [`store::ZoneStore`], the geofences' storage port.
//! - [`tracker`]: [`VehicleZones`], the pure debounce state machine (fix time injected), and
//!   [`JumpDetector`].
//! - [`stage`]: the zone stage: one task fed by committed fixes (after the pipeline's
//!   shards and writer), holding every vehicle's [`VehicleZones`], storing zone events and
//!   sending notices to the immobiliser's zone rule.
//! - [`config`]: the `[geofences]` section.
//!
//! Coordinates are WGS84 degrees; the API takes `(lat, lon)`, geometry stores `x = lon`.
//! A point on a boundary is inside (as `geo::Intersects`).
//!
//! ```text
//! let set = Arc::new(ZoneSet::load_dir("geofences")?);
//! let events = vehicle_zones.observe(&set, &fix);          // per committed fix, in the zone stage
//! let api = (vehicle_zones.inside_service_area(), vehicle_zones.zones().collect::<Vec<_>>());
//! ```

pub mod config;
mod distance;
pub mod edit;
pub mod guard;
pub mod index;
mod pip;
pub mod stage;
pub mod store;
pub mod tracker;
pub mod zone;

pub use index::{zones_from_dir, ZoneSet};
pub use tracker::{
    Debounce, DebounceConfig, Fix, JumpDetector, VehicleZones, ZoneEvent, ZoneEventKind,
};
pub use zone::{zones_from_geojson, DebounceOverride, Shape, Zone, ZoneError, ZoneKind};
