//! Reasons, as they appear in reports, logs, events and (later) status conditions.
//! One place, so the words stay the same everywhere.

pub const FORCED_BY_USER: &str = "ForcedByUser";
pub const STORED_SECRET_MISSING: &str = "StoredSecretMissing";
pub const STORED_SECRET_NOT_LIVE: &str = "StoredSecretNotLive";
pub const CREDENTIAL_EXPIRED: &str = "CredentialExpired";
pub const CREDENTIAL_NEARING_EXPIRY: &str = "CredentialNearingExpiry";
pub const STORES_OUT_OF_SYNC: &str = "StoresOutOfSync";
pub const OLD_SECRETS_PENDING_REVOCATION: &str = "OldSecretsPendingRevocation";
pub const ROTATION_IN_FLIGHT: &str = "RotationInFlight";
pub const UP_TO_DATE: &str = "UpToDate";
