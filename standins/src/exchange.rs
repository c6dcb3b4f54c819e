//! The Exchange Online side of the relay stand-in (`smtp.office365.com`): OAuth client
//! submission with `AUTH XOAUTH2`, and the permission states an administrator sets up for an
//! application to send as a mailbox. [`super::smtp`] speaks this dialect when its settings
//! carry an [`ExchangeOnline`].
//!
//! What Exchange Online checks, and what it answers (Microsoft Learn, "Authenticate an IMAP,
//! POP or SMTP connection using OAuth" and "Enable or disable SMTP AUTH in Exchange Online";
//! the Exchange Team blog, "Exchange Online to retire Basic auth for Client Submission"):
//! - a basic-auth AUTH LOGIN: `550 5.7.30 Basic authentication is not supported for Client
//!   Submission`;
//! - SMTP AUTH turned off for the organisation or the mailbox: `535 5.7.139 Authentication
//!   unsuccessful, SmtpClientAuthentication is disabled for the Tenant` (or `Mailbox`);
//! - a token that is not Exchange's, expired, without `SMTP.SendAsApp`, of a service principal
//!   Exchange does not know (`New-ServicePrincipal`), or without a permission on the mailbox
//!   (`Add-MailboxPermission`): all the same `535 5.7.3 Authentication unsuccessful`;
//! - a From the mailbox may not send as, at the end of DATA: `554 5.2.252 SendAsDenied`.

use crate::tenant::{Tenant, EXCHANGE_ONLINE_RESOURCE};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;

/// The application permission Exchange Online requires for client submission with OAuth.
pub const SEND_AS_APP: &str = "SMTP.SendAsApp";

pub(crate) const BASIC_AUTH_REFUSED: &str = "550 5.7.30 Basic authentication is not supported for Client Submission.";
pub(crate) const AUTH_UNSUCCESSFUL: &str = "535 5.7.3 Authentication unsuccessful";
const DISABLED_FOR_TENANT: &str = "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.";
const DISABLED_FOR_MAILBOX: &str = "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information.";

#[derive(Debug)]
struct State {
    /// The token audience this Exchange accepts (a sovereign cloud has its own).
    audience: String,
    /// Applications (client ids) whose service principal is registered in Exchange.
    service_principals: HashSet<Uuid>,
    /// Mailbox (lower case) → applications with FullAccess on it.
    mailbox_permissions: HashMap<String, HashSet<Uuid>>,
    smtp_auth_disabled_for_tenant: bool,
    smtp_auth_disabled_mailboxes: HashSet<String>,
    /// Mailbox (lower case) → further addresses (lower case) it may send as.
    send_as: HashMap<String, HashSet<String>>,
}

/// Exchange Online's permission states; cheap to clone, every clone sees the same state, so
/// a test can change them while the relay runs.
#[derive(Clone, Debug)]
pub struct ExchangeOnline(Arc<Mutex<State>>);

impl Default for ExchangeOnline {
    fn default() -> Self {
        Self::new()
    }
}

impl ExchangeOnline {
    /// The public cloud's Exchange (audience `https://outlook.office365.com`), SMTP AUTH on,
    /// no service principal registered, no mailbox permission.
    pub fn new() -> Self {
        Self::with_audience(EXCHANGE_ONLINE_RESOURCE)
    }

    /// An Exchange accepting tokens for `audience` (e.g. a sovereign cloud's).
    pub fn with_audience(audience: &str) -> Self {
        Self(Arc::new(Mutex::new(State {
            audience: audience.to_string(),
            service_principals: HashSet::new(),
            mailbox_permissions: HashMap::new(),
            smtp_auth_disabled_for_tenant: false,
            smtp_auth_disabled_mailboxes: HashSet::new(),
            send_as: HashMap::new(),
        })))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        super::lock(&self.0)
    }

    /// `New-ServicePrincipal -AppId <client id> -ObjectId <enterprise app object id>`.
    pub fn register_service_principal(&self, client_id: Uuid) {
        self.state().service_principals.insert(client_id);
    }

    /// `Add-MailboxPermission -Identity <mailbox> -User <service principal> -AccessRights FullAccess`.
    pub fn add_mailbox_permission(&self, mailbox: &str, client_id: Uuid) {
        self.state().mailbox_permissions.entry(mailbox.to_ascii_lowercase()).or_default().insert(client_id);
    }

