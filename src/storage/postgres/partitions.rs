//! Day partitions on PostgreSQL: `positions_dYYYYMMDD` (range of fix time, Unix ms) and
//! `position_chunks_dYYYYMMDD` (range of day). A partition is created as a plain table and then
//! attached (`ATTACH PARTITION` takes SHARE UPDATE EXCLUSIVE on the parent, which inserts and
//! reads do not wait for; `CREATE TABLE … PARTITION OF` would take ACCESS EXCLUSIVE and queue
//! every insert behind the slowest read). Expiry detaches `CONCURRENTLY` before it drops, for
//! the same reason. The days known to exist are cached, so the group commit pays one lookup per
//! batch and a round trip only for a day it has not seen (the first batch of a day, a late one).

use std::collections::HashSet;
use std::sync::RwLock;

use sqlx::PgPool;

use crate::archive::store::Day;
use crate::storage::archive::{table, CHUNKS, HOT};
use crate::storage::StorageError;

/// Which partitioned table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Parent {
    Hot,
    Chunks,
}

impl Parent {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Parent::Hot => HOT,
            Parent::Chunks => CHUNKS,
        }
    }

    /// The partition bounds of `day` in the parent's key.
    fn bounds(self, day: Day) -> (i64, i64) {
        match self {
            Parent::Hot => (day.start_ms(), day.end_ms()),
            Parent::Chunks => (i64::from(day.0), i64::from(day.0) + 1),
        }
    }
}

#[derive(Default)]
pub(crate) struct Partitions {
    known: RwLock<HashSet<(Parent, i32)>>,
}

impl Partitions {
    /// Make sure `parent` has a partition for each of `days`.
    pub(crate) async fn ensure(
        &self,
        pool: &PgPool,
        parent: Parent,
        days: impl IntoIterator<Item = Day>,
    ) -> Result<(), StorageError> {
        let missing: Vec<Day> = {
            let known = self.known.read().unwrap_or_else(|e| e.into_inner());
            let mut m: Vec<Day> = days
                .into_iter()
                .filter(|d| !known.contains(&(parent, d.0)))
                .collect();
            m.sort();
            m.dedup();
            m
        };
        for day in missing {
            create(pool, parent, day).await?;
            metrics::counter!("fleetgate_storage_partitions_created_total").increment(1);
            self.known
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert((parent, day.0));
        }
        Ok(())
    }

    /// Forget every day (a partition was dropped under us).
    pub(crate) fn forget(&self) {
        self.known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Create and attach `parent`'s partition of `day` unless it is there. Creators (several
/// instances, the CLI) take turns on an advisory lock, so none sees the other's half-made table.
async fn create(pool: &PgPool, parent: Parent, day: Day) -> Result<(), StorageError> {
    let p = parent.name();
    let t = table(p, day);
    let (lo, hi) = parent.bounds(day);
    let ddl = format!(
        "DO $$ BEGIN \
           PERFORM pg_advisory_xact_lock(hashtext('fleetgate partitions')); \
           IF NOT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                          WHERE i.inhparent = '{p}'::regclass AND c.relname = '{t}') THEN \
             IF to_regclass('{t}') IS NULL THEN \
               CREATE TABLE {t} (LIKE {p} INCLUDING ALL); \
             END IF; \
             ALTER TABLE {p} ATTACH PARTITION {t} FOR VALUES FROM ({lo}) TO ({hi}); \
           END IF; \
         END $$"
    );
    sqlx::raw_sql(&ddl).execute(pool).await?;
    Ok(())
}

/// Every table of `parent`'s day partitions in the current schema, attached or left detached
/// by an interrupted expiry: (day, table, attached).
pub(crate) async fn list(
    pool: &PgPool,
    parent: Parent,
) -> Result<Vec<(Day, String, bool)>, StorageError> {
    let p = parent.name();
    let rows: Vec<(String, bool)> = sqlx::query_as(
        "SELECT c.relname::text, EXISTS (SELECT 1 FROM pg_inherits i \
            WHERE i.inhrelid = c.oid AND i.inhparent = $2::regclass) \
         FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace \
         AND c.relkind = 'r' AND c.relname LIKE $1 ORDER BY c.relname",
    )
    .bind(format!("{}\\_d________", p.replace('_', "\\_")))
    .bind(p)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(t, attached)| {
            crate::storage::archive::day_of_table(p, &t).map(|d| (d, t, attached))
        })
        .collect())
}

/// Detach (without blocking the parent's readers and writers) and drop one day partition.
pub(crate) async fn drop_partition(
    pool: &PgPool,
    parent: Parent,
    t: &str,
    attached: bool,
) -> Result<(), StorageError> {
    let p = parent.name();
    if attached {
        let concurrently = sqlx::raw_sql(&format!(
            "ALTER TABLE {p} DETACH PARTITION {t} CONCURRENTLY"
        ))
        .execute(pool)
        .await;
        if let Err(e) = concurrently {
            // A detach interrupted earlier leaves the partition "pending": finish it.
            tracing::debug!(table = t, error = %e, "concurrent detach failed, finalizing");
            let _ = sqlx::raw_sql(&format!("ALTER TABLE {p} DETACH PARTITION {t} FINALIZE"))
                .execute(pool)
                .await;
        }
    }
    sqlx::raw_sql(&format!("DROP TABLE IF EXISTS {t}"))
        .execute(pool)
        .await?;
    Ok(())
}
