//! Verifies the client secret of an app that sends through Exchange Online with OAuth: the
//! **new** secret buys an access token (client credentials, the app's tenant, scope
//! `https://outlook.office365.com/.default`), which `AUTH XOAUTH2` presents for the mailbox
//! on `smtp.office365.com:587` with STARTTLS; then the same proof as the ACS path (a test
//! mail, or the handshake) in the same [`SmtpRelay`] session.
//!
//! Microsoft Learn, "Authenticate an IMAP, POP or SMTP connection using OAuth": the app needs
//! the application permission `SMTP.SendAsApp` of "Office 365 Exchange Online" with admin
//! consent, its service principal registered in Exchange (`New-ServicePrincipal`), and a
//! permission on the mailbox (`Add-MailboxPermission … -AccessRights FullAccess`); SMTP AUTH
//! must be on for the organisation and the mailbox. Exchange answers a missing registration,
//! a missing mailbox permission and a token without the role alike (`535 5.7.3
//! Authentication unsuccessful`), so the role is checked in the token's claims before
//! connecting, and the 5.7.3 explanation names both set-up steps that remain.
//!
//! The token is handled like the secret: held as a [`SecretString`], never formatted into a
//! message, and replies to AUTH are quoted by their codes only (see [`super`]).

use super::{
    Dialect, Phase, ProofMode, SmtpRelay, SmtpSetupError, TlsMode, AuthMechanism, parse_mailbox, root_cause,
};
use crate::adapters::http::TlsTrust;
use crate::adapters::identity::{federated_token_claims, rotator_credential, RotatorCredential};
use crate::domain::{AppRef, ExposeSecret, SecretString};
use crate::engine::ports::{Verifier, VerifyError, VerifyFailureKind};
use async_trait::async_trait;
use lettre::Message;
use lettre::address::Envelope;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use std::fmt;
use std::time::Duration;
use url::Url;

/// Exchange Online's client submission endpoint in the public cloud.
pub const DEFAULT_HOST: &str = "smtp.office365.com";
/// The token scope of Exchange Online in the public cloud; sovereign clouds have their own
/// (and their own host), which are configured, never derived.
pub const DEFAULT_SCOPE: &str = "https://outlook.office365.com/.default";
/// The application permission Exchange Online requires for SMTP with OAuth.
pub const SEND_AS_APP: &str = "SMTP.SendAsApp";

/// What a client using basic authentication must do once Exchange Online refuses it
/// (`550 5.7.30 Basic authentication is not supported for Client Submission`, the Exchange
/// Team blog "Exchange Online to retire Basic auth for Client Submission (SMTP AUTH)").
pub(crate) const BASIC_AUTH_ADVICE: &str = "Exchange Online no longer accepts basic authentication (AUTH LOGIN with a \
password) for client submission: authenticate with OAuth instead (AUTH XOAUTH2 with a token bought with the app's \
client secret), e.g. verification.exchangeOnline, or `entra-rotator smtp-test --xoauth2`";

/// Where and how to prove a secret through Exchange Online.
#[derive(Clone, Debug)]
pub struct ExchangeOnlineVerification {
    pub host: String,
    pub port: u16,
    /// The mailbox the app sends as: the XOAUTH2 user.
    pub mailbox: String,
    /// The sender; the mailbox unless it may send as another address.
    pub from: String,
    pub to: String,
    /// The token scope, `https://outlook.office365.com/.default` in the public cloud.
    pub scope: String,
    /// The Entra login endpoint the token is bought at, e.g. `https://login.microsoftonline.com`.
    pub authority_host: Url,
    pub timeout: Duration,
    pub mode: ProofMode,
}

/// Proves a secret through Exchange Online: a token with it, then AUTH XOAUTH2.
pub struct ExchangeOnlineVerifier {
    settings: ExchangeOnlineVerification,
    relay: SmtpRelay,
    from: Mailbox,
    to: Mailbox,
    http: reqwest::Client,
}

