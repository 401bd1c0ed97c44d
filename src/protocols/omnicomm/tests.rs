use super::*;
use chrono::TimeZone;

fn ctx() -> DecodeCtx {
    DecodeCtx {
        now: Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap(),
    }
}

fn feed(s: &mut OmnicommSession, bytes: &[u8]) -> Result<Decoded, DecodeError> {
    match s.next_frame(bytes)? {
        FrameCut::Frame(n) => {
            assert_eq!(n, bytes.len(), "one whole frame");
            s.decode(bytes, &ctx())
        }
        other => panic!("expected a frame, got {other:?}"),
    }
}

const IDENT: &str = "c080080061a61915340100001dec";

#[test]
fn identification_is_answered_with_an_archive_inquiry_from_record_0() {
    let mut s = OmnicommSession::default();
    let d = feed(&mut s, &hex::decode(IDENT).unwrap()).unwrap();
    assert_eq!(d.device, Some(DeviceId::new("354002529")));
    // C0 85 0400 00000000 CRC-16/CCITT-FALSE(85 04 00 00 00 00 00), big-endian like the device's.
    let body = [0x85, 0x04, 0x00, 0, 0, 0, 0];
    let mut want = vec![0xC0];
    want.extend_from_slice(&body);
    want.extend(CRC16_CCITT_FALSE.checksum(&body).to_be_bytes());
    assert_eq!(d.reply.as_deref(), Some(&want[..]));
}

#[test]
fn archive_records_decode_and_are_answered_with_the_next_record_number() {
    // Traccar test data: one record with General and NAV groups.
    let pkt = "C0866300CD1400002273231400580008011308A2E68DA10110002006280030003800400048005000600068007000142B08EC979EB60410EEB7CC8C02180020002804300038A2E68DA1012C33080010001800200028003000344308381000180220382800300244DF2A";
    let mut s = OmnicommSession::default();
    feed(&mut s, &hex::decode(IDENT).unwrap()).unwrap();
    let d = feed(&mut s, &hex::decode(pkt).unwrap()).unwrap();
    assert_eq!(d.positions.len(), 1);
    let p = &d.positions[0];
    assert!(
        p.lat.abs() <= 90.0 && p.lon.abs() <= 180.0 && p.lat != 0.0,
        "{p:?}"
    );
    assert!(p.fix_time.timestamp() > EPOCH, "{}", p.fix_time);
    // Record 0x14CD = 5325 was the only one: delete up to 5326.
    assert_eq!(d.reply, Some(frame(REMOVE_ARCHIVE, &5326u32.to_le_bytes())));
    let mut bad = hex::decode(pkt).unwrap();
    let n = bad.len();
    bad[n - 3] ^= 1;
    assert_eq!(s.decode(&bad, &ctx()).unwrap_err().reason.as_str(), "crc");
}

#[test]
fn escaped_bytes_are_framed_and_restored() {
    let f = frame(0x86, &[0xC0, 0xDB, 1, 2]);
    assert!(
        f[1..].iter().all(|&b| b != 0xC0),
        "no 0xC0 after the prefix: {f:02x?}"
    );
    let mut s = OmnicommSession::default();
    let mut stream = f.to_vec();
    stream.extend_from_slice(&f);
    assert_eq!(s.next_frame(&stream), Ok(FrameCut::Frame(f.len())));
    assert_eq!(s.next_frame(&stream[..f.len() - 1]), Ok(FrameCut::NeedMore));
    assert_eq!(s.next_frame(&[0x55, 0xC0]), Ok(FrameCut::Skip(1)));
}

#[test]
fn encoded_archive_round_trips() {
    let mut s = OmnicommSession::default();
    feed(&mut s, &encode_identification(353_961_569)).unwrap();
    let fixes: Vec<Fix> = (0..3)
        .map(|i| Fix {
            time: Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, i).unwrap(),
            lat: 55.75 + f64::from(i) * 0.001,
            lon: -37.617_3,
            speed_kmh: 42.3,
            course: 180,
        })
        .collect();
    let d = feed(&mut s, &encode_archive(40, &fixes)).unwrap();
    assert_eq!(d.positions.len(), 3);
    for (p, f) in d.positions.iter().zip(&fixes) {
        assert_eq!(p.fix_time, f.time);
        assert!(
            (p.lat - f.lat).abs() < 1e-7 && (p.lon - f.lon).abs() < 1e-7,
            "{p:?}"
        );
        assert!((p.speed_kmh - 42.3).abs() < 1e-9);
        assert_eq!(p.ignition, Some(true));
        assert!(p.valid);
    }
    assert_eq!(d.reply, Some(frame(REMOVE_ARCHIVE, &43u32.to_le_bytes())));
}

#[test]
fn no_panic_on_truncations_and_mutations_of_corpus_packets() {
    let mut seed = 0x2545_f491_4f6c_dd1d;
    for p in crate::protocols::fuzz::corpus_packets(Protocol::Omnicomm) {
        for m in crate::protocols::fuzz::truncations_and_mutations(&p, 30, &mut seed) {
            crate::protocols::fuzz::exercise(
                Protocol::Omnicomm,
                || Box::new(OmnicommSession::default()),
                &m,
            );
            let _ = Fields::parse(&m);
        }
    }
}
