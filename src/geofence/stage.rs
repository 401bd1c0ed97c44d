//! The zone stage: an actor fed with every committed batch. It owns each device's debounced
//! membership ([`VehicleZones`]), evaluates every fix against the current [`ZoneSet`],
//! persists membership changes with their events in one transaction, and tells its
//! listeners (the immobiliser, the CRM rules) about confirmed enter/exit events.
//!
//! Membership is stored, so a restart resumes from what was confirmed: a car that left the
//! service area while fleetgate was down still produces its `exit`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::store::{StoredMembership, StoredZoneEvent, ZoneChange, ZoneStore};
use super::{
    zones_from_geojson, DebounceConfig, Fix, VehicleZones, Zone, ZoneError, ZoneEvent, ZoneKind,
    ZoneSet,
};
use crate::model::{DeviceId, VehicleId};
use crate::pipeline::store::StorageError;
use crate::pipeline::Committed;

/// What the vehicle API shows: `zone: {inside_service_area, zones: [names]}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Membership {
    /// `None` until the first valid fix.
    pub inside_service_area: Option<bool>,
    pub zones: Vec<String>,
}

/// A confirmed event, as the rule stages receive it.
#[derive(Clone, Debug, PartialEq)]
pub struct ZoneNotice {
    pub vehicle: Option<VehicleId>,
    pub device: DeviceId,
    pub event: ZoneEvent,
}

enum Msg {
    Query {
        device: DeviceId,
        reply: oneshot::Sender<Option<Membership>>,
    },
    QueryAll {
        reply: oneshot::Sender<Vec<(DeviceId, Membership)>>,
    },
    Reload {
        set: Arc<ZoneSet>,
        done: oneshot::Sender<()>,
    },
}

/// Zones read from the files under `[geofences] dir`, by name.
pub type FileZones = BTreeMap<String, Zone>;

/// Handle to the zone stage; cheap to clone.
#[derive(Clone)]
pub struct ZonesHandle {
    tx: mpsc::Sender<Msg>,
    current: Arc<RwLock<Arc<ZoneSet>>>,
    files: Arc<RwLock<FileZones>>,
    /// Held from reviewing a change to installing it, so two edits (API, SIGHUP) never
    /// build on the same old set and undo each other.
    edits: Arc<tokio::sync::Mutex<()>>,
    /// Zone files left out at start (broken), until a reload succeeds: `/readyz` says so.
    broken: Arc<RwLock<Vec<String>>>,
}

impl ZonesHandle {
    /// Zone files left out because they are broken (start-up or the last reload).
    pub fn broken_files(&self) -> Vec<String> {
        self.broken.read().expect("not poisoned").clone()
    }

    /// Record the zone files left out (empty: every file is in force).
    pub fn set_broken_files(&self, files: Vec<String>) {
        let mut broken = self.broken.write().expect("not poisoned");
        // Only a change moves the gauge (several daemons may share one recorder in tests).
        if *broken != files {
            metrics::gauge!("fleetgate_zone_files_broken").set(files.len() as f64);
        }
        *broken = files;
    }

    /// The zone set in force.
    pub fn current(&self) -> Arc<ZoneSet> {
        self.current.read().expect("not poisoned").clone()
    }

    /// Whether a zone of that name comes from a file under the geofences directory.
    pub fn is_file_zone(&self, name: &str) -> bool {
        self.files.read().expect("not poisoned").contains_key(name)
    }

    /// The file's version of zone `name` (what a deleted API zone of that name falls back to).
    pub fn file_zone(&self, name: &str) -> Option<Zone> {
        self.files.read().expect("not poisoned").get(name).cloned()
    }

    /// The zones read from files when the set in force was built.
    pub fn files(&self) -> FileZones {
        self.files.read().expect("not poisoned").clone()
    }

    /// Exclusive right to change the zones until the guard is dropped.
    pub async fn lock_edits(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.edits.clone().lock_owned().await
    }

