//! The geofence rule: a confirmed exit from a `service_area` zone adds the reason
//! `outside_service_area`; a confirmed entry lifts it when `[immobiliser] lift_on_return`.
//! It goes through [`ImmobiliserHandle::set_reason`] like every other rule, so the block still
//! waits for the car to be safely stopped.

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{BlockReason, ImmobiliserHandle};
use crate::geofence::stage::ZoneNotice;
use crate::geofence::{ZoneEventKind, ZoneKind};

/// The actor name written to the audit trail for this rule.
pub const RULE: &str = "rule:service_area";

/// What the rule asks of the immobiliser for one zone event, if anything.
pub fn decide(notice: &ZoneNotice, lift_on_return: bool) -> Option<bool> {
    if notice.event.zone_kind != ZoneKind::ServiceArea {
        return None;
    }
    match notice.event.kind {
        ZoneEventKind::Exit => Some(true),
        ZoneEventKind::Enter if lift_on_return => Some(false),
        ZoneEventKind::Enter => None,
    }
}

/// Feed zone events into the immobiliser until the zone stage stops.
pub fn spawn(
    immobiliser: ImmobiliserHandle,
    mut notices: mpsc::Receiver<ZoneNotice>,
    lift_on_return: bool,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(n) = notices.recv().await {
            let Some(active) = decide(&n, lift_on_return) else {
                continue;
            };
            let Some(vehicle) = n.vehicle.clone() else {
                tracing::warn!(device = %n.device, "zone event for a device without a vehicle");
                continue;
            };
            let comment = format!(
                "{} zone {} at {} ({:.5}, {:.5})",
                if active { "left" } else { "returned to" },
                n.event.zone,
                n.event.time.to_rfc3339(),
                n.event.lat,
                n.event.lon
            );
            if let Err(e) = immobiliser
                .set_reason(
                    &vehicle,
                    BlockReason::outside_service_area(),
                    active,
                    RULE,
                    Some(comment),
                )
                .await
            {
                tracing::error!(%vehicle, error = %e, "zone rule could not reach the immobiliser");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geofence::ZoneEvent;
    use crate::model::DeviceId;
    use chrono::Utc;

    fn notice(kind: ZoneEventKind, zone_kind: ZoneKind) -> ZoneNotice {
        ZoneNotice {
            vehicle: None,
            device: DeviceId::new("1"),
            event: ZoneEvent {
                kind,
                zone: "z".into(),
                zone_kind,
                time: Utc::now(),
                lat: 55.0,
                lon: 37.0,
            },
        }
    }

    #[test]
    fn service_area_exit_adds_and_entry_lifts_only_when_configured() {
        assert_eq!(
            decide(&notice(ZoneEventKind::Exit, ZoneKind::ServiceArea), true),
            Some(true)
        );
        assert_eq!(
            decide(&notice(ZoneEventKind::Enter, ZoneKind::ServiceArea), true),
            Some(false)
        );
        assert_eq!(
            decide(&notice(ZoneEventKind::Enter, ZoneKind::ServiceArea), false),
            None
        );
        assert_eq!(
            decide(&notice(ZoneEventKind::Exit, ZoneKind::Parking), true),
            None
        );
        assert_eq!(
            decide(&notice(ZoneEventKind::Exit, ZoneKind::Custom), true),
            None
        );
    }
}
