//! `/track/summary` in constant memory: the track's points (fix time and coordinates only)
//! are read in fix-time pages (keyset on `fix_time`, which is unique per device) and folded
//! into a running count and distance, so a car with 1 M positions costs one page, not the
//! whole track (+2.6 GB and 5.9 s before, issue #21); the two ends are then read whole.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::rows;
use crate::model::DeviceId;
use crate::pipeline::filter::haversine_m;
use crate::pipeline::store::{StorageError, Store, TrackPoint};

/// Points read per page: `/track`'s default page, well within its cap (`MAX_TRACK_LIMIT`), so
/// a summary never holds more of a track than one `/track` answer would.
pub const PAGE: u32 = 10_000;
const _: () = assert!(PAGE <= super::vehicles::MAX_TRACK_LIMIT);

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct TrackSummary {
    pub count: usize,
    pub distance_km: f64,
    pub first: Option<rows::Position>,
    pub last: Option<rows::Position>,
}

/// A running count and distance fed with the track's points in fix-time order, page by page.
#[derive(Default)]
struct Fold {
    count: usize,
    distance_m: f64,
    first: Option<TrackPoint>,
    last: Option<TrackPoint>,
}

impl Fold {
    fn push(&mut self, p: TrackPoint) {
        if let Some(prev) = &self.last {
            self.distance_m += haversine_m(prev.lat, prev.lon, p.lat, p.lon);
        }
        self.first.get_or_insert(p);
        self.count += 1;
        self.last = Some(p);
    }
}

/// Summarise `device`'s positions with `from <= fix_time < to`, reading `page` points at a
/// time; the first and last positions are then read whole, one row each.
pub async fn summarize(
    store: &dyn Store,
    device: &DeviceId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    page: u32,
) -> Result<TrackSummary, StorageError> {
    let page = page.max(1);
    let mut fold = Fold::default();
    let mut cursor = from;
    loop {
        let points = store.track_points(device, cursor, to, page).await?;
        let full = points.len() >= page as usize;
        for p in points {
            // Fix times are stored in whole milliseconds and unique per device: the next page
            // starts one millisecond after this one's last point.
            cursor = p.time + Duration::milliseconds(1);
            fold.push(p);
        }
        if !full || cursor >= to {
            break;
        }
    }
    let row = |p: Option<TrackPoint>| async move {
        match p {
            Some(p) => Ok(store
                .track(device, p.time, to, 1)
                .await?
                .into_iter()
                .next()
                .map(rows::Position::from)),
            None => Ok::<_, StorageError>(None),
        }
    };
    Ok(TrackSummary {
        count: fold.count,
        distance_km: fold.distance_m / 1000.0,
        first: row(fold.first).await?,
        last: row(fold.last).await?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(i: i64, lat: f64) -> TrackPoint {
        TrackPoint {
            time: DateTime::from_timestamp_millis(1_700_000_000_000 + i).unwrap(),
            lat,
            lon: 37.6,
            speed_kmh: 0.0,
        }
    }

    #[test]
    fn a_fold_over_pages_equals_the_whole_track_at_once() {
        let track: Vec<_> = (0..10).map(|i| at(i, 55.0 + i as f64 * 0.01)).collect();
        let whole: f64 = track
            .windows(2)
            .map(|w| haversine_m(w[0].lat, w[0].lon, w[1].lat, w[1].lon))
            .sum();
        let mut fold = Fold::default();
        for chunk in track.chunks(3) {
            for p in chunk {
                fold.push(*p);
            }
        }
        assert_eq!(fold.count, 10);
        assert!((fold.distance_m - whole).abs() < 1e-6);
        assert_eq!(fold.first, Some(track[0]));
        assert_eq!(fold.last, Some(track[9]));
    }

    #[test]
    fn an_empty_range_has_no_ends_and_no_distance() {
        let f = Fold::default();
        assert_eq!((f.count, f.distance_m), (0, 0.0));
        assert!(f.first.is_none() && f.last.is_none());
    }
}
