//! The stored form: BSON documents of sessions, children, events and outbox
//! items, and the conversions between them and the model's JSON types.
//!
//! Numbers in metadata keep their kind (integers as `Int64`, above
//! `i64::MAX` as `Decimal128`, others as `Double`) so `metadata.<path>` can
//! be indexed and filtered; everything the gateway only stores and returns
//! (agent bodies, messages, feedbacks, events) is kept as JSON text, so it
//! comes back byte for byte.

use mongodb::bson::{Bson, DateTime, Decimal128, Document, doc};
use serde_json::Value;

use super::error::malformed;
use crate::metadata::MetadataChange;
use crate::model::{JsonObject, Message, Session, format_ms, now_ms};
use crate::store::{OutboxItem, OutboxState, Retention, StoreError, StoreResult};

/// The fields every child document (agent, message, feedback) of a session
/// incarnation carries: the session key (the shard key) and the incarnation.
pub(super) fn child(key: &str, uid: i64) -> Document {
    doc! { "key": key, "uid": uid }
}

/// The fields of a new session incarnation (with a fresh `uid`), without
/// `_id` and `seq`.
pub(super) fn new_session_fields(
    tenant: &str,
    sid: &str,
    session_type: &str,
    metadata: &JsonObject,
    now: i64,
) -> Document {
    doc! {
        "tenant": tenant,
        "session_id": sid,
        "session_type": session_type,
        "created_at": date(now),
        "updated_at": date(now),
        "metadata": obj_to_doc(metadata),
        "uid": (rand::random::<i64>() & i64::MAX).max(1),
        "agents": {},
        "feedbacks": 0i64,
        "deleted": false,
    }
}

/// The session-document update of a metadata change: `$set`/`$unset` of
/// `metadata.<path>`, `updated_at`, and the next `seq`.
pub(super) fn metadata_update(change: &MetadataChange, now: i64) -> Document {
    let mut set = doc! { "updated_at": date(now) };
    let mut update = Document::new();
    match change {
        MetadataChange::Update(assignments) => {
            for (p, v) in assignments {
                set.insert(format!("metadata.{p}"), json_to_bson(v));
            }
        }
        MetadataChange::Delete(paths) => {
            let mut unset = Document::new();
            for p in paths {
                unset.insert(format!("metadata.{p}"), "");
            }
            update.insert("$unset", unset);
        }
    }
    update.insert("$set", set);
    update.insert("$inc", doc! { "seq": 1i64 });
    update
}

/// An agent id as a field name: dots would be path separators.
pub(super) fn enc(aid: &str) -> String {
    aid.replace('.', "%2E")
}

pub(super) fn dec(field: &str) -> String {
    field.replace("%2E", ".")
}

/// Conditions each matching a session past its retention at `now` (none
/// when nothing expires).
pub(super) fn expired_conds(ret: &Retention, now: i64) -> Vec<Document> {
    let mut conds: Vec<Document> = ret
        .sessions
        .iter()
        .map(|(ty, ttl)| {
            doc! { "session_type": ty, "updated_at": { "$lte": date(now.saturating_sub(*ttl)) } }
        })
        .collect();
    if let Some(ttl) = ret.default_session_ms {
        let listed: Vec<&str> = ret.sessions.keys().map(String::as_str).collect();
        conds.push(doc! {
            "session_type": { "$nin": listed },
            "updated_at": { "$lte": date(now.saturating_sub(ttl)) },
        });
    }
    conds
}

/// Adds "live": not a tombstone and not past its retention.
pub(super) fn add_live(filter: &mut Document, ret: &Retention) {
    filter.insert("deleted", doc! { "$ne": true });
    let expired = expired_conds(ret, now_ms());
    if !expired.is_empty() {
        filter.insert("$nor", expired);
    }
}

pub(super) fn to_i64(u: u64) -> i64 {
    i64::try_from(u).unwrap_or(i64::MAX)
}

