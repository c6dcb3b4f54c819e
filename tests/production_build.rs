//! The production build carries no stand-in: the stand-ins crate is reached only through
//! the `demo` feature (on by default, for `cargo run --release -- demo`) and as a
//! dev-dependency; the image builds with `--no-default-features`.

use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The packages of entra-rotator's normal (non-dev, non-build) dependency tree.
fn normal_dependencies(features: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(ROOT)
        .args(["tree", "--offline", "--locked", "-e", "normal", "-p", "entra-rotator", "--prefix", "none"])
        .args(features)
        .output()
        .expect("cargo tree runs");
    assert!(output.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_production_build_has_no_stand_in_code() {
    let production = normal_dependencies(&["--no-default-features"]);
    assert!(!production.contains("entra-rotator-standins"), "the production build reaches the stand-ins:\n{production}");
    // The same query sees them when the demo is on, so the check above can fail.
    assert!(normal_dependencies(&[]).contains("entra-rotator-standins"), "the demo build should carry the stand-ins");
}

#[test]
fn the_dockerfile_builds_without_the_demo() {
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap();
    assert!(dockerfile.contains("cargo build --release --locked --no-default-features --bin entra-rotator"), "{dockerfile}");
}

#[test]
fn the_stand_ins_cap_secret_lifetimes_as_the_product_does() {
    assert_eq!(entra_rotator_standins::MAX_SECRET_LIFETIME_DAYS, entra_rotator::domain::MAX_SECRET_LIFETIME_DAYS);
}
