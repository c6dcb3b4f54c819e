//! An external tool a test drives (helm, kubectl, kubernetes-validate, chromium): from its
//! environment variable, else from `PATH`. Absent outside CI, the test skips with a notice;
//! in CI (`.ci/run` sets `CI`) it fails, so CI cannot pass on a skip. Included with
//! `#[path = "support/tool.rs"] mod tool;` by the test files that need it.

use std::path::PathBuf;
use std::process::Command;

/// The tool at `$variable` (or `name` on `PATH`) if `version_args` runs; `unchecked` says
/// what goes untested without it.
pub fn tool(variable: &str, name: &str, version_args: &[&str], unchecked: &str) -> Option<PathBuf> {
    let path = std::env::var_os(variable).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(name));
    let runs = Command::new(&path).args(version_args).output().is_ok_and(|o| o.status.success());
    if runs {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{name} not found at {}: .ci/run installs it and sets {variable}; without it {unchecked}",
        path.display()
    );
    eprintln!("skipped: {name} not found; run `bash .ci/run` or set {variable}=/path/to/{name}");
    None
}
