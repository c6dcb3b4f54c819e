//! CustomResourceDefinitions (`apiextensions.k8s.io/v1`) and the admission they give their
//! custom resources, as the API server does it:
//!
//! - a CRD's own checks: `metadata.name` must be `<plural>.<group>`, names, scope and at
//!   least one served version; once stored it is `Established` and `NamesAccepted`;
//! - a custom resource whose CRD is registered is pruned of fields its structural schema
//!   does not declare (refused instead under `fieldValidation=Strict`, kubectl's default),
//!   defaulted, validated against the schema (types, patterns, enums, bounds, lengths,
//!   required fields) and then against the CEL `x-kubernetes-validations` rules (through
//!   `kube-cel`, the evaluator kube's `cel` feature uses); every failure is listed in one
//!   `422 Invalid`, worded like the API server's.
//!
//! The stand-in serves `ClientSecretRotation` before its CRD is registered (the operator's
//! tests use it so), but discovery, OpenAPI and printer columns only show it afterwards.
//! A CRD for any other resource is stored, not served: its objects get the API server's 404.

use super::Cluster;
use super::kinds::{ApiError, Kind};
use super::objects::Target;
use serde_json::{Map, Value, json};

/// What a registered CRD version says about its custom resource.
pub(super) struct CustomResource {
    /// The version's `openAPIV3Schema`.
    pub schema: Value,
    pub printer_columns: Vec<Value>,
}

impl Cluster {
    /// The registered CRD version that serves `kind`, if any.
    pub(super) fn custom_resource(&self, kind: Kind) -> Option<CustomResource> {
        let info = kind.info();
        if info.built_in {
            return None;
        }
        self.objects
            .iter()
            .filter(|((k, _, _), _)| *k == Kind::CustomResourceDefinition)
            .map(|(_, crd)| &crd.body["spec"])
            .filter(|spec| spec["group"] == info.group && spec["names"]["plural"] == info.plural)
            .flat_map(|spec| spec["versions"].as_array().cloned().unwrap_or_default())
            .find(|version| version["name"] == info.version && version["served"] != false)
            .map(|version| CustomResource {
                schema: version["schema"]["openAPIV3Schema"].clone(),
                printer_columns: version["additionalPrinterColumns"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            })
    }
}

/// The admission step of a write, after the registry's own rules: fills in what the
/// server sets (a CRD's status) and refuses what it would refuse.
pub(super) fn admit(
    cluster: &Cluster,
    kind: Kind,
    name: &str,
    body: &mut Value,
    target: Target,
    strict: bool,
) -> Result<(), ApiError> {
    if kind == Kind::CustomResourceDefinition {
        return admit_definition(name, body, target);
    }
    let Some(custom) = cluster.custom_resource(kind) else {
        return Ok(());
    };
    let info = kind.info();
    let mut unknown = Vec::new();
    prune(&custom.schema, body, "", &mut unknown, true);
    if strict && !unknown.is_empty() {
        let listed: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
            listed.join(", "),
            kind = info.kind,
            version = info.version,
        )));
    }
    *body = kube_cel::apply_defaults(&custom.schema, body);
    let mut errors = Vec::new();
    check(&custom.schema, body, "", &mut errors);
    if let Err(failures) = kube_cel::Validator::new().validate(&custom.schema, body, None) {
        for failure in failures.iter() {
            let path = if failure.field_path.is_empty() {
                "<root>"
            } else {
                &failure.field_path
            };
            let shown = value_kind(kube_cel_target(body, &failure.field_path));
            errors.push((
                path.to_string(),
                format!("Invalid value: \"{shown}\": {}", failure.message),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(info.invalid(name, &errors))
    }
}

/// The value a CEL rule was attached to, by its path (`spec.targets[0]`).
fn kube_cel_target<'a>(body: &'a Value, path: &str) -> &'a Value {
    let mut node = body;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, indices) = part
            .split_once('[')
            .map_or((part, ""), |(k, rest)| (k, rest));
        if !key.is_empty() {
            node = node.get(key).unwrap_or(&Value::Null);
        }
        for index in indices.split('[').filter(|i| !i.is_empty()) {
            let index = index
                .trim_end_matches(']')
                .parse::<usize>()
                .unwrap_or(usize::MAX);
            node = node.get(index).unwrap_or(&Value::Null);
        }
    }
    node
}

