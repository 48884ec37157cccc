//! The repo's structure as drawn from its imports: every `crate::`/`super::`/`self::` path in
//! `src/` (test modules left out) becomes an edge between two files. Top-level modules may only
//! import modules in a lower layer (the data flow of docs/architecture.md), and the files of
//! one module may not import each other in a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Bottom to top; a module imports only modules listed before it (and itself).
const LAYERS: &[&str] = &[
    "shared",
    "metrics",
    "model",
    "host",
    "actual",
    "localpv",
    "desired",
    "reconcile",
    "executor",
    "sync_loop",
    "cli",
    "config",
    "app",
    "output",
    "commands",
    "main",
];

type ModPath = Vec<String>;

#[test]
fn imports_follow_the_data_flow_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = module_files(&src);
    let known: BTreeSet<ModPath> = files.keys().cloned().collect();
    let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    // `use crate::*` hides which modules a file uses.
    let mut glob_imports = Vec::new();
    for (module, file) in &files {
        let code = strip_test_modules(&strip_comments_and_strings(
            &fs::read_to_string(file).unwrap(),
        ));
        if code.contains("crate::*") || code.contains("crate::{*") {
            glob_imports.push(module.join("::"));
        }
        let targets = edges.entry(module.clone()).or_default();
        for path in imported_paths(&code, module, &known) {
            let target = deepest_known(&path, &known);
            if &target != module && !target.is_empty() {
                targets.insert(target);
            }
        }
    }

    let mut problems: Vec<String> = glob_imports
        .iter()
        .map(|m| format!("glob import of the crate root in {m}"))
        .collect();
    for (from, targets) in &edges {
        for to in targets {
            let (a, b) = (layer_of(from), layer_of(to));
            if from[0] != to[0] && b >= a {
                problems.push(format!(
                    "upward import: {} -> {}",
                    from.join("::"),
                    to.join("::")
                ));
            }
        }
    }
    for cycle in cycles(&edges) {
        let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
        problems.push(format!("import cycle: {}", names.join(" -> ")));
    }
    assert!(
        problems.is_empty(),
        "the import graph breaks the layering ({}):\n  {}",
        LAYERS.join(" < "),
        problems.join("\n  ")
    );
}

#[test]
fn lib_rs_lists_the_modules_in_layer_order() {
    let lib = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let listed: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';'))
        .collect();
    let layered: Vec<&str> = LAYERS
        .iter()
        .copied()
        .filter(|l| listed.contains(l))
        .collect();
    assert_eq!(
        listed, layered,
        "src/lib.rs must list its modules as LAYERS orders them"
    );
    let missing: Vec<&&str> = LAYERS
        .iter()
        .filter(|l| !listed.contains(l) && !["commands", "main"].contains(l))
        .collect();
    assert!(
        missing.is_empty(),
        "layers with no module in src/lib.rs: {missing:?}"
    );
}

fn layer_of(module: &ModPath) -> usize {
    LAYERS
        .iter()
        .position(|l| *l == module[0])
        .unwrap_or_else(|| panic!("module {} is in no layer: add it to LAYERS", module[0]))
}

/// Every non-test source file by its module path (`src/main.rs` is the module `main`).
fn module_files(src: &Path) -> BTreeMap<ModPath, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.file_name().unwrap().to_str().unwrap();
            let Some(stem) = name.strip_suffix(".rs") else {
                continue;
            };
            if stem == "tests" || stem.ends_with("_tests") || stem == "lib" {
                continue;
            }
            let rel = path.parent().unwrap().strip_prefix(src).unwrap();
            let mut module: ModPath = rel
                .components()
                .map(|c| c.as_os_str().to_str().unwrap().to_string())
                .collect();
            if stem != "mod" {
                module.push(stem.to_string());
            }
            out.insert(module, path);
        }
    }
    out
}

