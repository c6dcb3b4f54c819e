//! The Helm chart (`charts/entra-rotator`), checked like code: `helm lint`, `helm template`
//! in both modes and the main value combinations, every rendered object validated against
//! the Kubernetes schemas (kubernetes-validate, offline), and assertions on what a platform
//! engineer cares about: least-privilege RBAC, hardened pods, probes and metrics on the
//! `http` port, the CronJob never overlapping, the Azure sign-in wiring, container arguments
//! the binary accepts, and the chart's CRD being the committed one.
//!
//! `helm` comes from `ENTRA_ROTATOR_HELM` (set by .ci/run) or `PATH`, kubernetes-validate
//! from `ENTRA_ROTATOR_KUBERNETES_VALIDATE` or `PATH`. Without them each test prints a skip
//! notice, except under CI, where a missing tool fails the test.

#[path = "support/tool.rs"]
mod tool;

use tool::tool;
use entra_rotator::config::{CredentialConfig, ServiceSettings};
use entra_rotator::operator::crd::ClientSecretRotation;
use serde::Deserialize;
use serde_yaml::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const RELEASE: &str = "rotator";
const NAMESPACE: &str = "ops";
const IDENTITY: &str = "azure.workloadIdentity.clientId=11111111-1111-1111-1111-111111111111";
const CLIENT_SECRET: &[&str] = &[
    "azure.credential=clientSecret",
    "azure.clientSecret.tenantId=22222222-2222-2222-2222-222222222222",
    "azure.clientSecret.clientId=33333333-3333-3333-3333-333333333333",
    "azure.clientSecret.existingSecret=rotator-credential",
];
/// Kubernetes versions the rendered objects must be valid for: the chart's kubeVersion
/// floor and the newest schema kubernetes-validate ships.
const KUBERNETES_VERSIONS: &[&str] = &["1.31.0", "1.37.0"];
/// prometheus-operator kinds: their schemas are CRDs that are not available offline.
const NOT_VALIDATED_OFFLINE: &[&str] = &["ServiceMonitor", "PrometheusRule"];

fn chart() -> PathBuf {
    Path::new(ROOT).join("charts/entra-rotator")
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Controller,
    CronJob,
}

/// One `helm template` call and what it is expected to produce.
struct Scenario {
    name: &'static str,
    mode: Mode,
    sets: Vec<&'static str>,
    values_file: Option<&'static str>,
    /// The namespace whose ClientSecretRotations are handled (unless cluster-wide).
    watched: &'static str,
    cluster_wide: bool,
    rollout: bool,
    client_secret: bool,
    monitoring: bool,
    /// `networkPolicy.enabled` with this many `metricsFrom` peers.
    network_policy_peers: Option<usize>,
}

impl Scenario {
    fn sets(mut self, sets: &[&'static str]) -> Self {
        self.sets.extend_from_slice(sets);
        self
    }

    fn new(name: &'static str, mode: Mode) -> Self {
        let mut sets = vec![IDENTITY];
        if mode == Mode::CronJob {
            sets.push("mode=cronjob");
        }
        Self {
            name,
            mode,
            sets,
            values_file: None,
            watched: NAMESPACE,
            cluster_wide: false,
            rollout: false,
            client_secret: false,
            monitoring: false,
            network_policy_peers: None,
        }
    }
    fn network_policy(mut self, peers: &[&'static str]) -> Self {
        self.sets.push("networkPolicy.enabled=true");
        self.sets.extend_from_slice(peers);
        self.network_policy_peers = Some(peers.len());
        self
    }
    fn cluster_wide(mut self) -> Self {
        self.sets.push("watch.allNamespaces=true");
        self.cluster_wide = true;
        self
    }
    fn rollout(mut self) -> Self {
        self.sets.push("rollout.enabled=true");
        self.rollout = true;
        self
    }
    fn client_secret(mut self) -> Self {
        self.sets.retain(|s| *s != IDENTITY);
        self.sets.extend_from_slice(CLIENT_SECRET);
        self.client_secret = true;
        self
    }
    fn monitoring(mut self) -> Self {
        if self.mode == Mode::Controller {
            self.sets.push("metrics.serviceMonitor.enabled=true");
        }
        self.sets.push("metrics.prometheusRule.enabled=true");
        if self.mode == Mode::Controller {
            self.sets.push("dashboards.enabled=true");
        }
        self.sets
            .push("tls.extraRootCertificatesConfigMap=corporate-proxy-ca");
        self.monitoring = true;
        self
    }
}

fn scenarios() -> Vec<Scenario> {
    let mut dify = Scenario::new("examples/helm/values.yaml (Dify on ACS)", Mode::Controller);
    dify.sets.clear();
    dify.values_file = Some("examples/helm/values.yaml");
    dify.watched = "dify";
    dify.rollout = true;
    dify.monitoring = true;
    vec![
        Scenario::new("controller, defaults (namespaced RBAC)", Mode::Controller),
        Scenario::new("controller, cluster-wide", Mode::Controller).cluster_wide(),
        Scenario::new("controller, roll-out on", Mode::Controller).rollout(),
        Scenario::new("controller, client secret", Mode::Controller).client_secret(),
        Scenario::new(
            "controller, ServiceMonitor + PrometheusRule",
            Mode::Controller,
        )
        .monitoring(),
        Scenario::new("controller, NetworkPolicy for Prometheus", Mode::Controller).network_policy(&[
            "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
            "networkPolicy.metricsFrom[1].podSelector.matchLabels.app=prometheus",
        ]),
        Scenario::new("controller, NetworkPolicy without peers", Mode::Controller).network_policy(&[]),
        Scenario::new("cronjob, defaults", Mode::CronJob),
        Scenario::new("cronjob, NetworkPolicy asked for", Mode::CronJob).network_policy(&[]),
        Scenario::new(
            "cronjob, cluster-wide, roll-out, client secret",
            Mode::CronJob,
        )
        .cluster_wide()
        .rollout()
        .client_secret(),
        Scenario::new("cronjob, PrometheusRule", Mode::CronJob).monitoring(),
        Scenario::new("controller, relays allowed, no admission policy", Mode::Controller).sets(&[
            "verification.allowedHosts={relay.contoso.example:587,mail.contoso.example}",
            "admissionPolicy.enabled=false",
        ]),
        Scenario::new("cronjob, relays allowed", Mode::CronJob).sets(&["verification.allowedHosts={relay.contoso.example:587}"]),
        dify,
    ]
}


/// What goes untested without helm or kubernetes-validate.
const CHART_UNCHECKED: &str = "the chart is unchecked";

fn helm() -> Option<PathBuf> {
    tool("ENTRA_ROTATOR_HELM", "helm", &["version"], CHART_UNCHECKED)
}

fn run(command: &mut Command) -> std::process::Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn template_command(helm: &Path, scenario: &Scenario) -> Command {
    let mut command = Command::new(helm);
    command.args(["template", RELEASE]).arg(chart()).args([
        "--namespace",
        NAMESPACE,
        "--include-crds",
    ]);
    if let Some(file) = scenario.values_file {
        command.arg("--values").arg(Path::new(ROOT).join(file));
    }
    for set in &scenario.sets {
        command.args(["--set", set]);
    }
    command
}

/// The objects one scenario renders.
struct Rendered {
    scenario: Scenario,
    objects: Vec<Value>,
}

impl Rendered {
    fn kind(&self, kind: &str) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|o| o["kind"].as_str() == Some(kind))
            .collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let found = self.kind(kind);
        assert_eq!(
            found.len(),
            1,
            "{}: expected one {kind}, found {}",
            self.scenario.name,
            found.len()
        );
        found[0]
    }

    /// The pod template of the Deployment or the CronJob's Jobs.
    fn pod(&self) -> &Value {
        match self.scenario.mode {
            Mode::Controller => &self.one("Deployment")["spec"]["template"],
            Mode::CronJob => &self.one("CronJob")["spec"]["jobTemplate"]["spec"]["template"],
        }
    }

    fn container(&self) -> &Value {
        let containers = self.pod()["spec"]["containers"]
            .as_sequence()
            .expect("containers");
        assert_eq!(
            containers.len(),
            1,
            "{}: one container expected",
            self.scenario.name
        );
        &containers[0]
    }

    fn args(&self) -> Vec<String> {
        strings(&self.container()["args"])
    }

    fn settings(&self) -> ServiceSettings {
        let text = self
            .kind("ConfigMap")
            .into_iter()
            .find_map(|m| m["data"]["azure.yaml"].as_str())
            .expect("azure.yaml in a ConfigMap");
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        ServiceSettings::load(Some(file.path())).unwrap_or_else(|e| {
            panic!(
                "{}: azure.yaml is not what --azure-config reads: {e}\n{text}",
                self.scenario.name
            )
        })
    }
}

