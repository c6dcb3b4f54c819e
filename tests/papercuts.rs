//! What a new user meets in the first hour with the CLI, end to end with the real binary:
//! the words of a dry run, plain logs in files, the kubeconfig message, early namespace
//! checks, shell completions and the man page (issue 20).

use entra_rotator_standins::scenario::Scenario;
use std::process::Output;

fn rotator(args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"));
    command.args(args).env_remove("RUST_LOG").env_remove("NO_COLOR");
    command
}

/// For tests whose stand-ins run on the test's own runtime: the binary must be awaited,
/// not waited for, or the stand-ins cannot answer it.
fn rotator_async(args: &[&str]) -> tokio::process::Command {
    tokio::process::Command::from(rotator(args))
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[tokio::test]
async fn a_dry_run_with_nothing_due_says_until_when() {
    let scenario = Scenario::start().await.unwrap();
    let config = scenario.config_path.to_str().unwrap();
    assert!(rotator_async(&["run", "--config", config]).output().await.unwrap().status.success());

    let dry = rotator_async(&["run", "--config", config, "--dry-run"]).output().await.unwrap();

    let out = text(&dry);
    assert!(dry.status.success(), "{out}");
    assert!(out.contains("dify-smtp: nothing to do until "), "{out}");
    assert!(!out.contains("would nothing"), "{out}");
}

#[tokio::test]
async fn logs_piped_to_a_file_carry_no_colour_codes() {
    let scenario = Scenario::start().await.unwrap();
    let config = scenario.config_path.to_str().unwrap();

    let output = rotator_async(&["run", "--config", config, "--log-level", "info"]).output().await.unwrap();

    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{logs}");
    assert!(logs.contains("INFO"), "info lines were logged: {logs}");
    assert!(!logs.contains('\u{1b}'), "no ANSI escape in piped logs: {logs:?}");
}

#[tokio::test]
async fn a_missing_kubeconfig_is_named_once_with_what_to_set() {
    let scenario = Scenario::start().await.unwrap();
    let home = tempfile::tempdir().unwrap();
    scenario.edit_config(&format!("  kubeconfig: {}\n", scenario.kubeconfig_path().display()), "").unwrap();

    let output = rotator_async(&["run", "--config", scenario.config_path.to_str().unwrap()])
        .env("HOME", home.path())
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .await
        .unwrap();

    let out = text(&output);
    let expected = home.path().join(".kube/config").display().to_string();
    assert!(out.contains(&format!("there is no kubeconfig at {expected}.")), "{out}");
    assert!(out.contains("Set kubernetes.kubeconfig"), "{out}");
    assert!(!out.contains("'\""), "the path is not quoted twice: {out}");
}

#[test]
fn a_bad_namespace_is_refused_with_the_other_problems_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/rotator.yaml")).unwrap();
    let config = dir.path().join("rotator.yaml");
    let bad = example
        .replace("namespace: dify", "namespace: Dify_NS")
        .replace("clientId: 0b5e2f3c-9d0a-4f6e-8a53-1e0b9c7d2a11", "clientId: not-a-guid");
    std::fs::write(&config, bad).unwrap();

    // No kubeconfig exists under this HOME: a check that needed the cluster would say so.
    let output = rotator(&["run", "--config", config.to_str().unwrap()]).env("HOME", dir.path()).env_remove("KUBECONFIG").output().unwrap();

    let out = text(&output);
    assert_eq!(output.status.code(), Some(2), "{out}");
    assert!(out.contains("kubernetesSecret.namespace: \"Dify_NS\" is not a Kubernetes namespace name"), "{out}");
    assert!(out.contains("application.clientId: \"not-a-guid\" is not a GUID"), "{out}");
    assert!(!out.contains("kubeconfig"), "refused before looking for a cluster: {out}");
}

/// Issue 20 item 1: a template and a duration that do not parse are listed with every
/// other problem of the file, not instead of them.
#[test]
fn an_unknown_template_variable_and_a_bad_lifetime_are_listed_with_the_other_problems() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/rotator.yaml")).unwrap();
    let config = dir.path().join("rotator.yaml");
    let bad = example
        .replace("SMTP_PASSWORD: \"{{secret}}\"", "SMTP_PASSWORD: \"{{secrt}}\"")
        .replace("lifetime: 180d", "lifetime: 2 years and a bit")
        .replace("clientId: 0b5e2f3c-9d0a-4f6e-8a53-1e0b9c7d2a11", "clientId: not-a-guid");
    std::fs::write(&config, bad).unwrap();

    let output = rotator(&["run", "--config", config.to_str().unwrap(), "--dry-run"]).output().unwrap();

    let out = text(&output);
    assert_eq!(output.status.code(), Some(2), "{out}");
    assert!(out.contains("has 3 problem(s); nothing was changed"), "{out}");
    assert!(out.contains("keys.SMTP_PASSWORD: template \"{{secrt}}\" uses unknown variable {{secrt}}"), "{out}");
    assert!(out.contains("lifetime: \"2 years and a bit\" is not a duration"), "{out}");
    assert!(out.contains("application.clientId: \"not-a-guid\" is not a GUID"), "{out}");
}

#[test]
fn completions_and_the_man_page_come_from_the_parser() {
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef entra-rotator"), ("fish", "complete -c entra-rotator")] {
        let output = rotator(&["completions", shell]).output().unwrap();
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{shell}");
        assert!(script.contains(marker), "{shell}: {script}");
        for subcommand in ["run", "controller", "scan", "smtp-test"] {
            assert!(script.contains(subcommand), "{shell} completes {subcommand}");
        }
    }
    let man = rotator(&["man"]).output().unwrap();
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(man.status.success());
    assert!(page.contains(".TH entra-rotator 1") && page.contains("smtp\\-test"), "{page}");
}

#[test]
fn check_args_validates_the_whole_command_line_and_does_nothing() {
    let fine = rotator(&["controller", "--namespace", "dify", "--drift-interval", "1h", "--check-args"]).output().unwrap();
    assert!(fine.status.success(), "{}", text(&fine));
    assert!(text(&fine).is_empty(), "nothing ran: {}", text(&fine));

    let bad = rotator(&["controller", "--namespace", "dify", "--drift-interval", "300000y", "--check-args"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(text(&bad).contains("--drift-interval"), "{}", text(&bad));
    // Conflicting arguments: --help answers 0 regardless, --check-args refuses them.
    let conflicting = ["run", "--config", "rotator.yaml", "--azure-config", "azure.yaml"];
    assert!(rotator(&[&conflicting[..], &["--help"]].concat()).output().unwrap().status.success());
    assert_eq!(rotator(&[&conflicting[..], &["--check-args"]].concat()).output().unwrap().status.code(), Some(2));
}
