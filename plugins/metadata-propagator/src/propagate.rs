//! Selecting fields and building the payload: plain functions, testable on
//! the host.

use serde_json::{Map, Value, json};

/// Which fields to propagate and where, from the plugin's config.
#[derive(Debug)]
pub struct Propagation {
    fields: Vec<String>,
    target: String,
}

/// True when `path` is `field` or lies under it (`profile.tier` under
/// `profile`, but not `profiles`).
fn selected(field: &str, path: &str) -> bool {
    path == field
        || (path.len() > field.len()
            && path.starts_with(field)
            && path.as_bytes()[field.len()] == b'.')
}

impl Propagation {
    /// Parses the config (JSON text) over the defaults.
    pub fn from_config(text: &str) -> Result<Self, String> {
        let mut propagation = Propagation {
            fields: vec!["status".to_owned(), "priority".to_owned()],
            target: "ui".to_owned(),
        };
        let config: Value =
            serde_json::from_str(text).map_err(|e| format!("config is not valid JSON: {e}"))?;
        let config = config.as_object().ok_or("config must be a JSON object")?;
        for (key, value) in config {
            match key.as_str() {
                "fields" => {
                    propagation.fields = value
                        .as_array()
                        .ok_or("\"fields\" must be an array of dotted paths")?
                        .iter()
                        .map(|f| match f.as_str() {
                            Some(s) if !s.is_empty() => Ok(s.to_owned()),
                            _ => Err("\"fields\" must contain only non-empty strings".to_owned()),
                        })
                        .collect::<Result<_, _>>()?;
                }
                "target" => {
                    propagation.target = match value.as_str() {
                        Some(s) if !s.is_empty() => s.to_owned(),
                        _ => return Err("\"target\" must be a non-empty string".to_owned()),
                    };
                }
                other => return Err(format!("unknown config key {other:?}")),
            }
        }
        Ok(propagation)
    }

    /// The target to publish to.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The payload for a committed change, or `None` when none of the
    /// `changed` paths is a propagated field. `values` is the JSON object
    /// mapping each changed path to its new value.
    #[allow(clippy::too_many_arguments)]
    pub fn payload(
        &self,
        tenant: &str,
        session_id: &str,
        action: &str,
        changed: &[String],
        values: &str,
        timestamp: &str,
        event_id: u64,
    ) -> Option<String> {
        let kept: Vec<&String> = changed
            .iter()
            .filter(|path| self.fields.iter().any(|f| selected(f, path)))
            .collect();
        if kept.is_empty() {
            return None;
        }
        let values = match serde_json::from_str(values) {
            Ok(Value::Object(values)) => values,
            _ => Map::new(),
        };
        let fields: Map<String, Value> = kept
            .into_iter()
            .map(|path| {
                (
                    path.clone(),
                    values.get(path).cloned().unwrap_or(Value::Null),
                )
            })
            .collect();
        Some(
            json!({
                "session_id": session_id,
                "tenant": tenant,
                "action": action,
                "fields": fields,
                "timestamp": timestamp,
                "event_id": event_id,
            })
            .to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(config: &str, action: &str, changed: &[&str], values: &str) -> Option<String> {
        let changed: Vec<String> = changed.iter().map(|s| s.to_string()).collect();
        Propagation::from_config(config).unwrap().payload(
            "acme",
            "s1",
            action,
            &changed,
            values,
            "2025-01-31T12:00:00Z",
            12,
        )
    }

    #[test]
    fn publishes_only_listed_fields() {
        assert_eq!(
            payload(
                "{}",
                "update",
                &["status", "notes", "priority"],
                r#"{"status":"closed","notes":"x","priority":2}"#
            )
            .as_deref(),
            Some(
                r#"{"session_id":"s1","tenant":"acme","action":"update","fields":{"status":"closed","priority":2},"timestamp":"2025-01-31T12:00:00Z","event_id":12}"#
            )
        );
    }

    #[test]
    fn nothing_relevant_publishes_nothing() {
        assert_eq!(payload("{}", "update", &["notes"], r#"{"notes":1}"#), None);
        assert_eq!(payload("{}", "update", &[], "{}"), None);
        assert_eq!(
            payload("{}", "update", &["statuses"], r#"{"statuses":1}"#),
            None
        );
    }

    #[test]
    fn paths_under_a_field_and_deletes() {
        let config = r#"{"fields":["profile"],"target":"crm"}"#;
        let p = Propagation::from_config(config).unwrap();
        assert_eq!(p.target(), "crm");
        assert_eq!(
            payload(
                config,
                "delete",
                &["profile.tier", "status"],
                r#"{"profile.tier":null,"status":null}"#
            )
            .as_deref(),
            Some(
                r#"{"session_id":"s1","tenant":"acme","action":"delete","fields":{"profile.tier":null},"timestamp":"2025-01-31T12:00:00Z","event_id":12}"#
            )
        );
        // A value missing from `values` is reported as null.
        assert!(
            payload(config, "update", &["profile"], "{}")
                .unwrap()
                .contains(r#""fields":{"profile":null}"#)
        );
    }

    #[test]
    fn bad_configs() {
        for bad in [
            "[]",
            r#"{"fields":"status"}"#,
            r#"{"fields":[""]}"#,
            r#"{"target":""}"#,
            r#"{"target":1}"#,
            r#"{"field":[]}"#,
        ] {
            assert!(Propagation::from_config(bad).is_err(), "{bad}");
        }
    }
}
