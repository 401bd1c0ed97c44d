//! The metrics catalogue stays true: every metric the code records is named by the
//! conventions, described (`# HELP`) in src/ops/metrics.rs and listed in docs/metrics.md, and
//! the Grafana dashboard only queries documented metrics, with a row per area.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `fleetgate_*` names passed to `metrics::counter!/gauge!/histogram!` anywhere in src/.
fn recorded() -> BTreeSet<(String, &'static str)> {
    let mut files = Vec::new();
    rust_files(&repo("src"), &mut files);
    let mut out = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for kind in ["counter", "gauge", "histogram"] {
            let pat = format!("metrics::{kind}!(");
            for (i, _) in text.match_indices(&pat) {
                let rest = text[i + pat.len()..].trim_start();
                if let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) {
                    out.insert((name.to_string(), kind));
                }
            }
        }
    }
    out
}

#[test]
fn every_recorded_metric_is_named_described_and_documented() {
    let recorded = recorded();
    assert!(recorded.len() >= 20, "scanner found only {recorded:?}");
    let described = std::fs::read_to_string(repo("src/ops/metrics.rs")).unwrap();
    let doc = std::fs::read_to_string(repo("docs/metrics.md")).unwrap();
    let mut problems = Vec::new();
    for (name, kind) in &recorded {
        let ok_name = name.starts_with("fleetgate_")
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && name.matches('_').count() >= 2;
        if !ok_name {
            problems.push(format!("{name}: not fleetgate_<area>_<what>[_<unit>]"));
        }
        match *kind {
            "counter" if !name.ends_with("_total") => {
                problems.push(format!("{name}: a counter must end in _total"))
            }
            "gauge" | "histogram" if name.ends_with("_total") => {
                problems.push(format!("{name}: only counters end in _total"))
            }
            _ => {}
        }
        if !described.contains(&format!("\"{name}\"")) {
            problems.push(format!("{name}: no describe_{kind}! in src/ops/metrics.rs"));
        }
        if !doc.contains(&format!("| `{name}` | {kind} |")) {
            problems.push(format!(
                "{name}: no `| `{name}` | {kind} |` row in docs/metrics.md"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "metrics catalogue out of date:\n{}",
        problems.join("\n")
    );
}

#[test]
fn grafana_dashboard_queries_only_documented_metrics_and_covers_every_area() {
    let text = std::fs::read_to_string(repo("docs/grafana/fleetgate.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let doc = std::fs::read_to_string(repo("docs/metrics.md")).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    for area in ["Ingest", "Storage", "Zones", "Immobiliser", "CRM outbox"] {
        assert!(
            rows.iter().any(|r| r.starts_with(area)),
            "no {area} row in {rows:?}"
        );
    }
    let mut used = BTreeSet::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().expect("panel has targets");
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("fleetgate_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|b| doc.contains(&format!("`{b}` | histogram")))
                    .unwrap_or(&name)
                    .to_string();
                used.insert(base);
            }
        }
    }
    let undocumented: Vec<_> = used
        .iter()
        .filter(|m| !doc.contains(&format!("| `{m}` |")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "dashboard queries undocumented metrics: {undocumented:?}"
    );
    for (name, _) in recorded() {
        assert!(used.contains(&name), "no panel shows {name}");
    }
}
