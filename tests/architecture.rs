//! The architecture, enforced: no import cycle between the top-level modules of `src/` (a folder counts
//! as one module), and each module imports only what `src/lib.rs` draws below it. Reads the `crate::`
//! paths of every source file (comments and `#[cfg(test)]` modules left out), so the next change that
//! brings a cycle back fails here, naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What each module may import (the arrows of `src/lib.rs`).
const ALLOWED: &[(&str, &[&str])] = &[
    ("core", &[]),
    ("ops", &["core"]),
    ("config", &["core", "ops"]),
    ("mqtt", &["core", "ops", "config"]),
    ("kafka", &["core", "ops", "config"]),
    ("registry", &["core", "ops", "config"]),
    ("spool", &["core"]),
    ("downlink", &["core", "ops", "config", "mqtt", "kafka"]),
    ("pipeline", &["core", "ops", "config", "mqtt", "kafka", "registry", "spool", "downlink"]),
    ("commands", &["core", "ops", "config", "mqtt", "kafka", "registry"]),
];

type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// The top-level modules of `src` and, for each, the modules it imports with the files that do.
fn graph(files: &[(String, String)]) -> Graph {
    let modules: BTreeSet<String> = files.iter().filter_map(|(path, _)| top_module(path)).collect();
    let mut g: Graph = modules.iter().map(|m| (m.clone(), BTreeMap::new())).collect();
    for (path, text) in files {
        let Some(from) = top_module(path) else { continue };
        if path.ends_with("/tests.rs") || path.ends_with("_tests.rs") {
            continue;
        }
        for to in crate_paths(&strip_tests(&strip_comments(text))) {
            if to != from && modules.contains(&to) {
                g.entry(from.clone()).or_default().entry(to).or_default().insert(path.clone());
            }
        }
    }
    g
}

/// `core` for `core/routing/mod.rs` and `core.rs`; nothing for `lib.rs` and `main.rs`.
fn top_module(path: &str) -> Option<String> {
    let first = path.split('/').next()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

fn strip_comments(text: &str) -> String {
    text.lines().map(|l| l.find("//").map_or(l, |i| &l[..i])).collect::<Vec<_>>().join("\n")
}

/// Leaves out `#[cfg(test)] mod … { … }` blocks (by matching braces).
fn strip_tests(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        if !(trimmed.starts_with("mod ") || trimmed.starts_with("pub(crate) mod ") || trimmed.starts_with("pub mod ")) {
            rest = after;
            continue;
        }
        let Some(open) = after.find('{') else { return out };
        if after[..open].contains(';') {
            // `#[cfg(test)] mod tests;`: the file itself is skipped by name.
            rest = &after[after.find(';').unwrap_or(0) + 1..];
            continue;
        }
        let mut depth = 0usize;
        let mut end = after.len();
        for (j, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + j + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The modules named after `crate::`, including those of `crate::{a, b::c}` groups.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        let preceded_by_ident = rest[..i].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[i + "crate::".len()..];
        if preceded_by_ident {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let close = group.find('}').unwrap_or(group.len());
            for item in group[..close].split(',') {
                let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// Every cycle's modules, as strongly connected components of more than one module (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for w in s.g[v].keys() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.stack.contains(&w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State { g, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), found: Vec::new() };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

/// A cycle in words: its modules and, for each import inside it, the files that make it.
fn describe(g: &Graph, cycle: &[String]) -> String {
    let mut out = format!("import cycle between {}:", cycle.join(", "));
    for from in cycle {
        for (to, files) in &g[from] {
            if cycle.contains(to) {
                let files: Vec<&str> = files.iter().map(String::as_str).collect();
                out.push_str(&format!("\n  {from} -> {to} (in {})", files.join(", ")));
            }
        }
    }
    out
}

fn read_src() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let path: PathBuf = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
                files.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn no_import_cycle_between_the_top_level_modules_of_src() {
    let g = graph(&read_src());
    assert!(g.len() >= 5, "the modules of src/ were not found: {:?}", g.keys());
    let found: Vec<String> = cycles(&g).iter().map(|c| describe(&g, c)).collect();
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn each_module_imports_only_what_lib_rs_draws_below_it() {
    let g = graph(&read_src());
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for (from, imports) in &g {
        let Some(ok) = allowed.get(from.as_str()) else {
            wrong.push(format!("{from}: a top-level module the architecture does not know; add it to ALLOWED"));
            continue;
        };
        for (to, files) in imports {
            if !ok.contains(&to.as_str()) {
                let files: Vec<&str> = files.iter().map(String::as_str).collect();
                wrong.push(format!("{from} imports {to} (in {}), which it must not", files.join(", ")));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_checker_finds_a_cycle_and_ignores_comments_and_tests() {
    let files = vec![
        ("a/mod.rs".to_string(), "use crate::b::X;\n// crate::c in a comment\n".to_string()),
        ("b.rs".to_string(), "fn f() { crate::{c::Y, d}; }\n".to_string()),
        ("c.rs".to_string(), "use crate::a;\n#[cfg(test)]\nmod tests {\n    use crate::d::Z;\n}\n".to_string()),
        ("d.rs".to_string(), "pub struct Z; // use crate::a;\n".to_string()),
        ("lib.rs".to_string(), "pub mod a;\n".to_string()),
    ];
    let g = graph(&files);
    assert_eq!(g.keys().collect::<Vec<_>>(), ["a", "b", "c", "d"]);
    assert!(g["d"].is_empty(), "a comment is not an import: {:?}", g["d"]);
    assert!(!g["c"].contains_key("d"), "a test module is not an import");
    assert_eq!(g["b"].keys().collect::<Vec<_>>(), ["c", "d"], "a `crate::{{…}}` group names both");
    let found = cycles(&g);
    assert_eq!(found, vec![vec!["a".to_string(), "b".to_string(), "c".to_string()]]);
    let text = describe(&g, &found[0]);
    assert!(text.contains("a -> b (in a/mod.rs)") && text.contains("c -> a (in c.rs)"), "{text}");
}
