//! `tracing` subscriber: env-filter (`RUST_LOG` wins over `[log] filter`), plain or JSON. The
//! filter can be swapped at run time ([`set_filter`], on SIGHUP).

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

type Reloader = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

static RELOAD: OnceLock<Reloader> = OnceLock::new();

pub fn init(format: &str, filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        let builder = builder.json().with_filter_reloading();
        let handle = builder.reload_handle();
        if builder.try_init().is_ok() {
            let _ = RELOAD.set(Box::new(move |f| {
                handle.reload(f).map_err(|e| e.to_string())
            }));
        }
    } else {
        let builder = builder.with_filter_reloading();
        let handle = builder.reload_handle();
        if builder.try_init().is_ok() {
            let _ = RELOAD.set(Box::new(move |f| {
                handle.reload(f).map_err(|e| e.to_string())
            }));
        }
    }
}

/// Apply a new `[log] filter`. `RUST_LOG`, when set, keeps winning (returns `Ok(false)`).
pub fn set_filter(filter: &str) -> Result<bool, String> {
    if std::env::var_os("RUST_LOG").is_some() {
        return Ok(false);
    }
    let f = EnvFilter::try_new(filter).map_err(|e| format!("log.filter: {e}"))?;
    match RELOAD.get() {
        Some(reload) => reload(f).map(|()| true),
        None => Ok(false),
    }
}
