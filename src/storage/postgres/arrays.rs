//! Column arrays for UNNEST statements: a batch turned inside out, one `Vec` per column, so
//! that one statement with one bind per column writes the whole batch.

use crate::storage::{millis, DeviceState, WriteItem};

/// A batch of positions as column arrays, for one UNNEST insert.
#[derive(Default)]
pub(super) struct PositionArrays {
    pub(super) device: Vec<String>,
    pub(super) fix: Vec<i64>,
    pub(super) server: Vec<i64>,
    pub(super) valid: Vec<bool>,
    pub(super) lat: Vec<f64>,
    pub(super) lon: Vec<f64>,
    pub(super) speed: Vec<f64>,
    pub(super) course: Vec<f64>,
    pub(super) altitude: Vec<f64>,
    pub(super) satellites: Vec<Option<i32>>,
    pub(super) ignition: Vec<Option<bool>>,
    pub(super) motion: Vec<Option<bool>>,
    pub(super) odometer: Vec<Option<f64>>,
    pub(super) gps_odometer: Vec<f64>,
    pub(super) inputs: Vec<Option<i64>>,
    pub(super) outputs: Vec<Option<i64>>,
    pub(super) power: Vec<Option<f64>>,
    pub(super) alarm: Vec<Option<String>>,
    pub(super) attributes: Vec<String>,
}

impl PositionArrays {
    pub(super) fn from_items(items: &[WriteItem]) -> Self {
        let mut a = PositionArrays::default();
        for it in items {
            for np in &it.positions {
                let p = &np.position;
                a.device.push(it.device.0.clone());
                a.fix.push(millis(p.fix_time));
                a.server.push(millis(it.server_time));
                a.valid.push(p.valid);
                a.lat.push(p.lat);
                a.lon.push(p.lon);
                a.speed.push(p.speed_kmh);
                a.course.push(p.course);
                a.altitude.push(p.altitude);
                a.satellites.push(p.satellites.map(i32::from));
                a.ignition.push(p.ignition);
                a.motion.push(p.motion);
                a.odometer.push(p.odometer_m);
                a.gps_odometer.push(np.gps_odometer_m);
                a.inputs.push(p.inputs.map(i64::from));
                a.outputs.push(p.outputs.map(i64::from));
                a.power.push(p.power_v);
                a.alarm.push(p.alarm.map(str::to_string));
                a.attributes.push(np.attributes_json.clone());
            }
        }
        a
    }
}

/// Device states as column arrays, for one UNNEST upsert.
#[derive(Default)]
pub(super) struct StateArrays {
    pub(super) device: Vec<String>,
    pub(super) protocol: Vec<String>,
    pub(super) last_seen: Vec<i64>,
    pub(super) fix: Vec<Option<i64>>,
    pub(super) valid: Vec<Option<bool>>,
    pub(super) lat: Vec<Option<f64>>,
    pub(super) lon: Vec<Option<f64>>,
    pub(super) speed: Vec<Option<f64>>,
    pub(super) course: Vec<Option<f64>>,
    pub(super) altitude: Vec<Option<f64>>,
    pub(super) satellites: Vec<Option<i32>>,
    pub(super) ignition: Vec<Option<bool>>,
    pub(super) motion: Vec<Option<bool>>,
    pub(super) odometer: Vec<Option<f64>>,
    pub(super) gps_odometer: Vec<f64>,
    pub(super) inputs: Vec<Option<i64>>,
    pub(super) outputs: Vec<Option<i64>>,
    pub(super) power: Vec<Option<f64>>,
    pub(super) attributes: Vec<Option<String>>,
}

impl StateArrays {
    pub(super) fn from_states(states: &[&DeviceState]) -> Self {
        let mut a = StateArrays::default();
        for s in states {
            let p = s.position.as_ref();
            a.device.push(s.device_id.0.clone());
            a.protocol.push(s.protocol.clone());
            a.last_seen.push(millis(s.last_seen));
            a.fix.push(p.map(|p| millis(p.time)));
            a.valid.push(p.map(|p| p.valid));
            a.lat.push(p.map(|p| p.lat));
            a.lon.push(p.map(|p| p.lon));
            a.speed.push(p.map(|p| p.speed_kmh));
            a.course.push(p.map(|p| p.course));
            a.altitude.push(p.map(|p| p.altitude));
            a.satellites
                .push(p.and_then(|p| p.satellites).map(i32::from));
            a.ignition.push(p.and_then(|p| p.ignition));
            a.motion.push(p.and_then(|p| p.motion));
            a.odometer.push(p.and_then(|p| p.odometer_m));
            a.gps_odometer.push(s.gps_odometer_m);
            a.inputs.push(p.and_then(|p| p.inputs).map(i64::from));
            a.outputs.push(p.and_then(|p| p.outputs).map(i64::from));
            a.power.push(p.and_then(|p| p.power_v));
            a.attributes
                .push(p.map(|p| p.attributes.as_str().to_string()));
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceId, Position};
    use crate::protocols::Protocol;
    use crate::storage::latest_states;
    use crate::storage::NewPosition;
    use chrono::{TimeZone, Utc};

    fn item(dev: &str, last_seen_s: i64, n: usize) -> WriteItem {
        let t = Utc.timestamp_opt(1_700_000_000 + last_seen_s, 0).unwrap();
        WriteItem {
            origin: Default::default(),
            device: DeviceId::new(dev),
            protocol: Protocol::Teltonika,
            server_time: t,
            positions: (0..n)
                .map(|i| {
                    NewPosition::new(
                        Position::new(t + chrono::Duration::seconds(i as i64), true, 55.0, 37.0),
                        0.0,
                    )
                })
                .collect(),
            state: DeviceState {
                device_id: DeviceId::new(dev),
                protocol: "teltonika".into(),
                last_seen: t,
                position: None,
                gps_odometer_m: last_seen_s as f64,
            },
        }
    }

    #[test]
    fn one_state_per_device_the_one_a_sequential_replay_leaves() {
        let items = [
            item("a", 10, 1),
            item("b", 5, 0),
            item("a", 20, 2),
            item("a", 15, 1),
        ];
        let mut s = latest_states(&items);
        s.sort_by(|x, y| x.device_id.cmp(&y.device_id));
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0].gps_odometer_m, 20.0,
            "latest last_seen wins, not the last item"
        );
        assert_eq!(s[1].device_id.as_str(), "b");
        let tie = [item("a", 10, 0), item("a", 10, 0)];
        assert!(
            std::ptr::eq(latest_states(&tie)[0], &tie[1].state),
            "ties: later item wins"
        );
    }

    #[test]
    fn position_arrays_have_one_entry_per_row() {
        let a = PositionArrays::from_items(&[item("a", 0, 3), item("b", 0, 0), item("c", 0, 2)]);
        assert_eq!(a.device, ["a", "a", "a", "c", "c"]);
        assert_eq!(a.attributes.len(), 5);
        assert_eq!(a.satellites.len(), 5);
    }
}
