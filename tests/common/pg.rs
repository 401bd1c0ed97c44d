//! A private PostgreSQL schema per test: tests run in parallel and repeatedly against one
//! database (`FLEETGATE_TEST_PG_URL`, default postgres://postgres@127.0.0.1:5432/test) without
//! seeing each other's tables. The store connects with `search_path` set to the schema (so
//! migrations and `_sqlx_migrations` land there); the schema is dropped when the guard goes,
//! even when the test panicked.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;

pub fn base_url() -> String {
    std::env::var("FLEETGATE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub struct PgSchema {
    pub name: String,
    /// `[storage] url` that puts everything in this schema.
    pub url: String,
}

impl PgSchema {
    pub async fn create() -> PgSchema {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "fgtest_{}_{}_{:08x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let mut c = sqlx::PgConnection::connect(&base_url())
            .await
            .expect("PostgreSQL reachable (run .ci/services)");
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&mut c)
            .await
            .expect("create schema");
        let _ = c.close().await;
        let sep = if base_url().contains('?') { '&' } else { '?' };
        let url = format!("{}{sep}options=-c%20search_path%3D{name}", base_url());
        PgSchema { name, url }
    }

    /// [`PgSchema::create`] from synchronous code running inside a test's runtime.
    pub fn create_blocking() -> PgSchema {
        std::thread::spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(PgSchema::create())
        })
        .join()
        .expect("schema created")
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut c) = sqlx::PgConnection::connect(&base_url()).await {
                    let _ = sqlx::query("SET lock_timeout = '5s'").execute(&mut c).await;
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                        .execute(&mut c)
                        .await;
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}
