//! ARCHITECTURE.md's layer list and its checkable invariants, held against
//! the code: a `crate::` path a module may not use, or a forbidden word in a
//! module that must not know it, fails here with the file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The layer list between the markers: module → modules it may use.
fn layers() -> BTreeMap<String, BTreeSet<String>> {
    let text =
        std::fs::read_to_string(Path::new(ROOT).join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let start = text
        .find("<!-- layers: checked by tests/layers.rs -->")
        .expect("the layers block in ARCHITECTURE.md");
    let end = text[start..].find("<!-- end layers -->").expect("its end") + start;
    text[start..end]
        .lines()
        .filter_map(|l| l.strip_prefix("- `"))
        .map(|l| {
            let (module, rest) = l.split_once("`:").expect("- `module`: deps");
            let deps = rest.split_whitespace().map(str::to_string).collect();
            (module.to_string(), deps)
        })
        .collect()
}

/// Every .rs file of a top-level module (`src/NAME.rs`, `src/NAME/**`).
fn files(module: &str) -> Vec<PathBuf> {
    let src = Path::new(ROOT).join("src");
    let mut out = Vec::new();
    let single = src.join(format!("{module}.rs"));
    if single.exists() {
        out.push(single);
    }
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out
}

/// The top-level modules a line names through `crate::` (also inside
/// `crate::{a, b::c}` groups). Comments are skipped.
fn used(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or_default();
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or_default();
            for item in inner.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let layers = layers();
    let all: BTreeSet<&String> = layers.keys().collect();
    let mut wrong = Vec::new();
    for (module, allowed) in &layers {
        for file in files(module) {
            let text = std::fs::read_to_string(&file).expect("read source");
            for (n, line) in text.lines().enumerate() {
                for dep in used(line) {
                    if dep == *module || allowed.contains(&dep) || !all.contains(&dep) {
                        continue;
                    }
                    wrong.push(format!(
                        "{}:{}: {module} uses {dep}: {}",
                        file.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "uses that ARCHITECTURE.md's layer list does not allow:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_module_is_in_the_layer_list() {
    let layers = layers();
    let src = Path::new(ROOT).join("src");
    let outside = ["lib", "main", "bin"];
    for e in std::fs::read_dir(&src).expect("src").flatten() {
        let name = e
            .file_name()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        assert!(
            layers.contains_key(&name) || outside.contains(&name.as_str()),
            "src/{name} is not in ARCHITECTURE.md's layer list"
        );
    }
}

/// Lines of `files` that contain any of `words`, outside comments and
/// outside their unit tests (which may well read a clock).
fn mentions(files: &[PathBuf], words: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).expect("read source");
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (n, line) in code.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            if words.iter().any(|w| code.contains(w)) {
                out.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    out
}

fn all_files_but(keep: &[&str]) -> Vec<PathBuf> {
    let layers = layers();
    layers
        .keys()
        .flat_map(|m| files(m))
        .chain(["lib", "main"].iter().flat_map(|m| files(m)))
        .filter(|f| {
            let rel = f
                .strip_prefix(Path::new(ROOT).join("src"))
                .expect("under src");
            !keep.iter().any(|k| rel.starts_with(k))
        })
        .collect()
}

#[test]
fn the_pure_parts_stay_pure() {
    let src = Path::new(ROOT).join("src");
    let files = [
        src.join("manager/policy.rs"),
        src.join("manager/health.rs"),
        src.join("manager/fleet.rs"),
        src.join("systemd/journal/lines.rs"),
    ];
    let found = mentions(
        &files,
        &[
            "async ",
            ".await",
            "Instant::now",
            "SystemTime",
            "std::fs",
            "tokio::",
            "std::net",
            "std::process",
        ],
    );
    assert!(
        found.is_empty(),
        "I/O, clocks or async in a part ARCHITECTURE.md calls pure:\n{}",
        found.join("\n")
    );
}

#[test]
fn only_placement_scope_speaks_dbus_and_only_systemd_knows_its_variables() {
    let dbus = mentions(&all_files_but(&["placement/scope"]), &["zbus"]);
    assert!(
        dbus.is_empty(),
        "D-Bus outside placement::scope:\n{}",
        dbus.join("\n")
    );
    let vars = mentions(
        &all_files_but(&["systemd"]),
        &[
            "\"NOTIFY_SOCKET\"",
            "\"INVOCATION_ID\"",
            "\"WATCHDOG_USEC\"",
        ],
    );
    assert!(
        vars.is_empty(),
        "systemd's variables outside systemd::*:\n{}",
        vars.join("\n")
    );
}
