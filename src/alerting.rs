//! Notifications before a credential expires and when a rotation fails: a generic JSON
//! webhook, Microsoft Teams and Slack incoming webhooks, and email through an SMTP relay.
//!
//! A notification carries the rotation, application, keyId, expiry and the reason, never a
//! secret value. The controller records in each object's status what it has notified, so
//! every threshold crossing is announced once, also across restarts; a notification that
//! could not be delivered is not recorded and goes out on a later reconcile.

use crate::adapters::http::TlsTrust;
use crate::adapters::network;
use crate::domain::{ExposeSecret, SecretString};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

/// Where notifications go (the `notifications:` section of the controller's settings).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotificationSettings {
    #[serde(default, with = "serde_yaml::with::singleton_map_recursive")]
    pub channels: Vec<ChannelConfig>,
}

/// One channel. Webhook URLs of Teams and Slack contain a token, so they are read from a
/// file or an environment variable; a generic webhook may also be given inline.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum ChannelConfig {
    Webhook(WebhookConfig),
    Teams(WebhookConfig),
    Slack(WebhookConfig),
    Email(EmailConfig),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: Option<String>,
    pub url_env: Option<String>,
    pub url_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmailConfig {
    #[serde(default = "default_smtp_host")]
    pub host: String,
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    pub username: String,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub from: String,
    pub to: Vec<String>,
}

fn default_smtp_host() -> String {
    "smtp.azurecomm.net".into()
}

fn default_smtp_port() -> u16 {
    587
}

/// What happened, in a form every channel can render.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// `CredentialExpiring`, `RotationFailed` or `ConsumersOnOldSecret`.
    pub kind: &'static str,
    /// `namespace/name` of the ClientSecretRotation.
    pub rotation: String,
    pub application_id: String,
    pub key_id: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub days_left: Option<i64>,
    pub message: String,
}

impl Notification {
    fn title(&self) -> String {
        match self.kind {
            EXPIRING => format!(
                "entra-rotator: the client secret of {} expires in {} day(s)",
                self.rotation,
                self.days_left.unwrap_or_default()
            ),
            CONSUMERS_STUCK => format!(
                "entra-rotator: the old client secret of {} stays live: consumers still use it",
                self.rotation
            ),
            _ => format!("entra-rotator: rotation of {} failed", self.rotation),
        }
    }

    fn text(&self) -> String {
        let mut text = format!("{}\n{}\napplication {}", self.title(), self.message, self.application_id);
        if let Some(key_id) = &self.key_id {
            text.push_str(&format!(", keyId {key_id}"));
        }
        if let Some(expires) = self.expires_at {
            text.push_str(&format!(", expires {}", expires.to_rfc3339()));
        }
        text
    }
}

pub const EXPIRING: &str = "CredentialExpiring";
pub const FAILED: &str = "RotationFailed";
/// Revocation has waited longer than consumerWaitTimeout for consumers on the old secret.
pub const CONSUMERS_STUCK: &str = "ConsumersOnOldSecret";

