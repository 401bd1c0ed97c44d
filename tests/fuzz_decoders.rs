//! Hostile input on stable Rust: a seeded mutation fuzzer over every protocol's real packets
//! (`protocols/*/corpus.jsonl`), through the same harness as the cargo-fuzz targets in
//! `tests/fuzz/` (`fleetgate::protocols::fuzz`), plus the regression corpus of inputs that
//! once crashed (`tests/fuzz/regressions/<target>/`), replayed on every `cargo test`.
//!
//! `FLEETGATE_FUZZ_ITERS` (default 1500 per protocol) and `FLEETGATE_FUZZ_SEED` make longer or
//! different runs; a crashing input is written to `$CARGO_TARGET_TMPDIR/fuzz-crashes/` and
//! belongs, once fixed, in the regression corpus.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use fleetgate::protocols::fuzz::{self, Header, Seeds};
use fleetgate::protocols::Protocol;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load() -> Seeds {
    let seeds = fuzz::seeds(&root().join("protocols"));
    // Every protocol a listener speaks; the MQTT JSON payload decoder is serde over one
    // document and has no device corpus (its unit tests feed it malformed documents).
    let listened = Protocol::ALL
        .iter()
        .filter(|p| !p.transports().is_empty())
        .count();
    assert_eq!(
        seeds.packets.len(),
        listened,
        "every listener protocol has seeds"
    );
    seeds
}

const INTERESTING: &[u32] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x10000,
    0x7fff_ffff,
    0xffff_ffff,
];

/// One to four random edits of a seed, in the spirit of libFuzzer's mutators.
fn mutate(rng: &mut StdRng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        let len = v.len();
        match rng.gen_range(0..9) {
            0 if len > 0 => {
                let i = rng.gen_range(0..len);
                v[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.gen_range(0..len);
                v[i] = rng.gen();
            }
            2 => {
                let i = rng.gen_range(0..=len);
                let n = rng.gen_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                v.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.gen_range(0..len);
                let n = rng.gen_range(1..=(len - i).min(32));
                v.drain(i..i + n);
            }
            4 if len > 0 => {
                v.truncate(rng.gen_range(0..len));
            }
            5 if len > 0 => {
                // An interesting value where a length or count field may sit.
                let i = rng.gen_range(0..len);
                let x = INTERESTING[rng.gen_range(0..INTERESTING.len())];
                let width = [1usize, 2, 4][rng.gen_range(0..3)];
                let bytes = if rng.gen() {
                    x.to_be_bytes()
                } else {
                    x.to_le_bytes()
                };
                for (k, b) in bytes[4 - width..].iter().enumerate() {
                    if let Some(slot) = v.get_mut(i + k) {
                        *slot = *b;
                    }
                }
            }
            6 if !other.is_empty() => {
                // Splice in part of another packet of the same protocol.
                let a = rng.gen_range(0..other.len());
                let b = rng.gen_range(a..=other.len());
                let i = rng.gen_range(0..=len);
                v.splice(i..i, other[a..b].iter().copied());
            }
            7 if len > 1 => {
                // Duplicate a range (repeated records, doubled frames).
                let a = rng.gen_range(0..len);
                let b = rng.gen_range(a..=len.min(a + 64));
                let part = v[a..b].to_vec();
                v.splice(b..b, part);
            }
            _ => {
                // Two packets back to back.
                v.extend_from_slice(other);
            }
        }
    }
    v
}

fn crash_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashes")
}

/// Run one input; on a panic, keep the input and return its description.
fn attempt(target: &str, input: &[u8], f: impl FnOnce()) -> Option<String> {
    let r = catch_unwind(AssertUnwindSafe(f));
    let Err(panic) = r else { return None };
    let msg = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    let dir = crash_dir().join(target);
    let _ = std::fs::create_dir_all(&dir);
    let name = format!("crash-{:016x}", fxhash(input));
    let _ = std::fs::write(dir.join(&name), input);
    Some(format!(
        "{target}: {msg} (input {} bytes, saved as {}/{name}): {}",
        input.len(),
        dir.display(),
        hex::encode(&input[..input.len().min(96)])
    ))
}

