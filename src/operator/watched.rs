//! What the controller's Secret and pod mappers need to know of each rotation. The
//! controller caches ClientSecretRotations by metadata only (docs/performance.md: the spec
//! was most of the cache's memory at 10,000 objects) and reads the whole object when it
//! reconciles one; the few fields the mappers decide by are kept here instead, recorded from
//! the object each reconcile read and from every status it wrote.

use super::crd::{ClientSecretRotation, ClientSecretRotationStatus};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// A rotation as the mappers see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Mapped {
    /// Names of its `secret` targets (in its own namespace).
    secret_names: Vec<String>,
    /// `status.currentKeyId`: a Secret that holds it was written by us.
    current_key_id: Option<String>,
    /// `status.consumers.waitingSince` is set: a pod change may release the old secret.
    waiting_for_consumers: bool,
}

/// (namespace, name) → what the mappers need, for every rotation reconciled by this process.
#[derive(Debug, Default)]
pub struct WatchedRotations(Mutex<HashMap<(String, String), Mapped>>);

impl WatchedRotations {
    /// Records `object` with `status` (the one read, or the one just written).
    pub fn record(&self, object: &ClientSecretRotation, status: &ClientSecretRotationStatus) {
        let key = (object.metadata.namespace.clone().unwrap_or_default(), object.metadata.name.clone().unwrap_or_default());
        let mapped = Mapped {
            secret_names: object.secret_names(),
            current_key_id: status.current_key_id.clone(),
            waiting_for_consumers: status.consumers.as_ref().is_some_and(|c| c.waiting_since.is_some()),
        };
        self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(key, mapped);
    }

    /// Forgets a rotation that is gone.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(&(namespace.to_string(), name.to_string()));
    }

    /// The rotations of `namespace` that write the Secret `secret`, unless the Secret holds
    /// `held`, the keyId the rotation's status expects (our own writes must not cost a
    /// reconcile each); every writer when the Secret is `deleted` or holds no keyId.
    pub fn writing(&self, namespace: &str, secret: &str, held: Option<&String>, deleted: bool) -> Vec<String> {
        self.matching(namespace, |mapped| {
            mapped.secret_names.iter().any(|name| name == secret)
                && (deleted || held.is_none() || held != mapped.current_key_id.as_ref())
        })
    }

    /// The rotations of `namespace` whose revocation waits for their consumers.
    pub fn waiting_in(&self, namespace: &str) -> Vec<String> {
        self.matching(namespace, |mapped| mapped.waiting_for_consumers)
    }

    fn matching(&self, namespace: &str, wanted: impl Fn(&Mapped) -> bool) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|((ns, _), mapped)| ns == namespace && wanted(mapped))
            .map(|((_, name), _)| name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rotation(status: serde_json::Value) -> (ClientSecretRotation, ClientSecretRotationStatus) {
        let object: ClientSecretRotation = serde_json::from_value(json!({
            "apiVersion": "entra-rotator.io/v1alpha1", "kind": "ClientSecretRotation",
            "metadata": { "name": "dify-smtp", "namespace": "dify" },
            "spec": {
                "application": { "tenantId": "11111111-1111-1111-1111-111111111111", "clientId": "22222222-2222-2222-2222-222222222222" },
                "lifetime": "4320h",
                "targets": [ { "secret": { "name": "dify-mail", "keys": { "SMTP_PASSWORD": "{{secret}}" } } } ],
                "verification": { "disabled": true }
            },
            "status": status
        }))
        .unwrap();
        let status = object.status.clone().unwrap_or_default();
        (object, status)
    }

    /// The Secret mapper wakes the writer of a changed Secret unless it holds the keyId the
    /// status expects; the pod mapper wakes only rotations that wait for their consumers.
    #[test]
    fn the_mappers_decide_from_what_the_last_reconcile_recorded() {
        let watched = WatchedRotations::default();
        let (object, status) = rotation(json!({ "currentKeyId": "k-2" }));
        watched.record(&object, &status);
        let (k1, k2) = ("k-1".to_string(), "k-2".to_string());
        assert_eq!(watched.writing("dify", "dify-mail", Some(&k1), false), ["dify-smtp"], "changed by hand");
        assert!(watched.writing("dify", "dify-mail", Some(&k2), false).is_empty(), "our own write");
        assert_eq!(watched.writing("dify", "dify-mail", Some(&k2), true), ["dify-smtp"], "deleted");
        assert!(watched.writing("dify", "other", None, false).is_empty());
        assert!(watched.writing("mail", "dify-mail", None, false).is_empty(), "another namespace");
        assert!(watched.waiting_in("dify").is_empty());

        let (object, mut status) = rotation(json!({ "currentKeyId": "k-2" }));
        status.consumers = Some(crate::operator::crd::ConsumersStatus { waiting_since: Some("2026-12-02T00:00:00Z".into()), ..Default::default() });
        watched.record(&object, &status);
        assert_eq!(watched.waiting_in("dify"), ["dify-smtp"]);
        assert!(watched.waiting_in("mail").is_empty());

        watched.forget("dify", "dify-smtp");
        assert!(watched.waiting_in("dify").is_empty());
    }
}
