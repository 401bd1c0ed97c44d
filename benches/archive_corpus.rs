//! Issue #17: bytes on disk per position for the real corpus (`protocols/*/corpus.jsonl`,
//! packets from Traccar's decoder tests), on SQLite and PostgreSQL, before and after packing.
//!
//! Every corpus packet goes through fleetgate's own decoders the way `protocols::corpus::run`
//! feeds them (one session per source test method, in file order, so a login identifies the
//! packets after it). A packet's positions take the device its session has identified by then
//! (a login, or the id the packet itself carries); packets before the session's first
//! identification take that first device, and a session that never identifies one gets a
//! synthetic id of its own. Each packet becomes one `WriteItem`
//! (server time: its newest fix + 2 s, as a live daemon would receive it; GPS odometer summed
//! per device as the pipeline does), written by `Store::write_batch`, packed by
//! `storage::archive::compact_all` (the `fleetgate storage compact` path) and measured by
//! `ArchiveStore::partition_stats` (what `fleetgate storage stats` prints). The pipeline's
//! filters are not applied: every decoded position is stored, invalid fixes included.
//!
//! The corpus has few positions per device-day, years apart, so the chunk and partition
//! overheads dominate; the last table packs each protocol's positions as one device's
//! (`storage::chunk::encode` over them in time order) to show the codec's own density.
//!
//! `cargo bench --bench archive_corpus` (PostgreSQL from FLEETGATE_TEST_PG_URL, default
//! postgres://postgres@127.0.0.1:5432/test, in a throwaway schema; skipped when unreachable).
//! Sizes do not depend on the build or the machine's load.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bytes::BytesMut;
use chrono::{DateTime, Duration, TimeZone, Utc};
use fleetgate::archive::store::{NothingOnPacked, PartitionStats, Tier};
use fleetgate::config::StorageConfig;
use fleetgate::model::{DeviceId, Position};
use fleetgate::pipeline::filter::haversine_m;
use fleetgate::protocols::corpus::{self, Entry};
use fleetgate::protocols::{DecodeCtx, FrameCut, Protocol, Session, Transport};
use fleetgate::storage::{self, chunk, DeviceState, NewPosition, StoredPosition, WriteItem};

#[path = "common/pg.rs"]
mod pg;

/// The decoders' "now" (partial dates, a fix without a time): fixed so runs are reproducible.
fn decode_now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

/// One decoded packet: what one group-commit item would carry.
struct Packet {
    protocol: Protocol,
    /// `None` until its session identifies a device.
    device: Option<DeviceId>,
    positions: Vec<Position>,
}

/// Per-protocol counts of the replay.
#[derive(Default)]
struct Replayed {
    packets: usize,
    with_positions: usize,
    positions: usize,
    sessions: usize,
    synthetic_sessions: usize,
}

/// Cut and decode every frame of `bytes`, as `protocols::corpus` does; frames that do not
/// decode are skipped (the corpus test judges them, here only positions matter).
fn feed(
    session: &mut dyn Session,
    bytes: &[u8],
    ctx: &DecodeCtx,
) -> Vec<fleetgate::protocols::Decoded> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while !buf.is_empty() {
        match session.next_frame(&buf) {
            Ok(FrameCut::NeedMore) | Err(_) => break,
            Ok(FrameCut::Skip(n)) => {
                let _ = buf.split_to(n.clamp(1, buf.len()));
            }
            Ok(FrameCut::Frame(len)) => {
                let frame = buf.split_to(len.clamp(1, buf.len()));
                if let Ok(d) = session.decode(&frame, ctx) {
                    out.push(d);
                }
            }
        }
    }
    out
}

/// A session being replayed: its key, the session, the device it has identified so far, and
/// its packets' indexes in the packet list.
type Open = (String, Box<dyn Session>, Option<DeviceId>, Vec<usize>);

/// Give the finished session's packets sent before its first identification that first
/// device, or the session's own synthetic id when it never identified one (a session still
/// is one device).
fn finish(p: Protocol, cur: Option<Open>, packets: &mut [Packet], r: &mut Replayed) {
    let Some((_, _, _, mine)) = cur else {
        return;
    };
    if mine.is_empty() {
        return;
    }
    r.sessions += 1;
    let first = mine.iter().find_map(|&i| packets[i].device.clone());
    let id = first.unwrap_or_else(|| {
        r.synthetic_sessions += 1;
        DeviceId::new(format!("corpus-{}-{}", p.name(), r.sessions))
    });
    for i in mine {
        packets[i].device.get_or_insert_with(|| id.clone());
    }
}

