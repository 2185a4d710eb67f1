//! Dotted-path metadata changes, validated once and applied identically by every store.
//!
//! `PATCH /metadata` with `{"status":"active","profile.tier":"gold"}` sets
//! `metadata.status` and `metadata.profile.tier`, creating `profile` when missing
//! and leaving every other key alone — MongoDB's `$set` semantics. The embedded
//! store applies changes with [`apply_set`]/[`apply_unset`]; the MongoDB store
//! sends `$set`/`$unset` and uses the same functions to compute the result from
//! the document as it was, so both stores answer the same.

use serde_json::Value;

use crate::model::JsonObject;

/// Longest dotted path accepted.
pub const MAX_PATH_LEN: usize = 512;

/// A validated metadata change.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataChange {
    /// Set each path to its value.
    Update(Vec<(String, Value)>),
    /// Remove each path.
    Delete(Vec<String>),
}

impl MetadataChange {
    /// The paths the change touches.
    pub fn paths(&self) -> Vec<&str> {
        match self {
            Self::Update(a) => a.iter().map(|(p, _)| p.as_str()).collect(),
            Self::Delete(k) => k.iter().map(String::as_str).collect(),
        }
    }

    /// `"update"` or `"delete"`.
    pub fn action(&self) -> &'static str {
        match self {
            Self::Update(_) => "update",
            Self::Delete(_) => "delete",
        }
    }

    /// Checks every path and value, and that no path is a prefix of another.
    ///
    /// # Errors
    /// A message naming the first offending path.
    pub fn validate(&self) -> Result<(), String> {
        let paths = self.paths();
        if paths.is_empty() {
            return Err("no keys given".into());
        }
        for p in &paths {
            validate_path(p)?;
        }
        for (i, a) in paths.iter().enumerate() {
            for b in &paths[i + 1..] {
                if a == b {
                    return Err(format!("key {a:?} is given twice"));
                }
                if is_prefix(a, b) || is_prefix(b, a) {
                    return Err(format!("keys {a:?} and {b:?} overlap"));
                }
            }
        }
        if let Self::Update(assignments) = self {
            for (p, v) in assignments {
                validate_value(v).map_err(|e| format!("value for {p:?}: {e}"))?;
            }
        }
        Ok(())
    }
}

fn is_prefix(a: &str, b: &str) -> bool {
    b.len() > a.len() && b.starts_with(a) && b.as_bytes()[a.len()] == b'.'
}

/// Checks one dotted path: non-empty segments, none starting with `$`, no NUL.
///
/// # Errors
/// A message naming the problem.
pub fn validate_path(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("empty key".into());
    }
    if p.len() > MAX_PATH_LEN {
        return Err(format!("key is longer than {MAX_PATH_LEN} bytes"));
    }
    if p.contains('\0') {
        return Err(format!("key {p:?} contains a NUL character"));
    }
    for seg in p.split('.') {
        if seg.is_empty() {
            return Err(format!("key {p:?} has an empty segment"));
        }
        if seg.starts_with('$') {
            return Err(format!("key {p:?} has a segment starting with '$'"));
        }
    }
    Ok(())
}

/// Checks that nested object keys inside a value are storable field names.
///
/// # Errors
/// A message naming the offending key.
pub fn validate_value(v: &Value) -> Result<(), String> {
    match v {
        Value::Object(m) => {
            for (k, inner) in m {
                if k.is_empty() || k.starts_with('$') || k.contains('.') || k.contains('\0') {
                    return Err(format!(
                        "nested key {k:?} must be non-empty and contain no '.', leading '$' or NUL"
                    ));
                }
                validate_value(inner)?;
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(validate_value),
        _ => Ok(()),
    }
}

/// Looks up a dotted path.
pub fn get_path<'a>(obj: &'a JsonObject, path: &str) -> Option<&'a Value> {
    let mut segs = path.split('.');
    let mut cur = obj.get(segs.next()?)?;
    for seg in segs {
        cur = cur.as_object()?.get(seg)?;
    }
    Some(cur)
}

