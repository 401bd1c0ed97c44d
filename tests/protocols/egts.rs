//! EGTS over TCP: TERM_IDENTITY authentication and TELEDATA records. The expected transport
//! packets (header CRC-8, data CRC-16, PT_RESPONSE with one RECORD_RESPONSE per record, then
//! EGTS_SR_RESULT_CODE) are built here field by field from GOST R 54619 / 33472.

use fleetgate::protocols::egts::{encode_teledata, encode_term_identity, Fix};
use fleetgate::protocols::Protocol;

use super::support::{assert_track, t, Daemon, Expect};

/// CRC-8: polynomial 0x31, initial 0xFF, no reflection (GOST 33472, transport header).
fn crc8(data: &[u8]) -> u8 {
    let mut crc = 0xFFu8;
    for &b in data {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x31
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// CRC-16 CCITT: polynomial 0x1021, initial 0xFFFF, no reflection (service frame data).
fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Transport packet: PRV=1, SKID=0, flags=0, HL=11, HE=0, FDL, PID, PT, HCS, SFRD, SFRCS.
fn packet(pt: u8, pid: u16, sfrd: &[u8]) -> Vec<u8> {
    let mut p = vec![0x01, 0x00, 0x00, 11, 0x00];
    p.extend((sfrd.len() as u16).to_le_bytes());
    p.extend(pid.to_le_bytes());
    p.push(pt);
    p.push(crc8(&p));
    p.extend(sfrd);
    p.extend(crc16(sfrd).to_le_bytes());
    p
}

/// A record the platform sends: RL, RN, RFL = 0x40 (RSOD: the recipient service is on the
/// terminal; no OID/EVID/TM), SST, RST, RD.
fn record(rn: u16, service: u8, rd: &[u8]) -> Vec<u8> {
    let mut r = (rd.len() as u16).to_le_bytes().to_vec();
    r.extend(rn.to_le_bytes());
    r.extend([0x40, service, service]);
    r.extend(rd);
    r
}

/// PT_RESPONSE (PT=0) to device packet `rpid`, confirming `(record number, service)` pairs
/// with EGTS_SR_RECORD_RESPONSE (SRT=0, SRL=3, CRN, RST=0); our record numbers from `rn`.
fn response(pid: u16, rpid: u16, confirmed: &[(u16, u8)], mut rn: u16) -> Vec<u8> {
    let mut sfrd = rpid.to_le_bytes().to_vec();
    sfrd.push(0); // PR: EGTS_PC_OK
    for &(crn, service) in confirmed {
        let mut rd = vec![0x00, 0x03, 0x00];
        rd.extend(crn.to_le_bytes());
        rd.push(0);
        sfrd.extend(record(rn, service, &rd));
        rn += 1;
    }
    packet(0, pid, &sfrd)
}

fn fix(i: i64, lat: f64) -> Fix {
    Fix {
        time: t(i * 15),
        valid: true,
        lat,
        lon: 37.617_3,
        speed_kmh: 36.5 + i as f64,
        course: 270,
        altitude: 150,
        odometer_m: 12_300,
        inputs: 1,
        satellites: Some(10),
        outputs: Some(0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egts_tcp_session_authenticates_and_confirms_every_record() {
    let d = Daemon::start().await;
    let imei = "865905025123456";
    let tid = 0x0012_3456;
    let mut dev = d.tcp(Protocol::Egts).await;

    // Authentication: record 1 (auth service) in device packet 1.
    dev.send(&encode_term_identity(1, 1, tid, Some(imei))).await;
    let mut want_reply = response(0, 1, &[(1, 1)], 0);
    // EGTS_SR_RESULT_CODE (SRT=9, SRL=1, RCD=0) in our record 1 of our APPDATA packet 1.
    want_reply.extend(packet(1, 1, &record(1, 1, &[0x09, 0x01, 0x00, 0x00])));
    assert_eq!(
        hex::encode(dev.read(want_reply.len()).await),
        hex::encode(&want_reply),
        "record response and result code"
    );

    // Two teledata packets: 3 records then 2, each record confirmed by number.
    let first: Vec<_> = (0..3).map(|i| fix(i, 55.75 + i as f64 * 0.001)).collect();
    dev.send(&encode_teledata(2, 2, Some(tid), &first)).await;
    let want = response(2, 2, &[(2, 2), (3, 2), (4, 2)], 2);
    assert_eq!(hex::encode(dev.read(want.len()).await), hex::encode(&want));
    let second: Vec<_> = (3..5).map(|i| fix(i, 55.75 + i as f64 * 0.001)).collect();
    dev.send(&encode_teledata(3, 5, Some(tid), &second)).await;
    let want = response(3, 3, &[(5, 2), (6, 2)], 5);
    assert_eq!(hex::encode(dev.read(want.len()).await), hex::encode(&want));

    // Refused packets (GOST R 54619, processing result codes): a PT_RESPONSE to the packet
    // with no record confirmed, so the terminal resends at once; nothing of them is stored.
    let refusal = |pid: u16, rpid: u16, pr: u8| {
        let mut sfrd = rpid.to_le_bytes().to_vec();
        sfrd.push(pr);
        packet(0, pid, &sfrd)
    };
    // A broken data CRC: EGTS_PC_DATACRC_ERROR (138).
    let mut bad = encode_teledata(4, 7, Some(tid), &[fix(9, 56.0)]).to_vec();
    let n = bad.len();
    bad[n - 1] ^= 0xFF;
    dev.send(&bad).await;
    let want = refusal(4, 4, 138);
    assert_eq!(hex::encode(dev.read(want.len()).await), hex::encode(&want));
    // A broken header CRC: EGTS_PC_HEADERCRC_ERROR (137) …
    let mut bad = encode_teledata(5, 8, Some(tid), &[fix(10, 56.1)]).to_vec();
    bad[10] ^= 0xFF;
    dev.send(&bad).await;
    let want = refusal(5, 5, 137);
    assert_eq!(hex::encode(dev.read(want.len()).await), hex::encode(&want));
    // … and the connection goes on with the next good packet.
    let third = [fix(5, 55.76)];
    dev.send(&encode_teledata(6, 9, Some(tid), &third)).await;
    let want = response(6, 6, &[(9, 2)], 7);
    assert_eq!(hex::encode(dev.read(want.len()).await), hex::encode(&want));
    // A record whose RL runs past the frame data (checksums right): EGTS_PC_INVDATALEN (139).
    let good = encode_teledata(7, 10, Some(tid), &[fix(11, 56.2)]).to_vec();
    let mut sfrd = good[11..good.len() - 2].to_vec();
    let rl = u16::from_le_bytes([sfrd[0], sfrd[1]]) + 8;
    sfrd[..2].copy_from_slice(&rl.to_le_bytes());
    dev.send(&packet(1, 7, &sfrd)).await;
    let want = refusal(7, 7, 139);
    assert_eq!(hex::encode(dev.read(want.len()).await), hex::encode(&want));

    let expect: Vec<_> = first
        .iter()
        .chain(&second)
        .chain(&third)
        .map(|f| Expect {
            time: f.time,
            lat: f.lat,
            lon: f.lon,
            speed_kmh: f.speed_kmh,
        })
        .collect();
    // Latitude in 90/2^32 degree units, speed in 0.1 km/h.
    assert_track(&d.track(imei).await, &expect, 1e-6, 1e-6);
    d.stop().await;
}
