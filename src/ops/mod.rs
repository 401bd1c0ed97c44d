//! Operations: metrics recorder, logging set-up, systemd integration (notify, watchdog,
//! reload).

pub mod logging;
pub mod metrics;
pub mod ratelimit;
pub mod reload;
pub mod rlimit;
pub mod service;
pub mod systemd;
