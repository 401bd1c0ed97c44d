//! The module graph between top-level modules stays a DAG that follows the layers of
//! docs/architecture.md: reads every `crate::x` path in `src/` (outside `#[cfg(test)]` code),
//! fails on a cycle (printing it) and on an edge that points up or sideways (printing the
//! files that make it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first. A module may use only modules of a lower layer. `config::error` is the leaf
/// that every section's `validate()` returns; `config` is the root `Config` that gathers the
/// sections, so it sits just under `app`. `storage` is an adapter above the features: it
/// implements the ports they own (STYLE.md habit 13).
pub const LAYERS: &[&[&str]] = &[
    &["model", "config::error"],
    &["protocols", "ops"],
    &["pipeline"],
    &["ingest", "geofence", "cluster"],
    &["crm", "archive"],
    &["immobiliser"],
    &["storage"],
    &["api", "sim", "replay"],
    &["config"],
    &["app"],
];

/// Edges known to break the layering, each to be removed by named work: today every module
/// under `storage` that imports it (its `Store`, rows or `StorageError`) instead of a port of
/// its own. The test fails on any edge not listed here, and on a listed edge that no longer
/// exists (delete its line then), so the list only shrinks.
pub const KNOWN_EDGES: &[(&str, &str, &str)] = &[
    // Not planned yet: both read `[storage]` (the cluster connects to its database; the
    // writer sizes its batches and watches the database's disk).
    ("cluster", "storage", "cluster's own connection settings"),
    ("pipeline", "storage", "the writer's own storage settings"),
];

/// Files (relative to `src/`) left out: the crate root and the binary wire everything.
const ROOTS: &[&str] = &["lib.rs", "main.rs", "module_graph.rs"];

