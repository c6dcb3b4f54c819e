//! `entra-rotator smtp-test`: swaks made for Azure Communication Services. Shows what the
//! relay offers (EHLO before and after STARTTLS, TLS version and cipher suite), sends one
//! test mail with the given credential, and explains a failure in words (504 5.7.4, 535,
//! sender refused, untrusted certificate, unreachable port).
//!
//! The password comes from an environment variable, a file or a no-echo prompt, never from
//! the command line (where `ps` and shell history would keep it), and is never printed.

use super::EXIT_INVALID_INPUT;
use crate::adapters::smtp::exchange_online::{ExchangeOnlineVerification, ExchangeOnlineVerifier};
use crate::adapters::smtp::{AuthMechanism, ProofMode, SmtpVerification, SmtpVerifier, TlsMode};
use crate::domain::AppRef;
use crate::adapters::smtp_probe::{ProbeReport, probe};
use crate::assembly::load_trust;
use crate::config::TlsSettings;
use crate::config::duration::HumanDuration;
use crate::domain::SecretString;
use crate::engine::ports::VerifyFailureKind;
use crate::template::Template;
use clap::{Args, ValueEnum};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code when the relay refused the test mail or could not be reached.
const EXIT_SEND_FAILED: u8 = 1;

#[derive(Args, Debug)]
pub(crate) struct SmtpTestArgs {
    /// The relay: smtp.azurecomm.net, or with --xoauth2 smtp.office365.com, unless given.
    #[arg(long)]
    host: Option<String>,
    /// 587 (STARTTLS) is the one to use; 25 is blocked outbound from Azure VMs.
    #[arg(long, default_value_t = 587)]
    port: u16,
    #[arg(long, value_enum, default_value_t = TlsArg::Starttls)]
    tls: TlsArg,
    /// A custom SMTP username of the Communication Services resource, or
    /// `<resource name>|<app client id>|<tenant id>` (older docs write dots instead of pipes).
    #[arg(long)]
    username: String,
    /// The MailFrom address; on an Azure-managed domain only DoNotReply@<guid>.azurecomm.net.
    #[arg(long)]
    from: String,
    /// Who receives the test mail.
    #[arg(long)]
    to: String,
    /// The SASL mechanism; ACS accepts LOGIN only.
    #[arg(long, value_enum, default_value_t = AuthArg::Login)]
    auth: AuthArg,
    /// Read the password (the Entra app's client secret) from this environment variable.
    #[arg(long, value_name = "NAME", conflicts_with = "password_file")]
    password_env: Option<String>,
    /// Read the password from this file (one line).
    #[arg(long, value_name = "PATH")]
    password_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust besides the public roots (TLS-inspecting proxies).
    #[arg(long, value_name = "PATH")]
    extra_root_certificate: Vec<PathBuf>,
    /// How long each connection may take.
    #[arg(long, default_value = "30s", value_parser = HumanDuration::parse)]
    timeout: HumanDuration,
    /// deliver: send a test mail; handshake: AUTH, MAIL FROM and RCPT TO, then RSET, so
    /// nothing is sent and no mail quota is spent.
    #[arg(long, value_enum, default_value_t = ModeArg::Deliver)]
    mode: ModeArg,
    /// Exchange Online with OAuth: buy a token with the client secret of --client-id in
    /// --tenant-id, then AUTH XOAUTH2 as the mailbox given by --username.
    #[arg(long, requires_all = ["tenant_id", "client_id"], conflicts_with = "auth")]
    xoauth2: bool,
    /// With --xoauth2: the app's tenant id.
    #[arg(long, value_name = "GUID")]
    tenant_id: Option<uuid::Uuid>,
    /// With --xoauth2: the app's client id.
    #[arg(long, value_name = "GUID")]
    client_id: Option<uuid::Uuid>,
    /// With --xoauth2: the token scope (a sovereign cloud has its own).
    #[arg(long, default_value = crate::adapters::smtp::exchange_online::DEFAULT_SCOPE)]
    scope: String,
    /// With --xoauth2: the Entra login endpoint.
    #[arg(long, default_value = "https://login.microsoftonline.com")]
    authority_host: url::Url,
}

