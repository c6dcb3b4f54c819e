//! A third-party SMTP client, Python's smtplib, against the ACS-like relay stand-in: what
//! the stand-in says about ACS (STARTTLS, `AUTH LOGIN` only, `504 5.7.4` on PLAIN, `535`
//! for a wrong secret, the 30 MiB SIZE, sender restrictions) holds for a client we did not
//! write. The script (`tests/python/smtplib_client.py`) prints one JSON line per step;
//! every assertion is here. python3 is on every machine CI runs on.

use entra_rotator_standins::scenario::{Scenario, ACS_RESOURCE};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

#[tokio::test]
async fn smtplib_sees_the_relay_as_acs_describes_it() {
    let scenario = Scenario::start().await.unwrap();
    let app = scenario.target_now();
    let secret = app.passwords.iter().find(|p| p.key_id == scenario.foreign_key_id).unwrap().secret_text.clone();
    let sender = scenario.relay.settings().default_sender().unwrap().to_string();

    let output = tokio::process::Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/smtplib_client.py"))
        .env("RELAY_HOST", "localhost")
        .env("RELAY_PORT", scenario.relay.port().to_string())
        .env("RELAY_CA", scenario.ca_path())
        .env("RELAY_USERNAME", format!("{ACS_RESOURCE}|{}|{}", app.app_id, scenario.tenant.tenant_id))
        .env("RELAY_PASSWORD", &secret)
        .env("RELAY_FROM", &sender)
        .output()
        .await
        .expect("python3 runs");
    let printed = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{printed}\n{}", String::from_utf8_lossy(&output.stderr));
    let steps: HashMap<String, Value> = printed
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .map(|step| (step["step"].as_str().unwrap().to_string(), step))
        .collect();

    assert_eq!(steps["ehlo_before_tls"]["starttls"], true, "{printed}");
    assert!(steps["ehlo_before_tls"]["auth"].is_null(), "no AUTH before STARTTLS: {printed}");
    assert_eq!(steps["ehlo_after_tls"]["auth"], "LOGIN", "{printed}");
    assert_eq!(steps["ehlo_after_tls"]["size"], "31457280", "{printed}");
    assert_eq!(steps["auth_plain"]["code"], 504, "{printed}");
    assert!(steps["auth_plain"]["reply"].as_str().unwrap().contains("5.7.4"), "{printed}");
    assert_eq!(steps["login_wrong_secret"]["code"], 535, "{printed}");
    assert_eq!(steps["login"]["code"], 235, "{printed}");
    assert_eq!(steps["sendmail"]["refused"], serde_json::json!([]), "{printed}");
    assert_eq!(scenario.relay.accepted_messages().len(), 1, "the allowed sender's mail was accepted");
    let foreign = steps["foreign_sender"]["code"].as_u64().unwrap();
    assert!((500..600).contains(&foreign), "a sender the domain does not allow is refused: {printed}");
    assert!(!printed.contains(&secret), "the secret is not echoed");
}
