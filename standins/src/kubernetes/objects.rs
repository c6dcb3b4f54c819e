//! The generic object store behind the custom resource, Events, Leases and workloads: one
//! write pipeline that does what the API server's registry does for every write.
//!
//! - `POST` create (with `generateName`), `PUT` replace with `resourceVersion` optimistic
//!   concurrency (`409 Conflict` on a stale version; `422` without one where the kind
//!   forbids unconditional updates; create-on-update where the kind allows it), `PATCH` as
//!   JSON merge, JSON patch, strategic merge (built-in kinds) or server-side apply
//!   (`fieldManager`, `force`, per-field ownership, `409` on conflicts), `DELETE`;
//! - the `/status` subresource: the main resource ignores `status`, `/status` ignores
//!   everything else;
//! - `metadata.generation` counts changes outside `metadata` and `status`;
//! - a write that changes nothing keeps the `resourceVersion` and fires no watch event;
//!   every other write takes the next `resourceVersion` and fires one;
//! - workloads roll out: a spec change is followed by Pod replacements and a status write,
//!   as the controller-manager would (see `rollout`).

use super::document::{self, FieldPath};
use super::kinds::{ApiError, Kind, KindInfo};
use super::watch::ChangeType;
use super::{Cluster, Operation, now};
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// Who owns fields: a field manager, the kind of write, and the subresource written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Manager {
    pub name: String,
    pub operation: Operation,
    pub subresource: Option<&'static str>,
}

#[derive(Clone, Debug, PartialEq)]
struct Owned {
    paths: BTreeSet<FieldPath>,
    time: String,
}

/// One stored object: its JSON (with system metadata, without `managedFields`) and who
/// owns which of its fields.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct StoredObject {
    pub body: Value,
    managed: BTreeMap<Manager, Owned>,
    /// The `resourceVersion` that created it, to order objects by age.
    pub created_version: u64,
}

impl StoredObject {
    /// The object as the API server returns it, `managedFields` included.
    pub(super) fn render(&self, info: &KindInfo) -> Value {
        let mut out = self.body.clone();
        let entries: Vec<Value> = self
            .managed
            .iter()
            .map(|(manager, owned)| {
                let mut entry = json!({
                    "manager": manager.name,
                    "operation": manager.operation.as_str(),
                    "apiVersion": info.api_version(),
                    "time": owned.time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": document::fields_v1(&owned.paths),
                });
                if let Some(subresource) = manager.subresource {
                    entry["subresource"] = json!(subresource);
                }
                entry
            })
            .collect();
        if !entries.is_empty() {
            out["metadata"]["managedFields"] = json!(entries);
        }
        out
    }

    /// Same content and ownership, ignoring ownership timestamps.
    fn same_as(&self, other: &StoredObject) -> bool {
        let owned = |o: &StoredObject| -> Vec<(Manager, BTreeSet<FieldPath>)> {
            o.managed
                .iter()
                .map(|(m, e)| (m.clone(), e.paths.clone()))
                .collect()
        };
        self.body == other.body && owned(self) == owned(other)
    }

    fn other_owners(&self, path: &FieldPath, manager: &Manager) -> Vec<Manager> {
        self.managed
            .iter()
            .filter(|(m, owned)| *m != manager && owned.paths.contains(path))
            .map(|(m, _)| m.clone())
            .collect()
    }

    fn disown(&mut self, path: &FieldPath, keep: Option<&Manager>) {
        for (manager, owned) in self.managed.iter_mut() {
            if Some(manager) != keep {
                owned.paths.remove(path);
            }
        }
    }

    fn own(&mut self, manager: &Manager, paths: impl IntoIterator<Item = FieldPath>) {
        let owned = self
            .managed
            .entry(manager.clone())
            .or_insert_with(|| Owned {
                paths: BTreeSet::new(),
                time: now(),
            });
        owned.paths.extend(paths);
        owned.time = now();
        self.managed.retain(|_, o| !o.paths.is_empty());
    }
}

