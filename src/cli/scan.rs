//! `entra-rotator scan`: every password and certificate credential of the tenant's app
//! registrations (or of those matching a name, or owned by the rotator) with its expiry and
//! days left, as a table, JSON, CSV or an HTML page, and an exit code for pipelines.
//!
//! The command-line face of [`crate::scan`]: flags, sign-in, and the output formats (the
//! page is [`crate::scan::html`]'s). Rows are written as Graph's pages arrive (one page in
//! memory however large the tenant), so the table has fixed column widths, the JSON array
//! is closed only at the end, and the page's summary is written after its rows.

use super::EXIT_INVALID_INPUT;
use crate::adapters::graph::{
    GraphClient, GraphConfig, ListScope, ListedApplication, MAX_PAGE_SIZE,
};
use crate::adapters::http::http_client;
use crate::adapters::identity::{RotatorCredential, rotator_credential};
use crate::assembly::{load_trust, resolve_credential};
use crate::config::duration::HumanDuration;
use crate::config::{AzureSettings, CredentialConfig, TlsSettings};
use crate::scan::html::HtmlReport;
use crate::scan::{Classifier, Row};
use crate::engine::ports::GraphError;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use url::Url;
use uuid::Uuid;

/// Exit code when at least one credential expires within `--fail-within`.
const EXIT_EXPIRING: u8 = 1;
/// Exit code when Graph could not be read to the end (network, throttling beyond the retry
/// budget, Graph errors); the output is then incomplete.
const EXIT_INCOMPLETE: u8 = 3;
/// The "expiring" status without `--fail-within`.
const DEFAULT_WARN_WITHIN_DAYS: u64 = 30;

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("identity").args(["client_secret_env", "client_secret_file", "managed_identity", "azure_cli"])))]
pub(crate) struct ScanArgs {
    /// Take Graph, the sign-in and extra trusted roots from the `azure:` and `tls:`
    /// sections of a `run` configuration file (its other sections are ignored).
    #[arg(long, short, conflicts_with_all = ["tenant_id", "client_id", "identity", "graph_url", "authority_host", "extra_root_certificate"])]
    config: Option<PathBuf>,
    /// The tenant to sign in to (default: $AZURE_TENANT_ID).
    #[arg(long)]
    tenant_id: Option<String>,
    /// The rotator's application (client) id (default: $AZURE_CLIENT_ID).
    #[arg(long)]
    client_id: Option<String>,
    /// Sign in with the client secret held in this environment variable.
    #[arg(long, value_name = "NAME")]
    client_secret_env: Option<String>,
    /// Sign in with the client secret read from this file.
    #[arg(long, value_name = "PATH")]
    client_secret_file: Option<PathBuf>,
    /// Sign in with the machine's managed identity (user-assigned when --client-id is given).
    #[arg(long)]
    managed_identity: bool,
    /// Sign in as whoever ran `az login`.
    #[arg(long)]
    azure_cli: bool,
    /// Microsoft Graph's base URL (national clouds: https://graph.microsoft.us, ...).
    #[arg(long, value_name = "URL")]
    graph_url: Option<Url>,
    /// The Entra sign-in endpoint (national clouds: https://login.microsoftonline.us, ...).
    #[arg(long, value_name = "URL")]
    authority_host: Option<Url>,
    /// A PEM file of CA certificates to trust besides the system's (TLS-inspecting proxies).
    #[arg(long, value_name = "PATH")]
    extra_root_certificate: Vec<PathBuf>,
    /// Only applications whose display name starts with this text (case-insensitive;
    /// filtered by Graph with `$filter=startswith(displayName,'…')`).
    #[arg(long, value_name = "PREFIX")]
    filter: Option<String>,
    /// Only applications whose display name contains this text (case-insensitive; Graph
    /// cannot filter on substrings, so every page is still read).
    #[arg(long, value_name = "TEXT")]
    contains: Option<String>,
    /// Only the applications the rotator's service principal owns (the ones
    /// Application.ReadWrite.OwnedBy lets it rotate).
    #[arg(long)]
    owned: bool,
    /// Also list each application's owners (json, csv and html): users by
    /// userPrincipalName, service principals by name; at most 20 per application, as
    /// Graph expands them, 100 applications per request. Users' names need
    /// User.ReadBasic.All besides; without it Graph gives their object ids.
    #[arg(long)]
    owners: bool,
    /// What to write (default: table).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Write to this file instead of standard output. `--output json` (and csv, table,
    /// html), the earlier spelling of `--format`, still chooses the format; a file named
    /// like a format is written as `./json`.
    #[arg(long, short, value_name = "FILE")]
    output: Option<String>,
    /// Exit with code 1 when any credential expires within this window, e.g. 30d
    /// (already expired ones count, unless --ignore-expired).
    /// At most 36500d (100 years).
    #[arg(long, value_name = "DURATION", value_parser = parse_fail_within)]
    fail_within: Option<HumanDuration>,
    /// Leave out credentials that have already expired.
    #[arg(long)]
    ignore_expired: bool,
    /// Applications per Graph request (1 to 999).
    #[arg(long, default_value_t = MAX_PAGE_SIZE, value_parser = clap::value_parser!(u16).range(1..=999))]
    page_size: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Fixed-width columns for people.
    Table,
    /// One JSON array of credential objects.
    Json,
    /// RFC 4180 CSV with a header line.
    Csv,
    /// One self-contained HTML page: summary, expiries by month, a sortable table.
    Html,
}

