//! Decoder cost per record. `teltonika_8e`: a realistic 25-record Codec 8E packet (what an FMB
//! sends from its buffer); `corpus/<protocol>`: every real position packet of that protocol's
//! corpus, decoded in turn (frame cut + decode), reported per record. Protocols whose devices
//! send both binary and text frames (H02, Meitrack, Queclink, Arnavi) are measured per form:
//! `corpus/<protocol>_binary` and `corpus/<protocol>_text`. `navtelecom_flex30_4_records`: a
//! real FLEX 3.0 archive, decoded after its `*>FLEX` negotiation (the corpus pass skips FLEX,
//! whose records a fresh session cannot frame).
//!
//! Run: `cargo bench --bench decode`

use std::path::Path;

use chrono::{Duration, TimeZone, Utc};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use fleetgate::protocols::corpus;
use fleetgate::protocols::teltonika::{encode_avl_packet, io, AvlRecord, CODEC_8E};
use fleetgate::protocols::{DecodeCtx, FrameCut, Protocol, Transport};

fn teltonika_8e(c: &mut Criterion) {
    let t0 = Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap();
    let recs: Vec<_> = (0..25)
        .map(|i| AvlRecord {
            time: t0 + Duration::seconds(i * 10),
            lat: 55.75 + i as f64 * 1e-4,
            lon: 37.61,
            speed_kmh: 50,
            course: 90,
            altitude: 150,
            satellites: 12,
            io: vec![
                (io::IGNITION, 1, 1),
                (io::MOVEMENT, 1, 1),
                (21, 1, 4),
                (69, 1, 1),
                (io::EXTERNAL_VOLTAGE, 2, 13_900),
                (67, 2, 4_100),
                (24, 2, 50),
                (181, 2, 9),
                (182, 2, 7),
                (io::TOTAL_ODOMETER, 4, 1_234_567),
                (199, 4, 120),
                (241, 4, 25_001),
            ],
        })
        .collect();
    let pkt = encode_avl_packet(CODEC_8E, &recs);
    let ctx = DecodeCtx::now();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(recs.len() as u64));
    g.bench_function("teltonika_8e_25_records", |b| {
        let mut s = Protocol::Teltonika.session(Transport::Tcp);
        b.iter(|| {
            let FrameCut::Frame(n) = s.next_frame(black_box(&pkt)).unwrap() else {
                panic!()
            };
            let d = s.decode(&pkt[..n], &ctx).unwrap();
            assert_eq!(d.positions.len(), 25);
            black_box(d)
        })
    });
    g.finish();
}

fn corpus_positions(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("protocols");
    let ctx = DecodeCtx::now();
    let mut g = c.benchmark_group("corpus");
    for &p in Protocol::ALL {
        let Ok(entries) = corpus::load(&dir.join(p.name()).join("corpus.jsonl")) else {
            continue;
        };
        // Position packets that decode on a fresh session (no login needed first), split by
        // wire form.
        let mut forms: [(Vec<Vec<u8>>, usize); 2] = Default::default();
        for e in entries
            .iter()
            .filter(|e| e.expect.starts_with("position") && e.transport.is_none())
        {
            let Ok(bytes) = e.bytes() else { continue };
            let mut s = p.session(Transport::Tcp);
            if let Ok(FrameCut::Frame(n)) = s.next_frame(&bytes) {
                if let Ok(d) = s.decode(&bytes[..n], &ctx) {
                    if !d.positions.is_empty() {
                        let form = &mut forms[usize::from(is_text(&bytes[..n]))];
                        form.1 += d.positions.len();
                        form.0.push(bytes[..n].to_vec());
                    }
                }
            }
        }
        let both = TWO_FORMS.contains(&p) && forms.iter().all(|(_, records)| *records > 0);
        if !both {
            let (text_packets, text_records) = std::mem::take(&mut forms[1]);
            forms[0].0.extend(text_packets);
            forms[0].1 += text_records;
        }
        for (i, (packets, records)) in forms.iter().enumerate() {
            if *records == 0 {
                continue;
            }
            let name = match (both, i) {
                (false, _) => p.name().to_string(),
                (true, 0) => format!("{}_binary", p.name()),
                (true, _) => format!("{}_text", p.name()),
            };
            g.throughput(Throughput::Elements(*records as u64));
            g.bench_function(name, |b| {
                let mut s = p.session(Transport::Tcp);
                b.iter(|| {
                    for pkt in packets {
                        if let Ok(FrameCut::Frame(n)) = s.next_frame(pkt) {
                            black_box(s.decode(&pkt[..n], &ctx).ok());
                        }
                    }
                })
            });
        }
    }
    g.finish();
}

/// Protocols whose devices send binary and text frames on the same port.
const TWO_FORMS: &[Protocol] = &[
    Protocol::H02,
    Protocol::Meitrack,
    Protocol::Gl200,
    Protocol::Arnavi,
];

/// A frame of printable ASCII (and line ends): the text form of a protocol.
fn is_text(frame: &[u8]) -> bool {
    frame
        .iter()
        .all(|&b| b.is_ascii_graphic() || matches!(b, b' ' | b'\r' | b'\n'))
}

fn navtelecom_flex(c: &mut Criterion) {
    // Traccar test data (protocols/navtelecom/corpus.jsonl, testDecodeFlex30).
    let negotiation = hex::decode("404e544301000000000000002a005e6c2a3e464c4558b01e1efffffe300a08080ffffe08000000580028002bc0000000000000b4000000000000").unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("protocols/navtelecom/corpus.jsonl");
    let archive = corpus::load(&dir)
        .unwrap()
        .iter()
        .filter(|e| e.test.ends_with("testDecodeFlex30") && e.expect == "positions")
        .find_map(|e| e.bytes().ok())
        .expect("the FLEX 3.0 archive");
    let ctx = DecodeCtx::now();
    let mut s = Protocol::Navtelecom.session(Transport::Tcp);
    s.decode(&negotiation, &ctx).unwrap();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(4));
    g.bench_function("navtelecom_flex30_4_records", |b| {
        b.iter(|| {
            let FrameCut::Frame(n) = s.next_frame(black_box(&archive)).unwrap() else {
                panic!()
            };
            let d = s.decode(&archive[..n], &ctx).unwrap();
            assert_eq!(d.positions.len(), 4);
            black_box(d)
        })
    });
    g.finish();
}

criterion_group!(benches, teltonika_8e, corpus_positions, navtelecom_flex);
criterion_main!(benches);
