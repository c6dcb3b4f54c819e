//! `labelSelector` and `fieldSelector` query parameters, parsed and matched the way the API
//! server does for list and watch requests.
//!
//! Label selectors support the whole set-based grammar (`k=v`, `k==v`, `k!=v`, `k`, `!k`,
//! `k in (a,b)`, `k notin (a,b)`). Field selectors support `metadata.name` and
//! `metadata.namespace` (plus `type` on Secrets) with `=`, `==` and `!=`; any other field is
//! refused as the API server refuses it.

use serde_json::Value;
use std::collections::BTreeSet;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
}

impl Requirement {
    fn matches(&self, object: &Value) -> bool {
        let label = |key: &str| {
            object
                .pointer("/metadata/labels")
                .and_then(|labels| labels.get(key))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        match self {
            Requirement::Exists(key) => label(key).is_some(),
            Requirement::NotExists(key) => label(key).is_none(),
            Requirement::Equals(key, value) => label(key).as_ref() == Some(value),
            Requirement::NotEquals(key, value) => label(key).as_ref() != Some(value),
            Requirement::In(key, values) => label(key).is_some_and(|v| values.contains(&v)),
            Requirement::NotIn(key, values) => !label(key).is_some_and(|v| values.contains(&v)),
        }
    }
}

/// A parsed `labelSelector`; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        split_top_level(text)
            .into_iter()
            .filter(|term| !term.is_empty())
            .map(parse_requirement)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub(super) fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|r| r.matches(object))
    }
}

/// Splits on commas outside parentheses: `a in (x,y),b` is two terms.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (index, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(text[start..index].trim());
                start = index + 1;
            }
            _ => {}
        }
    }
    terms.push(text[start..].trim());
    terms
}

fn parse_requirement(term: &str) -> Result<Requirement, String> {
    let unparsable = || format!("unable to parse requirement: {term:?}");
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::NotExists(checked_key(key.trim(), term)?));
    }
    if let Some(open) = term.find('(') {
        let close = term
            .rfind(')')
            .filter(|c| *c > open)
            .ok_or_else(unparsable)?;
        let values: BTreeSet<String> = term[open + 1..close]
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        let mut words = term[..open].split_whitespace();
        let (key, operator) = (words.next().ok_or_else(unparsable)?, words.next());
        let key = checked_key(key, term)?;
        return match operator {
            Some("in") => Ok(Requirement::In(key, values)),
            Some("notin") => Ok(Requirement::NotIn(key, values)),
            _ => Err(unparsable()),
        };
    }
    for (operator, negated) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((key, value)) = term.split_once(operator) {
            let key = checked_key(key.trim(), term)?;
            let value = value.trim().to_string();
            return Ok(if negated {
                Requirement::NotEquals(key, value)
            } else {
                Requirement::Equals(key, value)
            });
        }
    }
    Ok(Requirement::Exists(checked_key(term, term)?))
}

fn checked_key(key: &str, term: &str) -> Result<String, String> {
    let valid = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._/".contains(&b));
    if valid {
        Ok(key.to_string())
    } else {
        Err(format!(
            "unable to parse requirement: {term:?}: invalid label key {key:?}"
        ))
    }
}

/// A parsed `fieldSelector`; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct FieldSelector(Vec<(String, String, bool)>);

impl FieldSelector {
    /// `extra_fields`: fields beyond `metadata.name`/`metadata.namespace` the kind supports.
    pub(super) fn parse(text: &str, extra_fields: &[&str]) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, value, negated) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, v, false)
            } else {
                return Err(format!(
                    "invalid selector: '{text}'; can't understand '{term}'"
                ));
            };
            let field = field.trim();
            let supported = ["metadata.name", "metadata.namespace"].contains(&field)
                || extra_fields.contains(&field);
            if !supported {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_string(), value.trim().to_string(), negated));
        }
        Ok(Self(terms))
    }

    pub(super) fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, value, negated)| {
            let pointer = format!("/{}", field.replace('.', "/"));
            let actual = object.pointer(&pointer).and_then(Value::as_str);
            (actual == Some(value.as_str())) != *negated
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labelled(labels: Value) -> Value {
        json!({ "metadata": { "name": "x", "namespace": "ns", "labels": labels }, "type": "Opaque" })
    }

    #[test]
    fn label_selectors_follow_the_set_based_grammar() {
        let object =
            labelled(json!({"app.kubernetes.io/managed-by": "entra-rotator", "tier": "web"}));
        for (selector, expected) in [
            ("", true),
            ("app.kubernetes.io/managed-by=entra-rotator", true),
            ("app.kubernetes.io/managed-by==helm", false),
            ("tier!=db", true),
            ("tier,!missing", true),
            ("tier in (web, db),app.kubernetes.io/managed-by", true),
            ("tier notin (web)", false),
            ("!tier", false),
        ] {
            let parsed = LabelSelector::parse(selector).unwrap();
            assert_eq!(parsed.matches(&object), expected, "{selector}");
        }
        assert!(LabelSelector::parse("tier in web").is_err());
        assert!(LabelSelector::parse("bad key=1").is_err());
    }

    #[test]
    fn field_selectors_support_name_namespace_and_refuse_others() {
        let object = labelled(json!({}));
        let by_name =
            FieldSelector::parse("metadata.name=x,metadata.namespace!=other", &[]).unwrap();
        assert!(by_name.matches(&object));
        assert!(
            FieldSelector::parse("type=Opaque", &["type"])
                .unwrap()
                .matches(&object)
        );
        let refused = FieldSelector::parse("spec.app=1", &[]).unwrap_err();
        assert_eq!(refused, "field label not supported: spec.app");
    }
}
