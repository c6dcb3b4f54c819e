//! Microsoft's own Python SDKs against the running stand-ins: azure-identity (and MSAL
//! under it) signs in at the token stand-in, azure-keyvault-secrets sets, gets, lists,
//! updates and deletes secrets in the vault stand-in, msgraph-sdk reads an application and
//! adds and removes a password at the Graph stand-in. When a real client disagrees with a
//! stand-in, our adapters may share the stand-in's mistake; this test makes that visible.
//!
//! The script (`tests/python/microsoft_sdks.py`) prints one JSON line per operation; every
//! assertion is here. Needs python3 with `azure-identity azure-keyvault-secrets msgraph-sdk`
//! (versions pinned in `.ci/run`). Without them the test prints a skip notice and passes,
//! except under CI (env var `CI` set), where it fails.

use entra_rotator_standins::scenario::{Scenario, TENANT_DOMAIN};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use tokio::process::Command;

const SCRIPT: &str = "tests/python/microsoft_sdks.py";
const PACKAGES: &str = "azure-identity azure-keyvault-secrets msgraph-sdk";

/// Whether python3 can import the SDKs; otherwise explains how to get them.
async fn sdks_available() -> bool {
    let probe = Command::new("python3")
        .args([
            "-c",
            "import azure.identity, azure.keyvault.secrets, msgraph, msal",
        ])
        .output()
        .await;
    if probe.is_ok_and(|output| output.status.success()) {
        return true;
    }
    let advice = format!(
        "python3 with Microsoft's SDKs is needed for tests/microsoft_sdks.rs: run `python3 -m pip install {PACKAGES}` (versions in .ci/run)"
    );
    assert!(std::env::var_os("CI").is_none(), "{advice}");
    eprintln!("skipping: {advice}");
    false
}

/// Runs the script against `scenario`; returns its lines by operation name.
async fn run_script(scenario: &Scenario, foreign_app: uuid::Uuid) -> HashMap<String, Value> {
    let ca = scenario.ca_path();
    let output = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(SCRIPT))
        .env(
            "STANDIN_AUTHORITY",
            scenario.graph.authority_host().as_str(),
        )
        .env("STANDIN_TENANT_ID", scenario.tenant.tenant_id.to_string())
        .env("STANDIN_TENANT_DOMAIN", TENANT_DOMAIN)
        .env("STANDIN_CLIENT_ID", scenario.rotator_client_id.to_string())
        .env("STANDIN_CLIENT_SECRET", &scenario.rotator_secret)
        .env("STANDIN_VAULT_URL", scenario.vault.vault_url())
        .env("STANDIN_GRAPH_URL", scenario.graph.graph_url().as_str())
        .env(
            "STANDIN_OWNED_APP_OBJECT_ID",
            scenario.target.object_id.to_string(),
        )
        .env("STANDIN_OWNED_APP_ID", scenario.target.app_id.to_string())
        .env("STANDIN_FOREIGN_APP_OBJECT_ID", foreign_app.to_string())
        .env("SSL_CERT_FILE", &ca)
        .env("REQUESTS_CA_BUNDLE", &ca)
        // Loopback only: no proxy may see the stand-ins' traffic.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Shown when the test fails: every operation's result, for whoever reads the CI log.
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "the SDK script failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        !stdout.contains(&scenario.rotator_secret) && !stderr.contains(&scenario.rotator_secret),
        "the script's output must not show the rotator's secret"
    );
    let lines: HashMap<String, Value> = stdout
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
        })
        .map(|value| (value["op"].as_str().unwrap_or_default().to_string(), value))
        .collect();
    assert!(
        lines.contains_key("done"),
        "the script stopped early:\n{stdout}\n{stderr}"
    );
    lines
}

/// The line of `op`, which must have succeeded.
fn succeeded<'a>(lines: &'a HashMap<String, Value>, op: &str) -> &'a Value {
    let line = lines.get(op).unwrap_or_else(|| panic!("no line for {op}"));
    assert_eq!(line["ok"], true, "{op} failed: {line:#}");
    line
}