impl fmt::Debug for ExchangeOnlineVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangeOnlineVerifier").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl ExchangeOnlineVerifier {
    /// Checks the addresses and builds the TLS parameters; `http` reaches the token endpoint.
    pub fn new(
        settings: ExchangeOnlineVerification,
        trust: &TlsTrust,
        http: reqwest::Client,
    ) -> Result<Self, SmtpSetupError> {
        let from = parse_mailbox("from", &settings.from)?;
        let to = parse_mailbox("to", &settings.to)?;
        parse_mailbox("mailbox", &settings.mailbox)?;
        let mut relay =
            SmtpRelay::new(&settings.host, settings.port, TlsMode::StartTls, AuthMechanism::Xoauth2, settings.timeout, trust)?;
        relay.dialect = Dialect::ExchangeOnline;
        Ok(Self { settings, relay, from, to, http })
    }

    fn target(&self, app: &AppRef) -> String {
        format!(
            "Exchange Online {}:{} (STARTTLS, AUTH XOAUTH2) as mailbox {} for application {}",
            self.settings.host, self.settings.port, self.settings.mailbox, app.client_id
        )
    }

    /// Proves `secret` of `app` as `mode` says; for `smtp-test --xoauth2` too.
    pub async fn check(&self, app: &AppRef, secret: &SecretString, mode: ProofMode) -> Result<(), VerifyError> {
        let token = self.token(app, secret).await?;
        let mailbox = self.settings.mailbox.as_str();
        let outcome = match mode {
            ProofMode::Handshake => self.relay.handshake(mailbox, &token, &self.envelope()).await,
            ProofMode::Deliver => match self.test_message(app) {
                Ok(message) => self.relay.send(mailbox, &token, message).await,
                Err(e) => Err(VerifyError::new(
                    self.target(app),
                    VerifyFailureKind::Other,
                    format!("could not build the verification mail: {e}"),
                )),
            },
        };
        outcome.map_err(|error| VerifyError { target: self.target(app), ..error })
    }

    /// An access token for Exchange Online bought with `secret`, its roles checked.
    async fn token(&self, app: &AppRef, secret: &SecretString) -> Result<SecretString, VerifyError> {
        let fail = |kind, message| VerifyError::new(self.target(app), kind, message);
        let credential = RotatorCredential::ClientSecret {
            tenant_id: app.tenant_id.to_string(),
            client_id: app.client_id.to_string(),
            secret: secret.clone(),
        };
        // A fresh credential per attempt: azure_identity caches tokens per credential, and
        // each attempt must prove the secret it is given.
        let credential = rotator_credential(&credential, Some(&self.settings.authority_host), self.http.clone())
            .map_err(|e| fail(VerifyFailureKind::Other, e.to_string()))?;
        let scope = self.settings.scope.as_str();
        let token = match credential.get_token(&[scope], None).await {
            Ok(token) => SecretString::from(token.token.secret().to_string()),
            Err(error) => {
                let (kind, message) = self.explain_token_refusal(app, &error);
                return Err(fail(kind, message));
            }
        };
        // Entra's access tokens are JWTs whose `roles` claim lists the application
        // permissions consented on the resource (absent when there are none). Read, never
        // trusted: Exchange decides; a token that is not a JWT is left to Exchange.
        if let Some(claims) = federated_token_claims(token.expose_secret()) {
            let granted = claims["roles"].as_array().is_some_and(|roles| roles.iter().any(|r| r == SEND_AS_APP));
            if !granted {
                return Err(fail(
                    VerifyFailureKind::Other,
                    format!(
                        "Entra issued a token for {scope} to application {} with this secret, but without the \
                         application permission {SEND_AS_APP}, so Exchange Online would refuse it. In the app \
                         registration, API permissions > Add a permission > APIs my organization uses > Office 365 \
                         Exchange Online > Application permissions > {SEND_AS_APP}, then Grant admin consent. The \
                         secret itself works",
                        app.client_id
                    ),
                ));
            }
        }
        Ok(token)
    }

    /// Entra's refusal of the token request, by its AADSTS code (quoted alone: the rest of
    /// Entra's text is not ours to pass on).
    fn explain_token_refusal(&self, app: &AppRef, error: &azure_core::Error) -> (VerifyFailureKind, String) {
        let authority = self.settings.authority_host.as_str().trim_end_matches('/');
        let (tenant, client) = (app.tenant_id, app.client_id);
        let code = crate::adapters::error_chain::causes(error).iter().find_map(|cause| aadsts_code(&cause.to_string()));
        let Some(code) = code else {
            return (
                VerifyFailureKind::Connection,
                format!(
                    "could not get a token for {} from the Entra token endpoint {authority}/{tenant}: {}. Check \
                     azure.authorityHost and that the token endpoint is reachable",
                    self.settings.scope,
                    root_cause(error)
                ),
            );
        };
        let (kind, advice) = match code.as_str() {
            "AADSTS7000215" => (
                VerifyFailureKind::BadCredentials,
                "Entra refused the client secret as invalid. A secret just minted is refused so until Entra has \
                 replicated it (seconds to minutes), so it is tried again within the retry budget; if it lasts, \
                 the secret is not one of this application's"
                    .to_string(),
            ),
            "AADSTS7000222" => (
                VerifyFailureKind::Other,
                "Entra refused the client secret as expired: it is past its endDateTime".to_string(),
            ),
            "AADSTS700016" => (
                VerifyFailureKind::Other,
                format!("no application with client id {client} exists in tenant {tenant}: check application.clientId and application.tenantId"),
            ),
            "AADSTS90002" => (
                VerifyFailureKind::Other,
                format!("Entra does not know tenant {tenant} at {authority}: check application.tenantId and azure.authorityHost"),
            ),
            "AADSTS500011" | "AADSTS1002012" | "AADSTS70011" => (
                VerifyFailureKind::Other,
                format!(
                    "Entra does not accept the scope {}: Exchange Online's is {DEFAULT_SCOPE} in the public cloud; a \
                     sovereign cloud has its own (set verification.exchangeOnline.scope and host)",
                    self.settings.scope
                ),
            ),
            _ => (VerifyFailureKind::Other, "see the code in Entra's error reference (https://login.microsoftonline.com/error)".to_string()),
        };
        (
            kind,
            format!(
                "Entra at {authority} refused a token for {} to application {client} in tenant {tenant} ({code}): {advice}",
                self.settings.scope
            ),
        )
    }

    fn envelope(&self) -> Envelope {
        Envelope::new(Some(self.from.email.clone()), vec![self.to.email.clone()])
            .expect("an envelope with a recipient is always valid")
    }

    fn test_message(&self, app: &AppRef) -> Result<Message, lettre::error::Error> {
        Message::builder()
            .from(self.from.clone())
            .to(self.to.clone())
            .subject(format!("entra-rotator verification for application {}", app.client_id))
            .header(ContentType::TEXT_PLAIN)
            .body(format!(
                "entra-rotator sent this message through Exchange Online to check that the client secret of {app} \
                 works after a rotation.\r\nNo action is needed.\r\n"
            ))
    }
}

