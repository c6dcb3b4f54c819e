//! Restarts the workloads that read a rotated Secret, by setting the new keyId as a
//! pod-template annotation (the value is never written anywhere but the stores).
//! Setting the same keyId again changes nothing, so a resumed reconcile restarts nothing twice.

use super::crd::{WorkloadKind, WorkloadRef};
use crate::engine::ports::{Rollout, RolloutError};
use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::json;
use uuid::Uuid;

/// The pod-template annotation that carries the keyId consumers should be using.
pub const KEY_ID_ANNOTATION: &str = "entra-rotator.io/key-id";

pub struct WorkloadRollout {
    client: kube::Client,
    namespace: String,
    workloads: Vec<WorkloadRef>,
}

impl WorkloadRollout {
    pub fn new(client: kube::Client, namespace: String, workloads: Vec<WorkloadRef>) -> Self {
        Self { client, namespace, workloads }
    }

    fn api(&self, kind: WorkloadKind) -> Api<DynamicObject> {
        let resource = match kind {
            WorkloadKind::Deployment => ApiResource::erase::<Deployment>(&()),
            WorkloadKind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
            WorkloadKind::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
        };
        Api::namespaced_with(self.client.clone(), &self.namespace, &resource)
    }

    fn error(&self, kind: WorkloadKind, name: &str, error: kube::Error) -> RolloutError {
        let workload = format!("{kind:?} {}/{name}", self.namespace);
        let (message, transient) = match &error {
            kube::Error::Api(status) if status.code == 403 => (
                format!("forbidden: the controller's Role needs get, list and patch on {}s in namespace {} ({})", format!("{kind:?}").to_lowercase(), self.namespace, status.message),
                false,
            ),
            kube::Error::Api(status) if status.code == 404 => {
                (format!("not found; fix spec.rollout or create the workload ({})", status.message), false)
            }
            kube::Error::Api(status) => (status.message.clone(), status.code == 409 || status.code == 429 || status.code >= 500),
            other => (other.to_string(), true),
        };
        RolloutError { workload, message, transient }
    }

    async fn targets(&self, workload: &WorkloadRef) -> Result<Vec<DynamicObject>, RolloutError> {
        let api = self.api(workload.kind);
        if let Some(name) = &workload.name {
            return api.get(name).await.map(|o| vec![o]).map_err(|e| self.error(workload.kind, name, e));
        }
        let selector = workload.selector.as_ref().map(selector_string).unwrap_or_default();
        api.list(&ListParams::default().labels(&selector))
            .await
            .map(|list| list.items)
            .map_err(|e| self.error(workload.kind, &format!("-l {selector}"), e))
    }
}

impl WorkloadRollout {
    /// Every workload `spec.rollout` names, as the API server has it now.
    pub async fn workloads(&self) -> Result<Vec<(WorkloadKind, DynamicObject)>, RolloutError> {
        let mut found = Vec::new();
        for workload in &self.workloads {
            found.extend(self.targets(workload).await?.into_iter().map(|object| (workload.kind, object)));
        }
        Ok(found)
    }
}

#[async_trait]
impl Rollout for WorkloadRollout {
    async fn roll_out(&self, key_id: Uuid) -> Result<Vec<String>, RolloutError> {
        let key_id = key_id.to_string();
        let mut restarted = Vec::new();
        for workload in &self.workloads {
            for object in self.targets(workload).await? {
                let name = object.metadata.name.clone().unwrap_or_default();
                let current = object.data.pointer(&format!("/spec/template/metadata/annotations/{}", KEY_ID_ANNOTATION.replace('/', "~1")));
                if current.and_then(|v| v.as_str()) == Some(key_id.as_str()) {
                    continue;
                }
                let patch = json!({"spec": {"template": {"metadata": {"annotations": {KEY_ID_ANNOTATION: key_id}}}}});
                self.api(workload.kind)
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| self.error(workload.kind, &name, e))?;
                restarted.push(format!("{:?} {}/{name}", workload.kind, self.namespace));
            }
        }
        Ok(restarted)
    }
}

/// `matchLabels` and `matchExpressions` in the API's label-selector syntax.
fn selector_string(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> =
        selector.match_labels.iter().flatten().map(|(key, value)| format!("{key}={value}")).collect();
    for expression in selector.match_expressions.iter().flatten() {
        let values = expression.values.clone().unwrap_or_default().join(",");
        parts.push(match expression.operator.as_str() {
            "In" => format!("{} in ({values})", expression.key),
            "NotIn" => format!("{} notin ({values})", expression.key),
            "Exists" => expression.key.clone(),
            _ => format!("!{}", expression.key),
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use std::collections::BTreeMap;

    #[test]
    fn selectors_use_the_api_syntax() {
        let selector = LabelSelector {
            match_labels: Some(BTreeMap::from([("app".to_string(), "dify".to_string())])),
            match_expressions: Some(vec![
                LabelSelectorRequirement { key: "tier".into(), operator: "In".into(), values: Some(vec!["api".into(), "worker".into()]) },
                LabelSelectorRequirement { key: "canary".into(), operator: "DoesNotExist".into(), values: None },
            ]),
        };
        assert_eq!(selector_string(&selector), "app=dify,tier in (api,worker),!canary");
    }
}
