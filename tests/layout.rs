//! The arrows of the architecture point downhill only: the faces (CLI, operator) import
//! what is below them, never the other way round, and the engine knows only the domain.

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::<module>` path in the files under `dir`, as (file, module).
fn imports_under(dir: &str) -> Vec<(String, String)> {
    let mut files = Vec::new();
    sources(&Path::new(ROOT).join(dir), &mut files);
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // Doc links may name what is above (`[crate::adapters]`); code may not.
        for line in text.lines().filter(|line| !line.trim_start().starts_with("//")) {
            for (index, _) in line.match_indices("crate::") {
                let module: String = line[index + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                found.push((file.strip_prefix(ROOT).unwrap().display().to_string(), module));
            }
        }
    }
    found
}

fn assert_never_imports(dir: &str, forbidden: &[&str]) {
    let wrong: Vec<_> = imports_under(dir).into_iter().filter(|(_, module)| forbidden.contains(&module.as_str())).collect();
    assert!(wrong.is_empty(), "{dir} imports what is above it: {wrong:?}");
}

#[test]
fn nothing_below_the_cli_imports_it() {
    for dir in ["src/engine", "src/adapters", "src/config", "src/operator"] {
        assert_never_imports(dir, &["cli"]);
    }
    for file in ["src/domain.rs", "src/template.rs", "src/report.rs", "src/scan.rs", "src/assembly.rs", "src/alerting.rs", "src/metrics.rs"] {
        let text = std::fs::read_to_string(Path::new(ROOT).join(file)).unwrap();
        assert!(!text.contains("crate::cli"), "{file} imports the CLI");
    }
}

#[test]
fn the_engine_knows_only_the_domain() {
    assert_never_imports("src/engine", &["adapters", "config", "operator", "cli", "assembly", "alerting", "metrics", "report"]);
}

#[test]
fn the_adapters_know_neither_configuration_nor_faces() {
    assert_never_imports("src/adapters", &["config", "operator", "cli", "assembly"]);
}

/// src/fuzzing.rs sits above everything (feature `fuzzing`, for fuzz/ only); nothing else
/// may lean on it, or the product would not build without the feature.
#[test]
fn nothing_imports_the_fuzz_entry_points() {
    for dir in ["src/engine", "src/adapters", "src/config", "src/operator", "src/cli"] {
        assert_never_imports(dir, &["fuzzing"]);
    }
}
