//! The group-commit writer: one task owns the write side of storage and commits whatever
//! the shards have queued — up to `batch_max_rows` rows, waiting at most `batch_max_wait_ms`
//! for company — in one transaction. Every waiting connection learns the outcome only after
//! the commit returned, so an ack always follows durability.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::store::{StorageError, Store, WriteItem};
use super::{Accepted, PipelineError};

/// Longest one commit attempt may take. The databases time out what they can see (SQLite's
/// busy timeout, the pool's acquire timeout), but not a connection whose network path died
/// silently mid-query (no FIN, no RST): that would wait for the kernel's TCP retransmission
/// timeout, ~15 minutes, with every tracker's ack queued behind it long after the database
/// is back. Past this the attempt is abandoned as a transient I/O error (retried within the
/// budget, then failed unacked); the batch is idempotent, so an attempt that did commit
/// after all costs nothing but the resend.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// An attempt abandoned at [`ATTEMPT_TIMEOUT`], counted with storage's other deadlines.
fn attempt_timed_out() -> StorageError {
    metrics::counter!("fleetgate_storage_timeouts_total", "call" => "commit_attempt").increment(1);
    StorageError::Timeout {
        what: "commit attempt".into(),
        after: ATTEMPT_TIMEOUT,
    }
}

/// Longest a subscriber of commits (immobiliser, zones, CRM rules) may spend on one step
/// that touches storage. The writer hands every commit to its subscribers before acking, so a
/// subscriber stuck on a connection that went silent (no reset, e.g. a network partition)
/// would stop every ack for good; past this the step is abandoned like a failed write.
pub const SUBSCRIBER_STEP_TIMEOUT: Duration = ATTEMPT_TIMEOUT;

/// Most committed packets a subscriber takes into one step.
pub const SUBSCRIBER_STEP_MAX: usize = 256;