    /// `Set-TransportConfig -SmtpClientAuthenticationDisabled <disabled>`.
    pub fn set_smtp_auth_disabled_for_tenant(&self, disabled: bool) {
        self.state().smtp_auth_disabled_for_tenant = disabled;
    }

    /// `Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled <disabled>`.
    pub fn set_smtp_auth_disabled_for_mailbox(&self, mailbox: &str, disabled: bool) {
        let mailbox = mailbox.to_ascii_lowercase();
        let mut state = self.state();
        if disabled {
            state.smtp_auth_disabled_mailboxes.insert(mailbox);
        } else {
            state.smtp_auth_disabled_mailboxes.remove(&mailbox);
        }
    }

    /// `Add-RecipientPermission -Identity <address> -Trustee <mailbox> -AccessRights SendAs`.
    pub fn grant_send_as(&self, mailbox: &str, address: &str) {
        self.state().send_as.entry(mailbox.to_ascii_lowercase()).or_default().insert(address.to_ascii_lowercase());
    }

    /// Everything an administrator sets up for `client_id` to send as `mailbox`: the app
    /// permission SMTP.SendAsApp with admin consent, the service principal and the mailbox
    /// permission.
    pub fn authorize(&self, tenant: &Tenant, client_id: Uuid, mailbox: &str) {
        let audience = self.state().audience.clone();
        tenant.grant_app_role(client_id, &audience, SEND_AS_APP);
        self.register_service_principal(client_id);
        self.add_mailbox_permission(mailbox, client_id);
    }

    /// Checks `AUTH XOAUTH2`'s decoded initial response (`user=<mailbox>^Aauth=Bearer
    /// <token>^A^A`): the mailbox and application it authenticates, or the reply refusing it.
    pub(crate) fn authenticate(&self, tenant: &Tenant, response: &[u8]) -> Result<(String, Uuid), &'static str> {
        let response = String::from_utf8_lossy(response);
        let mut fields = response.split('\u{1}');
        let mailbox = fields.next().and_then(|f| f.strip_prefix("user=")).ok_or(AUTH_UNSUCCESSFUL)?;
        let bearer = fields.next().and_then(|f| f.strip_prefix("auth=Bearer ")).ok_or(AUTH_UNSUCCESSFUL)?;
        let state = self.state();
        let Some(token) = tenant.token(bearer) else {
            tracing::debug!(mailbox, "Exchange stand-in: unknown or expired token");
            return Err(AUTH_UNSUCCESSFUL);
        };
        if token.scope.trim_end_matches("/.default") != state.audience {
            tracing::debug!(mailbox, scope = token.scope, "Exchange stand-in: token for another audience");
            return Err(AUTH_UNSUCCESSFUL);
        }
        if state.smtp_auth_disabled_for_tenant {
            return Err(DISABLED_FOR_TENANT);
        }
        let key = mailbox.to_ascii_lowercase();
        if state.smtp_auth_disabled_mailboxes.contains(&key) {
            return Err(DISABLED_FOR_MAILBOX);
        }
        let permitted = token.roles.iter().any(|r| r == SEND_AS_APP)
            && state.service_principals.contains(&token.client_id)
            && state.mailbox_permissions.get(&key).is_some_and(|apps| apps.contains(&token.client_id));
        if !permitted {
            tracing::debug!(mailbox, "Exchange stand-in: no SMTP.SendAsApp, service principal or mailbox permission");
            return Err(AUTH_UNSUCCESSFUL);
        }
        Ok((mailbox.to_string(), token.client_id))
    }

    /// Whether `mailbox` may send with `from` as its sender: itself, or an address it was
    /// granted SendAs on.
    pub(crate) fn may_send_as(&self, mailbox: &str, from: &str) -> bool {
        mailbox.eq_ignore_ascii_case(from)
            || self.state().send_as.get(&mailbox.to_ascii_lowercase()).is_some_and(|a| a.contains(&from.to_ascii_lowercase()))
    }

    /// Exchange's refusal of a sender the mailbox may not send as.
    pub(crate) fn send_as_denied(mailbox: &str, from: &str) -> String {
        format!(
            "554 5.2.252 SendAsDenied; {mailbox} not allowed to send as {from}; STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message.[EndDiagnosticData]"
        )
    }
}
