//! Every real packet of every protocol runs through our decoders (see `protocols/*/NOTICE.md`).
//! Packets marked as positions must decode to positions (matching the fix where given), those
//! marked as carrying none must not produce one, and nothing may panic. A packet that cannot
//! pass is listed with its reason in `protocols/<name>/corpus-misses.tsv`; the misses must be
//! exactly those listed, so a regression fails and so does a fix that leaves the list stale.

use std::path::Path;

use fleetgate::protocols::corpus;

#[test]
fn every_corpus_packet_decodes_as_expected_or_is_a_listed_miss() {
    let rows = corpus::report(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("protocols")
            .as_path(),
    );
    assert!(rows.len() >= 12, "corpus missing: {} protocols", rows.len());
    let mut problems = Vec::new();
    for r in &rows {
        println!(
            "{:<10} {:>4}/{:<4} known misses {}",
            r.protocol,
            r.passed,
            r.total,
            r.known.len()
        );
        for o in r.unexplained() {
            problems.push(format!(
                "{} line {} ({}; expect {}): {}",
                r.protocol, o.line, o.test, o.expect, o.detail
            ));
        }
        for l in r.stale() {
            problems.push(format!(
                "{} line {l} passes now: remove it from corpus-misses.tsv",
                r.protocol
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "corpus problems:\n{}",
        problems.join("\n")
    );
}