fn render(helm: &Path, scenario: Scenario) -> Rendered {
    let output = run(&mut template_command(helm, &scenario));
    assert!(
        output.status.success(),
        "{}: helm template failed:\n{}",
        scenario.name,
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let objects = serde_yaml::Deserializer::from_str(&text)
        .map(|document| {
            Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", scenario.name))
        })
        .filter(|object| !object.is_null())
        .collect();
    Rendered { scenario, objects }
}

fn render_all(helm: &Path) -> Vec<Rendered> {
    scenarios().into_iter().map(|s| render(helm, s)).collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn set(value: &Value) -> BTreeSet<String> {
    strings(value).into_iter().collect()
}

fn name(object: &Value) -> String {
    format!(
        "{}/{}",
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}

#[test]
fn helm_lint_passes_for_the_defaults_and_the_dify_example() {
    let Some(helm) = helm() else { return };
    for extra in [
        vec![],
        vec![
            "--values".to_string(),
            format!("{ROOT}/examples/helm/values.yaml"),
        ],
    ] {
        let output = run(Command::new(&helm)
            .arg("lint")
            .arg(chart())
            .arg("--strict")
            .args(&extra));
        assert!(
            output.status.success(),
            "helm lint --strict {extra:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn every_rendered_object_is_valid_for_kubernetes() {
    let Some(helm) = helm() else { return };
    let Some(validator) = tool(
        "ENTRA_ROTATOR_KUBERNETES_VALIDATE",
        "kubernetes-validate",
        &["--version"],
        CHART_UNCHECKED,
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut skipped = BTreeSet::new();
    for (index, rendered) in render_all(&helm).iter().enumerate() {
        for (position, object) in rendered.objects.iter().enumerate() {
            let kind = object["kind"].as_str().unwrap_or_default();
            if NOT_VALIDATED_OFFLINE.contains(&kind) {
                skipped.insert(kind.to_string());
                continue;
            }
            let file = dir
                .path()
                .join(format!("{index:02}-{position:02}-{kind}.yaml"));
            std::fs::write(&file, serde_yaml::to_string(object).unwrap()).unwrap();
            files.push(file);
        }
    }
    for example in ["dify-smtp-secret.yaml", "dify-api-deployment.yaml"] {
        files.push(Path::new(ROOT).join("examples/helm").join(example));
    }
    for version in KUBERNETES_VERSIONS {
        let output = run(Command::new(&validator)
            .args(["--strict", "--quiet", "--kubernetes-version", version])
            .args(&files));
        assert!(
            output.status.success(),
            "rendered objects are not valid for Kubernetes {version}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    eprintln!(
        "validated {} objects against Kubernetes {KUBERNETES_VERSIONS:?}; not validated (CRD kinds without offline schemas): {skipped:?}",
        files.len()
    );
    assert!(
        files.len() > 60,
        "too few objects rendered: {}",
        files.len()
    );
}

/// Verbs the rotator may ever hold; anything else (delete, escalate, bind, impersonate,
/// `*`) is a finding.
const ALLOWED_VERBS: &[&str] = &["get", "list", "watch", "create", "patch"];

fn rules(role: &Value) -> &[Value] {
    role["rules"]
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn verbs_on(roles: &[&Value], group: &str, resource: &str) -> BTreeSet<String> {
    roles
        .iter()
        .flat_map(|role| rules(role))
        .filter(|rule| {
            set(&rule["apiGroups"]).contains(group) && set(&rule["resources"]).contains(resource)
        })
        .flat_map(|rule| strings(&rule["verbs"]))
        .collect()
}

fn verbs(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|v| v.to_string()).collect()
}

#[test]
fn rbac_grants_only_what_the_rotator_uses() {
    let Some(helm) = helm() else { return };
    for rendered in render_all(&helm) {
        let s = &rendered.scenario;
        let roles: Vec<&Value> = rendered
            .kind("Role")
            .into_iter()
            .chain(rendered.kind("ClusterRole"))
            .collect();
        for role in &roles {
            for rule in rules(role) {
                for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                    assert!(
                        !set(&rule[field]).contains("*"),
                        "{}: {} has a wildcard in {field}",
                        s.name,
                        name(role)
                    );
                }
                for verb in strings(&rule["verbs"]) {
                    assert!(
                        ALLOWED_VERBS.contains(&verb.as_str()),
                        "{}: {} grants {verb}",
                        s.name,
                        name(role)
                    );
                }
            }
        }

        // RotationPolicies are cluster-scoped: every scenario reads them through a
        // ClusterRole of its own, which grants nothing else (checked below).
        let is_policy_reader = |o: &&Value| name(o).ends_with("-policies");
        let policy_readers: Vec<&Value> = rendered.kind("ClusterRole").into_iter().filter(is_policy_reader).collect();
        assert_eq!(policy_readers.len(), 1, "{}: one ClusterRole reads RotationPolicies", s.name);
        assert_eq!(
            rules(policy_readers[0]).iter().map(|r| (strings(&r["apiGroups"]), strings(&r["resources"]), strings(&r["verbs"]))).collect::<Vec<_>>(),
            [
                (vec!["entra-rotator.io".to_string()], vec!["rotationpolicies".to_string()], vec!["get".to_string(), "list".to_string()]),
                (vec!["entra-rotator.io".to_string()], vec!["clusterrotatoridentities".to_string()], vec!["get".to_string()]),
                (vec![String::new()], vec!["namespaces".to_string()], vec!["get".to_string()]),
            ],
            "{}: the policy reader reads RotationPolicies, ClusterRotatorIdentities and namespace labels, nothing else",
            s.name
        );
        let policy_binding: Vec<&Value> = rendered.kind("ClusterRoleBinding").into_iter().filter(is_policy_reader).collect();
        assert_eq!(policy_binding.len(), 1, "{}", s.name);
        assert_eq!(policy_binding[0]["roleRef"]["name"], policy_readers[0]["metadata"]["name"], "{}", s.name);
        let cluster_roles: Vec<&Value> = rendered.kind("ClusterRole").into_iter().filter(|o| !is_policy_reader(o)).collect();
        let cluster_bindings: Vec<&Value> = rendered.kind("ClusterRoleBinding").into_iter().filter(|o| !is_policy_reader(o)).collect();
        if s.cluster_wide {
            assert_eq!(
                (cluster_roles.len(), cluster_bindings.len()),
                (1, 1),
                "{}: one ClusterRole and its binding",
                s.name
            );
        } else {
            assert!(
                cluster_roles.is_empty() && cluster_bindings.is_empty(),
                "{}: cluster-wide RBAC (and so Secrets in every namespace) without watch.allNamespaces",
                s.name
            );
        }
        let watch_roles: Vec<&Value> = roles
            .iter()
            .copied()
            .filter(|r| !verbs_on(&[r], "", "secrets").is_empty())
            .collect();
        assert_eq!(
            watch_roles.len(),
            1,
            "{}: Secrets are granted by exactly one role",
            s.name
        );
        if !s.cluster_wide {
            assert_eq!(
                watch_roles[0]["metadata"]["namespace"].as_str(),
                Some(s.watched),
                "{}: the Role lives in the watched namespace",
                s.name
            );
        }
        let scope = if s.cluster_wide {
            None
        } else {
            Some(format!("--namespace={}", s.watched))
        };
        let args = rendered.args();
        assert_eq!(
            args.iter().find(|a| a.starts_with("--namespace")),
            scope.as_ref(),
            "{}: the binary watches what the Role grants",
            s.name
        );
        assert_eq!(
            args.contains(&"--all-namespaces".to_string()),
            s.cluster_wide && s.mode == Mode::CronJob,
            "{}",
            s.name
        );

        let (rotations, secrets) = match s.mode {
            Mode::Controller => (
                verbs(&["get", "list", "watch"]),
                verbs(&["get", "list", "watch", "create", "patch"]),
            ),
            Mode::CronJob => (verbs(&["get", "list"]), verbs(&["get", "create", "patch"])),
        };
        assert_eq!(
            verbs_on(&roles, "entra-rotator.io", "clientsecretrotations"),
            rotations,
            "{}",
            s.name
        );
        assert_eq!(
            verbs_on(&roles, "entra-rotator.io", "clientsecretrotations/status"),
            verbs(&["patch"]),
            "{}",
            s.name
        );
        assert_eq!(verbs_on(&roles, "", "secrets"), secrets, "{}", s.name);
        // A rotation's identityRef: the RotatorIdentity, and a token of its ServiceAccount.
        assert_eq!(verbs_on(&roles, "entra-rotator.io", "rotatoridentities"), verbs(&["get"]), "{}", s.name);
        assert_eq!(verbs_on(&roles, "", "serviceaccounts/token"), verbs(&["create"]), "{}", s.name);
        assert_eq!(verbs_on(&roles, "", "serviceaccounts"), BTreeSet::new(), "{}: no access to ServiceAccounts themselves", s.name);
        assert_eq!(
            verbs_on(&roles, "events.k8s.io", "events"),
            verbs(&["create", "patch"]),
            "{}",
            s.name
        );
        assert_eq!(
            verbs_on(&roles, "", "pods"),
            verbs(&["get", "list", "watch"]),
            "{}: pods are read (never written) to find consumers still on the old secret",
            s.name
        );
        for workload in ["deployments", "statefulsets", "daemonsets"] {
            let expected = if s.rollout {
                verbs(&["get", "list", "patch"])
            } else {
                BTreeSet::new()
            };
            assert_eq!(
                verbs_on(&roles, "apps", workload),
                expected,
                "{}: {workload} only with rollout.enabled",
                s.name
            );
        }

        let leases: Vec<&Value> = roles
            .iter()
            .copied()
            .filter(|r| !verbs_on(&[r], "coordination.k8s.io", "leases").is_empty())
            .collect();
        match s.mode {
            Mode::Controller => {
                assert_eq!(leases.len(), 1, "{}: one Lease Role", s.name);
                assert_eq!(
                    leases[0]["kind"].as_str(),
                    Some("Role"),
                    "{}: Leases are never cluster-wide",
                    s.name
                );
                assert_eq!(
                    leases[0]["metadata"]["namespace"].as_str(),
                    Some(NAMESPACE),
                    "{}",
                    s.name
                );
                assert_eq!(
                    verbs_on(&leases, "coordination.k8s.io", "leases"),
                    verbs(&["get", "create", "patch"]),
                    "{}",
                    s.name
                );
                let lease_name = format!("{RELEASE}-entra-rotator-leader");
                assert!(
                    rendered
                        .args()
                        .contains(&format!("--lease-name={lease_name}")),
                    "{}: the Lease the Role names",
                    s.name
                );
                for rule in rules(leases[0])
                    .iter()
                    .filter(|r| set(&r["verbs"]).contains("patch"))
                {
                    assert_eq!(
                        strings(&rule["resourceNames"]),
                        vec![lease_name.clone()],
                        "{}: patch only our Lease",
                        s.name
                    );
                }
            }
            Mode::CronJob => assert!(leases.is_empty(), "{}: a CronJob needs no Lease", s.name),
        }

        for binding in rendered
            .kind("RoleBinding")
            .into_iter()
            .chain(cluster_bindings)
        {
            let subjects = binding["subjects"].as_sequence().expect("subjects");
            assert_eq!(subjects.len(), 1, "{}: {}", s.name, name(binding));
            assert_eq!(subjects[0]["kind"].as_str(), Some("ServiceAccount"));
            assert_eq!(
                subjects[0]["name"],
                rendered.pod()["spec"]["serviceAccountName"],
                "{}: {}",
                s.name,
                name(binding)
            );
        }
    }
}

#[test]
fn pods_are_hardened_and_bounded() {
    let Some(helm) = helm() else { return };
    for rendered in render_all(&helm) {
        let s = &rendered.scenario;
        let pod = &rendered.pod()["spec"];
        assert_eq!(
            pod["securityContext"]["runAsNonRoot"].as_bool(),
            Some(true),
            "{}",
            s.name
        );
        assert_eq!(
            pod["securityContext"]["runAsUser"].as_u64(),
            Some(65532),
            "{}: the image's non-root user",
            s.name
        );
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault"),
            "{}",
            s.name
        );
        let container = rendered.container();
        let security = &container["securityContext"];
        assert_eq!(
            security["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "{}",
            s.name
        );
        assert_eq!(
            security["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{}",
            s.name
        );
        assert_eq!(security["runAsNonRoot"].as_bool(), Some(true), "{}", s.name);
        assert_eq!(
            strings(&security["capabilities"]["drop"]),
            vec!["ALL"],
            "{}",
            s.name
        );
        assert!(
            security["capabilities"]["add"].is_null(),
            "{}: no capability added",
            s.name
        );
        assert_eq!(
            security["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault"),
            "{}",
            s.name
        );
        for bound in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    container["resources"][bound][resource].is_string(),
                    "{}: resources.{bound}.{resource} missing",
                    s.name
                );
            }
        }
        assert!(
            pod["hostNetwork"].is_null() && pod["hostPID"].is_null(),
            "{}",
            s.name
        );
        let writable: Vec<&str> = container["volumeMounts"]
            .as_sequence()
            .expect("volumeMounts")
            .iter()
            .filter(|m| m["readOnly"].as_bool() != Some(true))
            .filter_map(|m| m["mountPath"].as_str())
            .collect();
        assert_eq!(writable, vec!["/tmp"], "{}: only /tmp is writable", s.name);
    }
}

#[test]
fn the_controller_serves_probes_and_metrics_on_the_http_port() {
    let Some(helm) = helm() else { return };
    for rendered in render_all(&helm)
        .into_iter()
        .filter(|r| r.scenario.mode == Mode::Controller)
    {
        let s = &rendered.scenario;
        let container = rendered.container();
        let ports = container["ports"].as_sequence().expect("ports");
        assert_eq!(ports.len(), 1, "{}", s.name);
        assert_eq!(
            (
                ports[0]["name"].as_str(),
                ports[0]["containerPort"].as_u64()
            ),
            (Some("http"), Some(8080)),
            "{}",
            s.name
        );
        assert!(
            rendered
                .args()
                .contains(&"--health-addr=0.0.0.0:8080".to_string()),
            "{}",
            s.name
        );
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(
                (get["path"].as_str(), get["port"].as_str()),
                (Some(path), Some("http")),
                "{}: {probe}",
                s.name
            );
        }
        let deployment = rendered.one("Deployment");
        assert!(
            deployment["spec"]["replicas"].as_u64().unwrap_or(0) >= 2,
            "{}: a standby by default",
            s.name
        );
        assert_eq!(
            rendered.one("PodDisruptionBudget")["spec"]["minAvailable"].as_u64(),
            Some(1),
            "{}",
            s.name
        );

        let service = rendered.one("Service");
        let service_ports = service["spec"]["ports"]
            .as_sequence()
            .expect("Service ports");
        assert_eq!(
            (
                service_ports[0]["name"].as_str(),
                service_ports[0]["targetPort"].as_str()
            ),
            (Some("http"), Some("http")),
            "{}",
            s.name
        );
        let pod_labels = &rendered.pod()["metadata"]["labels"];
        for (key, value) in service["spec"]["selector"].as_mapping().expect("selector") {
            assert_eq!(
                &pod_labels[key], value,
                "{}: the metrics Service selects the controller pods",
                s.name
            );
        }
        if s.monitoring {
            let monitor = rendered.one("ServiceMonitor");
            let endpoint = &monitor["spec"]["endpoints"][0];
            assert_eq!(
                (endpoint["port"].as_str(), endpoint["path"].as_str()),
                (Some("http"), Some("/metrics")),
                "{}",
                s.name
            );
            for (key, value) in monitor["spec"]["selector"]["matchLabels"]
                .as_mapping()
                .expect("matchLabels")
            {
                assert_eq!(
                    &service["metadata"]["labels"][key], value,
                    "{}: the ServiceMonitor selects the metrics Service",
                    s.name
                );
            }
            let alerts = alert_names(&rendered);
            assert_eq!(
                alerts,
                verbs(&[
                    "EntraRotatorCredentialExpiringSoon",
                    "EntraRotatorRotationFailing",
                    "EntraRotatorControllerAbsent"
                ]),
                "{}",
                s.name
            );
            let job = format!("job=\"{}\"", service["metadata"]["name"].as_str().unwrap());
            assert!(
                alert_expressions(&rendered)
                    .iter()
                    .any(|e| e.contains(&job)),
                "{}: the absence alert watches the metrics Service ({job})",
                s.name
            );
        } else {
            assert!(
                rendered.kind("ServiceMonitor").is_empty()
                    && rendered.kind("PrometheusRule").is_empty(),
                "{}",
                s.name
            );
        }
    }
}

/// /metrics names every application and keyId: with `networkPolicy.enabled`, only the
/// configured peers reach the controller's pods, only on the `http` port; no peers means
/// nobody (an ingress rule without `from` would admit everyone). Off by default, and
/// nothing to protect in CronJob mode.
#[test]
fn the_network_policy_admits_only_the_configured_peers_to_the_http_port() {
    let Some(helm) = helm() else { return };
    for rendered in render_all(&helm) {
        let s = &rendered.scenario;
        let policies = rendered.kind("NetworkPolicy");
        let Some(peers) = s.network_policy_peers.filter(|_| s.mode == Mode::Controller) else {
            assert!(policies.is_empty(), "{}: no NetworkPolicy unless asked for, in controller mode", s.name);
            continue;
        };
        let policy = rendered.one("NetworkPolicy");
        let pod_labels = &rendered.pod()["metadata"]["labels"];
        let selector = policy["spec"]["podSelector"]["matchLabels"].as_mapping().expect("matchLabels");
        assert!(!selector.is_empty(), "{}: selects the controller pods, not the namespace", s.name);
        for (key, value) in selector {
            assert_eq!(&pod_labels[key], value, "{}: the policy selects the controller pods", s.name);
        }
        assert_eq!(strings(&policy["spec"]["policyTypes"]), ["Ingress"], "{}", s.name);
        let ingress = policy["spec"]["ingress"].as_sequence().expect("ingress rules");
        if peers == 0 {
            assert!(ingress.is_empty(), "{}: no peers, no way in: {ingress:?}", s.name);
            continue;
        }
        assert_eq!(ingress.len(), 1, "{}", s.name);
        let ports = ingress[0]["ports"].as_sequence().expect("ports");
        assert_eq!(ports.len(), 1, "{}", s.name);
        assert_eq!((ports[0]["port"].as_str(), ports[0]["protocol"].as_str()), (Some("http"), Some("TCP")), "{}", s.name);
        let from = ingress[0]["from"].as_sequence().expect("from");
        assert_eq!(from.len(), peers, "{}", s.name);
        assert_eq!(from[0]["namespaceSelector"]["matchLabels"]["name"].as_str(), Some("monitoring"), "{}", s.name);
        assert_eq!(from[1]["podSelector"]["matchLabels"]["app"].as_str(), Some("prometheus"), "{}", s.name);
    }
}

fn alert_rules(rendered: &Rendered) -> Vec<&Value> {
    rendered.one("PrometheusRule")["spec"]["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules"))
        .collect()
}

fn alert_names(rendered: &Rendered) -> BTreeSet<String> {
    alert_rules(rendered)
        .iter()
        .filter_map(|r| r["alert"].as_str().map(String::from))
        .collect()
}

fn alert_expressions(rendered: &Rendered) -> Vec<String> {
    alert_rules(rendered)
        .iter()
        .filter_map(|r| r["expr"].as_str().map(String::from))
        .collect()
}

#[test]
fn the_cronjob_never_runs_two_passes_at_once() {
    let Some(helm) = helm() else { return };
    for rendered in render_all(&helm)
        .into_iter()
        .filter(|r| r.scenario.mode == Mode::CronJob)
    {
        let s = &rendered.scenario;
        assert!(
            rendered.kind("Deployment").is_empty() && rendered.kind("Service").is_empty(),
            "{}: nothing long-running",
            s.name
        );
        let cronjob = &rendered.one("CronJob")["spec"];
        assert_eq!(
            cronjob["concurrencyPolicy"].as_str(),
            Some("Forbid"),
            "{}",
            s.name
        );
        for limit in [
            "successfulJobsHistoryLimit",
            "failedJobsHistoryLimit",
            "startingDeadlineSeconds",
        ] {
            assert!(cronjob[limit].is_u64(), "{}: {limit}", s.name);
        }
        let job = &cronjob["jobTemplate"]["spec"];
        assert!(
            job["backoffLimit"].is_u64() && job["activeDeadlineSeconds"].is_u64(),
            "{}",
            s.name
        );
        let fail_job = &job["podFailurePolicy"]["rules"][0];
        assert_eq!(fail_job["action"].as_str(), Some("FailJob"), "{}", s.name);
        assert_eq!(
            fail_job["onExitCodes"]["values"][0].as_u64(),
            Some(2),
            "{}: invalid input is not retried",
            s.name
        );
        assert_eq!(
            rendered.pod()["spec"]["restartPolicy"].as_str(),
            Some("Never"),
            "{}",
            s.name
        );
        let args = rendered.args();
        let scope = if s.cluster_wide {
            "--all-namespaces".to_string()
        } else {
            format!("--namespace={NAMESPACE}")
        };
        assert!(
            args.contains(&"run".to_string()) && args.contains(&scope),
            "{}: {args:?}",
            s.name
        );
        if s.monitoring {
            assert_eq!(
                alert_names(&rendered),
                verbs(&["EntraRotatorPassFailed", "EntraRotatorPassOverdue"]),
                "{}",
                s.name
            );
        }
    }
}

#[test]
fn the_rotator_signs_in_as_configured() {
    let Some(helm) = helm() else { return };
    for rendered in render_all(&helm) {
        let s = &rendered.scenario;
        let settings = rendered.settings();
        let account = rendered.one("ServiceAccount");
        let client_id_annotation =
            &account["metadata"]["annotations"]["azure.workload.identity/client-id"];
        let uses_label = &rendered.pod()["metadata"]["labels"]["azure.workload.identity/use"];
        if s.client_secret {
            let CredentialConfig::ClientSecret {
                secret_file: Some(file),
                secret_env: None,
                ..
            } = &settings.azure.credential
            else {
                panic!(
                    "{}: expected a clientSecret credential read from a file, got {:?}",
                    s.name, settings.azure.credential
                )
            };
            assert!(
                client_id_annotation.is_null() && uses_label.is_null(),
                "{}: no workload identity",
                s.name
            );
            let mount = rendered.container()["volumeMounts"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|m| m["name"].as_str() == Some("client-secret"))
                .expect("client-secret mount");
            let volume = rendered.pod()["spec"]["volumes"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|v| v["name"].as_str() == Some("client-secret"))
                .unwrap();
            assert_eq!(
                volume["secret"]["secretName"].as_str(),
                Some("rotator-credential"),
                "{}",
                s.name
            );
            let mounted = Path::new(mount["mountPath"].as_str().unwrap())
                .join(volume["secret"]["items"][0]["path"].as_str().unwrap());
            assert_eq!(
                &mounted, file,
                "{}: secretFile is where the Secret is mounted",
                s.name
            );
            let env = rendered.container()["env"].as_sequence().unwrap();
            assert!(
                env.iter().all(|e| e["valueFrom"]["secretKeyRef"].is_null()),
                "{}: the secret is not in the environment",
                s.name
            );
        } else {
            assert!(
                matches!(
                    settings.azure.credential,
                    CredentialConfig::WorkloadIdentity {
                        tenant_id: None,
                        client_id: None,
                        token_file: None
                    }
                ),
                "{}: workload identity from the webhook's variables, got {:?}",
                s.name,
                settings.azure.credential
            );
            assert!(
                client_id_annotation
                    .as_str()
                    .is_some_and(|id| id.len() == 36),
                "{}: client-id annotation",
                s.name
            );
            assert_eq!(
                uses_label.as_str(),
                Some("true"),
                "{}: azure.workload.identity/use pod label",
                s.name
            );
        }
        let trusted = &settings.tls.extra_root_certificates;
        if s.monitoring && s.values_file.is_none() {
            assert_eq!(
                trusted,
                &vec![PathBuf::from("/etc/entra-rotator/ca/ca.crt")],
                "{}",
                s.name
            );
        } else {
            assert!(trusted.is_empty(), "{}", s.name);
        }
        let config_arg = "--azure-config=/etc/entra-rotator/config/azure.yaml".to_string();
        assert!(rendered.args().contains(&config_arg), "{}", s.name);
    }
}

#[test]
fn the_binary_accepts_the_charts_arguments() {
    let Some(helm) = helm() else { return };
    for rendered in render_all(&helm) {
        // `--check-args` parses and checks the whole command line as a run would, then exits
        // 0 without doing anything (`--help` skips clap's checks of required and conflicting
        // arguments, so it proves less).
        let output = run(Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
            .args(rendered.args())
            .arg("--check-args"));
        assert!(
            output.status.success(),
            "{}: entra-rotator refuses the chart's arguments {:?}:\n{}",
            rendered.scenario.name,
            rendered.args(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_charts_crds_are_the_committed_ones() {
    let Some(helm) = helm() else { return };
    let rendered = render(
        &helm,
        Scenario::new("controller, defaults", Mode::Controller),
    );
    let crds = rendered.kind("CustomResourceDefinition");
    assert_eq!(crds.len(), 4, "ClientSecretRotation, RotationPolicy, RotatorIdentity and ClusterRotatorIdentity");
    for file in [
        "clientsecretrotations.entra-rotator.io.yaml",
        "rotationpolicies.entra-rotator.io.yaml",
        "rotatoridentities.entra-rotator.io.yaml",
        "clusterrotatoridentities.entra-rotator.io.yaml",
    ] {
        let committed_text = std::fs::read_to_string(Path::new(ROOT).join("crds").join(file)).unwrap();
        let committed: Value = serde_yaml::from_str(
            committed_text
                .trim_start_matches(|c| c != '\n')
                .trim_start_matches(['\n', '-']),
        )
        .unwrap();
        assert!(
            crds.contains(&&committed),
            "charts/entra-rotator/crds differs from crds/{file}: it must stay a symlink to ../../crds (ln -sfn ../../crds charts/entra-rotator/crds)"
        );
    }
}

#[test]
fn missing_or_conflicting_values_are_refused_with_what_to_set() {
    let Some(helm) = helm() else { return };
    let cases: &[(&[&str], &str)] = &[
        (&[], "azure.workloadIdentity.clientId: set the client ID"),
        (
            &["azure.credential=clientSecret"],
            "azure.clientSecret.tenantId",
        ),
        (&[IDENTITY, "mode=daemon"], "mode"),
        (
            &[
                IDENTITY,
                "mode=cronjob",
                "metrics.serviceMonitor.enabled=true",
            ],
            "no /metrics endpoint in cronjob mode",
        ),
        (&[IDENTITY, "mode=cronjob", "dashboards.enabled=true"], "dashboards.enabled: the dashboard shows the controller's /metrics"),
        (&[IDENTITY, "azure.graphUrl=http://graph.local"], "graphUrl"),
    ];
    for (sets, expected) in cases {
        let mut scenario = Scenario::new("refused", Mode::Controller);
        scenario.sets = sets.to_vec();
        let output = run(&mut template_command(&helm, &scenario));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(expected),
            "--set {sets:?}: expected a refusal naming {expected:?}, got:\n{stderr}"
        );
    }
}

/// Values documented as one row (Kubernetes objects passed through as they are).
const WHOLE_VALUES: &[&str] = &[
    "resources",
    "podSecurityContext",
    "securityContext",
    "controller.livenessProbe",
    "controller.readinessProbe",
];

/// The dotted path of every leaf of a YAML mapping (lists and empty maps are leaves).
fn leaf_paths(value: &Value, prefix: &str, out: &mut Vec<String>) {
    match value.as_mapping() {
        Some(map) if !map.is_empty() && !WHOLE_VALUES.contains(&prefix) => {
            for (key, child) in map {
                let key = key.as_str().expect("string keys");
                let path = if prefix.is_empty() {
                    key.to_string()
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_paths(child, &path, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

#[test]
fn the_chart_readme_documents_every_value() {
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .unwrap();
    let readme = std::fs::read_to_string(chart().join("README.md")).unwrap();
    let mut paths = Vec::new();
    leaf_paths(&values, "", &mut paths);
    let undocumented: Vec<&String> = paths
        .iter()
        .filter(|p| !readme.contains(&format!("| `{p}` |")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "charts/entra-rotator/README.md has no row for: {undocumented:?}"
    );
}

#[test]
fn the_helm_example_rotation_passes_admission() {
    let text =
        std::fs::read_to_string(Path::new(ROOT).join("examples/helm/dify-smtp-rotation.yaml"))
            .unwrap();
    let rotation: ClientSecretRotation =
        serde_yaml::from_str(&text).expect("examples/helm/dify-smtp-rotation.yaml matches the CRD");
    rotation
        .validate_cel()
        .expect("examples/helm/dify-smtp-rotation.yaml passes the CRD's CEL rules");
    let deployment: Value = serde_yaml::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join("examples/helm/dify-api-deployment.yaml"))
            .unwrap(),
    )
    .unwrap();
    let selector = rotation.spec.rollout[0]
        .selector
        .as_ref()
        .expect("the example selects by label");
    for (key, value) in selector.match_labels.iter().flatten() {
        assert_eq!(
            deployment["metadata"]["labels"][key.as_str()].as_str(),
            Some(value.as_str()),
            "the rollout selector matches the example Deployment"
        );
    }
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["secretRef"]["name"]
            .as_str(),
        rotation.spec.targets[0]
            .secret
            .as_ref()
            .map(|t| t.name.as_str()),
        "the Deployment reads the Secret the rotation writes"
    );
}

/// The text of every `.rs` file under `dir`.
fn rust_sources(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn the_alerts_use_metrics_the_controller_exports() {
    let Some(helm) = helm() else { return };
    let rendered = render(
        &helm,
        Scenario::new("controller, alerts", Mode::Controller).monitoring(),
    );
    let mut sources = Vec::new();
    rust_sources(&Path::new(ROOT).join("src"), &mut sources);
    let mut used = BTreeSet::new();
    for expression in alert_expressions(&rendered) {
        for (start, _) in expression.match_indices("entra_rotator_") {
            let name: String = expression[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            used.insert(name);
        }
    }
    assert!(
        used.len() >= 2,
        "the controller alerts read the rotator's own metrics: {used:?}"
    );
    for name in used {
        // prometheus-client registers counters without the `_total` it appends on export.
        let registered = format!("\"{}\"", name.strip_suffix("_total").unwrap_or(&name));
        assert!(
            sources.iter().any(|text| text.contains(&registered)),
            "the PrometheusRule uses {name}, which no source under src/ registers: align \
             charts/entra-rotator/templates/prometheusrule.yaml with src/metrics.rs"
        );
    }
}

/// The `helm install` command of the README's Helm section, continuation lines joined and
/// each `$(…)` replaced by a client ID.
fn readme_install_command() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let section = readme
        .split("## Kubernetes: install with Helm")
        .nth(1)
        .expect("README.md has the Helm section");
    let start = section
        .find("helm install")
        .expect("the Helm section has a helm install command");
    let mut command = String::new();
    for line in section[start..].lines() {
        let (text, continued) = match line.trim_end().strip_suffix('\\') {
            Some(text) => (text, true),
            None => (line, false),
        };
        command.push_str(text);
        command.push(' ');
        if !continued {
            break;
        }
    }
    while let Some(open) = command.find("$(") {
        let close = open + command[open..].find(')').expect("closing parenthesis");
        command.replace_range(open..=close, "44444444-4444-4444-4444-444444444444");
    }
    command.split_whitespace().map(String::from).collect()
}

#[test]
fn the_readme_install_command_renders() {
    let Some(helm) = helm() else { return };
    let words = readme_install_command();
    assert_eq!(&words[..2], ["helm", "install"], "{words:?}");
    let output = run(Command::new(&helm)
        .current_dir(ROOT)
        .arg("template")
        .args(&words[2..]));
    assert!(
        output.status.success(),
        "the README's `{}` does not render:\n{}",
        words.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("image: registry.example.com/platform/entra-rotator:0.1.0"),
        "the image the README builds"
    );
    assert!(
        text.contains("azure.workload.identity/client-id: 44444444-4444-4444-4444-444444444444")
    );
    let account = serde_yaml::Deserializer::from_str(&text)
        .filter_map(|document| Value::deserialize(document).ok())
        .find(|object| object["kind"].as_str() == Some("ServiceAccount"))
        .expect("a ServiceAccount");
    assert_eq!(
        (
            account["metadata"]["namespace"].as_str(),
            account["metadata"]["name"].as_str()
        ),
        (Some("entra-rotator"), Some("entra-rotator")),
        "the ServiceAccount examples/terraform federates by default"
    );
}

#[test]
fn the_install_notes_render_in_both_modes() {
    let Some(helm) = helm() else { return };
    for (mode, expected) in [
        (Mode::Controller, "get lease rotator-entra-rotator-leader"),
        (Mode::CronJob, "create job --from=cronjob/"),
    ] {
        let scenario = Scenario::new("notes", mode);
        let mut command = Command::new(&helm);
        command.args(["install", RELEASE]).arg(chart()).args([
            "--namespace",
            NAMESPACE,
            "--dry-run=client",
        ]);
        for set in &scenario.sets {
            command.args(["--set", set]);
        }
        let output = run(&mut command);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let notes = stdout.split("NOTES:").nth(1).unwrap_or_default();
        assert!(
            output.status.success() && notes.contains(expected),
            "{mode:?}: NOTES.txt should say `{expected}`:\n{notes}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn private_vault_hosts_are_the_administrators_setting() {
    let Some(helm) = helm() else { return };
    let defaults = render(&helm, Scenario::new("controller, defaults", Mode::Controller));
    assert!(defaults.settings().azure.key_vault.private_hosts.is_empty(), "no private vault hosts by default");

    let mut proxied = Scenario::new("controller, a private vault host", Mode::Controller);
    proxied.sets.push("azure.keyVault.privateHosts={kv-proxy.internal.example.com}");
    assert_eq!(render(&helm, proxied).settings().azure.key_vault.private_hosts, ["kv-proxy.internal.example.com"]);

    let mut bad = template_command(&helm, &Scenario::new("controller, a URL as host", Mode::Controller));
    bad.args(["--set", "azure.keyVault.privateHosts={https://kv.example.com}"]);
    let refused = bad.output().unwrap();
    assert!(!refused.status.success(), "a URL is not a host name");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("privateHosts"), "{}", String::from_utf8_lossy(&refused.stderr));
}

/// The ValidatingAdmissionPolicy, evaluated as the API server would (kube-cel's VAP
/// evaluator) on defaulted ClientSecretRotations: Microsoft's relays on their submission
/// ports pass, a relay the values list passes (by host, or by host and port), anything
/// else is refused with a message that names the field, the relay and the values to set.
/// The controller refuses the same before any call to Graph (tests/rotation_policy.rs).
#[test]
fn the_admission_policy_refuses_relays_the_administrator_did_not_allow() {
    let Some(helm) = helm() else { return };
    let mut scenario = Scenario::new("controller, admission policy", Mode::Controller);
    scenario.sets.push("verification.allowedHosts={Relay.Contoso.example:2525}");
    scenario.sets.push("admissionPolicy.extraAllowedHosts={mail.team-a.example}");
    let rendered = render(&helm, scenario);
    let policy = rendered.one("ValidatingAdmissionPolicy");
    let binding = rendered.one("ValidatingAdmissionPolicyBinding");
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    assert_eq!(strings(&binding["spec"]["validationActions"]), ["Deny"]);
    assert_eq!(strings(&policy["spec"]["matchConstraints"]["resourceRules"][0]["resources"]), ["clientsecretrotations"]);
    let validations: Vec<kube_cel::VapExpression> = policy["spec"]["validations"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| kube_cel::VapExpression {
            expression: v["expression"].as_str().unwrap().to_string(),
            message: None,
            message_expression: v["messageExpression"].as_str().map(str::to_string),
        })
        .collect();
    let admit = |host: Option<&str>, port: u16| -> Result<(), String> {
        let example: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(Path::new(ROOT).join("examples/kubernetes/dify-smtp-rotation.yaml")).unwrap()).unwrap();
        let mut object = example;
        match host {
            Some(host) => {
                object["spec"]["verification"]["smtp"]["host"] = host.into();
                object["spec"]["verification"]["smtp"]["port"] = port.into();
            }
            None => object["spec"]["verification"] = serde_json::json!({ "disabled": true }),
        }
        // What the API server evaluates: the object after the CRD's defaults.
        let defaulted: ClientSecretRotation = serde_json::from_value(object).unwrap();
        let evaluator = kube_cel::VapEvaluator::builder().object(serde_json::to_value(&defaulted).unwrap()).build();
        let failed: Vec<String> = evaluator
            .evaluate(&validations)
            .into_iter()
            .filter(|r| !r.passed)
            .map(|r| r.message.unwrap_or_default())
            .collect();
        if failed.is_empty() { Ok(()) } else { Err(failed.join("; ")) }
    };
    for (host, port) in [("smtp.azurecomm.net", 587), ("SMTP.AzureComm.net", 25), ("smtp.office365.com", 587), ("relay.contoso.example", 2525), ("mail.team-a.example", 2525)] {
        assert_eq!(admit(Some(host), port), Ok(()), "{host}:{port}");
    }
    assert_eq!(admit(None, 0), Ok(()), "verification disabled names no relay");
    for (host, port) in [("relay.attacker.example", 587), ("relay.contoso.example", 587), ("smtp.azurecomm.net", 2525), ("smtp.azurecomm.net.attacker.example", 587)] {
        let refused = admit(Some(host), port).expect_err(host);
        assert!(refused.starts_with(&format!("spec.verification.smtp.host: the SMTP relay {host}:{port} is not allowed")), "{refused}");
        assert!(refused.contains("verification.allowedHosts and admissionPolicy.extraAllowedHosts"), "{refused}");
    }

    let mut off = Scenario::new("controller, admission policy off", Mode::Controller);
    off.sets.push("admissionPolicy.enabled=false");
    let rendered = render(&helm, off);
    assert!(rendered.kind("ValidatingAdmissionPolicy").is_empty() && rendered.kind("ValidatingAdmissionPolicyBinding").is_empty());
}

/// `verification.allowedHosts` reaches the binary as `--allow-smtp-host`, in both modes.
#[test]
fn allowed_relays_reach_the_binary() {
    let Some(helm) = helm() else { return };
    for mode in [Mode::Controller, Mode::CronJob] {
        let mut scenario = Scenario::new("relays", mode);
        scenario.sets.push("verification.allowedHosts={relay.contoso.example:587,mail.contoso.example}");
        let args = render(&helm, scenario).args();
        let relays: Vec<&String> = args.iter().filter(|a| a.starts_with("--allow-smtp-host")).collect();
        assert_eq!(relays, ["--allow-smtp-host=relay.contoso.example:587", "--allow-smtp-host=mail.contoso.example"], "{args:?}");
    }
    let defaults = render(&helm, Scenario::new("defaults", Mode::Controller)).args();
    assert!(!defaults.iter().any(|a| a.starts_with("--allow-smtp-host")), "only Microsoft's relays by default: {defaults:?}");
}

// ---------------------------------------------------------------------------------------------
// The Grafana dashboard (dashboards.enabled)
// ---------------------------------------------------------------------------------------------

const DASHBOARD_FILE: &str = "dashboards/entra-rotator.json";
/// Labels Prometheus puts on every series it scrapes through the ServiceMonitor.
const TARGET_LABELS: &[&str] = &["job", "instance", "namespace", "pod", "service", "container", "endpoint"];
/// Grafana's own variables, usable in any query.
const GRAFANA_VARIABLES: &[&str] = &["__rate_interval", "__interval", "__range"];

/// The dashboard JSON of the ConfigMap a `helm template` with `sets` renders, and the
/// ConfigMap itself.
fn rendered_dashboard(helm: &Path, sets: &[&'static str]) -> (Value, serde_json::Value) {
    let rendered = render(helm, Scenario::new("controller, dashboard", Mode::Controller).sets(sets));
    let maps: Vec<&Value> = rendered.kind("ConfigMap").into_iter().filter(|m| !m["data"]["entra-rotator.json"].is_null()).collect();
    assert_eq!(maps.len(), 1, "one dashboard ConfigMap for --set {sets:?}");
    let text = maps[0]["data"]["entra-rotator.json"].as_str().expect("the dashboard as text");
    let dashboard = serde_json::from_str(text).unwrap_or_else(|e| panic!("the rendered dashboard is not JSON: {e}"));
    (maps[0].clone(), dashboard)
}

fn dashboard_file() -> serde_json::Value {
    let text = std::fs::read_to_string(chart().join(DASHBOARD_FILE)).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("charts/entra-rotator/{DASHBOARD_FILE} is not JSON: {e}"))
}

#[test]
fn the_dashboard_configmap_is_rendered_only_when_enabled_with_the_sidecars_label() {
    let Some(helm) = helm() else { return };
    let off = render(&helm, Scenario::new("controller, defaults", Mode::Controller));
    assert!(
        off.kind("ConfigMap").iter().all(|m| m["data"]["entra-rotator.json"].is_null()),
        "no dashboard unless dashboards.enabled"
    );

    let (map, dashboard) = rendered_dashboard(&helm, &["dashboards.enabled=true"]);
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"].as_str(), Some("1"), "the label kube-prometheus-stack's sidecar looks for");
    assert_eq!(map["metadata"]["namespace"].as_str(), Some(NAMESPACE));
    assert_eq!(dashboard, dashboard_file(), "with the default expiryWarningDays the ConfigMap holds the file as it is");

    let (map, dashboard) = rendered_dashboard(
        &helm,
        &[
            "dashboards.enabled=true",
            "dashboards.label=team_dashboard",
            "dashboards.labelValue=entra",
            "dashboards.namespace=monitoring",
            "dashboards.annotations.grafana_folder=Security",
            "metrics.prometheusRule.expiryWarningDays=30",
        ],
    );
    assert_eq!(map["metadata"]["labels"]["team_dashboard"].as_str(), Some("entra"));
    assert!(map["metadata"]["labels"]["grafana_dashboard"].is_null());
    assert_eq!(map["metadata"]["namespace"].as_str(), Some("monitoring"));
    assert_eq!(map["metadata"]["annotations"]["grafana_folder"].as_str(), Some("Security"));
    let days = days_panels(&dashboard);
    assert!(days.len() >= 2, "the soonest expiry and the days left per rotation are shown in days");
    for panel in days {
        assert_eq!(
            threshold_steps(panel),
            [("red".to_string(), None), ("orange".to_string(), Some(0.0)), ("green".to_string(), Some(30.0))],
            "{}: coloured like the expiry alert (orange within expiryWarningDays)",
            panel["title"]
        );
    }
}

/// Panels that show days left (the ones coloured like the expiry alert).
fn days_panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    grafana_panels(dashboard).into_iter().filter(|p| p["fieldConfig"]["defaults"]["unit"] == "suffix: days").collect()
}

fn threshold_steps(panel: &serde_json::Value) -> Vec<(String, Option<f64>)> {
    panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        .as_array()
        .map(|steps| steps.iter().map(|s| (s["color"].as_str().unwrap_or_default().to_string(), s["value"].as_f64())).collect())
        .unwrap_or_default()
}

/// Every panel, rows' nested panels included (rows themselves too).
fn grafana_panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        panels.push(panel);
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    panels
}

/// The fields Grafana's dashboard schema requires and constrains (the classic model,
/// grafana/grafana kinds/dashboard/dashboard_kind.cue: schemaVersion uint16; #Panel
/// type non-empty; #GridPos h > 0, 0 < w <= 24, 0 <= x < 24; #RowPanel id, collapsed,
/// panels; #FieldConfigSource defaults + overrides; #ThresholdsConfig mode + steps sorted,
/// the first at -Infinity (null); #VariableModel type + name; #AnnotationQuery name,
/// datasource, enable, iconColor), and what an importable dashboard needs besides: no
/// datasource uid of somebody's Grafana, only the `${datasource}` variable.
#[test]
fn the_dashboard_is_a_valid_grafana_dashboard_model() {
    let dashboard = dashboard_file();
    let problems = grafana_model_problems(&dashboard);
    assert!(problems.is_empty(), "charts/entra-rotator/{DASHBOARD_FILE} would not import into Grafana as it should:\n{}", problems.join("\n"));

    // The check finds what it looks for.
    let mut broken = dashboard.clone();
    broken["panels"][1]["gridPos"]["w"] = 25.into();
    broken["panels"][1]["datasource"]["uid"] = "P1809F7CD0C75ACF3".into();
    broken["panels"][1]["targets"][0]["expr"] = "up{job=~\"$cluster\"}".into();
    broken["schemaVersion"] = "39".into();
    let found = grafana_model_problems(&broken).join("\n");
    for expected in ["gridPos", "datasource", "$cluster", "schemaVersion"] {
        assert!(found.contains(expected), "a broken {expected} is found:\n{found}");
    }
}

fn grafana_model_problems(dashboard: &serde_json::Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, problem: String| {
        if !ok {
            problems.push(problem);
        }
    };
    check(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()), "title: a non-empty string".into());
    check(dashboard["uid"].as_str().is_some_and(|u| (8..=40).contains(&u.len())), "uid: 8 to 40 characters".into());
    // 36 is the kind's first version; 42 the newest Grafana writes.
    check(dashboard["schemaVersion"].as_u64().is_some_and(|v| (36..=42).contains(&v)), format!("schemaVersion: an integer 36..=42, not {}", dashboard["schemaVersion"]));
    check(dashboard["editable"].is_boolean(), "editable: a boolean".into());
    check(dashboard["graphTooltip"].as_u64().is_some_and(|v| v <= 2), "graphTooltip: 0, 1 or 2".into());
    check(dashboard["time"]["from"].is_string() && dashboard["time"]["to"].is_string(), "time: from and to".into());
    for annotation in dashboard["annotations"]["list"].as_array().into_iter().flatten() {
        let ok = annotation["name"].is_string() && annotation["datasource"].is_object() && annotation["enable"].is_boolean() && annotation["iconColor"].is_string();
        check(ok, format!("annotations: name, datasource, enable, iconColor in {annotation}"));
    }

    let variables = dashboard["templating"]["list"].as_array().cloned().unwrap_or_default();
    let mut defined: BTreeSet<String> = GRAFANA_VARIABLES.iter().map(|v| v.to_string()).collect();
    const TYPES: &[&str] = &["query", "adhoc", "constant", "datasource", "interval", "textbox", "custom", "system"];
    for variable in &variables {
        let name = variable["name"].as_str().unwrap_or_default();
        check(!name.is_empty() && variable["type"].as_str().is_some_and(|t| TYPES.contains(&t)), format!("templating: a name and a known type in {variable}"));
        check(variable["hide"].as_u64().is_some_and(|h| h <= 2), format!("templating {name}: hide 0, 1 or 2"));
        defined.insert(name.to_string());
    }
    check(
        variables.iter().any(|v| v["type"] == "datasource" && v["name"] == "datasource" && v["query"] == "prometheus"),
        "templating: a datasource variable of type prometheus named datasource".into(),
    );

    let mut ids = BTreeSet::new();
    let mut cells: Vec<(String, u64, u64, u64, u64)> = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        let kind = panel["type"].as_str().unwrap_or_default();
        check(!kind.is_empty(), format!("{title}: type must not be empty"));
        check(panel["id"].as_u64().is_some_and(|id| ids.insert(id)), format!("{title}: a unique id"));
        let grid = &panel["gridPos"];
        let (h, w, x, y) = (grid["h"].as_u64(), grid["w"].as_u64(), grid["x"].as_u64(), grid["y"].as_u64());
        let placed = matches!((h, w, x, y), (Some(h), Some(w), Some(x), Some(_)) if h > 0 && (1..=24).contains(&w) && x < 24 && x + w <= 24);
        check(placed, format!("{title}: gridPos needs h > 0, 0 < w <= 24, 0 <= x < 24, x + w <= 24: {grid}"));
        if let (true, Some(h), Some(w), Some(x), Some(y)) = (placed, h, w, x, y) {
            for (other, ox, oy, ow, oh) in &cells {
                let overlap = x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h;
                check(!overlap, format!("{title}: gridPos overlaps {other}"));
            }
            cells.push((title.clone(), x, y, w, h));
        }
        if kind == "row" {
            check(panel["collapsed"].is_boolean() && panel["panels"].is_array(), format!("{title}: a row needs collapsed and panels"));
            continue;
        }
        check(datasource_is_the_variable(&panel["datasource"]), format!("{title}: datasource must be {{\"type\": \"prometheus\", \"uid\": \"${{datasource}}\"}}, not {}", panel["datasource"]));
        check(panel["options"].is_object(), format!("{title}: options must be an object"));
        let field_config = &panel["fieldConfig"];
        check(field_config["defaults"].is_object() && field_config["overrides"].is_array(), format!("{title}: fieldConfig needs defaults and overrides"));
        let thresholds = &field_config["defaults"]["thresholds"];
        if !thresholds.is_null() {
            let steps = threshold_steps(panel);
            let sorted = steps.windows(2).all(|pair| pair[0].1.unwrap_or(f64::NEG_INFINITY) < pair[1].1.unwrap_or(f64::NEG_INFINITY));
            let ok = ["absolute", "percentage"].contains(&thresholds["mode"].as_str().unwrap_or_default()) && steps.first().is_some_and(|s| s.1.is_none()) && sorted;
            check(ok, format!("{title}: thresholds need a mode and steps sorted by value, the first null: {thresholds}"));
        }
        for transformation in panel["transformations"].as_array().into_iter().flatten() {
            check(transformation["id"].is_string(), format!("{title}: a transformation without id"));
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        check(!targets.is_empty(), format!("{title}: no targets"));
        let mut ref_ids = BTreeSet::new();
        for target in &targets {
            check(target["refId"].as_str().is_some_and(|r| ref_ids.insert(r.to_string())), format!("{title}: each target needs its own refId"));
            check(datasource_is_the_variable(&target["datasource"]), format!("{title}: a target's datasource must be the ${{datasource}} variable"));
            let expr = target["expr"].as_str().unwrap_or_default();
            check(!expr.trim().is_empty(), format!("{title}: a target without expr"));
            for used in dollar_variables(expr) {
                check(defined.contains(&used), format!("{title}: ${used} is not a dashboard variable"));
            }
        }
    }
    for variable in &variables {
        if variable["type"] == "query" {
            check(datasource_is_the_variable(&variable["datasource"]), format!("templating {}: datasource must be the ${{datasource}} variable", variable["name"]));
        }
    }
    problems
}

fn datasource_is_the_variable(datasource: &serde_json::Value) -> bool {
    datasource["type"] == "prometheus" && datasource["uid"] == "${datasource}"
}

/// `$name` and `${name}` in a query.
fn dollar_variables(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (start, _) in text.match_indices('$') {
        let rest = text[start + 1..].trim_start_matches('{');
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            found.insert(name);
        }
    }
    found
}

/// What `/metrics` exports, read from the exposition itself: each series name (with its
/// `_total`, `_bucket`, `_sum`, `_count` suffix) and the label names it carries. Every
/// family is given a value through the same calls the controller makes.
fn exported_series() -> std::collections::BTreeMap<String, BTreeSet<String>> {
    use entra_rotator::adapters::http::ApiObserver;
    use entra_rotator::metrics::{CredentialLabels, Metrics};
    let metrics = Metrics::new();
    let labels = CredentialLabels { rotation: "dify/dify-smtp".into(), app_id: "a".into(), key_id: "k".into() };
    metrics.set_credential(labels, chrono::Utc::now());
    metrics.count_reconcile("failed", "Graph");
    metrics.set_last_success("dify/dify-smtp", chrono::Utc::now());
    metrics.set_consumers_on_old_secret("dify/dify-smtp", 1);
    metrics.observe_verification(2);
    metrics.observe_verification_duration(std::time::Duration::from_secs(40));
    metrics.set_leader(true);
    metrics.observe("graph", "addPassword", Some(429), std::time::Duration::from_millis(5));
    let mut series: std::collections::BTreeMap<String, BTreeSet<String>> = std::collections::BTreeMap::new();
    for line in metrics.encode().lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name: String = line.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
        let names = series.entry(name.clone()).or_default();
        if let Some(labels) = line[name.len()..].strip_prefix('{').and_then(|l| l.split_once('}')).map(|(l, _)| l) {
            names.extend(labels.split(',').filter_map(|pair| pair.split_once('=')).map(|(k, _)| k.to_string()));
        }
    }
    series
}

/// One PromQL expression's metric selectors (name and matcher labels), grouping labels
/// (`by`, `without`, `on`, `ignoring`, `group_left`, `group_right`) and label names of
/// `label_values(selector, label)`. Not a full parser: what the dashboard's queries use.
#[derive(Default, Debug)]
struct PromQl {
    selectors: Vec<(String, BTreeSet<String>)>,
    grouping: BTreeSet<String>,
}

fn parse_promql(expr: &str) -> PromQl {
    const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    const OPERATORS: &[&str] = &["and", "or", "unless", "bool", "offset"];
    // Written `sum by (l) (…)` as often as `sum(…)`.
    const AGGREGATIONS: &[&str] = &["sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values"];
    let mut parsed = PromQl::default();
    let text: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let skip_string = |i: &mut usize| {
        let quote = text[*i];
        *i += 1;
        while *i < text.len() && text[*i] != quote {
            *i += if text[*i] == '\\' { 2 } else { 1 };
        }
        *i += 1;
    };
    while i < text.len() {
        let c = text[i];
        if c == '"' || c == '\'' {
            skip_string(&mut i);
        } else if c == '[' {
            while i < text.len() && text[i] != ']' {
                i += 1;
            }
        } else if c == '$' {
            i += 1;
            while i < text.len() && (text[i].is_ascii_alphanumeric() || "_{}".contains(text[i])) {
                i += 1;
            }
            continue;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < text.len() && (text[i].is_ascii_alphanumeric() || text[i] == '_' || text[i] == ':') {
                i += 1;
            }
            let word: String = text[start..i].iter().collect();
            while i < text.len() && text[i] == ' ' {
                i += 1;
            }
            let next = text.get(i).copied();
            if GROUPING.contains(&word.as_str()) {
                if next == Some('(') {
                    let close = text[i..].iter().position(|c| *c == ')').map_or(text.len(), |p| i + p);
                    let labels: String = text[i + 1..close].iter().collect();
                    parsed.grouping.extend(labels.split(',').map(|l| l.trim().to_string()).filter(|l| !l.is_empty()));
                    i = close;
                }
                continue;
            }
            if next == Some('(') || OPERATORS.contains(&word.as_str()) || AGGREGATIONS.contains(&word.as_str()) {
                continue;
            }
            let mut labels = BTreeSet::new();
            if next == Some('{') {
                i += 1;
                while i < text.len() && text[i] != '}' {
                    if text[i] == '"' || text[i] == '\'' {
                        skip_string(&mut i);
                        continue;
                    }
                    if text[i].is_ascii_alphabetic() || text[i] == '_' {
                        let start = i;
                        while i < text.len() && (text[i].is_ascii_alphanumeric() || text[i] == '_') {
                            i += 1;
                        }
                        labels.insert(text[start..i].iter().collect());
                        continue;
                    }
                    i += 1;
                }
            }
            parsed.selectors.push((word, labels));
            continue;
        }
        i += 1;
    }
    parsed
}

#[test]
fn the_dashboard_uses_metrics_and_labels_the_controller_exports() {
    let dashboard = dashboard_file();
    let exported = exported_series();
    assert!(exported.contains_key("entra_rotator_leader"), "{exported:?}");
    let target_labels: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
    let mut queries: Vec<(String, String, Vec<String>)> = Vec::new();
    for panel in grafana_panels(&dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let legend = target["legendFormat"].as_str().unwrap_or_default();
            let legend_labels = legend.split("{{").skip(1).filter_map(|part| part.split_once("}}")).map(|(l, _)| l.trim().to_string()).collect();
            queries.push((panel["title"].as_str().unwrap_or("?").to_string(), target["expr"].as_str().unwrap_or_default().to_string(), legend_labels));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(query) = variable["query"]["query"].as_str() {
            // label_values(selector, label): the label is read from the selector's series.
            let inner = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')).expect("label_values(selector, label)");
            let (selector, label) = inner.rsplit_once(',').unwrap();
            queries.push((format!("variable {}", variable["name"]), selector.to_string(), vec![label.trim().to_string()]));
        }
    }
    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    for (title, expr, legend_labels) in &queries {
        let parsed = parse_promql(expr);
        if parsed.selectors.is_empty() {
            problems.push(format!("{title}: no metric in {expr}"));
        }
        let mut available = target_labels.clone();
        for (name, labels) in &parsed.selectors {
            used.insert(name.clone());
            // `up` is Prometheus's own series per target: only target labels.
            let known = if name == "up" { Some(&target_labels) } else { exported.get(name) };
            let Some(known) = known else {
                problems.push(format!("{title}: {name} is not a series /metrics exports (src/metrics.rs): {expr}"));
                continue;
            };
            available.extend(known.iter().cloned());
            for label in labels.iter().filter(|l| !known.contains(*l) && !target_labels.contains(*l)) {
                problems.push(format!("{title}: {name} has no label {label}: {expr}"));
            }
        }
        for label in parsed.grouping.iter().filter(|l| !available.contains(*l)) {
            problems.push(format!("{title}: grouping by {label}, which none of its series carries: {expr}"));
        }
        let shown = if parsed.grouping.is_empty() { &available } else { &parsed.grouping };
        for label in legend_labels.iter().filter(|l| !shown.contains(*l)) {
            problems.push(format!("{title}: {{{{{label}}}}} is not a label of the result of {expr}"));
        }
    }
    assert!(problems.is_empty(), "align charts/entra-rotator/{DASHBOARD_FILE} with src/metrics.rs:\n{}", problems.join("\n"));
    // Every family the controller exports has a place on the dashboard.
    for family in ["entra_rotator_credential_seconds_left", "entra_rotator_reconciles_total", "entra_rotator_verification_attempts_bucket", "entra_rotator_verification_duration_seconds_bucket", "entra_rotator_api_requests_total", "entra_rotator_api_throttled_total", "entra_rotator_api_request_duration_seconds_bucket", "entra_rotator_consumers_on_old_secret", "entra_rotator_last_successful_rotation_timestamp_seconds", "entra_rotator_leader", "up"] {
        assert!(used.contains(family), "no panel shows {family}: {used:?}");
    }

    // The check finds what it looks for.
    let wrong = parse_promql(r#"sum by (tenant) (rate(entra_rotator_api_requests_total{service="graph", region="x"}[5m]))"#);
    assert_eq!(wrong.selectors, vec![("entra_rotator_api_requests_total".to_string(), ["region", "service"].map(String::from).into())]);
    assert_eq!(wrong.grouping, ["tenant".to_string()].into());
    assert!(!exported["entra_rotator_api_requests_total"].contains("region"));
}