/// `first` and whatever else is already queued behind it (up to [`SUBSCRIBER_STEP_MAX`] in
/// all): what one step of a commit subscriber handles, so that it stores the outcome of many
/// packets in one commit rather than one small fsynced transaction each.
pub fn with_queued<T>(first: T, rx: &mut mpsc::Receiver<T>) -> Vec<T> {
    let mut batch = vec![first];
    while batch.len() < SUBSCRIBER_STEP_MAX {
        match rx.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
    batch
}

pub struct WriteReq {
    pub item: WriteItem,
    pub accepted: Accepted,
    pub done: oneshot::Sender<Result<Accepted, PipelineError>>,
}

/// What the shards send the writer: rows to commit, or a liveness probe answered once every
/// commit queued before it has returned (the systemd watchdog's round trip).
// Not boxed: `Write` is the hot path and the channel's slots were this size before.
#[allow(clippy::large_enum_variant)]
pub enum WriterMsg {
    Write(WriteReq),
    Probe(oneshot::Sender<()>),
}

pub struct WriterConfig {
    /// Every commit's outcome goes here.
    pub health: Arc<super::storage_health::StorageHealth>,
    /// The disk low-water mark (SQLite only).
    pub disk: Option<super::disk::DiskGuard>,
    pub max_rows: usize,
    pub max_wait: Duration,
    /// Receivers of every committed batch (zones, immobiliser, CRM rules), in commit order.
    pub subscribers: Vec<mpsc::Sender<Arc<Committed>>>,
}

/// One device's positions as committed, for the stages that act on stored data. Sent after
/// the commit, so a rule never acts on a fix that could still be lost.
#[derive(Debug)]
pub struct Committed {
    pub item: WriteItem,
}

/// Run until every sender is gone, committing what arrives.
pub async fn run(store: Arc<dyn Store>, cfg: WriterConfig, mut rx: mpsc::Receiver<WriterMsg>) {
    let mut batch: Vec<WriteReq> = Vec::with_capacity(256);
    let mut probes: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = rx.recv().await {
        let first = match first {
            WriterMsg::Write(r) => r,
            WriterMsg::Probe(p) => {
                let _ = p.send(());
                continue;
            }
        };
        let mut rows = first.item.rows();
        batch.push(first);
        let deadline = tokio::time::Instant::now() + cfg.max_wait;
        while rows < cfg.max_rows {
            match rx.try_recv() {
                Ok(WriterMsg::Write(r)) => {
                    rows += r.item.rows();
                    batch.push(r);
                    continue;
                }
                Ok(WriterMsg::Probe(p)) => {
                    probes.push(p);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            if cfg.max_wait.is_zero() {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(WriterMsg::Write(r))) => {
                    rows += r.item.rows();
                    batch.push(r);
                }
                Ok(Some(WriterMsg::Probe(p))) => probes.push(p),
                _ => break,
            }
        }
        commit(store.as_ref(), &mut batch, rows, &cfg).await;
        for p in probes.drain(..) {
            let _ = p.send(());
        }
    }
}

async fn commit(store: &dyn Store, batch: &mut Vec<WriteReq>, rows: usize, cfg: &WriterConfig) {
    let subscribers = &cfg.subscribers;
    let (items, waiters): (Vec<_>, Vec<_>) = batch
        .drain(..)
        .map(|r| (r.item, (r.accepted, r.done)))
        .unzip();
    let started = Instant::now();
    if let Some(Err(reason)) = cfg.disk.as_ref().map(|d| d.check(started)) {
        // Refused before SQLite hits the wall: nothing acked, the trackers resend later.
        cfg.health.record(Err(&reason), Instant::now());
        let e = PipelineError::DiskLow(reason);
        for (_, done) in waiters {
            let _ = done.send(Err(e.clone()));
        }
        return;
    }
    let (result, _attempts) = super::retry::RetryPolicy::default()
        .run(|| async {
            match tokio::time::timeout(ATTEMPT_TIMEOUT, store.write_batch(&items)).await {
                Ok(r) => r,
                Err(_) => Err(attempt_timed_out()),
            }
        })
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    metrics::histogram!("fleetgate_storage_commit_seconds").record(elapsed);
    metrics::histogram!("fleetgate_storage_batch_rows").record(rows as f64);
    let outcome = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
    cfg.health.record(
        outcome.as_ref().map(|_| ()).map_err(|e| e.as_str()),
        Instant::now(),
    );
    match result {
        Ok(()) => {
            metrics::counter!("fleetgate_storage_rows_written_total").increment(rows as u64);
            // The rule stages get the batch before any tracker gets its ack: whatever happens
            // after an ack (an API request, the next packet) finds the fix already queued
            // for the zones, the immobiliser and the CRM rules.
            for item in items {
                let c = Arc::new(Committed { item });
                for s in subscribers {
                    // Bounded: a slow rule engine slows ingest rather than losing events.
                    let _ = s.send(c.clone()).await;
                }
            }
            for (accepted, done) in waiters {
                let _ = done.send(Ok(accepted));
            }
        }
        Err(e) => {
            metrics::counter!("fleetgate_storage_commit_errors_total").increment(1);
            tracing::error!(error = %e, rows, "commit failed; trackers will not be acked and will resend");
            let e = PipelineError::Storage(std::sync::Arc::new(e));
            for (_, done) in waiters {
                let _ = done.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_step_takes_what_is_queued_up_to_its_cap_in_order() {
        let (tx, mut rx) = mpsc::channel(1000);
        for i in 0..300 {
            tx.send(i).await.unwrap();
        }
        let first = rx.recv().await.unwrap();
        assert_eq!(
            with_queued(first, &mut rx),
            (0..SUBSCRIBER_STEP_MAX).collect::<Vec<_>>()
        );
        let first = rx.recv().await.unwrap();
        assert_eq!(with_queued(first, &mut rx), (256..300).collect::<Vec<_>>());
        tx.send(7).await.unwrap();
        let first = rx.recv().await.unwrap();
        assert_eq!(
            with_queued(first, &mut rx),
            vec![7],
            "nothing queued: just the first"
        );
    }
}
