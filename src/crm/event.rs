//! Events fleetgate sends to the CRM: what happened to a car, as stored in the outbox and as
//! POSTed by the webhook connector (the JSON shapes are a contract: docs/crm.md).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::model::VehicleId;

/// The deal stages fleetgate moves a deal to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageName {
    OnLine,
    WantsToReturn,
}

/// What an event says. Serialized with `"type"` as the tag.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Payload {
    /// Move the deal to a stage. `source`: `tracker` (fixes or a tracker input) or `api`.
    StageChanged {
        stage: StageName,
        at: DateTime<Utc>,
        source: String,
        #[serde(default)]
        lat: Option<f64>,
        #[serde(default)]
        lon: Option<f64>,
        #[serde(default)]
        odometer_km: Option<f64>,
    },
    /// The car's odometer (an inspection was completed, or a shift started).
    Mileage { odometer_km: f64, at: DateTime<Utc> },
    /// Where a moving car is (at most every `[crm] location_interval_min`): written to the car
    /// card's location field. Only the newest pending one of a car is kept (see
    /// [`Payload::coalesces`]).
    Location {
        lat: f64,
        lon: f64,
        at: DateTime<Utc>,
    },
    /// The car confirmed a block (`blocked`, with every reason standing, any source), or the
    /// unblock once the last reason was lifted; `text` names the reasons in Russian (a note).
    BlockState {
        blocked: bool,
        reasons: Vec<String>,
        #[serde(default)]
        text: String,
    },
    /// A message the CRM should deliver to the driver (warning before/at a block).
    DriverMessage {
        driver_id: Option<String>,
        reason: String,
        text: String,
    },
    /// The inspection: due soon (`inspection_warn_days` / `inspection_warn_km`), or postponed
    /// (`note` names how often and why). `left_text` goes to `[crm.fields]
    /// inspection_left_field_*`, `note` to a CRM note.
    InspectionDue {
        left_days: Option<i64>,
        left_km: Option<f64>,
        left_text: String,
        note: String,
    },
    /// A dated document (diagnostic card, OSAGO) expires soon (`days_left` ≥ 0) or has expired.
    DocumentExpiring {
        document: String,
        expires_on: NaiveDate,
        days_left: i64,
    },
}

impl Payload {
    /// A newer event of this kind replaces a pending older one of the same car (one pending
    /// location write per car, however long the CRM is away).
    pub fn coalesces(&self) -> bool {
        matches!(self, Payload::Location { .. })
    }

    /// A fact about the car rather than the lease: with `[crm] car_entity = "company"` it goes
    /// to the car's company card. Stage moves touch both (the stage on the deal, location and
    /// mileage on the card); driver messages stay on the driver's deal.
    pub fn about_car(&self) -> bool {
        !matches!(self, Payload::DriverMessage { .. })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Payload::StageChanged { .. } => "stage_changed",
            Payload::Mileage { .. } => "mileage",
            Payload::Location { .. } => "location",
            Payload::BlockState { .. } => "block_state",
            Payload::DriverMessage { .. } => "driver_message",
            Payload::DocumentExpiring { .. } => "document_expiring",
            Payload::InspectionDue { .. } => "inspection_due",
        }
    }
}

/// Why a pending event was dropped for a newer one of the same kind ([`Payload::coalesces`]).
pub const COALESCED: &str = "superseded: a newer event of the same kind for this car";

/// An event about to be written to the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub vehicle_id: VehicleId,
    pub deal_id: Option<String>,
    pub payload: Payload,
}

/// Delivery state of an outbox event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Delivered,
    Dead,
    /// Never to be sent: about a deal the car has left (handed back, deal changed) or
    /// superseded before delivery. Purged like delivered events.
    Dropped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivered => "delivered",
            Status::Dead => "dead",
            Status::Dropped => "dropped",
        }
    }
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "pending" => Some(Status::Pending),
            "delivered" => Some(Status::Delivered),
            "dead" => Some(Status::Dead),
            "dropped" => Some(Status::Dropped),
            _ => None,
        }
    }
}

/// An event as stored in the outbox.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutboxEvent {
    pub id: i64,
    /// Sent as the idempotency key: the CRM side drops repeats of a key it has seen.
    pub key: String,
    pub vehicle_id: VehicleId,
    pub deal_id: Option<String>,
    pub payload: Payload,
    pub status: Status,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// The car's company card (`[crm] car_entity = "company"`): not stored with the event, set
    /// by the outbox worker from the vehicle (or the deal's linked company) before delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub company_id: Option<String>,
}

impl OutboxEvent {
    /// The webhook body: envelope fields plus the payload's own.
    pub fn webhook_body(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.payload).unwrap_or_default();
        if let Some(map) = v.as_object_mut() {
            map.insert("id".into(), self.key.clone().into());
            map.insert("vehicle_id".into(), self.vehicle_id.0.clone().into());
            map.insert(
                "deal_id".into(),
                self.deal_id
                    .clone()
                    .map(serde_json::Value::from)
                    .unwrap_or_default(),
            );
            map.insert("created_at".into(), self.created_at.to_rfc3339().into());
        }
        v
    }
}
