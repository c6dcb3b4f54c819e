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
/// Set to `"true"` with [`ROTATE_REQUESTED_AT`]: the current secret leaked, so every other
/// secret of ours is revoked as soon as the new one is stored and rolled out.
pub const ROTATE_COMPROMISED: &str = "entra-rotator.io/rotate-compromised";

pub const PENDING: &str = "Pending";
pub const DONE: &str = "Done";
pub const INVALID: &str = "Invalid";

/// What the engine must do for a pending request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Replace this keyId (forced while the stores still hold it); `None`: nothing was
    /// current, an ordinary run mints the first secret.
    pub replace: Option<Uuid>,
    /// Revoke every other secret of ours at once (no grace period, no consumer wait).
    pub compromised: bool,
}

/// Records a new annotation value in `status` (Pending, or Invalid with the reason) and
/// says what the pending request, new or accepted earlier, asks of the engine. `None`
/// when there is nothing to do.
pub fn accept(object: &ClientSecretRotation, status: &mut ClientSecretRotationStatus) -> Option<Request> {
    let annotations = object.metadata.annotations.as_ref()?;
    let value = annotations.get(ROTATE_REQUESTED_AT)?;
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
                    compromised: annotations.get(ROTATE_COMPROMISED).is_some_and(|v| v == "true"),
                }
            } else {
                RotateRequestStatus {
                    requested_at: value.clone(),
                    state: INVALID.into(),
                    replaces_key_id: None,
                    key_id: None,
                    compromised: false,
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
    Some(Request {
        replace: request.replaces_key_id.as_deref().and_then(|id| Uuid::parse_str(id).ok()),
        compromised: request.compromised,
    })
}

/// Marks a pending request done once the run's outcome holds another keyId than the one
/// it replaces. Returns the message to publish, once, and whether it was a leak.
/// `on_old_value` names the consumers found still on an older value.
pub fn finish(status: &mut ClientSecretRotationStatus, outcome: &Outcome, on_old_value: &[String]) -> Option<(String, bool)> {
    let request = status.rotate_request.as_mut().filter(|r| r.state == PENDING)?;
    let (key_id, revoked) = match outcome {
        Outcome::Settled { key_id, revoked, .. } => (key_id.to_string(), revoked.as_slice()),
        Outcome::UpToDate { key_id, .. } => (key_id.to_string(), &[][..]),
        Outcome::Planned(_) | Outcome::InFlight { .. } => return None,
    };
    if request.replaces_key_id.as_deref() == Some(key_id.as_str()) {
        return None;
    }
    let mut message = match &request.replaces_key_id {
        Some(old) => format!("rotation requested at {} is done: keyId {key_id} replaces {old}", request.requested_at),
        None => format!("rotation requested at {} is done: keyId {key_id} is the first secret", request.requested_at),
    };
    if request.compromised {
        let revoked: Vec<String> = revoked.iter().map(Uuid::to_string).collect();
        let revoked = if revoked.is_empty() { "none left".to_string() } else { revoked.join(", ") };
        message.push_str(&format!(
            ". Compromised: every other secret of ours was revoked at once ({revoked}), without grace period or consumer wait, because a leaked secret is worse than a consumer that loses mail"
        ));
        message.push_str(&match on_old_value {
            [] => ". No consumer was found on an old value".to_string(),
            on_old => format!(". Still on an old value, restart them now: {}", on_old.join(", ")),
        });
    }
    request.state = DONE.into();
    request.key_id = Some(key_id);
    request.message = Some(message.clone());
    Some((message, request.compromised))
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
        Outcome::Settled { key_id, minted: true, expires: None, renew_at: None, revoked: vec![], pending: vec![], revoke_at: None, held: None, retirement: None, pending_expires: Default::default() }
    }

    #[test]
    fn each_value_is_carried_out_once() {
        let (old, new) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut status = ClientSecretRotationStatus { current_key_id: Some(old.to_string()), ..Default::default() };
        let object = object("2026-12-01T10:00:00.123Z");
        let replace = Some(Request { replace: Some(old), compromised: false });
        assert_eq!(accept(&object, &mut status), replace);
        assert_eq!(accept(&object, &mut status), replace, "still pending: the same keyId is replaced");
        assert_eq!(finish(&mut status, &settled(old), &[]), None, "a run that kept the old keyId does not answer it");
        let (message, compromised) = finish(&mut status, &settled(new), &[]).unwrap();
        assert!(message.contains(&format!("keyId {new} replaces {old}")) && !compromised, "{message}");
        assert_eq!(accept(&object, &mut status), None, "done: the same value asks for nothing more");
        assert_eq!(finish(&mut status, &settled(Uuid::from_u128(3)), &[]), None);
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
