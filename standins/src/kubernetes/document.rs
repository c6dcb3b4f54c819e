//! JSON document operations the API server stand-in applies to stored objects: JSON merge
//! patches (RFC 7386), JSON patches (RFC 6902), a strategic merge patch close enough for
//! pod templates, and the leaf-path view that server-side apply uses to track ownership.
//!
//! Arrays are atomic throughout (one leaf), as they are in server-side apply for every
//! list not declared `x-kubernetes-list-type: map`.

use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// A path to a leaf, e.g. `["spec", "template", "metadata", "annotations", "a"]`.
pub(super) type FieldPath = Vec<String>;

/// Applies an RFC 7386 JSON merge patch: objects merge, `null` removes, anything else replaces.
pub(super) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(target) = target else {
        unreachable!("made an object above")
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Applies a strategic merge patch as the API server does for the parts a controller
/// touches: maps merge, `null` removes, and a list whose elements all carry a `name`
/// (containers, env, volumes) merges element by element on `name`, where an element
/// `{"name": …, "$patch": "delete"}` removes it. Other lists are replaced. Any other
/// `$`-directive is refused, naming it.
pub(super) fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), String> {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    if let Some(directive) = patch.keys().find(|k| k.starts_with('$')) {
        return Err(format!(
            "the stand-in does not support the strategic merge directive {directive:?}; send a JSON merge patch instead"
        ));
    }
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(target) = target else {
        unreachable!("made an object above")
    };
    for (key, value) in patch {
        match (target.get_mut(key), value) {
            (_, Value::Null) => {
                target.remove(key);
            }
            (Some(Value::Array(existing)), Value::Array(elements)) if all_named(elements) => {
                merge_named_list(existing, elements)?;
            }
            (Some(existing), Value::Object(_)) => strategic_merge(existing, value)?,
            _ => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
    Ok(())
}

fn all_named(elements: &[Value]) -> bool {
    !elements.is_empty()
        && elements
            .iter()
            .all(|e| e.get("name").and_then(Value::as_str).is_some())
}

fn merge_named_list(existing: &mut Vec<Value>, elements: &[Value]) -> Result<(), String> {
    for element in elements {
        let name = element.get("name").cloned();
        let position = existing.iter().position(|e| e.get("name") == name.as_ref());
        let delete = element.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(index), true) => {
                existing.remove(index);
            }
            (None, true) => {}
            (Some(index), false) => strategic_merge(&mut existing[index], element)?,
            (None, false) => existing.push(element.clone()),
        }
    }
    Ok(())
}

/// Applies an RFC 6902 JSON patch (`add`, `remove`, `replace`, `test`, `move`, `copy`).
pub(super) fn json_patch(target: &mut Value, operations: &Value) -> Result<(), String> {
    let Some(operations) = operations.as_array() else {
        return Err("a JSON patch must be an array of operations".to_string());
    };
    for operation in operations {
        let op = operation
            .get("op")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let path = pointer_of(operation, "path")?;
        match op {
            "add" => add(target, &path, value_of(operation)?)?,
            "remove" => {
                remove(target, &path).ok_or_else(|| missing(&path))?;
            }
            "replace" => {
                remove(target, &path).ok_or_else(|| missing(&path))?;
                add(target, &path, value_of(operation)?)?;
            }
            "test" => {
                if target.pointer(&path) != Some(&value_of(operation)?) {
                    return Err(format!("testing value {path} failed"));
                }
            }
            "move" => {
                let from = pointer_of(operation, "from")?;
                let value = remove(target, &from).ok_or_else(|| missing(&from))?;
                add(target, &path, value)?;
            }
            "copy" => {
                let from = pointer_of(operation, "from")?;
                let value = target
                    .pointer(&from)
                    .cloned()
                    .ok_or_else(|| missing(&from))?;
                add(target, &path, value)?;
            }
            other => return Err(format!("unexpected JSON patch operation {other:?}")),
        }
    }
    Ok(())
}

fn pointer_of(operation: &Value, key: &str) -> Result<String, String> {
    operation
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "JSON patch operation {} has no {key:?}",
                describe(operation)
            )
        })
}

