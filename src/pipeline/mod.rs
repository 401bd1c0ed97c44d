//! Sharded per-device workers. A device always maps to the same shard, which alone owns its
//! state (latest fix, odometer, recent fix times): no lock on the hot path. Connections send
//! decoded positions to the shard and wait for the group commit before acking.

pub mod clock;
pub mod config;
pub mod disk;
pub mod filter;
pub(crate) mod reanchor;
pub mod retry;
mod shard;
pub mod storage_health;
pub mod store;
pub mod writer;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::model::{DeviceId, Origin, Position};
use crate::protocols::Protocol;
use store::{DeviceState, Store};

pub use shard::Shard;
pub use writer::Committed;

/// What happened to a batch once committed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Positions written (or already stored before: a re-sent batch counts here too).
    pub stored: usize,
    /// Positions dropped by the filters.
    pub rejected: usize,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum PipelineError {
    /// The commit failed (after its retries); shared by every waiter of the batch.
    #[error("storage: {0}")]
    Storage(#[source] Arc<store::StorageError>),
    /// Refused before the commit: less than `[storage] min_free_mb` free.
    #[error("storage: {0}")]
    DiskLow(String),
    #[error("the pipeline is shutting down")]
    Closed,
}

pub(crate) enum ShardMsg {
    Ingest {
        device: DeviceId,
        protocol: Protocol,
        positions: Vec<Position>,
        received: DateTime<Utc>,
        origin: Origin,
        done: oneshot::Sender<Result<Accepted, PipelineError>>,
    },
    /// The device was heard from (heartbeat, login) without positions.
    Seen {
        device: DeviceId,
        protocol: Protocol,
        at: DateTime<Utc>,
    },
    /// How a write the shard sent ended (sent by the shard to itself, before the ack).
    Settled {
        device: DeviceId,
        times: Vec<i64>,
        ok: bool,
    },
    /// A batch was not committed: its fix times must not count as duplicates when re-sent.
    Forget {
        device: DeviceId,
        times: Vec<DateTime<Utc>>,
    },
    Query {
        device: DeviceId,
        reply: oneshot::Sender<Option<DeviceState>>,
    },
    QueryAll {
        reply: oneshot::Sender<Vec<DeviceState>>,
    },
    /// Liveness: answered by the writer once this shard and the writer are both moving.
    Probe { reply: oneshot::Sender<()> },
}

/// Handle to the shards; cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    shards: Arc<[mpsc::Sender<ShardMsg>]>,
    storage: Arc<storage_health::StorageHealth>,
}

/// The sections `Pipeline::start` reads: its own, the filters its shards apply, and the
/// writer's batching from `[storage]`.
#[derive(Clone, Copy)]
pub struct PipelineStart<'a> {
    pub pipeline: &'a config::PipelineConfig,
    pub filters: &'a config::FiltersConfig,
    pub storage: &'a crate::storage::StorageConfig,
}

/// The running tasks, to be awaited at shutdown (shards first, then the writer).
pub struct PipelineTasks {
    pub shards: Vec<JoinHandle<()>>,
    pub writer: JoinHandle<()>,
}

impl Pipeline {
    /// Start the writer and the shards, seeded with the stored device states.
    pub fn start(
        config: PipelineStart<'_>,
        store: Arc<dyn Store>,
        states: Vec<DeviceState>,
        subscribers: Vec<mpsc::Sender<Arc<writer::Committed>>>,
    ) -> (Pipeline, PipelineTasks) {
        let (wtx, wrx) = mpsc::channel(config.pipeline.queue.max(16) * 4);
        let storage = Arc::new(storage_health::StorageHealth::default());
        storage.record(Ok(()), std::time::Instant::now());
        let writer = tokio::spawn(writer::run(
            store.clone(),
            writer::WriterConfig {
                health: storage.clone(),
                disk: disk::DiskGuard::for_url(&config.storage.url, config.storage.min_free_mb),
                max_rows: config.storage.batch_max_rows,
                max_wait: Duration::from_millis(config.storage.batch_max_wait_ms),
                subscribers,
            },
            wrx,
        ));
        let n = config.pipeline.shards();
        let mut seeds: Vec<Vec<DeviceState>> = (0..n).map(|_| Vec::new()).collect();
        for s in states {
            seeds[shard_of(&s.device_id, n)].push(s);
        }
        let mut senders = Vec::with_capacity(n);
        let mut shards = Vec::with_capacity(n);
        for seed in seeds {
            let (tx, rx) = mpsc::channel(config.pipeline.queue);
            let shard = Shard::new(config.filters.clone(), seed, wtx.clone())
                .with_queue(tx.downgrade())
                .with_packer(store.clone());
            shards.push(tokio::spawn(shard.run(rx)));
            senders.push(tx);
        }
        (
            Pipeline {
                shards: senders.into(),
                storage,
            },
            PipelineTasks { shards, writer },
        )
    }

