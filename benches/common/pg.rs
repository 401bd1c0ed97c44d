//! A throwaway PostgreSQL schema for a bench: created on FLEETGATE_TEST_PG_URL (default
//! postgres://postgres@127.0.0.1:5432/test), dropped with everything in it by `drop`.

use sqlx::Connection;

pub struct Schema {
    base: String,
    name: String,
    /// The base URL with `search_path` set to this schema.
    pub url: String,
}

impl Schema {
    /// `Err` (with the reason) when PostgreSQL is not reachable.
    pub fn create(rt: &tokio::runtime::Runtime, prefix: &str) -> Result<Schema, sqlx::Error> {
        let base = std::env::var("FLEETGATE_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!("{prefix}_{}", std::process::id());
        exec(rt, &base, &format!("CREATE SCHEMA {name}"))?;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{name}");
        Ok(Schema { base, name, url })
    }

    pub fn drop(self, rt: &tokio::runtime::Runtime) {
        let _ = exec(
            rt,
            &self.base,
            &format!("DROP SCHEMA {} CASCADE", self.name),
        );
    }
}

fn exec(rt: &tokio::runtime::Runtime, url: &str, sql: &str) -> Result<(), sqlx::Error> {
    rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(url).await?;
        sqlx::query(sql).execute(&mut c).await.map(|_| ())
    })
}