pub(super) fn int(b: Option<&Bson>) -> Option<i64> {
    match b? {
        Bson::Int64(i) => Some(*i),
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Double(f) => Some(*f as i64),
        _ => None,
    }
}

pub(super) fn uint(b: Option<&Bson>) -> u64 {
    int(b).map_or(0, |i| u64::try_from(i).unwrap_or(0))
}

pub(super) fn date(ms: i64) -> Bson {
    Bson::DateTime(DateTime::from_millis(ms))
}

pub(super) fn date_ms(d: &Document, key: &str) -> i64 {
    match d.get(key) {
        Some(Bson::DateTime(t)) => t.timestamp_millis(),
        other => int(other).unwrap_or(0),
    }
}

pub(super) fn get_str<'a>(d: &'a Document, key: &str, what: &str) -> StoreResult<&'a str> {
    d.get_str(key)
        .map_err(|e| malformed(what, format!("{key}: {e}")))
}

/// Converts JSON to BSON: integers as `Int64` (above `i64::MAX` as
/// `Decimal128`), other numbers as `Double`, objects in key order.
pub(super) fn json_to_bson(v: &Value) -> Bson {
    match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Bson::Int64(i)
            } else if let Some(u) = n.as_u64() {
                u.to_string()
                    .parse::<Decimal128>()
                    .map_or(Bson::Double(u as f64), Bson::Decimal128)
            } else {
                Bson::Double(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(a) => Bson::Array(a.iter().map(json_to_bson).collect()),
        Value::Object(m) => Bson::Document(obj_to_doc(m)),
    }
}

pub(super) fn obj_to_doc(m: &JsonObject) -> Document {
    let mut d = Document::new();
    for (k, v) in m {
        d.insert(k.clone(), json_to_bson(v));
    }
    d
}

pub(super) fn bson_to_json(b: &Bson) -> Value {
    match b {
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::Boolean(b) => Value::Bool(*b),
        Bson::Int32(i) => Value::from(*i),
        Bson::Int64(i) => Value::from(*i),
        Bson::Double(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Bson::Decimal128(d) => {
            let s = d.to_string();
            if let Ok(u) = s.parse::<u64>() {
                Value::from(u)
            } else if let Ok(i) = s.parse::<i64>() {
                Value::from(i)
            } else if let Some(n) = s.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                Value::Number(n)
            } else {
                Value::String(s)
            }
        }
        Bson::String(s) => Value::String(s.clone()),
        Bson::Array(a) => Value::Array(a.iter().map(bson_to_json).collect()),
        Bson::Document(d) => Value::Object(doc_to_obj(d)),
        Bson::DateTime(t) => Value::String(format_ms(t.timestamp_millis())),
        other => Value::String(other.to_string()),
    }
}

pub(super) fn doc_to_obj(d: &Document) -> JsonObject {
    d.iter()
        .map(|(k, v)| (k.clone(), bson_to_json(v)))
        .collect()
}

/// Whether a dotted path runs through an array before its last segment
/// (following objects only, as [`crate::metadata::get_path`] does).
pub(super) fn crosses_array(meta: &JsonObject, path: &str) -> bool {
    let segs: Vec<&str> = path.split('.').collect();
    let mut cur = meta;
    for seg in &segs[..segs.len().saturating_sub(1)] {
        match cur.get(*seg) {
            Some(Value::Object(m)) => cur = m,
            Some(Value::Array(_)) => return true,
            _ => return false,
        }
    }
    false
}

/// Whether a JSON value compares the same in MongoDB as in `serde_json` up to
/// MongoDB matching more (array traversal, 1 == 1.0): no objects anywhere,
/// whose field order MongoDB's equality would respect.
pub(super) fn filterable(v: &Value) -> bool {
    match v {
        Value::Object(_) => false,
        Value::Array(a) => a.iter().all(filterable),
        _ => true,
    }
}

