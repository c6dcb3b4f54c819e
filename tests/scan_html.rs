//! `entra-rotator scan --format html`: the real binary against the Graph stand-in over
//! sockets, the page it writes checked as a file (self-contained, escaped, small) and in a
//! real browser: headless Chromium runs the page's script, and the numbers it shows are
//! compared with `scan --format json` of the same tenant. The screenshot it takes is kept
//! at `target/tmp/scan-report.png` (a CI artifact; `docs/scan-report.png` is a copy).
//!
//! Chromium comes from `ENTRA_ROTATOR_CHROMIUM` (set by .ci/run) or `chromium` on `PATH`.
//! Without it the browser test prints a skip notice, except under CI, where it fails.

#[path = "support/tool.rs"]
mod tool;

use tool::tool;
use chrono::{Duration as ChronoDuration, Utc};
use entra_rotator_standins::scenario::Scenario;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// A displayName an attacker chose: run as a script, it would retitle the page.
const HOSTILE: &str =
    "<script>document.title='pwned'</script><img src=x onerror=alert(1)> Evil relay";

async fn scan(scenario: &Scenario, extra: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_entra-rotator"))
        .args(["scan", "--config", scenario.config_path.to_str().unwrap()])
        .args(extra)
        .env_remove("RUST_LOG")
        .env_remove("AZURE_TENANT_ID")
        .env_remove("AZURE_CLIENT_ID")
        .output()
        .await
        .unwrap()
}

fn all(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Adds a password credential ending `days` from now (`name` as its displayName).
fn password(scenario: &Scenario, object_id: uuid::Uuid, name: &str, days: i64) {
    let now = Utc::now();
    scenario
        .tenant
        .add_replicated_password(
            object_id,
            Some(name.into()),
            now - ChronoDuration::days(30),
            now + ChronoDuration::days(days) + ChronoDuration::hours(1),
        )
        .unwrap();
}

/// The stand-in tenant of the README's screenshot: secrets expired, due this month, this
/// quarter and later, a certificate, one of ours, and a hostile name.
fn seed(scenario: &Scenario) {
    let apps: &[(&str, &[i64])] = &[
        ("Contoso helpdesk relay", &[-3]),
        ("Dify mail (prod)", &[12]),
        ("Billing notifications", &[45, 400]),
        ("HR portal SMTP", &[75]),
        ("Marketing newsletters", &[160]),
        ("Status page alerts", &[230]),
        ("Legacy CRM connector", &[-40, 8]),
        ("Support ticket mailer", &[320]),
        ("Password reset service", &[27]),
        ("Invoice archive", &[540]),
    ];
    for (name, ends) in apps {
        let app = scenario.tenant.register_app(name);
        for days in *ends {
            password(scenario, app.object_id, "smtp relay", *days);
        }
    }
    let billing = scenario
        .tenant
        .apps()
        .into_iter()
        .find(|a| a.display_name == "Billing notifications")
        .unwrap();
    let now = Utc::now();
    scenario.graph.add_certificate(
        billing.object_id,
        "CN=billing.contoso.example",
        now - ChronoDuration::days(10),
        now + ChronoDuration::days(61),
    );
    password(
        scenario,
        scenario.target.object_id,
        "entra-rotator:dify/dify-smtp",
        300,
    );
    let hostile = scenario.tenant.register_app(HOSTILE);
    password(scenario, hostile.object_id, "<b>bold</b> & \"quoted\"", 190);
    scenario
        .graph
        .add_user_owner(hostile.object_id, "mallory@contoso.example");
    scenario
        .graph
        .add_user_owner(hostile.object_id, "<i>eve</i>@contoso.example");
    scenario
        .graph
        .add_user_owner(billing.object_id, "billing-team@contoso.example");
}

fn json_rows(output: &Output) -> Vec<Value> {
    let value: Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", all(output)));
    value.as_array().expect("a JSON array").clone()
}

/// The summary the page must show, worked out from the JSON rows.
fn expected_summary(rows: &[Value]) -> BTreeMap<&'static str, u64> {
    let mut counts: BTreeMap<&'static str, u64> = [
        "expired",
        "within-30-days",
        "within-90-days",
        "later",
        "no-expiry",
        "managed",
    ]
    .into_iter()
    .map(|k| (k, 0))
    .collect();
    for row in rows {
        let bucket = match (row["status"].as_str(), row["daysLeft"].as_i64()) {
            (Some("expired"), _) => "expired",
            (_, None) => "no-expiry",
            (_, Some(days)) if days < 30 => "within-30-days",
            (_, Some(days)) if days < 90 => "within-90-days",
            _ => "later",
        };
        *counts.get_mut(bucket).unwrap() += 1;
        if !row["managedBy"].is_null() {
            *counts.get_mut("managed").unwrap() += 1;
        }
    }
    counts
}

