//! The task that answers requests other instances forward to this one: woken by
//! `NOTIFY fleetgate_requests` (LISTEN on a connection of its own), and polling every
//! `[cluster] poll_ms` anyway since a notification sent while it was reconnecting is lost.
//! It also renews this instance's device sessions every `heartbeat_s`.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgNotification};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Cluster, Forwarded, CHANNEL};
use crate::immobiliser::ImmobiliserHandle;
use crate::ingest::Sessions;

/// Start serving; `local` must be the immobiliser's handle that never forwards, `sessions`
/// the registry of this instance's live connections (renewed in `device_sessions`).
pub fn spawn(
    cluster: Arc<Cluster>,
    local: ImmobiliserHandle,
    sessions: Arc<Sessions>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut listener = listen(&cluster).await;
        let mut poll = tokio::time::interval(Duration::from_millis(cluster.cfg.poll_ms));
        let mut beat = tokio::time::interval(Duration::from_secs(cluster.cfg.heartbeat_s));
        for t in [&mut poll, &mut beat] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                n = recv(&mut listener) => match n {
                    Ok(n) if n.payload() == cluster.instance => serve(&cluster, &local).await,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster: LISTEN connection lost; polling until it is back");
                        tokio::time::sleep(Duration::from_secs(1)).await;
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

async fn listen(cluster: &Cluster) -> Option<PgListener> {
    let mut l = match PgListener::connect_with(&cluster.pool).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cluster: no LISTEN connection; polling only");
            return None;
        }
    };
    match l.listen(CHANNEL).await {
        Ok(()) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "cluster: LISTEN failed; polling only");
            None
        }
    }
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
                serde_json::to_string(&Err::<(), _>(crate::immobiliser::ImmobError::Storage(
                    format!("unreadable request: {e}"),
                )))
                .unwrap_or_else(|_| "null".into())
            }
        };
        if let Err(e) = cluster.answer(id, &answer).await {
            tracing::warn!(request = id, error = %e, "cluster: answer not stored");
        }
    }
}
