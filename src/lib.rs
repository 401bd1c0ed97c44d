//! fleetgate: a fleet telematics gateway.
//!
//! Trackers → `ingest` (listeners, per-connection tasks) → `protocols` (pure codecs) →
//! `pipeline` (sharded per-device workers: filters, odometer, latest state) → `storage`
//! (group commit) → acks back to the trackers; `api` serves the fleet to operators and the CRM.
//! Which module may use which: docs/architecture.md, enforced by `module_graph` (a test).

// HTTP API (axum routes, auth, OpenAPI, status page).
pub mod api;
// Position archive: compaction schedule, daily summaries, retention.
pub mod archive;
// Wiring: start in named steps, shutdown order, systemd supervisor, reloads.
pub mod app;
// Several instances on one PostgreSQL: sessions, request rows, LISTEN/NOTIFY.
pub mod cluster;
// The root `Config` (only `app` and `main` see it); `config::error` is the leaf.
pub mod config;
// CRM rules, outbox and connectors.
pub mod crm;
// Zones, index, point-in-polygon, debounce, the zone stage.
pub mod geofence;
// Block reasons, safe-block machine, commands, cross-instance forwarding.
pub mod immobiliser;
// TCP/UDP listeners, connection tasks, MQTT source, admission, sessions.
pub mod ingest;
// The domain types every layer speaks.
pub mod model;
// Metrics, logging, systemd primitives, rate limits, rlimit.
pub mod ops;
// Sharded per-device workers and the single writer.
pub mod pipeline;
// Pure tracker codecs.
pub mod protocols;
// Track replay tool.
pub mod replay;
// Load simulator.
pub mod sim;
// SQLite and PostgreSQL adapters.
pub mod storage;

#[cfg(test)]
mod module_graph;
