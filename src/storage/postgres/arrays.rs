//! Column arrays for UNNEST statements: a batch turned inside out, one `Vec` per column, so
//! that one statement with one bind per column writes the whole batch.

use crate::archive::store::Day;
use crate::storage::{millis, DeviceState, WriteItem};

/// A batch's chunks (one per packet and day) as column arrays, for one UNNEST insert.
#[derive(Default)]
pub(super) struct ChunkArrays {
    pub(super) device: Vec<String>,
    pub(super) day: Vec<i32>,
    pub(super) first: Vec<i64>,
    pub(super) last: Vec<i64>,
    pub(super) n: Vec<i32>,
    pub(super) data: Vec<Vec<u8>>,
}

impl ChunkArrays {
    pub(super) fn from_items(items: &[WriteItem]) -> Self {
        let mut a = ChunkArrays::default();
        for it in items {
            for c in crate::storage::archive::packed_of(it).iter() {
                a.device.push(it.device.0.clone());
                a.day.push(Day::of_ms(c.first_ms).0);
                a.first.push(c.first_ms);
                a.last.push(c.last_ms);
                a.n.push(c.n as i32);
                a.data.push(c.data.clone());
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
            packed: Vec::new(),
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
    fn chunk_arrays_have_one_entry_per_packet_and_day() {
        let a = ChunkArrays::from_items(&[item("a", 0, 3), item("b", 0, 0), item("c", 0, 2)]);
        assert_eq!(a.device, ["a", "c"]);
        assert_eq!(a.n, [3, 2]);
        assert_eq!(a.data.len(), 2);
        assert_eq!(a.day[0], Day::of_ms(a.first[0]).0);
    }
}
