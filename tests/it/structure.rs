//! The import graph of Keel's own source files has no cycles: each file's references to
//! other modules of its crate (`crate::a::b`, `super::x`, `use a::{b, c}` of its own
//! submodules) are resolved to the file that defines that module, and the graph of those
//! edges must be acyclic (docs/architecture.md, "Layers and names"). A submodule naming
//! its own ancestors' items is not an edge: the ancestor contains it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`["destinations", "http"]`) → file, for one crate's `src/`.
fn modules(root: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(root).expect("under root");
            let mut parts: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            out.insert(parts, path);
        }
    }
    out
}

/// Every module path a file's code names, as written (`crate::a::b`, `super::x`, and the
/// members of `use p::{a, b::c}` groups joined to `p`).
fn references(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !t.starts_with("//")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        let starts = ["crate::", "super::", "self::"]
            .iter()
            .find(|p| bytes[i..].starts_with(p.as_bytes()))
            .copied();
        let own_use = bytes[i..].starts_with(b"use ") && (i == 0 || !is_ident(bytes[i - 1]));
        if starts.is_none() && !own_use {
            i += 1;
            continue;
        }
        if starts.is_some() && i > 0 && (is_ident(bytes[i - 1]) || bytes[i - 1] == b':') {
            i += 1;
            continue;
        }
        let from = if own_use { i + 4 } else { i };
        // Read a path with one level of `{…}` group.
        let mut j = from;
        while j < bytes.len() && (is_ident(bytes[j]) || bytes[j] == b':') {
            j += 1;
        }
        let prefix = code[from..j].trim_end_matches("::").to_owned();
        if j < bytes.len() && bytes[j] == b'{' {
            let end = code[j..].find('}').map_or(bytes.len(), |e| j + e);
            for member in code[j + 1..end].split(',') {
                let member = member.trim().split(" as ").next().unwrap_or("").trim();
                let member = member.trim_start_matches('{');
                if member.is_empty() || member == "self" {
                    out.push(prefix.clone());
                } else {
                    out.push(format!("{prefix}::{member}"));
                }
            }
            i = end;
        } else {
            out.push(prefix);
            i = j.max(i + 1);
        }
    }
    out
}

/// The file a reference from module `at` lands in: the longest known module prefix.
fn target(
    at: &[String],
    is_mod_file: bool,
    reference: &str,
    known: &BTreeMap<Vec<String>, PathBuf>,
) -> Option<Vec<String>> {
    let mut segs: Vec<&str> = reference.split("::").filter(|s| !s.is_empty()).collect();
    let mut path: Vec<String> = match segs.first().copied() {
        Some("crate") => {
            segs.remove(0);
            Vec::new()
        }
        Some("super") => {
            let mut p = at.to_vec();
            while segs.first() == Some(&"super") {
                segs.remove(0);
                p.pop();
            }
            p
        }
        Some("self") => {
            segs.remove(0);
            at.to_vec()
        }
        // `use child::x` in a mod.rs/lib.rs names its own submodule.
        Some(first) if is_mod_file || at.is_empty() => {
            let mut p = at.to_vec();
            p.push(first.to_owned());
            if !known.contains_key(&p) {
                return None;
            }
            segs.remove(0);
            p
        }
        _ => return None,
    };
    for s in segs {
        let mut next = path.clone();
        next.push(s.to_owned());
        if known.contains_key(&next) {
            path = next;
        } else {
            break;
        }
    }
    known.contains_key(&path).then_some(path)
}

/// Groups of files that import each other in a circle (strongly connected, size > 1).
fn cycles(root: &Path) -> Vec<Vec<PathBuf>> {
    let known = modules(root);
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, file) in &known {
        let text = std::fs::read_to_string(file).expect("read source");
        let text = text.split("\n#[cfg(test)]").next().unwrap_or("");
        let is_mod_file = file
            .file_stem()
            .is_some_and(|s| s == "mod" || s == "lib" || s == "main");
        let mut refs = references(text);
        if is_mod_file {
            // Paths through a submodule without `use` (`admin::list_dlq` in a mod.rs).
            for child in known
                .keys()
                .filter(|k| k.len() == module.len() + 1 && k.starts_with(module))
            {
                let name = format!("{}::", child[module.len()]);
                let named = text.match_indices(&name).any(|(at, _)| {
                    at == 0 || {
                        let b = text.as_bytes()[at - 1];
                        !(b.is_ascii_alphanumeric() || b == b'_' || b == b':')
                    }
                });
                if named {
                    refs.push(format!("self::{}", child[module.len()]));
                }
            }
        }
        for r in refs {
            if let Some(t) = target(module, is_mod_file, &r, &known) {
                // A submodule may use its ancestors' items (they contain it); every other
                // reference, a mod.rs using or re-exporting its children included, counts.
                if &t != module && !module.starts_with(&t) {
                    edges.entry(module.clone()).or_default().insert(t);
                }
            }
        }
    }
    // Tarjan's strongly connected components.
    struct State<'a> {
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<Vec<String>, usize>,
        low: BTreeMap<Vec<String>, usize>,
        stack: Vec<Vec<String>>,
        on: BTreeSet<Vec<String>>,
        next: usize,
        out: Vec<Vec<Vec<String>>>,
    }
    fn visit(s: &mut State<'_>, v: &Vec<String>) {
        s.index.insert(v.clone(), s.next);
        s.low.insert(v.clone(), s.next);
        s.next += 1;
        s.stack.push(v.clone());
        s.on.insert(v.clone());
        let succ: Vec<Vec<String>> = s.edges.get(v).into_iter().flatten().cloned().collect();
        for w in succ {
            if !s.index.contains_key(&w) {
                visit(s, &w);
                let lw = s.low[&w];
                let lv = s.low[v];
                s.low.insert(v.clone(), lv.min(lw));
            } else if s.on.contains(&w) {
                let iw = s.index[&w];
                let lv = s.low[v];
                s.low.insert(v.clone(), lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(&w);
                let done = &w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                s.out.push(comp);
            }
        }
    }
    let mut state = State {
        edges: &edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in known.keys() {
        if !state.index.contains_key(v) {
            visit(&mut state, v);
        }
    }
    state
        .out
        .into_iter()
        .map(|c| c.iter().map(|m| known[m].clone()).collect())
        .collect()
}

#[test]
fn no_source_file_is_part_of_an_import_cycle() {
    // `KEEL_STRUCTURE_REPO=<another checkout>` checks that tree instead (before/after
    // comparisons).
    let repo = std::env::var_os("KEEL_STRUCTURE_REPO")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    let mut problems = Vec::new();
    for root in ["actors/src", "src"] {
        let found = cycles(&repo.join(root));
        let files: usize = found.iter().map(Vec::len).sum();
        if !found.is_empty() {
            problems.push(format!(
                "{} import cycles through {files} files in {root}: {found:#?}",
                found.len()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let dir = std::env::temp_dir().join(format!("keel-cycles-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("a")).expect("mkdir");
    std::fs::write(dir.join("lib.rs"), "pub mod a;\npub mod b;\n").expect("write");
    std::fs::write(dir.join("a/mod.rs"), "mod c;\nuse c::C;\npub struct A;\n").expect("write");
    std::fs::write(dir.join("a/c.rs"), "use crate::b::B;\npub struct C;\n").expect("write");
    std::fs::write(dir.join("b.rs"), "use crate::a::A;\npub struct B;\n").expect("write");
    let found = cycles(&dir);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(found.len(), 1, "{found:?}");
    // a/mod.rs → a/c.rs → b.rs → a/mod.rs.
    assert_eq!(found[0].len(), 3, "{found:?}");
}