/// The line of `op`, which must have failed with an error mentioning `expected`.
fn failed<'a>(lines: &'a HashMap<String, Value>, op: &str, expected: &str) -> &'a Value {
    let line = lines.get(op).unwrap_or_else(|| panic!("no line for {op}"));
    assert_eq!(line["ok"], false, "{op} should have failed: {line:#}");
    let error = line["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(expected),
        "{op}: expected {expected:?} in {error:?}"
    );
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microsofts_python_sdks_agree_with_the_stand_ins() {
    if !sdks_available().await {
        return;
    }
    let scenario = Scenario::start().await.unwrap();
    let foreign = scenario.tenant.register_app("owned-by-someone-else");
    scenario.graph.require_ownership();
    scenario
        .graph
        .add_owner(scenario.target.object_id, scenario.rotator_client_id);
    let lines = run_script(&scenario, foreign.object_id).await;

    // Sign-in: MSAL's instance and tenant discovery, the tenant named by its domain.
    let msal = succeeded(&lines, "msal_instance_discovery");
    assert_eq!(msal["token_type"], "Bearer", "{msal:#}");
    assert_eq!(msal["has_access_token"], true, "{msal:#}");
    let tenant_id = scenario.tenant.tenant_id.to_string();
    assert!(
        msal["token_endpoint"]
            .as_str()
            .unwrap_or_default()
            .contains(&tenant_id),
        "the OpenID configuration names the tenant by id: {msal:#}"
    );
    let token = succeeded(&lines, "identity_token");
    assert_eq!(token["has_token"], true);
    assert!(
        token["expires_in"].as_i64().unwrap_or_default() > 3000,
        "{token:#}"
    );
    let refused = failed(&lines, "identity_bad_secret", "AADSTS7000215");
    assert_eq!(
        refused["error_type"], "ClientAuthenticationError",
        "{refused:#}"
    );

    // Key Vault: the SDK's default api-version, versions, paging, update, delete.
    let client = &lines["keyvault_client"];
    assert_eq!(
        client["api_version"], "2026-04-01",
        "the SDK's default api-version changed: {client:#}"
    );
    let first = succeeded(&lines, "keyvault_set");
    assert_eq!(first["tags"]["keyId"], "k1");
    assert_eq!(first["content_type"], "text/plain");
    let name = first["name"].as_str().unwrap().to_string();
    let second = succeeded(&lines, "keyvault_set_second_version");
    let latest = succeeded(&lines, "keyvault_get_latest");
    assert_eq!(latest["version"], second["version"]);
    assert_eq!(latest["value_matches"], true);
    let old = succeeded(&lines, "keyvault_get_version");
    assert_eq!(old["version"], first["version"]);
    assert_eq!(old["value_matches"], true);
    let listed = succeeded(&lines, "keyvault_list_secrets");
    assert_eq!(
        listed["page_sizes"],
        serde_json::json!([1, 1]),
        "one secret per page, two secrets: {listed:#}"
    );
    assert_eq!(
        listed["names"],
        serde_json::json!([name.clone(), format!("{name}-other")])
    );
    let versions = succeeded(&lines, "keyvault_list_versions");
    assert_eq!(
        versions["page_sizes"],
        serde_json::json!([1, 1]),
        "{versions:#}"
    );
    let mut listed_versions: Vec<&str> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut written = vec![
        first["version"].as_str().unwrap(),
        second["version"].as_str().unwrap(),
    ];
    listed_versions.sort_unstable();
    written.sort_unstable();
    assert_eq!(listed_versions, written);
    let updated = succeeded(&lines, "keyvault_update");
    assert_eq!(updated["enabled"], false);
    assert_eq!(updated["tags"]["retired"], "yes");
    let stored = scenario
        .vault
        .versions(&name)
        .into_iter()
        .find(|v| Some(v.version.as_str()) == first["version"].as_str())
        .expect("the first version is kept");
    assert!(!stored.enabled, "the update reached the vault");
    let deleted = succeeded(&lines, "keyvault_delete");
    assert_eq!(deleted["has_recovery_id"], true);
    assert_eq!(deleted["has_deleted_date"], true);
    assert!(scenario.vault.is_soft_deleted(&name));
    let gone = failed(&lines, "keyvault_get_deleted_name", "SecretNotFound");
    assert_eq!(gone["error_type"], "ResourceNotFoundError", "{gone:#}");
    failed(
        &lines,
        "keyvault_unknown_api_version",
        "The specified version (2015-06-01) is not recognized",
    );

    // Graph: read, filter, addPassword, removePassword, and an application not owned.
    let app = succeeded(&lines, "graph_get_application");
    assert_eq!(app["id"], scenario.target.object_id.to_string());
    assert_eq!(app["app_id"], scenario.target.app_id.to_string());
    assert_eq!(app["display_name"], scenario.target.display_name);
    assert_eq!(
        app["password_key_ids"],
        serde_json::json!([scenario.foreign_key_id.to_string()])
    );
    let filtered = succeeded(&lines, "graph_filter_by_app_id");
    assert_eq!(
        filtered["ids"],
        serde_json::json!([scenario.target.object_id.to_string()])
    );
    let added = succeeded(&lines, "graph_add_password");
    assert_eq!(added["display_name"], "msgraph-sdk");
    assert_eq!(added["has_secret_text"], true);
    assert_eq!(added["hint_len"], 3);
    let removed = succeeded(&lines, "graph_remove_password");
    assert_eq!(removed["key_id"], added["key_id"]);
    let now = scenario.target_now();
    assert_eq!(
        now.passwords
            .iter()
            .map(|p| p.key_id.to_string())
            .collect::<Vec<_>>(),
        vec![scenario.foreign_key_id.to_string()],
        "the SDK's password came and went; the hand-made one stayed"
    );
    let denied = failed(
        &lines,
        "graph_add_password_not_owned",
        "Insufficient privileges to complete the operation",
    );
    assert_eq!(denied["error_type"], "ODataError", "{denied:#}");
    assert!(
        scenario
            .tenant
            .app(foreign.object_id)
            .unwrap()
            .passwords
            .is_empty()
    );
}
