//! Reading one session document written by the Python `mongodb-session-manager`
//! library (0.9.x) and turning it into what the gateway stores.
//!
//! The original keeps a whole session in one document:
//!
//! ```text
//! { _id, session_id, session_type, application_name, session_viewer_password,
//!   created_at, updated_at, metadata: {…}, feedbacks: [{rating, comment, created_at}],
//!   guardrail_events: [{message_id, agent_id, action, timestamp}],
//!   agents: { <agent_id>: { agent_data: {agent_id, state, conversation_manager_state,
//!                                        _internal_state, created_at, updated_at,
//!                                        model, system_prompt, …},
//!                           created_at, updated_at,
//!                           messages: [{message_id, message, redact_message, created_at,
//!                                       updated_at, event_loop_metrics, guardrail_event}] } } }
//! ```
//!
//! The mapping (documented in README, "Migrating from mongodb-session-manager"):
//! - `session_type` and `metadata` as they are, except the library's index
//!   placeholders: a dotted top-level key such as `"customer.tier": ""` is what
//!   `metadata_fields` set-up leaves behind; it is dropped (a non-empty dotted key
//!   is expanded into the nested path when that path is free).
//! - `application_name` becomes `metadata.application_name`, and the
//!   `guardrail_events` list `metadata.guardrail_events`, keyed
//!   `<agent_id>#<message_id>` (where the Python adapter's manager records them).
//! - What the gateway cannot store in its own fields goes to an `_import` object
//!   (unless provenance is off): the session's original times in
//!   `metadata._import`, an agent's times in its body's `_import`, a
//!   feedback's time in the feedback's `_import`. Message times are lost: the
//!   gateway stamps its own and a message has no room for extras.
//! - `session_viewer_password` (a credential of the original's Session Viewer)
//!   is dropped.
//! - Dates become RFC 3339 strings; ints stay ints and doubles stay doubles.

use std::collections::BTreeMap;

use mongodb::bson::{Bson, Document};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

use crate::config::ServerConfig;
use crate::limits::LimitsConfig;
use crate::model::{
    AGENT_SERVER_FIELDS, DEFAULT_SESSION_TYPE, JsonObject, MessageInput, format_ms,
    validate_feedback, validate_id,
};

/// The `source` recorded in `metadata._import`.
pub const SOURCE_NAME: &str = "mongodb-session-manager";

/// Name of the provenance object kept in metadata, agent bodies and feedbacks.
pub const PROVENANCE_KEY: &str = "_import";

/// Metadata key of the guardrail events, keyed `<agent_id>#<message_id>` (a
/// `.` in the agent id written `%2E`), as the Python adapter's
/// `GatewaySessionManager.redact_latest_message` records them.
pub const GUARDRAIL_EVENTS_KEY: &str = "guardrail_events";

/// The original's list of guardrail events as the gateway keeps them.
fn guardrail_map(events: Vec<Value>) -> JsonObject {
    let mut out = JsonObject::new();
    for (i, e) in events.into_iter().enumerate() {
        let key = match (
            e.get("agent_id").and_then(Value::as_str),
            e.get("message_id").and_then(Value::as_u64),
        ) {
            (Some(a), Some(m)) => format!("{}#{m}", a.replace('.', "%2E")),
            _ => format!("event-{i}"),
        };
        out.insert(key, e);
    }
    out
}

/// Session fields the importer understands; anything else is reported as dropped.
const KNOWN_SESSION_FIELDS: &[&str] = &[
    "_id",
    "session_id",
    "session_type",
    "application_name",
    "session_viewer_password",
    "created_at",
    "updated_at",
    "metadata",
    "feedbacks",
    "guardrail_events",
    "agents",
];