fn replay(p: Protocol, entries: &[Entry], packets: &mut Vec<Packet>) -> Replayed {
    let ctx = DecodeCtx { now: decode_now() };
    let mut r = Replayed::default();
    let mut current: Option<Open> = None;
    for entry in entries {
        let key = format!("{}|{:?}|{:?}", entry.test, entry.decoder, entry.transport);
        if current.as_ref().map(|c| c.0 != key).unwrap_or(true) {
            finish(p, current.take(), packets, &mut r);
            let transport = if entry.transport.as_deref() == Some("udp") {
                Transport::Udp
            } else {
                Transport::Tcp
            };
            current = Some((key, p.session(transport), None, Vec::new()));
        }
        let Some((_, session, device, mine)) = current.as_mut() else {
            continue;
        };
        let Ok(bytes) = entry.bytes() else { continue };
        r.packets += 1;
        let mut positions = Vec::new();
        for d in feed(session.as_mut(), &bytes, &ctx) {
            if let Some(id) = d.device {
                *device = Some(id);
            }
            positions.extend(d.positions);
        }
        if positions.is_empty() {
            continue;
        }
        r.with_positions += 1;
        r.positions += positions.len();
        mine.push(packets.len());
        packets.push(Packet {
            protocol: p,
            // Still `None` before the session's first identification: set when it ends.
            device: device.clone(),
            positions,
        });
    }
    finish(p, current.take(), packets, &mut r);
    r
}

/// One group-commit item per packet, the GPS odometer summed per device in arrival order over
/// fixes newer than the device's last (as the pipeline's shard does).
fn items(packets: &[Packet]) -> Vec<WriteItem> {
    let mut last: HashMap<DeviceId, (DateTime<Utc>, f64, f64, f64)> = HashMap::new();
    packets
        .iter()
        .map(|pk| {
            // `finish` gave every packet a device; the fallback is never stored.
            let device = pk
                .device
                .clone()
                .unwrap_or_else(|| DeviceId::new("unidentified"));
            let mut ps = pk.positions.clone();
            ps.sort_by_key(|p| p.fix_time);
            let newest = ps.last().map(|p| p.fix_time).unwrap_or_default();
            let server_time = newest + Duration::seconds(2);
            let positions: Vec<NewPosition> = ps
                .into_iter()
                .map(|p| {
                    let prev = last.get(&device).copied();
                    let odo = match prev {
                        Some((t, lat, lon, odo)) if p.fix_time > t => {
                            odo + haversine_m(lat, lon, p.lat, p.lon)
                        }
                        Some((_, _, _, odo)) => odo,
                        None => 0.0,
                    };
                    if prev.map(|l| p.fix_time > l.0).unwrap_or(true) {
                        last.insert(device.clone(), (p.fix_time, p.lat, p.lon, odo));
                    }
                    NewPosition::new(p, odo)
                })
                .collect();
            let state = positions
                .last()
                .map(|n| StoredPosition::from_position(&n.position, server_time, n.gps_odometer_m));
            WriteItem {
                origin: Default::default(),
                device: device.clone(),
                protocol: pk.protocol,
                server_time,
                positions,
                packed: Vec::new(),
                state: DeviceState {
                    device_id: device.clone(),
                    protocol: pk.protocol.name().into(),
                    last_seen: server_time,
                    gps_odometer_m: state.as_ref().map(|s| s.gps_odometer_m).unwrap_or(0.0),
                    position: state,
                },
            }
        })
        .collect()
}