/// A channel ready to send.
enum Channel {
    Webhook { kind: &'static str, url: SecretString },
    Email { config: EmailConfig, password: SecretString },
}

impl Channel {
    /// Names the channel without its URL (which may carry a token).
    fn describe(&self) -> String {
        match self {
            Channel::Webhook { kind, .. } => format!("{kind} webhook"),
            Channel::Email { config, .. } => format!("email via {}:{}", config.host, config.port),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notification channel #{index}: {problem}")]
    Setup { index: usize, problem: String },
    #[error("could not deliver the notification to {}", failures.join("; "))]
    Delivery { failures: Vec<String> },
}

/// Sends notifications to every configured channel.
pub struct Notifier {
    channels: Vec<Channel>,
    http: reqwest::Client,
    trust: TlsTrust,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let channels: Vec<String> = self.channels.iter().map(Channel::describe).collect();
        f.debug_struct("Notifier").field("channels", &channels).finish_non_exhaustive()
    }
}

fn read_secret(index: usize, inline: Option<&str>, env: Option<&str>, file: Option<&PathBuf>, what: &str) -> Result<SecretString, NotifyError> {
    let problem = |problem: String| NotifyError::Setup { index, problem };
    match (inline, env, file) {
        (Some(value), None, None) => Ok(SecretString::from(value.to_string())),
        (None, Some(variable), None) => std::env::var(variable)
            .ok()
            .filter(|v| !v.is_empty())
            .map(SecretString::from)
            .ok_or_else(|| problem(format!("environment variable {variable} ({what}) is not set"))),
        (None, None, Some(path)) => std::fs::read_to_string(path)
            .map(|s| SecretString::from(s.trim().to_string()))
            .map_err(|e| problem(format!("cannot read {what} from {}: {e}", path.display()))),
        _ => Err(problem(format!("give the {what} exactly one way"))),
    }
}

impl Notifier {
    /// `None` when no channel is configured.
    pub fn new(settings: &NotificationSettings, http: reqwest::Client, trust: TlsTrust) -> Result<Option<Self>, NotifyError> {
        let mut channels = Vec::new();
        for (index, channel) in settings.channels.iter().enumerate() {
            channels.push(match channel {
                ChannelConfig::Webhook(hook) | ChannelConfig::Teams(hook) | ChannelConfig::Slack(hook) => {
                    let kind = match channel {
                        ChannelConfig::Teams(_) => "Teams",
                        ChannelConfig::Slack(_) => "Slack",
                        _ => "JSON",
                    };
                    if kind != "JSON" && hook.url.is_some() {
                        return Err(NotifyError::Setup { index, problem: format!("a {kind} webhook URL contains a token: give it with urlEnv or urlFile, not url") });
                    }
                    let url = read_secret(index, hook.url.as_deref(), hook.url_env.as_deref(), hook.url_file.as_ref(), "webhook URL")?;
                    if reqwest::Url::parse(url.expose_secret()).is_err() {
                        return Err(NotifyError::Setup { index, problem: "the webhook URL is not a URL".into() });
                    }
                    Channel::Webhook { kind, url }
                }
                ChannelConfig::Email(email) => {
                    let password = read_secret(index, None, email.password_env.as_deref(), email.password_file.as_ref(), "SMTP password")?;
                    let config = EmailConfig {
                        host: email.host.clone(),
                        port: email.port,
                        username: email.username.clone(),
                        password_env: None,
                        password_file: None,
                        from: email.from.clone(),
                        to: email.to.clone(),
                    };
                    Channel::Email { config, password }
                }
            });
        }
        Ok((!channels.is_empty()).then_some(Self { channels, http, trust }))
    }

    /// Delivers to every channel, trying each up to three times; fails if any channel failed.
    pub async fn notify(&self, notification: &Notification) -> Result<(), NotifyError> {
        let mut failures = Vec::new();
        for channel in &self.channels {
            let mut last = None;
            for attempt in 0..3u32 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(500 * 2u64.pow(attempt))).await;
                }
                match self.send(channel, notification).await {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(problem) => last = Some(problem),
                }
            }
            if let Some(problem) = last {
                failures.push(format!("{}: {problem}", channel.describe()));
            }
        }
        if failures.is_empty() { Ok(()) } else { Err(NotifyError::Delivery { failures }) }
    }

    async fn send(&self, channel: &Channel, notification: &Notification) -> Result<(), String> {
        match channel {
            Channel::Webhook { kind, url } => {
                let body = match *kind {
                    "Teams" => teams_payload(notification),
                    "Slack" => slack_payload(notification),
                    _ => json!(notification),
                };
                let response = self
                    .http
                    .post(url.expose_secret())
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| webhook_failure(url, &e))?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("answered HTTP {}", response.status().as_u16()))
                }
            }
            Channel::Email { config, password } => send_email(config, password, notification, &self.trust).await,
        }
    }
}

/// What went wrong sending to a webhook: the network cause with the URL's host and port
/// (never its path or query, nor reqwest's own message: they carry the webhook's token).
fn webhook_failure(url: &SecretString, error: &reqwest::Error) -> String {
    let failure = reqwest::Url::parse(url.expose_secret())
        .ok()
        .and_then(|url| network::classify(&url, "notifications.channels[].webhook.url", error));
    match failure {
        Some(failure) => format!("request failed: {failure}"),
        None if error.is_timeout() => "request failed (timeout)".to_string(),
        None => "request failed (network error)".to_string(),
    }
}

