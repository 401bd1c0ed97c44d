//! A tracker connection broke a limit (`[limits]` or the protocol's maximum frame): it alone
//! is closed, the violation is counted, and a warning is logged at most once a minute per
//! protocol and limit (see `crate::ops::ratelimit`).

use std::net::SocketAddr;
use std::time::Instant;

use crate::protocols::Protocol;

/// The limits a connection can break, as the `limit` metrics label.
pub const MAX_CONNECTIONS: &str = "max_connections";
pub const MAX_CONNECTIONS_PER_IP: &str = "max_connections_per_ip";
pub const HANDSHAKE_TIMEOUT: &str = "handshake_timeout";
pub const IDLE_TIMEOUT: &str = "idle_timeout";
pub const MAX_FRAME: &str = "max_frame";

/// Count one violation and log it unless the same one was logged within the window.
pub fn record(protocol: Protocol, limit: &'static str, peer: SocketAddr) {
    metrics::counter!("fleetgate_ingest_limit_violations_total", "protocol" => protocol.name(), "limit" => limit)
        .increment(1);
    let key = format!("{}/{limit}", protocol.name());
    if let Some(suppressed) = crate::ops::ratelimit::warnings().check(&key, Instant::now()) {
        tracing::warn!(
            protocol = protocol.name(),
            limit,
            %peer,
            suppressed,
            "connection closed: limit exceeded (further ones logged at most once a minute)"
        );
    }
}

/// Log a per-frame warning (bad CRC, unframeable input) at most once a minute per protocol
/// and kind: garbage from one tracker must not flood the journal.
pub fn warn_limited(protocol: Protocol, kind: &str, error: &dyn std::fmt::Display, msg: &str) {
    let key = format!("{}/{kind}", protocol.name());
    if let Some(suppressed) = crate::ops::ratelimit::warnings().check(&key, Instant::now()) {
        tracing::warn!(protocol = protocol.name(), error = %error, suppressed, "{msg}");
    }
}

/// Log that a frame of a type fleetgate does not use arrived, at most once a minute per
/// protocol (sources that have no connection of their own to keep a budget: UDP).
pub fn info_limited(protocol: Protocol, kind: &str, peer: &SocketAddr) {
    let key = format!("{}/{kind}", protocol.name());
    if let Some(suppressed) = crate::ops::ratelimit::warnings().check(&key, Instant::now()) {
        tracing::info!(protocol = protocol.name(), %peer, suppressed, "{UNUSED_MESSAGE}");
    }
}

/// The line for a message fleetgate counts and acks but does not use.
pub const UNUSED_MESSAGE: &str =
    "message of a type fleetgate does not use: counted, acked where the protocol requires";
