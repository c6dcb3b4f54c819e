//! The kinds of object the API server stand-in stores, with the per-kind rules the real API
//! server's registry applies (status subresource, generation, create-on-update,
//! unconditional update, strategic merge), and the `metav1.Status` errors that name them.

use super::routes::{self, RouteSet};
use axum::http::StatusCode;
use serde_json::{Value, json};

/// What a workload roll-out can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl WorkloadKind {
    pub(super) fn kind(self) -> Kind {
        match self {
            WorkloadKind::Deployment => Kind::Deployment,
            WorkloadKind::StatefulSet => Kind::StatefulSet,
            WorkloadKind::DaemonSet => Kind::DaemonSet,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Kind {
    Rotation,
    Event,
    Lease,
    Deployment,
    StatefulSet,
    DaemonSet,
    Secret,
    CustomResourceDefinition,
    ConfigMap,
    Service,
    ServiceAccount,
    Role,
    RoleBinding,
    ClusterRole,
    ClusterRoleBinding,
    PodDisruptionBudget,
    RotationPolicy,
    ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
    Pod,
    RotatorIdentity,
    ClusterRotatorIdentity,
}

/// How the real API server's registry treats one kind.
pub(super) struct KindInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    /// Namespaced objects live under `namespaces/{namespace}/`; the others at the top.
    pub namespaced: bool,
    pub routes: RouteSet,
    /// `/status` exists; the main resource ignores `status`, `/status` ignores the rest.
    pub status_subresource: bool,
    /// `metadata.generation` counts changes outside `metadata` and `status`.
    pub tracks_generation: bool,
    /// `PUT` of a missing object creates it.
    pub create_on_update: bool,
    /// `PUT` without `metadata.resourceVersion` is allowed.
    pub unconditional_update: bool,
    /// A built-in type: strategic merge patches work, list items carry no kind.
    pub built_in: bool,
    /// What discovery announces: the singular name and the short names kubectl resolves.
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
}

const ROTATION: KindInfo = KindInfo {
    group: "entra-rotator.io",
    version: "v1alpha1",
    plural: "clientsecretrotations",
    kind: "ClientSecretRotation",
    namespaced: true,
    routes: routes::ROTATIONS,
    status_subresource: true,
    tracks_generation: true,
    create_on_update: false,
    unconditional_update: false,
    built_in: false,
    singular: "clientsecretrotation",
    short_names: &["csrot"],
};

/// `RotationPolicy`, the rotator's cluster-scoped custom resource: served before its CRD is
/// registered (like `ClientSecretRotation`), admitted with the CRD's schema once it is.
const ROTATION_POLICY: KindInfo = KindInfo {
    group: "entra-rotator.io",
    version: "v1alpha1",
    plural: "rotationpolicies",
    kind: "RotationPolicy",
    namespaced: false,
    routes: routes::ROTATION_POLICIES,
    status_subresource: false,
    tracks_generation: true,
    create_on_update: false,
    unconditional_update: false,
    built_in: false,
    singular: "rotationpolicy",
    short_names: &["rotpol"],
};

/// The rotator's identity resources: namespaced `RotatorIdentity` and cluster-scoped
/// `ClusterRotatorIdentity`, served like RotationPolicy.
const ROTATOR_IDENTITY: KindInfo = KindInfo {
    group: "entra-rotator.io",
    version: "v1alpha1",
    plural: "rotatoridentities",
    kind: "RotatorIdentity",
    namespaced: true,
    routes: routes::ROTATOR_IDENTITIES,
    status_subresource: false,
    tracks_generation: true,
    create_on_update: false,
    unconditional_update: false,
    built_in: false,
    singular: "rotatoridentity",
    short_names: &["rotid"],
};

const CLUSTER_ROTATOR_IDENTITY: KindInfo = KindInfo {
    group: "entra-rotator.io",
    version: "v1alpha1",
    plural: "clusterrotatoridentities",
    kind: "ClusterRotatorIdentity",
    namespaced: false,
    routes: routes::CLUSTER_ROTATOR_IDENTITIES,
    status_subresource: false,
    tracks_generation: true,
    create_on_update: false,
    unconditional_update: false,
    built_in: false,
    singular: "clusterrotatoridentity",
    short_names: &["crotid"],
};

const EVENT: KindInfo = KindInfo {
    group: "events.k8s.io",
    version: "v1",
    plural: "events",
    kind: "Event",
    namespaced: true,
    routes: routes::EVENTS,
    status_subresource: false,
    tracks_generation: false,
    create_on_update: true,
    unconditional_update: true,
    built_in: true,
    singular: "event",
    short_names: &["ev"],
};

const LEASE: KindInfo = KindInfo {
    group: "coordination.k8s.io",
    version: "v1",
    plural: "leases",
    kind: "Lease",
    namespaced: true,
    routes: routes::LEASES,
    status_subresource: false,
    tracks_generation: false,
    create_on_update: true,
    unconditional_update: false,
    built_in: true,
    singular: "lease",
    short_names: &[],
};

const fn workload(
    plural: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
    kind: &'static str,
    routes: RouteSet,
) -> KindInfo {
    KindInfo {
        group: "apps",
        version: "v1",
        plural,
        kind,
        namespaced: true,
        routes,
        status_subresource: true,
        tracks_generation: true,
        create_on_update: false,
        unconditional_update: true,
        built_in: true,
        singular,
        short_names,
    }
}

const DEPLOYMENT: KindInfo = workload(
    "deployments",
    "deployment",
    &["deploy"],
    "Deployment",
    routes::DEPLOYMENTS,
);
const STATEFUL_SET: KindInfo = workload(
    "statefulsets",
    "statefulset",
    &["sts"],
    "StatefulSet",
    routes::STATEFULSETS,
);
const DAEMON_SET: KindInfo = workload(
    "daemonsets",
    "daemonset",
    &["ds"],
    "DaemonSet",
    routes::DAEMONSETS,
);

const SECRET: KindInfo = KindInfo {
    group: "",
    version: "v1",
    plural: "secrets",
    kind: "Secret",
    namespaced: true,
    routes: routes::SECRETS,
    status_subresource: false,
    tracks_generation: false,
    create_on_update: false,
    unconditional_update: true,
    built_in: true,
    singular: "secret",
    short_names: &[],
};

/// `apiextensions.k8s.io/v1` CustomResourceDefinitions, cluster-scoped; registering one
/// makes the stand-in validate, default and print its custom resources (see `crds`).
const CUSTOM_RESOURCE_DEFINITION: KindInfo = KindInfo {
    group: "apiextensions.k8s.io",
    version: "v1",
    plural: "customresourcedefinitions",
    kind: "CustomResourceDefinition",
    namespaced: false,
    routes: routes::CUSTOM_RESOURCE_DEFINITIONS,
    status_subresource: true,
    tracks_generation: true,
    create_on_update: false,
    unconditional_update: false,
    built_in: true,
    singular: "customresourcedefinition",
    short_names: &["crd", "crds"],
};

/// A kind the stand-in only stores and serves (what `helm install` of the chart creates):
/// no status subresource or generation, updates without `resourceVersion` allowed.
const fn stored(
    group: &'static str,
    plural: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
    kind: &'static str,
    namespaced: bool,
    routes: RouteSet,
) -> KindInfo {
    KindInfo {
        group,
        version: "v1",
        plural,
        kind,
        namespaced,
        routes,
        status_subresource: false,
        tracks_generation: false,
        create_on_update: false,
        unconditional_update: true,
        built_in: true,
        singular,
        short_names,
    }
}

const CONFIG_MAP: KindInfo = stored(
    "",
    "configmaps",
    "configmap",
    &["cm"],
    "ConfigMap",
    true,
    routes::CONFIGMAPS,
);
const SERVICE: KindInfo = stored(
    "",
    "services",
    "service",
    &["svc"],
    "Service",
    true,
    routes::SERVICES,
);
const SERVICE_ACCOUNT: KindInfo = stored(
    "",
    "serviceaccounts",
    "serviceaccount",
    &["sa"],
    "ServiceAccount",
    true,
    routes::SERVICEACCOUNTS,
);
const RBAC: &str = "rbac.authorization.k8s.io";
const ROLE: KindInfo = stored(RBAC, "roles", "role", &[], "Role", true, routes::ROLES);
const ROLE_BINDING: KindInfo = stored(
    RBAC,
    "rolebindings",
    "rolebinding",
    &[],
    "RoleBinding",
    true,
    routes::ROLEBINDINGS,
);
const CLUSTER_ROLE: KindInfo = stored(
    RBAC,
    "clusterroles",
    "clusterrole",
    &[],
    "ClusterRole",
    false,
    routes::CLUSTERROLES,
);
const CLUSTER_ROLE_BINDING: KindInfo = stored(
    RBAC,
    "clusterrolebindings",
    "clusterrolebinding",
    &[],
    "ClusterRoleBinding",
    false,
    routes::CLUSTERROLEBINDINGS,
);
/// What the chart's admission policy creates: stored and served, not enforced.
const ADMISSION: &str = "admissionregistration.k8s.io";
const VALIDATING_ADMISSION_POLICY: KindInfo = stored(
    ADMISSION,
    "validatingadmissionpolicies",
    "validatingadmissionpolicy",
    &[],
    "ValidatingAdmissionPolicy",
    false,
    routes::VALIDATINGADMISSIONPOLICIES,
);
const VALIDATING_ADMISSION_POLICY_BINDING: KindInfo = stored(
    ADMISSION,
    "validatingadmissionpolicybindings",
    "validatingadmissionpolicybinding",
    &[],
    "ValidatingAdmissionPolicyBinding",
    false,
    routes::VALIDATINGADMISSIONPOLICYBINDINGS,
);
const POD_DISRUPTION_BUDGET: KindInfo = stored(
    "policy",
    "poddisruptionbudgets",
    "poddisruptionbudget",
    &["pdb"],
    "PodDisruptionBudget",
    true,
    routes::PODDISRUPTIONBUDGETS,
);

/// Pods, as the workload controllers create them (see `rollout`) or a test seeds them; the
/// kubelet's part (phase, conditions) is written with them.
const POD: KindInfo = stored("", "pods", "pod", &["po"], "Pod", true, routes::PODS);

/// Kinds served under `/apis/{group}/{version}/…` (and core ones under `/api/v1/…`) by the
/// generic object store.
const GENERIC: [Kind; 21] = [
    Kind::Rotation,
    Kind::Event,
    Kind::Lease,
    Kind::Deployment,
    Kind::StatefulSet,
    Kind::DaemonSet,
    Kind::CustomResourceDefinition,
    Kind::ConfigMap,
    Kind::Service,
    Kind::ServiceAccount,
    Kind::Role,
    Kind::RoleBinding,
    Kind::ClusterRole,
    Kind::ClusterRoleBinding,
    Kind::PodDisruptionBudget,
    Kind::RotationPolicy,
    Kind::ValidatingAdmissionPolicy,
    Kind::ValidatingAdmissionPolicyBinding,
    Kind::Pod,
    Kind::RotatorIdentity,
    Kind::ClusterRotatorIdentity,
];

/// Every kind the stand-in serves, in the order discovery lists them: Secrets (served by a
/// store of their own, not the generic one) and then the generic kinds.
pub(super) fn every_served_kind() -> impl Iterator<Item = Kind> {
    std::iter::once(Kind::Secret).chain(GENERIC)
}

impl Kind {
    pub(super) fn info(self) -> &'static KindInfo {
        match self {
            Kind::Rotation => &ROTATION,
            Kind::Event => &EVENT,
            Kind::Lease => &LEASE,
            Kind::Deployment => &DEPLOYMENT,
            Kind::StatefulSet => &STATEFUL_SET,
            Kind::DaemonSet => &DAEMON_SET,
            Kind::Secret => &SECRET,
            Kind::CustomResourceDefinition => &CUSTOM_RESOURCE_DEFINITION,
            Kind::ConfigMap => &CONFIG_MAP,
            Kind::Service => &SERVICE,
            Kind::ServiceAccount => &SERVICE_ACCOUNT,
            Kind::Role => &ROLE,
            Kind::RoleBinding => &ROLE_BINDING,
            Kind::ClusterRole => &CLUSTER_ROLE,
            Kind::ClusterRoleBinding => &CLUSTER_ROLE_BINDING,
            Kind::PodDisruptionBudget => &POD_DISRUPTION_BUDGET,
            Kind::RotationPolicy => &ROTATION_POLICY,
            Kind::ValidatingAdmissionPolicy => &VALIDATING_ADMISSION_POLICY,
            Kind::ValidatingAdmissionPolicyBinding => &VALIDATING_ADMISSION_POLICY_BINDING,
            Kind::Pod => &POD,
            Kind::RotatorIdentity => &ROTATOR_IDENTITY,
            Kind::ClusterRotatorIdentity => &CLUSTER_ROTATOR_IDENTITY,
        }
    }

    /// The generic kind served at `/apis/{group}/{version}/…/{plural}`, if any.
    pub(super) fn find(group: &str, version: &str, plural: &str) -> Option<Kind> {
        GENERIC.into_iter().find(|k| {
            let info = k.info();
            info.group == group && info.version == version && info.plural == plural
        })
    }

    pub(super) fn is_workload(self) -> bool {
        matches!(self, Kind::Deployment | Kind::StatefulSet | Kind::DaemonSet)
    }
}