/// Message fields the importer understands. `latency_ms`, `input_tokens` and
/// `output_tokens` are the flat metrics older versions of the library wrote.
const KNOWN_MESSAGE_FIELDS: &[&str] = &[
    "message_id",
    "message",
    "redact_message",
    "created_at",
    "updated_at",
    "event_loop_metrics",
    "guardrail_event",
    "latency_ms",
    "input_tokens",
    "output_tokens",
];

/// One message as it will be appended.
#[derive(Debug)]
pub struct MessagePlan {
    /// 0-based id, as the original stored it.
    pub id: u64,
    /// The message JSON text.
    pub message: Box<RawValue>,
    /// The redaction, if any.
    pub redact: Option<Box<RawValue>>,
    /// Event-loop metrics, if any.
    pub metrics: Option<Value>,
}

impl MessagePlan {
    /// The append request for this message.
    pub fn input(&self) -> MessageInput {
        MessageInput {
            message_id: Some(self.id),
            message: self.message.clone(),
            redact_message: self.redact.clone(),
            event_loop_metrics: self.metrics.clone(),
            created_at: None,
            updated_at: None,
        }
    }
}

/// One agent as it will be stored.
#[derive(Debug)]
pub struct AgentPlan {
    /// The agent's id.
    pub id: String,
    /// The body for `put_agent` (no server-owned fields).
    pub body: JsonObject,
    /// Messages in id order, ids `0..len`.
    pub messages: Vec<MessagePlan>,
}

/// One session as it will be stored.
#[derive(Debug)]
pub struct SessionPlan {
    /// The session's id.
    pub session_id: String,
    /// Its `session_type`.
    pub session_type: String,
    /// The metadata to create it with.
    pub metadata: JsonObject,
    /// Agents sorted by id.
    pub agents: Vec<AgentPlan>,
    /// Feedback bodies in the order they were added (without `created_at`).
    pub feedbacks: Vec<JsonObject>,
    /// What was changed or dropped on the way, as (kind, detail).
    pub notes: Vec<(&'static str, String)>,
}

/// How to convert.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Keep the original times in `_import` objects.
    pub provenance: bool,
    /// The gateway's request limits (depth, sizes), applied as the API would.
    pub limits: LimitsConfig,
    /// `server.max_message_bytes`.
    pub max_message_bytes: usize,
}

impl ConvertOptions {
    /// Options from the gateway's configuration.
    pub fn new(server: &ServerConfig, limits: &LimitsConfig, provenance: bool) -> Self {
        Self {
            provenance,
            limits: limits.clone(),
            max_message_bytes: server.max_message_bytes,
        }
    }
}

/// The id of a source document, for reports about documents that cannot be converted.
pub fn doc_label(doc: &Document) -> String {
    match doc.get("session_id").or_else(|| doc.get("_id")) {
        Some(Bson::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "<no _id>".into(),
    }
}

/// Converts a BSON value to JSON: dates become RFC 3339 strings, numbers keep
/// their kind, other BSON types their relaxed Extended JSON form.
///
/// # Errors
/// A non-finite double (JSON cannot carry it), naming where it is.
pub fn to_json(b: &Bson, path: &str) -> Result<Value, String> {
    Ok(match b {
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::Boolean(x) => Value::Bool(*x),
        Bson::Int32(i) => Value::from(*i),
        Bson::Int64(i) => Value::from(*i),
        Bson::Double(f) => Value::Number(
            Number::from_f64(*f).ok_or_else(|| format!("{path} is {f}, which JSON cannot hold"))?,
        ),
        Bson::String(s) => Value::String(s.clone()),
        Bson::DateTime(d) => Value::String(format_ms(d.timestamp_millis())),
        Bson::ObjectId(o) => Value::String(o.to_hex()),
        Bson::Document(d) => {
            let mut m = Map::with_capacity(d.len());
            for (k, v) in d {
                m.insert(k.clone(), to_json(v, &format!("{path}.{k}"))?);
            }
            Value::Object(m)
        }
        Bson::Array(a) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, v)| to_json(v, &format!("{path}.{i}")))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone().into_relaxed_extjson(),
    })
}

