//! The Kubernetes stand-in driven by the real kubectl (and helm), as a user at a terminal
//! would: discovery, OpenAPI, `get` with server-side tables, `apply` client-side and
//! server-side. A disagreement between kubectl and the stand-in means the stand-in is wrong.
//!
//! kubectl comes from `ENTRA_ROTATOR_KUBECTL` (set by .ci/run) or `PATH`. Without it each
//! test prints a skip notice, except under CI, where a missing kubectl fails the test.

#[path = "support/tool.rs"]
mod tool;

use tool::tool;
use base64::Engine as _;
use entra_rotator_standins::kubernetes::KubernetesStandin;
use entra_rotator_standins::tls::TestPki;
use serde_json::json;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;


/// The stand-in, a kubeconfig pointing at it, and kubectl.
struct Cluster {
    standin: KubernetesStandin,
    kubectl: PathBuf,
    dir: tempfile::TempDir,
}

/// What goes untested without kubectl or helm.
const STANDIN_UNCHECKED: &str = "the stand-in is unchecked against it";

fn helm() -> Option<PathBuf> {
    tool("ENTRA_ROTATOR_HELM", "helm", &["version"], STANDIN_UNCHECKED)
}

/// What one kubectl call printed.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Self {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Panics with both streams unless the command succeeded.
    fn ok(self) -> String {
        assert!(
            self.success,
            "kubectl failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self.stdout
    }
}

async fn cluster() -> Option<Cluster> {
    let kubectl = tool("ENTRA_ROTATOR_KUBECTL", "kubectl", &["version", "--client"], STANDIN_UNCHECKED)?;
    let pki = TestPki::generate().unwrap();
    let standin = KubernetesStandin::start(&pki).await.unwrap();
    standin.create_namespace("dify");
    let dir = tempfile::tempdir().unwrap();
    let ca = base64::engine::general_purpose::STANDARD.encode(pki.ca_pem());
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: tester\n  user:\n    token: not-checked\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: tester\n    namespace: dify\ncurrent-context: standin\n",
        standin.url()
    );
    std::fs::write(dir.path().join("kubeconfig"), kubeconfig).unwrap();
    Some(Cluster {
        standin,
        kubectl,
        dir,
    })
}

