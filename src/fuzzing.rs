//! Entry points of the coverage-guided fuzz targets in `fuzz/` (feature `fuzzing`, never
//! in a release build). Each takes bytes as the product meets them from a user or a peer
//! and goes through the same code: it must return, whatever the input, without panicking
//! and within bounded memory. Above every other module: it may call anything.

use crate::adapters::{graph, identity, keyvault, smtp::wire};
use crate::config::{duration::HumanDuration, Config};
use crate::operator::crd::ClientSecretRotation;
use crate::template::Template;
use std::collections::BTreeMap;
use std::str::FromStr;

/// A configuration file (`run --config`).
pub fn configuration(text: &str) {
    let _ = Config::parse(text, std::path::Path::new("fuzz.yaml"));
}

/// A duration as written in a file or a ClientSecretRotation; printing it back must work.
pub fn duration(text: &str) {
    if let Ok(parsed) = HumanDuration::parse(text) {
        let _ = parsed.to_string();
        let _ = parsed.chrono();
    }
}

/// A template, rendered with every variable set.
pub fn template(text: &str) {
    if let Ok(parsed) = Template::parse(text) {
        let values: BTreeMap<&str, &str> = crate::template::VARIABLES.iter().map(|name| (*name, "value")).collect();
        let _ = parsed.render(&values);
    }
}

/// A ClientSecretRotation as the API server hands it over (JSON), turned into a rotation.
pub fn rotation_object(json: &[u8]) {
    if let Ok(object) = serde_json::from_slice::<ClientSecretRotation>(json) {
        let _ = object.to_rotation_config();
    }
}

/// A Microsoft Graph answer, read as an application, as an `addPassword` result and as an
/// error body.
pub fn graph_answer(body: &[u8]) {
    let _ = graph::application_from_body("fuzz", body);
    let _ = graph::minted_from_body("fuzz", body);
    let _ = graph::api_error("fuzz", reqwest::StatusCode::BAD_REQUEST, &reqwest::header::HeaderMap::new(), body).to_string();
}

/// A Key Vault secret as the SDK parses it, read as a stored secret.
pub fn key_vault_secret(body: &[u8]) {
    if let Ok(secret) = serde_json::from_slice::<azure_security_keyvault_secrets::models::Secret>(body) {
        let _ = keyvault::stored_secret_from(secret);
    }
}

/// The claims of a federated token file, read to explain a refused sign-in.
pub fn federated_token(text: &str) {
    let _ = identity::federated_token_claims(text);
}

/// A relay's replies (greeting, EHLO capability list, anything after): through our
/// plaintext reader, and as lettre reads them after STARTTLS: line by line through the
/// bounded stream, each complete reply parsed, and parsed as an EHLO answer too.
pub fn smtp_replies(bytes: &[u8]) {
    let (_replies, passed) = futures::executor::block_on(wire::as_read_from_a_relay(bytes));
    let mut buffer = String::new();
    for line in passed.split_inclusive(|byte| *byte == b'\n').filter(|line| line.ends_with(b"\n")) {
        // lettre reads lines into a String: a line that is not UTF-8 ends the session.
        let Ok(line) = std::str::from_utf8(line) else { return };
        buffer.push_str(line);
        match lettre::transport::smtp::response::Response::from_str(&buffer) {
            Ok(response) => {
                let _ = lettre::transport::smtp::extension::ServerInfo::from_response(&response);
                buffer.clear();
            }
            // A continuation line: lettre reads on.
            Err(_) if line.as_bytes().get(3) == Some(&b'-') => {}
            Err(_) => buffer.clear(),
        }
    }
}