fn time_of(b: Option<&Bson>) -> Option<Value> {
    match b? {
        Bson::DateTime(d) => Some(Value::String(format_ms(d.timestamp_millis()))),
        Bson::String(s) => Some(Value::String(s.clone())),
        _ => None,
    }
}

fn as_u64(b: &Bson) -> Option<u64> {
    match b {
        Bson::Int32(i) => u64::try_from(*i).ok(),
        Bson::Int64(i) => u64::try_from(*i).ok(),
        Bson::Double(f) if f.fract() == 0.0 && *f >= 0.0 && *f < 9.0e15 => Some(*f as u64),
        _ => None,
    }
}

fn raw(v: &Value) -> Result<Box<RawValue>, String> {
    RawValue::from_string(v.to_string()).map_err(|e| e.to_string())
}

fn check_json(what: &str, v: &Value, o: &ConvertOptions, max: Option<usize>) -> Result<(), String> {
    crate::limits::check_json(what, v, &o.limits, max).map_err(|e| e.to_string())
}

/// Sets `path` (dotted) in `m` when nothing is there yet; false when occupied.
fn set_path_if_free(m: &mut JsonObject, path: &str, v: Value) -> bool {
    let mut segs: Vec<&str> = path.split('.').collect();
    let last = segs.pop().unwrap_or(path);
    let mut cur = m;
    for s in segs {
        let entry = cur
            .entry(s.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        match entry {
            Value::Object(inner) => cur = inner,
            _ => return false,
        }
    }
    if cur.contains_key(last) {
        return false;
    }
    cur.insert(last.to_owned(), v);
    true
}

fn get_path<'a>(m: &'a JsonObject, path: &str) -> Option<&'a Value> {
    let mut segs = path.split('.');
    let mut cur = m.get(segs.next()?)?;
    for s in segs {
        cur = cur.as_object()?.get(s)?;
    }
    Some(cur)
}