    pub async fn membership(&self, device: &DeviceId) -> Option<Membership> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Query {
                device: device.clone(),
                reply,
            })
            .await
            .ok()?;
        rx.await.ok().flatten()
    }

    pub async fn memberships(&self) -> Vec<(DeviceId, Membership)> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::QueryAll { reply }).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Swap in a new zone set (API change, SIGHUP) and wait until the stage uses it.
    pub async fn install(&self, set: ZoneSet, files: FileZones) {
        let set = Arc::new(set);
        *self.current.write().expect("not poisoned") = set.clone();
        *self.files.write().expect("not poisoned") = files;
        let (done, rx) = oneshot::channel();
        if self.tx.send(Msg::Reload { set, done }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("geofences.dir: {0}")]
    Zones(#[from] ZoneError),
    #[error("geofences: {0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Invalid(String),
}

/// Every zone of the `*.geojson` files in `dir` (in file-name order); any file left out by
/// [`read_dir_lenient`] makes it an error naming every such file. A missing directory is no
/// zones (with a warning).
pub fn read_dir(dir: &Path) -> Result<FileZones, LoadError> {
    let (zones, broken) = read_dir_lenient(dir);
    if broken.is_empty() {
        return Ok(zones);
    }
    let all: Vec<String> = broken.iter().map(|e| e.to_string()).collect();
    Err(LoadError::Invalid(all.join("; ")))
}

/// The zones of every file in `dir` that reads, parses, passes the geometry check and uses
/// no name an earlier file used; each file left out comes back with why (naming its path).
/// The start-up keeps the rest of the zones with this; `check-config` reports the same list.
pub fn read_dir_lenient(dir: &Path) -> (FileZones, Vec<LoadError>) {
    let mut by_name = FileZones::new();
    let mut broken = Vec::new();
    if !dir.is_dir() {
        tracing::warn!(dir = %dir.display(), "geofences directory not found: no file zones (no service area!)");
        return (by_name, broken);
    }
    let mut paths: Vec<_> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("geojson"))
            .collect(),
        Err(e) => {
            broken.push(LoadError::Invalid(format!(
                "geofences.dir: cannot read {}: {e}",
                dir.display()
            )));
            return (by_name, broken);
        }
    };
    paths.sort();
    for path in paths {
        let zones = match read_file(&path) {
            Ok(z) => z,
            Err(e) => {
                broken.push(e);
                continue;
            }
        };
        let mut problems = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for z in &zones {
            if by_name.contains_key(&z.name) || !seen.insert(z.name.as_str()) {
                problems.push(format!("zone name '{}' is used twice", z.name));
            }
            problems.extend(super::guard::geometry(z).errors);
        }
        if !problems.is_empty() {
            broken.push(LoadError::Invalid(format!(
                "geofences.dir: {}: {}",
                path.display(),
                problems.join("; ")
            )));
            continue;
        }
        by_name.extend(zones.into_iter().map(|z| (z.name.clone(), z)));
    }
    (by_name, broken)
}

/// The zones of one GeoJSON file.
pub fn read_file(path: &Path) -> Result<Vec<Zone>, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        LoadError::Invalid(format!(
            "geofences.dir: cannot read {}: {e}",
            path.display()
        ))
    })?;
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        LoadError::Invalid(format!(
            "geofences.dir: {}: invalid JSON: {e}",
            path.display()
        ))
    })?;
    Ok(zones_from_geojson(&doc, &path.display().to_string())?)
}

/// The file zones with the stored zones replacing those of the same name, indexed.
pub async fn compose(
    files: &FileZones,
    store: &dyn ZoneStore,
    debounce: &DebounceConfig,
) -> Result<ZoneSet, LoadError> {
    let mut by_name = files.clone();
    for stored in store.zones().await? {
        let zone = Zone::from_feature(&stored.feature)?;
        by_name.insert(zone.name.clone(), zone);
    }
    let set = ZoneSet::from_zones_with(by_name.into_values().collect(), debounce)?;
    if !set.zones().iter().any(|z| z.kind == ZoneKind::ServiceArea) {
        tracing::warn!(
            "no zone of kind service_area is loaded: zone rules cannot see a car leave the area"
        );
    }
    Ok(set)
}