/// The number in the element with this id (`<span … id=count-expired>3</span>`).
fn count(page: &str, id: &str) -> u64 {
    let at = page
        .find(&format!("id=\"count-{id}\""))
        .or_else(|| page.find(&format!("id=count-{id}")))
        .unwrap_or_else(|| panic!("no count-{id} on the page"));
    let text = &page[at..];
    let value = &text[text.find('>').unwrap() + 1..text.find('<').unwrap()];
    value
        .parse()
        .unwrap_or_else(|_| panic!("count-{id} is not a number: {value:?}"))
}

/// The text of each cell of each body row of the table, in page order.
fn table_rows(page: &str) -> Vec<Vec<String>> {
    let body = &page[page.find("<tbody>").expect("a table body")
        ..page.find("</tbody>").expect("the end of the table")];
    body.split("<tr")
        .skip(1)
        .map(|row| row.split("<td>").skip(1).map(cell_text).collect())
        .collect()
}

/// A cell's text: tags dropped, entities decoded.
fn cell_text(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#10003;", "✓")
        .replace("&amp;", "&")
        .trim()
        .to_string()
}

fn chromium() -> Option<PathBuf> {
    tool("ENTRA_ROTATOR_CHROMIUM", "chromium", &["--version"], "the page is untested in a browser")
}