impl KindInfo {
    pub(super) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `leases.coordination.k8s.io`, or `secrets` for the core group, as errors name it.
    pub(super) fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn details(&self, name: &str, kind: &str) -> Value {
        let mut details = json!({ "name": name, "kind": kind });
        if !self.group.is_empty() {
            details["group"] = json!(self.group);
        }
        details
    }

    pub(super) fn not_found(&self, name: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", self.qualified()),
            self.details(name, self.plural),
        )
    }

    pub(super) fn already_exists(&self, name: &str) -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", self.qualified()),
            self.details(name, self.plural),
        )
    }

    /// The optimistic-concurrency refusal: the `resourceVersion` sent is not the current one.
    pub(super) fn modified(&self, name: &str) -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                self.qualified()
            ),
            self.details(name, self.plural),
        )
    }

    /// `Kind.group`, as `Invalid` messages name it (`Lease.coordination.k8s.io`).
    fn group_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// A `422 Invalid` listing each `(field, detail)` the way the API server joins them.
    pub(super) fn invalid(&self, name: &str, errors: &[(String, String)]) -> ApiError {
        let mut details = self.details(name, self.kind);
        details["causes"] = errors
            .iter()
            .map(|(field, detail)| json!({ "reason": "FieldValueInvalid", "message": detail, "field": field }))
            .collect();
        let listed: Vec<String> = errors.iter().map(|(f, d)| format!("{f}: {d}")).collect();
        let joined = match listed.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{} \"{name}\" is invalid: {joined}", self.group_kind()),
            details,
        )
    }
}

