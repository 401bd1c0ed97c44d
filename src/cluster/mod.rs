//! Several fleetgate instances on one PostgreSQL (docs/scaling.md).
//!
//! - Each instance has a name (`[cluster] instance_id`) and records the devices whose TCP
//!   connection it holds in `device_sessions`, renewed by a heartbeat; a row of an instance
//!   that died stops counting after `session_ttl_s`.
//! - **One owner per vehicle's immobiliser:** the instance holding the vehicle's tracker
//!   connection runs its state machine (it sees the fixes that make a block safe and the
//!   device's answers). A block or unblock arriving at another instance is forwarded to it
//!   (`immobiliser::cluster::forward_change`: a `cluster_requests` row,
//!   `NOTIFY fleetgate_requests`, a poll as fallback) and answered with the vehicle's view. A vehicle whose tracker is
//!   connected nowhere is handled where the request arrives, from and back to the database;
//!   whichever instance the tracker then connects to takes the vehicle over from the database.
//!
//! This module is the transport: sessions, requests and answers as rows. What the requests
//! mean (and the task that serves them) belongs to the immobiliser (`immobiliser/cluster.rs`).
//!
//! SQLite is one instance: there is no cluster and none of this runs.

pub mod config;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::Row;

pub use config::ClusterConfig;

use crate::model::{DeviceId, VehicleId};
use crate::pipeline::store::StorageError;
use crate::storage::deadline::{bounded, Deadlines};
use crate::storage::StorageConfig;

/// The channel instances LISTEN on; the payload is the name of the instance to wake.
const CHANNEL: &str = "fleetgate_requests";
/// The database's clock in Unix milliseconds: instances' clocks may differ, its does not.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// How a forwarded request ended, as [`Cluster::await_reply`] saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// The other instance's answer, as it stored it.
    Answer(String),
    /// Closed without an answer (the other instance gave up on it).
    Unanswered,
    /// No answer within `[cluster] forward_timeout_s`; the request is now closed.
    TimedOut,
}

/// This instance's seat in the cluster.
pub struct Cluster {
    instance: String,
    cfg: ClusterConfig,
    pool: PgPool,
    /// Every call has a deadline, as storage's (`[storage] statement_timeout_s`).
    deadlines: Deadlines,
}

