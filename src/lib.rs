//! fleetgate: a fleet telematics gateway.
//!
//! Trackers → `ingest` (listeners, per-connection tasks) → `protocols` (pure codecs) →
//! `pipeline` (sharded per-device workers: filters, odometer, latest state) → `storage`
//! (group commit) → acks back to the trackers; `api` serves the fleet to operators and the CRM.

pub mod api;
pub mod app;
pub mod cluster;
pub mod config;
pub mod crm;
pub mod geofence;
pub mod immobiliser;
pub mod ingest;
pub mod model;
pub mod ops;
pub mod pipeline;
pub mod protocols;
pub mod replay;
pub mod sim;
pub mod storage;

#[cfg(test)]
mod module_graph;