/// A Teams message with an Adaptive Card, the format Teams workflow webhooks accept.
pub fn teams_payload(notification: &Notification) -> serde_json::Value {
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    { "type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": true, "text": notification.title() },
                    // A TextRun renders no markdown (a TextBlock would turn `[click](…)` in a
                    // relay's reply into a link).
                    { "type": "RichTextBlock", "inlines": [{ "type": "TextRun", "text": defanged(&notification.message) }] },
                    { "type": "FactSet", "facts": facts(notification).into_iter().map(|(t, v)| json!({"title": t, "value": v})).collect::<Vec<_>>() }
                ]
            }
        }]
    })
}

/// A Slack message with a fallback text and blocks.
pub fn slack_payload(notification: &Notification) -> serde_json::Value {
    let fields: Vec<_> = facts(notification).into_iter().map(|(t, v)| json!({"type": "mrkdwn", "text": format!("*{t}*\n{v}")})).collect();
    json!({
        "text": notification.title(),
        "blocks": [
            { "type": "header", "text": { "type": "plain_text", "text": notification.title() } },
            { "type": "section", "text": { "type": "mrkdwn", "text": slack_quoted(&notification.message) } },
            { "type": "section", "fields": fields }
        ]
    })
}

/// The longest message text a chat notification carries; relay and vault replies can be
/// long, and the status and Events hold the whole story.
const MAX_MESSAGE_CHARS: usize = 1000;

/// A message for a chat channel: relay and vault replies end up in it, so a hostile peer
/// writes part of it. Control characters (line breaks included) become spaces, the length
/// is bounded, and every URL is defanged (`https[:]//evil`) so that nothing in it is a
/// link the platform team might click.
fn defanged(message: &str) -> String {
    let line: String = message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let line = line.replace("://", "[:]//");
    match line.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line,
    }
}

/// A message as Slack mrkdwn that formats nothing: `&`, `<` and `>` escaped as Slack
/// requires (so `<https://evil|click>` is no link), inside a code block (no bold, no
/// auto-linking), which the text cannot close (backticks become `ˋ`).
fn slack_quoted(message: &str) -> String {
    let text = defanged(message).replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('`', "ˋ");
    format!("```{text}```")
}

fn facts(notification: &Notification) -> Vec<(&'static str, String)> {
    let mut facts = vec![("Rotation", notification.rotation.clone()), ("Application", notification.application_id.clone())];
    if let Some(key_id) = &notification.key_id {
        facts.push(("keyId", key_id.clone()));
    }
    if let Some(expires) = notification.expires_at {
        facts.push(("Expires", expires.to_rfc3339()));
    }
    facts
}

