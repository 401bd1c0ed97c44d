//! Write the seed corpus for every fuzz target from the real packets in
//! `protocols/*/corpus.jsonl`: `tests/fuzz/corpus/<target>/<hash>`, each packet as sent
//! (all at once) and as a logged-in session fed in 7-byte reads, in the harness's input format.
//!
//!   cargo run --manifest-path tests/fuzz/Cargo.toml --bin seed_corpus

use std::path::PathBuf;

use fleetgate::protocols::fuzz::{input, Header};
use fleetgate::protocols::{Protocol, Transport};

fn hash(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn main() {
    let seeds = fleetgate_fuzz::seeds();
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut total = 0;
    for (protocol, packets) in &seeds.packets {
        let dir = out.join(protocol.name());
        std::fs::create_dir_all(&dir).expect("corpus dir");
        for (transport, bytes) in packets {
            let udp = *transport == Transport::Udp;
            for header in [
                Header {
                    udp,
                    login: false,
                    chunk: 0,
                },
                Header {
                    udp,
                    login: true,
                    chunk: 7,
                },
            ] {
                let data = input(header, bytes);
                std::fs::write(dir.join(format!("{:016x}", hash(&data))), &data).expect("write");
                total += 1;
            }
        }
    }
    let dir = out.join("commands");
    std::fs::create_dir_all(&dir).expect("corpus dir");
    for (i, protocol) in Protocol::ALL.iter().enumerate() {
        for (_, answer) in seeds.packets.get(protocol).into_iter().flatten() {
            let text = b"setdigout 1";
            let mut data = vec![i as u8, text.len() as u8];
            data.extend_from_slice(text);
            data.extend_from_slice(answer);
            std::fs::write(dir.join(format!("{:016x}", hash(&data))), &data).expect("write");
            total += 1;
        }
    }
    println!("{total} seeds under {}", out.display());
}
