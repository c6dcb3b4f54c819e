//! Two `run --config` of one file at once: the first holds the lock for its whole run, the
//! second says who holds it and does nothing. The first is held inside the Graph stand-in
//! until the second has finished, so the order is the test's, not the scheduler's.

use entra_rotator_standins::graph::{ROUTE_ADD_PASSWORD, ROUTE_GET_APPLICATION};
use entra_rotator_standins::scenario::Scenario;
use std::process::Stdio;

fn rotator(scenario: &Scenario, extra: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"));
    command.args(["run", "--config", scenario.config_path.to_str().unwrap()]).args(extra).env_remove("RUST_LOG");
    command.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    command
}

fn text(output: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[tokio::test]
async fn a_second_run_of_one_file_names_the_holder_and_does_nothing() {
    let scenario = Scenario::start().await.unwrap();
    let held = scenario.graph.faults().hold(ROUTE_GET_APPLICATION);
    let first = rotator(&scenario, &[]).spawn().unwrap();
    let first_pid = first.id().unwrap();
    held.arrived().await;

    let second = rotator(&scenario, &[]).output().await.unwrap();
    let dry = rotator(&scenario, &["--dry-run"]).output();
    held.release();
    let first = first.wait_with_output().await.unwrap();

    let out = text(&second);
    assert_eq!(second.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("another run of this configuration is in progress (held by entra-rotator pid {first_pid} on ")), "{out}");
    assert!(out.contains("nothing was done"), "{out}");
    assert!(first.status.success(), "the holder finishes: {}", text(&first));
    assert_eq!(scenario.graph.faults().count(ROUTE_ADD_PASSWORD), 1, "one secret minted, by the holder");
    // A dry run takes no lock: it may look while another run works (here: after it).
    assert!(dry.await.unwrap().status.success());
}