/// A refusal as the API server words it in a `metav1.Status` (code, reason, message,
/// details); also what the seeding helpers return when a write is refused.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub(super) fn new(
        code: StatusCode,
        reason: &'static str,
        message: String,
        details: Value,
    ) -> Self {
        Self {
            code,
            reason,
            message,
            details,
        }
    }

    pub(super) fn bad_request(message: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message, json!({}))
    }

    /// A verb the server does not serve on a path it knows, as the API server answers it.
    pub(super) fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".to_string(),
            json!({}),
        )
    }

    /// A path the server does not serve, as the API server answers it.
    pub(super) fn no_such_resource() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource".to_string(),
            json!({}),
        )
    }

    pub(super) fn namespace_not_found(namespace: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("namespaces \"{namespace}\" not found"),
            json!({ "name": namespace, "kind": "namespaces" }),
        )
    }

    pub(super) fn unsupported_media_type(got: &str, built_in: bool) -> Self {
        let strategic = if built_in {
            ", application/strategic-merge-patch+json"
        } else {
            ""
        };
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml{strategic} (got {got:?})"
            ),
            json!({}),
        )
    }
}

impl From<ApiError> for super::Refusal {
    fn from(error: ApiError) -> Self {
        super::status(error.code, error.reason, error.message, error.details)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} {})",
            self.message,
            self.code.as_u16(),
            self.reason
        )
    }
}

impl std::error::Error for ApiError {}