    fn shard(&self, device: &DeviceId) -> &mpsc::Sender<ShardMsg> {
        &self.shards[shard_of(device, self.shards.len())]
    }

    /// Filter, store and commit `positions` that came from `origin`; returns once they are
    /// durable (or failed).
    pub async fn ingest(
        &self,
        device: &DeviceId,
        protocol: Protocol,
        origin: Origin,
        positions: Vec<Position>,
    ) -> Result<Accepted, PipelineError> {
        let times: Vec<_> = positions.iter().map(|p| p.fix_time).collect();
        let (done, rx) = oneshot::channel();
        let msg = ShardMsg::Ingest {
            device: device.clone(),
            protocol,
            positions,
            received: Utc::now(),
            origin,
            done,
        };
        self.shard(device)
            .send(msg)
            .await
            .map_err(|_| PipelineError::Closed)?;
        let result = rx.await.unwrap_or(Err(PipelineError::Closed));
        if result.is_err() {
            let _ = self
                .shard(device)
                .send(ShardMsg::Forget {
                    device: device.clone(),
                    times,
                })
                .await;
        }
        result
    }

    /// Record that a device was heard from without positions.
    pub async fn seen(&self, device: &DeviceId, protocol: Protocol) {
        let msg = ShardMsg::Seen {
            device: device.clone(),
            protocol,
            at: Utc::now(),
        };
        let _ = self.shard(device).send(msg).await;
    }

    /// The live state of one device, from the shard that owns it.
    pub async fn state(&self, device: &DeviceId) -> Option<DeviceState> {
        let (reply, rx) = oneshot::channel();
        self.shard(device)
            .send(ShardMsg::Query {
                device: device.clone(),
                reply,
            })
            .await
            .ok()?;
        rx.await.ok().flatten()
    }

    /// The live state of every device.
    pub async fn states(&self) -> Vec<DeviceState> {
        let mut all = Vec::new();
        for s in self.shards.iter() {
            let (reply, rx) = oneshot::channel();
            if s.send(ShardMsg::QueryAll { reply }).await.is_ok() {
                all.extend(rx.await.unwrap_or_default());
            }
        }
        all
    }
}

/// A handle that does not keep the shards alive (they drain once every [`Pipeline`] is gone):
/// what the watchdog holds.
#[derive(Clone)]
pub struct WeakPipeline {
    shards: Arc<[mpsc::WeakSender<ShardMsg>]>,
    storage: Arc<storage_health::StorageHealth>,
}

impl WeakPipeline {
    /// The pipeline, unless it has shut down.
    pub fn upgrade(&self) -> Option<Pipeline> {
        let shards: Option<Vec<_>> = self.shards.iter().map(|w| w.upgrade()).collect();
        shards.map(|s| Pipeline {
            shards: s.into(),
            storage: self.storage.clone(),
        })
    }

    /// The writer's commit health (kept after the pipeline stops).
    pub fn storage_health(&self) -> &storage_health::StorageHealth {
        &self.storage
    }
}

impl Pipeline {
    pub fn downgrade(&self) -> WeakPipeline {
        WeakPipeline {
            shards: self.shards.iter().map(|s| s.downgrade()).collect(),
            storage: self.storage.clone(),
        }
    }

    /// Whether the writer's commits succeed (`/readyz`, the watchdog).
    pub fn storage_health(&self) -> &storage_health::StorageHealth {
        &self.storage
    }

    /// Round trip through every shard and the writer (behind whatever they have queued);
    /// `Err` names the first shard that did not answer within `timeout`. The systemd watchdog
    /// pings only while this succeeds.
    pub async fn probe(&self, timeout: Duration) -> Result<(), usize> {
        let mut waits = Vec::with_capacity(self.shards.len());
        for (i, s) in self.shards.iter().enumerate() {
            let (reply, rx) = oneshot::channel();
            let sent = tokio::time::timeout(timeout, s.send(ShardMsg::Probe { reply })).await;
            if !matches!(sent, Ok(Ok(()))) {
                return Err(i);
            }
            waits.push((i, rx));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        for (i, rx) in waits {
            if !matches!(tokio::time::timeout_at(deadline, rx).await, Ok(Ok(()))) {
                return Err(i);
            }
        }
        Ok(())
    }
}

fn shard_of(device: &DeviceId, n: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    device.hash(&mut h);
    (h.finish() % n as u64) as usize
}