/// Sends the notification through the same guarded session as the verifier (STARTTLS
/// required, AUTH LOGIN, bounded replies, no bytes accepted after STARTTLS), so a failure
/// carries the same explanation and never the password.
async fn send_email(config: &EmailConfig, password: &SecretString, notification: &Notification, trust: &TlsTrust) -> Result<(), String> {
    use crate::adapters::smtp::{AuthMechanism, SmtpRelay, TlsMode, quota};
    use lettre::Message;
    use lettre::message::Mailbox;

    let from: Mailbox = config.from.parse().map_err(|e| format!("from address: {e}"))?;
    // Notifications spend the relay resource's mail quota like test mails do, through the
    // same limiter; one that would wait over a minute is left to the notifier's retry.
    let limiter = quota::default_quota(&config.host).map(|mail_quota| {
        quota::process_limiters().for_resource(&quota::resource_key(&config.host, config.port, from.email.domain()), Some(mail_quota))
    });
    if let Some(limiter) = &limiter
        && let Err(free_at) = limiter.mail(Duration::from_secs(60)).await
    {
        return Err(format!(
            "the mail quota of {}:{} is spent by this process until {}; the notification is sent again later",
            config.host,
            config.port,
            free_at.to_rfc3339()
        ));
    }
    let _session = match &limiter {
        Some(limiter) => Some(limiter.session().await),
        None => None,
    };
    let mut message = Message::builder().from(from).subject(notification.title());
    for to in &config.to {
        message = message.to(to.parse().map_err(|e| format!("to address {to}: {e}"))?);
    }
    let message = message.body(notification.text()).map_err(|e| e.to_string())?;
    let relay = SmtpRelay::new(&config.host, config.port, TlsMode::StartTls, AuthMechanism::Login, Duration::from_secs(30), trust)
        .map_err(|e| e.to_string())?;
    relay.send(&config.username, password, message).await.map_err(|e| e.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expiring() -> Notification {
        Notification {
            kind: EXPIRING,
            rotation: "dify/dify-smtp".into(),
            application_id: "0b5e2f3c-9d0a-4f6e-8a53-1e0b9c7d2a11".into(),
            key_id: Some("7d87ea3d-6a9e-4a98-97a8-271fd797bb0e".into()),
            expires_at: Some("2027-05-22T16:20:19Z".parse().unwrap()),
            days_left: Some(6),
            message: "within the 7-day alert threshold".into(),
        }
    }

    #[test]
    fn teams_gets_an_adaptive_card_and_slack_blocks() {
        let teams = teams_payload(&expiring());
        assert_eq!(teams["attachments"][0]["contentType"], "application/vnd.microsoft.card.adaptive");
        assert_eq!(teams["attachments"][0]["content"]["body"][0]["text"], "entra-rotator: the client secret of dify/dify-smtp expires in 6 day(s)");
        let slack = slack_payload(&expiring());
        assert_eq!(slack["text"], "entra-rotator: the client secret of dify/dify-smtp expires in 6 day(s)");
        assert!(slack["blocks"][2]["fields"][2]["text"].as_str().unwrap().contains("7d87ea3d"));
    }

    /// A relay's reply lands in the message of a failure: it must not become links,
    /// formatting or extra lines in the platform team's chat.
    #[test]
    fn reply_text_from_a_peer_is_no_markup_in_teams_and_slack() {
        let hostile = Notification {
            kind: FAILED,
            message: "535 5.7.3 <https://evil.example|click here> or [click](https://evil.example) `x` & **bold**\r\n250 OK\u{7}".into(),
            ..expiring()
        };
        let slack = slack_payload(&hostile)["blocks"][1]["text"]["text"].as_str().unwrap().to_string();
        assert_eq!(
            slack,
            "```535 5.7.3 &lt;https[:]//evil.example|click here&gt; or [click](https[:]//evil.example) ˋxˋ &amp; **bold**  250 OK ```"
        );
        let teams = teams_payload(&hostile);
        let block = &teams["attachments"][0]["content"]["body"][1];
        assert_eq!(block["type"], "RichTextBlock");
        assert_eq!(block["inlines"][0]["type"], "TextRun", "a TextRun renders no markdown");
        let text = block["inlines"][0]["text"].as_str().unwrap();
        assert_eq!(text, "535 5.7.3 <https[:]//evil.example|click here> or [click](https[:]//evil.example) `x` & **bold**  250 OK ");
        assert!(!slack.contains(char::is_control) && !text.contains(char::is_control), "one line each");
        for payload in [slack_payload(&hostile).to_string(), teams.to_string()] {
            assert!(!payload.contains("://evil"), "{payload}");
        }
    }

    #[test]
    fn chat_messages_are_bounded() {
        let long = Notification { message: "é".repeat(5000), ..expiring() };
        let text = defanged(&long.message);
        assert_eq!(text.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(text.ends_with('…'));
    }

    #[test]
    fn webhook_urls_with_tokens_must_not_be_inline() {
        let settings: NotificationSettings =
            serde_yaml::from_str("channels:\n  - slack:\n      url: https://hooks.slack.com/services/T/B/secret\n").unwrap();
        let error = Notifier::new(&settings, reqwest::Client::new(), TlsTrust::default()).unwrap_err();
        assert!(error.to_string().contains("give it with urlEnv or urlFile"), "{error}");
        assert!(!error.to_string().contains("hooks.slack.com"));
    }
}