/// The main resource or its `/status` subresource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Target {
    Main,
    Status,
}

impl Target {
    fn subresource(self) -> Option<&'static str> {
        match self {
            Target::Main => None,
            Target::Status => Some("status"),
        }
    }
}

/// A write request, decoded.
pub(super) enum Write {
    Create(Value),
    Replace(Value),
    MergePatch(Value),
    JsonPatch(Value),
    StrategicMerge(Value),
    Apply { config: Value, force: bool },
}

/// Fields a manager can own: everything but type and system metadata.
fn ownable(path: &FieldPath) -> bool {
    match path.first().map(String::as_str) {
        Some("apiVersion" | "kind") | None => false,
        Some("metadata") => matches!(
            path.get(1).map(String::as_str),
            Some("labels" | "annotations" | "ownerReferences" | "finalizers")
        ),
        Some(_) => true,
    }
}

/// Whether a write to `target` may change the field at `path`.
fn in_scope(info: &KindInfo, target: Target, path: &FieldPath) -> bool {
    let is_status = path.first().map(String::as_str) == Some("status");
    match target {
        Target::Main => !(info.status_subresource && is_status),
        Target::Status => is_status,
    }
}

/// Keeps only what `target` may change of `candidate`; the rest stays as in `old`.
fn scoped(info: &KindInfo, target: Target, old: &Value, candidate: Value) -> Value {
    if !info.status_subresource {
        return candidate;
    }
    let (mut kept, status) = match target {
        Target::Main => (candidate, old.get("status").cloned()),
        Target::Status => (old.clone(), candidate.get("status").cloned()),
    };
    match status {
        Some(status) => kept["status"] = status,
        None => {
            if let Some(map) = kept.as_object_mut() {
                map.remove("status");
            }
        }
    }
    kept
}

/// The spec-like part whose changes count as a new generation.
fn generation_relevant(body: &Value) -> Value {
    let mut relevant = body.clone();
    if let Some(map) = relevant.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    relevant
}

fn resource_version_of(body: &Value) -> Option<&str> {
    body.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|rv| !rv.is_empty())
}

/// A body's `apiVersion`/`kind`, when set, must be the URL's.
fn check_type_meta(info: &KindInfo, body: &Value) -> Result<(), ApiError> {
    let api_version = info.api_version();
    if let Some(sent) = body.get("apiVersion").and_then(Value::as_str)
        && sent != api_version
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({sent}) does not match the expected API version ({api_version})"
        )));
    }
    if let Some(sent) = body.get("kind").and_then(Value::as_str)
        && sent != info.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({sent}) does not match the expected kind ({})",
            info.kind
        )));
    }
    Ok(())
}

fn check_name_and_namespace(body: &Value, namespace: &str, name: &str) -> Result<(), ApiError> {
    if let Some(sent) = body.pointer("/metadata/name").and_then(Value::as_str)
        && sent != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({sent}) does not match the name on the URL ({name})"
        )));
    }
    if let Some(sent) = body.pointer("/metadata/namespace").and_then(Value::as_str)
        && !sent.is_empty()
        && sent != namespace
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
                .to_string(),
        ));
    }
    Ok(())
}

/// The name a `POST` creates: `metadata.name`, else `generateName` plus five characters.
pub(super) fn name_to_create(info: &KindInfo, body: &Value) -> Result<String, ApiError> {
    if let Some(name) = body.pointer("/metadata/name").and_then(Value::as_str) {
        return Ok(name.to_string());
    }
    if let Some(prefix) = body
        .pointer("/metadata/generateName")
        .and_then(Value::as_str)
    {
        let suffix: String =
            std::iter::repeat_with(|| fastrand::alphanumeric().to_ascii_lowercase())
                .take(5)
                .collect();
        return Ok(format!("{prefix}{suffix}"));
    }
    Err(info.invalid(
        "",
        &[(
            "metadata.name".to_string(),
            "Required value: name or generateName is required".to_string(),
        )],
    ))
}

