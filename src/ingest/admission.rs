//! Which devices may send data: known vehicles' trackers, and unknown ones when
//! `[devices] register_unknown` is on (they become a vehicle whose id is the device id).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::model::{DeviceId, VehicleId};
use crate::protocols::Protocol;
use crate::storage::{StorageError, Store, VehicleUpdate};

pub struct Admission {
    store: Arc<dyn Store>,
    register_unknown: bool,
    /// `[devices] imei_check_digit`: an unknown IMEI must carry a valid Luhn digit.
    imei_check_digit: bool,
    /// Read on every login, written on the first one of a device; never on the record path.
    known: RwLock<HashMap<DeviceId, VehicleId>>,
}

impl Admission {
    pub fn new(store: Arc<dyn Store>, register_unknown: bool) -> Self {
        Admission {
            store,
            register_unknown,
            imei_check_digit: false,
            known: RwLock::new(HashMap::new()),
        }
    }

    /// Require a valid IMEI check digit before registering an unknown device.
    pub fn with_imei_check_digit(mut self, on: bool) -> Self {
        self.imei_check_digit = on;
        self
    }

    /// The vehicle carrying `device`, registering it when allowed; `None` = refuse it.
    pub async fn admit(
        &self,
        device: &DeviceId,
        protocol: Protocol,
    ) -> Result<Option<VehicleId>, StorageError> {
        if let Some(v) = self.known.read().expect("not poisoned").get(device) {
            return Ok(Some(v.clone()));
        }
        let vehicle = match self.store.vehicle_by_device(device).await? {
            Some(v) => {
                if v.protocol.is_none() {
                    let update = VehicleUpdate {
                        protocol: Some(protocol.name().into()),
                        ..Default::default()
                    };
                    self.store.upsert_vehicle(&v.id, &update).await?;
                }
                v.id
            }
            None if self.register_unknown => {
                // Garbage on a port (a fuzzer, a scanner, a misframed packet) never becomes a
                // vehicle: the id must look like this protocol's ids.
                if let Err(why) = protocol.id_form().check(device.as_str(), self.imei_check_digit)
                {
                    metrics::counter!("fleetgate_ingest_malformed_ids_total", "protocol" => protocol.name())
                        .increment(1);
                    tracing::debug!(device = ?device.as_str(), protocol = protocol.name(), why, "malformed device id: not registered");
                    return Ok(None);
                }
                let id = VehicleId(device.0.clone());
                let update = VehicleUpdate {
                    device_id: Some(device.0.clone()),
                    protocol: Some(protocol.name().into()),
                    ..Default::default()
                };
                self.store.upsert_vehicle(&id, &update).await?;
                tracing::info!(%device, protocol = protocol.name(), "registered unknown device");
                metrics::counter!("fleetgate_devices_registered_total").increment(1);
                id
            }
            None => return Ok(None),
        };
        self.known
            .write()
            .expect("not poisoned")
            .insert(device.clone(), vehicle.clone());
        Ok(Some(vehicle))
    }

    /// Forget cached mappings (a vehicle's device changed through the API).
    pub fn invalidate(&self) {
        self.known.write().expect("not poisoned").clear();
    }
}
