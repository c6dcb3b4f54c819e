//! Prometheus metrics of the controller, served on `/metrics` (text format).
//!
//! Label cardinality is bounded: `rotation` (namespace/name) has one value per
//! ClientSecretRotation; `app_id` and `key_id` have one value per rotation at a time (the
//! series of a replaced keyId is dropped); `operation` is a handful of fixed API calls;
//! `status` is an HTTP status code; `result` and `reason` are fixed words.

use crate::adapters::http::ApiObserver;
use chrono::{DateTime, Utc};
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct CredentialLabels {
    pub rotation: String,
    pub app_id: String,
    pub key_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RotationLabels {
    pub rotation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `rotated`, `settled`, `up_to_date`, `in_flight`, `suspended`, `failed`.
    pub result: String,
    /// The engine's reason or error category.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub service: String,
    pub operation: String,
    /// HTTP status, or `error` when no answer came.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub service: String,
    pub operation: String,
}

/// Expiry of the stored credential per rotation; `seconds_left` is computed at scrape time
/// so it never goes stale between reconciles.
#[derive(Debug, Default)]
struct ExpiryCollector {
    expiries: Mutex<BTreeMap<String, (CredentialLabels, DateTime<Utc>)>>,
}

impl prometheus_client::collector::Collector for ExpiryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Encoded under the lock, not from a copy: a scrape with 10,000 credentials cloned
        // every label set before (docs/performance.md); encoding only writes to a buffer.
        let expiries = self.expiries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Utc::now();
        let metric = encoder.encode_descriptor(
            "entra_rotator_credential_expiry_timestamp_seconds",
            "When the stored client secret expires (Unix time)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        encode_each(metric, &expiries, |expires| expires.timestamp())?;
        let metric = encoder.encode_descriptor(
            "entra_rotator_credential_seconds_left",
            "Seconds until the stored client secret expires (negative once expired)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        encode_each(metric, &expiries, |expires| (*expires - now).num_seconds())
    }
}

fn encode_each(
    mut metric: prometheus_client::encoding::MetricEncoder,
    expiries: &BTreeMap<String, (CredentialLabels, DateTime<Utc>)>,
    value: impl Fn(&DateTime<Utc>) -> i64,
) -> Result<(), std::fmt::Error> {
    for (labels, expires) in expiries.values() {
        ConstGauge::new(value(expires)).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// Every metric the controller exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    expiry: std::sync::Arc<ExpiryCollector>,
    reconciles: Family<ResultLabels, Counter>,
    last_success: Family<RotationLabels, Gauge>,
    consumers_on_old: Family<RotationLabels, Gauge>,
    leader: Gauge,
    verification_attempts: Histogram,
    verification_duration: Histogram,
    requests: Family<RequestLabels, Counter>,
    throttled: Family<OperationLabels, Counter>,
    latency: Family<OperationLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let expiry = std::sync::Arc::new(ExpiryCollector::default());
        registry.register_collector(Box::new(expiry.clone()));
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register("entra_rotator_reconciles", "Reconciles (rotations and checks) by result", reconciles.clone());
        let last_success = Family::<RotationLabels, Gauge>::default();
        registry.register(
            "entra_rotator_last_successful_rotation_timestamp_seconds",
            "When a new secret was last minted, stored and verified (Unix time)",
            last_success.clone(),
        );
        let consumers_on_old = Family::<RotationLabels, Gauge>::default();
        registry.register(
            "entra_rotator_consumers_on_old_secret",
            "Pods and roll-outs that may still use an older secret, keeping it from being revoked",
            consumers_on_old.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "entra_rotator_leader",
            "1 while this replica holds the leader Lease and reconciles, 0 while it stands by",
            leader.clone(),
        );
        let verification_attempts = Histogram::new([1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0]);
        registry.register(
            "entra_rotator_verification_attempts",
            "SMTP attempts until a new secret was accepted or verification gave up",
            verification_attempts.clone(),
        );
        // Entra replication: seconds to minutes; the default retryBudget is 5 minutes.
        let verification_duration = Histogram::new([1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0]);
        registry.register(
            "entra_rotator_verification_duration_seconds",
            "Time from the first SMTP attempt until the relay accepted a secret",
            verification_duration.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("entra_rotator_api_requests", "Requests to Microsoft Graph and Key Vault by operation and HTTP status", requests.clone());
        let throttled = Family::<OperationLabels, Counter>::default();
        registry.register("entra_rotator_api_throttled", "Requests answered 429 (throttled)", throttled.clone());
        let latency = Family::<OperationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        registry.register("entra_rotator_api_request_duration_seconds", "Latency of Graph and Key Vault requests", latency.clone());
        Self { registry, expiry, reconciles, last_success, consumers_on_old, leader, verification_attempts, verification_duration, requests, throttled, latency }
    }

    /// The text exposition for `/metrics`.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Records the credential a rotation's stores hold, replacing its previous series.
    pub fn set_credential(&self, labels: CredentialLabels, expires: DateTime<Utc>) {
        if let Ok(mut expiries) = self.expiry.expiries.lock() {
            expiries.insert(labels.rotation.clone(), (labels, expires));
        }
    }

    /// Forgets a rotation (deleted object).
    pub fn forget(&self, rotation: &str) {
        if let Ok(mut expiries) = self.expiry.expiries.lock() {
            expiries.remove(rotation);
        }
        self.last_success.remove(&RotationLabels { rotation: rotation.to_string() });
        self.consumers_on_old.remove(&RotationLabels { rotation: rotation.to_string() });
    }

    /// How many consumers keep the rotation's older secret from being revoked.
    pub fn set_consumers_on_old_secret(&self, rotation: &str, count: u32) {
        self.consumers_on_old.get_or_create(&RotationLabels { rotation: rotation.into() }).set(i64::from(count));
    }

    /// Whether this replica holds the leader Lease.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn count_reconcile(&self, result: &str, reason: &str) {
        self.reconciles.get_or_create(&ResultLabels { result: result.into(), reason: reason.into() }).inc();
    }

    pub fn set_last_success(&self, rotation: &str, at: DateTime<Utc>) {
        self.last_success.get_or_create(&RotationLabels { rotation: rotation.into() }).set(at.timestamp());
    }

    pub fn observe_verification(&self, attempts: u32) {
        self.verification_attempts.observe(f64::from(attempts));
    }

    /// How long a secret took to be accepted (Entra's replication, mostly).
    pub fn observe_verification_duration(&self, took: Duration) {
        self.verification_duration.observe(took.as_secs_f64());
    }
}

impl ApiObserver for Metrics {
    fn observe(&self, service: &'static str, operation: &str, status: Option<u16>, elapsed: Duration) {
        let status_label = status.map(|s| s.to_string()).unwrap_or_else(|| "error".into());
        self.requests
            .get_or_create(&RequestLabels { service: service.into(), operation: operation.into(), status: status_label })
            .inc();
        let labels = OperationLabels { service: service.into(), operation: operation.into() };
        if status == Some(429) {
            self.throttled.get_or_create(&labels).inc();
        }
        self.latency.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_expiry_seconds_left_and_request_counts() {
        let metrics = Metrics::new();
        let labels = CredentialLabels { rotation: "dify/smtp".into(), app_id: "a".into(), key_id: "k1".into() };
        metrics.set_credential(labels.clone(), Utc::now() + chrono::Duration::days(10));
        metrics.set_credential(CredentialLabels { key_id: "k2".into(), ..labels }, Utc::now() + chrono::Duration::days(20));
        metrics.observe("graph", "addPassword", Some(429), Duration::from_millis(20));
        metrics.observe("graph", "addPassword", Some(200), Duration::from_millis(20));
        metrics.count_reconcile("rotated", "CredentialNearingExpiry");
        let text = metrics.encode();
        assert!(text.lines().any(|l| l == "entra_rotator_leader 0"), "a standby says so from the start:\n{text}");
        metrics.set_leader(true);
        assert!(metrics.encode().lines().any(|l| l == "entra_rotator_leader 1"));
        assert!(text.contains(r#"entra_rotator_credential_expiry_timestamp_seconds{rotation="dify/smtp",app_id="a",key_id="k2"}"#), "{text}");
        assert!(!text.contains(r#"key_id="k1""#), "the replaced keyId's series is dropped:\n{text}");
        let left = text.lines().find(|l| l.starts_with("entra_rotator_credential_seconds_left{")).unwrap();
        let seconds: i64 = left.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((19 * 86_400..=20 * 86_400).contains(&seconds), "{left}");
        assert!(text.contains(r#"entra_rotator_api_requests_total{service="graph",operation="addPassword",status="429"} 1"#), "{text}");
        assert!(text.contains(r#"entra_rotator_api_throttled_total{service="graph",operation="addPassword"} 1"#));
        assert!(text.contains(r#"entra_rotator_reconciles_total{result="rotated",reason="CredentialNearingExpiry"} 1"#));
    }
}
