//! The immobiliser across instances (docs/scaling.md): what one instance asks of another
//! ([`Forwarded`]), forwarding a block or unblock to the instance holding the vehicle's
//! tracker ([`forward_change`]), and the task that answers such requests ([`spawn`]): woken
//! by `NOTIFY fleetgate_requests` (LISTEN on a connection of its own), and polling every
//! `[cluster] poll_ms` anyway since a notification sent while it was reconnecting is lost.
//! It also renews this instance's device sessions every `heartbeat_s`. The rows and the
//! notifications are `crate::cluster`'s.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgNotification};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::handle::{ImmobView, ReasonChange};
use super::{ImmobError, ImmobiliserHandle};
use crate::cluster::{Cluster, Reply};
use crate::ingest::Sessions;
use crate::model::VehicleId;
use crate::pipeline::store::StorageError;

/// What one instance asks of another.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Forwarded {
    /// Add or lift a reason; answered with the vehicle's view.
    Change { change: ReasonChange },
    /// The vehicle's stored immobiliser changed elsewhere: reload it (no answer awaited).
    Adopt { vehicle: VehicleId },
}

/// Have the instance `to`, holding the vehicle's tracker, make the change; wait for its
/// answer (at most `[cluster] forward_timeout_s`).
pub async fn forward_change(
    cluster: &Cluster,
    to: &str,
    change: ReasonChange,
) -> Result<ImmobView, ImmobError> {
    let result = forward_and_wait(cluster, to, change).await;
    let outcome = match &result {
        Ok(_) => "answered",
        Err(ImmobError::OwnerSilent(..)) => "timeout",
        Err(ImmobError::Storage(_)) => "error",
        // The owner's own verdict (force refused, unknown vehicle…).
        Err(_) => "answered",
    };
    metrics::counter!("fleetgate_cluster_forwarded_total", "outcome" => outcome).increment(1);
    result
}

async fn forward_and_wait(
    cluster: &Cluster,
    to: &str,
    change: ReasonChange,
) -> Result<ImmobView, ImmobError> {
    let vehicle = change.vehicle.clone();
    let storage = |e: StorageError| ImmobError::Storage(e.to_string());
    let id = cluster
        .send(to, &Forwarded::Change { change })
        .await
        .map_err(storage)?;
    tracing::debug!(%vehicle, to, request = id, "immobiliser request forwarded");
    let gave_up = || ImmobError::OwnerSilent(to.to_string(), cluster.forward_timeout_s());
    match cluster.await_reply(id).await.map_err(storage)? {
        Reply::Answer(a) => serde_json::from_str::<Result<ImmobView, ImmobError>>(&a)
            .map_err(|e| ImmobError::Storage(format!("answer from {to}: {e}")))?,
        Reply::Unanswered => Err(gave_up()),
        Reply::TimedOut => {
            tracing::warn!(%vehicle, to, request = id, "instance holding the tracker did not answer");
            Err(gave_up())
        }
    }
}

/// Start serving; `local` must be the immobiliser's handle that never forwards, `sessions`
/// the registry of this instance's live connections (renewed in `device_sessions`).
pub fn spawn(
    cluster: Arc<Cluster>,
    local: ImmobiliserHandle,
    sessions: Arc<Sessions>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut listener = cluster.listener().await;
        let mut poll = tokio::time::interval(cluster.poll_every());
        let mut beat = tokio::time::interval(cluster.heartbeat_every());
        for t in [&mut poll, &mut beat] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                n = recv(&mut listener) => match n {
                    Ok(n) if n.payload() == cluster.instance() => serve(&cluster, &local).await,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster: LISTEN connection lost; polling until it is back");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                },
                _ = poll.tick() => serve(&cluster, &local).await,
                _ = beat.tick() => {
                    if let Err(e) = cluster.heartbeat(&sessions.live()).await {
                        tracing::warn!(error = %e, "cluster: heartbeat failed");
                    }
                }
            }
        }
    })
}

async fn recv(l: &mut Option<PgListener>) -> Result<PgNotification, sqlx::Error> {
    match l {
        // Reconnects (and listens again) on the call after an error.
        Some(l) => l.recv().await,
        None => std::future::pending().await,
    }
}

/// Handle every request addressed to this instance, oldest first.
async fn serve(cluster: &Cluster, local: &ImmobiliserHandle) {
    let requests = match cluster.claim().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cluster: requests not read");
            return;
        }
    };
    for (id, body) in requests {
        let kind = match serde_json::from_str::<Forwarded>(&body) {
            Ok(Forwarded::Change { .. }) => "change",
            Ok(Forwarded::Adopt { .. }) => "adopt",
            Err(_) => "invalid",
        };
        metrics::counter!("fleetgate_cluster_served_total", "type" => kind).increment(1);
        let answer = match serde_json::from_str::<Forwarded>(&body) {
            Ok(Forwarded::Change { change }) => {
                let result = local.change(change).await;
                serde_json::to_string(&result).unwrap_or_else(|_| "null".into())
            }
            Ok(Forwarded::Adopt { vehicle }) => {
                if let Err(e) = local.adopt(&vehicle).await {
                    tracing::warn!(%vehicle, error = %e, "cluster: vehicle not taken over");
                }
                "null".into()
            }
            Err(e) => {
                tracing::warn!(request = id, error = %e, "cluster: unreadable request");
                serde_json::to_string(&Err::<(), _>(ImmobError::Storage(format!(
                    "unreadable request: {e}"
                ))))
                .unwrap_or_else(|_| "null".into())
            }
        };
        if let Err(e) = cluster.answer(id, &answer).await {
            tracing::warn!(request = id, error = %e, "cluster: answer not stored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::immobiliser::{BlockReason, ImmobState};

    #[test]
    fn requests_and_answers_survive_the_trip_through_the_database() {
        let change = ReasonChange {
            vehicle: VehicleId("car-7".into()),
            reason: Some(BlockReason::manual()),
            active: true,
            force: true,
            actor: "ops-ivanova".into(),
            comment: Some("долг".into()),
        };
        let text = serde_json::to_string(&Forwarded::Change { change }).unwrap();
        assert!(text.contains(r#""type":"change""#), "{text}");
        match serde_json::from_str::<Forwarded>(&text).unwrap() {
            Forwarded::Change { change } => {
                assert_eq!(change.vehicle.0, "car-7");
                assert_eq!(change.reason, Some(BlockReason::manual()));
                assert!(change.active && change.force);
                assert_eq!(change.comment.as_deref(), Some("долг"));
            }
            other => panic!("{other:?}"),
        }
        let ok: Result<ImmobView, ImmobError> = Ok(ImmobView {
            state: ImmobState::Blocking,
            reasons: vec![BlockReason::manual()],
            since: Some(chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap()),
            reason_details: Vec::new(),
        });
        let back: Result<ImmobView, ImmobError> =
            serde_json::from_str(&serde_json::to_string(&ok).unwrap()).unwrap();
        assert_eq!(back, ok);
        for e in [
            ImmobError::ForceNotAllowed,
            ImmobError::UnknownVehicle("car-9".into()),
            ImmobError::OwnerSilent("fg-b".into(), 15),
        ] {
            let r: Result<ImmobView, ImmobError> = Err(e.clone());
            let back: Result<ImmobView, ImmobError> =
                serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
            assert_eq!(
                back,
                Err(e),
                "the owner's verdict reaches the API unchanged"
            );
        }
        assert!(serde_json::from_str::<Forwarded>(r#"{"type":"reboot"}"#).is_err());
    }
}