/// Converts one session document.
///
/// # Errors
/// Why the session cannot be imported as it is (bad id, gapped message ids,
/// a value the gateway's API would refuse…).
pub fn convert(doc: &Document, o: &ConvertOptions) -> Result<SessionPlan, String> {
    let mut notes: Vec<(&'static str, String)> = Vec::new();
    let session_id = match (doc.get("session_id"), doc.get("_id")) {
        (Some(Bson::String(s)), _) => s.clone(),
        (_, Some(Bson::String(s))) => s.clone(),
        _ => return Err("neither session_id nor _id is a string".into()),
    };
    if let Some(Bson::String(id)) = doc.get("_id")
        && *id != session_id
    {
        notes.push((
            "id_mismatch",
            format!("_id {id:?} differs from session_id; session_id used"),
        ));
    }
    validate_id("session_id", &session_id)?;

    let session_type = match doc.get("session_type") {
        None | Some(Bson::Null) => DEFAULT_SESSION_TYPE.to_owned(),
        Some(Bson::String(s)) => s.clone(),
        Some(other) => return Err(format!("session_type is not a string: {other}")),
    };
    if session_type.is_empty()
        || session_type.len() > 64
        || !session_type
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "session_type {session_type:?} is not 1 to 64 characters from [A-Za-z0-9_-]"
        ));
    }

    for k in doc.keys() {
        if !KNOWN_SESSION_FIELDS.contains(&k.as_str()) {
            notes.push(("unknown_field", format!("session field {k:?} dropped")));
        }
    }
    if doc.contains_key("session_viewer_password") {
        notes.push((
            "viewer_password",
            "session_viewer_password dropped (a Session Viewer credential)".into(),
        ));
    }

    // ---- metadata ----
    let mut metadata = match doc.get("metadata") {
        None | Some(Bson::Null) => JsonObject::new(),
        Some(Bson::Document(d)) => match to_json(&Bson::Document(d.clone()), "metadata")? {
            Value::Object(m) => m,
            _ => unreachable!("a document converts to an object"),
        },
        Some(other) => return Err(format!("metadata is not a document: {other}")),
    };
    let dotted: Vec<String> = metadata
        .keys()
        .filter(|k| k.contains('.'))
        .cloned()
        .collect();
    for k in dotted {
        let v = metadata.shift_remove(&k).unwrap_or(Value::Null);
        if v == Value::String(String::new()) {
            notes.push((
                "metadata_placeholder",
                format!("empty metadata key {k:?} (left by the library's metadata_fields set-up) dropped"),
            ));
        } else if get_path(&metadata, &k) == Some(&v) {
            notes.push((
                "metadata_dotted",
                format!("metadata key {k:?} dropped: the nested path holds the same value"),
            ));
        } else if set_path_if_free(&mut metadata, &k, v) {
            notes.push((
                "metadata_dotted",
                format!("metadata key {k:?} stored as the nested path"),
            ));
        } else {
            return Err(format!(
                "metadata has a literal key {k:?} and a different value at the nested path {k}"
            ));
        }
    }
    match doc.get("application_name") {
        None | Some(Bson::Null) => {}
        Some(Bson::String(app)) => match metadata.get("application_name") {
            None => {
                metadata.insert("application_name".into(), Value::String(app.clone()));
            }
            Some(Value::String(s)) if s == app => {}
            Some(_) => {
                return Err(format!(
                    "application_name {app:?} and metadata.application_name differ"
                ));
            }
        },
        Some(other) => return Err(format!("application_name is not a string: {other}")),
    }

    // ---- agents ----
    let mut guardrail_events: Vec<Value> = match doc.get("guardrail_events") {
        None | Some(Bson::Null) => Vec::new(),
        Some(Bson::Array(a)) => match to_json(&Bson::Array(a.clone()), "guardrail_events")? {
            Value::Array(v) => v,
            _ => unreachable!("an array converts to an array"),
        },
        Some(other) => return Err(format!("guardrail_events is not an array: {other}")),
    };
    let mut agents = Vec::new();
    match doc.get("agents") {
        None | Some(Bson::Null) => {}
        Some(Bson::Document(ad)) => {
            for (aid, a) in ad {
                let Bson::Document(a) = a else {
                    return Err(format!("agents.{aid} is not a document"));
                };
                agents.push(convert_agent(aid, a, o, &mut guardrail_events, &mut notes)?);
            }
        }
        Some(other) => return Err(format!("agents is not a document: {other}")),
    }
    agents.sort_by(|a, b| a.id.cmp(&b.id));

    if o.provenance {
        let mut p = Map::new();
        p.insert("source".into(), SOURCE_NAME.into());
        if let Some(t) = time_of(doc.get("created_at")) {
            p.insert("created_at".into(), t);
        }
        if let Some(t) = time_of(doc.get("updated_at")) {
            p.insert("updated_at".into(), t);
        }
        if metadata.contains_key(PROVENANCE_KEY) {
            return Err(format!(
                "metadata already has a {PROVENANCE_KEY:?} key; run with --no-provenance"
            ));
        }
        metadata.insert(PROVENANCE_KEY.into(), Value::Object(p));
    }
    if !guardrail_events.is_empty() {
        if metadata.contains_key(GUARDRAIL_EVENTS_KEY) {
            return Err(format!(
                "metadata already has a {GUARDRAIL_EVENTS_KEY:?} key and the session has guardrail events"
            ));
        }
        metadata.insert(
            GUARDRAIL_EVENTS_KEY.into(),
            Value::Object(guardrail_map(guardrail_events)),
        );
    }
    for (k, v) in &metadata {
        crate::metadata::validate_path(k).map_err(|e| format!("metadata: {e}"))?;
        crate::metadata::validate_value(v).map_err(|e| format!("metadata {k:?}: {e}"))?;
    }
    check_json(
        "metadata",
        &Value::Object(metadata.clone()),
        o,
        Some(o.limits.max_metadata_bytes),
    )?;

    // ---- feedbacks ----
    let mut feedbacks = Vec::new();
    match doc.get("feedbacks") {
        None | Some(Bson::Null) => {}
        Some(Bson::Array(a)) => {
            for (i, f) in a.iter().enumerate() {
                let Bson::Document(f) = f else {
                    return Err(format!("feedbacks.{i} is not a document"));
                };
                let created = time_of(f.get("created_at"));
                let mut body = match to_json(&Bson::Document(f.clone()), &format!("feedbacks.{i}"))?
                {
                    Value::Object(m) => m,
                    _ => unreachable!("a document converts to an object"),
                };
                body.shift_remove("created_at");
                if o.provenance {
                    let mut p = Map::new();
                    if let Some(t) = created {
                        p.insert("created_at".into(), t);
                    }
                    body.insert(PROVENANCE_KEY.into(), Value::Object(p));
                }
                validate_feedback(&body).map_err(|e| format!("feedbacks.{i}: {e}"))?;
                crate::metadata::validate_value(&Value::Object(body.clone()))
                    .map_err(|e| format!("feedbacks.{i}: {e}"))?;
                check_json(
                    "feedback",
                    &Value::Object(body.clone()),
                    o,
                    Some(o.limits.max_metadata_bytes),
                )?;
                feedbacks.push(body);
            }
        }
        Some(other) => return Err(format!("feedbacks is not an array: {other}")),
    }

    Ok(SessionPlan {
        session_id,
        session_type,
        metadata,
        agents,
        feedbacks,
        notes,
    })
}