/// Positions, bytes and partitions of one tier as `partition_stats` reports them.
fn tier(stats: &[PartitionStats], t: Tier) -> (u64, u64, usize) {
    let of: Vec<_> = stats.iter().filter(|s| s.tier == t).collect();
    (
        of.iter().map(|s| s.positions).sum(),
        of.iter().map(|s| s.bytes).sum(),
        of.iter()
            .map(|s| s.table.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
    )
}

fn per(bytes: u64, n: u64) -> String {
    if n == 0 {
        "-".into()
    } else {
        format!("{:.1}", bytes as f64 / n as f64)
    }
}

/// Write, pack and measure on one backend.
fn measure(rt: &tokio::runtime::Runtime, name: &str, url: &str, items: &[WriteItem]) {
    let cfg = StorageConfig {
        url: url.to_string(),
        ..Default::default()
    };
    let result: Result<(), storage::StorageError> = rt.block_on(async {
        let stores = storage::open(&cfg).await?;
        // One packet per commit, as the daemon's group commit may take them on a quiet fleet;
        // batching changes no stored byte.
        for it in items {
            stores.core.write_batch(std::slice::from_ref(it)).await?;
        }
        let before = stores.archive.partition_stats().await?;
        let packed = storage::archive::compact_all(&stores, &NothingOnPacked, |_, _| {}).await?;
        let after = stores.archive.partition_stats().await?;
        let (hot_n, hot_b, hot_t) = tier(&before, Tier::Hot);
        let (pk_n, pk_b, pk_t) = tier(&after, Tier::Packed);
        let (left_n, left_b, left_t) = tier(&after, Tier::Hot);
        let chunks = packed.device_days;
        let days = after.iter().filter(|s| s.tier == Tier::Packed).count();
        println!("\n{name}: {url}");
        println!(
            "  before (rows):      {hot_n} positions in {hot_t} hot table(s), {hot_b} bytes, {} B/position",
            per(hot_b, hot_n)
        );
        println!(
            "  after (chunks):     {pk_n} positions in {chunks} chunks (device-days) over {days} days, {pk_t} table(s), {pk_b} bytes, {} B/position",
            per(pk_b, pk_n)
        );
        println!(
            "  hot tier left:      {left_n} positions, {left_b} bytes in {left_t} table(s) (emptied, not dropped)"
        );
        println!(
            "  chunk payload:      {} bytes, {} B/position, {} B/chunk",
            packed.bytes,
            per(packed.bytes, packed.positions),
            per(packed.bytes, chunks)
        );
        println!(
            "  on disk beyond the payload: {} bytes, {} B/chunk, {} B/day partition",
            pk_b.saturating_sub(packed.bytes),
            per(pk_b.saturating_sub(packed.bytes), chunks),
            per(pk_b.saturating_sub(packed.bytes), days as u64)
        );
        Ok(())
    });
    if let Err(e) = result {
        println!("\n{name}: failed: {e}");
    }
}

/// Each protocol's positions as if one device had sent them all: one chunk, time order, one
/// per fix time (what the archive keeps), so the codec's density on real values shows.
fn one_device_per_protocol(items: &[WriteItem]) {
    let mut by: BTreeMap<&str, BTreeMap<i64, StoredPosition>> = BTreeMap::new();
    for it in items {
        let m = by.entry(it.protocol.name()).or_default();
        for n in &it.positions {
            m.entry(n.position.fix_time.timestamp_millis())
                .or_insert_with(|| {
                    StoredPosition::from_position(&n.position, it.server_time, n.gps_odometer_m)
                });
        }
    }
    println!("\nthe codec alone: each protocol's positions packed as one device's chunk");
    println!(
        "  {:<10} {:>9} {:>9} {:>10}",
        "protocol", "positions", "bytes", "B/position"
    );
    let (mut tn, mut tb) = (0u64, 0u64);
    for (name, m) in &by {
        let points: Vec<StoredPosition> = m.values().cloned().collect();
        let b = chunk::encode(&points).len() as u64;
        let n = points.len() as u64;
        tn += n;
        tb += b;
        println!("  {name:<10} {n:>9} {b:>9} {:>10}", per(b, n));
    }
    println!("  {:<10} {tn:>9} {tb:>9} {:>10}", "all", per(tb, tn));
    // A chunk's fixed cost (format byte, zstd frame, column headers): one position alone.
    let mut alone: Vec<usize> = by
        .values()
        .flat_map(|m| m.values())
        .map(|p| chunk::encode(std::slice::from_ref(p)).len())
        .collect();
    alone.sort_unstable();
    if let (Some(min), Some(max)) = (alone.first(), alone.last()) {
        println!(
            "  a chunk of one position: median {} bytes (min {min}, max {max})",
            alone[alone.len() / 2]
        );
    }
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("protocols");
    let mut packets = Vec::new();
    println!("corpus replay (decode now = {}):", decode_now());
    println!(
        "  {:<10} {:>7} {:>12} {:>9} {:>8} {:>9}",
        "protocol", "packets", "with fixes", "positions", "sessions", "synthetic"
    );
    for &p in Protocol::ALL {
        let Ok(entries) = corpus::load(&dir.join(p.name()).join("corpus.jsonl")) else {
            continue;
        };
        let r = replay(p, &entries, &mut packets);
        println!(
            "  {:<10} {:>7} {:>12} {:>9} {:>8} {:>9}",
            p.name(),
            r.packets,
            r.with_positions,
            r.positions,
            r.sessions,
            r.synthetic_sessions
        );
    }
    let items = items(&packets);
    let decoded: usize = items.iter().map(|i| i.positions.len()).sum();
    let devices: std::collections::BTreeSet<_> = items.iter().map(|i| i.device.clone()).collect();
    println!(
        "  {} positions decoded from {} packets, {} devices",
        decoded,
        items.len(),
        devices.len()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let tmp = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/corpus.db", tmp.path().display());
    measure(&rt, "SQLite", &url, &items);
    match pg::Schema::create(&rt, "fgcorpus") {
        Ok(schema) => {
            measure(&rt, "PostgreSQL", &schema.url, &items);
            schema.drop(&rt);
        }
        Err(e) => println!("\nPostgreSQL: not measured ({e})"),
    }
    one_device_per_protocol(&items);
}
