//! Who owns what: a rotation claims its application and its stores, and never reads,
//! re-verifies, copies, overwrites or revokes what another rotation owns.
//!
//! The claims are what Graph and the stores already record, so no state is needed: an
//! application is claimed by the rotation whose marker (`entra-rotator:<name>`) its live
//! secrets carry; a store by the rotation (and application) its tags or annotations name.
//! Pure functions only, like [`super::policy`].

use crate::domain::{Application, MARKER_PREFIX, StoredLabels};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Something another rotation (or another application) owns.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Claim {
    #[error(
        "application {app_id} is already rotated by {owner:?}: its secret keyId {key_id} carries the displayName {MARKER_PREFIX}{owner}. One rotation per application: remove this one, or if {owner:?} was renamed to this one, delete the old rotation and let its secrets expire (or remove them with `az ad app credential delete --id {app_id} --key-id {key_id}` once nothing uses them)"
    )]
    Application { app_id: Uuid, owner: String, key_id: Uuid },
    #[error(
        "{store} holds the secret of {owner}; a rotation never reads or overwrites another's store: give this rotation a store of its own"
    )]
    Store { store: String, owner: String },
    #[error(
        "Graph's application {object_id} has appId {found}, not the clientId {expected} this rotation names: set objectId to the object id of application {expected} (or leave it out)"
    )]
    ObjectIdMismatch { object_id: Uuid, expected: Uuid, found: Uuid },
}

/// The application must be the one the rotation names, and no other rotation's live
/// secret may be on it. Checked before any store is read.
pub fn check_application(rotation: &str, client_id: Uuid, app: &Application, now: DateTime<Utc>) -> Result<(), Claim> {
    if app.app_id != client_id {
        return Err(Claim::ObjectIdMismatch { object_id: app.object_id, expected: client_id, found: app.app_id });
    }
    let foreign = app.password_credentials.iter().find_map(|credential| {
        let owner = credential.display_name.as_deref()?.strip_prefix(MARKER_PREFIX)?;
        (owner != rotation && credential.end.is_none_or(|end| end > now)).then_some((owner, credential.key_id))
    });
    match foreign {
        Some((owner, key_id)) => Err(Claim::Application { app_id: app.app_id, owner: owner.to_string(), key_id }),
        None => Ok(()),
    }
}

/// A store whose tags name another rotation or application, or whose keyId is another
/// rotation's secret, is not this rotation's to touch. `described` names the store.
pub fn check_store(rotation: &str, app: &Application, described: &str, stored: &StoredLabels) -> Result<(), Claim> {
    let claim = |owner: String| Err(Claim::Store { store: described.to_string(), owner });
    if let Some(owner) = stored.rotation.as_deref().filter(|owner| *owner != rotation) {
        return claim(format!("rotation {owner:?}"));
    }
    if let Some(other) = stored.app_id.filter(|id| *id != app.app_id) {
        return claim(format!("application {other}"));
    }
    let credential = stored.key_id.and_then(|key_id| app.credential(key_id));
    if let Some(owner) = credential
        .and_then(|c| c.display_name.as_deref())
        .and_then(|name| name.strip_prefix(MARKER_PREFIX))
        .filter(|owner| *owner != rotation)
    {
        return claim(format!("rotation {owner:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{PasswordCredential, SecretString, StoredSecret};
    use chrono::Duration;

    fn credential(marker: Option<&str>, end: DateTime<Utc>) -> PasswordCredential {
        PasswordCredential { key_id: Uuid::new_v4(), display_name: marker.map(String::from), start: None, end: Some(end), hint: None }
    }

    fn app(credentials: Vec<PasswordCredential>) -> Application {
        Application { object_id: Uuid::new_v4(), app_id: Uuid::new_v4(), display_name: "mail".into(), password_credentials: credentials }
    }

    fn stored(key_id: Option<Uuid>, rotation: Option<&str>, app_id: Option<Uuid>) -> StoredSecret {
        StoredSecret { key_id, value: SecretString::from("value"), rotation: rotation.map(String::from), app_id }
    }

    #[test]
    fn an_application_with_another_rotations_live_secret_is_claimed() {
        let now = Utc::now();
        let theirs = credential(Some("entra-rotator:team-a/mail"), now + Duration::days(30));
        let app = app(vec![credential(Some("hand-made"), now + Duration::days(30)), theirs.clone()]);

        let claim = check_application("team-b/mail", app.app_id, &app, now).unwrap_err();

        assert_eq!(claim, Claim::Application { app_id: app.app_id, owner: "team-a/mail".into(), key_id: theirs.key_id });
        assert!(claim.to_string().contains("already rotated by \"team-a/mail\""), "{claim}");
        assert!(check_application("team-a/mail", app.app_id, &app, now).is_ok());
    }

    #[test]
    fn an_expired_secret_of_another_rotation_claims_nothing() {
        let now = Utc::now();
        let app = app(vec![credential(Some("entra-rotator:old-name"), now - Duration::days(1))]);
        assert!(check_application("new-name", app.app_id, &app, now).is_ok());
    }

    #[test]
    fn an_object_id_of_another_application_is_refused() {
        let app = app(Vec::new());
        let named = Uuid::new_v4();
        let claim = check_application("mail", named, &app, Utc::now()).unwrap_err();
        assert!(matches!(claim, Claim::ObjectIdMismatch { expected, .. } if expected == named), "{claim}");
    }

    #[test]
    fn a_store_is_claimed_by_its_tags_or_by_the_marker_of_its_key_id() {
        let now = Utc::now();
        let theirs = credential(Some("entra-rotator:team-a/mail"), now + Duration::days(30));
        let ours = credential(Some("entra-rotator:team-b/mail"), now + Duration::days(30));
        let app = app(vec![theirs.clone(), ours.clone()]);
        let refused = [
            stored(Some(ours.key_id), Some("team-a/mail"), Some(app.app_id)),
            stored(None, None, Some(Uuid::new_v4())),
            stored(Some(theirs.key_id), None, None),
        ];
        for case in refused {
            assert!(check_store("team-b/mail", &app, "vault", &case.labels()).is_err(), "{case:?}");
        }
        let allowed = [
            stored(Some(ours.key_id), Some("team-b/mail"), Some(app.app_id)),
            stored(Some(ours.key_id), None, None),
            stored(None, None, None),
        ];
        for case in allowed {
            assert!(check_store("team-b/mail", &app, "vault", &case.labels()).is_ok(), "{case:?}");
        }
    }
}