impl Cluster {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `text` to a file in the cluster's directory and returns its path.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs kubectl with `args` off the async runtime (the stand-in serves on it).
    async fn kubectl(&self, args: &[&str]) -> Run {
        let mut command = Command::new(&self.kubectl);
        command
            .arg("--kubeconfig")
            .arg(self.path("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.path("cache"))
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG");
        tokio::task::spawn_blocking(move || Run::from(command.output().unwrap()))
            .await
            .unwrap()
    }
}

impl Cluster {
    /// Runs helm against the stand-in, with its cache and configuration in the cluster's
    /// directory.
    async fn helm(&self, helm: &Path, args: &[&str]) -> Run {
        let mut command = Command::new(helm);
        command
            .arg("--kubeconfig")
            .arg(self.path("kubeconfig"))
            .args(args)
            .env("HOME", self.dir.path())
            .env("HELM_CACHE_HOME", self.path("helm/cache"))
            .env("HELM_CONFIG_HOME", self.path("helm/config"))
            .env("HELM_DATA_HOME", self.path("helm/data"))
            .env_remove("KUBECONFIG");
        tokio::task::spawn_blocking(move || Run::from(command.output().unwrap()))
            .await
            .unwrap()
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn repository_file(path: &str) -> String {
    root().join(path).to_str().unwrap().to_string()
}

const CRD: &str = "crds/clientsecretrotations.entra-rotator.io.yaml";
/// The README's example rotation (namespace `dify`).
const EXAMPLE: &str = "examples/kubernetes/dify-smtp-rotation.yaml";

/// A rotation that breaks a schema pattern (`clientId`) and a CEL rule (`lifetime`).
const BAD_ROTATION: &str = "apiVersion: entra-rotator.io/v1alpha1
kind: ClientSecretRotation
metadata:
  name: bad
spec:
  application:
    tenantId: 7d3f1a52-0000-4000-8000-000000000001
    clientId: not-a-guid
  lifetime: 30000h
  targets:
  - secret:
      name: dify-smtp
      keys:
        SMTP_PASSWORD: '{{secret}}'
  verification:
    disabled: true
";

/// The header of a `kubectl get` table and the row whose cells include `first_cell`, cut at
/// the header's column offsets (kubectl aligns columns; an empty cell stays empty).
fn table_line(output: &str, first_cell: &str) -> (Vec<String>, Vec<String>) {
    let mut lines = output.lines();
    let header_line = lines.next().unwrap_or_default();
    let mut starts = vec![0];
    let bytes = header_line.as_bytes();
    for i in 1..bytes.len() {
        if bytes[i] != b' ' && bytes[i - 1] == b' ' && i >= 2 && bytes[i - 2] == b' ' {
            starts.push(i);
        }
    }
    let cut = |line: &str| -> Vec<String> {
        starts
            .iter()
            .enumerate()
            .map(|(n, &start)| {
                let end = starts
                    .get(n + 1)
                    .copied()
                    .unwrap_or(line.len())
                    .min(line.len());
                line.get(start.min(line.len())..end)
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            })
            .collect()
    };
    let header = cut(header_line);
    let row = lines
        .map(cut)
        .find(|cells| cells.iter().any(|c| c == first_cell))
        .unwrap_or_else(|| panic!("no row {first_cell:?} in:\n{output}"));
    (header, row)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_discovers_what_is_served_and_the_custom_resource_once_its_crd_is_applied() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let before = cluster.kubectl(&["api-resources"]).await.ok();
    for (name, group_version) in [
        ("secrets", "v1"),
        ("namespaces", "v1"),
        ("events", "events.k8s.io/v1"),
        ("events", "v1"),
        ("configmaps", "v1"),
        ("roles", "rbac.authorization.k8s.io/v1"),
        ("poddisruptionbudgets", "policy/v1"),
        ("leases", "coordination.k8s.io/v1"),
        ("deployments", "apps/v1"),
        ("customresourcedefinitions", "apiextensions.k8s.io/v1"),
    ] {
        let served = before.lines().any(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            cells.first() == Some(&name) && cells.contains(&group_version)
        });
        assert!(served, "no {name} in {group_version}:\n{before}");
    }
    assert!(!before.contains("clientsecretrotations"), "{before}");
    let missing = cluster.kubectl(&["get", "csrot"]).await;
    assert!(!missing.success);
    assert!(
        missing
            .stderr
            .contains("the server doesn't have a resource type \"csrot\""),
        "{}",
        missing.stderr
    );

    let applied = cluster
        .kubectl(&["apply", "-f", &repository_file(CRD)])
        .await
        .ok();
    assert_eq!(
        applied.trim(),
        "customresourcedefinition.apiextensions.k8s.io/clientsecretrotations.entra-rotator.io created"
    );
    let after = cluster.kubectl(&["api-resources"]).await.ok();
    let (header, row) = table_line(&after, "clientsecretrotations");
    assert_eq!(
        header,
        ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    );
    assert_eq!(
        row,
        [
            "clientsecretrotations",
            "csrot",
            "entra-rotator.io/v1alpha1",
            "true",
            "ClientSecretRotation"
        ]
    );
    let crds = cluster.kubectl(&["get", "crd"]).await.ok();
    let (header, _) = table_line(&crds, "clientsecretrotations.entra-rotator.io");
    assert_eq!(header, ["NAME", "CREATED AT"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_a_secret_client_side_then_server_side_and_gets_it_as_a_table() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let manifest = |password: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: smtp\nstringData:\n  SMTP_USERNAME: relay\n  SMTP_PASSWORD: {password}\n"
        )
    };
    let file = cluster.file("secret.yaml", &manifest("first"));
    let file = file.to_str().unwrap();
    assert_eq!(
        cluster.kubectl(&["apply", "-f", file]).await.ok().trim(),
        "secret/smtp created"
    );
    cluster.file("secret.yaml", &manifest("second"));
    assert_eq!(
        cluster.kubectl(&["apply", "-f", file]).await.ok().trim(),
        "secret/smtp configured"
    );
    assert_eq!(
        cluster.standin.secret("dify", "smtp").unwrap().data["SMTP_PASSWORD"],
        "second"
    );

    cluster.file("secret.yaml", &manifest("third"));
    let run = cluster
        .kubectl(&["apply", "--server-side", "-f", file])
        .await;
    assert!(!run.stderr.contains("Warning"), "{}", run.stderr);
    assert_eq!(run.ok().trim(), "secret/smtp serverside-applied");
    let stored = cluster.standin.secret("dify", "smtp").unwrap();
    assert_eq!(stored.data["SMTP_PASSWORD"], "third");
    assert_eq!(
        stored
            .applied_keys("kubectl")
            .into_iter()
            .collect::<Vec<_>>(),
        ["SMTP_PASSWORD", "SMTP_USERNAME"]
    );

    let listed = cluster.kubectl(&["get", "secrets"]).await.ok();
    let (header, row) = table_line(&listed, "smtp");
    assert_eq!(header, ["NAME", "TYPE", "DATA", "AGE"]);
    assert_eq!(row[..3], ["smtp", "Opaque", "2"]);
    let yaml = cluster
        .kubectl(&[
            "get",
            "secret",
            "smtp",
            "-o",
            "jsonpath={.data.SMTP_USERNAME}",
        ])
        .await
        .ok();
    assert_eq!(yaml, "cmVsYXk=", "base64 of relay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reports_a_missing_object_and_an_unknown_namespace_as_the_api_server_does() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let run = cluster.kubectl(&["get", "secret", "nope"]).await;
    assert!(!run.success);
    assert_eq!(
        run.stderr.trim(),
        "Error from server (NotFound): secrets \"nope\" not found"
    );
    let run = cluster
        .kubectl(&["get", "secret", "nope", "-n", "elsewhere"])
        .await;
    assert_eq!(
        run.stderr.trim(),
        "Error from server (NotFound): namespaces \"elsewhere\" not found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_crd_refuses_a_bad_rotation_naming_the_field_and_the_cel_rule() {
    let Some(cluster) = cluster().await else {
        return;
    };
    cluster
        .kubectl(&["apply", "-f", &repository_file(CRD)])
        .await
        .ok();
    let bad = cluster.file("bad.yaml", BAD_ROTATION);
    for server_side in [false, true] {
        let mut args = vec!["apply", "-f", bad.to_str().unwrap()];
        if server_side {
            args.push("--server-side");
        }
        let run = cluster.kubectl(&args).await;
        assert!(!run.success, "server-side {server_side}: {}", run.stdout);
        for expected in [
            "The ClientSecretRotation \"bad\" is invalid: \n",
            "\n* spec.application.clientId: Invalid value: \"not-a-guid\": spec.application.clientId in body should match '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'",
            "\n* spec: Invalid value: \"object\": lifetime must be at most 17520h (730 days): Entra client secrets live at most 2 years",
        ] {
            assert!(
                run.stderr.contains(expected),
                "server-side {server_side}: missing {expected:?} in\n{}",
                run.stderr
            );
        }
    }
    assert_eq!(
        cluster.standin.rotation("dify", "bad"),
        None,
        "a refused rotation is not stored"
    );

    let unknown = BAD_ROTATION
        .replace("not-a-guid", "0b5e2f3c-9d0a-4f6e-8a53-1e0b9c7d2a11")
        .replace("30000h", "4320h")
        .replace("  verification:", "  renewEvery: 30d\n  verification:");
    let file = cluster.file("unknown.yaml", &unknown);
    let run = cluster
        .kubectl(&["apply", "-f", file.to_str().unwrap()])
        .await;
    assert!(
        run.stderr
            .contains("strict decoding error: unknown field \"spec.renewEvery\""),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_is_defaulted_and_listed_with_the_crd_printer_columns() {
    let Some(cluster) = cluster().await else {
        return;
    };
    cluster
        .kubectl(&["apply", "-f", &repository_file(CRD)])
        .await
        .ok();
    let applied = cluster
        .kubectl(&["apply", "-f", &repository_file(EXAMPLE)])
        .await
        .ok();
    assert_eq!(
        applied.trim(),
        "clientsecretrotation.entra-rotator.io/dify-smtp created"
    );
    let stored = cluster.standin.rotation("dify", "dify-smtp").unwrap();
    assert_eq!(
        stored["spec"]["verification"]["smtp"]["authMechanism"], "LOGIN",
        "schema default"
    );
    assert_eq!(stored["spec"]["suspend"], false, "schema default");

    let expires = (chrono::Utc::now() - chrono::Duration::hours(3))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    cluster
        .standin
        .patch_rotation_status(
            "dify",
            "dify-smtp",
            json!({
                "conditions": [{ "type": "Ready", "status": "True", "reason": "Rotated", "message": "ok", "lastTransitionTime": expires }],
                "notAfter": expires,
            }),
        )
        .unwrap();
    let listed = cluster.kubectl(&["get", "csrot", "-A"]).await.ok();
    let (header, row) = table_line(&listed, "dify-smtp");
    assert_eq!(
        header,
        [
            "NAMESPACE",
            "NAME",
            "READY",
            "EXPIRES",
            "NEXT ROTATION",
            "AGE"
        ]
    );
    assert_eq!(
        row[..5],
        ["dify", "dify-smtp", "True", expires.as_str(), ""],
        "no renewalTime yet: empty"
    );

    // Expiry and next rotation are string columns: a date column would print a future time
    // as `<invalid>` (apimachinery's HumanDuration of a negative age; the stand-in's date
    // columns do the same, see its table tests).
    let renewal = (chrono::Utc::now() + chrono::Duration::days(30))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    cluster
        .standin
        .patch_rotation_status("dify", "dify-smtp", json!({ "renewalTime": renewal }))
        .unwrap();
    let listed = cluster.kubectl(&["get", "csrot", "-A"]).await.ok();
    let (_, row) = table_line(&listed, "dify-smtp");
    assert_eq!(row[4], renewal, "the next rotation is readable, not <invalid>");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_lists_and_deletes_secrets_and_configmaps() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let created = cluster
        .kubectl(&[
            "create",
            "secret",
            "generic",
            "relay",
            "--from-literal=SMTP_PASSWORD=s3cret",
        ])
        .await
        .ok();
    assert_eq!(created.trim(), "secret/relay created");
    assert_eq!(
        cluster.standin.secret("dify", "relay").unwrap().data["SMTP_PASSWORD"],
        "s3cret"
    );
    let again = cluster
        .kubectl(&[
            "create",
            "secret",
            "generic",
            "relay",
            "--from-literal=SMTP_PASSWORD=x",
        ])
        .await;
    assert_eq!(
        again.stderr.trim(),
        "error: failed to create secret secrets \"relay\" already exists"
    );
    let patched = cluster
        .kubectl(&[
            "patch",
            "secret",
            "relay",
            "--type=merge",
            "-p",
            r#"{"stringData":{"SMTP_PORT":"587"}}"#,
        ])
        .await
        .ok();
    assert_eq!(patched.trim(), "secret/relay patched");
    let patched = cluster
        .kubectl(&[
            "patch",
            "secret",
            "relay",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/data/SMTP_PORT"}]"#,
        ])
        .await
        .ok();
    assert_eq!(patched.trim(), "secret/relay patched");
    let patched = cluster
        .kubectl(&["label", "secret", "relay", "app=dify"])
        .await
        .ok();
    assert_eq!(patched.trim(), "secret/relay labeled");
    let stored = cluster.standin.secret("dify", "relay").unwrap();
    assert_eq!(stored.data.keys().collect::<Vec<_>>(), ["SMTP_PASSWORD"]);
    assert_eq!(stored.labels["app"], "dify");
    let deleted = cluster.kubectl(&["delete", "secret", "relay"]).await.ok();
    // kubectl 1.34 adds "from dify namespace"; older ones stop after "deleted".
    assert!(deleted.starts_with("secret \"relay\" deleted"), "{deleted}");
    assert!(cluster.standin.secret("dify", "relay").is_none());

    let created = cluster
        .kubectl(&[
            "create",
            "configmap",
            "settings",
            "--from-literal=MAIL_TYPE=smtp",
        ])
        .await
        .ok();
    assert_eq!(created.trim(), "configmap/settings created");
    let listed = cluster.kubectl(&["get", "configmaps"]).await.ok();
    let (header, row) = table_line(&listed, "settings");
    assert_eq!(header, ["NAME", "AGE"]);
    assert_eq!(row[0], "settings");
    let value = cluster
        .kubectl(&[
            "get",
            "configmap",
            "settings",
            "-o",
            "jsonpath={.data.MAIL_TYPE}",
        ])
        .await
        .ok();
    assert_eq!(value, "smtp");
    let deleted = cluster
        .kubectl(&["delete", "configmap", "settings"])
        .await
        .ok();
    assert!(
        deleted.starts_with("configmap \"settings\" deleted"),
        "{deleted}"
    );
    let gone = cluster.kubectl(&["get", "configmap", "settings"]).await;
    assert_eq!(
        gone.stderr.trim(),
        "Error from server (NotFound): configmaps \"settings\" not found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_lists_and_uninstalls_the_chart() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let Some(helm) = helm() else { return };
    let installed = cluster
        .helm(
            &helm,
            &[
                "install",
                "rotator",
                &repository_file("charts/entra-rotator"),
                "--namespace",
                "ops",
                "--create-namespace",
                "--set",
                "azure.workloadIdentity.clientId=11111111-1111-1111-1111-111111111111",
            ],
        )
        .await
        .ok();
    assert!(installed.contains("STATUS: deployed"), "{installed}");
    let listed = cluster
        .helm(&helm, &["list", "--namespace", "ops"])
        .await
        .ok();
    // helm separates its columns with tabs.
    let cells = |line: &str| {
        line.split('\t')
            .map(str::trim)
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let mut lines = listed.lines();
    assert_eq!(
        cells(lines.next().unwrap_or_default()),
        [
            "NAME",
            "NAMESPACE",
            "REVISION",
            "UPDATED",
            "STATUS",
            "CHART",
            "APP VERSION"
        ]
    );
    let row = cells(lines.next().unwrap_or_default());
    assert_eq!(row[..3], ["rotator", "ops", "1"]);
    assert_eq!(row[4..6], ["deployed", "entra-rotator-0.1.0"], "{listed}");
    let objects = cluster
        .kubectl(&["get", "deployments,services,serviceaccounts,configmaps,roles,rolebindings,poddisruptionbudgets", "-n", "ops", "-o", "name"])
        .await
        .ok();
    for expected in [
        "deployment.apps/rotator-entra-rotator",
        "service/rotator-entra-rotator-metrics",
        "serviceaccount/rotator-entra-rotator",
        "poddisruptionbudget.policy/rotator-entra-rotator",
    ] {
        assert!(
            objects.lines().any(|l| l == expected),
            "no {expected} in\n{objects}"
        );
    }
    assert!(
        objects.lines().any(|l| l.starts_with("configmap/")),
        "{objects}"
    );
    assert!(
        objects
            .lines()
            .any(|l| l.starts_with("role.rbac.authorization.k8s.io/")),
        "{objects}"
    );
    assert!(
        objects
            .lines()
            .any(|l| l.starts_with("rolebinding.rbac.authorization.k8s.io/")),
        "{objects}"
    );
    let crds = cluster.kubectl(&["get", "crd", "-o", "name"]).await.ok();
    assert_eq!(
        crds.trim(),
        [
            "customresourcedefinition.apiextensions.k8s.io/clientsecretrotations.entra-rotator.io",
            "customresourcedefinition.apiextensions.k8s.io/clusterrotatoridentities.entra-rotator.io",
            "customresourcedefinition.apiextensions.k8s.io/rotationpolicies.entra-rotator.io",
            "customresourcedefinition.apiextensions.k8s.io/rotatoridentities.entra-rotator.io",
        ]
        .join("\n")
    );
    let cluster_scoped = "validatingadmissionpolicies,validatingadmissionpolicybindings,clusterroles,clusterrolebindings";
    let admission = cluster.kubectl(&["get", cluster_scoped, "-o", "name"]).await.ok();
    for expected in [
        "validatingadmissionpolicy.admissionregistration.k8s.io/rotator-entra-rotator-verification-relays",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/rotator-entra-rotator-verification-relays",
        "clusterrole.rbac.authorization.k8s.io/rotator-entra-rotator-policies",
        "clusterrolebinding.rbac.authorization.k8s.io/rotator-entra-rotator-policies",
    ] {
        assert!(admission.lines().any(|l| l == expected), "no {expected} in\n{admission}");
    }

    let uninstalled = cluster
        .helm(&helm, &["uninstall", "rotator", "--namespace", "ops"])
        .await
        .ok();
    assert_eq!(uninstalled.trim(), "release \"rotator\" uninstalled");
    let left = cluster
        .kubectl(&["get", "deployments,services,serviceaccounts,configmaps,roles,rolebindings,poddisruptionbudgets,secrets", "-n", "ops", "-o", "name"])
        .await
        .ok();
    assert_eq!(
        left.trim(),
        "",
        "helm removed what it created, its release Secret too"
    );
    let left = cluster.kubectl(&["get", cluster_scoped, "-o", "name"]).await.ok();
    assert_eq!(left.trim(), "", "and the cluster-scoped objects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_describe_lists_the_events_about_a_rotation() {
    let Some(cluster) = cluster().await else {
        return;
    };
    cluster
        .kubectl(&["apply", "-f", &repository_file(CRD)])
        .await
        .ok();
    cluster
        .kubectl(&["apply", "-f", &repository_file(EXAMPLE)])
        .await
        .ok();
    let rotation = cluster.standin.rotation("dify", "dify-smtp").unwrap();
    let uid = rotation["metadata"]["uid"].as_str().unwrap();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    // What the controller's event recorder writes (events.k8s.io/v1), one about this
    // rotation and one about another object.
    let event = |name: &str, about: &str, about_uid: &str, reason: &str, note: &str| {
        format!(
            "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata:\n  name: {name}\n  namespace: dify\neventTime: \"{now}\"\nreportingController: entra-rotator.io/controller\nreportingInstance: entra-rotator-0\naction: Rotate\nreason: {reason}\nnote: {note}\ntype: Normal\nregarding:\n  apiVersion: entra-rotator.io/v1alpha1\n  kind: ClientSecretRotation\n  name: {about}\n  namespace: dify\n  uid: {about_uid}\n"
        )
    };
    let mine = cluster.file(
        "event.yaml",
        &event(
            "dify-smtp.1",
            "dify-smtp",
            uid,
            "Rotated",
            "minted keyId c42034e7",
        ),
    );
    cluster
        .kubectl(&["create", "-f", mine.to_str().unwrap()])
        .await
        .ok();
    let other = cluster.file(
        "other.yaml",
        &event(
            "other.1",
            "other",
            "00000000-0000-4000-8000-000000000000",
            "Failed",
            "not about dify-smtp",
        ),
    );
    cluster
        .kubectl(&["create", "-f", other.to_str().unwrap()])
        .await
        .ok();

    let described = cluster
        .kubectl(&["describe", "csrot", "dify-smtp"])
        .await
        .ok();
    let events = described
        .split("Events:")
        .nth(1)
        .unwrap_or_else(|| panic!("no Events section in\n{described}"));
    let dedented: Vec<&str> = events
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect();
    let (header, row) = table_line(&dedented.join("\n"), "Rotated");
    assert_eq!(header, ["Type", "Reason", "Age", "From", "Message"]);
    assert_eq!(row[0], "Normal");
    assert_eq!(
        row[3..],
        ["entra-rotator.io/controller", "minted keyId c42034e7"]
    );
    assert!(!events.contains("not about dify-smtp"), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_stand_in_does_not_serve_is_refused_as_the_api_server_refuses_it() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let run = cluster.kubectl(&["delete", "namespace", "dify"]).await;
    assert!(!run.success);
    assert_eq!(
        run.stderr.trim(),
        "Error from server (MethodNotAllowed): the server does not allow this method on the requested resource"
    );
    let run = cluster
        .kubectl(&[
            "get",
            "--raw",
            "/apis/example.com/v1/namespaces/dify/widgets",
        ])
        .await;
    assert!(!run.success);
    assert_eq!(
        run.stderr.trim(),
        "Error from server (NotFound): the server could not find the requested resource"
    );
    let run = cluster.kubectl(&["get", "widgets"]).await;
    assert_eq!(
        run.stderr.trim(),
        "error: the server doesn't have a resource type \"widgets\""
    );
}

/// Waits for the next line of a running kubectl that satisfies `wanted`; panics with what
/// it printed if kubectl stops first. The bound only keeps a broken stand-in from hanging
/// the suite; nothing is measured.
fn next_line(lines: &mpsc::Receiver<String>, wanted: impl Fn(&str) -> bool) -> String {
    let mut seen = Vec::new();
    loop {
        match lines.recv_timeout(std::time::Duration::from_secs(120)) {
            Ok(line) if wanted(&line) => return line,
            Ok(line) => seen.push(line),
            Err(error) => panic!(
                "kubectl stopped printing ({error}); it printed:\n{}",
                seen.join("\n")
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_shows_a_rotation_becoming_ready() {
    let Some(cluster) = cluster().await else {
        return;
    };
    cluster
        .kubectl(&["apply", "-f", &repository_file(CRD)])
        .await
        .ok();
    cluster
        .kubectl(&["apply", "-f", &repository_file(EXAMPLE)])
        .await
        .ok();
    let mut watching = Command::new(&cluster.kubectl)
        .arg("--kubeconfig")
        .arg(cluster.path("kubeconfig"))
        .arg("--cache-dir")
        .arg(cluster.path("cache"))
        .args(["get", "csrot", "-w"])
        .env("HOME", cluster.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watching.stdout.take().unwrap();
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let waiting = tokio::task::spawn_blocking(move || {
        let header = next_line(&lines, |l| l.starts_with("NAME"));
        let first = next_line(&lines, |l| l.starts_with("dify-smtp"));
        (header, first, lines)
    });
    let (header, first, lines) = waiting.await.unwrap();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["NAME", "READY", "EXPIRES", "NEXT", "ROTATION", "AGE"]
    );
    assert!(!first.contains("True"), "{first}");
    cluster
        .standin
        .patch_rotation_status(
            "dify",
            "dify-smtp",
            json!({ "conditions": [{ "type": "Ready", "status": "True", "reason": "Rotated", "message": "ok", "lastTransitionTime": "2026-01-01T00:00:00Z" }] }),
        )
        .unwrap();
    let ready =
        tokio::task::spawn_blocking(move || next_line(&lines, |l| l.starts_with("dify-smtp")))
            .await
            .unwrap();
    watching.kill().unwrap();
    watching.wait().unwrap();
    assert_eq!(
        ready.split_whitespace().take(2).collect::<Vec<_>>(),
        ["dify-smtp", "True"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_applied_client_side_moves_to_server_side_apply_without_conflicts() {
    let Some(cluster) = cluster().await else {
        return;
    };
    cluster
        .kubectl(&["apply", "-f", &repository_file(CRD)])
        .await
        .ok();
    let example = std::fs::read_to_string(repository_file(EXAMPLE)).unwrap();
    let file = cluster.file("rotation.yaml", &example);
    let file = file.to_str().unwrap();
    cluster.kubectl(&["apply", "-f", file]).await.ok();
    cluster.file(
        "rotation.yaml",
        &example.replace("renewBefore: 1440h", "renewBefore: 720h"),
    );
    let run = cluster
        .kubectl(&["apply", "--server-side", "-f", file])
        .await;
    assert!(!run.stderr.contains("Warning"), "{}", run.stderr);
    assert_eq!(
        run.ok().trim(),
        "clientsecretrotation.entra-rotator.io/dify-smtp serverside-applied"
    );
    let stored = cluster.standin.rotation("dify", "dify-smtp").unwrap();
    assert_eq!(stored["spec"]["renewBefore"], "720h");
    let managers: Vec<(&str, &str)> = stored["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["manager"].as_str().unwrap(),
                entry["operation"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(managers.contains(&("kubectl", "Apply")), "{managers:?}");
    assert!(
        !managers
            .iter()
            .any(|(manager, _)| *manager == "kubectl-client-side-apply"),
        "client-side apply's ownership moved to server-side apply: {managers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cel_rule_on_a_list_element_names_the_element() {
    let Some(cluster) = cluster().await else {
        return;
    };
    cluster
        .kubectl(&["apply", "-f", &repository_file(CRD)])
        .await
        .ok();
    let both = BAD_ROTATION
        .replace("not-a-guid", "0b5e2f3c-9d0a-4f6e-8a53-1e0b9c7d2a11")
        .replace("30000h", "4320h")
        .replace(
            "  - secret:\n",
            "  - keyVault:\n      vaultUrl: https://contoso.vault.azure.net\n      secretName: smtp\n    secret:\n",
        );
    let file = cluster.file("both.yaml", &both);
    let run = cluster
        .kubectl(&["apply", "-f", file.to_str().unwrap()])
        .await;
    assert!(
        run.stderr.contains(
            "spec.targets[0]: Invalid value: \"object\": each target sets exactly one of keyVault or secret"
        ),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_reads_the_registered_crd_schema() {
    let Some(cluster) = cluster().await else {
        return;
    };
    cluster
        .kubectl(&["apply", "-f", &repository_file(CRD)])
        .await
        .ok();
    let explained = cluster
        .kubectl(&["explain", "clientsecretrotations.spec.lifetime"])
        .await
        .ok();
    for line in [
        "GROUP:      entra-rotator.io",
        "KIND:       ClientSecretRotation",
        "VERSION:    v1alpha1",
        "FIELD: lifetime <string>",
    ] {
        assert!(
            explained.lines().any(|l| l == line),
            "no {line:?} in\n{explained}"
        );
    }
    assert!(
        explained.contains("at most"),
        "the CRD's description: {explained}"
    );
}
