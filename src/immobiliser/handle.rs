//! The handle every rule and the API use to add and lift reasons, and the view of one
//! vehicle's immobiliser they get back. Requests go to the actor over a bounded channel —
//! or, with several instances on one PostgreSQL, to the instance holding the vehicle's
//! tracker (`crate::cluster`), and views are then read from the database every instance
//! writes through.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::store::{ImmobiliserStore, VehicleImmobRow};
use super::{BlockReason, ImmobError, ImmobState, Machine};
use crate::cluster::Cluster;
use crate::model::VehicleId;

/// `immobiliser` in the vehicle view: `{state, reasons, since}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImmobView {
    pub state: ImmobState,
    pub reasons: Vec<BlockReason>,
    /// When `state` was entered; `null` for a vehicle never blocked.
    pub since: Option<DateTime<Utc>>,
    /// Who added each reason, when and why.
    pub reason_details: Vec<ReasonView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReasonView {
    pub reason: BlockReason,
    pub since: DateTime<Utc>,
    pub actor: String,
    pub comment: Option<String>,
}

impl ImmobView {
    /// A vehicle never blocked.
    pub fn running() -> ImmobView {
        ImmobView::of(None)
    }

    fn stored(row: Option<VehicleImmobRow>) -> ImmobView {
        ImmobView::of(row.map(machine_of).as_ref())
    }

    pub(super) fn of(m: Option<&Machine>) -> ImmobView {
        match m {
            None => ImmobView {
                state: ImmobState::Running,
                reasons: Vec::new(),
                since: None,
                reason_details: Vec::new(),
            },
            Some(m) => ImmobView {
                state: m.state,
                reasons: m.reasons.keys().cloned().collect(),
                since: Some(m.since),
                reason_details: m
                    .reasons
                    .iter()
                    .map(|(r, e)| ReasonView {
                        reason: r.clone(),
                        since: e.since,
                        actor: e.actor.clone(),
                        comment: e.comment.clone(),
                    })
                    .collect(),
            },
        }
    }
}

pub(super) fn machine_of(v: VehicleImmobRow) -> Machine {
    Machine {
        state: v.state,
        since: v.since,
        reasons: v.reasons,
    }
}

/// A change to one vehicle's reason set.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReasonChange {
    pub vehicle: VehicleId,
    /// `None` with `active: false`: lift every reason (`unblock {reason: "all"}`).
    pub reason: Option<BlockReason>,
    pub active: bool,
    /// Skip the safety wait (refused unless `[immobiliser] allow_force`).
    pub force: bool,
    /// Rule name or API token name.
    pub actor: String,
    pub comment: Option<String>,
}

pub(super) enum Request {
    Change {
        change: ReasonChange,
        reply: oneshot::Sender<Result<ImmobView, ImmobError>>,
    },
    View {
        vehicle: VehicleId,
        reply: oneshot::Sender<ImmobView>,
    },
    Views {
        reply: oneshot::Sender<HashMap<VehicleId, ImmobView>>,
    },
    /// The vehicle's tracker may have changed (API `PUT`): re-read its pairing and retire
    /// commands issued for a tracker it no longer has.
    Rebind {
        vehicle: VehicleId,
        reply: oneshot::Sender<Result<(), ImmobError>>,
    },
    /// Reload a vehicle from the database (changed by another instance).
    Adopt {
        vehicle: VehicleId,
        reply: oneshot::Sender<Result<(), ImmobError>>,
    },
}

/// Where requests go when several instances share one PostgreSQL.
#[derive(Clone)]
pub(super) struct Routing {
    pub cluster: Arc<Cluster>,
    pub store: Arc<dyn ImmobiliserStore>,
}

/// The one path by which every rule and the API add and lift reasons. Cheap to clone.
#[derive(Clone)]
pub struct ImmobiliserHandle {
    pub(super) tx: mpsc::Sender<Request>,
    pub(super) routing: Option<Routing>,
}

impl ImmobiliserHandle {
    /// Add (`active`) or lift a reason; returns the vehicle's immobiliser afterwards.
    pub async fn set_reason(
        &self,
        vehicle: &VehicleId,
        reason: BlockReason,
        active: bool,
        actor: &str,
        comment: Option<String>,
    ) -> Result<ImmobView, ImmobError> {
        self.change(ReasonChange {
            vehicle: vehicle.clone(),
            reason: Some(reason),
            active,
            force: false,
            actor: actor.to_string(),
            comment,
        })
        .await
    }

    /// The general form of [`Self::set_reason`] (forced blocks, lifting every reason).
    /// With several instances, made by the instance holding the vehicle's tracker.
    pub async fn change(&self, change: ReasonChange) -> Result<ImmobView, ImmobError> {
        if let Some(r) = &self.routing {
            let owner = r
                .cluster
                .owner_of(&change.vehicle)
                .await
                .map_err(|e| ImmobError::Storage(e.to_string()))?;
            if let Some(owner) = owner.filter(|o| o != r.cluster.instance()) {
                return super::cluster::forward_change(&r.cluster, &owner, change).await;
            }
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Change { change, reply })
            .await
            .map_err(|_| ImmobError::Closed)?;
        rx.await.map_err(|_| ImmobError::Closed)?
    }

    /// This actor only, never forwarded: what another instance's forwarded request uses.
    pub fn local(&self) -> ImmobiliserHandle {
        ImmobiliserHandle {
            tx: self.tx.clone(),
            routing: None,
        }
    }

    /// Reload the vehicle's immobiliser from the database if this instance holds its tracker.
    pub async fn adopt(&self, vehicle: &VehicleId) -> Result<(), ImmobError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Adopt {
                vehicle: vehicle.clone(),
                reply,
            })
            .await
            .map_err(|_| ImmobError::Closed)?;
        rx.await.map_err(|_| ImmobError::Closed)?
    }

    /// The vehicle's tracker may have changed: commands issued for its old tracker are
    /// superseded (audited) and never written to the tracker in its new car.
    pub async fn rebind(&self, vehicle: &VehicleId) -> Result<(), ImmobError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Rebind {
                vehicle: vehicle.clone(),
                reply,
            })
            .await
            .map_err(|_| ImmobError::Closed)?;
        rx.await.map_err(|_| ImmobError::Closed)?
    }

    pub async fn view(&self, vehicle: &VehicleId) -> Result<ImmobView, ImmobError> {
        if let Some(r) = &self.routing {
            let (row, _) = r
                .store
                .immobiliser_vehicle(vehicle)
                .await
                .map_err(|e| ImmobError::Storage(e.to_string()))?;
            return Ok(ImmobView::stored(row));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::View {
                vehicle: vehicle.clone(),
                reply,
            })
            .await
            .map_err(|_| ImmobError::Closed)?;
        rx.await.map_err(|_| ImmobError::Closed)
    }

    /// Every vehicle the immobiliser has a state for (others are `running`).
    pub async fn views(&self) -> Result<HashMap<VehicleId, ImmobView>, ImmobError> {
        if let Some(r) = &self.routing {
            let snap = r
                .store
                .immobiliser_load()
                .await
                .map_err(|e| ImmobError::Storage(e.to_string()))?;
            return Ok(snap
                .vehicles
                .into_iter()
                .map(|v| (v.vehicle_id.clone(), ImmobView::stored(Some(v))))
                .collect());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Views { reply })
            .await
            .map_err(|_| ImmobError::Closed)?;
        rx.await.map_err(|_| ImmobError::Closed)
    }
}