fn admit_definition(name: &str, body: &mut Value, target: Target) -> Result<(), ApiError> {
    let info = Kind::CustomResourceDefinition.info();
    let spec = &body["spec"];
    let text = |pointer: &str| {
        spec.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let mut errors = Vec::new();
    for (field, pointer) in [
        ("spec.group", "/group"),
        ("spec.names.plural", "/names/plural"),
        ("spec.names.kind", "/names/kind"),
    ] {
        if text(pointer).is_empty() {
            errors.push((field.to_string(), "Required value".to_string()));
        }
    }
    if !matches!(text("/scope"), "Namespaced" | "Cluster") {
        errors.push((
            "spec.scope".to_string(),
            format!(
                "Unsupported value: \"{}\": supported values: \"Cluster\", \"Namespaced\"",
                text("/scope")
            ),
        ));
    }
    let expected = format!("{}.{}", text("/names/plural"), text("/group"));
    if errors.is_empty() && name != expected {
        errors.push((
            "metadata.name".to_string(),
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        errors.push((
            "spec.versions".to_string(),
            "Invalid value: null: must have exactly one version marked as storage version"
                .to_string(),
        ));
    }
    if !errors.is_empty() {
        return Err(info.invalid(name, &errors));
    }
    if target == Target::Main {
        let mut accepted = spec["names"].clone();
        if accepted.get("listKind").is_none() {
            accepted["listKind"] = json!(format!("{}List", text("/names/kind")));
        }
        if accepted.get("singular").is_none() {
            accepted["singular"] = json!(text("/names/kind").to_lowercase());
        }
        let now = super::now();
        let condition = |type_: &str, reason: &str, message: &str| json!({ "type": type_, "status": "True", "lastTransitionTime": now, "reason": reason, "message": message });
        let stored: Vec<Value> = versions
            .iter()
            .filter(|v| v["storage"] == true)
            .map(|v| v["name"].clone())
            .collect();
        body["status"] = json!({
            "acceptedNames": accepted,
            "conditions": [
                condition("NamesAccepted", "NoConflicts", "no conflicts found"),
                condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
            ],
            "storedVersions": stored,
        });
    }
    Ok(())
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Drops the fields `schema` does not declare, collecting their paths.
fn prune(schema: &Value, value: &mut Value, path: &str, unknown: &mut Vec<String>, root: bool) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let field = child(path, &key);
                let sub = properties
                    .and_then(|p| p.get(&key))
                    .or(additional.filter(|a| a.is_object()));
                match sub {
                    Some(sub) => {
                        if let Some(v) = map.get_mut(&key) {
                            prune(sub, v, &field, unknown, false);
                        }
                    }
                    None if additional == Some(&json!(true)) => {}
                    None if properties.is_some() || additional.is_none() => {
                        map.remove(&key);
                        unknown.push(field);
                    }
                    None => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(sub, item, &format!("{path}[{i}]"), unknown, false);
                }
            }
        }
        _ => {}
    }
}

/// The JSON type name the API server's messages use.
fn value_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A bound as the API server prints it: `1`, not `1.0`.
fn bound(value: &Value) -> String {
    match value.as_f64() {
        Some(f) if f.fract() == 0.0 => format!("{}", f as i64),
        _ => value.to_string(),
    }
}

/// How a value is quoted in `Invalid value: …`.
fn shown(value: &Value) -> String {
    match value {
        Value::String(text) => format!("\"{text}\""),
        other => other.to_string(),
    }
}