/// An operation as errors name it: its `op` and `path`, never its values (a patch to a
/// Secret carries secret values).
fn describe(operation: &Value) -> String {
    let field = |key: &str| {
        operation
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    format!("{:?} at {:?}", field("op"), field("path"))
}

fn value_of(operation: &Value) -> Result<Value, String> {
    operation.get("value").cloned().ok_or_else(|| {
        format!(
            "JSON patch operation {} has no \"value\"",
            describe(operation)
        )
    })
}

fn missing(path: &str) -> String {
    format!("doc is missing path: {path:?}")
}

/// Splits a JSON pointer into its parent pointer and unescaped last token.
fn split_pointer(path: &str) -> Result<(&str, String), String> {
    let index = path
        .rfind('/')
        .ok_or_else(|| format!("{path:?} is not a JSON pointer"))?;
    let token = path[index + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..index], token))
}

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, token) = split_pointer(path)?;
    match target.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(token, value);
            Ok(())
        }
        Some(Value::Array(list)) => {
            let index = if token == "-" {
                list.len()
            } else {
                token.parse::<usize>().map_err(|_| missing(path))?
            };
            if index > list.len() {
                return Err(missing(path));
            }
            list.insert(index, value);
            Ok(())
        }
        _ => Err(missing(path)),
    }
}

fn remove(target: &mut Value, path: &str) -> Option<Value> {
    let (parent, token) = split_pointer(path).ok()?;
    match target.pointer_mut(parent)? {
        Value::Object(map) => map.remove(&token),
        Value::Array(list) => {
            let index = token.parse::<usize>().ok().filter(|i| *i < list.len())?;
            Some(list.remove(index))
        }
        _ => None,
    }
}

/// Every leaf of `value` with its path: scalars, `null`s and arrays are leaves; empty
/// objects have none.
pub(super) fn leaves(value: &Value) -> BTreeMap<FieldPath, Value> {
    let mut out = BTreeMap::new();
    collect_leaves(value, &mut Vec::new(), &mut out);
    out
}

fn collect_leaves(value: &Value, path: &mut FieldPath, out: &mut BTreeMap<FieldPath, Value>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                path.push(key.clone());
                collect_leaves(child, path, out);
                path.pop();
            }
        }
        leaf => {
            out.insert(path.clone(), leaf.clone());
        }
    }
}

pub(super) fn get_path<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |node, key| node.get(key))
}

/// Sets the leaf at `path`, creating (or replacing non-object) parents as objects.
pub(super) fn set_path(value: &mut Value, path: &[String], leaf: Value) {
    let Some((last, parents)) = path.split_last() else {
        *value = leaf;
        return;
    };
    let mut node = value;
    for key in parents {
        if !node.is_object() {
            *node = json!({});
        }
        node = node
            .as_object_mut()
            .map(|map| map.entry(key.clone()).or_insert_with(|| json!({})))
            .unwrap_or_else(|| unreachable!("made an object above"));
    }
    if !node.is_object() {
        *node = json!({});
    }
    if let Value::Object(map) = node {
        map.insert(last.clone(), leaf);
    }
}

/// Removes the leaf at `path`, then any parent object it leaves empty.
pub(super) fn remove_path(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let Some(Value::Object(parent)) = parents.iter().try_fold(&mut *value, |n, k| n.get_mut(k))
    else {
        return;
    };
    parent.remove(last);
    if parent.is_empty() && !parents.is_empty() {
        remove_path(value, parents);
    }
}

/// The leaf paths a `fieldsV1` trie names (the inverse of [`fields_v1`]): keys `f:name`
/// descend; a list's element keys (`k:`, `i:`, `v:`) make the list itself the leaf, as lists
/// are leaves here; `.` (the node itself) is skipped.
pub(super) fn paths_of_fields_v1(trie: &Value) -> BTreeSet<FieldPath> {
    fn walk(node: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        let Some(map) = node.as_object() else { return };
        let mut descended = false;
        for (key, child) in map {
            if let Some(name) = key.strip_prefix("f:") {
                descended = true;
                path.push(name.to_string());
                walk(child, path, out);
                path.pop();
            } else if key != "." {
                out.insert(path.clone());
                return;
            }
        }
        if !descended && !path.is_empty() {
            out.insert(path.clone());
        }
    }
    let mut out = BTreeSet::new();
    walk(trie, &mut Vec::new(), &mut out);
    out
}