/// Sets a dotted path, creating missing intermediate objects. Returns the
/// previous value.
///
/// # Errors
/// When an intermediate segment holds something other than an object (MongoDB
/// refuses such a `$set` the same way).
pub fn apply_set(obj: &mut JsonObject, path: &str, value: Value) -> Result<Option<Value>, String> {
    let segs: Vec<&str> = path.split('.').collect();
    let (last, parents) = segs.split_last().expect("validated path has a segment");
    let mut cur = obj;
    for (i, seg) in parents.iter().enumerate() {
        let entry = cur
            .entry((*seg).to_owned())
            .or_insert_with(|| Value::Object(JsonObject::new()));
        cur = match entry {
            Value::Object(m) => m,
            _ => {
                return Err(format!(
                    "cannot set {path:?}: {:?} is not an object",
                    segs[..=i].join(".")
                ));
            }
        };
    }
    Ok(cur.insert((*last).to_owned(), value))
}

/// Removes a dotted path if present. Returns the removed value.
pub fn apply_unset(obj: &mut JsonObject, path: &str) -> Option<Value> {
    let segs: Vec<&str> = path.split('.').collect();
    let (last, parents) = segs.split_last()?;
    let mut cur = obj;
    for seg in parents {
        cur = cur.get_mut(*seg)?.as_object_mut()?;
    }
    cur.shift_remove(*last)
}

/// What a change did to the stored metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// Metadata after the change.
    pub metadata: JsonObject,
    /// Paths whose value actually changed (set to a different value, or removed while present).
    pub changed: Vec<String>,
}

/// Applies a validated change to a copy of `before`.
///
/// # Errors
/// As [`apply_set`].
pub fn apply(before: &JsonObject, change: &MetadataChange) -> Result<Applied, String> {
    let mut metadata = before.clone();
    let mut changed = Vec::new();
    match change {
        MetadataChange::Update(assignments) => {
            for (p, v) in assignments {
                let prev = apply_set(&mut metadata, p, v.clone())?;
                if prev.as_ref() != Some(v) {
                    changed.push(p.clone());
                }
            }
        }
        MetadataChange::Delete(keys) => {
            for k in keys {
                if apply_unset(&mut metadata, k).is_some() {
                    changed.push(k.clone());
                }
            }
        }
    }
    Ok(Applied { metadata, changed })
}

/// The event payload of a committed metadata change: the change as stored, the
/// paths that changed, and their new values (null when removed).
pub fn event_payload(change: &MetadataChange, applied: &Applied) -> Value {
    let mut values = JsonObject::new();
    for p in &applied.changed {
        values.insert(
            p.clone(),
            get_path(&applied.metadata, p)
                .cloned()
                .unwrap_or(Value::Null),
        );
    }
    let change_json = match change {
        MetadataChange::Update(a) => {
            let m: JsonObject = a.iter().cloned().collect();
            Value::Object(m)
        }
        MetadataChange::Delete(k) => Value::from(k.clone()),
    };
    serde_json::json!({
        "action": change.action(),
        "change": change_json,
        "changed": applied.changed,
        "values": values,
    })
}

/// A committed metadata change as its event recorded it (the inverse of
/// [`event_payload`]): what after-hooks receive.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// The change as stored (after every rewrite).
    pub change: MetadataChange,
    /// Paths whose stored value actually changed.
    pub changed: Vec<String>,
    /// Each changed path's new value (null when removed).
    pub values: JsonObject,
}