impl SmtpTestArgs {
    fn host(&self) -> &str {
        match (&self.host, self.xoauth2) {
            (Some(host), _) => host,
            (None, true) => crate::adapters::smtp::exchange_online::DEFAULT_HOST,
            (None, false) => "smtp.azurecomm.net",
        }
    }
}

/// What proves the credential: the ACS-style relay session, or a token then XOAUTH2.
enum Check {
    Relay(SmtpVerifier),
    ExchangeOnline(ExchangeOnlineVerifier, AppRef),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    Deliver,
    Handshake,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TlsArg {
    /// Plain connection upgraded with STARTTLS (ACS on 587 and 25).
    Starttls,
    /// TLS from the first byte (465-style relays; not ACS).
    Implicit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum AuthArg {
    Login,
    Plain,
}

/// `entra-rotator smtp-test`.
pub(crate) async fn run(args: SmtpTestArgs) -> ExitCode {
    let prepared = password(&args).and_then(|password| Ok((password, verifier(&args)?)));
    let (password, (verifier, trust)) = match prepared {
        Ok(prepared) => prepared,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_INVALID_INPUT);
        }
    };
    let (tls_mode, tls_name) = match args.tls {
        TlsArg::Starttls => (TlsMode::StartTls, "STARTTLS"),
        TlsArg::Implicit => (TlsMode::Implicit, "implicit TLS"),
    };
    println!("Connecting to {}:{} ({tls_name})", args.host(), args.port);
    let report = probe(args.host(), args.port, tls_mode, &trust, args.timeout.0).await;
    print_probe(&report);