/// The `fieldsV1` trie of a set of leaf paths, as `managedFields` spells it.
pub(super) fn fields_v1(paths: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut node = &mut root;
        for key in path {
            node = node
                .entry(format!("f:{key}"))
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .unwrap_or_else(|| unreachable!("trie nodes are objects"));
        }
    }
    Value::Object(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_merges_objects_and_null_removes() {
        let mut doc = json!({"a": {"b": 1, "c": 2}, "d": [1, 2]});
        merge_patch(&mut doc, &json!({"a": {"b": null, "e": 3}, "d": [3]}));
        assert_eq!(doc, json!({"a": {"c": 2, "e": 3}, "d": [3]}));
    }

    #[test]
    fn strategic_merge_merges_named_lists_by_name() {
        let mut doc =
            json!({"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]});
        strategic_merge(
            &mut doc,
            &json!({"containers": [{"name": "b", "image": "z"}, {"name": "a", "$patch": "delete"}]}),
        )
        .unwrap();
        assert_eq!(doc, json!({"containers": [{"name": "b", "image": "z"}]}));
        let refused = strategic_merge(&mut doc, &json!({"$retainKeys": []})).unwrap_err();
        assert!(refused.contains("$retainKeys"), "{refused}");
    }

    #[test]
    fn fields_v1_tries_read_back_as_the_paths_they_name() {
        let paths: BTreeSet<FieldPath> = [
            vec!["spec".to_string(), "lifetime".to_string()],
            vec![
                "metadata".to_string(),
                "labels".to_string(),
                "app".to_string(),
            ],
        ]
        .into_iter()
        .collect();
        assert_eq!(paths_of_fields_v1(&fields_v1(&paths)), paths);
        let with_list = json!({ "f:spec": { ".": {}, "f:targets": { "k:{\"name\":\"a\"}": {} } } });
        assert_eq!(
            paths_of_fields_v1(&with_list),
            BTreeSet::from([vec!["spec".to_string(), "targets".to_string()]])
        );
    }

    #[test]
    fn a_malformed_json_patch_operation_is_named_without_its_values() {
        let mut doc = json!({ "data": {} });
        let error = json_patch(
            &mut doc,
            &json!([{ "op": "add", "path": "/data/SMTP_PASSWORD", "valeu": "s3cret" }]),
        )
        .unwrap_err();
        assert_eq!(
            error,
            "JSON patch operation \"add\" at \"/data/SMTP_PASSWORD\" has no \"value\""
        );
    }

    #[test]
    fn json_patch_adds_replaces_tests_and_removes() {
        let mut doc = json!({"metadata": {"finalizers": ["a"]}, "spec": {"x": 1}});
        json_patch(
            &mut doc,
            &json!([
                {"op": "test", "path": "/spec/x", "value": 1},
                {"op": "replace", "path": "/spec/x", "value": 2},
                {"op": "add", "path": "/metadata/finalizers/-", "value": "b"},
                {"op": "remove", "path": "/metadata/finalizers/0"},
            ]),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"metadata": {"finalizers": ["b"]}, "spec": {"x": 2}})
        );
        assert!(
            json_patch(
                &mut doc,
                &json!([{"op": "test", "path": "/spec/x", "value": 1}])
            )
            .is_err()
        );
    }

    #[test]
    fn leaves_set_and_remove_round_trip_and_prune_empty_parents() {
        let doc = json!({"spec": {"a": {"b": 1}, "list": [1]}, "empty": {}});
        let found = leaves(&doc);
        assert_eq!(found.len(), 2);
        let mut rebuilt = json!({});
        for (path, leaf) in &found {
            set_path(&mut rebuilt, path, leaf.clone());
        }
        assert_eq!(rebuilt, json!({"spec": {"a": {"b": 1}, "list": [1]}}));
        remove_path(&mut rebuilt, &["spec".into(), "a".into(), "b".into()]);
        assert_eq!(rebuilt, json!({"spec": {"list": [1]}}));
        assert_eq!(
            fields_v1(&found.into_keys().collect()),
            json!({"f:spec": {"f:a": {"f:b": {}}, "f:list": {}}})
        );
    }
}