impl Recorded {
    /// Reads the payload of a `metadata.updated` (`deleted` false) or
    /// `metadata.deleted` event.
    ///
    /// # Errors
    /// When the payload does not have the shape [`event_payload`] writes:
    /// nothing is guessed or defaulted.
    pub fn from_event_payload(deleted: bool, payload: &Value) -> Result<Self, String> {
        let obj = payload
            .as_object()
            .ok_or("metadata event payload is not an object")?;
        let want = if deleted { "delete" } else { "update" };
        if obj.get("action").and_then(Value::as_str) != Some(want) {
            return Err(format!(
                "metadata event payload: action is {:?}, expected {want:?}",
                obj.get("action")
            ));
        }
        let change = match (deleted, obj.get("change")) {
            (false, Some(Value::Object(m))) => {
                MetadataChange::Update(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            }
            (true, Some(Value::Array(keys))) => MetadataChange::Delete(
                keys.iter()
                    .map(|k| k.as_str().map(str::to_owned))
                    .collect::<Option<_>>()
                    .ok_or("metadata event payload: a deleted path is not a string")?,
            ),
            _ => return Err("metadata event payload: change has the wrong shape".into()),
        };
        let changed = obj
            .get("changed")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or("metadata event payload: changed is not a list of paths")?;
        let values = obj
            .get("values")
            .and_then(Value::as_object)
            .cloned()
            .ok_or("metadata event payload: values is not an object")?;
        Ok(Self {
            change,
            changed,
            values,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> JsonObject {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn recorded_change_reads_back_what_the_event_wrote_and_nothing_else() {
        let before = obj(json!({"a": 1, "b": {"c": 2}}));
        for change in [
            MetadataChange::Update(vec![("a".into(), json!(5)), ("x.y".into(), json!("z"))]),
            MetadataChange::Delete(vec!["b.c".into(), "missing".into()]),
        ] {
            let applied = apply(&before, &change).unwrap();
            let payload = event_payload(&change, &applied);
            let deleted = matches!(change, MetadataChange::Delete(_));
            let r = Recorded::from_event_payload(deleted, &payload).unwrap();
            assert_eq!(r.change, change);
            assert_eq!(r.changed, applied.changed);
            assert_eq!(Value::Object(r.values), payload["values"]);
            // The wrong kind, or a damaged payload, is an error, not an empty change.
            assert!(Recorded::from_event_payload(!deleted, &payload).is_err());
        }
        assert!(Recorded::from_event_payload(false, &json!({"action": "update"})).is_err());
        assert!(Recorded::from_event_payload(false, &json!(null)).is_err());
    }

    #[test]
    fn set_creates_nested_objects_and_reports_changes() {
        let before = obj(json!({"status": "new", "keep": 1}));
        let change = MetadataChange::Update(vec![
            ("status".into(), json!("active")),
            ("profile.tier".into(), json!("gold")),
            ("keep".into(), json!(1)),
        ]);
        change.validate().unwrap();
        let a = apply(&before, &change).unwrap();
        assert_eq!(
            Value::Object(a.metadata),
            json!({"status": "active", "keep": 1, "profile": {"tier": "gold"}})
        );
        assert_eq!(a.changed, vec!["status", "profile.tier"]);
    }

    #[test]
    fn set_through_a_scalar_is_refused() {
        let before = obj(json!({"profile": "x"}));
        let change = MetadataChange::Update(vec![("profile.tier".into(), json!(1))]);
        let err = apply(&before, &change).unwrap_err();
        assert_eq!(
            err,
            "cannot set \"profile.tier\": \"profile\" is not an object"
        );
    }

    #[test]
    fn unset_reports_only_present_paths() {
        let before = obj(json!({"a": {"b": 1, "c": 2}, "d": 3}));
        let change = MetadataChange::Delete(vec!["a.b".into(), "zz".into(), "d.x".into()]);
        let a = apply(&before, &change).unwrap();
        assert_eq!(Value::Object(a.metadata), json!({"a": {"c": 2}, "d": 3}));
        assert_eq!(a.changed, vec!["a.b"]);
    }

    #[test]
    fn bad_paths_are_named() {
        let bad = |p: &str| {
            MetadataChange::Update(vec![(p.into(), json!(1))])
                .validate()
                .unwrap_err()
        };
        assert_eq!(bad(""), "empty key");
        assert_eq!(bad("a..b"), "key \"a..b\" has an empty segment");
        assert_eq!(bad("$set"), "key \"$set\" has a segment starting with '$'");
        assert_eq!(bad("a.$x"), "key \"a.$x\" has a segment starting with '$'");
        let overlap =
            MetadataChange::Update(vec![("a".into(), json!(1)), ("a.b".into(), json!(2))]);
        assert_eq!(
            overlap.validate().unwrap_err(),
            "keys \"a\" and \"a.b\" overlap"
        );
        let nested = MetadataChange::Update(vec![("a".into(), json!({"$where": 1}))]);
        assert!(
            nested
                .validate()
                .unwrap_err()
                .contains("nested key \"$where\"")
        );
        assert_eq!(
            MetadataChange::Delete(vec![]).validate().unwrap_err(),
            "no keys given"
        );
    }
}
