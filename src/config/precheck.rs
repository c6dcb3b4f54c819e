//! Every problem of a configuration file in one pass. serde stops at the first value it
//! cannot read, and the values with a syntax of their own (durations, templates) are the
//! ones users get wrong most; one bad duration would hide a bad GUID three lines further
//! down. So before the typed read, the rotations' durations and templates are checked here,
//! each at its path, and the bad ones are taken out of the document (a default, or a
//! harmless literal, takes their place) so the typed read and the checks after it go on
//! to find everything else.

use super::duration::HumanDuration;
use crate::template::Template;
use serde_yaml::{Mapping, Value};

/// The duration fields of a rotation and of its SMTP verification; all have defaults.
const ROTATION_DURATIONS: [&str; 5] = ["lifetime", "renewBefore", "revokeGracePeriod", "orphanGracePeriod", "requireUnusedFor"];
const SMTP_DURATIONS: [&str; 3] = ["retryBudget", "retryInterval", "timeout"];
/// Stands in for a template that does not parse; it has no variables, so it cannot
/// cause another problem of its own.
const TEMPLATE_STAND_IN: &str = "invalid-template";

/// The document with its unreadable values taken out, and what was wrong with them.
pub(super) struct Prechecked {
    pub value: Value,
    pub problems: Vec<String>,
    /// `(rotation path, field)` of every value taken out: later problems about the same
    /// field of the same rotation follow from the stand-in, not from the file.
    taken_out: Vec<(String, &'static str)>,
}

impl Prechecked {
    /// Whether a problem found after the typed read is about a value taken out here.
    pub fn follows_from_a_stand_in(&self, problem: &str) -> bool {
        self.taken_out
            .iter()
            .any(|(at, field)| problem.starts_with(at.as_str()) && problem.contains(field))
    }
}

pub(super) fn precheck(mut value: Value) -> Prechecked {
    let mut problems = Vec::new();
    let mut taken_out = Vec::new();
    let rotations = value.get_mut("rotations").and_then(Value::as_sequence_mut);
    for (index, rotation) in rotations.into_iter().flatten().enumerate() {
        let Some(rotation) = rotation.as_mapping_mut() else { continue };
        let name = rotation.get("name").and_then(Value::as_str).unwrap_or_default();
        let at = format!("rotations[{index}] ({name})");
        let mut found = |field: &'static str, problem: String| {
            problems.push(problem);
            taken_out.push((at.clone(), field));
        };
        for field in ROTATION_DURATIONS {
            if let Some(problem) = take_out_bad_duration(rotation, field, &at) {
                found(field, problem);
            }
        }
        if let Some(smtp) = mapping_at(rotation, &["verification", "smtp"]) {
            for field in SMTP_DURATIONS {
                if let Some(problem) = take_out_bad_duration(smtp, field, &format!("{at}.verification.smtp")) {
                    found(field, problem);
                }
            }
            if let Some(problem) = replace_bad_template(smtp, "username", &format!("{at}.verification.smtp")) {
                found("username", problem);
            }
        }
        let targets = rotation.get_mut("targets").and_then(Value::as_sequence_mut);
        for (target_index, target) in targets.into_iter().flatten().enumerate() {
            let Some(target) = target.as_mapping_mut() else { continue };
            let Some(keys) = mapping_at(target, &["kubernetesSecret", "keys"]) else { continue };
            let key_names: Vec<String> = keys.keys().filter_map(|k| k.as_str().map(str::to_string)).collect();
            for key in key_names {
                let path = format!("{at}.targets[{target_index}].kubernetesSecret.keys");
                if let Some(problem) = replace_bad_template(keys, &key, &path) {
                    found("keys", problem);
                }
            }
        }
    }
    Prechecked { value, problems, taken_out }
}

fn mapping_at<'a>(mapping: &'a mut Mapping, path: &[&str]) -> Option<&'a mut Mapping> {
    path.iter()
        .try_fold(mapping, |current, key| current.get_mut(*key).and_then(Value::as_mapping_mut))
}

/// Removes `field` when it is text that is not a duration (its default then applies).
/// Values of other types are left for the typed read to refuse.
fn take_out_bad_duration(mapping: &mut Mapping, field: &str, at: &str) -> Option<String> {
    let text = mapping.get(field)?.as_str()?;
    let error = HumanDuration::parse(text).err()?;
    mapping.remove(field);
    Some(format!("{at}.{field}: {error}"))
}

/// Replaces `field` when it is text that is not a valid template.
fn replace_bad_template(mapping: &mut Mapping, field: &str, at: &str) -> Option<String> {
    let text = mapping.get(field)?.as_str()?;
    let error = Template::parse(text).err()?;
    mapping.insert(field.into(), TEMPLATE_STAND_IN.into());
    Some(format!("{at}.{field}: {error}"))
}
