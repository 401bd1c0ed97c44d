//! `docs/protocols.md` shows the corpus table and every miss: this test fails when the document
//! no longer says what `fleetgate corpus-report protocols` computes.

use std::path::Path;

use fleetgate::protocols::corpus;

#[test]
fn corpus_table_in_docs_matches_the_corpus_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/protocols.md")).expect("docs/protocols.md");
    let rows = corpus::report(&root.join("protocols"));
    let listened = fleetgate::protocols::Protocol::ALL
        .iter()
        .filter(|p| !p.transports().is_empty())
        .count();
    assert_eq!(rows.len(), listened, "every protocol has a corpus");
    for r in &rows {
        let name = r.protocol.name();
        let pct = 100.0 * r.passed as f64 / r.total.max(1) as f64;
        let want = format!(
            "| {name} | {} | {} | {} | {pct:.1} | {} |",
            r.total,
            r.passed,
            r.command_answers,
            r.known.len()
        );
        assert!(
            doc.lines().any(|l| l.trim() == want),
            "docs/protocols.md lacks the row `{want}`: run `cargo run -- corpus-report protocols`"
        );
        for o in &r.failed {
            let reason = r.known.get(&o.line).expect("every miss is explained");
            let entry = format!("line {} (", o.line);
            assert!(
                doc.lines()
                    .any(|l| l.starts_with(&format!("- {entry}")) && l.contains(reason.as_str())),
                "docs/protocols.md does not list {name} {entry}…) with its reason"
            );
        }
        assert!(
            doc.contains(&format!("(../protocols/{name}/README.md)")),
            "docs/protocols.md links protocols/{name}/README.md"
        );
    }
}
