//! Operations: metrics recorder, logging set-up, systemd notify and watchdog primitives, rate
//! limits for warnings, the open-files limit. The daemon's supervisor and reloads live in `app`.

pub mod logging;
pub mod metrics;
pub mod ratelimit;
pub mod rlimit;
pub mod systemd;
