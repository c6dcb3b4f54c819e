//! The tenant-wide scan: every password and certificate credential of the listed
//! applications, classified by expiry against a horizon and counted. Pure: the listing
//! comes from [`crate::adapters::graph`], the printing from the CLI's `scan` face.
//!
//! Imports the domain and the Graph adapter's listing types; never the CLI or the operator.

pub mod html;

use crate::adapters::graph::{KeyCredential, ListedApplication};
use crate::domain::{MARKER_PREFIX, PasswordCredential};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Where a credential stands against the horizon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Expired,
    Expiring,
    Ok,
    NoExpiry,
}

impl Status {
    /// The word printed in every format.
    pub fn name(self) -> &'static str {
        match self {
            Status::Expired => "expired",
            Status::Expiring => "expiring",
            Status::Ok => "ok",
            Status::NoExpiry => "no-expiry",
        }
    }
}

/// One credential of one application, classified.
pub struct Row<'a> {
    pub app: &'a ListedApplication,
    /// `password` or `certificate`.
    pub kind: &'static str,
    pub key_id: Uuid,
    pub name: Option<&'a str>,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    /// Whole days, toward zero: 8.9 days left is 8, expired 3.1 days ago is -3.
    pub days_left: Option<i64>,
    pub status: Status,
    /// The rotation that minted this secret: its `displayName` carries our marker.
    pub managed_by: Option<&'a str>,
}

/// Classifies credentials as of `now` against `horizon`, and counts what it saw.
pub struct Classifier {
    now: DateTime<Utc>,
    horizon: DateTime<Utc>,
    ignore_expired: bool,
    pub expired: u64,
    pub expiring: u64,
}

impl Classifier {
    pub fn new(now: DateTime<Utc>, horizon: DateTime<Utc>, ignore_expired: bool) -> Self {
        Self { now, horizon, ignore_expired, expired: 0, expiring: 0 }
    }

    /// The rows of one application: its passwords, then its certificates (expired ones
    /// left out when asked to ignore them).
    pub fn rows<'a>(&mut self, app: &'a ListedApplication) -> Vec<Row<'a>> {
        let passwords = app.password_credentials.iter().map(|c| ("password", password_parts(c)));
        let certificates = app.key_credentials.iter().map(|c| ("certificate", certificate_parts(c)));
        passwords.chain(certificates).filter_map(|(kind, parts)| self.row(app, kind, parts)).collect()
    }

    fn row<'a>(&mut self, app: &'a ListedApplication, kind: &'static str, parts: Parts<'a>) -> Option<Row<'a>> {
        let (key_id, name, start, end) = parts;
        let status = match end {
            None => Status::NoExpiry,
            Some(end) if end <= self.now => Status::Expired,
            Some(end) if end <= self.horizon => Status::Expiring,
            Some(_) => Status::Ok,
        };
        if status == Status::Expired && self.ignore_expired {
            return None;
        }
        match status {
            Status::Expired => self.expired += 1,
            Status::Expiring => self.expiring += 1,
            Status::Ok | Status::NoExpiry => {}
        }
        let days_left = end.map(|end| (end - self.now).num_days());
        let managed_by = match kind {
            "password" => name.and_then(|n| n.strip_prefix(MARKER_PREFIX)),
            _ => None,
        };
        Some(Row { app, kind, key_id, name, start, end, days_left, status, managed_by })
    }
}

/// keyId, display name, start and end of a credential of either kind.
type Parts<'a> = (Uuid, Option<&'a str>, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

fn password_parts(credential: &PasswordCredential) -> Parts<'_> {
    (credential.key_id, credential.display_name.as_deref(), credential.start, credential.end)
}

fn certificate_parts(credential: &KeyCredential) -> Parts<'_> {
    (credential.key_id, credential.display_name.as_deref(), credential.start, credential.end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn password(end: Option<DateTime<Utc>>) -> PasswordCredential {
        PasswordCredential { key_id: Uuid::new_v4(), display_name: None, start: None, end, hint: None }
    }

    #[test]
    fn credentials_are_classified_against_the_horizon_and_counted() {
        let now = Utc::now();
        let app = ListedApplication {
            object_id: Uuid::new_v4(),
            app_id: Uuid::new_v4(),
            display_name: "mail".into(),
            password_credentials: vec![
                password(Some(now - Duration::hours(75))),
                password(Some(now + Duration::hours(215))),
                password(Some(now + Duration::days(90))),
                password(None),
                PasswordCredential { display_name: Some("entra-rotator:dify/dify-smtp".into()), ..password(Some(now + Duration::days(200))) },
            ],
            key_credentials: vec![KeyCredential {
                key_id: Uuid::new_v4(),
                display_name: Some("cert".into()),
                start: None,
                end: Some(now + Duration::days(3)),
                kind: None,
                usage: None,
            }],
            owners: Vec::new(),
        };
        let mut classifier = Classifier::new(now, now + Duration::days(30), false);

        let rows = classifier.rows(&app);

        let seen: Vec<_> = rows.iter().map(|r| (r.kind, r.status, r.days_left)).collect();
        assert_eq!(
            seen,
            [
                ("password", Status::Expired, Some(-3)),
                ("password", Status::Expiring, Some(8)),
                ("password", Status::Ok, Some(90)),
                ("password", Status::NoExpiry, None),
                ("password", Status::Ok, Some(200)),
                ("certificate", Status::Expiring, Some(3)),
            ]
        );
        let managed: Vec<_> = rows.iter().map(|r| r.managed_by).collect();
        assert_eq!(managed, [None, None, None, None, Some("dify/dify-smtp"), None], "only our marker counts");
        assert_eq!((classifier.expired, classifier.expiring), (1, 2));

        let mut ignoring = Classifier::new(now, now + Duration::days(30), true);
        assert_eq!(ignoring.rows(&app).len(), 5, "the expired one is left out");
        assert_eq!(ignoring.expired, 0);
    }
}
