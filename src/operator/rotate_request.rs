//! Rotation on demand: the annotation `entra-rotator.io/rotate-requested-at: <RFC 3339>`
//! on a ClientSecretRotation (what `entra-rotator rotate` sets) asks for one rotation per
//! value. The request is recorded in status before anything is minted, with the keyId it
//! replaces; until the stores hold another keyId the engine is told to replace that one
//! ([`crate::engine::Engine::run_replacing`]). So a reconcile cut off anywhere, or a
//! controller restarted, carries the request out exactly once.

use super::crd::{ClientSecretRotation, ClientSecretRotationStatus, RotateRequestStatus};
use crate::engine::Outcome;
use uuid::Uuid;

/// The annotation that asks for a rotation.
pub const ROTATE_REQUESTED_AT: &str = "entra-rotator.io/rotate-requested-at";

pub const PENDING: &str = "Pending";
pub const DONE: &str = "Done";
pub const INVALID: &str = "Invalid";

/// What the engine must do for a pending request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Replace this keyId (forced while the stores still hold it).
    Replace(Uuid),
    /// Nothing was current: an ordinary run mints the first secret.
    First,
}

/// Records a new annotation value in `status` (Pending, or Invalid with the reason) and
/// says what the pending request, new or accepted earlier, asks of the engine. `None`
/// when there is nothing to do.
pub fn accept(object: &ClientSecretRotation, status: &mut ClientSecretRotationStatus) -> Option<Request> {
    let value = object.metadata.annotations.as_ref()?.get(ROTATE_REQUESTED_AT)?;
    let recorded = status.rotate_request.as_ref().filter(|r| &r.requested_at == value);
    let request = match recorded {
        Some(recorded) => recorded.clone(),
        None => {
            let request = if chrono::DateTime::parse_from_rfc3339(value).is_ok() {
                RotateRequestStatus {
                    requested_at: value.clone(),
                    state: PENDING.into(),
                    replaces_key_id: status.current_key_id.clone(),
                    key_id: None,
                    message: Some("accepted; rotating".into()),
                }
            } else {
                RotateRequestStatus {
                    requested_at: value.clone(),
                    state: INVALID.into(),
                    replaces_key_id: None,
                    key_id: None,
                    message: Some(format!(
                        "annotation {ROTATE_REQUESTED_AT}: {value:?} is not an RFC 3339 time (e.g. 2026-12-01T10:00:00Z); nothing was rotated. `entra-rotator rotate` sets it for you"
                    )),
                }
            };
            status.rotate_request = Some(request.clone());
            request
        }
    };
    if request.state != PENDING {
        return None;
    }
    Some(match request.replaces_key_id.as_deref().and_then(|id| Uuid::parse_str(id).ok()) {
        Some(key_id) => Request::Replace(key_id),
        None => Request::First,
    })
}

/// Marks a pending request done once the run's outcome holds another keyId than the one
/// it replaces. Returns the message to publish, once.
pub fn finish(status: &mut ClientSecretRotationStatus, outcome: &Outcome) -> Option<String> {
    let request = status.rotate_request.as_mut().filter(|r| r.state == PENDING)?;
    let key_id = match outcome {
        Outcome::Settled { key_id, .. } | Outcome::UpToDate { key_id, .. } => key_id.to_string(),
        Outcome::Planned(_) | Outcome::InFlight { .. } => return None,
    };
    if request.replaces_key_id.as_deref() == Some(key_id.as_str()) {
        return None;
    }
    let message = match &request.replaces_key_id {
        Some(old) => format!("rotation requested at {} is done: keyId {key_id} replaces {old}", request.requested_at),
        None => format!("rotation requested at {} is done: keyId {key_id} is the first secret", request.requested_at),
    };
    request.state = DONE.into();
    request.key_id = Some(key_id);
    request.message = Some(message.clone());
    Some(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(annotation: &str) -> ClientSecretRotation {
        serde_json::from_value(json!({
            "apiVersion": "entra-rotator.io/v1alpha1", "kind": "ClientSecretRotation",
            "metadata": { "name": "r", "namespace": "n", "annotations": { ROTATE_REQUESTED_AT: annotation } },
            "spec": {
                "application": { "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47", "clientId": "0b5e2f3c-9d0a-4f6e-8a53-1e0b9c7d2a11" },
                "targets": [ { "secret": { "name": "s", "keys": { "P": "{{secret}}" } } } ],
                "verification": { "disabled": true }
            }
        }))
        .unwrap()
    }

    fn settled(key_id: Uuid) -> Outcome {
        Outcome::Settled { key_id, minted: true, expires: None, renew_at: None, revoked: vec![], pending: vec![], revoke_at: None, held: None }
    }

    #[test]
    fn each_value_is_carried_out_once() {
        let (old, new) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut status = ClientSecretRotationStatus { current_key_id: Some(old.to_string()), ..Default::default() };
        let object = object("2026-12-01T10:00:00.123Z");
        assert_eq!(accept(&object, &mut status), Some(Request::Replace(old)));
        assert_eq!(accept(&object, &mut status), Some(Request::Replace(old)), "still pending: the same keyId is replaced");
        assert_eq!(finish(&mut status, &settled(old)), None, "a run that kept the old keyId does not answer it");
        assert!(finish(&mut status, &settled(new)).unwrap().contains(&format!("keyId {new} replaces {old}")));
        assert_eq!(accept(&object, &mut status), None, "done: the same value asks for nothing more");
        assert_eq!(finish(&mut status, &settled(Uuid::from_u128(3))), None);
    }

    #[test]
    fn a_value_that_is_no_time_is_refused_and_recorded() {
        let mut status = ClientSecretRotationStatus::default();
        assert_eq!(accept(&object("now please"), &mut status), None);
        let request = status.rotate_request.unwrap();
        assert_eq!(request.state, INVALID);
        assert!(request.message.unwrap().contains("is not an RFC 3339 time"));
    }
}