struct Entry {
    zones: VehicleZones,
    vehicle: Option<VehicleId>,
}

struct Stage {
    set: Arc<ZoneSet>,
    store: Arc<dyn ZoneStore>,
    devices: HashMap<DeviceId, Entry>,
    restored: HashMap<DeviceId, StoredMembership>,
    listeners: Vec<mpsc::Sender<ZoneNotice>>,
}

/// Start the stage: `committed` is its subscription to the writer; `listeners` receive every
/// confirmed event.
pub async fn start(
    set: ZoneSet,
    files: FileZones,
    store: Arc<dyn ZoneStore>,
    committed: mpsc::Receiver<Arc<Committed>>,
    listeners: Vec<mpsc::Sender<ZoneNotice>>,
) -> Result<(ZonesHandle, tokio::task::JoinHandle<()>), StorageError> {
    let restored = store
        .memberships()
        .await?
        .into_iter()
        .map(|m| (m.device_id.clone(), m))
        .collect();
    let set = Arc::new(set);
    let (tx, rx) = mpsc::channel(256);
    let handle = ZonesHandle {
        tx,
        current: Arc::new(RwLock::new(set.clone())),
        files: Arc::new(RwLock::new(files)),
        edits: Arc::new(tokio::sync::Mutex::new(())),
        broken: Arc::new(RwLock::new(Vec::new())),
    };
    let stage = Stage {
        set,
        store,
        devices: HashMap::new(),
        restored,
        listeners,
    };
    Ok((handle, tokio::spawn(stage.run(committed, rx))))
}

fn membership(z: &VehicleZones) -> Membership {
    let mut zones: Vec<String> = z.zones().map(str::to_string).collect();
    zones.sort();
    Membership {
        inside_service_area: z.inside_service_area(),
        zones,
    }
}

impl Stage {
    async fn run(
        mut self,
        mut committed: mpsc::Receiver<Arc<Committed>>,
        mut rx: mpsc::Receiver<Msg>,
    ) {
        loop {
            tokio::select! {
                c = committed.recv() => match c {
                    // Bounded like every commit subscriber's storage step: abandoned like a
                    // failed save, so a silent database connection cannot stop the acks.
                    Some(c) => {
                        // One storage commit for the membership changes of all that is queued.
                        let batch = crate::pipeline::writer::with_queued(c, &mut committed);
                        let step = crate::pipeline::writer::SUBSCRIBER_STEP_TIMEOUT;
                        if tokio::time::timeout(step, self.on_committed(&batch)).await.is_err() {
                            metrics::counter!("fleetgate_zone_step_timeouts_total").increment(1);
                            tracing::error!("zones: a step timed out on storage and was abandoned");
                        }
                    }
                    None => break,
                },
                Some(m) = rx.recv() => self.on_msg(m),
            }
        }
        self.publish_gauge();
    }

    fn on_msg(&mut self, m: Msg) {
        match m {
            Msg::Query { device, reply } => {
                let _ = reply.send(self.devices.get(&device).map(|e| membership(&e.zones)));
            }
            Msg::QueryAll { reply } => {
                let _ = reply.send(
                    self.devices
                        .iter()
                        .map(|(d, e)| (d.clone(), membership(&e.zones)))
                        .collect(),
                );
            }
            Msg::Reload { set, done } => {
                self.set = set;
                let _ = done.send(());
            }
        }
    }