/// Runs headless Chromium on `page` with `extra` flags, from a fresh profile, with
/// nothing of its own reaching the network.
async fn headless(chromium: &Path, page: &Path, extra: &[String]) -> Output {
    let profile = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
        ])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .kill_on_drop(true)
        .output();
    // Against a hang only; nothing is measured.
    let output = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("chromium finished")
        .unwrap();
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[tokio::test]
async fn the_page_shows_in_chromium_what_the_json_says() {
    let scenario = Scenario::start().await.unwrap();
    seed(&scenario);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let page = dir.join("scan-report.html");
    let html = scan(
        &scenario,
        &[
            "--format",
            "html",
            "--owners",
            "--output",
            page.to_str().unwrap(),
        ],
    )
    .await;
    assert!(html.status.success(), "{}", all(&html));
    assert!(
        all(&html).contains(&format!("(written to {})", page.display())),
        "{}",
        all(&html)
    );
    let json = scan(&scenario, &["--format", "json", "--owners"]).await;
    assert!(json.status.success(), "{}", all(&json));
    let rows = json_rows(&json);
    let expected = expected_summary(&rows);
    assert!(
        expected.values().filter(|n| **n > 0).count() >= 5,
        "the tenant has something in every bucket: {expected:?}"
    );

    let Some(chromium) = chromium() else { return };
    let dumped = headless(&chromium, &page, &["--dump-dom".to_string()]).await;
    let dom = String::from_utf8(dumped.stdout).unwrap();

    // The hostile name stayed text: no script of its own ran, no element of its own exists.
    assert!(
        dom.contains("<title>Entra ID credential expiry, "),
        "the page kept its title: {}",
        &dom[..dom.len().min(600)]
    );
    assert_eq!(
        dom.matches("<script").count(),
        1,
        "only the page's own script"
    );
    assert!(!dom.contains("<img"), "no element from a display name");

    for (id, number) in &expected {
        assert_eq!(
            count(&dom, id),
            *number,
            "count-{id} on the page, against the JSON"
        );
    }
    assert_eq!(count(&dom, "credentials"), rows.len() as u64);
    assert_eq!(
        count(&dom, "applications"),
        scenario.tenant.apps().len() as u64,
        "every application scanned, with or without credentials"
    );

    let table = table_rows(&dom);
    assert_eq!(table.len(), rows.len(), "one row per credential");
    let days: Vec<i64> = table
        .iter()
        .map(|cells| cells[0].parse().expect("days left"))
        .collect();
    assert!(
        days.windows(2).all(|pair| pair[0] <= pair[1]),
        "the script sorted by days left, soonest first: {days:?}"
    );
    let sample = rows
        .iter()
        .find(|r| r["appDisplayName"] == HOSTILE)
        .expect("the hostile application's row in the JSON");
    let shown = table
        .iter()
        .find(|cells| cells[6] == sample["keyId"].as_str().unwrap())
        .expect("the same keyId on the page");
    assert_eq!(shown[0], sample["daysLeft"].to_string());
    assert_eq!(shown[2], sample["status"].as_str().unwrap());
    assert_eq!(shown[3], HOSTILE, "the name as Graph has it, as text");
    assert_eq!(shown[4], sample["appId"].as_str().unwrap());
    assert_eq!(shown[5], sample["credentialType"].as_str().unwrap());
    assert_eq!(shown[7], "<b>bold</b> & \"quoted\"");
    let owners: Vec<&str> = sample["owners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    assert_eq!(
        owners,
        ["mallory@contoso.example", "<i>eve</i>@contoso.example"]
    );
    assert_eq!(
        shown[9],
        owners.join(", "),
        "the owners as the JSON lists them"
    );
    let managed = rows
        .iter()
        .find(|r| r["managedBy"] == "dify/dify-smtp")
        .expect("our secret in the JSON");
    let ours = table
        .iter()
        .find(|cells| cells[6] == managed["keyId"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        ours[8], "✓ dify/dify-smtp",
        "marked as managed by its rotation"
    );
    let certificate = table
        .iter()
        .find(|cells| cells[5] == "certificate")
        .expect("the certificate");
    assert_eq!(certificate[7], "CN=billing.contoso.example");

    // The timeline has a bar for every credential that ends, expired ones included.
    let bars: u64 = dom
        .split("data-count=\"")
        .skip(1)
        .map(|rest| rest[..rest.find('"').unwrap()].parse::<u64>().unwrap())
        .sum();
    assert_eq!(
        bars,
        rows.iter().filter(|r| !r["endDateTime"].is_null()).count() as u64
    );

    let screenshot = dir.join("scan-report.png");
    let _ = std::fs::remove_file(&screenshot);
    headless(
        &chromium,
        &page,
        &[
            format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,1400".to_string(),
        ],
    )
    .await;
    let png = std::fs::read(&screenshot).expect("the screenshot was saved");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let (width, height) = (
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        u32::from_be_bytes(png[20..24].try_into().unwrap()),
    );
    assert_eq!((width, height), (1280, 1400), "the window size asked for");
    eprintln!("screenshot: {} ({} bytes)", screenshot.display(), png.len());
}

/// The file as written: one page that fetches nothing, with every display name escaped.
#[tokio::test]
async fn the_page_is_self_contained_and_escapes_every_name() {
    let scenario = Scenario::start().await.unwrap();
    seed(&scenario);
    let output = scan(&scenario, &["--format", "html"]).await;
    assert!(output.status.success(), "{}", all(&output));
    let page = String::from_utf8(output.stdout).unwrap();
    assert!(
        page.starts_with("<!DOCTYPE html>") && page.trim_end().ends_with("</html>"),
        "one whole page on stdout"
    );
    // Display names are text (no `<` survives escaping), so every tag is the page's own.
    for tag in page
        .split('<')
        .skip(1)
        .map(|rest| &rest[..rest.find('>').unwrap_or(rest.len())])
    {
        for external in ["src=", "href=\"http", "href=//", "url(", "@import"] {
            assert!(
                !tag.contains(external),
                "the page must fetch nothing: <{tag}>"
            );
        }
        let name: String = tag
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '!' || *c == '/')
            .collect();
        assert!(
            !["link", "img", "iframe", "object", "embed", "base", "form"].contains(&name.as_str()),
            "<{tag}>"
        );
    }
    assert!(
        page.contains("content=\"default-src 'none'"),
        "its policy forbids fetching anything"
    );
    assert_eq!(
        page.matches("<script").count(),
        1,
        "only the page's own script"
    );
    assert!(
        page.contains("&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;&lt;img"),
        "the hostile name, escaped"
    );
    assert!(
        page.contains("&lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot;"),
        "the credential name, escaped"
    );
    assert!(
        page.contains("<svg") && page.contains("id=timeline"),
        "the timeline is inline SVG"
    );
}

