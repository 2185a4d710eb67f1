//! Masking and hiding dotted paths in a JSON object: plain functions, testable
//! on the host.

use serde_json::{Map, Value};

/// What to mask and hide, from the plugin's config.
#[derive(Debug, PartialEq)]
pub struct Redaction {
    mask: Vec<String>,
    hide: Vec<String>,
    mask_with: Value,
}

fn paths(value: &Value, what: &str) -> Result<Vec<String>, String> {
    let items = value
        .as_array()
        .ok_or_else(|| format!("\"{what}\" must be an array of dotted paths"))?;
    items
        .iter()
        .map(|item| match item.as_str() {
            Some(s) if !s.is_empty() => Ok(s.to_owned()),
            _ => Err(format!("\"{what}\" must contain only non-empty strings")),
        })
        .collect()
}

/// The object that holds the last segment of `path`, and that segment.
fn parent_mut<'a, 'p>(
    root: &'a mut Map<String, Value>,
    path: &'p str,
) -> Option<(&'a mut Map<String, Value>, &'p str)> {
    let (parents, last) = match path.rsplit_once('.') {
        Some((parents, last)) => (Some(parents), last),
        None => (None, path),
    };
    let mut object = root;
    for key in parents.into_iter().flat_map(|p| p.split('.')) {
        object = object.get_mut(key)?.as_object_mut()?;
    }
    Some((object, last))
}

impl Redaction {
    /// Parses the config (JSON text); unknown keys are rejected so a typo
    /// cannot silently leave something unmasked.
    pub fn from_config(text: &str) -> Result<Self, String> {
        let config: Value =
            serde_json::from_str(text).map_err(|e| format!("config is not valid JSON: {e}"))?;
        let config = config.as_object().ok_or("config must be a JSON object")?;
        let mut redaction = Redaction {
            mask: Vec::new(),
            hide: Vec::new(),
            mask_with: Value::from("***"),
        };
        for (key, value) in config {
            match key.as_str() {
                "mask" => redaction.mask = paths(value, key)?,
                "hide" => redaction.hide = paths(value, key)?,
                "mask_with" => redaction.mask_with = value.clone(),
                other => return Err(format!("unknown config key {other:?}")),
            }
        }
        Ok(redaction)
    }

    /// Masks and hides in `metadata` (JSON text). Anything that is not a JSON
    /// object is returned as it is.
    pub fn apply(&self, metadata: &str) -> String {
        let Ok(Value::Object(mut root)) = serde_json::from_str(metadata) else {
            return metadata.to_owned();
        };
        for path in &self.mask {
            if let Some((object, key)) = parent_mut(&mut root, path)
                && let Some(value) = object.get_mut(key)
            {
                *value = self.mask_with.clone();
            }
        }
        for path in &self.hide {
            if let Some((object, key)) = parent_mut(&mut root, path) {
                object.remove(key);
            }
        }
        Value::Object(root).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(config: &str, metadata: &str) -> String {
        Redaction::from_config(config).unwrap().apply(metadata)
    }

    #[test]
    fn masks_and_hides() {
        let config = r#"{"mask":["api_key","profile.ssn","missing","profile.x.y"],"hide":["internal","profile.secret"]}"#;
        let metadata = r#"{"status":"open","api_key":"k-123","profile":{"ssn":"123-45","tier":"gold","secret":1},"internal":{"a":1}}"#;
        assert_eq!(
            redact(config, metadata),
            r#"{"status":"open","api_key":"***","profile":{"ssn":"***","tier":"gold"}}"#
        );
    }

    #[test]
    fn custom_mask_and_defaults() {
        assert_eq!(
            redact(r#"{"mask":["a"],"mask_with":null}"#, r#"{"a":"x","b":2}"#),
            r#"{"a":null,"b":2}"#
        );
        assert_eq!(
            redact(
                r#"{"mask":["a"],"mask_with":"[redacted]"}"#,
                r#"{"a":{"deep":1}}"#
            ),
            r#"{"a":"[redacted]"}"#
        );
        // Nothing configured: unchanged (key order kept).
        assert_eq!(redact("{}", r#"{"z":1,"a":2}"#), r#"{"z":1,"a":2}"#);
    }

    #[test]
    fn paths_do_not_cross_non_objects() {
        let config = r#"{"mask":["a.b"],"hide":["list.0"]}"#;
        assert_eq!(
            redact(config, r#"{"a":"str","list":[1,2]}"#),
            r#"{"a":"str","list":[1,2]}"#
        );
    }

    #[test]
    fn non_objects_pass_through() {
        assert_eq!(redact(r#"{"hide":["a"]}"#, "[1]"), "[1]");
        assert_eq!(redact(r#"{"hide":["a"]}"#, "not json"), "not json");
    }

    #[test]
    fn bad_configs() {
        for bad in [
            "[]",
            r#"{"mask":"a"}"#,
            r#"{"hide":[1]}"#,
            r#"{"hide":[""]}"#,
            r#"{"masks":["a"]}"#,
        ] {
            assert!(Redaction::from_config(bad).is_err(), "{bad}");
        }
    }
}