    async fn entry(&mut self, device: &DeviceId) -> &mut Entry {
        if !self.devices.contains_key(device) {
            let vehicle = self.store.vehicle_of(device).await.ok().flatten();
            let zones = match self.restored.remove(device) {
                Some(m) => VehicleZones::restore(&self.set, m.last_fix, &m.zones),
                None => VehicleZones::new(),
            };
            self.devices
                .insert(device.clone(), Entry { zones, vehicle });
        }
        self.devices.get_mut(device).expect("inserted above")
    }

    /// Committed packets, in commit order: every fix observed, then the membership changes
    /// and their events stored in one commit, then the events announced.
    async fn on_committed(&mut self, batch: &[Arc<Committed>]) {
        let mut changes = Vec::new();
        let mut notices = Vec::new();
        for c in batch {
            if let Some((change, events)) = self.observe(c).await {
                notices.push((change.events.clone(), events));
                changes.push(change);
            }
        }
        if changes.is_empty() {
            return;
        }
        if let Err(e) = self.store.save_zone_changes(&changes).await {
            metrics::counter!("fleetgate_zone_store_errors_total").increment(1);
            tracing::error!(devices = changes.len(), error = %e, "cannot store zone changes");
        }
        for (stored, events) in notices {
            for (e, s) in events.iter().zip(&stored) {
                metrics::counter!("fleetgate_zone_events_total", "type" => s.kind.clone(), "zone_kind" => s.zone_kind.clone()).increment(1);
                tracing::info!(device = %s.device_id, zone = %e.zone, kind = %s.kind, time = %e.time, "zone event");
                let notice = ZoneNotice {
                    vehicle: s.vehicle.clone(),
                    device: s.device_id.clone(),
                    event: e.clone(),
                };
                for l in &self.listeners {
                    let _ = l.send(notice.clone()).await;
                }
            }
        }
        self.publish_gauge();
    }

    /// Run one packet's fixes through its device's zones; what to store when its membership
    /// changed (or this was its first fix), with the events as the stage produced them.
    async fn observe(&mut self, c: &Committed) -> Option<(ZoneChange, Vec<ZoneEvent>)> {
        let device = c.item.device.clone();
        let set = self.set.clone();
        let started = Instant::now();
        let entry = self.entry(&device).await;
        let before = (entry.zones.last_fix_time(), membership(&entry.zones));
        let mut events = Vec::new();
        for np in &c.item.positions {
            events.extend(entry.zones.observe(&set, &Fix::from_position(&np.position)));
        }
        let n = c.item.positions.len() as u64;
        metrics::counter!("fleetgate_zone_evaluations_total").increment(n);
        metrics::histogram!("fleetgate_zone_evaluation_seconds")
            .record(started.elapsed().as_secs_f64() / n.max(1) as f64);
        let after = membership(&entry.zones);
        let vehicle = entry.vehicle.clone();
        let first = before.0.is_none() && entry.zones.last_fix_time().is_some();
        if after == before.1 && !first && events.is_empty() {
            return None;
        }
        let last_fix = entry.zones.last_fix_time()?;
        let membership = StoredMembership {
            device_id: device.clone(),
            last_fix,
            zones: after.zones.clone(),
        };
        let stored = events
            .iter()
            .map(|e| StoredZoneEvent {
                id: 0,
                vehicle: vehicle.clone(),
                device_id: device.clone(),
                kind: match e.kind {
                    super::ZoneEventKind::Enter => "enter".into(),
                    super::ZoneEventKind::Exit => "exit".into(),
                },
                zone: e.zone.clone(),
                zone_kind: e.zone_kind.as_str().into(),
                time: e.time,
                lat: e.lat,
                lon: e.lon,
            })
            .collect();
        Some((
            ZoneChange {
                membership,
                events: stored,
            },
            events,
        ))
    }

    fn publish_gauge(&self) {
        let outside = self
            .devices
            .values()
            .filter(|e| e.zones.inside_service_area() == Some(false))
            .count();
        metrics::gauge!("fleetgate_zone_vehicles_outside_service_area").set(outside as f64);
    }
}
