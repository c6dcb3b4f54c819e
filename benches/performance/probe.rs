//! Measuring instruments: request counts of the stand-ins, and CPU time and memory of the
//! real binary (read from /proc while it runs, or from GNU time for one-shot commands).

use entra_rotator_standins::scenario::Scenario;
use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// The path of the real binary (built with the bench profile, i.e. release).
pub const BINARY: &str = env!("CARGO_BIN_EXE_entra-rotator");

/// `program`, or `program` run by the command in `PERF_CONTROLLER_WRAPPER` when it is set
/// (e.g. `heaptrack -o /tmp/controller`, for a heap profile of each controller the bench
/// starts; the CPU and RSS figures of such a run are the wrapper's, not the controller's).
fn wrapped(program: &str) -> Command {
    match std::env::var("PERF_CONTROLLER_WRAPPER").ok().filter(|w| !w.trim().is_empty()) {
        Some(wrapper) => {
            let mut words = wrapper.split_whitespace();
            let mut command = Command::new(words.next().unwrap_or_default());
            command.args(words).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// Requests seen by every stand-in of a scenario, per route.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub graph: HashMap<String, u64>,
    pub vault: HashMap<String, u64>,
    pub kubernetes: HashMap<String, u64>,
    pub smtp_sessions: u64,
}

impl Counts {
    pub fn of(scenario: &Scenario) -> Self {
        Self {
            graph: scenario.graph.faults().counts(),
            vault: scenario.vault.faults().counts(),
            kubernetes: scenario.kubernetes.faults().counts(),
            smtp_sessions: scenario.relay.sessions(),
        }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        let minus = |now: &HashMap<String, u64>, then: &HashMap<String, u64>| {
            now.iter()
                .map(|(route, n)| (route.clone(), n - then.get(route).copied().unwrap_or(0)))
                .filter(|(_, n)| *n > 0)
                .collect()
        };
        Counts {
            graph: minus(&self.graph, &earlier.graph),
            vault: minus(&self.vault, &earlier.vault),
            kubernetes: minus(&self.kubernetes, &earlier.kubernetes),
            smtp_sessions: self.smtp_sessions - earlier.smtp_sessions,
        }
    }

    pub fn graph(&self, route: &str) -> u64 {
        self.graph.get(route).copied().unwrap_or(0)
    }

    pub fn vault(&self, route: &str) -> u64 {
        self.vault.get(route).copied().unwrap_or(0)
    }

    /// HTTP requests to Graph, tokens excluded: each request inside a `$batch` is counted
    /// under `batchRequest` and again under its own route, and is no HTTP request; the
    /// per-application read counts (`getApplication <object id>`) repeat `getApplication`.
    pub fn graph_http(&self) -> u64 {
        use entra_rotator_standins::graph::{ROUTE_BATCH_REQUEST, ROUTE_GET_APPLICATION, ROUTE_TOKEN};
        let per_application = format!("{ROUTE_GET_APPLICATION} ");
        let all: u64 = self.graph.iter().filter(|(route, _)| !route.starts_with(&per_application)).map(|(_, n)| n).sum();
        all - self.graph(ROUTE_TOKEN) - 2 * self.graph(ROUTE_BATCH_REQUEST)
    }

    /// HTTP requests to Key Vault, the authentication challenges included.
    pub fn vault_http(&self) -> u64 {
        self.vault.values().sum()
    }

    /// Kubernetes requests, leader-election Lease traffic excluded (it does not depend on
    /// the number of rotations and is reported on its own).
    pub fn kubernetes_without_leases(&self) -> u64 {
        self.kubernetes
            .iter()
            .filter(|(route, _)| !route.contains("/leases"))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn kubernetes_leases(&self) -> u64 {
        self.kubernetes
            .iter()
            .filter(|(route, _)| route.contains("/leases"))
            .map(|(_, n)| n)
            .sum()
    }

    /// Kubernetes requests per route, Leases excluded, for the notes (`GET …/secrets/{name}`: 2).
    pub fn kubernetes_routes(&self) -> String {
        let mut routes: Vec<_> = self
            .kubernetes
            .iter()
            .filter(|(route, _)| !route.contains("/leases"))
            .map(|(route, n)| format!("{} ×{n}", short_route(route)))
            .collect();
        routes.sort();
        routes.join(", ")
    }
}

/// `PATCH /apis/entra-rotator.io/v1alpha1/namespaces/{namespace}/clientsecretrotations/{name}/status`
/// → `PATCH clientsecretrotations/status`.
fn short_route(route: &str) -> String {
    let (method, path) = route.split_once(' ').unwrap_or(("", route));
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| {
            !p.is_empty()
                && !p.starts_with('{')
                && !p.contains('.')
                && *p != "api"
                && *p != "apis"
                && *p != "namespaces"
                && !p.starts_with('v')
        })
        .collect();
    format!("{method} {}", parts.join("/"))
}

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at field 3.
    let after_name = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the name; Linux reports
    // them in USER_HZ, which is 100 on every Linux ABI.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// `VmRSS` and `VmHWM` (peak) of a running process, in KiB.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// What GNU time reports about a one-shot command.
#[derive(Debug)]
pub struct OneShot {
    pub wall: Duration,
    pub cpu: Duration,
    pub max_rss_kib: u64,
    pub success: bool,
    pub stdout: String,
}

/// Runs the binary with `args` under `/usr/bin/time`, stdout captured unless `discard_stdout`.
pub async fn one_shot(scenario: &Scenario, args: &[&str], discard_stdout: bool) -> OneShot {
    let report = tempfile::NamedTempFile::new().expect("a temporary file");
    let report_path = report.path().to_string_lossy().to_string();
    let mut command = Command::new("/usr/bin/time");
    command
        .args(["-o", &report_path, "-f", "%e %U %S %M", BINARY])
        .args(args)
        .env("KUBECONFIG", scenario.kubeconfig_path())
        .env("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS", "localhost")
        .env_remove("RUST_LOG")
        .stderr(Stdio::null())
        .stdout(if discard_stdout {
            Stdio::null()
        } else {
            Stdio::piped()
        });
    let output = command.output().await.expect("GNU time runs the binary");
    let text = std::fs::read_to_string(report.path()).unwrap_or_default();
    // GNU time prefixes "Command exited with non-zero status N" on failure.
    let numbers: Vec<f64> = text
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let seconds =
        |index: usize| Duration::from_secs_f64(numbers.get(index).copied().unwrap_or(0.0));
    OneShot {
        wall: seconds(0),
        cpu: seconds(1) + seconds(2),
        max_rss_kib: numbers.get(3).copied().unwrap_or(0.0) as u64,
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).to_string(),
    }
}

/// A running `entra-rotator controller` and the port of its health endpoint.
pub struct Controller {
    pub child: Child,
    pub health_port: u16,
    pub started: Instant,
    /// Its stderr (warnings and errors), shown when it does not become ready.
    log: tempfile::NamedTempFile,
}

impl Controller {
    /// Starts the controller on `namespace` (Lease in the same namespace) with extra `args`.
    pub fn spawn(scenario: &Scenario, namespace: &str, identity: &str, args: &[&str]) -> Self {
        let health_port = free_port();
        let health = format!("127.0.0.1:{health_port}");
        let config = scenario.config_path.to_string_lossy().to_string();
        let log = tempfile::NamedTempFile::new().expect("a temporary file");
        let stderr = log.reopen().expect("the log file reopens");
        let started = Instant::now();
        let child = wrapped(BINARY)
            .args([
                "controller",
                "--namespace",
                namespace,
                "--lease-namespace",
                namespace,
            ])
            .args([
                "--identity",
                identity,
                "--health-addr",
                &health,
                "--azure-config",
                &config,
            ])
            .args(args)
            .env("KUBECONFIG", scenario.kubeconfig_path())
            .env("ENTRA_ROTATOR_ALLOW_SMTP_HOSTS", "localhost")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("the controller starts");
        Self {
            child,
            health_port,
            started,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the controller is running")
    }

    /// Reconciles finished so far, whatever their result (`entra_rotator_reconciles_total`).
    pub async fn reconciles(&self) -> u64 {
        get(self.health_port, "/metrics")
            .await
            .lines()
            .filter(|line| line.starts_with("entra_rotator_reconciles_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Waits for `/readyz` to answer 200; returns the time since the process was spawned.
    pub async fn ready(&self) -> Duration {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if readyz(self.health_port).await {
                return self.started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let log = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        panic!("the controller did not become ready within a minute; its stderr:\n{log}");
    }
}

async fn readyz(port: u16) -> bool {
    get(port, "/readyz").await.starts_with("HTTP/1.1 200")
}

/// The whole answer (status line, headers, body) to `GET path`; empty when unreachable.
async fn get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// Polls until `done` holds; panics with `what` after `limit`.
pub async fn until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Size of a file in MiB.
pub fn size_mib(path: &Path) -> f64 {
    std::fs::metadata(path)
        .map(|m| m.len() as f64 / (1024.0 * 1024.0))
        .unwrap_or(0.0)
}
