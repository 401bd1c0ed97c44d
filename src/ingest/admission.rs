//! Which devices may send data: known vehicles' trackers, and unknown ones when
//! `[devices] register_unknown` is on (they become a vehicle whose id is the device id).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::model::{DeviceId, VehicleId};
use crate::pipeline::store::{StorageError, Store, VehicleUpdate};
use crate::protocols::Protocol;

pub struct Admission {
    store: Arc<dyn Store>,
    register_unknown: bool,
    /// `[devices] imei_check_digit`: an unknown IMEI must carry a valid Luhn digit.
    imei_check_digit: bool,
    /// Read on every login, written on the first one of a device; never on the record path.
    known: RwLock<HashMap<DeviceId, VehicleId>>,
    /// One lookup per unknown device at a time: an MQTT burst or a reconnect storm from one
    /// device admits it once (one `registered unknown device`), the others wait for it.
    looking_up: Mutex<HashMap<DeviceId, Arc<tokio::sync::Mutex<()>>>>,
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
            imei_check_digit: false,
            known: RwLock::new(HashMap::new()),
            looking_up: Mutex::new(HashMap::new()),
            miss: tokio::sync::Mutex::new(()),
        }
    }

    /// Require a valid IMEI check digit before registering an unknown device.
    pub fn with_imei_check_digit(mut self, on: bool) -> Self {
        self.imei_check_digit = on;
        self
    }

    fn cached(&self, device: &DeviceId) -> Option<VehicleId> {
        self.known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(device)
            .cloned()
    }

    /// The vehicle carrying `device`, registering it when allowed; `None` = refuse it.
    pub async fn admit(
        &self,
        device: &DeviceId,
        protocol: Protocol,
    ) -> Result<Option<VehicleId>, StorageError> {
        if let Some(v) = self.cached(device) {
            return Ok(Some(v));
        }
        let gate = self
            .looking_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(device.clone())
            .or_default()
            .clone();
        let result = {
            let _turn = gate.lock().await;
            match self.cached(device) {
                Some(v) => Ok(Some(v)),
                None => {
                    let _one = self.miss.lock().await;
                    self.look_up(device, protocol).await
                }
            }
        };
        let mut looking_up = self.looking_up.lock().unwrap_or_else(|e| e.into_inner());
        // The map's entry and ours: nobody else waits on this device.
        if Arc::strong_count(&gate) <= 2 {
            looking_up.remove(device);
        }
        result
    }

    async fn look_up(
        &self,
        device: &DeviceId,
        protocol: Protocol,
    ) -> Result<Option<VehicleId>, StorageError> {
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
                if let Err(why) = protocol
                    .id_form()
                    .check(device.as_str(), self.imei_check_digit)
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
            .unwrap_or_else(|e| e.into_inner())
            .insert(device.clone(), vehicle.clone());
        Ok(Some(vehicle))
    }

    /// Forget cached mappings (a vehicle's device changed through the API).
    pub fn invalidate(&self) {
        self.known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}
