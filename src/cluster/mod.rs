//! Several fleetgate instances on one PostgreSQL (docs/scaling.md): each instance's name
//! (`[cluster]`), the device sessions it holds, and the routing of immobiliser requests to
//! the instance holding a vehicle's tracker connection.

pub mod config;

pub use config::ClusterConfig;
