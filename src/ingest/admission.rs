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
    /// Read on every login, written on the first one of a device; never on the record path.
    known: RwLock<HashMap<DeviceId, VehicleId>>,
    /// One cache miss at a time: a burst of frames from a new device (1,024 UDP frames in
    /// flight) would otherwise queue as many registrations on the single SQLite writer, ahead
    /// of every commit (TCP acks took 17 s under a UDP flood of 100 new devices).
    miss: tokio::sync::Mutex<()>,
}

impl Admission {
    pub fn new(store: Arc<dyn Store>, register_unknown: bool) -> Self {
        Admission {
            store,
            register_unknown,
            known: RwLock::new(HashMap::new()),
            miss: tokio::sync::Mutex::new(()),
        }
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
        let _one = self.miss.lock().await;
        // Another frame of this device may have registered it while this one waited.
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
