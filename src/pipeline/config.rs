//! `[pipeline]` (shards and their queues) and `[filters]` (which fixes a shard drops).

use serde::{Deserialize, Serialize};

use crate::config::error::{invalid, ConfigError};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FiltersConfig {
    /// Drop fixes the device marks invalid (no GPS lock).
    pub invalid: bool,
    /// Drop fixes at exactly 0°/0°.
    pub zero: bool,
    /// Drop fixes dated further than this into the future, in seconds.
    pub max_future_s: i64,
    /// A fix reporting a speed above this (km/h), negative or not a number is refused.
    pub max_speed_kmh: f64,
    /// Drop a fix implying a speed above this from the previous accepted fix (a GPS jump).
    /// 0 disables.
    pub max_implied_speed_kmh: f64,
}

impl Default for FiltersConfig {
    fn default() -> Self {
        FiltersConfig {
            invalid: true,
            zero: true,
            max_future_s: 300,
            max_speed_kmh: 400.0,
            max_implied_speed_kmh: 300.0,
        }
    }
}

impl FiltersConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.max_speed_kmh.is_finite() && self.max_speed_kmh >= 100.0) {
            return Err(invalid(
                "filters.max_speed_kmh",
                "must be a number of km/h, at least 100",
            ));
        }
        if self.max_future_s < 0 {
            return Err(invalid("filters.max_future_s", "must not be negative"));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Device workers; 0 = one per CPU.
    pub shards: usize,
    /// Messages a shard queues before connections wait (backpressure).
    pub queue: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            shards: 0,
            queue: 1024,
        }
    }
}

impl PipelineConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.queue == 0 {
            return Err(invalid("pipeline.queue", "must be at least 1"));
        }
        Ok(())
    }

    /// Shard count: `shards`, or one per CPU when 0.
    pub fn shards(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }
    }
}