/// The format and the file (`None`: standard output) the flags ask for.
fn destination(args: &ScanArgs) -> (Format, Option<PathBuf>) {
    match (&args.format, &args.output) {
        (None, Some(output)) => match Format::from_str(output, false) {
            Ok(format) => (format, None),
            Err(_) => (Format::Table, Some(PathBuf::from(output))),
        },
        (format, output) => (format.unwrap_or(Format::Table), output.as_ref().map(PathBuf::from)),
    }
}

/// Which applications were listed, in words, for the page's heading.
fn scope_in_words(args: &ScanArgs) -> String {
    let mut scope = if args.owned { "Applications the rotator owns".to_string() } else { "All applications".to_string() };
    let prefix = args.filter.as_deref().filter(|p| !p.is_empty());
    if let Some(prefix) = prefix {
        scope.push_str(&format!(" whose name starts with \"{prefix}\""));
    }
    if let Some(text) = &args.contains {
        scope.push_str(&format!("{} whose name contains \"{text}\"", if prefix.is_some() { " and" } else { "" }));
    }
    if args.ignore_expired {
        scope.push_str(", expired credentials left out");
    }
    scope
}

/// The sections of a `run` configuration file that `scan` reads; the rest is ignored, so
/// a file without `rotations` works too.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConnectionSettings {
    #[serde(default)]
    azure: AzureSettings,
    #[serde(default)]
    tls: TlsSettings,
}

/// The longest `--fail-within`: every credential Entra issues ends well within it, and
/// "now" plus it stays on the calendar (`300000y` used to overflow and panic).
const MAX_FAIL_WITHIN_DAYS: u64 = 36_500;

fn parse_fail_within(text: &str) -> Result<HumanDuration, String> {
    let window = HumanDuration::parse(text)?;
    let mut problems = Vec::new();
    let max = HumanDuration::days(MAX_FAIL_WITHIN_DAYS);
    window.check_range("--fail-within", HumanDuration::seconds(0), max, "credentials end well within 100 years", &mut problems);
    problems.pop().map_or(Ok(window), Err)
}