pub(super) fn to_json_text<T: serde::Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Internal(format!("mongodb: encoding: {e}")))
}

pub(super) fn from_doc_text<T: for<'de> serde::Deserialize<'de>>(
    d: &Document,
    field: &str,
    what: &str,
) -> StoreResult<T> {
    serde_json::from_str(get_str(d, field, what)?).map_err(|e| malformed(what, e))
}

/// `(version, message_count)` of an agent in a session document, if present.
pub(super) fn agent_summary(d: &Document, e: &str) -> Option<(u64, u64)> {
    let a = d.get_document("agents").ok()?.get_document(e).ok()?;
    Some((uint(a.get("v")), uint(a.get("n"))))
}

pub(super) fn uid_of(d: &Document) -> StoreResult<i64> {
    int(d.get("uid")).ok_or_else(|| malformed("session document", "no uid"))
}

pub(super) fn seq_of(d: &Document) -> StoreResult<u64> {
    int(d.get("seq"))
        .and_then(|i| u64::try_from(i).ok())
        .ok_or_else(|| malformed("session document", "no seq"))
}

pub(super) fn agent_ids(d: &Document) -> Vec<String> {
    let mut ids: Vec<String> = d
        .get_document("agents")
        .map(|a| a.keys().map(|k| dec(k)).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

pub(super) fn session_from_doc(d: &Document) -> StoreResult<Session> {
    Ok(Session {
        session_id: get_str(d, "session_id", "session document")?.to_owned(),
        session_type: get_str(d, "session_type", "session document")?.to_owned(),
        created_at: format_ms(date_ms(d, "created_at")),
        updated_at: format_ms(date_ms(d, "updated_at")),
        metadata: d
            .get_document("metadata")
            .map(doc_to_obj)
            .unwrap_or_default(),
        agents: agent_ids(d),
    })
}

pub(super) fn state_str(s: OutboxState) -> &'static str {
    match s {
        OutboxState::Pending => "pending",
        OutboxState::Dead => "dead",
    }
}

/// The outbox item's fields (without `_id`).
pub(super) fn outbox_fields(i: &OutboxItem) -> Document {
    doc! {
        "target": &i.target,
        "payload": &i.payload,
        "plugin": &i.plugin,
        "tenant": &i.tenant,
        "session_id": &i.session_id,
        "created_at": i.created_at,
        "attempts": i64::from(i.attempts),
        "next_attempt_at": i.next_attempt_at,
        "state": state_str(i.state),
        "last_error": i.last_error.clone().map_or(Bson::Null, Bson::String),
    }
}

pub(super) fn outbox_from_doc(d: &Document) -> StoreResult<OutboxItem> {
    let what = "outbox document";
    let s = |k: &str| get_str(d, k, what).map(str::to_owned);
    Ok(OutboxItem {
        id: s("_id")?,
        target: s("target")?,
        payload: s("payload")?,
        plugin: s("plugin")?,
        tenant: s("tenant")?,
        session_id: s("session_id")?,
        created_at: int(d.get("created_at")).unwrap_or(0),
        attempts: u32::try_from(uint(d.get("attempts"))).unwrap_or(u32::MAX),
        next_attempt_at: int(d.get("next_attempt_at")).unwrap_or(0),
        state: match d.get_str("state") {
            Ok("dead") => OutboxState::Dead,
            Ok("pending") => OutboxState::Pending,
            other => return Err(malformed(what, format!("state {other:?}"))),
        },
        last_error: d.get_str("last_error").ok().map(str::to_owned),
    })
}

// ---- the documents and updates of each write (shared by both write paths) ----

/// The update of the session document by a write that records one event:
/// `seq` + 1, `updated_at` now, plus the write's own increments.
pub(super) fn bump_update(inc: Document, now: i64) -> Document {
    session_update(inc, Document::new(), 1, now)
}

/// The update of the session document by `events` writes committed together:
/// `seq` + `events`, `updated_at` now, plus their increments summed
/// ([`add_inc`]) and their fields set.
pub(super) fn session_update(
    mut inc: Document,
    mut set: Document,
    events: i64,
    now: i64,
) -> Document {
    inc.insert("seq", events);
    set.insert("updated_at", date(now));
    doc! { "$inc": inc, "$set": set }
}

/// The session document's copy of an agent's creation time (`agents.<id>.c`),
/// so that a gateway that reads the session knows it without reading the
/// agent (the fast path answers `PUT agent` with it).
pub(super) fn agent_created_path(aid: &str) -> String {
    format!("agents.{}.c", enc(aid))
}

/// `agents.<e>.c` of a session document (see [`agent_created_path`]).
pub(super) fn agent_created_at(d: &Document, e: &str) -> Option<i64> {
    let a = d.get_document("agents").ok()?.get_document(e).ok()?;
    a.get_datetime("c").ok().map(|t| t.timestamp_millis())
}

/// Adds the increments `more` into `into` (a path in both gets their sum).
pub(super) fn add_inc(into: &mut Document, more: Document) {
    for (path, v) in more {
        let sum = into.get_i64(&path).unwrap_or(0) + int(Some(&v)).unwrap_or(0);
        into.insert(path, sum);
    }
}

/// The session increments of `PUT agent`: a new version, the count
/// unchanged (so a new agent starts at 0).
pub(super) fn put_agent_inc(aid: &str) -> Document {
    let e = enc(aid);
    let mut inc = Document::new();
    inc.insert(format!("agents.{e}.v"), 1i64);
    inc.insert(format!("agents.{e}.n"), 0i64);
    inc
}

/// The session update of `PUT agent` ([`put_agent_inc`]).
pub(super) fn put_agent_update(aid: &str, now: i64) -> Document {
    bump_update(put_agent_inc(aid), now)
}

/// The session increments of an append: the agent's message count + 1.
pub(super) fn append_inc(aid: &str) -> Document {
    let mut inc = Document::new();
    inc.insert(format!("agents.{}.n", enc(aid)), 1i64);
    inc
}

/// The session update of an append ([`append_inc`]).
pub(super) fn append_update(aid: &str, now: i64) -> Document {
    bump_update(append_inc(aid), now)
}

/// The session update of a feedback: the feedback count + 1.
pub(super) fn feedback_update(now: i64) -> Document {
    bump_update(doc! { "feedbacks": 1i64 }, now)
}

/// Filter and update of the agent document's upsert.
pub(super) fn agent_upsert(
    key: &str,
    uid: i64,
    aid: &str,
    body_text: &str,
    now: i64,
) -> (Document, Document) {
    let mut filter = child(key, uid);
    filter.insert("agent_id", aid);
    let update = doc! {
        "$set": { "body": body_text, "updated_at": date(now) },
        "$setOnInsert": { "created_at": date(now) },
    };
    (filter, update)
}

/// The filter of one message.
pub(super) fn message_filter(key: &str, uid: i64, aid: &str, mid: u64) -> Document {
    let mut f = child(key, uid);
    f.insert("agent_id", aid);
    f.insert("message_id", to_i64(mid));
    f
}

/// A message document.
pub(super) fn message_doc(key: &str, uid: i64, aid: &str, msg: &Message) -> StoreResult<Document> {
    let mut d = message_filter(key, uid, aid, msg.message_id);
    d.insert("doc", to_json_text(msg)?);
    Ok(d)
}

/// A feedback document (the `idx`-th of the incarnation).
pub(super) fn feedback_doc(
    key: &str,
    uid: i64,
    idx: i64,
    body: &JsonObject,
) -> StoreResult<Document> {
    let mut d = child(key, uid);
    d.insert("idx", idx);
    d.insert("body", to_json_text(body)?);
    Ok(d)
}
