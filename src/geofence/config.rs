//! `[geofences]`: where zone files live and how zone changes are debounced per zone kind.

use serde::{Deserialize, Serialize};

use crate::config::error::{invalid, ConfigError};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeofencesConfig {
    /// Directory of `*.geojson` zone files (loaded at start and on SIGHUP).
    pub dir: String,
    /// `[geofences.debounce.<kind>] fixes, secs, hysteresis_m` per zone kind.
    pub debounce: super::DebounceConfig,
    /// Largest share (0–1) of the cars inside a service area one zone change may put
    /// outside it without `force=true`.
    pub max_exit_share: f64,
}

impl Default for GeofencesConfig {
    fn default() -> Self {
        GeofencesConfig {
            dir: "geofences".into(),
            debounce: Default::default(),
            max_exit_share: 0.10,
        }
    }
}

impl GeofencesConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.debounce.validate().map_err(|e| {
            invalid(
                format!("geofences.debounce.{}", e.split(':').next().unwrap_or("")),
                e,
            )
        })?;
        if !(0.0..=1.0).contains(&self.max_exit_share) {
            return Err(invalid(
                "geofences.max_exit_share",
                format!(
                    "{} is not a share between 0 and 1 (0.10 = 10 %)",
                    self.max_exit_share
                ),
            ));
        }
        Ok(())
    }
}
