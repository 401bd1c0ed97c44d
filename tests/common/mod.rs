//! Shared test harness: a daemon on ephemeral ports with its own database (an SQLite file, or
//! a PostgreSQL schema in a [`both_backends!`] variant), a tracker-side TCP client, and an API
//! client.
#![allow(dead_code)]

pub mod backend;
pub mod mqtt;
pub mod pg;
pub mod process;
pub mod proxy;
pub mod stored;
pub mod teltonika;

use std::net::SocketAddr;
use std::time::Duration;

use fleetgate::app::Running;
use fleetgate::config::Config;
use fleetgate::protocols::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[allow(unused_imports)]
pub(crate) use backend::both_backends;
pub use backend::storage_url;

/// A config with every protocol on an ephemeral loopback port and storage for `dir` (in the
/// backend of the running [`both_backends!`] variant; SQLite outside one).
pub fn config(dir: &std::path::Path, extra: &str) -> Config {
    config_with_storage(&storage_url(dir), extra)
}

pub async fn start(dir: &std::path::Path, extra: &str) -> Running {
    fleetgate::app::start(config(dir, extra))
        .await
        .expect("daemon starts")
}

/// Like [`config`], with `[storage] url` given (a PostgreSQL schema from [`pg::PgSchema`]).
pub fn config_with_storage(url: &str, extra: &str) -> Config {
    let mut text = String::from("[api]\nlisten = \"127.0.0.1:0\"\n[listeners]\n");
    for p in Protocol::ALL {
        text.push_str(&format!("{} = \"127.0.0.1:0\"\n", p.name()));
    }
    text.push_str(&format!("[storage]\nurl = \"{url}\"\n"));
    text.push_str(extra);
    Config::from_toml_with_env(&text, "test", Vec::new()).expect("test config")
}

pub async fn start_with_storage(url: &str, extra: &str) -> Running {
    fleetgate::app::start(config_with_storage(url, extra))
        .await
        .expect("daemon starts")
}

/// A tracker's side of a TCP session.
pub struct Tracker {
    pub stream: TcpStream,
}

impl Tracker {
    pub async fn connect(addr: SocketAddr) -> Tracker {
        Tracker {
            stream: TcpStream::connect(addr).await.expect("connect"),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Read exactly `n` bytes within 5 s.
    pub async fn read(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        // Generous: a loaded 2-core CI machine can take seconds over a group commit.
        tokio::time::timeout(Duration::from_secs(30), self.stream.read_exact(&mut buf))
            .await
            .expect("reply within 30 s")
            .expect("reply bytes");
        buf
    }

    /// Whatever arrives within `ms`; empty when nothing does.
    pub async fn read_for(&mut self, ms: u64) -> Vec<u8> {
        let mut buf = vec![0; 4096];
        match tokio::time::timeout(Duration::from_millis(ms), self.stream.read(&mut buf)).await {
            Ok(Ok(n)) => buf[..n].to_vec(),
            _ => Vec::new(),
        }
    }

    /// True when the server closed the connection within 5 s.
    pub async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
    pub token: Option<String>,
}

impl Api {
    pub fn new(addr: SocketAddr) -> Api {
        Api {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            token: None,
        }
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Send; the status and the body as JSON (a body that is not JSON as a JSON string).
    async fn call(&self, rb: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
        let r = self.auth(rb).send().await.expect("request sent");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.call(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn put(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.call(self.client.put(format!("{}{path}", self.base)).json(&body))
            .await
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.call(self.client.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    pub async fn text(&self, path: &str) -> (u16, String) {
        let r = self
            .auth(self.client.get(format!("{}{path}", self.base)))
            .send()
            .await
            .expect("GET");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }
}

/// The value of the first sample of `name` whose labels contain every `labels` pair
/// (`key="value"`), 0 when absent. Reads the process-wide recorder through `/metrics`.
pub async fn metric(api: &Api, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, text) = api.text("/metrics").await;
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Hold while asserting exact values of the process-wide metric `name`: the daemons of the
/// tests beside this one (both backends' variants of the same test among them) count into the
/// same recorder, so every test that asserts an exact value of `name` takes this first.
pub async fn metric_lock(name: &'static str) -> tokio::sync::OwnedMutexGuard<()> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    type Locks = Mutex<HashMap<&'static str, Arc<tokio::sync::Mutex<()>>>>;
    static LOCKS: OnceLock<Locks> = OnceLock::new();
    let lock = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(name)
        .or_default()
        .clone();
    lock.lock_owned().await
}

/// Poll until the vehicle's immobiliser is in `state` (20 s at most).
pub async fn wait_immobiliser(api: &Api, id: &str, state: &str) -> serde_json::Value {
    wait_vehicle(api, id, state, |v| v["immobiliser"]["state"] == state).await
}

/// Poll until `f` accepts the vehicle view (20 s at most: CI machines are slow).
pub async fn wait_vehicle(
    api: &Api,
    id: &str,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..400 {
        let (_, v) = api.get(&format!("/api/v1/vehicles/{id}")).await;
        if f(&v) {
            return v;
        }
        last = v;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("vehicle {id}: {what} not reached: {last}");
}