impl Cluster {
    /// Connect a small pool of its own (the LISTEN connection must not sit behind a
    /// transaction pooler) and drop the sessions a previous run of this instance left.
    pub async fn connect(
        storage: &StorageConfig,
        cfg: &ClusterConfig,
    ) -> Result<Arc<Cluster>, StorageError> {
        let opts = PgConnectOptions::from_str(&storage.url)?.application_name("fleetgate-cluster");
        let opts = crate::storage::deadline::server_bounds(opts, storage.deadlines());
        // As the store's pool: a connection silent on release is closed, not kept
        // (crate::storage::deadline).
        let release_bound = storage.deadlines().call;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .after_release(move |conn, _| {
                Box::pin(crate::storage::deadline::released_alive(
                    conn,
                    release_bound,
                ))
            })
            .connect_with(opts)
            .await?;
        let c = Cluster {
            instance: cfg.instance(),
            cfg: cfg.clone(),
            pool,
            deadlines: storage.deadlines(),
        };
        c.leave().await?;
        tracing::info!(instance = %c.instance, "cluster: joined");
        Ok(Arc::new(c))
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The device identified itself on connection `conn` of this instance.
    pub async fn session_online(&self, device: &DeviceId, conn: u64) -> Result<(), StorageError> {
        bounded("cluster_session_online", self.deadlines.call, async {
            sqlx::query(&format!(
                "INSERT INTO device_sessions (device_id, instance_id, conn, connected_at, heartbeat_at) \
                 VALUES ($1, $2, $3, {NOW_MS}, {NOW_MS}) ON CONFLICT (device_id) DO UPDATE SET \
                 instance_id = excluded.instance_id, conn = excluded.conn, \
                 connected_at = excluded.connected_at, heartbeat_at = excluded.heartbeat_at"
            ))
            .bind(device.as_str())
            .bind(&self.instance)
            .bind(conn as i64)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    /// Connection `conn` of the device closed (a newer one, here or elsewhere, stays).
    pub async fn session_offline(&self, device: &DeviceId, conn: u64) -> Result<(), StorageError> {
        bounded("cluster_session_offline", self.deadlines.call, async {
            sqlx::query(
                "DELETE FROM device_sessions WHERE device_id = $1 AND instance_id = $2 AND conn = $3",
            )
            .bind(device.as_str())
            .bind(&self.instance)
            .bind(conn as i64)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    /// The live instance holding the vehicle's tracker connection, if any.
    pub async fn owner_of(&self, vehicle: &VehicleId) -> Result<Option<String>, StorageError> {
        bounded("cluster_owner_of", self.deadlines.call, async {
            Ok(sqlx::query_scalar(&format!(
                "SELECT s.instance_id FROM vehicles v JOIN device_sessions s ON s.device_id = v.device_id \
                 WHERE v.id = $1 AND s.heartbeat_at > {NOW_MS} - $2"
            ))
            .bind(&vehicle.0)
            .bind(self.ttl_ms())
            .fetch_optional(&self.pool)
            .await?)
        })
        .await
    }

    fn ttl_ms(&self) -> i64 {
        (self.cfg.session_ttl_s * 1000) as i64
    }

    /// Renew this instance's sessions from its live connections (`live`: device, connection
    /// id) — which also restores a row whose write failed, and drops one whose delete failed —
    /// without taking a device from another live instance; drop long-dead instances' sessions
    /// and old requests.
    pub async fn heartbeat(&self, live: &[(DeviceId, u64)]) -> Result<(), StorageError> {
        bounded("cluster_heartbeat", self.deadlines.bulk, async {
            let devices: Vec<&str> = live.iter().map(|(d, _)| d.as_str()).collect();
            let conns: Vec<i64> = live.iter().map(|(_, c)| *c as i64).collect();
            let mut tx = self.pool.begin().await?;
            sqlx::query(&format!(
                "INSERT INTO device_sessions AS s (device_id, instance_id, conn, connected_at, heartbeat_at) \
                 SELECT d, $3, c, {NOW_MS}, {NOW_MS} FROM UNNEST($1::text[], $2::int8[]) AS t(d, c) \
                 ON CONFLICT (device_id) DO UPDATE SET instance_id = excluded.instance_id, \
                 conn = excluded.conn, heartbeat_at = excluded.heartbeat_at, \
                 connected_at = CASE WHEN s.instance_id = excluded.instance_id AND s.conn = excluded.conn \
                 THEN s.connected_at ELSE excluded.connected_at END \
                 WHERE s.instance_id = excluded.instance_id OR s.heartbeat_at < {NOW_MS} - $4"
            ))
            .bind(&devices)
            .bind(&conns)
            .bind(&self.instance)
            .bind(self.ttl_ms())
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "DELETE FROM device_sessions WHERE instance_id = $1 AND NOT (device_id = ANY($2::text[]))",
            )
            .bind(&self.instance)
            .bind(&devices)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            sqlx::query(&format!(
                "DELETE FROM device_sessions WHERE heartbeat_at < {NOW_MS} - 2 * $1"
            ))
            .bind(self.ttl_ms())
            .execute(&self.pool)
            .await?;
            sqlx::query(&format!(
                "DELETE FROM cluster_requests WHERE created_at < {NOW_MS} - 3600000"
            ))
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    /// Forget every session of this instance (start, clean shutdown).
    pub async fn leave(&self) -> Result<(), StorageError> {
        bounded("cluster_leave", self.deadlines.call, async {
            sqlx::query("DELETE FROM device_sessions WHERE instance_id = $1")
                .bind(&self.instance)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
        .await
    }

    /// Queue a request (`msg` as JSON) for instance `to` and wake it; returns its id.
    pub async fn send(&self, to: &str, msg: &impl Serialize) -> Result<i64, StorageError> {
        bounded("cluster_send", self.deadlines.call, async {
            let body = serde_json::to_string(msg)
                .map_err(|e| StorageError::Invalid(format!("cluster request: {e}")))?;
            let row = sqlx::query(&format!(
                "WITH r AS (INSERT INTO cluster_requests (instance_id, sender, body, created_at) \
                 VALUES ($1, $2, $3, {NOW_MS}) RETURNING id) \
                 SELECT r.id, pg_notify($4, $1) FROM r"
            ))
            .bind(to)
            .bind(&self.instance)
            .bind(body)
            .bind(CHANNEL)
            .fetch_one(&self.pool)
            .await?;
            Ok(row.try_get(0)?)
        })
        .await
    }

    /// Wait for the answer to request `id` (at most `[cluster] forward_timeout_s`), polling
    /// with a backoff from 5 to 100 ms.
    pub async fn await_reply(&self, id: i64) -> Result<Reply, StorageError> {
        bounded("cluster_await_reply", self.reply_bound(), async {
            let until = Instant::now() + Duration::from_secs(self.cfg.forward_timeout_s);
            let mut delay = Duration::from_millis(5);
            loop {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(100));
                let row = sqlx::query(
                    "SELECT answer FROM cluster_requests WHERE id = $1 AND done_at IS NOT NULL",
                )
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                if let Some(row) = row {
                    let answer: Option<String> = row.try_get(0)?;
                    return Ok(answer.map_or(Reply::Unanswered, Reply::Answer));
                }
                if Instant::now() >= until {
                    // Give up unless the answer is being written right now.
                    let r = sqlx::query(&format!(
                        "UPDATE cluster_requests SET done_at = {NOW_MS} WHERE id = $1 AND done_at IS NULL"
                    ))
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                    if r.rows_affected() == 1 {
                        return Ok(Reply::TimedOut);
                    }
                }
            }
        })
        .await
    }

    /// The bound on [`Self::await_reply`]: its own `forward_timeout_s`, plus one call.
    fn reply_bound(&self) -> Duration {
        Duration::from_secs(self.cfg.forward_timeout_s) + self.deadlines.call
    }

    /// `[cluster] forward_timeout_s`.
    pub fn forward_timeout_s(&self) -> u64 {
        self.cfg.forward_timeout_s
    }

    /// `[cluster] poll_ms`: how often requests are looked for without a notification.
    pub fn poll_every(&self) -> Duration {
        Duration::from_millis(self.cfg.poll_ms)
    }

    /// `[cluster] heartbeat_s`.
    pub fn heartbeat_every(&self) -> Duration {
        Duration::from_secs(self.cfg.heartbeat_s)
    }

    /// A connection LISTENing for requests to any instance (the payload names the instance);
    /// `None` (polling only) when it cannot be had.
    pub async fn listener(&self) -> Option<PgListener> {
        let mut l = match PgListener::connect_with(&self.pool).await {
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

    /// Claim the requests addressed to this instance.
    pub async fn claim(&self) -> Result<Vec<(i64, String)>, StorageError> {
        bounded("cluster_claim", self.deadlines.call, async {
            let rows = sqlx::query(&format!(
                "UPDATE cluster_requests SET claimed_at = {NOW_MS} WHERE id IN (\
                 SELECT id FROM cluster_requests WHERE instance_id = $1 AND claimed_at IS NULL \
                 AND done_at IS NULL ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED) RETURNING id, body"
            ))
            .bind(&self.instance)
            .fetch_all(&self.pool)
            .await?;
            let mut out = rows
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<Vec<(i64, String)>, sqlx::Error>>()?;
            out.sort_by_key(|(id, _)| *id);
            Ok(out)
        })
        .await
    }

    pub async fn answer(&self, id: i64, answer: &str) -> Result<(), StorageError> {
        bounded("cluster_answer", self.deadlines.call, async {
            sqlx::query(&format!(
                "UPDATE cluster_requests SET answer = $1, done_at = {NOW_MS} WHERE id = $2 AND done_at IS NULL"
            ))
            .bind(answer)
            .bind(id)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }
}
