//! The geofence stage as the CRM rules' [`FleetZones`]: a fix is inside the service area when
//! a `service_area` zone contains it (everywhere, when none is loaded); the parking lot is the
//! `parking` or `depot` zone that contains the car. A point test on the zone set in force, not
//! the debounced membership: "on line" already asks for two minutes of driving inside.

use async_trait::async_trait;

use super::FleetZones;
use crate::geofence::stage::ZonesHandle;
use crate::geofence::zone::ZoneKind;
use crate::model::VehicleId;

#[async_trait]
impl FleetZones for ZonesHandle {
    async fn inside_service_area(&self, _vehicle: &VehicleId, lat: f64, lon: f64) -> bool {
        let set = self.current();
        if !set.zones().iter().any(|z| z.kind == ZoneKind::ServiceArea) {
            return true;
        }
        let inside = set
            .containing(lat, lon)
            .any(|z| z.kind == ZoneKind::ServiceArea);
        inside
    }

    async fn parking_lot(&self, _vehicle: &VehicleId, lat: f64, lon: f64) -> Option<String> {
        self.current()
            .containing(lat, lon)
            .find(|z| matches!(z.kind, ZoneKind::Parking | ZoneKind::Depot))
            .map(|z| z.name.clone())
    }
}