#[async_trait]
impl Verifier for ExchangeOnlineVerifier {
    fn describe(&self) -> String {
        format!(
            "Exchange Online {}:{} (STARTTLS, AUTH XOAUTH2) as mailbox {}",
            self.settings.host, self.settings.port, self.settings.mailbox
        )
    }

    async fn verify(&self, app: &AppRef, secret: &SecretString) -> Result<(), VerifyError> {
        self.check(app, secret, self.settings.mode).await
    }

    async fn recheck(&self, app: &AppRef, secret: &SecretString) -> Result<(), VerifyError> {
        self.check(app, secret, ProofMode::Handshake).await
    }
}

/// `AADSTS7000215` from Entra's `AADSTS7000215: Invalid client secret provided…`.
fn aadsts_code(text: &str) -> Option<String> {
    let start = text.find("AADSTS")?;
    let digits: String = text[start + 6..].chars().take_while(char::is_ascii_digit).collect();
    (!digits.is_empty()).then(|| format!("AADSTS{digits}"))
}

/// Exchange Online's replies, by the command that drew them; `None` leaves a reply to the
/// general explanation. Texts: Microsoft Learn, "Enable or disable SMTP AUTH in Exchange
/// Online" (`535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for
/// the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.`, and `… for the
/// Mailbox …`); "Authenticate an IMAP, POP or SMTP connection using OAuth" (`535 5.7.3
/// Authentication unsuccessful` for a token Exchange does not accept); and for a sender the
/// mailbox may not send as, at the end of DATA, `554 5.2.252 SendAsDenied; <mailbox> not
/// allowed to send as <from>; STOREDRV.Submission.Exception:SendAsDeniedException…`
/// (older front ends: `554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException`).
/// The reply to AUTH is read for its words but quoted by its codes only.
pub(super) fn explain_reply(
    phase: Phase,
    code: u16,
    enhanced: Option<&str>,
    text: &str,
    mailbox: &str,
    envelope: &Envelope,
) -> Option<(VerifyFailureKind, String)> {
    let lower = text.to_ascii_lowercase();
    let quoted = match enhanced {
        Some(enhanced) => format!("{code} {enhanced}"),
        None => code.to_string(),
    };
    let sender = envelope.from().map(ToString::to_string).unwrap_or_else(|| "<>".to_string());
    let advice = match (phase, enhanced) {
        (Phase::Auth, Some("5.7.139")) if lower.contains("for the tenant") => format!(
            "SMTP AUTH is turned off for the whole organisation. An Exchange administrator turns it on with \
             `Set-TransportConfig -SmtpClientAuthenticationDisabled $false`, or leaves it off and turns it on for \
             the mailbox alone with `Set-CASMailbox -Identity {mailbox} -SmtpClientAuthenticationDisabled $false` \
             (a mailbox setting overrides the organisation's)"
        ),
        (Phase::Auth, Some("5.7.139")) if lower.contains("for the mailbox") => format!(
            "SMTP AUTH is turned off for the mailbox {mailbox}. Turn it on with `Set-CASMailbox -Identity {mailbox} \
             -SmtpClientAuthenticationDisabled $false` (Microsoft 365 admin center: the user's Mail > Manage email \
             apps > Authenticated SMTP)"
        ),
        (Phase::Auth, Some("5.7.139")) => format!(
            "SMTP AUTH is refused for the mailbox {mailbox}: it is turned off for the organisation or the mailbox \
             (`Set-CASMailbox -Identity {mailbox} -SmtpClientAuthenticationDisabled $false`), or a security \
             defaults or Conditional Access policy blocks it"
        ),
        (Phase::Auth, _) if code == 535 => format!(
            "Entra issued the token with this secret, so the secret works (and the token's claims, where readable, \
             carry {SEND_AS_APP}); Exchange Online refused it for the mailbox {mailbox}. Either the application's service principal is not \
             registered in Exchange (`New-ServicePrincipal -AppId <application client id> -ObjectId <object id of \
             its enterprise application>`), or it has no permission on the mailbox (`Add-MailboxPermission \
             -Identity {mailbox} -User <service principal id> -AccessRights FullAccess`); both changes can take \
             some minutes to apply"
        ),
        (Phase::Data | Phase::MailFrom | Phase::RcptTo, _) if lower.contains("sendasdenied") => format!(
            "The mailbox {mailbox} may not send as {sender}. Use the mailbox itself as `from` (the default), or \
             grant it SendAs on that address: `Add-RecipientPermission -Identity {sender} -Trustee {mailbox} \
             -AccessRights SendAs`"
        ),
        _ => return None,
    };
    let kind = match phase {
        Phase::Auth => VerifyFailureKind::Other,
        _ => VerifyFailureKind::SenderRejected,
    };
    let reply = if phase == Phase::Auth { quoted } else { format!("{code} {text}") };
    Some((kind, format!("Exchange Online answered `{reply}` {phase}. {advice}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_aadsts_codes() {
        assert_eq!(aadsts_code("AADSTS7000215: Invalid client secret provided.").as_deref(), Some("AADSTS7000215"));
        assert_eq!(aadsts_code("no code here"), None);
    }
}
