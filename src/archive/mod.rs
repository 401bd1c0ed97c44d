//! The position archive: how positions age. Closed days are packed into compact per-device
//! chunks (`storage::chunk`), each day gets a per-vehicle summary that is kept forever, and
//! whole days expire by dropping their partitions (`[retention]`). This module owns the
//! schedule and the rules; `storage` implements the port in [`store`].
//!
//! - [`config`]: the `[retention]` section.
//! - [`summary`]: a vehicle's day in figures (pure).
//! - [`actor`]: the periodic pass (partitions ahead, compaction and summaries, expiry).

pub mod actor;
pub mod config;
#[cfg(test)]
pub(crate) mod memory;
pub mod store;
pub mod summary;

pub use config::RetentionConfig;
