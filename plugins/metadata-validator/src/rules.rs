//! The validation rules: plain functions over JSON, testable on the host.

use serde_json::Value;

/// A JSON type name accepted in the `types` config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    String,
    Number,
    Integer,
    Boolean,
    Object,
    Array,
    Null,
}

impl JsonType {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "string" => Self::String,
            "number" => Self::Number,
            "integer" => Self::Integer,
            "boolean" => Self::Boolean,
            "object" => Self::Object,
            "array" => Self::Array,
            "null" => Self::Null,
            _ => return None,
        })
    }

    /// The type as it reads after "must be".
    fn with_article(self) -> &'static str {
        match self {
            Self::String => "a string",
            Self::Number => "a number",
            Self::Integer => "an integer",
            Self::Boolean => "a boolean",
            Self::Object => "an object",
            Self::Array => "an array",
            Self::Null => "null",
        }
    }

    fn matches(self, value: &Value) -> bool {
        match self {
            Self::String => value.is_string(),
            Self::Number => value.is_number(),
            // As in JSON Schema: 2.0 is an integer too.
            Self::Integer => {
                value.is_i64()
                    || value.is_u64()
                    || value
                        .as_f64()
                        .is_some_and(|f| f.is_finite() && f.fract() == 0.0)
            }
            Self::Boolean => value.is_boolean(),
            Self::Object => value.is_object(),
            Self::Array => value.is_array(),
            Self::Null => value.is_null(),
        }
    }
}

/// The JSON type of a value, as named in denial reasons.
fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// True when `ancestor` is a proper prefix of `path` in whole segments
/// (`profile` of `profile.tier`, not of `profiles`).
fn is_ancestor(ancestor: &str, path: &str) -> bool {
    path.len() > ancestor.len()
        && path.starts_with(ancestor)
        && path.as_bytes()[ancestor.len()] == b'.'
}

/// The value at a dotted path inside `value` (objects only).
fn get_path<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |v, key| v.as_object()?.get(key))
}

/// Size of a value as limited by `max_value_bytes`: a string's UTF-8 length,
/// anything else's compact JSON text.
fn value_size(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        other => serde_json::to_string(other).map_or(0, |s| s.len()),
    }
}

/// The validator's configuration, checked once.
#[derive(Debug, Default)]
pub struct Rules {
    required: Vec<String>,
    allowed: Option<Vec<String>>,
    types: Vec<(String, JsonType)>,
    max_value_bytes: Option<u64>,
}

fn string_list(value: &Value, what: &str) -> Result<Vec<String>, String> {
    let items = value
        .as_array()
        .ok_or_else(|| format!("\"{what}\" must be an array of keys"))?;
    items
        .iter()
        .map(|item| match item.as_str() {
            Some(s) if !s.is_empty() => Ok(s.to_owned()),
            _ => Err(format!("\"{what}\" must contain only non-empty strings")),
        })
        .collect()
}

impl Rules {
    /// Parses the plugin's config (JSON text). Unknown keys are rejected so a
    /// typo cannot silently disable a rule.
    pub fn from_config(text: &str) -> Result<Self, String> {
        let config: Value =
            serde_json::from_str(text).map_err(|e| format!("config is not valid JSON: {e}"))?;
        let config = config.as_object().ok_or("config must be a JSON object")?;
        let mut rules = Rules::default();
        for (key, value) in config {
            match key.as_str() {
                "required" => rules.required = string_list(value, key)?,
                "allowed" if value.is_null() => rules.allowed = None,
                "allowed" => rules.allowed = Some(string_list(value, key)?),
                "types" => {
                    let types = value
                        .as_object()
                        .ok_or("\"types\" must be an object mapping keys to type names")?;
                    for (path, name) in types {
                        let ty = name.as_str().and_then(JsonType::parse).ok_or_else(|| {
                            format!(
                                "type for {path:?} must be one of string, number, integer, \
                                 boolean, object, array, null (got {name})"
                            )
                        })?;
                        rules.types.push((path.clone(), ty));
                    }
                }
                "max_value_bytes" if value.is_null() => rules.max_value_bytes = None,
                "max_value_bytes" => {
                    rules.max_value_bytes = Some(
                        value
                            .as_u64()
                            .ok_or("\"max_value_bytes\" must be a non-negative integer")?,
                    );
                }
                other => return Err(format!("unknown config key {other:?}")),
            }
        }
        Ok(rules)
    }