/// Who writes: the field manager, and whether unknown fields are refused
/// (`fieldValidation=Strict`) rather than dropped.
pub(super) struct Author<'a> {
    pub manager: &'a str,
    pub strict: bool,
}

/// Carries out one write under the cluster lock: `(201 or 200, the object)` or the refusal.
pub(super) fn write(
    cluster: &mut Cluster,
    kind: Kind,
    namespace: &str,
    name: &str,
    target: Target,
    write: Write,
    author: Author<'_>,
) -> Result<(StatusCode, Value), ApiError> {
    let Author { manager, strict } = author;
    let info = kind.info();
    if target == Target::Status && !info.status_subresource {
        return Err(ApiError::no_such_resource());
    }
    if info.namespaced && !cluster.namespaces.contains(namespace) {
        return Err(ApiError::namespace_not_found(namespace));
    }
    let key = (kind, namespace.to_string(), name.to_string());
    let existing = cluster.objects.get(&key).cloned();
    let updater = Manager {
        name: manager.to_string(),
        operation: Operation::Update,
        subresource: target.subresource(),
    };
    let next = match (write, &existing) {
        (Write::Create(_), Some(_)) => return Err(info.already_exists(name)),
        (Write::Create(body), None) => {
            check_type_meta(info, &body)?;
            check_name_and_namespace(&body, namespace, name)?;
            created(info, namespace, name, body, &updater)
        }
        (Write::Replace(body), None) if info.create_on_update && target == Target::Main => {
            check_type_meta(info, &body)?;
            check_name_and_namespace(&body, namespace, name)?;
            created(info, namespace, name, body, &updater)
        }
        (Write::Apply { config, .. }, None) if target == Target::Main => {
            check_type_meta(info, &config)?;
            check_name_and_namespace(&config, namespace, name)?;
            let empty = created(info, namespace, name, json!({}), &updater);
            applied(info, target, &empty, config, manager, false)?
        }
        (_, None) => return Err(info.not_found(name)),
        (Write::Replace(body), Some(old)) => {
            check_type_meta(info, &body)?;
            check_name_and_namespace(&body, namespace, name)?;
            check_replace_version(info, name, &body, old)?;
            updated(info, target, old, body, &updater)
        }
        (Write::Apply { config, force }, Some(old)) => {
            check_type_meta(info, &config)?;
            check_name_and_namespace(&config, namespace, name)?;
            check_precondition(info, name, &config, old)?;
            applied(info, target, old, config, manager, force)?
        }
        (patch, Some(old)) => {
            // A patch applies to the object as served, managedFields included.
            let rendered = old.render(info);
            let mut doc = rendered.clone();
            match patch {
                Write::MergePatch(p) => document::merge_patch(&mut doc, &p),
                Write::StrategicMerge(p) => {
                    document::strategic_merge(&mut doc, &p).map_err(ApiError::bad_request)?
                }
                Write::JsonPatch(p) => document::json_patch(&mut doc, &p).map_err(|e| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        e,
                        json!({ "name": name, "kind": info.kind }),
                    )
                })?,
                Write::Create(_) | Write::Replace(_) | Write::Apply { .. } => {
                    unreachable!("matched above")
                }
            }
            check_precondition(info, name, &doc, old)?;
            let sent_managed = doc.pointer("/metadata/managedFields").cloned();
            let mut next = updated(info, target, old, doc, &updater);
            if sent_managed.as_ref() != rendered.pointer("/metadata/managedFields") {
                // Setting managedFields replaces them (kubectl's hand-over of client-side
                // apply's fields to server-side apply).
                next.managed = parse_managed_fields(sent_managed.as_ref()).map_err(|e| {
                    info.invalid(
                        name,
                        &[(
                            "metadata.managedFields".to_string(),
                            format!("Invalid value: {e}"),
                        )],
                    )
                })?;
            }
            next
        }
    };
    let mut next = next;
    validate(kind, namespace, name, &next.body)?;
    super::crds::admit(cluster, kind, name, &mut next.body, target, strict)?;
    Ok(commit(cluster, kind, namespace, name, existing, next))
}

