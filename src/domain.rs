//! Value types shared by the engine and the adapters.
//!
//! In the rotator's own code, secret values travel inside [`SecretString`], whose `Debug`
//! prints `[REDACTED]` and whose memory is zeroized on drop; the buffers our code fills
//! on the way (the `addPassword` answer, the Graph bearer token) are zeroized too. Copies
//! made inside the libraries are not: reqwest's, hyper's and rustls's read and write
//! buffers, azure_core's `Secret` and azure_identity's token cache, the SDK clients'
//! bodies. Those crates free them without zeroizing and give callers no way to wipe them
//! (see `adapters::identity`).

use chrono::{DateTime, Utc};
pub use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use uuid::Uuid;

/// Every secret entra-rotator mints carries `entra-rotator:<rotation name>` as its
/// `displayName`; that marker is how we tell our credentials from anybody else's.
pub const MARKER_PREFIX: &str = "entra-rotator:";

/// The longest lifetime Entra allows for a client secret (the portal's maximum).
pub const MAX_SECRET_LIFETIME_DAYS: i64 = 730;

/// The `displayName` marker for the secrets minted by one rotation.
pub fn marker_for(rotation: &str) -> String {
    format!("{MARKER_PREFIX}{rotation}")
}

/// Which Entra application a rotation is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AppRef {
    pub tenant_id: Uuid,
    /// The application (client) id, `appId` in Graph.
    pub client_id: Uuid,
    /// The application object's id; looked up by `appId` when absent.
    pub object_id: Option<Uuid>,
}

impl fmt::Display for AppRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "application {} in tenant {}", self.client_id, self.tenant_id)
    }
}

/// One entry of an application's `passwordCredentials`, as Graph reports it.
/// Graph never returns the secret value here, only its first characters (`hint`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswordCredential {
    pub key_id: Uuid,
    pub display_name: Option<String>,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    pub hint: Option<String>,
}

impl PasswordCredential {
    /// Whether the credential carries the marker of `rotation`.
    pub fn is_minted_by(&self, rotation: &str) -> bool {
        self.display_name.as_deref() == Some(marker_for(rotation).as_str())
    }

    /// Whether the credential can still authenticate at `now`.
    pub fn is_live_at(&self, now: DateTime<Utc>) -> bool {
        self.end.is_none_or(|end| end > now) && self.start.is_none_or(|start| start <= now)
    }
}

/// An application registration with its password credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Application {
    pub object_id: Uuid,
    pub app_id: Uuid,
    pub display_name: String,
    pub password_credentials: Vec<PasswordCredential>,
}

impl Application {
    pub fn credential(&self, key_id: Uuid) -> Option<&PasswordCredential> {
        self.password_credentials.iter().find(|c| c.key_id == key_id)
    }
}

/// A secret Graph has just minted: the only moment its value is known.
#[derive(Debug)]
pub struct MintedSecret {
    pub credential: PasswordCredential,
    pub value: SecretString,
}

/// What a store holds: the value and, when we wrote it, which credential it is and whose.
#[derive(Debug)]
pub struct StoredSecret {
    /// The `keyId` recorded next to the value; `None` when the value was not written by us.
    pub key_id: Option<Uuid>,
    pub value: SecretString,
    /// The rotation that wrote it, as recorded next to the value (absent before 0.2).
    pub rotation: Option<String>,
    /// The application (client id) recorded next to the value.
    pub app_id: Option<Uuid>,
}

impl StoredSecret {
    /// What is recorded next to the value.
    pub fn labels(&self) -> StoredLabels {
        StoredLabels { key_id: self.key_id, rotation: self.rotation.clone(), app_id: self.app_id }
    }
}

/// What is recorded next to a stored value (Key Vault tags, Secret annotations), without
/// the value: all that deciding needs, and all a listing of a vault returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredLabels {
    pub key_id: Option<Uuid>,
    pub rotation: Option<String>,
    pub app_id: Option<Uuid>,
}

/// Everything a store needs to write one credential.
#[derive(Debug)]
pub struct SecretToStore<'a> {
    /// The rotation writing it: recorded next to the value as the store's owner.
    pub rotation: &'a str,
    pub app: &'a AppRef,
    pub key_id: Uuid,
    pub value: &'a SecretString,
    pub not_before: Option<DateTime<Utc>>,
    pub expires: Option<DateTime<Utc>>,
}