/// `entra-rotator scan`.
pub(crate) async fn run(args: ScanArgs) -> ExitCode {
    let (client, scope) = match connect(&args) {
        Ok(connected) => connected,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_INVALID_INPUT);
        }
    };
    let now = Utc::now();
    let warn_within = args
        .fail_within
        .unwrap_or(HumanDuration::days(DEFAULT_WARN_WITHIN_DAYS));
    let horizon = now.checked_add_signed(warn_within.chrono()).unwrap_or(DateTime::<Utc>::MAX_UTC);
    let (format, file) = destination(&args);
    if args.owners && format == Format::Table {
        eprintln!("error: --owners: the table has no column for owners; add --format json, csv or html");
        return ExitCode::from(EXIT_INVALID_INPUT);
    }
    let out: Box<dyn Write> = match &file {
        Some(path) => match std::fs::File::create(path) {
            Ok(file) => Box::new(file),
            Err(error) => {
                eprintln!("error: cannot write the scan to {}: {error}. Check that its folder exists and is writable", path.display());
                return ExitCode::from(EXIT_INVALID_INPUT);
            }
        },
        None => Box::new(std::io::stdout()),
    };
    let mut report = Report::new(format, out, now, horizon, args.ignore_expired, args.owners);
    let contains = args.contains.as_deref().map(str::to_lowercase);
    let prefix_after_listing = match &scope {
        ListScope::OwnedBy { .. } => args.filter.as_deref().map(str::to_lowercase),
        ListScope::Tenant { .. } => None,
    };
    let wanted = |app: &ListedApplication| {
        let name = app.display_name.to_lowercase();
        contains.as_deref().is_none_or(|c| name.contains(c))
            && prefix_after_listing
                .as_deref()
                .is_none_or(|p| name.starts_with(p))
    };

    let progress = Progress::new();
    let outcome = async {
        let mut pages = if args.owners {
            client.list_applications_with_owners(&scope, args.page_size)?
        } else {
            client.list_applications(&scope, args.page_size)?
        };
        report.begin(&scope_in_words(&args))?;
        while let Some(page) = pages.next_page().await? {
            for app in page.iter().filter(|a| wanted(a)) {
                report.application(app)?;
            }
            report.scanned += page.len() as u64;
            report.flush()?;
            progress.show(report.scanned);
        }
        report.end()?;
        Ok::<_, ScanError>(())
    }
    .await;
    progress.clear();
    if let Err(ScanError::Graph(error)) = &outcome {
        // The page says so itself, above everything it lists.
        let reason = format!("the scan stopped after {} applications: {error}", report.scanned);
        if let Err(error) = report.end_incomplete(&reason) {
            eprintln!("error: cannot write the scan output: {error}");
        }
    }
    let written_to = file.map(|path| format!(" (written to {})", path.display())).unwrap_or_default();
    match outcome {
        Ok(()) => {
            eprintln!("{}{written_to}", report.summary(warn_within));
            // Expired credentials expire "within" any window.
            if args.fail_within.is_some() && report.classifier.expired + report.classifier.expiring > 0 {
                ExitCode::from(EXIT_EXPIRING)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(ScanError::Output(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(ScanError::Output(error)) => {
            eprintln!("error: cannot write the scan output: {error}");
            ExitCode::from(EXIT_INCOMPLETE)
        }
        Err(ScanError::Graph(error)) => {
            let (code, advice) = graph_failure(&error);
            eprintln!(
                "error: the scan stopped after {} applications: {error}{written_to}\n{advice}",
                report.scanned
            );
            ExitCode::from(code)
        }
    }
}

/// Builds the Graph client and the listing scope from the flags or the file.
fn connect(args: &ScanArgs) -> Result<(GraphClient, ListScope), String> {
    let settings = match &args.config {
        Some(path) => read_connection_settings(path)?,
        None => settings_from_flags(args)?,
    };
    let trust = load_trust(&settings.tls).map_err(|e| e.to_string())?;
    let http = http_client(&trust, Duration::from_secs(60)).map_err(|e| e.to_string())?;
    let identity = resolve_credential(&settings.azure.credential).map_err(|e| e.to_string())?;
    let scope = if args.owned {
        let client_id = own_client_id(&identity)?;
        ListScope::OwnedBy { client_id }
    } else {
        ListScope::Tenant {
            name_prefix: args.filter.clone().filter(|p| !p.is_empty()),
        }
    };
    let credential = rotator_credential(
        &identity,
        Some(&settings.azure.authority_host),
        http.clone(),
    )
    .map_err(|e| e.to_string())?;
    let client = GraphClient::new(
        GraphConfig::new(settings.azure.graph_url.clone()),
        credential,
        http,
    )
    .map_err(|e| e.to_string())?;
    Ok((client, scope))
}

fn read_connection_settings(path: &Path) -> Result<ConnectionSettings, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the configuration {}: {e}", path.display()))?;
    serde_yaml::from_str(&text).map_err(|e| {
        format!(
            "{}: the azure: or tls: section is not valid: {e}. See examples/rotator.yaml",
            path.display()
        )
    })
}

fn settings_from_flags(args: &ScanArgs) -> Result<ConnectionSettings, String> {
    let credential = if args.client_secret_env.is_some() || args.client_secret_file.is_some() {
        let need = |value: &Option<String>, flag: &str, variable: &str| {
            let from_env = || std::env::var(variable).ok().filter(|v| !v.is_empty());
            value.clone().or_else(from_env).ok_or_else(|| {
                format!("signing in with a client secret needs {flag} (or the {variable} environment variable)")
            })
        };
        CredentialConfig::ClientSecret {
            tenant_id: need(&args.tenant_id, "--tenant-id", "AZURE_TENANT_ID")?,
            client_id: need(&args.client_id, "--client-id", "AZURE_CLIENT_ID")?,
            secret_env: args.client_secret_env.clone(),
            secret_file: args.client_secret_file.clone(),
        }
    } else if args.managed_identity {
        CredentialConfig::ManagedIdentity {
            client_id: args.client_id.clone(),
        }
    } else if args.azure_cli {
        CredentialConfig::AzureCli {
            tenant_id: args.tenant_id.clone(),
        }
    } else {
        CredentialConfig::WorkloadIdentity {
            tenant_id: args.tenant_id.clone(),
            client_id: args.client_id.clone(),
            token_file: None,
        }
    };
    let mut azure = AzureSettings {
        credential,
        ..AzureSettings::default()
    };
    if let Some(url) = &args.graph_url {
        azure.graph_url = url.clone();
    }
    if let Some(url) = &args.authority_host {
        azure.authority_host = url.clone();
    }
    let tls = TlsSettings {
        extra_root_certificates: args.extra_root_certificate.clone(),
    };
    Ok(ConnectionSettings { azure, tls })
}

/// The client id whose service principal's owned applications `--owned` lists.
fn own_client_id(identity: &RotatorCredential) -> Result<Uuid, String> {
    let client_id = identity.client_id().ok_or_else(|| {
        format!(
            "--owned lists what the rotator's own service principal owns, but a {} sign-in does not say which \
             application that is; give its client id (--client-id, or azure.credential.clientId)",
            identity.kind()
        )
    })?;
    client_id
        .parse()
        .map_err(|_| format!("the rotator's client id {client_id:?} is not a GUID; check --client-id or azure.credential.clientId"))
}

enum ScanError {
    Graph(GraphError),
    Output(std::io::Error),
}

impl From<GraphError> for ScanError {
    fn from(error: GraphError) -> Self {
        ScanError::Graph(error)
    }
}

impl From<std::io::Error> for ScanError {
    fn from(error: std::io::Error) -> Self {
        ScanError::Output(error)
    }
}

/// The exit code and the advice for a Graph failure: refusals of who we are or what we
/// asked are the user's to fix (2); anything else left the scan incomplete (3).
fn graph_failure(error: &GraphError) -> (u8, &'static str) {
    match error {
        GraphError::Auth { .. } => (
            EXIT_INVALID_INPUT,
            "Check the sign-in: tenant id, client id and secret, or the workload/managed identity.",
        ),
        GraphError::Api {
            status: 401 | 403, ..
        } => (
            EXIT_INVALID_INPUT,
            "scan needs the Microsoft Graph application permission Application.Read.All with admin consent \
             (for --owned, Application.ReadWrite.OwnedBy is enough).",
        ),
        GraphError::Api {
            status: 400 | 404, ..
        } => (
            EXIT_INVALID_INPUT,
            "Check --filter, and for --owned that the rotator's client id has a service principal in this tenant.",
        ),
        _ => (
            EXIT_INCOMPLETE,
            "The output above is incomplete. Run the scan again; a smaller --page-size helps when Graph times out.",
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Rows and their formats
// ---------------------------------------------------------------------------------------------

const CSV_HEADER: &str = "appDisplayName,appId,objectId,credentialType,keyId,credentialName,startDateTime,endDateTime,daysLeft,status";

/// Column widths of the table; longer values are cut with `…`.
const TABLE_COLUMNS: [(&str, usize); 7] = [
    ("STATUS", 9),
    ("DAYS", 6),
    ("EXPIRES (UTC)", 17),
    ("TYPE", 11),
    ("APPLICATION", 30),
    ("APP ID", 36),
    ("KEY ID", 36),
];

/// Writes rows in the chosen format and counts what it saw.
struct Report {
    format: Format,
    out: std::io::BufWriter<Box<dyn Write>>,
    classifier: Classifier,
    /// The page's counters, for `--format html`.
    html: Option<HtmlReport>,
    /// `--owners`: an owners field or column.
    owners: bool,
    /// Whether the output's beginning is written (a page is closed only then).
    begun: bool,
    /// Rows written so far (the JSON array needs to know the first).
    written: u64,
    scanned: u64,
}

impl Report {
    fn new(
        format: Format,
        out: Box<dyn Write>,
        now: DateTime<Utc>,
        horizon: DateTime<Utc>,
        ignore_expired: bool,
        owners: bool,
    ) -> Self {
        Self {
            format,
            out: std::io::BufWriter::new(out),
            classifier: Classifier::new(now, horizon, ignore_expired),
            html: (format == Format::Html).then(|| HtmlReport::new(now, owners)),
            owners,
            begun: false,
            written: 0,
            scanned: 0,
        }
    }

    fn begin(&mut self, scope: &str) -> std::io::Result<()> {
        self.begun = true;
        match self.format {
            Format::Html => match &self.html {
                Some(html) => html.begin(&mut self.out, scope),
                None => Ok(()),
            },
            Format::Table => {
                let header: Vec<String> = TABLE_COLUMNS
                    .iter()
                    .map(|(name, width)| fit(name, *width))
                    .collect();
                writeln!(self.out, "{}  NAME", header.join("  "))
            }
            Format::Json => write!(self.out, "["),
            Format::Csv if self.owners => write!(self.out, "{CSV_HEADER},owners\r\n"),
            Format::Csv => write!(self.out, "{CSV_HEADER}\r\n"),
        }
    }

    fn application(&mut self, app: &ListedApplication) -> std::io::Result<()> {
        for row in self.classifier.rows(app) {
            self.written += 1;
            let first = self.written == 1;
            match self.format {
                Format::Table => write_table_row(&mut self.out, &row)?,
                Format::Json => write_json_row(&mut self.out, &row, first, self.owners)?,
                Format::Csv => write_csv_row(&mut self.out, &row, self.owners)?,
                Format::Html => {
                    if let Some(html) = &mut self.html {
                        html.row(&mut self.out, &row)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    fn end(&mut self) -> std::io::Result<()> {
        if let Some(html) = &self.html {
            html.end(&mut self.out, self.scanned, None)?;
        }
        if self.format == Format::Json {
            writeln!(self.out, "{}]", if self.written == 0 { "" } else { "\n" })?;
        }
        self.out.flush()
    }

    /// Closes the page with what stopped the scan; other formats stay as far as they got.
    fn end_incomplete(&mut self, reason: &str) -> std::io::Result<()> {
        if let Some(html) = self.html.as_ref().filter(|_| self.begun) {
            html.end(&mut self.out, self.scanned, Some(reason))?;
        }
        self.out.flush()
    }

    fn summary(&self, window: HumanDuration) -> String {
        format!(
            "scanned {} applications: {} credentials listed, {} expired, {} expiring within {window}",
            thousands(self.scanned),
            thousands(self.written),
            self.classifier.expired,
            self.classifier.expiring,
        )
    }
}

fn write_table_row(out: &mut impl Write, row: &Row<'_>) -> std::io::Result<()> {
    let cells = [
        row.status.name().to_string(),
        row.days_left
            .map(|d| d.to_string())
            .unwrap_or_else(|| "-".into()),
        row.end
            .map(|e| e.format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_else(|| "never".into()),
        row.kind.to_string(),
        printable(&row.app.display_name),
        row.app.app_id.to_string(),
        row.key_id.to_string(),
    ];
    let fitted: Vec<String> = cells
        .iter()
        .zip(TABLE_COLUMNS)
        .map(|(cell, (_, width))| fit(cell, width))
        .collect();
    writeln!(
        out,
        "{}  {}",
        fitted.join("  "),
        printable(row.name.unwrap_or(""))
    )
}

fn write_json_row(out: &mut impl Write, row: &Row<'_>, first: bool, owners: bool) -> std::io::Result<()> {
    let mut value = serde_json::json!({
        "appDisplayName": row.app.display_name,
        "appId": row.app.app_id,
        "objectId": row.app.object_id,
        "credentialType": row.kind,
        "keyId": row.key_id,
        "credentialName": row.name,
        "startDateTime": row.start.map(timestamp),
        "endDateTime": row.end.map(timestamp),
        "daysLeft": row.days_left,
        "status": row.status.name(),
        "managedBy": row.managed_by,
    });
    if owners {
        value["owners"] = serde_json::json!(row.app.owners);
    }
    write!(out, "{}\n  {value}", if first { "" } else { "," })
}

fn write_csv_row(out: &mut impl Write, row: &Row<'_>, owners: bool) -> std::io::Result<()> {
    let mut fields = vec![
        spreadsheet_text(&row.app.display_name),
        row.app.app_id.to_string(),
        row.app.object_id.to_string(),
        row.kind.to_string(),
        row.key_id.to_string(),
        spreadsheet_text(row.name.unwrap_or("")),
        row.start.map(timestamp).unwrap_or_default(),
        row.end.map(timestamp).unwrap_or_default(),
        row.days_left.map(|d| d.to_string()).unwrap_or_default(),
        row.status.name().to_string(),
    ];
    if owners {
        fields.push(spreadsheet_text(&row.app.owners.join("; ")));
    }
    let quoted: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
    write!(out, "{}\r\n", quoted.join(","))
}

fn timestamp(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Display and credential names are anybody's text: one starting with `=`, `+`, `-`, `@`,
/// a tab or a carriage return would be a formula in a spreadsheet (`=HYPERLINK(...)`), so it
/// gets a leading `'`, as OWASP's CSV injection guidance says. Only these free-text columns:
/// `daysLeft` is a number and may rightly start with `-`.
fn spreadsheet_text(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_string()
    }
}

/// RFC 4180: quote a field holding a comma, a quote or a line break; double its quotes.
fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

/// Display names are anybody's text: no control characters reach the terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `text` padded or cut (with `…`) to exactly `width` characters.
fn fit(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width {
        format!("{text:<width$}")
    } else {
        let cut: String = text.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// `12000` → `12,000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// "scanned 12,000 apps…" on stderr, only when a person watches it.
struct Progress {
    enabled: bool,
}

impl Progress {
    fn new() -> Self {
        Self {
            enabled: std::io::stderr().is_terminal(),
        }
    }

    fn show(&self, scanned: u64) {
        if self.enabled {
            eprint!("\r\x1b[2Kscanned {} apps…", thousands(scanned));
        }
    }

    fn clear(&self) {
        if self.enabled {
            eprint!("\r\x1b[2K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_cells() {
        assert_eq!(thousands(12_000), "12,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("ab", 4), "ab  ");
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
        for formula in ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(spreadsheet_text(formula), format!("'{formula}"));
        }
        assert_eq!(spreadsheet_text("Contoso = mail"), "Contoso = mail");
        assert_eq!(printable("a\x1b[31mb\n"), "a?[31mb?");
    }
}
