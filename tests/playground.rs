//! `entra-rotator playground --dir DIR` end to end: the real binary starts the stand-ins
//! and a controller, writes the files it promises, a person's ClientSecretRotation from
//! DIR/rotation.yaml becomes Ready, and Ctrl-C (SIGINT) stops it cleanly.

use entra_rotator::operator::crd::ClientSecretRotation;
use kube::api::{Api, PostParams};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// kubectl from ENTRA_ROTATOR_KUBECTL (CI sets it) or PATH; without it (outside CI) the
/// rotation is applied with kube's client instead.
fn kubectl() -> Option<std::path::PathBuf> {
    let path: std::path::PathBuf = std::env::var_os("ENTRA_ROTATOR_KUBECTL").map(Into::into).unwrap_or_else(|| "kubectl".into());
    let runs = std::process::Command::new(&path).args(["version", "--client"]).output().is_ok_and(|o| o.status.success());
    assert!(runs || std::env::var_os("CI").is_none(), "kubectl not found at {}: .ci/run sets ENTRA_ROTATOR_KUBECTL", path.display());
    runs.then_some(path)
}

async fn client(kubeconfig: &Path) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

fn ready(rotation: &ClientSecretRotation) -> bool {
    rotation
        .status
        .as_ref()
        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test]
async fn the_playground_runs_a_controller_that_rotates_what_a_person_applies() {
    let dir = tempfile::tempdir().unwrap();
    let mut playground = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
        .args(["playground", "--dir"])
        .arg(dir.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(playground.stdout.take().unwrap()).lines();
    let mut guide = String::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await.unwrap().unwrap() {
        guide.push_str(&line);
        guide.push('\n');
        if line.contains("Press Ctrl-C to stop.") {
            break;
        }
    }
    for file in ["kubeconfig", "ca.pem", "rotator.yaml", "rotation.yaml", "app-secret"] {
        assert!(dir.path().join(file).exists(), "{file} is written:\n{guide}");
        assert!(guide.contains(file), "the guide mentions {file}:\n{guide}");
    }
    let mode = std::fs::metadata(dir.path().join("app-secret")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the application's secret is readable by its owner only");
    assert!(guide.contains("kubectl --kubeconfig") && guide.contains("swaks --server localhost:"), "{guide}");

    let client = client(&dir.path().join("kubeconfig")).await;
    let api: Api<ClientSecretRotation> = Api::namespaced(client, "dify");
    match kubectl() {
        // What the guide says to type.
        Some(kubectl) => {
            let kubeconfig = dir.path().join("kubeconfig");
            let bad = dir.path().join("bad.yaml");
            let text = std::fs::read_to_string(dir.path().join("rotation.yaml")).unwrap();
            std::fs::write(&bad, text.replace("name: dify-smtp\n  namespace", "name: bad\n  namespace").replace("lifetime: 4320h", "lifetime: 30000h")).unwrap();
            let refused = tokio::process::Command::new(&kubectl).arg("--kubeconfig").arg(&kubeconfig).arg("apply").arg("-f").arg(&bad).output().await.unwrap();
            let said = String::from_utf8_lossy(&refused.stderr);
            assert!(!refused.status.success() && said.contains("lifetime must be at most 17520h"), "a bad rotation is refused with the CEL message: {said}");
            let applied = tokio::process::Command::new(&kubectl)
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .arg("apply")
                .arg("-f")
                .arg(dir.path().join("rotation.yaml"))
                .output()
                .await
                .unwrap();
            assert!(applied.status.success(), "kubectl apply: {}", String::from_utf8_lossy(&applied.stderr));
        }
        None => {
            let text = std::fs::read_to_string(dir.path().join("rotation.yaml")).unwrap();
            let rotation: ClientSecretRotation = serde_yaml::from_str(&text).unwrap();
            api.create(&PostParams::default(), &rotation).await.unwrap();
        }
    }
    let mut became_ready = false;
    for _ in 0..600 {
        if api.get("dify-smtp").await.is_ok_and(|r| ready(&r)) {
            became_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(dir.path().join("controller.log")).unwrap_or_default();
    assert!(became_ready, "the applied rotation becomes Ready within a minute; controller log:\n{log}");
    if let Some(kubectl) = kubectl() {
        let listed = tokio::process::Command::new(&kubectl).arg("--kubeconfig").arg(dir.path().join("kubeconfig")).args(["get", "csrot", "-A"]).output().await.unwrap();
        let table = String::from_utf8_lossy(&listed.stdout);
        let header = table.lines().next().unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(header, "NAMESPACE NAME READY EXPIRES NEXT ROTATION AGE", "{table}");
        assert!(table.lines().any(|l| l.starts_with("dify") && l.contains("dify-smtp") && l.contains("True")), "{table}");
    }

    let pid = playground.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(30), playground.wait()).await.unwrap().unwrap();
    assert!(status.success(), "Ctrl-C stops the playground cleanly: {status}");
}