#[derive(Default)]
pub struct Graph {
    /// from → to → files (relative to `src/`) that make the edge.
    pub edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Graph {
    /// The graph of the crate under `src`.
    pub fn of(src: &Path) -> Graph {
        let mut g = Graph::default();
        let mut files = Vec::new();
        walk(src, &mut files);
        files.sort();
        let test_files = test_only_files(src, &files);
        for f in &files {
            let rel = f.strip_prefix(src).unwrap_or(f);
            let rel_s = rel.to_string_lossy().replace('\\', "/");
            if ROOTS.contains(&rel_s.as_str()) || test_files.contains(f) {
                continue;
            }
            let Some(first) = rel.components().next() else {
                continue;
            };
            let from = first.as_os_str().to_string_lossy();
            let from = from.strip_suffix(".rs").unwrap_or(&from).to_string();
            let text = std::fs::read_to_string(f).unwrap_or_default();
            for to in targets(&without_tests(&strip_comments_and_strings(&text))) {
                let from_node = if rel_s == "config/error.rs" {
                    "config::error".to_string()
                } else {
                    from.clone()
                };
                if to != from_node && !(from_node == "config::error" && to == "config") {
                    g.add(&from_node, &to, &rel_s);
                }
            }
        }
        g
    }

    pub fn add(&mut self, from: &str, to: &str, file: &str) {
        self.edges
            .entry(from.into())
            .or_default()
            .entry(to.into())
            .or_default()
            .insert(file.into());
    }

    fn known(from: &str, to: &str) -> bool {
        KNOWN_EDGES.iter().any(|(a, b, _)| *a == from && *b == to)
    }

    /// A cycle among the edges not in `KNOWN_EDGES`, as `a → b → … → a`.
    pub fn cycle(&self) -> Option<Vec<String>> {
        fn visit(
            g: &Graph,
            n: &str,
            state: &mut BTreeMap<String, u8>,
            path: &mut Vec<String>,
        ) -> Option<Vec<String>> {
            state.insert(n.into(), 1);
            path.push(n.into());
            for to in g.edges.get(n).into_iter().flat_map(|m| m.keys()) {
                if Graph::known(n, to) {
                    continue;
                }
                match state.get(to.as_str()) {
                    Some(1) => {
                        let start = path.iter().position(|p| p == to).unwrap_or(0);
                        let mut c = path[start..].to_vec();
                        c.push(to.clone());
                        return Some(c);
                    }
                    Some(_) => {}
                    None => {
                        if let Some(c) = visit(g, to, state, path) {
                            return Some(c);
                        }
                    }
                }
            }
            path.pop();
            state.insert(n.into(), 2);
            None
        }
        let mut state = BTreeMap::new();
        for n in self.edges.keys() {
            if !state.contains_key(n.as_str()) {
                if let Some(c) = visit(self, n, &mut state, &mut Vec::new()) {
                    return Some(c);
                }
            }
        }
        None
    }

    /// Edges (not in `KNOWN_EDGES`) that do not point to a lower layer, with their files.
    pub fn against_layers(&self) -> Vec<String> {
        let layer = |m: &str| LAYERS.iter().position(|l| l.contains(&m));
        let mut bad = Vec::new();
        for (from, tos) in &self.edges {
            for (to, files) in tos {
                if Graph::known(from, to) {
                    continue;
                }
                let files: Vec<&str> = files.iter().map(String::as_str).collect();
                match (layer(from), layer(to)) {
                    (Some(a), Some(b)) if b < a => {}
                    (None, _) => bad.push(format!("{from} is in no layer ({})", files.join(", "))),
                    (_, None) => bad.push(format!("{to} is in no layer ({})", files.join(", "))),
                    _ => bad.push(format!(
                        "{from} → {to} points up or sideways: {}",
                        files.join(", ")
                    )),
                }
            }
        }
        bad
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Files declared as `#[cfg(test)] mod name;`: `name.rs` or `name/mod.rs` beside their
/// parent (`a.rs` declares `a/name.rs`; `a/mod.rs` and `lib.rs` declare `…/name.rs`).
fn test_only_files(src: &Path, files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for f in files {
        let text = strip_comments_and_strings(&std::fs::read_to_string(f).unwrap_or_default());
        let dir = match f.file_name().and_then(|n| n.to_str()) {
            Some("mod.rs") | Some("lib.rs") | Some("main.rs") => {
                f.parent().unwrap_or(src).to_path_buf()
            }
            _ => f.with_extension(""),
        };
        let mut rest = text.as_str();
        while let Some(i) = rest.find("#[cfg(test)]") {
            rest = &rest[i + "#[cfg(test)]".len()..];
            let decl = rest.trim_start();
            let decl = decl.strip_prefix("pub(crate) ").unwrap_or(decl);
            if let Some(d) = decl.strip_prefix("mod ") {
                let name: String = d
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if d[name.len()..].trim_start().starts_with(';') {
                    out.insert(dir.join(format!("{name}.rs")));
                    out.insert(dir.join(&name).join("mod.rs"));
                }
            }
        }
    }
    out
}

/// The text with comments and string/char literals blanked (so `"crate::x"` in a message or
/// a doc line naming a module is no edge).
pub fn strip_comments_and_strings(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) {
            // A raw string r"…" or r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') || (i > 0 && is_ident(b[i - 1])) {
                out.push(c as char);
                i += 1;
                continue;
            }
            j += 1;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while j < b.len() && !b[j..].starts_with(&close) {
                j += 1;
            }
            i = j + close.len();
            out.push_str("\"\"");
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == b'\'' {
            // A char literal ('x', '\n', '\u{1F600}'), or a lifetime ('a): keep lifetimes.
            let end = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..]
                    .iter()
                    .position(|&x| x == b'\'')
                    .map(|p| i + 2 + p)
            } else if b.get(i + 2) == Some(&b'\'') {
                Some(i + 2)
            } else {
                // A multi-byte char: find its closing quote within 5 bytes.
                (i + 2..(i + 6).min(b.len())).find(|&k| b[k] == b'\'' && !b[i + 1].is_ascii())
            };
            match end {
                Some(e) => {
                    out.push_str("' '");
                    i = e + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            // Copy one whole UTF-8 character.
            let len = s[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&s[i..i + len]);
            i += len;
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The text without `#[cfg(test)]` items written inline (`mod tests { … }`, a test-only fn).
pub fn without_tests(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        rest = &rest[i + "#[cfg(test)]".len()..];
        // Skip the item: up to its `;` or through its braced body.
        let mut depth = 0usize;
        let mut end = rest.len();
        for (k, ch) in rest.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The top-level modules a text names: `crate::x…` paths and `use crate::{x::…, y}` groups;
/// `crate::config::error…` is the node `config::error`.
pub fn targets(s: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(p) = s[from..].find("crate::") {
        let at = from + p;
        from = at + "crate::".len();
        if at > 0 && (is_ident(b[at - 1]) || b[at - 1] == b'$') {
            continue;
        }
        let rest = &s[from..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            let mut items = Vec::new();
            for ch in group.chars() {
                match ch {
                    '{' => {
                        depth += 1;
                        item.push(ch)
                    }
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                        item.push(ch)
                    }
                    ',' if depth == 1 => items.push(std::mem::take(&mut item)),
                    _ => item.push(ch),
                }
            }
            items.push(item);
            for it in items {
                if let Some(n) = node(it.trim()) {
                    out.insert(n);
                }
            }
        } else if let Some(n) = node(rest) {
            out.insert(n);
        }
    }
    out
}

/// The node a path (after `crate::`) starts with.
fn node(path: &str) -> Option<String> {
    let name: String = path
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if name.is_empty() || name == "self" {
        return None;
    }
    let after = path[name.len()..].trim_start();
    if name == "config" {
        if let Some(sub) = after.strip_prefix("::") {
            let sub = sub.trim_start();
            let rest = sub.strip_prefix('{').unwrap_or(sub);
            if rest.trim_start().starts_with("error") && !sub.starts_with('{') {
                return Some("config::error".into());
            }
        }
    }
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
    }

    #[test]
    fn the_module_graph_between_top_level_modules_has_no_cycle() {
        let g = Graph::of(&src());
        if let Some(c) = g.cycle() {
            let mut why = Vec::new();
            for w in c.windows(2) {
                let files = &g.edges[&w[0]][&w[1]];
                why.push(format!(
                    "  {} → {}: {}",
                    w[0],
                    w[1],
                    files.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            panic!(
                "import cycle {}\n{}\n(docs/architecture.md: break it with a trait the user owns)",
                c.join(" → "),
                why.join("\n")
            );
        }
    }

    #[test]
    fn every_use_points_to_a_lower_layer() {
        let bad = Graph::of(&src()).against_layers();
        assert!(
            bad.is_empty(),
            "edges against the layers of docs/architecture.md (module_graph::LAYERS):\n  {}",
            bad.join("\n  ")
        );
    }

    #[test]
    fn the_known_edges_still_exist_so_the_list_only_shrinks() {
        let g = Graph::of(&src());
        for (from, to, why) in KNOWN_EDGES {
            assert!(
                g.edges.get(*from).is_some_and(|t| t.contains_key(*to)),
                "{from} → {to} ({why}) is gone: delete it from module_graph::KNOWN_EDGES"
            );
        }
    }

    #[test]
    fn every_top_level_module_has_a_layer() {
        let mut missing = Vec::new();
        for e in std::fs::read_dir(src()).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let name = name.strip_suffix(".rs").unwrap_or(&name).to_string();
            if ["lib", "main", "module_graph"].contains(&name.as_str()) {
                continue;
            }
            if !LAYERS.iter().any(|l| l.contains(&name.as_str())) {
                missing.push(name);
            }
        }
        assert!(
            missing.is_empty(),
            "not in module_graph::LAYERS: {missing:?}"
        );
    }

    #[test]
    fn the_layer_picture_in_the_docs_is_the_one_enforced() {
        let doc = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md"),
        )
        .unwrap();
        for (i, l) in LAYERS.iter().enumerate().rev() {
            let line = format!("{i} | {}", l.join(", "));
            assert!(
                doc.contains(&line),
                "docs/architecture.md lacks the layer line `{line}`"
            );
        }
    }

    #[test]
    fn a_cycle_is_found_and_printed_and_comments_strings_and_tests_make_no_edge() {
        let mut g = Graph::default();
        g.add("ingest", "protocols", "ingest/mod.rs");
        g.add("protocols", "crm", "protocols/x.rs");
        g.add("crm", "ingest", "crm/y.rs");
        g.add("api", "ingest", "api/mod.rs");
        let c = g.cycle().expect("a cycle");
        assert_eq!(c.first(), c.last());
        assert_eq!(c.len(), 4, "{c:?}");
        // Only the edge that points up is against the layers (crm → ingest goes down).
        assert_eq!(
            g.against_layers(),
            ["protocols → crm points up or sideways: protocols/x.rs"]
        );
        // A known edge is no cycle: storage → cluster is allowed, cluster → storage is listed.
        let mut g = Graph::default();
        g.add("storage", "cluster", "storage/x.rs");
        g.add("cluster", "storage", "cluster/mod.rs");
        assert_eq!(g.cycle(), None);

        let text = r##"
            //! See `crate::app` for the wiring.
            use crate::{model::DeviceId, pipeline::{Pipeline, writer}};
            use crate::config::error::{invalid, ConfigError};
            let s = "crate::api is not an edge"; let r = r#"crate::app"#;
            macro_rules! m { () => { $crate::ops::x() } }
            let c = '"'; let t = crate::storage::open;
            #[cfg(test)]
            mod tests { use crate::app::start; }
        "##;
        let t = targets(&without_tests(&strip_comments_and_strings(text)));
        let t: Vec<&str> = t.iter().map(String::as_str).collect();
        assert_eq!(t, ["config::error", "model", "pipeline", "storage"]);
    }
}
