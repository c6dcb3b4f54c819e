//! Server-side printing: `kubectl get` asks for
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` and prints the `meta.k8s.io/v1`
//! `Table` the server builds, rows carrying `PartialObjectMetadata`. Columns are those of the
//! real API server: a custom resource's CRD `additionalPrinterColumns` (Name and Age when it
//! lists none), Secrets `Name, Type, Data, Age`, CRDs `Name, Created At`, the other kinds
//! `Name, Age`. Date columns read as the server renders them: a human duration since the
//! time (`5m`), `<invalid>` for a time more than a second in the future.

use super::Cluster;
use super::kinds::Kind;
use axum::http::{HeaderMap, header};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// Whether the request asks for a `Table`.
pub(super) fn wanted(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept
                .split(',')
                .any(|t| t.contains("as=Table") && t.contains("g=meta.k8s.io"))
        })
}

/// One column: its definition and where its cells come from.
struct Column {
    name: String,
    type_: String,
    format: String,
    description: String,
    priority: i64,
    json_path: String,
}

impl Column {
    fn new(name: &str, type_: &str, format: &str, json_path: &str, description: &str) -> Self {
        Self {
            name: name.to_string(),
            type_: type_.to_string(),
            format: format.to_string(),
            description: description.to_string(),
            priority: 0,
            json_path: json_path.to_string(),
        }
    }

    fn definition(&self) -> Value {
        json!({
            "name": self.name, "type": self.type_, "format": self.format,
            "description": self.description, "priority": self.priority,
        })
    }
}

const NAME_DOC: &str = "Name must be unique within a namespace.";
const AGE_DOC: &str =
    "CreationTimestamp is a timestamp representing the server time when this object was created.";

fn columns(cluster: &Cluster, kind: Kind) -> Vec<Column> {
    let name = Column::new("Name", "string", "name", ".metadata.name", NAME_DOC);
    let age = || Column::new("Age", "date", "", ".metadata.creationTimestamp", AGE_DOC);
    match kind {
        Kind::Secret => vec![
            name,
            Column::new("Type", "string", "", ".type", "The type of the secret"),
            // No path: the count of `data` entries.
            Column::new(
                "Data",
                "string",
                "",
                "",
                "The number of entries in the data",
            ),
            age(),
        ],
        Kind::CustomResourceDefinition => vec![
            name,
            Column::new(
                "Created At",
                "date",
                "",
                ".metadata.creationTimestamp",
                AGE_DOC,
            ),
        ],
        _ => match cluster.custom_resource(kind) {
            Some(custom) if !custom.printer_columns.is_empty() => {
                let mut out = vec![name];
                for column in &custom.printer_columns {
                    let text =
                        |key: &str| column.get(key).and_then(Value::as_str).unwrap_or_default();
                    let json_path = text("jsonPath");
                    let mut printed = Column::new(
                        text("name"),
                        text("type"),
                        text("format"),
                        json_path,
                        &format!(
                            "Custom resource definition column (in JSONPath format): {json_path}"
                        ),
                    );
                    if !text("description").is_empty() {
                        printed.description = text("description").to_string();
                    }
                    printed.priority = column.get("priority").and_then(Value::as_i64).unwrap_or(0);
                    out.push(printed);
                }
                out
            }
            _ => vec![name, age()],
        },
    }
}

fn cell(column: &Column, object: &Value) -> Value {
    if column.json_path.is_empty() {
        return json!(
            object
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |d| d.len())
        );
    }
    let Some(value) = find(object, &column.json_path) else {
        return Value::Null;
    };
    match column.type_.as_str() {
        "date" => match value
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        {
            Some(time) => json!(human_duration(Utc::now().signed_duration_since(time))),
            None => json!("<invalid>"),
        },
        "integer" | "number" | "boolean" => value.clone(),
        _ => match value {
            Value::String(text) => json!(text),
            other => json!(other.to_string()),
        },
    }
}

fn row(columns: &[Column], object: &Value) -> Value {
    let cells: Vec<Value> = columns.iter().map(|c| cell(c, object)).collect();
    json!({
        "cells": cells,
        "object": {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": object["metadata"],
        },
    })
}

fn table(cluster: &Cluster, kind: Kind, objects: &[Value], metadata: Value) -> Value {
    let columns = columns(cluster, kind);
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns.iter().map(Column::definition).collect::<Vec<_>>(),
        "rows": objects.iter().map(|o| row(&columns, o)).collect::<Vec<_>>(),
    })
}

/// A list answer (`items`, `metadata`) as a `Table`.
pub(super) fn of_list(cluster: &Cluster, kind: Kind, list: &Value) -> Value {
    let items = list
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    table(cluster, kind, &items, list["metadata"].clone())
}

/// One object as a one-row `Table`.
pub(super) fn of_object(cluster: &Cluster, kind: Kind, object: &Value) -> Value {
    let metadata = json!({ "resourceVersion": object["metadata"]["resourceVersion"] });
    table(cluster, kind, std::slice::from_ref(object), metadata)
}

/// Evaluates the JSONPath subset printer columns use: `.a.b`, `.a[0]` and filters
/// `.a[?(@.key=="value")].b`. Hand-rolled: the JSONPath crates implement RFC 9535
/// (`$`-rooted, different filter syntax), not Kubernetes' dialect.
fn find<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = object;
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}');
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            current = current.get(&after[..end])?;
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            let inside = &after[..end];
            rest = &after[end + 1..];
            current = if let Some(filter) = inside
                .strip_prefix("?(@.")
                .and_then(|f| f.strip_suffix(')'))
            {
                let (key, wanted) = filter.split_once("==")?;
                let wanted = wanted.trim().trim_matches(|c| c == '"' || c == '\'');
                current
                    .as_array()?
                    .iter()
                    .find(|e| e.get(key.trim()).and_then(Value::as_str) == Some(wanted))?
            } else {
                current.get(inside.parse::<usize>().ok()?)?
            };
        } else {
            return None;
        }
    }
    Some(current)
}

/// apimachinery's `duration.HumanDuration`, which the server uses for date cells.
fn human_duration(elapsed: chrono::TimeDelta) -> String {
    let seconds = elapsed.num_seconds();
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        let years = hours / 24 / 365;
        return if days == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{days}d")
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// Namespaces as `kubectl get namespaces` prints them (the stand-in keeps no creation time).
pub(super) fn of_namespaces(namespaces: &[Value]) -> Value {
    let columns = [
        Column::new("Name", "string", "name", ".metadata.name", NAME_DOC),
        Column::new(
            "Status",
            "string",
            "",
            ".status.phase",
            "The status of the namespace",
        ),
    ];
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": columns.iter().map(Column::definition).collect::<Vec<_>>(),
        "rows": namespaces.iter().map(|n| row(&columns, n)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printer_column_paths_read_fields_indices_and_filters() {
        let object = json!({
            "metadata": { "name": "a" },
            "status": { "conditions": [
                { "type": "Issued", "status": "False" },
                { "type": "Ready", "status": "True" },
            ] },
        });
        assert_eq!(find(&object, ".metadata.name"), Some(&json!("a")));
        assert_eq!(
            find(&object, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(&json!("True"))
        );
        assert_eq!(
            find(&object, ".status.conditions[0].type"),
            Some(&json!("Issued"))
        );
        assert_eq!(find(&object, ".status.notAfter"), None);
    }

    #[test]
    fn ages_read_as_the_api_server_prints_them() {
        let d = chrono::TimeDelta::seconds;
        assert_eq!(human_duration(d(59)), "59s");
        assert_eq!(human_duration(d(5 * 60 + 3)), "5m3s");
        assert_eq!(human_duration(d(3 * 3600 + 60)), "3h1m");
        assert_eq!(human_duration(d(3 * 86400 + 7200)), "3d2h");
        assert_eq!(human_duration(d(-3600)), "<invalid>");
    }
}