    let mechanism = match (args.auth, args.xoauth2) {
        (_, true) => "XOAUTH2",
        (AuthArg::Login, _) => "LOGIN",
        (AuthArg::Plain, _) => "PLAIN",
    };
    let mode = match args.mode {
        ModeArg::Deliver => ProofMode::Deliver,
        ModeArg::Handshake => ProofMode::Handshake,
    };
    // Announce the steps only when the look at the relay got through: after a failed
    // connection they would describe something that is not going to happen.
    if report.stopped.is_none() {
        if let Check::ExchangeOnline(_, app) = &verifier {
            println!(
                "Getting a token for {} for application {} in tenant {} at {}",
                args.scope, app.client_id, app.tenant_id, args.authority_host
            );
        }
        println!("Authenticating with AUTH {mechanism} as {}", args.username);
        match mode {
            ProofMode::Deliver => println!("Sending a test mail from {} to {}", args.from, args.to),
            ProofMode::Handshake => println!(
                "Checking that the relay accepts sender {} and recipient {}, without sending (RSET after RCPT TO)",
                args.from, args.to
            ),
        }
    }
    let outcome = match &verifier {
        Check::Relay(verifier) => verifier.check(&args.username, &password, mode).await,
        Check::ExchangeOnline(verifier, app) => verifier.check(app, &password, mode).await,
    };
    match outcome {
        Ok(()) => {
            match mode {
                ProofMode::Deliver => println!("OK: the relay accepted the test mail (AUTH {mechanism})."),
                ProofMode::Handshake => println!(
                    "OK: the relay accepted the credential, the sender and the recipient (AUTH {mechanism}); no mail was sent, so delivery itself is not proven."
                ),
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            // The shared explanation names the configuration file's settings; here they are flags.
            let message = error
                .message
                .replace("under tls.extraRootCertificates", "with --extra-root-certificate")
                .replace("tls.extraRootCertificates", "--extra-root-certificate")
                .replace("set authMechanism: LOGIN", "use --auth login");
            println!("FAILED ({:?}): {message}", error.kind);
            if error.kind == VerifyFailureKind::BadCredentials {
                println!(
                    "A secret created in the last few minutes may not have replicated in Entra yet: wait a minute and run smtp-test again."
                );
            }
            ExitCode::from(EXIT_SEND_FAILED)
        }
    }
}

fn print_probe(report: &ProbeReport) {
    if let Some(greeting) = &report.greeting {
        println!("Greeting: 220 {greeting}");
    }
    if !report.capabilities_plain.is_empty() {
        println!("EHLO capabilities before STARTTLS:");
        for capability in &report.capabilities_plain {
            println!("  {capability}");
        }
    }
    if let Some(tls) = &report.tls {
        println!("TLS: {} with {}", tls.version, tls.cipher_suite);
    }
    if !report.capabilities_tls.is_empty() {
        println!("EHLO capabilities over TLS:");
        for capability in &report.capabilities_tls {
            println!("  {capability}");
        }
    }
    if let Some(stopped) = &report.stopped {
        println!("The look at the relay stopped early: {stopped}");
    }
}

/// The verifier for these flags and the trust it uses.
fn verifier(
    args: &SmtpTestArgs,
) -> Result<(Check, crate::adapters::http::TlsTrust), String> {
    if args.username.trim().is_empty() {
        return Err(
            "--username is empty; use the custom SMTP username or <resource>|<appId>|<tenantId>"
                .into(),
        );
    }
    let username = Template::parse(&args.username)
        .map_err(|e| format!("--username {:?} cannot be used: {e}", args.username))?;
    let trust = load_trust(&TlsSettings {
        extra_root_certificates: args.extra_root_certificate.clone(),
    })
    .map_err(|e| {
        e.to_string()
            .replace("tls.extraRootCertificates", "--extra-root-certificate")
    })?;
    if args.xoauth2 {
        let (Some(tenant_id), Some(client_id)) = (args.tenant_id, args.client_id) else {
            return Err("--xoauth2 needs --tenant-id and --client-id (the app whose secret buys the token)".into());
        };
        let settings = ExchangeOnlineVerification {
            host: args.host().to_string(),
            port: args.port,
            mailbox: args.username.clone(),
            from: args.from.clone(),
            to: args.to.clone(),
            scope: args.scope.clone(),
            authority_host: args.authority_host.clone(),
            timeout: args.timeout.0,
            mode: ProofMode::Deliver,
        };
        let http = crate::adapters::http::http_client(&trust, args.timeout.0).map_err(|e| e.to_string())?;
        let verifier = ExchangeOnlineVerifier::new(settings, &trust, http).map_err(|e| e.to_string())?;
        let app = AppRef { tenant_id, client_id, object_id: None };
        return Ok((Check::ExchangeOnline(verifier, app), trust));
    }
    let settings = SmtpVerification {
        port: args.port,
        tls: match args.tls {
            TlsArg::Starttls => TlsMode::StartTls,
            TlsArg::Implicit => TlsMode::Implicit,
        },
        mechanism: match args.auth {
            AuthArg::Login => AuthMechanism::Login,
            AuthArg::Plain => AuthMechanism::Plain,
        },
        timeout: args.timeout.0,
        ..SmtpVerification::new(args.host(), username, &args.from, &args.to)
    };
    let verifier = SmtpVerifier::new(settings, &trust).map_err(|e| e.to_string())?;
    Ok((Check::Relay(verifier), trust))
}

/// The password from --password-env, --password-file, or a no-echo prompt on a terminal.
fn password(args: &SmtpTestArgs) -> Result<SecretString, String> {
    let value = if let Some(variable) = &args.password_env {
        std::env::var(variable)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                format!("--password-env {variable}: the environment variable is not set or empty")
            })?
    } else if let Some(path) = &args.password_file {
        // The whole file is a second copy of the password (with its line end): wiped too.
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("--password-file {}: cannot read it: {e}", path.display()))?,
        );
        text.trim_end_matches(['\r', '\n']).to_string()
    } else if std::io::stdin().is_terminal() {
        rpassword::prompt_password("SMTP password (the app's client secret, not shown): ")
            .map_err(|e| format!("could not read the password from the terminal: {e}"))?
    } else {
        return Err("no password: give --password-env NAME or --password-file PATH (a prompt needs a terminal)".into());
    };
    // Copied into the SecretString, then wiped: `SecretString::from(String)` may move it to
    // a smaller allocation and free the old one unwiped (a prompt's String has spare room).
    let value = zeroize::Zeroizing::new(value);
    if value.is_empty() {
        return Err(
            "the password is empty; it is the Entra application's client secret value".into(),
        );
    }
    Ok(SecretString::from(value.as_str()))
}
