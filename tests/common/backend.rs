//! One end-to-end test, run on each storage backend: `both_backends!(name);` above `async fn
//! name() { … }` makes the tests `name::sqlite` and `name::postgres`. The body is unchanged: every
//! daemon it starts through [`super::config`] (or a config file written with
//! [`storage_url`]) stores in the backend of the variant — an SQLite file in the test's folder,
//! or a private PostgreSQL schema per folder, so a restart on the same folder finds the same
//! data and two folders are two databases. The schemas are dropped when the test ends, even
//! when it panicked.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::pg::PgSchema;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

struct Scope {
    backend: Backend,
    schemas: Mutex<HashMap<PathBuf, PgSchema>>,
    skipped: AtomicBool,
}

tokio::task_local! {
    static CURRENT: Arc<Scope>;
}

impl Backend {
    /// Run `body` with this backend behind [`storage_url`].
    pub async fn run(self, body: impl Future<Output = ()>) {
        let scope = Arc::new(Scope {
            backend: self,
            schemas: Mutex::new(HashMap::new()),
            skipped: AtomicBool::new(false),
        });
        CURRENT.scope(scope.clone(), body).await;
        let made = scope.schemas.lock().map(|s| s.len()).unwrap_or(0);
        assert!(
            self == Backend::Sqlite || made > 0 || scope.skipped.load(Ordering::Relaxed),
            "this test's PostgreSQL variant started no daemon on PostgreSQL: \
             its daemons must take their storage from common::config or common::storage_url"
        );
    }
}

/// The test skips itself (a tool it needs is not installed): its PostgreSQL variant started
/// no daemon, and that is not a mistake.
pub fn skipped() {
    let _ = CURRENT.try_with(|s| s.skipped.store(true, Ordering::Relaxed));
}

/// The backend of the running variant; SQLite outside [`both_backends!`].
pub fn current() -> Backend {
    CURRENT.try_with(|s| s.backend).unwrap_or(Backend::Sqlite)
}

/// `[storage] url` for a daemon whose data lives in `dir`, in the current backend.
pub fn storage_url(dir: &Path) -> String {
    let scope = CURRENT.try_with(|s| s.clone()).ok();
    match scope {
        Some(scope) if scope.backend == Backend::Postgres => {
            let mut schemas = scope.schemas.lock().expect("schemas");
            schemas
                .entry(dir.to_path_buf())
                .or_insert_with(PgSchema::create_blocking)
                .url
                .clone()
        }
        _ => format!("sqlite://{}/fleetgate.db", dir.display()),
    }
}

/// `name::sqlite` and `name::postgres` from the async fn `name` (written as a plain `async fn`
/// below the call, so rustfmt and the reader see an ordinary function).
#[allow(unused_macros)]
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $crate::common::backend::Backend::Sqlite
                    .run(super::$name())
                    .await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $crate::common::backend::Backend::Postgres
                    .run(super::$name())
                    .await
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use both_backends;
