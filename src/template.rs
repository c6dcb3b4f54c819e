//! `{{name}}` placeholders in usernames and Kubernetes Secret keys.
//!
//! Hand-rolled on purpose: we need plain substitution of a closed set of names, checked
//! when the configuration is loaded; a general template engine would accept loops,
//! filters and unknown names that we would then have to forbid.

use std::collections::BTreeMap;
use std::fmt;

/// The names a template may use.
pub const VARIABLES: &[&str] = &[
    "tenantId",
    "clientId",
    "objectId",
    "keyId",
    "secret",
    "expiresAt",
    "smtpHost",
    "smtpPort",
    "smtpUsername",
    "smtpFrom",
];

#[derive(Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(&'static str),
}

/// A parsed template. Its `Debug` shows the template text, never a rendered value.
#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("template {template:?} uses unknown variable {{{{{name}}}}}; known variables: {known}", known = VARIABLES.join(", "))]
    UnknownVariable { template: String, name: String },
    #[error("template {template:?} has an unclosed '{{{{' at byte {at}")]
    Unclosed { template: String, at: usize },
}

impl Template {
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = source;
        let mut offset = 0;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or(TemplateError::Unclosed {
                template: source.to_string(),
                at: offset + open,
            })?;
            let name = after[..close].trim();
            let known = VARIABLES.iter().find(|v| **v == name).ok_or_else(|| {
                TemplateError::UnknownVariable { template: source.to_string(), name: name.to_string() }
            })?;
            parts.push(Part::Var(known));
            let consumed = open + 2 + close + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Self { source: source.to_string(), parts })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether rendering needs the given variable (e.g. `secret`).
    pub fn uses(&self, name: &str) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Var(v) if *v == name))
    }

    /// Substitutes the variables; a variable missing from `vars` renders as empty.
    pub fn render(&self, vars: &BTreeMap<&str, &str>) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Text(text) => text.as_str(),
                Part::Var(name) => vars.get(name).copied().unwrap_or(""),
            })
            .collect()
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Template({:?})", self.source)
    }
}

impl<'de> serde::Deserialize<'de> for Template {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        Template::parse(&source).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_three_acs_username_forms() {
        let vars = BTreeMap::from([("clientId", "c1"), ("tenantId", "t1")]);
        let pipe = Template::parse("my-acs|{{clientId}}|{{tenantId}}").unwrap();
        let dots = Template::parse("my-acs.{{ clientId }}.{{tenantId}}").unwrap();
        let custom = Template::parse("smtp-user-dify").unwrap();
        assert_eq!(pipe.render(&vars), "my-acs|c1|t1");
        assert_eq!(dots.render(&vars), "my-acs.c1.t1");
        assert_eq!(custom.render(&vars), "smtp-user-dify");
    }

    #[test]
    fn rejects_unknown_variables_and_unclosed_braces() {
        let err = Template::parse("{{clientID}}").unwrap_err();
        assert!(err.to_string().contains("unknown variable {{clientID}}"), "{err}");
        assert!(err.to_string().contains("clientId"), "lists the known names: {err}");
        assert!(matches!(Template::parse("a{{secret"), Err(TemplateError::Unclosed { at: 1, .. })));
    }

    #[test]
    fn reports_whether_the_secret_is_used() {
        assert!(Template::parse("{{secret}}").unwrap().uses("secret"));
        assert!(!Template::parse("{{keyId}}").unwrap().uses("secret"));
    }
}