/// The API server's validation of what the operator writes where it can fail in a real
/// cluster: `events.k8s.io/v1` Events (required fields and length limits).
fn validate(kind: Kind, namespace: &str, name: &str, body: &Value) -> Result<(), ApiError> {
    if kind != Kind::Event {
        return Ok(());
    }
    let text = |field: &str| body.get(field).and_then(Value::as_str).unwrap_or_default();
    let mut errors = Vec::new();
    let mut require = |field: &str, limit: Option<usize>| {
        let value = text(field);
        if value.is_empty() {
            errors.push((field.to_string(), "Required value".to_string()));
        } else if let Some(limit) = limit.filter(|l| value.len() > *l) {
            errors.push((
                field.to_string(),
                format!("Invalid value: \"\": can have at most {limit} characters"),
            ));
        }
    };
    require("eventTime", None);
    require("reportingController", None);
    require("reportingInstance", Some(128));
    require("action", Some(128));
    require("reason", Some(128));
    if text("note").len() > 1024 {
        errors.push((
            "note".to_string(),
            "Invalid value: \"\": can have at most 1024 characters".to_string(),
        ));
    }
    let regarding = body
        .pointer("/regarding/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // An event about a cluster-scoped object lives in `default`.
    let expected = if regarding.is_empty() {
        "default"
    } else {
        regarding
    };
    if expected != namespace {
        errors.push((
            "regarding.namespace".to_string(),
            format!("Invalid value: \"{regarding}\": does not match event.namespace"),
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(kind.info().invalid(name, &errors))
    }
}

/// `PUT` rules: a stale version conflicts; no version is refused unless the kind allows it.
fn check_replace_version(
    info: &KindInfo,
    name: &str,
    body: &Value,
    old: &StoredObject,
) -> Result<(), ApiError> {
    match resource_version_of(body) {
        None if info.unconditional_update => Ok(()),
        None => Err(info.invalid(
            name,
            &[(
                "metadata.resourceVersion".to_string(),
                "Invalid value: 0x0: must be specified for an update".to_string(),
            )],
        )),
        Some(_) => check_precondition(info, name, body, old),
    }
}

/// A `resourceVersion` sent in a body must be the current one.
fn check_precondition(
    info: &KindInfo,
    name: &str,
    body: &Value,
    old: &StoredObject,
) -> Result<(), ApiError> {
    match resource_version_of(body) {
        Some(sent) if Some(sent) != resource_version_of(&old.body) => Err(info.modified(name)),
        _ => Ok(()),
    }
}

/// A new object from a create body: system metadata set, `status` dropped where the kind
/// has a status subresource, every field owned by the creator.
fn created(
    info: &KindInfo,
    namespace: &str,
    name: &str,
    body: Value,
    creator: &Manager,
) -> StoredObject {
    let mut body = if body.is_object() { body } else { json!({}) };
    body["apiVersion"] = json!(info.api_version());
    body["kind"] = json!(info.kind);
    if !body.get("metadata").is_some_and(Value::is_object) {
        body["metadata"] = json!({});
    }
    let metadata = &mut body["metadata"];
    metadata["name"] = json!(name);
    if info.namespaced {
        metadata["namespace"] = json!(namespace);
    }
    metadata["uid"] = json!(Uuid::new_v4().to_string());
    metadata["creationTimestamp"] = json!(now());
    if let Some(map) = metadata.as_object_mut() {
        map.remove("managedFields");
        map.remove("resourceVersion");
        map.remove("generation");
    }
    if info.status_subresource
        && let Some(map) = body.as_object_mut()
    {
        map.remove("status");
    }
    let mut object = StoredObject {
        body: json!({}),
        managed: BTreeMap::new(),
        created_version: 0,
    };
    record_update(&mut object, creator, body);
    object
}

/// A non-apply write of `candidate` over `old`, keeping system metadata and scope.
fn updated(
    info: &KindInfo,
    target: Target,
    old: &StoredObject,
    candidate: Value,
    updater: &Manager,
) -> StoredObject {
    let mut candidate = scoped(info, target, &old.body, candidate);
    keep_system_metadata(&mut candidate, &old.body);
    let mut object = old.clone();
    record_update(&mut object, updater, candidate);
    object
}

fn keep_system_metadata(candidate: &mut Value, old: &Value) {
    candidate["apiVersion"] = old["apiVersion"].clone();
    candidate["kind"] = old["kind"].clone();
    if !candidate.get("metadata").is_some_and(Value::is_object) {
        candidate["metadata"] = json!({});
    }
    for field in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "generation",
        "resourceVersion",
    ] {
        match old["metadata"].get(field) {
            Some(value) => candidate["metadata"][field] = value.clone(),
            None => {
                if let Some(map) = candidate["metadata"].as_object_mut() {
                    map.remove(field);
                }
            }
        }
    }
    if let Some(map) = candidate["metadata"].as_object_mut() {
        map.remove("managedFields");
    }
}

/// Sets `object.body` to `new_body`; changed fields move to `updater`, removed fields
/// lose their owners.
fn record_update(object: &mut StoredObject, updater: &Manager, new_body: Value) {
    let before = document::leaves(&object.body);
    let after = document::leaves(&new_body);
    for path in before.keys().filter(|p| !after.contains_key(*p)) {
        object.disown(path, None);
    }
    let changed: Vec<FieldPath> = after
        .iter()
        .filter(|(path, value)| ownable(path) && before.get(*path) != Some(value))
        .map(|(path, _)| path.clone())
        .collect();
    for path in &changed {
        object.disown(path, Some(updater));
    }
    object.own(updater, changed);
    object.body = new_body;
}

/// `metadata.managedFields` as a client sent them.
fn parse_managed_fields(entries: Option<&Value>) -> Result<BTreeMap<Manager, Owned>, String> {
    let mut out = BTreeMap::new();
    for entry in entries.and_then(Value::as_array).into_iter().flatten() {
        let name = entry["manager"]
            .as_str()
            .ok_or("every entry needs a manager")?;
        let operation = match entry["operation"].as_str() {
            Some("Apply") => Operation::Apply,
            Some("Update") => Operation::Update,
            other => return Err(format!("operation {other:?}: must be Apply or Update")),
        };
        let subresource = match entry["subresource"].as_str() {
            None | Some("") => None,
            Some("status") => Some("status"),
            Some(other) => return Err(format!("subresource {other:?}: only status exists")),
        };
        let owned = Owned {
            paths: document::paths_of_fields_v1(&entry["fieldsV1"]),
            time: entry["time"].as_str().map_or_else(now, str::to_string),
        };
        out.insert(
            Manager {
                name: name.to_string(),
                operation,
                subresource,
            },
            owned,
        );
    }
    Ok(out)
}

/// The field manager of `kubectl apply` without `--server-side`.
const CLIENT_SIDE_APPLY: &str = "kubectl-client-side-apply";

/// The leaf paths `kubectl.kubernetes.io/last-applied-configuration` sets.
fn last_applied_paths(body: &Value) -> BTreeSet<FieldPath> {
    body.pointer("/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration")
        .and_then(Value::as_str)
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .map(|last| document::leaves(&last).into_keys().collect())
        .unwrap_or_default()
}

/// Server-side apply of `config` by `manager` over `old`.
fn applied(
    info: &KindInfo,
    target: Target,
    old: &StoredObject,
    config: Value,
    manager: &str,
    force: bool,
) -> Result<StoredObject, ApiError> {
    let applier = Manager {
        name: manager.to_string(),
        operation: Operation::Apply,
        subresource: target.subresource(),
    };
    let applied: BTreeMap<FieldPath, Value> = document::leaves(&config)
        .into_iter()
        .filter(|(path, _)| ownable(path) && in_scope(info, target, path))
        .collect();
    let mut object = old.clone();
    let last_applied = last_applied_paths(&old.body);
    let mut conflicts = Vec::new();
    for (path, value) in &applied {
        if document::get_path(&object.body, path) != Some(value) {
            for other in object.other_owners(path, &applier) {
                // The API server's last-applied manager: fields client-side apply set
                // through its last-applied configuration pass to server-side apply
                // without a conflict.
                if other.name == CLIENT_SIDE_APPLY && last_applied.contains(path) {
                    object.disown(path, Some(&applier));
                    continue;
                }
                conflicts.push((other, path.clone()));
            }
        }
    }
    if !conflicts.is_empty() {
        if !force {
            return Err(apply_conflict(info, &conflicts));
        }
        for (_, path) in &conflicts {
            object.disown(path, Some(&applier));
        }
    }
    let previously = object
        .managed
        .remove(&applier)
        .map(|owned| owned.paths)
        .unwrap_or_default();
    for dropped in previously.iter().filter(|p| !applied.contains_key(*p)) {
        if object.other_owners(dropped, &applier).is_empty() {
            document::remove_path(&mut object.body, dropped);
        }
    }
    for (path, value) in &applied {
        document::set_path(&mut object.body, path, value.clone());
    }
    object.own(&applier, applied.into_keys());
    Ok(object)
}

fn apply_conflict(info: &KindInfo, conflicts: &[(Manager, FieldPath)]) -> ApiError {
    let lines: Vec<String> = conflicts
        .iter()
        .map(|(manager, path)| {
            format!(
                "conflict with \"{}\" using {}: .{}",
                manager.name,
                info.api_version(),
                path.join(".")
            )
        })
        .collect();
    let causes: Vec<Value> = conflicts
        .iter()
        .zip(&lines)
        .map(|((_, path), line)| {
            json!({ "reason": "FieldManagerConflict", "message": line, "field": format!(".{}", path.join(".")) })
        })
        .collect();
    let message = match lines.as_slice() {
        [one] => format!("Apply failed with 1 conflict: {one}"),
        many => format!(
            "Apply failed with {} conflicts: {}",
            many.len(),
            many.join("\n")
        ),
    };
    ApiError::new(
        StatusCode::CONFLICT,
        "Conflict",
        message,
        json!({ "causes": causes }),
    )
}

/// Stores `next` unless it changes nothing: sets generation and `resourceVersion`, records
/// the watch event, and rolls workloads out. Answers 201 for a create.
fn commit(
    cluster: &mut Cluster,
    kind: Kind,
    namespace: &str,
    name: &str,
    existing: Option<StoredObject>,
    mut next: StoredObject,
) -> (StatusCode, Value) {
    let info = kind.info();
    let code = if existing.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    if info.tracks_generation {
        let old_generation = existing
            .as_ref()
            .and_then(|o| o.body.pointer("/metadata/generation"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let spec_changed = existing
            .as_ref()
            .is_none_or(|old| generation_relevant(&old.body) != generation_relevant(&next.body));
        let generation = old_generation + u64::from(spec_changed);
        next.body["metadata"]["generation"] = json!(generation);
    }
    if let Some(old) = existing.as_ref().filter(|old| old.same_as(&next)) {
        return (code, old.render(info));
    }
    let resource_version = cluster.next_resource_version();
    next.body["metadata"]["resourceVersion"] = json!(resource_version.to_string());
    if existing.is_none() {
        next.created_version = resource_version;
    }
    let rendered = next.render(info);
    let change = if existing.is_some() {
        ChangeType::Modified
    } else {
        ChangeType::Added
    };
    let previous = existing.map(|old| old.render(info));
    cluster.record_change(kind, namespace, change, rendered.clone(), previous);
    let generation_changed =
        rendered.pointer("/metadata/generation") != rendered.pointer("/status/observedGeneration");
    cluster
        .objects
        .insert((kind, namespace.to_string(), name.to_string()), next);
    if kind.is_workload() && generation_changed {
        super::rollout::spec_changed(cluster, kind, namespace, name);
    }
    (code, rendered)
}

/// Removes the object, recording a `DELETED` event with the next `resourceVersion`.
pub(super) fn delete(
    cluster: &mut Cluster,
    kind: Kind,
    namespace: &str,
    name: &str,
) -> Result<Value, ApiError> {
    let info = kind.info();
    let key = (kind, namespace.to_string(), name.to_string());
    let Some(mut object) = cluster.objects.remove(&key) else {
        return Err(info.not_found(name));
    };
    let resource_version = cluster.next_resource_version();
    object.body["metadata"]["resourceVersion"] = json!(resource_version.to_string());
    let rendered = object.render(info);
    cluster.record_change(kind, namespace, ChangeType::Deleted, rendered.clone(), None);
    Ok(rendered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(name: &str, operation: Operation) -> Manager {
        Manager {
            name: name.to_string(),
            operation,
            subresource: None,
        }
    }

    #[test]
    fn apply_drops_fields_the_manager_stops_applying_and_conflicts_on_foreign_ones() {
        let info = Kind::Deployment.info();
        let creator = manager("helm", Operation::Update);
        let base = created(
            info,
            "ns",
            "web",
            json!({"spec": {"replicas": 2, "template": {"metadata": {"annotations": {"a": "1"}}}}}),
            &creator,
        );
        let first = applied(
            info,
            Target::Main,
            &base,
            json!({"spec": {"template": {"metadata": {"annotations": {"b": "2", "c": "3"}}}}}),
            "rotator",
            false,
        )
        .unwrap();
        let second = applied(
            info,
            Target::Main,
            &first,
            json!({"spec": {"template": {"metadata": {"annotations": {"b": "2"}}}}}),
            "rotator",
            false,
        )
        .unwrap();
        assert_eq!(
            second.body.pointer("/spec/template/metadata/annotations"),
            Some(&json!({"a": "1", "b": "2"}))
        );
        let refused = applied(
            info,
            Target::Main,
            &second,
            json!({"spec": {"replicas": 3}}),
            "rotator",
            false,
        )
        .unwrap_err();
        assert_eq!(refused.code, StatusCode::CONFLICT);
        assert!(
            refused.message.contains("conflict with \"helm\""),
            "{}",
            refused.message
        );
        let forced = applied(
            info,
            Target::Main,
            &second,
            json!({"spec": {"replicas": 3}}),
            "rotator",
            true,
        )
        .unwrap();
        assert_eq!(forced.body.pointer("/spec/replicas"), Some(&json!(3)));
    }

    #[test]
    fn status_writes_touch_only_status_and_main_writes_never_status() {
        let info = Kind::Rotation.info();
        let user = manager("kubectl", Operation::Update);
        let base = created(
            info,
            "ns",
            "r",
            json!({"spec": {"a": 1}, "status": {"x": 1}}),
            &user,
        );
        assert!(base.body.get("status").is_none(), "create drops status");
        let status = updated(
            info,
            Target::Status,
            &base,
            json!({"spec": {"a": 2}, "status": {"x": 2}}),
            &user,
        );
        assert_eq!(status.body["spec"], json!({"a": 1}));
        assert_eq!(status.body["status"], json!({"x": 2}));
        let main = updated(
            info,
            Target::Main,
            &status,
            json!({"spec": {"a": 3}}),
            &user,
        );
        assert_eq!(main.body["spec"], json!({"a": 3}));
        assert_eq!(main.body["status"], json!({"x": 2}));
    }
}