/// 5,000 credentials (1,000 applications with five secrets each, names of a realistic
/// length) make a page under 2 MB.
#[tokio::test]
async fn five_thousand_credentials_make_a_page_under_two_megabytes() {
    let scenario = Scenario::start().await.unwrap();
    for index in 0..1_000 {
        let app = scenario
            .tenant
            .register_app(&format!("Contoso mail relay for team {index:04}"));
        for secret in 0..5 {
            let name = if secret == 0 {
                format!("entra-rotator:team-{index:04}/smtp-relay")
            } else {
                format!("smtp relay secret {secret}")
            };
            password(
                &scenario,
                app.object_id,
                &name,
                index % 700 - 30 + secret * 40,
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    let output = scan(
        &scenario,
        &["--format", "html", "--output", page.to_str().unwrap()],
    )
    .await;
    assert!(output.status.success(), "{}", all(&output));
    let text = std::fs::read_to_string(&page).unwrap();
    let credentials = count(&text, "credentials");
    assert!(credentials >= 5_000, "{credentials} credentials listed");
    let size = text.len();
    eprintln!("{credentials} credentials: {size} bytes");
    assert!(
        size < 2_000_000,
        "{size} bytes for {credentials} credentials"
    );
}

/// `--output FILE` takes every format; a file that cannot be written is refused before
/// Graph is asked anything.
#[tokio::test]
async fn output_names_a_file_for_every_format() {
    let scenario = Scenario::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("credentials.csv");
    let output = scan(
        &scenario,
        &["--format", "csv", "--output", csv.to_str().unwrap()],
    )
    .await;
    assert!(output.status.success(), "{}", all(&output));
    assert!(
        output.stdout.is_empty(),
        "nothing on stdout when writing a file"
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("appDisplayName,appId,"), "{text}");
    assert_eq!(
        text.lines().count(),
        1 + scenario
            .tenant
            .apps()
            .iter()
            .map(|a| a.passwords.len())
            .sum::<usize>()
    );

    let listed = scenario
        .graph
        .faults()
        .count(entra_rotator_standins::graph::ROUTE_LIST_APPLICATIONS);
    let missing = dir.path().join("no-such-folder/report.html");
    let output = scan(
        &scenario,
        &["--format", "html", "--output", missing.to_str().unwrap()],
    )
    .await;
    assert_eq!(output.status.code(), Some(2), "{}", all(&output));
    assert!(
        all(&output).contains(&format!("cannot write the scan to {}", missing.display())),
        "{}",
        all(&output)
    );
    assert_eq!(
        scenario
            .graph
            .faults()
            .count(entra_rotator_standins::graph::ROUTE_LIST_APPLICATIONS),
        listed,
        "Graph was not asked"
    );
}

/// `--owners` lists each application's owners (`$expand=owners`) in JSON and CSV, and
/// pages by 100 as Graph does when expanding; without it nothing changes.
#[tokio::test]
async fn owners_are_listed_when_asked() {
    use entra_rotator_standins::graph::ROUTE_LIST_APPLICATIONS;
    let scenario = Scenario::start().await.unwrap();
    let app = scenario.tenant.register_app("Dify mail (prod)");
    password(&scenario, app.object_id, "smtp relay", 40);
    scenario
        .graph
        .add_user_owner(app.object_id, "alice@contoso.example");
    let rotator = scenario
        .tenant
        .apps()
        .into_iter()
        .find(|a| a.display_name == "entra-rotator")
        .unwrap();
    scenario.graph.add_owner(app.object_id, rotator.app_id);
    for index in 0..150 {
        scenario.tenant.register_app(&format!("unowned-{index:03}"));
    }

    let before = scenario.graph.faults().count(ROUTE_LIST_APPLICATIONS);
    let json = scan(&scenario, &["--format", "json", "--owners"]).await;
    assert!(json.status.success(), "{}", all(&json));
    assert_eq!(
        scenario.graph.faults().count(ROUTE_LIST_APPLICATIONS) - before,
        2,
        "153 applications, 100 a page with owners expanded"
    );
    let rows = json_rows(&json);
    let row = rows
        .iter()
        .find(|r| r["appId"] == app.app_id.to_string())
        .unwrap();
    assert_eq!(
        row["owners"],
        serde_json::json!(["alice@contoso.example", "entra-rotator (service principal)"])
    );

    let csv = scan(&scenario, &["--format", "csv", "--owners"]).await;
    let text = String::from_utf8(csv.stdout).unwrap();
    assert!(
        text.starts_with("appDisplayName,")
            && text.lines().next().unwrap().ends_with(",status,owners"),
        "{text}"
    );
    assert!(
        text.contains(",alice@contoso.example; entra-rotator (service principal)\r\n"),
        "{text}"
    );

    let plain = scan(&scenario, &["--format", "json"]).await;
    assert!(
        json_rows(&plain).iter().all(|r| r.get("owners").is_none()),
        "no owners unless asked"
    );
}

/// A scan Graph stops midway still leaves a whole page, which says at the top that it is
/// incomplete and why; `--owners` with the table is refused with what to add.
#[tokio::test]
async fn an_unfinished_scan_says_so_on_the_page() {
    use entra_rotator_standins::faults::Fault;
    use entra_rotator_standins::graph::ROUTE_LIST_APPLICATIONS;
    let scenario = Scenario::start().await.unwrap();
    seed(&scenario);
    scenario
        .graph
        .faults()
        .push(ROUTE_LIST_APPLICATIONS, Fault::delay(Duration::ZERO));
    scenario
        .graph
        .faults()
        .push(ROUTE_LIST_APPLICATIONS, Fault::throttle(3600));
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    let output = scan(
        &scenario,
        &[
            "--format",
            "html",
            "--page-size",
            "5",
            "--output",
            page.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(3), "{}", all(&output));
    let text = std::fs::read_to_string(&page).unwrap();
    assert!(
        text.contains(
            "<p class=incomplete role=alert>Incomplete: the scan stopped after 5 applications: "
        ),
        "{text}"
    );
    assert!(text.trim_end().ends_with("</html>"), "a whole page");
    assert_eq!(count(&text, "applications"), 5);

    let table = scan(&scenario, &["--owners"]).await;
    assert_eq!(table.status.code(), Some(2), "{}", all(&table));
    assert!(
        all(&table).contains(
            "--owners: the table has no column for owners; add --format json, csv or html"
        ),
        "{}",
        all(&table)
    );
}