/// Structural schema validation (OpenAPI v3 subset CRDs use), collecting `(field, detail)`
/// in the API server's words. Hand-rolled: a JSON Schema crate words errors its own way,
/// and the point is that a user sees what a real cluster would say.
fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<(String, String)>) {
    let at = if path.is_empty() {
        "<root>".to_string()
    } else {
        path.to_string()
    };
    if value.is_null() {
        if schema.get("nullable") != Some(&json!(true)) && schema.get("type").is_some() {
            errors.push((
                at.clone(),
                format!(
                    "Invalid value: \"null\": {at} in body must be of type {}: \"null\"",
                    schema["type"].as_str().unwrap_or("object")
                ),
            ));
        }
        return;
    }
    let int_or_string = schema.get("x-kubernetes-int-or-string") == Some(&json!(true));
    if let Some(wanted) = schema.get("type").and_then(Value::as_str) {
        let got = value_kind(value);
        let fits = got == wanted
            || (wanted == "number" && got == "integer")
            || int_or_string && matches!(got, "integer" | "string");
        if !fits {
            errors.push((
                at.clone(),
                format!(
                    "Invalid value: \"{got}\": {at} in body must be of type {wanted}: \"{got}\""
                ),
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let listed: Vec<String> = allowed.iter().map(shown).collect();
        errors.push((
            at.clone(),
            format!(
                "Unsupported value: {}: supported values: {}",
                shown(value),
                listed.join(", ")
            ),
        ));
    }
    match value {
        Value::String(text) => {
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                let matches = regex::Regex::new(pattern)
                    .map(|r| r.is_match(text))
                    .unwrap_or(false);
                if !matches {
                    errors.push((
                        at.clone(),
                        format!("Invalid value: \"{text}\": {at} in body should match '{pattern}'"),
                    ));
                }
            }
            let length = text.chars().count() as u64;
            if let Some(max) = schema
                .get("maxLength")
                .and_then(Value::as_u64)
                .filter(|m| length > *m)
            {
                errors.push((
                    at.clone(),
                    format!("Too long: may not be more than {max} bytes"),
                ));
            }
            if let Some(min) = schema
                .get("minLength")
                .and_then(Value::as_u64)
                .filter(|m| length < *m)
            {
                errors.push((at.clone(), format!("Invalid value: \"{text}\": {at} in body should be at least {min} chars long")));
            }
        }
        Value::Number(number) => {
            let n = number.as_f64().unwrap_or_default();
            if let Some(min) = schema
                .get("minimum")
                .filter(|m| m.as_f64().is_some_and(|m| n < m))
            {
                errors.push((at.clone(), format!("Invalid value: {number}: {at} in body should be greater than or equal to {}", bound(min))));
            }
            if let Some(max) = schema
                .get("maximum")
                .filter(|m| m.as_f64().is_some_and(|m| n > m))
            {
                errors.push((
                    at.clone(),
                    format!(
                        "Invalid value: {number}: {at} in body should be less than or equal to {}",
                        bound(max)
                    ),
                ));
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema
                .get("maxItems")
                .and_then(Value::as_u64)
                .filter(|m| items.len() as u64 > *m)
            {
                errors.push((
                    at.clone(),
                    format!("Too many: {}: must have at most {max} items", items.len()),
                ));
            }
            if let Some(min) = schema
                .get("minItems")
                .and_then(Value::as_u64)
                .filter(|m| (items.len() as u64) < *m)
            {
                errors.push((
                    at.clone(),
                    format!(
                        "Invalid value: {}: {at} in body should have at least {min} items",
                        items.len()
                    ),
                ));
            }
            if let Some(sub) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(sub, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Object(map) => check_object(schema, map, path, errors),
        Value::Bool(_) | Value::Null => {}
    }
}

fn check_object(
    schema: &Value,
    map: &Map<String, Value>,
    path: &str,
    errors: &mut Vec<(String, String)>,
) {
    for required in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(key) = required.as_str()
            && !map.contains_key(key)
        {
            errors.push((child(path, key), "Required value".to_string()));
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    for (key, value) in map {
        if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(sub) = properties.and_then(|p| p.get(key)).or(additional) {
            check(sub, value, &child(path, key), errors);
        }
    }
}