fn fxhash(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn iters() -> usize {
    std::env::var("FLEETGATE_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500)
}

fn rng_seed() -> u64 {
    std::env::var("FLEETGATE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x00f1_ee79_a7e0)
}

#[test]
fn mutated_real_packets_never_crash_a_decoder() {
    let seeds = load();
    // Panics are the finding; keep the default hook from printing thousands of them.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut crashes = Vec::new();
    let mut runs = 0usize;
    let protocols: Vec<Protocol> = Protocol::ALL
        .iter()
        .copied()
        .filter(|p| seeds.packets.contains_key(p))
        .collect();
    for &protocol in &protocols {
        let mut rng = StdRng::seed_from_u64(rng_seed() ^ protocol as u64);
        let packets = &seeds.packets[&protocol];
        for _ in 0..iters() {
            let (_, seed) = &packets[rng.gen_range(0..packets.len())];
            let (_, other) = &packets[rng.gen_range(0..packets.len())];
            let payload = mutate(&mut rng, seed, other);
            let header = Header::from_byte(rng.gen());
            let input = fuzz::input(header, &payload);
            runs += 1;
            if let Some(c) = attempt(protocol.name(), &input, || {
                fuzz::run(protocol, &seeds, &input)
            }) {
                crashes.push(c);
            }
        }
        // Pure noise too: not every attack starts from a valid packet.
        for _ in 0..iters() / 5 {
            let n = rng.gen_range(0..512);
            let input: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            runs += 1;
            if let Some(c) = attempt(protocol.name(), &input, || {
                fuzz::run(protocol, &seeds, &input)
            }) {
                crashes.push(c);
            }
        }
    }
    // The command path: every protocol's encoders and answer parsers.
    let mut rng = StdRng::seed_from_u64(rng_seed());
    let all: Vec<&Vec<u8>> = seeds.packets.values().flatten().map(|(_, p)| p).collect();
    for _ in 0..iters() * 2 {
        let pick: u8 = rng.gen();
        let protocol = protocols[pick as usize % protocols.len()];
        let own = &seeds.packets[&protocol];
        let (a, b) = (rng.gen_range(0..own.len()), rng.gen_range(0..all.len()));
        let answer = mutate(&mut rng, &own[a].1, all[b]);
        let text: Vec<u8> = (0..rng.gen_range(0..40)).map(|_| rng.gen()).collect();
        let mut input = vec![pick, text.len() as u8];
        input.extend_from_slice(&text);
        input.extend_from_slice(&answer);
        runs += 1;
        if let Some(c) = attempt("commands", &input, || fuzz::run_command(&seeds, &input)) {
            crashes.push(c);
        }
    }
    std::panic::set_hook(hook);
    println!("{runs} fuzz inputs, {} crashes", crashes.len());
    assert!(
        crashes.is_empty(),
        "{} crashes:\n{}",
        crashes.len(),
        crashes.join("\n")
    );
}

fn regression_inputs(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(targets) = std::fs::read_dir(dir) else {
        return out;
    };
    for t in targets.flatten() {
        let target = t.file_name().to_string_lossy().into_owned();
        for f in std::fs::read_dir(t.path()).into_iter().flatten().flatten() {
            out.push((target.clone(), f.path()));
        }
    }
    out.sort();
    out
}

#[test]
fn regression_corpus_replays_clean() {
    let seeds = load();
    let inputs = regression_inputs(&root().join("tests/fuzz/regressions"));
    assert!(!inputs.is_empty(), "tests/fuzz/regressions is empty");
    for (target, path) in inputs {
        let input = std::fs::read(&path).unwrap();
        if target == "commands" {
            fuzz::run_command(&seeds, &input);
        } else {
            let protocol = Protocol::from_name(&target)
                .unwrap_or_else(|| panic!("{}: no protocol {target}", path.display()));
            fuzz::run(protocol, &seeds, &input);
        }
    }
}