    /// Whether `allowed` (if set) lets an update set `path`: an entry equal to
    /// the path or to one of its ancestors (its first segment included).
    fn is_allowed(&self, path: &str) -> bool {
        self.allowed.as_ref().is_none_or(|allowed| {
            allowed
                .iter()
                .any(|entry| entry == path || is_ancestor(entry, path))
        })
    }

    /// Checks every assignment of an update, in order; the first violation is
    /// the denial reason.
    pub fn check_update<'a>(
        &self,
        assignments: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), String> {
        for (path, text) in assignments {
            self.check_assignment(path, text)?;
        }
        Ok(())
    }

    fn check_assignment(&self, path: &str, text: &str) -> Result<(), String> {
        if !self.is_allowed(path) {
            let allowed = self.allowed.as_deref().unwrap_or_default().join(", ");
            return Err(format!("key {path:?} is not allowed (allowed: {allowed})"));
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| format!("value for {path:?} is not valid JSON: {e}"))?;

        for required in &self.required {
            if required == path && value.is_null() {
                return Err(format!("{path:?} is required and cannot be set to null"));
            }
            if is_ancestor(path, required) {
                let rest = &required[path.len() + 1..];
                if get_path(&value, rest).is_none_or(Value::is_null) {
                    return Err(format!(
                        "setting {path:?} would remove required {required:?}"
                    ));
                }
            }
        }

        for (typed, ty) in &self.types {
            if typed == path {
                if !ty.matches(&value) {
                    return Err(format!(
                        "value for {path:?} must be {}, got {}",
                        ty.with_article(),
                        type_of(&value)
                    ));
                }
            } else if is_ancestor(typed, path) {
                // Setting `profile.tier` makes (or keeps) `profile` an object.
                if *ty != JsonType::Object {
                    return Err(format!(
                        "value for {typed:?} must be {}, but setting {path:?} makes it an object",
                        ty.with_article()
                    ));
                }
            } else if is_ancestor(path, typed) {
                // Replacing `profile` also sets `profile.tier`, if present.
                if let Some(inner) = get_path(&value, &typed[path.len() + 1..])
                    && !ty.matches(inner)
                {
                    return Err(format!(
                        "value for {typed:?} must be {}, got {}",
                        ty.with_article(),
                        type_of(inner)
                    ));
                }
            }
        }

        if let Some(max) = self.max_value_bytes {
            let size = value_size(&value);
            if size as u64 > max {
                return Err(format!(
                    "value for {path:?} is {size} bytes, over the {max}-byte limit"
                ));
            }
        }
        Ok(())
    }

    /// Checks a delete: no required key, nor any parent of one, may go.
    pub fn check_delete<'a>(&self, paths: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
        for path in paths {
            for required in &self.required {
                if required == path {
                    return Err(format!("{path:?} is required and cannot be deleted"));
                }
                if is_ancestor(path, required) {
                    return Err(format!(
                        "deleting {path:?} would remove required {required:?}"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(config: &str) -> Rules {
        Rules::from_config(config).unwrap()
    }

    fn update(rules: &Rules, path: &str, value: &str) -> Result<(), String> {
        rules.check_update([(path, value)])
    }

    #[test]
    fn empty_config_allows_everything() {
        let r = rules("{}");
        assert_eq!(update(&r, "anything.at.all", r#"{"x":[1,null]}"#), Ok(()));
        assert_eq!(update(&r, "x", "null"), Ok(()));
        assert_eq!(r.check_delete(["x", "y.z"]), Ok(()));
    }

    #[test]
    fn type_mismatch_reason() {
        let r = rules(r#"{"types":{"status":"string","count":"integer","flag":"boolean"}}"#);
        assert_eq!(
            update(&r, "status", "5"),
            Err(r#"value for "status" must be a string, got number"#.into())
        );
        assert_eq!(update(&r, "status", r#""open""#), Ok(()));
        assert_eq!(update(&r, "count", "3"), Ok(()));
        assert_eq!(update(&r, "count", "3.0"), Ok(()));
        assert_eq!(
            update(&r, "count", "3.5"),
            Err(r#"value for "count" must be an integer, got number"#.into())
        );
        assert_eq!(
            update(&r, "flag", "null"),
            Err(r#"value for "flag" must be a boolean, got null"#.into())
        );
        assert_eq!(update(&r, "other", "[]"), Ok(()));
    }

    #[test]
    fn types_against_parents_and_children() {
        let r = rules(r#"{"types":{"profile":"object","meta":"string","profile.tier":"string"}}"#);
        // A sub-path of an object-typed key is fine; of a string-typed one not.
        assert_eq!(update(&r, "profile.name", r#""x""#), Ok(()));
        assert_eq!(
            update(&r, "meta.x", "1"),
            Err(
                r#"value for "meta" must be a string, but setting "meta.x" makes it an object"#
                    .into()
            )
        );
        // Replacing a parent checks the typed child inside it.
        assert_eq!(
            update(&r, "profile", r#"{"tier":1}"#),
            Err(r#"value for "profile.tier" must be a string, got number"#.into())
        );
        assert_eq!(update(&r, "profile", r#"{"tier":"gold"}"#), Ok(()));
        assert_eq!(update(&r, "profile", r#"{}"#), Ok(()));
        assert_eq!(
            update(&r, "profile.tier", "true"),
            Err(r#"value for "profile.tier" must be a string, got boolean"#.into())
        );
    }

    #[test]
    fn allowed_keys() {
        let r = rules(r#"{"allowed":["a","b","c.d"]}"#);
        assert_eq!(update(&r, "a", "1"), Ok(()));
        assert_eq!(update(&r, "a.x.y", "1"), Ok(()));
        assert_eq!(update(&r, "c.d.e", "1"), Ok(()));
        assert_eq!(
            update(&r, "foo", "1"),
            Err(r#"key "foo" is not allowed (allowed: a, b, c.d)"#.into())
        );
        assert_eq!(
            update(&r, "ab", "1"),
            Err(r#"key "ab" is not allowed (allowed: a, b, c.d)"#.into())
        );
        assert!(update(&r, "c", "{}").is_err());
        // Deletes are not restricted by `allowed`.
        assert_eq!(r.check_delete(["foo"]), Ok(()));
    }

    #[test]
    fn size_limit() {
        let r = rules(r#"{"max_value_bytes":4096}"#);
        let big = format!("\"{}\"", "x".repeat(5000));
        assert_eq!(
            update(&r, "notes", &big),
            Err(r#"value for "notes" is 5000 bytes, over the 4096-byte limit"#.into())
        );
        let ok = format!("\"{}\"", "x".repeat(4096));
        assert_eq!(update(&r, "notes", &ok), Ok(()));
        // Non-strings are measured as compact JSON.
        let arr = format!("[{}]", vec!["1"; 3000].join(", "));
        assert_eq!(
            update(&r, "list", &arr),
            Err(r#"value for "list" is 6001 bytes, over the 4096-byte limit"#.into())
        );
        // Multi-byte characters count in bytes.
        let r = rules(r#"{"max_value_bytes":3}"#);
        assert!(update(&r, "s", r#""éé""#).is_err());
        assert!(update(&r, "s", r#""abc""#).is_ok());
    }

    #[test]
    fn required_keys() {
        let r = rules(r#"{"required":["status","profile.tier"]}"#);
        assert_eq!(
            r.check_delete(["other", "status"]),
            Err(r#""status" is required and cannot be deleted"#.into())
        );
        assert_eq!(
            r.check_delete(["profile"]),
            Err(r#"deleting "profile" would remove required "profile.tier""#.into())
        );
        assert_eq!(r.check_delete(["profile.name", "statuses"]), Ok(()));
        assert_eq!(
            update(&r, "status", "null"),
            Err(r#""status" is required and cannot be set to null"#.into())
        );
        assert_eq!(update(&r, "status", r#""open""#), Ok(()));
        assert_eq!(
            update(&r, "profile", r#"{"name":"x"}"#),
            Err(r#"setting "profile" would remove required "profile.tier""#.into())
        );
        assert_eq!(update(&r, "profile", r#"{"tier":"gold"}"#), Ok(()));
    }

    #[test]
    fn first_violation_wins() {
        let r = rules(r#"{"types":{"a":"string"},"allowed":["a","b"]}"#);
        assert_eq!(
            r.check_update([("b", "1"), ("a", "2"), ("z", "3")]),
            Err(r#"value for "a" must be a string, got number"#.into())
        );
    }

    #[test]
    fn invalid_values_and_configs() {
        let r = rules("{}");
        assert!(
            update(&r, "a", "{nope")
                .unwrap_err()
                .contains("not valid JSON")
        );
        for bad in [
            "[]",
            "nope",
            r#"{"required":"status"}"#,
            r#"{"required":[1]}"#,
            r#"{"types":{"a":"str"}}"#,
            r#"{"max_value_bytes":-1}"#,
            r#"{"max_value_byte":10}"#,
        ] {
            assert!(Rules::from_config(bad).is_err(), "{bad}");
        }
        assert!(Rules::from_config(r#"{"allowed":null,"max_value_bytes":null}"#).is_ok());
    }
}