fn strip_comments_and_strings(code: &str) -> String {
    let bytes = code.as_bytes();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    while i < bytes.len() {
        if code[i..].starts_with("//") {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if code[i..].starts_with("/*") {
            i = code[i..].find("*/").map_or(bytes.len(), |e| i + e + 2);
        } else if let Some(end) = raw_string_end(code, i) {
            i = end;
            out.push_str("\"\"");
        } else if bytes[i] == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if bytes[i] == b'\''
            && i + 2 < bytes.len()
            && (bytes[i + 2] == b'\'' || bytes[i + 1] == b'\\')
        {
            // A char literal ('{', '\n'); lifetimes ('a) are left alone.
            let end = code[i + 1..]
                .find('\'')
                .map_or(bytes.len(), |e| i + 1 + e + 1);
            i = end;
            out.push_str("' '");
        } else {
            let ch = code[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Where a raw string literal (`r"…"`, `r#"…"#`) starting at `at` ends, if one does.
fn raw_string_end(code: &str, at: usize) -> Option<usize> {
    let bytes = code.as_bytes();
    let boundary = at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
    let rest = code[at..].strip_prefix('r').filter(|_| boundary)?;
    let hashes = rest.len() - rest.trim_start_matches('#').len();
    let body = rest[hashes..].strip_prefix('"')?;
    let closing = format!("\"{}", "#".repeat(hashes));
    let end = body.find(&closing)?;
    Some(at + 1 + hashes + 1 + end + closing.len())
}

/// Drops `#[cfg(test)] mod name { … }` blocks: what only tests import is not the structure.
fn strip_test_modules(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let block = trimmed
            .find(['{', ';'])
            .is_some_and(|i| trimmed.as_bytes()[i] == b'{');
        if trimmed.starts_with("mod ") && block {
            let open = after.find('{').unwrap();
            let mut depth = 0;
            let mut end = after.len();
            for (i, ch) in after[open..].char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = open + i + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            rest = &after[end..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The absolute module paths a file names, use-groups expanded (`use crate::a::{b, c::d}`).
fn imported_paths(code: &str, module: &ModPath, known: &BTreeSet<ModPath>) -> Vec<ModPath> {
    let is_main = module == &["main".to_string()];
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let boundary = i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b':');
        let root = ["crate::", "super::", "self::", "volumed::"]
            .into_iter()
            .find(|r| boundary && code[i..].starts_with(r));
        let Some(root) = root else {
            // A path relative to this module (`use events::publish`, `health::probe()`): its
            // first segment names a child module.
            let start = i;
            let mut end = i;
            while is_ident(bytes.get(end)) {
                end += 1;
            }
            let child = [module.clone(), vec![code[start..end].to_string()]].concat();
            if boundary && end > start && code[end..].starts_with("::") && known.contains(&child) {
                let (paths, after) = parse_tree(code, end + 2, child);
                out.extend(paths);
                i = after;
            } else {
                i = end.max(i + 1);
            }
            continue;
        };
        let base: ModPath = match root {
            "crate::" if !is_main => vec![],
            "volumed::" if is_main => vec![],
            "self::" => {
                // In a file module `self` is the file's own module.
                module.clone()
            }
            "super::" => {
                // `super` of src/a/b.rs (module a::b) is `a`; of src/a/mod.rs (module a) the root.
                let mut m = module.clone();
                m.pop();
                m
            }
            _ => {
                i += root.len();
                continue;
            }
        };
        i += root.len();
        let (paths, end) = parse_tree(code, i, base);
        out.extend(paths);
        i = end;
    }
    out
}

/// Parses `seg::seg::{tree, tree}` from `at`; returns the full paths and where it ended.
fn parse_tree(code: &str, mut at: usize, mut prefix: ModPath) -> (Vec<ModPath>, usize) {
    let bytes = code.as_bytes();
    loop {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        if at < bytes.len() && bytes[at] == b'{' {
            let mut out = Vec::new();
            at += 1;
            loop {
                while at < bytes.len() && (bytes[at].is_ascii_whitespace() || bytes[at] == b',') {
                    at += 1;
                }
                if at >= bytes.len() || bytes[at] == b'}' {
                    return (out, at + 1);
                }
                if code[at..].starts_with("self") && !is_ident(bytes.get(at + 4)) {
                    out.push(prefix.clone());
                    at += 4;
                    continue;
                }
                let (paths, end) = parse_tree(code, at, prefix.clone());
                out.extend(paths);
                at = if end == at { at + 1 } else { end };
                // Skip a trailing `as name`.
                while at < bytes.len() && bytes[at] != b',' && bytes[at] != b'}' {
                    at += 1;
                }
            }
        }
        let start = at;
        while at < bytes.len() && is_ident(bytes.get(at)) {
            at += 1;
        }
        if start == at {
            return (vec![prefix], at);
        }
        let segment = &code[start..at];
        if segment == "super" {
            prefix.pop();
        } else {
            prefix.push(segment.to_string());
        }
        if code[at..].starts_with("::") {
            at += 2;
        } else {
            return (vec![prefix], at);
        }
    }
}

fn is_ident(byte: Option<&u8>) -> bool {
    byte.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

fn deepest_known(path: &ModPath, known: &BTreeSet<ModPath>) -> ModPath {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| known.contains(p))
        .unwrap_or_default()
}

/// One cycle per strongly connected component of more than one file.
fn cycles(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    let nodes: Vec<&ModPath> = edges.keys().collect();
    let reach = |from: &ModPath| -> BTreeSet<ModPath> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(n) = stack.pop() {
            for t in edges.get(&n).into_iter().flatten() {
                if seen.insert(t.clone()) {
                    stack.push(t.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&ModPath, BTreeSet<ModPath>> =
        nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for n in &nodes {
        if done.contains(*n) || !reachable[n].contains(*n) {
            continue;
        }
        let component: Vec<ModPath> = nodes
            .iter()
            .filter(|m| reachable[n].contains(**m) && reachable[**m].contains(*n))
            .map(|m| (*m).clone())
            .collect();
        done.extend(component.iter().cloned());
        out.push(component);
    }
    out
}