fn convert_agent(
    aid: &str,
    a: &Document,
    o: &ConvertOptions,
    guardrail_events: &mut Vec<Value>,
    notes: &mut Vec<(&'static str, String)>,
) -> Result<AgentPlan, String> {
    validate_id("agent_id", aid)?;
    let data = match a.get("agent_data") {
        Some(Bson::Document(d)) => d,
        None | Some(Bson::Null) => return Err(format!("agent {aid:?} has no agent_data")),
        Some(other) => {
            return Err(format!(
                "agents.{aid}.agent_data is not a document: {other}"
            ));
        }
    };
    match data.get("agent_id") {
        None | Some(Bson::Null) => {}
        Some(Bson::String(s)) if s == aid => {}
        Some(other) => {
            return Err(format!(
                "agent {aid:?} has agent_data.agent_id {other}; they must match"
            ));
        }
    }
    let mut body = match to_json(
        &Bson::Document(data.clone()),
        &format!("agents.{aid}.agent_data"),
    )? {
        Value::Object(m) => m,
        _ => unreachable!("a document converts to an object"),
    };
    for f in AGENT_SERVER_FIELDS {
        body.shift_remove(*f);
    }
    if body.contains_key(PROVENANCE_KEY) && o.provenance {
        return Err(format!(
            "agent {aid:?} already has a {PROVENANCE_KEY:?} field; run with --no-provenance"
        ));
    }
    if o.provenance {
        let mut p = Map::new();
        let created = time_of(a.get("created_at")).or_else(|| time_of(data.get("created_at")));
        let updated = time_of(a.get("updated_at")).or_else(|| time_of(data.get("updated_at")));
        if let Some(t) = created {
            p.insert("created_at".into(), t);
        }
        if let Some(t) = updated {
            p.insert("updated_at".into(), t);
        }
        body.insert(PROVENANCE_KEY.into(), Value::Object(p));
    }
    check_json("agent", &Value::Object(body.clone()), o, None)?;

    let mut by_id: BTreeMap<u64, MessagePlan> = BTreeMap::new();
    match a.get("messages") {
        None | Some(Bson::Null) => {}
        Some(Bson::Array(ms)) => {
            for (i, m) in ms.iter().enumerate() {
                let Bson::Document(m) = m else {
                    return Err(format!("agents.{aid}.messages.{i} is not a document"));
                };
                let at = format!("agents.{aid}.messages.{i}");
                let plan = convert_message(aid, m, &at, o, guardrail_events, notes)?;
                let id = plan.id;
                if by_id.insert(id, plan).is_some() {
                    return Err(format!("agent {aid:?} has message id {id} twice"));
                }
            }
        }
        Some(other) => return Err(format!("agents.{aid}.messages is not an array: {other}")),
    }
    // The gateway keeps ids dense (each is the next one), as Strands writes them.
    for (expected, id) in by_id.keys().enumerate() {
        if *id != expected as u64 {
            return Err(format!(
                "agent {aid:?}: message ids are not 0..{} (id {expected} is missing)",
                by_id.len()
            ));
        }
    }
    Ok(AgentPlan {
        id: aid.to_owned(),
        body,
        messages: by_id.into_values().collect(),
    })
}

fn convert_message(
    aid: &str,
    m: &Document,
    at: &str,
    o: &ConvertOptions,
    guardrail_events: &mut Vec<Value>,
    notes: &mut Vec<(&'static str, String)>,
) -> Result<MessagePlan, String> {
    let id = m
        .get("message_id")
        .and_then(as_u64)
        .ok_or_else(|| format!("{at}.message_id is missing or not a non-negative integer"))?;
    let message = match m.get("message") {
        None | Some(Bson::Null) => return Err(format!("{at} has no message")),
        Some(b) => to_json(b, &format!("{at}.message"))?,
    };
    let message = raw(&message)?;
    if message.get().len() > o.max_message_bytes {
        return Err(format!(
            "{at}: the message is {} bytes; server.max_message_bytes is {}",
            message.get().len(),
            o.max_message_bytes
        ));
    }
    let redact = match m.get("redact_message") {
        None | Some(Bson::Null) => None,
        Some(b) => Some(raw(&to_json(b, &format!("{at}.redact_message"))?)?),
    };
    let mut metrics = match m.get("event_loop_metrics") {
        None | Some(Bson::Null) => None,
        Some(b) => Some(to_json(b, &format!("{at}.event_loop_metrics"))?),
    };
    // Older versions of the library stored flat metrics on the message.
    for flat in ["latency_ms", "input_tokens", "output_tokens"] {
        let Some(b) = m.get(flat).filter(|b| !matches!(b, Bson::Null)) else {
            continue;
        };
        let v = to_json(b, &format!("{at}.{flat}"))?;
        match metrics.get_or_insert_with(|| Value::Object(Map::new())) {
            Value::Object(obj) => {
                obj.entry(flat).or_insert(v);
            }
            _ => {
                notes.push((
                    "flat_metrics",
                    format!("{at}.{flat} dropped: event_loop_metrics is not an object"),
                ));
            }
        }
    }
    if let Some(Bson::Document(g)) = m.get("guardrail_event") {
        // The session's guardrail_events normally lists it already.
        let known = guardrail_events.iter().any(|e| {
            e.get("agent_id").and_then(Value::as_str) == Some(aid)
                && e.get("message_id").and_then(Value::as_u64) == Some(id)
        });
        if !known {
            let mut e = Map::new();
            e.insert("message_id".into(), id.into());
            e.insert("agent_id".into(), aid.into());
            if let Value::Object(g) =
                to_json(&Bson::Document(g.clone()), &format!("{at}.guardrail_event"))?
            {
                for (k, v) in g {
                    e.entry(k).or_insert(v);
                }
            }
            guardrail_events.push(Value::Object(e));
        }
    }
    for k in m.keys() {
        if !KNOWN_MESSAGE_FIELDS.contains(&k.as_str()) {
            notes.push(("unknown_field", format!("{at}.{k} dropped")));
        }
    }
    Ok(MessagePlan {
        id,
        message,
        redact,
        metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{DateTime, doc};

    fn opts(provenance: bool) -> ConvertOptions {
        ConvertOptions::new(
            &ServerConfig::default(),
            &LimitsConfig::default(),
            provenance,
        )
    }

    #[test]
    fn types_and_placeholders() {
        let d = doc! {
            "_id": "s1", "session_id": "s1", "session_type": "AGENT",
            "application_name": "app", "session_viewer_password": "x",
            "created_at": DateTime::from_millis(1_000),
            "metadata": {"status": "", "customer.tier": "", "customer": {"tier": "gold"}, "n": 3_i32, "f": 1.0},
            "feedbacks": [{"rating": "up", "created_at": DateTime::from_millis(2_000)}],
            "agents": {"a": {"agent_data": {"agent_id": "a", "state": {"k": 1_i64}, "created_at": DateTime::from_millis(5)},
                              "messages": [
                                {"message_id": 1, "message": {"role": "assistant"}, "redact_message": null,
                                 "latency_ms": 12, "guardrail_event": {"action": "BLOCKED"}},
                                {"message_id": 0_i64, "message": {"role": "user"}, "event_loop_metrics": {"t": 0.5}},
                              ]}},
        };
        let p = convert(&d, &opts(true)).unwrap();
        assert_eq!(p.session_id, "s1");
        let md = Value::Object(p.metadata.clone());
        assert_eq!(md["customer"], serde_json::json!({"tier": "gold"}));
        assert!(md.get("customer.tier").is_none());
        assert_eq!(md["status"], "");
        assert_eq!(md["application_name"], "app");
        assert_eq!(md["n"].as_i64(), Some(3));
        assert!(md["f"].is_f64());
        assert_eq!(md["_import"]["created_at"], "1970-01-01T00:00:01.000Z");
        assert_eq!(md["guardrail_events"]["a#1"]["message_id"], 1);
        assert_eq!(md["guardrail_events"]["a#1"]["action"], "BLOCKED");
        assert_eq!(
            p.feedbacks[0]["_import"]["created_at"],
            "1970-01-01T00:00:02.000Z"
        );
        assert!(!p.feedbacks[0].contains_key("created_at"));
        let a = &p.agents[0];
        assert!(!a.body.contains_key("agent_id") && !a.body.contains_key("created_at"));
        assert_eq!(a.messages.len(), 2);
        assert_eq!(a.messages[0].message.get(), r#"{"role":"user"}"#);
        assert_eq!(
            a.messages[1].metrics,
            Some(serde_json::json!({"latency_ms": 12}))
        );
        assert!(p.notes.iter().any(|(k, _)| *k == "viewer_password"));
        assert!(p.notes.iter().any(|(k, _)| *k == "metadata_placeholder"));

        let p = convert(&d, &opts(false)).unwrap();
        assert!(!p.metadata.contains_key("_import"));
        assert!(!p.agents[0].body.contains_key("_import"));
    }

    #[test]
    fn refuses_what_the_gateway_cannot_hold() {
        let gap = doc! {"_id": "s", "agents": {"a": {"agent_data": {}, "messages": [
        {"message_id": 0, "message": {}}, {"message_id": 2, "message": {}}]}}};
        assert!(
            convert(&gap, &opts(true))
                .unwrap_err()
                .contains("id 1 is missing")
        );
        let bad_id = doc! {"_id": "has space"};
        assert!(convert(&bad_id, &opts(true)).is_err());
        let nan = doc! {"_id": "s", "metadata": {"x": f64::NAN}};
        assert!(
            convert(&nan, &opts(true))
                .unwrap_err()
                .contains("metadata.x")
        );
        let rating = doc! {"_id": "s", "feedbacks": [{"rating": "meh"}]};
        assert!(convert(&rating, &opts(true)).is_err());
    }
}
