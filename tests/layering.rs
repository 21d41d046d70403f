//! The crate's layering is one fact, stated once in the tour at the top of src/lib.rs:
//! each module may use only the modules listed before it. This test reads the order
//! from that tour and fails on any `crate::` path (outside comments) that goes up it.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The numbered modules of the lib.rs tour, in order.
fn layers(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("//! ")?.trim_start();
            let (number, rest) = rest.split_once(". ")?;
            number.parse::<u32>().ok()?;
            let name = rest.split_whitespace().next()?;
            Some(name.trim_matches(|c| "[]`".contains(c)).to_string())
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/daemon/client/mod.rs` → `daemon`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let first = file.strip_prefix(src).ok()?.components().next()?;
    let name = first.as_os_str().to_str()?;
    Some(name.trim_end_matches(".rs").to_string())
}

/// Every `crate::NAME` in the code of `text`, comments left out.
fn uses(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.push((number + 1, name));
            rest = after;
        }
    }
    found
}

#[test]
fn no_module_uses_one_listed_after_it_in_the_lib_rs_tour() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let lib = fs::read_to_string(src.join("lib.rs")).unwrap();
    let order = layers(&lib);
    assert!(order.len() >= 10, "the tour lists the layers: {order:?}");
    let rank: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    for file in files {
        let Some(module) = module_of(&src, &file) else {
            continue;
        };
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(&own) = rank.get(module.as_str()) else {
            violations.push(format!(
                "{}: module `{module}` is not in the tour",
                file.display()
            ));
            continue;
        };
        let text = fs::read_to_string(&file).unwrap();
        for (line, used) in uses(&text) {
            match rank.get(used.as_str()) {
                Some(&theirs) if theirs > own => violations.push(format!(
                    "{}:{line}: `{module}` (layer {}) uses `{used}` (layer {})",
                    file.display(),
                    own + 1,
                    theirs + 1
                )),
                _ => {}
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_privileged_clock_process_links_nothing_of_the_daemon() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["clock_process.rs", "policy.rs", "ipc.rs"] {
        let text = fs::read_to_string(root.join("src/privsep").join(file)).unwrap();
        let daemon: Vec<_> = uses(&text)
            .into_iter()
            .filter(|(_, used)| used == "daemon")
            .collect();
        assert!(daemon.is_empty(), "{file}: {daemon:?}");
    }
}
