//! Configuration reloads (SIGHUP). The signal handler re-reads the file and publishes the new
//! [`Config`] here; every stage that can change without a restart follows its own receiver
//! (the log filter and the status-page map layers: `running.reloads().subscribe()`); the zones
//! reload through [`super::ZoneReloader`] on the same signal (`service.rs`). Everything else
//! is reported as needing a restart.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;

/// Config sections that apply on reload; a change anywhere else waits for a restart.
pub const RELOADABLE: &[&str] = &["log", "status"];

/// The reload signal, fanned out to every subscriber. Cheap to clone.
#[derive(Clone)]
pub struct Reloads {
    tx: Arc<watch::Sender<Arc<Config>>>,
}

impl Reloads {
    pub fn new(config: Arc<Config>) -> Reloads {
        Reloads {
            tx: Arc::new(watch::channel(config).0),
        }
    }

    /// A receiver that wakes on every reload (`changed()`), holding the newest config.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Config>> {
        self.tx.subscribe()
    }

    /// The configuration in force.
    pub fn current(&self) -> Arc<Config> {
        self.tx.borrow().clone()
    }

    /// Publish `new`; returns the sections that changed but only apply after a restart.
    pub fn publish(&self, new: Config) -> Vec<String> {
        let old = self.current();
        let restart = sections_needing_restart(&old, &new);
        self.tx.send_replace(Arc::new(new));
        restart
    }
}

/// Sections whose values differ between `old` and `new` and are not in [`RELOADABLE`].
pub fn sections_needing_restart(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(toml::Value::Table(a)), Ok(toml::Value::Table(b))) =
        (toml::Value::try_from(old), toml::Value::try_from(new))
    else {
        return Vec::new();
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !RELOADABLE.contains(&k.as_str()) && a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::from_toml_with_env(text, "t", Vec::new()).unwrap()
    }

    #[test]
    fn only_non_reloadable_changes_ask_for_a_restart() {
        let old = cfg("[log]\nfilter = \"info\"");
        let new = cfg("[log]\nfilter = \"debug\"\n[api]\nlisten = \"127.0.0.1:9999\"");
        assert_eq!(
            sections_needing_restart(&old, &new),
            vec!["api".to_string()]
        );
        assert!(sections_needing_restart(&old, &cfg("[log]\nfilter = \"warn\"")).is_empty());
    }

    #[tokio::test]
    async fn subscribers_see_the_new_config() {
        let r = Reloads::new(Arc::new(cfg("")));
        let mut rx = r.subscribe();
        r.publish(cfg("[log]\nfilter = \"debug\""));
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().log.filter, "debug");
        assert_eq!(r.current().log.filter, "debug");
    }
}
