//! The MongoDB store: the official driver with one pooled client.
//!
//! ## Schema (one database, `storage.mongodb.database`)
//! | collection | key | fields |
//! |---|---|---|
//! | `sessions` | `_id: "<tenant>/<sid>"` | `tenant`, `session_id`, `session_type`, `created_at`/`updated_at` (BSON dates, ms), `metadata` (document), `uid`, `seq`, `agents`, `feedbacks`, `deleted` |
//! | `agents` | unique `(uid, agent_id)` | `body` (JSON text of the client's fields), `created_at`, `updated_at` |
//! | `messages` | unique `(uid, agent_id, message_id)` | `doc`: the whole [`Message`] as JSON text (`message` kept byte for byte) |
//! | `feedbacks` | unique `(uid, idx)` | `body`: the feedback object as JSON text |
//! | `events` | unique `(key, seq)` | `tenant`, `session_id`, `type`, `doc` (the [`Event`] as JSON text), `ts`, `hooks_pending`, `lease_until` |
//! | `outbox` | `_id`: item id | the [`OutboxItem`] fields; indexed on `(state, next_attempt_at)` and `(tenant, created_at)` |
//! | `purges` | `_id`: uid | children of a deleted incarnation still to be removed |
//!
//! - Session and agent ids cannot contain `/`, `%` or `$`, so `"<tenant>/<sid>"`
//!   keys sort per tenant (`"<tenant>/"` ≤ key < `"<tenant>0"`), and an agent id
//!   is a field name under `agents` once its dots are encoded as `%2E`:
//!   `agents: { "<aid>": { v: <version>, n: <message count> } }`.
//! - `metadata` is stored as a BSON document (integers as `Int64`, integers above
//!   `i64::MAX` as `Decimal128`, other numbers as `Double`, key order kept) so
//!   `metadata.<path>` can be indexed (`metadata_index_fields`) and filtered.
//! - `uid` is a random positive `Int64` per incarnation of a session: agents,
//!   messages and feedbacks hang off it. Deleting a session keeps its document
//!   as a tombstone (`deleted: true`, metadata and agents emptied, `seq` kept) so
//!   a re-created session continues its event sequence, and records the old uid
//!   in `purges`; the unreachable children are deleted in the background after
//!   the commit, and `connect` sweeps purges left behind by a crash.
//! - One document per message: appends stay small and flat however long a
//!   session grows, and no session approaches the 16 MB document limit.
//! - Retention ([`Retention`], set at run time): sessions past it are excluded
//!   by every "live session" filter (`$nor` of per-type `updated_at` cut-offs),
//!   and [`SessionStore::sweep_expired`] deletes them like `DELETE` would,
//!   drops events older than the event window (index on `ts`) and tombstones
//!   whose events are all gone.
//!
//! ## Write paths
//! **Group commit** (`write_path = "auto"` on MongoDB 8.0+, the default): a
//! write of a session this gateway knows (it created or last wrote it, or read
//! it once with one `find`) is built from what it knows — `seq`, agent versions
//! and message counts, feedback count, metadata — as a conditional update of
//! the session document whose filter names that `seq`, plus the child document
//! and the event. One writer task per gateway commits every write queued
//! meanwhile, of any number of sessions, as **one `bulkWrite` command across
//! the collections plus `commitTransaction`** (`group_commit.rs`). A write
//! whose filter no longer matches (another gateway wrote the session; it
//! expired or was deleted), or whose precondition the kept state cannot decide
//! (`If-Match` that fails, a message id that is not the next one, a metadata
//! path MongoDB may refuse), is taken out of the batch and runs as its own
//! transaction below, which reads the stored state and answers
//! authoritatively (`fast_path.rs`).
//!
//! **One transaction per write** (servers before 8.0, `write_path =
//! "transaction"`, and every fallback): every mutating call runs in one
//! multi-document transaction that first does a
//! conditional `findAndModify` on the session document — the conditions (live
//! session, agent present, `If-Match` version, next message id) are in the
//! filter, the update bumps `seq`, stamps `updated_at` and applies the change —
//! and then inserts the child document and the [`Event`]. When the filter
//! matches nothing, a read inside the same transaction says why (a read-only
//! outcome such as an idempotent append retry aborts, writing nothing).
//! Metadata changes are `$set`/`$unset` of `metadata.<path>`; the answer is
//! computed with [`metadata::apply`] from the document as it was, which also
//! refuses (and so aborts) anything MongoDB would have applied differently.
//!
//! The session document is the per-session lock: two transactions writing one
//! session conflict on it and one is retried (on `TransientTransactionError`,
//! with jittered back-off, bounded in attempts and time; commits are retried on
//! `UnknownTransactionCommitResult`), so message ids stay contiguous. Within
//! one process, writers of a session also take turns on an async mutex, so
//! only writers in different gateways ever conflict.
//!
//! `complete_event` queues outbox items with `$setOnInsert` upserts: a
//! duplicate-key insert would abort the whole transaction.

mod fast_path;
mod group_commit;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Bson, DateTime, Decimal128, Document, doc};
use mongodb::error::{
    Error as MongoError, ErrorKind, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT,
    WriteFailure,
};
use mongodb::options::{
    Acknowledgment, ClientOptions, Compressor, IndexOptions, ReadPreference, ReturnDocument,
    SelectionCriteria, WriteConcern,
};
use mongodb::{Client, ClientSession, Collection, Database, IndexModel};
use serde_json::Value;

use self::fast_path::Fast;
use super::{
    AfterHooked, Appended, ListQuery, MetadataResult, OutboxItem, OutboxState, Page, Retention,
    SessionStore, StoreError, StoreResult, SweepReport, message_conflict, message_event_payload,
    message_gap,
};
use crate::config::MongoConfig;
use crate::metadata::{self, MetadataChange};
use crate::model::{
    Agent, DEFAULT_SESSION_TYPE, Event, EventType, Feedback, JsonObject, Message, MessageInput,
    MessagePatch, MessageRange, NewSession, Session, Tenant, format_ms, now_ms,
};

/// Attempts of a whole transaction on transient errors (write conflicts with
/// another gateway writing the same session), and the time they may take.
const TXN_ATTEMPTS: u32 = 30;
const TXN_BUDGET: Duration = Duration::from_secs(5);
/// Extra attempts of a commit whose outcome is unknown.
const COMMIT_RETRIES: u32 = 5;

/// MongoDB error codes.
const DUPLICATE_KEY: i32 = 11000;
const PATH_NOT_VIABLE: i32 = 28;
/// Codes that mean "the deployment is not able to serve this right now".
const UNAVAILABLE_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    50,    // MaxTimeMSExpired
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    112,   // WriteConflict (after our retries)
    189,   // PrimarySteppedDown
    251,   // NoSuchTransaction
    262,   // ExceededTimeLimit
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// The collections, cheap to clone (each is an `Arc`).
#[derive(Clone)]
struct Colls {
    sessions: Collection<Document>,
    agents: Collection<Document>,
    messages: Collection<Document>,
    feedbacks: Collection<Document>,
    events: Collection<Document>,
    outbox: Collection<Document>,
    purges: Collection<Document>,
}

/// The MongoDB store.
pub struct MongoStore {
    client: Client,
    db: Database,
    c: Colls,
    retention: RwLock<Arc<Retention>>,
    locks: SessionLocks,
    pool: Arc<PoolStats>,
    after_hooked: std::sync::atomic::AtomicU8,
    /// The group commit of the fast path; `None` on servers before 8.0 (or
    /// `write_path = "transaction"`): every write is its own transaction.
    writer: Option<group_commit::GroupCommit>,
    /// What the fast path knows of sessions this gateway wrote.
    known: fast_path::KnownSessions,
}

/// Connection-pool gauges and counters, kept from the driver's CMAP events.
#[derive(Default)]
struct PoolStats {
    created: std::sync::atomic::AtomicU64,
    closed: std::sync::atomic::AtomicU64,
    checked_out: std::sync::atomic::AtomicU64,
    checked_in: std::sync::atomic::AtomicU64,
    checkout_failed: std::sync::atomic::AtomicU64,
    cleared: std::sync::atomic::AtomicU64,
}

impl PoolStats {
    fn observe(&self, ev: mongodb::event::cmap::CmapEvent) {
        use mongodb::event::cmap::CmapEvent as E;
        use std::sync::atomic::Ordering::Relaxed;
        let counter = match ev {
            E::ConnectionCreated(_) => &self.created,
            E::ConnectionClosed(_) => &self.closed,
            E::ConnectionCheckedOut(_) => &self.checked_out,
            E::ConnectionCheckedIn(_) => &self.checked_in,
            E::ConnectionCheckoutFailed(_) => &self.checkout_failed,
            E::PoolCleared(_) => &self.cleared,
            _ => return,
        };
        counter.fetch_add(1, Relaxed);
    }

    fn render(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let (created, closed) = (self.created.load(Relaxed), self.closed.load(Relaxed));
        let (out, back) = (
            self.checked_out.load(Relaxed),
            self.checked_in.load(Relaxed),
        );
        let open = created.saturating_sub(closed);
        let in_use = out.saturating_sub(back);
        format!(
            "# HELP gateway_mongodb_connections Connections of the driver's pool by state.\n\
             # TYPE gateway_mongodb_connections gauge\n\
             gateway_mongodb_connections{{state=\"in_use\"}} {in_use}\n\
             gateway_mongodb_connections{{state=\"idle\"}} {}\n\
             # HELP gateway_mongodb_checkout_failures_total Connection checkouts that failed.\n\
             # TYPE gateway_mongodb_checkout_failures_total counter\n\
             gateway_mongodb_checkout_failures_total {}\n\
             # HELP gateway_mongodb_pool_cleared_total Times the pool was cleared (server went away).\n\
             # TYPE gateway_mongodb_pool_cleared_total counter\n\
             gateway_mongodb_pool_cleared_total {}\n",
            open.saturating_sub(in_use),
            self.checkout_failed.load(Relaxed),
            self.cleared.load(Relaxed),
        )
    }
}

/// One async mutex per session key being written in this process.
#[derive(Default)]
struct SessionLocks {
    /// Locks by key (dropped ones pruned when the map doubles) and the
    /// size at which to prune next.
    inner: std::sync::Mutex<(LockMap, usize)>,
}

type LockMap = HashMap<String, Weak<tokio::sync::Mutex<()>>>;

impl SessionLocks {
    async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut guard = self
                .inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (map, prune_at) = &mut *guard;
            if let Some(m) = map.get(key).and_then(Weak::upgrade) {
                m
            } else {
                if map.len() >= (*prune_at).max(1024) {
                    map.retain(|_, w| w.strong_count() > 0);
                    *prune_at = map.len() * 2;
                }
                let m = Arc::new(tokio::sync::Mutex::new(()));
                map.insert(key.to_owned(), Arc::downgrade(&m));
                m
            }
        };
        m.lock_owned().await
    }
}

// ---- errors ----

fn error_code(e: &MongoError) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        _ => None,
    }
}

fn error_message(e: &MongoError) -> String {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => c.message.clone(),
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.message.clone(),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => w.message.clone(),
        other => other.to_string(),
    }
}

/// The server cannot be reached at all. The driver already waited up to the
/// server selection timeout, so retrying the transaction would only make a
/// client wait longer for the same 503.
fn is_connectivity(e: &MongoError) -> bool {
    matches!(
        e.kind.as_ref(),
        ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::DnsResolve { .. }
            | ErrorKind::Shutdown
    )
}

fn is_unavailable(e: &MongoError) -> bool {
    is_connectivity(e)
        || error_code(e).is_some_and(|c| UNAVAILABLE_CODES.contains(&c))
        || e.contains_label(TRANSIENT_TRANSACTION_ERROR)
        || e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
}

/// Maps a driver error: unreachable/timed out → `Unavailable`, anything else → `Internal`.
fn mongo_err(ctx: &str, e: &MongoError) -> StoreError {
    let msg = format!("mongodb {ctx}: {}", error_message(e));
    if is_unavailable(e) {
        StoreError::Unavailable(msg)
    } else {
        StoreError::Internal(msg)
    }
}

fn malformed(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("mongodb: malformed {what}: {e}"))
}

/// Why a transaction body stopped.
enum TxErr {
    /// A contract error: abort and return it.
    Store(StoreError),
    /// A driver error: abort, and retry when transient.
    Mongo(MongoError),
    /// The snapshot was inconsistent with what the filter saw: abort and retry.
    Retry(String),
}

impl From<MongoError> for TxErr {
    fn from(e: MongoError) -> Self {
        Self::Mongo(e)
    }
}

impl From<StoreError> for TxErr {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// How a transaction body ended successfully.
enum Step<T> {
    /// Commit the writes and return the value.
    Commit(T),
    /// Nothing to write (e.g. an idempotent retry): abort and return the value.
    Abort(T),
}

type TxResult<T> = Result<Step<T>, TxErr>;

async fn backoff(attempt: u32) {
    let cap = 2u64 << attempt.min(6);
    tokio::time::sleep(Duration::from_millis(rand::random_range(1..=cap))).await;
}

async fn abort_quietly(s: &mut ClientSession) {
    let _ = s.abort_transaction().await;
}

async fn commit_with_retry(s: &mut ClientSession) -> Result<(), MongoError> {
    let mut n = 0;
    loop {
        match s.commit_transaction().await {
            Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) && n < COMMIT_RETRIES => {
                n += 1;
                backoff(n).await;
            }
            other => return other,
        }
    }
}

// ---- conversions ----

fn skey(t: &Tenant, sid: &str) -> String {
    format!("{}/{}", t.as_str(), sid)
}

/// Drops what the fast path knows of a session when dropped.
struct Forget<'a>(&'a fast_path::KnownSessions, &'a str);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

/// The fields of a new session incarnation (with a fresh `uid`), without
/// `_id` and `seq`.
fn new_session_fields(
    t: &Tenant,
    sid: &str,
    session_type: &str,
    metadata: &JsonObject,
    now: i64,
) -> Document {
    doc! {
        "tenant": t.as_str(),
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

/// The message an append stores as id `next`.
fn new_message(input: &MessageInput, next: u64, now: i64) -> Message {
    Message {
        message_id: next,
        message: input.message.clone(),
        redact_message: input
            .redact_message
            .clone()
            .filter(|r| r.get().trim() != "null"),
        event_loop_metrics: input.event_loop_metrics.clone().filter(|v| !v.is_null()),
        created_at: format_ms(now),
        updated_at: format_ms(now),
    }
}

/// The session-document update of a metadata change: `$set`/`$unset` of
/// `metadata.<path>`, `updated_at`, and the next `seq`.
fn metadata_update(change: &MetadataChange, now: i64) -> Document {
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
fn enc(aid: &str) -> String {
    aid.replace('.', "%2E")
}

fn dec(field: &str) -> String {
    field.replace("%2E", ".")
}

/// Conditions each matching a session past its retention at `now` (none
/// when nothing expires).
fn expired_conds(ret: &Retention, now: i64) -> Vec<Document> {
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
fn add_live(filter: &mut Document, ret: &Retention) {
    filter.insert("deleted", doc! { "$ne": true });
    let expired = expired_conds(ret, now_ms());
    if !expired.is_empty() {
        filter.insert("$nor", expired);
    }
}

fn to_i64(u: u64) -> i64 {
    i64::try_from(u).unwrap_or(i64::MAX)
}

fn int(b: Option<&Bson>) -> Option<i64> {
    match b? {
        Bson::Int64(i) => Some(*i),
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Double(f) => Some(*f as i64),
        _ => None,
    }
}

fn uint(b: Option<&Bson>) -> u64 {
    int(b).map_or(0, |i| u64::try_from(i).unwrap_or(0))
}

fn date(ms: i64) -> Bson {
    Bson::DateTime(DateTime::from_millis(ms))
}

fn date_ms(d: &Document, key: &str) -> i64 {
    match d.get(key) {
        Some(Bson::DateTime(t)) => t.timestamp_millis(),
        other => int(other).unwrap_or(0),
    }
}

fn get_str<'a>(d: &'a Document, key: &str, what: &str) -> StoreResult<&'a str> {
    d.get_str(key)
        .map_err(|e| malformed(what, format!("{key}: {e}")))
}

/// Converts JSON to BSON: integers as `Int64` (above `i64::MAX` as
/// `Decimal128`), other numbers as `Double`, objects in key order.
fn json_to_bson(v: &Value) -> Bson {
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

fn obj_to_doc(m: &JsonObject) -> Document {
    let mut d = Document::new();
    for (k, v) in m {
        d.insert(k.clone(), json_to_bson(v));
    }
    d
}

fn bson_to_json(b: &Bson) -> Value {
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

fn doc_to_obj(d: &Document) -> JsonObject {
    d.iter()
        .map(|(k, v)| (k.clone(), bson_to_json(v)))
        .collect()
}

/// Whether a dotted path runs through an array before its last segment
/// (following objects only, as [`metadata::get_path`] does).
fn crosses_array(meta: &JsonObject, path: &str) -> bool {
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
fn filterable(v: &Value) -> bool {
    match v {
        Value::Object(_) => false,
        Value::Array(a) => a.iter().all(filterable),
        _ => true,
    }
}

fn to_json_text<T: serde::Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Internal(format!("mongodb: encoding: {e}")))
}

fn from_doc_text<T: for<'de> serde::Deserialize<'de>>(
    d: &Document,
    field: &str,
    what: &str,
) -> StoreResult<T> {
    serde_json::from_str(get_str(d, field, what)?).map_err(|e| malformed(what, e))
}

/// `(version, message_count)` of an agent in a session document, if present.
fn agent_summary(d: &Document, e: &str) -> Option<(u64, u64)> {
    let a = d.get_document("agents").ok()?.get_document(e).ok()?;
    Some((uint(a.get("v")), uint(a.get("n"))))
}

fn uid_of(d: &Document) -> StoreResult<i64> {
    int(d.get("uid")).ok_or_else(|| malformed("session document", "no uid"))
}

fn seq_of(d: &Document) -> StoreResult<u64> {
    int(d.get("seq"))
        .and_then(|i| u64::try_from(i).ok())
        .ok_or_else(|| malformed("session document", "no seq"))
}

fn agent_ids(d: &Document) -> Vec<String> {
    let mut ids: Vec<String> = d
        .get_document("agents")
        .map(|a| a.keys().map(|k| dec(k)).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

fn session_from_doc(d: &Document) -> StoreResult<Session> {
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

fn state_str(s: OutboxState) -> &'static str {
    match s {
        OutboxState::Pending => "pending",
        OutboxState::Dead => "dead",
    }
}

/// The outbox item's fields (without `_id`).
fn outbox_fields(i: &OutboxItem) -> Document {
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

fn outbox_from_doc(d: &Document) -> StoreResult<OutboxItem> {
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

fn read_preference(name: &str) -> StoreResult<ReadPreference> {
    Ok(match name {
        "primary" => ReadPreference::Primary,
        "primaryPreferred" => ReadPreference::PrimaryPreferred { options: None },
        "secondary" => ReadPreference::Secondary { options: None },
        "secondaryPreferred" => ReadPreference::SecondaryPreferred { options: None },
        "nearest" => ReadPreference::Nearest { options: None },
        other => {
            return Err(StoreError::Internal(format!(
                "mongodb: unknown read preference {other:?}"
            )));
        }
    })
}

fn write_concern(cfg: &MongoConfig) -> StoreResult<WriteConcern> {
    let w = if cfg.write_concern == "majority" {
        Acknowledgment::Majority
    } else {
        let n = cfg.write_concern.parse::<u32>().map_err(|_| {
            StoreError::Internal(format!(
                "mongodb: write concern {:?} must be \"majority\" or a number",
                cfg.write_concern
            ))
        })?;
        Acknowledgment::Nodes(n)
    };
    Ok(WriteConcern::builder().w(w).journal(cfg.journal).build())
}

fn index(keys: Document, unique: bool) -> IndexModel {
    let model = IndexModel::builder().keys(keys);
    if unique {
        model
            .options(IndexOptions::builder().unique(true).build())
            .build()
    } else {
        model.build()
    }
}

async fn purge(c: &Colls, uid: i64) -> Result<(), MongoError> {
    c.agents.delete_many(doc! { "uid": uid }).await?;
    c.messages.delete_many(doc! { "uid": uid }).await?;
    c.feedbacks.delete_many(doc! { "uid": uid }).await?;
    c.purges.delete_one(doc! { "_id": uid }).await?;
    Ok(())
}

fn spawn_purge(c: Colls, uid: i64) {
    tokio::spawn(async move {
        if let Err(e) = purge(&c, uid).await {
            tracing::warn!(uid, error = %error_message(&e), "purging a deleted session's children failed; retried at next start-up");
        }
    });
}

/// Purges the children of sessions whose delete committed but whose purge
/// did not finish (e.g. the process died).
async fn sweep_purges(c: Colls) {
    let uids: Vec<i64> = match c.purges.find(doc! {}).await {
        Ok(cur) => match cur.try_collect::<Vec<Document>>().await {
            Ok(docs) => docs.iter().filter_map(|d| int(d.get("_id"))).collect(),
            Err(e) => {
                tracing::warn!(error = %error_message(&e), "reading pending purges failed");
                return;
            }
        },
        Err(e) => {
            tracing::warn!(error = %error_message(&e), "reading pending purges failed");
            return;
        }
    };
    for uid in uids {
        if let Err(e) = purge(&c, uid).await {
            tracing::warn!(uid, error = %error_message(&e), "purging a deleted session's children failed");
        }
    }
}

impl MongoStore {
    fn after_hooked(&self) -> AfterHooked {
        AfterHooked(self.after_hooked.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Connects with one pooled client configured from `cfg`, creates the
    /// indexes (idempotent) and starts a sweep of unfinished purges.
    ///
    /// # Errors
    /// `Unavailable` when no server answers within the server selection
    /// timeout; `Internal` for a bad URI or a refused index.
    pub async fn connect(cfg: &MongoConfig) -> StoreResult<Self> {
        let mut opts = ClientOptions::parse(cfg.uri.as_str())
            .await
            .map_err(|e| mongo_err("parsing the connection string", &e))?;
        if !cfg.app_name.is_empty() {
            opts.app_name = Some(cfg.app_name.clone());
        }
        opts.min_pool_size = Some(cfg.min_pool_size);
        opts.max_pool_size = Some(cfg.max_pool_size);
        opts.max_idle_time = Some(Duration::from_millis(cfg.max_idle_time_ms));
        opts.connect_timeout = Some(Duration::from_millis(cfg.connect_timeout_ms));
        opts.server_selection_timeout =
            Some(Duration::from_millis(cfg.server_selection_timeout_ms));
        if !cfg.compressors.is_empty() {
            let mut compressors = Vec::new();
            for c in &cfg.compressors {
                match c.as_str() {
                    "zlib" => compressors.push(Compressor::Zlib { level: None }),
                    other => {
                        return Err(StoreError::Internal(format!(
                            "mongodb: compressor {other:?} is not supported"
                        )));
                    }
                }
            }
            opts.compressors = Some(compressors);
        }
        opts.selection_criteria = Some(SelectionCriteria::ReadPreference(read_preference(
            &cfg.read_preference,
        )?));
        opts.write_concern = Some(write_concern(cfg)?);
        opts.retry_reads = Some(cfg.retry_reads);
        opts.retry_writes = Some(cfg.retry_writes);
        let pool = Arc::new(PoolStats::default());
        let observer = pool.clone();
        opts.cmap_event_handler = Some(mongodb::event::EventHandler::callback(move |ev| {
            observer.observe(ev);
        }));
        let client =
            Client::with_options(opts).map_err(|e| mongo_err("creating the client", &e))?;
        let db = client.database(&cfg.database);
        let c = Colls {
            sessions: db.collection("sessions"),
            agents: db.collection("agents"),
            messages: db.collection("messages"),
            feedbacks: db.collection("feedbacks"),
            events: db.collection("events"),
            outbox: db.collection("outbox"),
            purges: db.collection("purges"),
        };
        let mut store = Self {
            client,
            db,
            c,
            retention: RwLock::new(Arc::new(Retention::default())),
            locks: SessionLocks::default(),
            pool,
            after_hooked: std::sync::atomic::AtomicU8::new(0),
            writer: None,
            known: fast_path::KnownSessions::default(),
        };
        store.writer = store.choose_write_path(cfg).await?;
        let started = std::time::Instant::now();
        tracing::info!("creating MongoDB indexes (idempotent)");
        store.create_indexes(cfg).await?;
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            "MongoDB indexes ready"
        );
        tokio::spawn(sweep_purges(store.c.clone()));
        Ok(store)
    }

    /// Creates every index (and so every collection, which transactions on
    /// older servers cannot create). Idempotent.
    async fn create_indexes(&self, cfg: &MongoConfig) -> StoreResult<()> {
        let mut session_idx = vec![
            index(doc! { "created_at": 1 }, false),
            index(doc! { "updated_at": 1 }, false),
            // The retention sweep: per type, sessions last changed before a cut-off.
            index(doc! { "session_type": 1, "updated_at": 1 }, false),
        ];
        for f in &cfg.metadata_index_fields {
            let mut keys = Document::new();
            keys.insert(format!("metadata.{f}"), 1);
            session_idx.push(index(keys, false));
        }
        let plan: Vec<(&Collection<Document>, Vec<IndexModel>)> = vec![
            (&self.c.sessions, session_idx),
            (
                &self.c.agents,
                vec![index(doc! { "uid": 1, "agent_id": 1 }, true)],
            ),
            (
                &self.c.messages,
                vec![index(
                    doc! { "uid": 1, "agent_id": 1, "message_id": 1 },
                    true,
                )],
            ),
            (
                &self.c.feedbacks,
                vec![index(doc! { "uid": 1, "idx": 1 }, true)],
            ),
            (
                &self.c.events,
                vec![
                    index(doc! { "key": 1, "seq": 1 }, true),
                    // `events_since` and the retention sweep (the window is
                    // set at run time, so it is swept, not a TTL index).
                    index(doc! { "ts": 1, "key": 1, "seq": 1 }, false),
                    // The after-hook queue.
                    index(doc! { "hooks_pending": 1, "lease_until": 1 }, false),
                ],
            ),
            (
                &self.c.outbox,
                vec![
                    index(doc! { "state": 1, "next_attempt_at": 1 }, false),
                    index(doc! { "created_at": 1 }, false),
                    // A tenant admin's view of its own outbox.
                    index(doc! { "tenant": 1, "created_at": 1 }, false),
                ],
            ),
        ];
        for (coll, models) in plan {
            coll.create_indexes(models)
                .await
                .map_err(|e| mongo_err(&format!("creating indexes on {}", coll.name()), &e))?;
        }
        // Transactions need the collection to exist on servers before 4.4.
        let names = self
            .db
            .list_collection_names()
            .await
            .map_err(|e| mongo_err("listing collections", &e))?;
        if !names.iter().any(|n| n == "purges") {
            match self.db.create_collection("purges").await {
                Ok(()) => {}
                // NamespaceExists: another gateway created it meanwhile.
                Err(e) if error_code(&e) == Some(48) => {}
                Err(e) => return Err(mongo_err("creating collection purges", &e)),
            }
        }
        Ok(())
    }

    fn retention(&self) -> Arc<Retention> {
        self.retention
            .read()
            .map_or_else(|p| p.into_inner().clone(), |r| r.clone())
    }

    /// Filter of a live session: not a tombstone and not past its retention.
    fn live(&self, key: &str) -> Document {
        let mut f = doc! { "_id": key };
        add_live(&mut f, &self.retention());
        f
    }

    /// Runs `body` in a transaction: commits on `Step::Commit`, aborts on
    /// anything else; retries the whole transaction on transient errors and
    /// the commit on an unknown commit result. With a session key, writers of
    /// that session in this process take turns, so they do not abort each
    /// other's transactions (write conflicts remain possible, and are retried,
    /// between gateways).
    async fn transaction<T, F, Fut>(
        &self,
        op: &'static str,
        session_key: Option<&str>,
        mut body: F,
    ) -> StoreResult<T>
    where
        F: FnMut(ClientSession) -> Fut,
        Fut: Future<Output = (ClientSession, TxResult<T>)>,
    {
        let _turn = match session_key {
            Some(key) => Some(self.locks.lock(key).await),
            None => None,
        };
        // Whatever this transaction does, the fast path re-reads the session.
        let _forget = session_key.map(|key| Forget(&self.known, key));
        let mut s = self
            .client
            .start_session()
            .await
            .map_err(|e| mongo_err(op, &e))?;
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            s.start_transaction()
                .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
                .await
                .map_err(|e| mongo_err(op, &e))?;
            let (back, res) = body(s).await;
            s = back;
            let why = match res {
                Ok(Step::Commit(v)) => match commit_with_retry(&mut s).await {
                    Ok(()) => return Ok(v),
                    Err(e)
                        if e.contains_label(TRANSIENT_TRANSACTION_ERROR)
                            && !is_connectivity(&e) =>
                    {
                        abort_quietly(&mut s).await;
                        error_message(&e)
                    }
                    Err(e) => return Err(mongo_err(op, &e)),
                },
                Ok(Step::Abort(v)) => {
                    abort_quietly(&mut s).await;
                    return Ok(v);
                }
                Err(TxErr::Store(e)) => {
                    abort_quietly(&mut s).await;
                    return Err(e);
                }
                Err(TxErr::Retry(why)) => {
                    abort_quietly(&mut s).await;
                    why
                }
                Err(TxErr::Mongo(e)) => {
                    abort_quietly(&mut s).await;
                    if !e.contains_label(TRANSIENT_TRANSACTION_ERROR) || is_connectivity(&e) {
                        return Err(mongo_err(op, &e));
                    }
                    error_message(&e)
                }
            };
            if attempt >= TXN_ATTEMPTS || started.elapsed() >= TXN_BUDGET {
                return Err(StoreError::Unavailable(format!(
                    "mongodb {op}: transaction not committed after {attempt} attempts: {why}"
                )));
            }
            tracing::debug!(op, attempt, reason = %why, "retrying transaction");
            backoff(attempt).await;
        }
    }

    /// Which write path this gateway uses: the group commit when the server
    /// has `bulkWrite` (8.0+) and `write_path` (or `MONGODB_WRITE_PATH`) allows it.
    async fn choose_write_path(
        &self,
        cfg: &MongoConfig,
    ) -> StoreResult<Option<group_commit::GroupCommit>> {
        // The environment overrides the default only (e.g. to run a test
        // suite on the path older servers get).
        let wanted = match std::env::var("MONGODB_WRITE_PATH") {
            Ok(v) if !v.is_empty() && cfg.write_path == "auto" => v,
            _ => cfg.write_path.clone(),
        };
        let bulk = match wanted.as_str() {
            "transaction" => false,
            "auto" | "group_commit" => {
                let hello = self
                    .db
                    .run_command(doc! { "hello": 1 })
                    .await
                    .map_err(|e| mongo_err("hello", &e))?;
                let has = fast_path::server_has_bulk_write(&hello);
                if !has && wanted == "group_commit" {
                    return Err(StoreError::Internal(
                        "mongodb: write_path = \"group_commit\" needs MongoDB 8.0 or later (bulkWrite)"
                            .into(),
                    ));
                }
                has
            }
            other => {
                return Err(StoreError::Internal(format!(
                    "mongodb: write_path {other:?} is not one of \"auto\", \"group_commit\", \"transaction\""
                )));
            }
        };
        tracing::info!(
            write_path = if bulk { "group_commit" } else { "transaction" },
            "MongoDB write path"
        );
        Ok(bulk.then(|| group_commit::GroupCommit::start(self.client.clone())))
    }

    /// The stored form of an event.
    #[allow(clippy::too_many_arguments)]
    fn event_doc(
        &self,
        tenant: &str,
        sid: &str,
        session_type: &str,
        seq: u64,
        kind: EventType,
        now: i64,
        payload: Value,
    ) -> StoreResult<Document> {
        let ev = Event {
            tenant: tenant.to_owned(),
            session_id: sid.to_owned(),
            session_type: session_type.to_owned(),
            seq,
            kind,
            ts: now,
            payload,
        };
        Ok(doc! {
            "tenant": tenant,
            "session_id": sid,
            "key": format!("{tenant}/{sid}"),
            "seq": to_i64(seq),
            "type": kind.as_str(),
            "doc": to_json_text(&ev)?,
            "ts": date(now),
            "hooks_pending": self.after_hooked().contains(kind),
            "lease_until": 0i64,
        })
    }

    /// Records an event inside a transaction.
    #[allow(clippy::too_many_arguments)]
    async fn insert_event(
        &self,
        s: &mut ClientSession,
        tenant: &str,
        sid: &str,
        session_type: &str,
        seq: u64,
        kind: EventType,
        now: i64,
        payload: Value,
    ) -> Result<(), TxErr> {
        let d = self.event_doc(tenant, sid, session_type, seq, kind, now, payload)?;
        self.c.events.insert_one(d).session(&mut *s).await?;
        Ok(())
    }

    /// Reads a live session document (outside a transaction).
    async fn read_live(
        &self,
        key: &str,
        sid: &str,
        projection: Option<Document>,
    ) -> StoreResult<Document> {
        let mut find = self.c.sessions.find_one(self.live(key));
        if let Some(p) = projection {
            find = find.projection(p);
        }
        find.await
            .map_err(|e| mongo_err("reading a session", &e))?
            .ok_or_else(|| StoreError::session_not_found(sid))
    }

    /// Reads a live session's uid and one agent's summary (outside a transaction).
    async fn read_agent_summary(
        &self,
        key: &str,
        sid: &str,
        aid: &str,
    ) -> StoreResult<(i64, u64, u64)> {
        let e = enc(aid);
        let mut proj = doc! { "uid": 1 };
        proj.insert(format!("agents.{e}"), 1);
        let d = self.read_live(key, sid, Some(proj)).await?;
        let (v, n) = agent_summary(&d, &e).ok_or_else(|| StoreError::agent_not_found(sid, aid))?;
        Ok((uid_of(&d)?, v, n))
    }

    // ---- transaction bodies ----

    async fn create_tx(
        &self,
        s: &mut ClientSession,
        t: &Tenant,
        sid: &str,
        session_type: &str,
        metadata: &JsonObject,
    ) -> TxResult<Session> {
        let key = skey(t, sid);
        let now = now_ms();
        let update = doc! {
            "$set": new_session_fields(t, sid, session_type, metadata, now),
            "$inc": { "seq": 1i64 },
        };
        // Matches a tombstone (revived, keeping its seq) or inserts; a live
        // session makes the upsert collide on `_id`.
        let res = self
            .c
            .sessions
            .find_one_and_update(doc! { "_id": &key, "deleted": true }, update)
            .upsert(true)
            .return_document(ReturnDocument::After)
            .projection(doc! { "seq": 1 })
            .session(&mut *s)
            .await;
        let after = match res {
            Ok(Some(d)) => d,
            Ok(None) => return Err(TxErr::Retry("upsert returned nothing".into())),
            Err(e) if error_code(&e) == Some(DUPLICATE_KEY) => {
                return Err(StoreError::Conflict {
                    code: "session_exists",
                    message: format!("session {sid:?} already exists"),
                }
                .into());
            }
            Err(e) => return Err(e.into()),
        };
        let seq = seq_of(&after)?;
        let payload = serde_json::json!({ "session_type": session_type, "metadata": metadata });
        self.insert_event(
            s,
            t.as_str(),
            sid,
            session_type,
            seq,
            EventType::SessionCreated,
            now,
            payload,
        )
        .await?;
        Ok(Step::Commit(Session {
            session_id: sid.to_owned(),
            session_type: session_type.to_owned(),
            created_at: format_ms(now),
            updated_at: format_ms(now),
            metadata: metadata.clone(),
            agents: Vec::new(),
        }))
    }

    /// Turns the session matched by `filter` (`_id` included) into a
    /// tombstone, records the uid for purging and the `session.deleted` event.
    async fn delete_tx(
        &self,
        s: &mut ClientSession,
        tenant: &str,
        sid: &str,
        filter: &Document,
        now: i64,
        payload: &Value,
    ) -> TxResult<i64> {
        let key = format!("{tenant}/{sid}");
        let update = doc! {
            "$set": {
                "deleted": true,
                "metadata": {},
                "agents": {},
                "feedbacks": 0i64,
                "updated_at": date(now),
            },
            "$inc": { "seq": 1i64 },
        };
        let Some(after) = self
            .c
            .sessions
            .find_one_and_update(filter.clone(), update)
            .return_document(ReturnDocument::After)
            .projection(doc! { "uid": 1, "seq": 1, "session_type": 1 })
            .session(&mut *s)
            .await?
        else {
            return Err(StoreError::session_not_found(sid).into());
        };
        let uid = uid_of(&after)?;
        let seq = seq_of(&after)?;
        let session_type = get_str(&after, "session_type", "session document")?;
        self.c
            .purges
            .insert_one(doc! { "_id": uid, "key": &key, "at": date(now) })
            .session(&mut *s)
            .await?;
        self.insert_event(
            s,
            tenant,
            sid,
            session_type,
            seq,
            EventType::SessionDeleted,
            now,
            payload.clone(),
        )
        .await?;
        Ok(Step::Commit(uid))
    }

    #[allow(clippy::too_many_arguments)]
    async fn put_agent_tx(
        &self,
        s: &mut ClientSession,
        t: &Tenant,
        sid: &str,
        aid: &str,
        body: &JsonObject,
        body_text: &str,
        if_match: Option<u64>,
    ) -> TxResult<(Agent, bool)> {
        let key = skey(t, sid);
        let e = enc(aid);
        let now = now_ms();
        let mut filter = self.live(&key);
        match if_match {
            Some(0) => {
                filter.insert(format!("agents.{e}"), doc! { "$exists": false });
            }
            Some(v) => {
                filter.insert(format!("agents.{e}.v"), to_i64(v));
            }
            None => {}
        }
        let mut inc = doc! { "seq": 1i64 };
        inc.insert(format!("agents.{e}.v"), 1i64);
        inc.insert(format!("agents.{e}.n"), 0i64);
        let update = doc! { "$inc": inc, "$set": { "updated_at": date(now) } };
        let mut proj = doc! { "uid": 1, "seq": 1, "session_type": 1 };
        proj.insert(format!("agents.{e}"), 1);
        let after = self
            .c
            .sessions
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::After)
            .projection(proj.clone())
            .session(&mut *s)
            .await?;
        let Some(after) = after else {
            let Some(d) = self
                .c
                .sessions
                .find_one(self.live(&key))
                .projection(proj)
                .session(&mut *s)
                .await?
            else {
                return Err(StoreError::session_not_found(sid).into());
            };
            let current = agent_summary(&d, &e).map_or(0, |(v, _)| v);
            return match if_match {
                Some(expected) if expected != current => {
                    Err(StoreError::VersionMismatch { expected, current }.into())
                }
                _ => Err(TxErr::Retry("agent precondition changed".into())),
            };
        };
        let uid = uid_of(&after)?;
        let seq = seq_of(&after)?;
        let session_type = get_str(&after, "session_type", "session document")?;
        let (version, message_count) = agent_summary(&after, &e)
            .ok_or_else(|| malformed("session document", "agent missing"))?;
        let created = version == 1;
        let stored = self
            .c
            .agents
            .find_one_and_update(
                doc! { "uid": uid, "agent_id": aid },
                doc! {
                    "$set": { "body": body_text, "updated_at": date(now) },
                    "$setOnInsert": { "created_at": date(now) },
                },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .projection(doc! { "created_at": 1 })
            .session(&mut *s)
            .await?
            .ok_or_else(|| malformed("agent document", "upsert returned nothing"))?;
        let created_at = date_ms(&stored, "created_at");
        let payload = serde_json::json!({
            "agent_id": aid, "version": version, "created": created,
        });
        self.insert_event(
            s,
            t.as_str(),
            sid,
            session_type,
            seq,
            EventType::AgentUpdated,
            now,
            payload,
        )
        .await?;
        Ok(Step::Commit((
            Agent {
                agent_id: aid.to_owned(),
                body: body.clone(),
                created_at,
                updated_at: now,
                version,
                message_count,
            },
            created,
        )))
    }

    async fn append_tx(
        &self,
        s: &mut ClientSession,
        t: &Tenant,
        sid: &str,
        aid: &str,
        input: &MessageInput,
    ) -> TxResult<Appended> {
        let key = skey(t, sid);
        let e = enc(aid);
        let count_path = format!("agents.{e}.n");
        let now = now_ms();
        let mut filter = self.live(&key);
        match input.message_id {
            Some(mid) => filter.insert(count_path.clone(), to_i64(mid)),
            None => filter.insert(format!("agents.{e}"), doc! { "$exists": true }),
        };
        let mut inc = doc! { "seq": 1i64 };
        inc.insert(count_path, 1i64);
        let update = doc! { "$inc": inc, "$set": { "updated_at": date(now) } };
        let mut proj = doc! { "uid": 1, "seq": 1, "session_type": 1 };
        proj.insert(format!("agents.{e}"), 1);
        let after = self
            .c
            .sessions
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::After)
            .projection(proj.clone())
            .session(&mut *s)
            .await?;
        let Some(after) = after else {
            // Why not: missing session/agent, or an id that is not the next one.
            let Some(d) = self
                .c
                .sessions
                .find_one(self.live(&key))
                .projection(proj)
                .session(&mut *s)
                .await?
            else {
                return Err(StoreError::session_not_found(sid).into());
            };
            let Some((_, next)) = agent_summary(&d, &e) else {
                return Err(StoreError::agent_not_found(sid, aid).into());
            };
            return match input.message_id {
                Some(mid) if mid > next => Err(message_gap(mid, next).into()),
                Some(mid) if mid < next => {
                    let uid = uid_of(&d)?;
                    let stored = self
                        .c
                        .messages
                        .find_one(doc! { "uid": uid, "agent_id": aid, "message_id": to_i64(mid) })
                        .session(&mut *s)
                        .await?
                        .ok_or_else(|| {
                            malformed("messages", format!("message {mid} missing below count"))
                        })?;
                    let stored: Message = from_doc_text(&stored, "doc", "message document")?;
                    if input.same_content(&stored) {
                        Ok(Step::Abort(Appended::Existing(stored)))
                    } else {
                        Err(message_conflict(mid).into())
                    }
                }
                _ => Err(TxErr::Retry("message count changed".into())),
            };
        };
        let uid = uid_of(&after)?;
        let seq = seq_of(&after)?;
        let session_type = get_str(&after, "session_type", "session document")?;
        let (_, count) = agent_summary(&after, &e)
            .ok_or_else(|| malformed("session document", "agent missing"))?;
        let next = count
            .checked_sub(1)
            .ok_or_else(|| malformed("session document", "message count"))?;
        let msg = new_message(input, next, now);
        self.c
            .messages
            .insert_one(doc! {
                "uid": uid,
                "agent_id": aid,
                "message_id": to_i64(next),
                "doc": to_json_text(&msg)?,
            })
            .session(&mut *s)
            .await?;
        let payload = message_event_payload(aid, &msg);
        self.insert_event(
            s,
            t.as_str(),
            sid,
            session_type,
            seq,
            EventType::MessageAppended,
            now,
            payload,
        )
        .await?;
        Ok(Step::Commit(Appended::Created(msg)))
    }

    #[allow(clippy::too_many_arguments)]
    async fn update_message_tx(
        &self,
        s: &mut ClientSession,
        t: &Tenant,
        sid: &str,
        aid: &str,
        mid: u64,
        patch: &MessagePatch,
    ) -> TxResult<Message> {
        let key = skey(t, sid);
        let e = enc(aid);
        let now = now_ms();
        let mut filter = self.live(&key);
        filter.insert(format!("agents.{e}"), doc! { "$exists": true });
        let update = doc! { "$inc": { "seq": 1i64 }, "$set": { "updated_at": date(now) } };
        let after = self
            .c
            .sessions
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::After)
            .projection(doc! { "uid": 1, "seq": 1, "session_type": 1 })
            .session(&mut *s)
            .await?;
        let Some(after) = after else {
            let exists = self
                .c
                .sessions
                .find_one(self.live(&key))
                .projection(doc! { "_id": 1 })
                .session(&mut *s)
                .await?
                .is_some();
            return Err(if exists {
                StoreError::agent_not_found(sid, aid)
            } else {
                StoreError::session_not_found(sid)
            }
            .into());
        };
        let uid = uid_of(&after)?;
        let seq = seq_of(&after)?;
        let session_type = get_str(&after, "session_type", "session document")?;
        // The session document is written (locked) by this transaction, so
        // this read-modify-write of the message cannot race another writer.
        let filter = doc! { "uid": uid, "agent_id": aid, "message_id": to_i64(mid) };
        let stored = self
            .c
            .messages
            .find_one(filter.clone())
            .session(&mut *s)
            .await?
            .ok_or_else(|| StoreError::message_not_found(aid, mid))?;
        let mut msg: Message = from_doc_text(&stored, "doc", "message document")?;
        patch.apply(&mut msg, now);
        self.c
            .messages
            .update_one(filter, doc! { "$set": { "doc": to_json_text(&msg)? } })
            .session(&mut *s)
            .await?;
        let payload = message_event_payload(aid, &msg);
        self.insert_event(
            s,
            t.as_str(),
            sid,
            session_type,
            seq,
            EventType::MessageUpdated,
            now,
            payload,
        )
        .await?;
        Ok(Step::Commit(msg))
    }

    async fn change_metadata_tx(
        &self,
        s: &mut ClientSession,
        t: &Tenant,
        sid: &str,
        change: &MetadataChange,
    ) -> TxResult<MetadataResult> {
        let key = skey(t, sid);
        let now = now_ms();
        let update = metadata_update(change, now);
        let res = self
            .c
            .sessions
            .find_one_and_update(self.live(&key), update)
            .return_document(ReturnDocument::Before)
            .projection(doc! { "metadata": 1, "seq": 1, "session_type": 1 })
            .session(&mut *s)
            .await;
        let before = match res {
            Ok(Some(d)) => d,
            Ok(None) => return Err(StoreError::session_not_found(sid).into()),
            Err(e) if error_code(&e) == Some(PATH_NOT_VIABLE) => {
                return Err(StoreError::Invalid {
                    code: "metadata_path_conflict",
                    message: error_message(&e),
                }
                .into());
            }
            Err(e) => return Err(e.into()),
        };
        let before_meta = before
            .get_document("metadata")
            .map(doc_to_obj)
            .unwrap_or_default();
        // Computes the answer from the document as it was; also refuses what
        // MongoDB would have done differently (e.g. `$set` into an array), in
        // which case the abort undoes the update.
        let applied =
            metadata::apply(&before_meta, change).map_err(|message| StoreError::Invalid {
                code: "metadata_path_conflict",
                message,
            })?;
        // `$unset` through an array nulls an element (`tags.0`) or edits one
        // (`list.0.x`), where the contract removes nothing: store the answer.
        if let MetadataChange::Delete(paths) = change
            && paths.iter().any(|p| crosses_array(&before_meta, p))
        {
            self.c
                .sessions
                .update_one(
                    doc! { "_id": &key },
                    doc! { "$set": { "metadata": obj_to_doc(&applied.metadata) } },
                )
                .session(&mut *s)
                .await?;
        }
        let seq = seq_of(&before)? + 1;
        let session_type = get_str(&before, "session_type", "session document")?;
        let payload = metadata::event_payload(change, &applied);
        let kind = super::metadata_event_type(change);
        self.insert_event(s, t.as_str(), sid, session_type, seq, kind, now, payload)
            .await?;
        Ok(Step::Commit(MetadataResult {
            metadata: applied.metadata,
            changed: applied.changed,
            seq,
        }))
    }

    async fn add_feedback_tx(
        &self,
        s: &mut ClientSession,
        t: &Tenant,
        sid: &str,
        body: &JsonObject,
    ) -> TxResult<Feedback> {
        let key = skey(t, sid);
        let now = now_ms();
        let update = doc! {
            "$inc": { "seq": 1i64, "feedbacks": 1i64 },
            "$set": { "updated_at": date(now) },
        };
        let Some(after) = self
            .c
            .sessions
            .find_one_and_update(self.live(&key), update)
            .return_document(ReturnDocument::After)
            .projection(doc! { "uid": 1, "seq": 1, "feedbacks": 1, "session_type": 1 })
            .session(&mut *s)
            .await?
        else {
            return Err(StoreError::session_not_found(sid).into());
        };
        let uid = uid_of(&after)?;
        let seq = seq_of(&after)?;
        let session_type = get_str(&after, "session_type", "session document")?;
        let idx = int(after.get("feedbacks"))
            .and_then(|n| n.checked_sub(1))
            .ok_or_else(|| malformed("session document", "feedbacks"))?;
        let mut body = body.clone();
        body.insert("created_at".into(), format_ms(now).into());
        self.c
            .feedbacks
            .insert_one(doc! { "uid": uid, "idx": idx, "body": to_json_text(&body)? })
            .session(&mut *s)
            .await?;
        let payload = serde_json::json!({ "feedback": body });
        self.insert_event(
            s,
            t.as_str(),
            sid,
            session_type,
            seq,
            EventType::FeedbackAdded,
            now,
            payload,
        )
        .await?;
        Ok(Step::Commit(Feedback { body }))
    }

    async fn complete_event_tx(
        &self,
        s: &mut ClientSession,
        key: &str,
        seq: u64,
        outbox: &[OutboxItem],
    ) -> TxResult<()> {
        // An insert's duplicate-key error would abort the transaction, so an
        // upsert that only sets on insert skips existing ids instead.
        for item in outbox {
            self.c
                .outbox
                .update_one(
                    doc! { "_id": &item.id },
                    doc! { "$setOnInsert": outbox_fields(item) },
                )
                .upsert(true)
                .session(&mut *s)
                .await?;
        }
        self.c
            .events
            .update_one(
                doc! { "key": key, "seq": to_i64(seq) },
                doc! { "$set": { "hooks_pending": false } },
            )
            .session(&mut *s)
            .await?;
        Ok(Step::Commit(()))
    }
}

#[async_trait]
impl SessionStore for MongoStore {
    fn name(&self) -> &'static str {
        "mongodb"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.db
            .run_command(doc! { "ping": 1 })
            .await
            .map_err(|e| mongo_err("ping", &e))?;
        Ok(())
    }

    async fn create_session(&self, t: &Tenant, new: NewSession) -> StoreResult<Session> {
        let sid = new
            .session_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let session_type = new
            .session_type
            .unwrap_or_else(|| DEFAULT_SESSION_TYPE.to_owned());
        let metadata = new.metadata.unwrap_or_default();
        let (sid, session_type, metadata) = (&sid, &session_type, &metadata);
        if self.writer.is_some() {
            let key = skey(t, sid);
            let _turn = self.locks.lock(&key).await;
            if let Fast::Done(r) = self.create_fast(t, sid, session_type, metadata).await {
                return r;
            }
        }
        self.transaction("create_session", Some(&skey(t, sid)), |mut s| async move {
            let r = self.create_tx(&mut s, t, sid, session_type, metadata).await;
            (s, r)
        })
        .await
    }

    async fn get_session(&self, t: &Tenant, sid: &str) -> StoreResult<Session> {
        let d = self.read_live(&skey(t, sid), sid, None).await?;
        session_from_doc(&d)
    }

    async fn batch_get_sessions(&self, t: &Tenant, ids: &[String]) -> StoreResult<Vec<Session>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| skey(t, id)).collect();
        let mut filter = doc! { "_id": { "$in": &keys } };
        add_live(&mut filter, &self.retention());
        let docs: Vec<Document> = self
            .c
            .sessions
            .find(filter)
            .await
            .map_err(|e| mongo_err("batch_get_sessions", &e))?
            .try_collect()
            .await
            .map_err(|e| mongo_err("batch_get_sessions", &e))?;
        let mut found = HashMap::with_capacity(docs.len());
        for d in &docs {
            found.insert(
                get_str(d, "_id", "session document")?.to_owned(),
                session_from_doc(d)?,
            );
        }
        Ok(keys.iter().filter_map(|k| found.get(k).cloned()).collect())
    }

    async fn list_sessions(&self, t: &Tenant, q: &ListQuery) -> StoreResult<Page> {
        if q.limit == 0 {
            return Ok(Page {
                sessions: Vec::new(),
                next_cursor: None,
            });
        }
        let prefix = format!("{}/", t.as_str());
        let after = q
            .after
            .as_ref()
            .map_or_else(|| prefix.clone(), |a| format!("{prefix}{a}"));
        let mut filter = doc! { "_id": { "$gt": after, "$lt": format!("{}0", t.as_str()) } };
        add_live(&mut filter, &self.retention());
        if let Some(ts) = q.updated_after {
            filter.insert("updated_at", doc! { "$gt": date(ts) });
        }
        if let Some(ty) = &q.session_type {
            filter.insert("session_type", ty.as_str());
        }
        // MongoDB's equality matches a superset of the embedded store's
        // (array traversal, 1 == 1.0, null matching missing), so results are
        // re-checked here with the same rule the embedded store applies.
        let mut conds = Vec::new();
        for (p, v) in &q.metadata {
            let mut c = Document::new();
            if filterable(v) {
                c.insert(format!("metadata.{p}"), json_to_bson(v));
            } else {
                c.insert(format!("metadata.{p}"), doc! { "$exists": true });
            }
            conds.push(c);
        }
        if !conds.is_empty() {
            filter.insert("$and", conds);
        }
        let want = q.limit.saturating_add(1);
        let batch = u32::try_from(want.min(1000)).unwrap_or(1000);
        let mut find = self
            .c
            .sessions
            .find(filter)
            .sort(doc! { "_id": 1 })
            .batch_size(batch);
        if q.metadata.is_empty() {
            find = find.limit(i64::try_from(want).unwrap_or(i64::MAX));
        }
        let mut cursor = find.await.map_err(|e| mongo_err("list_sessions", &e))?;
        let mut out = Vec::new();
        let mut more = false;
        while let Some(d) = cursor
            .try_next()
            .await
            .map_err(|e| mongo_err("list_sessions", &e))?
        {
            let session = session_from_doc(&d)?;
            if !q
                .metadata
                .iter()
                .all(|(p, v)| metadata::get_path(&session.metadata, p) == Some(v))
            {
                continue;
            }
            if out.len() == q.limit {
                more = true;
                break;
            }
            out.push(session);
        }
        let next_cursor = if more {
            out.last().map(|s: &Session| s.session_id.clone())
        } else {
            None
        };
        Ok(Page {
            sessions: out,
            next_cursor,
        })
    }

    async fn delete_session(&self, t: &Tenant, sid: &str) -> StoreResult<()> {
        let filter = &self.live(&skey(t, sid));
        let payload = &Value::Object(JsonObject::new());
        let uid = self
            .transaction("delete_session", Some(&skey(t, sid)), |mut s| async move {
                let r = self
                    .delete_tx(&mut s, t.as_str(), sid, filter, now_ms(), payload)
                    .await;
                (s, r)
            })
            .await?;
        spawn_purge(self.c.clone(), uid);
        Ok(())
    }

    async fn put_agent(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        body: JsonObject,
        if_match: Option<u64>,
    ) -> StoreResult<(Agent, bool)> {
        let text = to_json_text(&body)?;
        let (body, text) = (&body, text.as_str());
        if self.writer.is_some() {
            let key = skey(t, sid);
            let _turn = self.locks.lock(&key).await;
            if let Fast::Done(r) = self.put_agent_fast(t, sid, aid, body, text, if_match).await {
                return r;
            }
        }
        self.transaction("put_agent", Some(&skey(t, sid)), |mut s| async move {
            let r = self
                .put_agent_tx(&mut s, t, sid, aid, body, text, if_match)
                .await;
            (s, r)
        })
        .await
    }

    async fn get_agent(&self, t: &Tenant, sid: &str, aid: &str) -> StoreResult<Agent> {
        let (uid, version, message_count) =
            self.read_agent_summary(&skey(t, sid), sid, aid).await?;
        let d = self
            .c
            .agents
            .find_one(doc! { "uid": uid, "agent_id": aid })
            .await
            .map_err(|e| mongo_err("get_agent", &e))?
            .ok_or_else(|| StoreError::agent_not_found(sid, aid))?;
        Ok(Agent {
            agent_id: aid.to_owned(),
            body: from_doc_text(&d, "body", "agent document")?,
            created_at: date_ms(&d, "created_at"),
            updated_at: date_ms(&d, "updated_at"),
            version,
            message_count,
        })
    }

    async fn list_agents(&self, t: &Tenant, sid: &str) -> StoreResult<Vec<Agent>> {
        let d = self
            .read_live(&skey(t, sid), sid, Some(doc! { "uid": 1, "agents": 1 }))
            .await?;
        let uid = uid_of(&d)?;
        let ids = agent_ids(&d);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let docs: Vec<Document> = self
            .c
            .agents
            .find(doc! { "uid": uid })
            .await
            .map_err(|e| mongo_err("list_agents", &e))?
            .try_collect()
            .await
            .map_err(|e| mongo_err("list_agents", &e))?;
        let by_id: HashMap<&str, &Document> = docs
            .iter()
            .filter_map(|a| a.get_str("agent_id").ok().map(|id| (id, a)))
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for aid in &ids {
            let (Some((version, message_count)), Some(a)) =
                (agent_summary(&d, &enc(aid)), by_id.get(aid.as_str()))
            else {
                continue;
            };
            out.push(Agent {
                agent_id: aid.clone(),
                body: from_doc_text(a, "body", "agent document")?,
                created_at: date_ms(a, "created_at"),
                updated_at: date_ms(a, "updated_at"),
                version,
                message_count,
            });
        }
        Ok(out)
    }

    async fn append_message(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        input: MessageInput,
    ) -> StoreResult<Appended> {
        let input = &input;
        if self.writer.is_some() {
            let key = skey(t, sid);
            let _turn = self.locks.lock(&key).await;
            if let Fast::Done(r) = self.append_fast(t, sid, aid, input).await {
                return r;
            }
        }
        self.transaction("append_message", Some(&skey(t, sid)), |mut s| async move {
            let r = self.append_tx(&mut s, t, sid, aid, input).await;
            (s, r)
        })
        .await
    }

    async fn list_messages(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        range: MessageRange,
    ) -> StoreResult<(Vec<Message>, u64)> {
        let (uid, _, total) = self.read_agent_summary(&skey(t, sid), sid, aid).await?;
        let (from, to) = super::message_bounds(range, total);
        if from >= to {
            return Ok((Vec::new(), total));
        }
        let docs: Vec<Document> = self
            .c
            .messages
            .find(doc! {
                "uid": uid,
                "agent_id": aid,
                "message_id": { "$gte": to_i64(from), "$lt": to_i64(to) },
            })
            .sort(doc! { "message_id": 1 })
            .await
            .map_err(|e| mongo_err("list_messages", &e))?
            .try_collect()
            .await
            .map_err(|e| mongo_err("list_messages", &e))?;
        let out = docs
            .iter()
            .map(|d| from_doc_text::<Message>(d, "doc", "message document"))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok((out, total))
    }

    async fn get_message(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        mid: u64,
    ) -> StoreResult<Message> {
        let (uid, _, _) = self.read_agent_summary(&skey(t, sid), sid, aid).await?;
        let d = self
            .c
            .messages
            .find_one(doc! { "uid": uid, "agent_id": aid, "message_id": to_i64(mid) })
            .await
            .map_err(|e| mongo_err("get_message", &e))?
            .ok_or_else(|| StoreError::message_not_found(aid, mid))?;
        from_doc_text(&d, "doc", "message document")
    }

    async fn update_message(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        mid: u64,
        patch: MessagePatch,
    ) -> StoreResult<Message> {
        let patch = &patch;
        self.transaction("update_message", Some(&skey(t, sid)), |mut s| async move {
            let r = self
                .update_message_tx(&mut s, t, sid, aid, mid, patch)
                .await;
            (s, r)
        })
        .await
    }

    async fn get_metadata(&self, t: &Tenant, sid: &str) -> StoreResult<JsonObject> {
        let d = self
            .read_live(&skey(t, sid), sid, Some(doc! { "metadata": 1 }))
            .await?;
        Ok(d.get_document("metadata")
            .map(doc_to_obj)
            .unwrap_or_default())
    }

    async fn change_metadata(
        &self,
        t: &Tenant,
        sid: &str,
        change: &MetadataChange,
    ) -> StoreResult<MetadataResult> {
        if self.writer.is_some() {
            let key = skey(t, sid);
            let _turn = self.locks.lock(&key).await;
            if let Fast::Done(r) = self.metadata_fast(t, sid, change).await {
                return r;
            }
        }
        let res = self
            .transaction("change_metadata", Some(&skey(t, sid)), |mut s| async move {
                let r = self.change_metadata_tx(&mut s, t, sid, change).await;
                (s, r)
            })
            .await;
        match res {
            // MongoDB refused the path: word it as the embedded store does.
            Err(StoreError::Invalid { code, message }) => {
                let message = match self.get_metadata(t, sid).await {
                    Ok(current) => metadata::apply(&current, change).err().unwrap_or(message),
                    Err(_) => message,
                };
                Err(StoreError::Invalid { code, message })
            }
            other => other,
        }
    }

    async fn add_feedback(&self, t: &Tenant, sid: &str, body: JsonObject) -> StoreResult<Feedback> {
        let body = &body;
        if self.writer.is_some() {
            let key = skey(t, sid);
            let _turn = self.locks.lock(&key).await;
            if let Fast::Done(r) = self.feedback_fast(t, sid, body).await {
                return r;
            }
        }
        self.transaction("add_feedback", Some(&skey(t, sid)), |mut s| async move {
            let r = self.add_feedback_tx(&mut s, t, sid, body).await;
            (s, r)
        })
        .await
    }

    async fn list_feedbacks(&self, t: &Tenant, sid: &str) -> StoreResult<Vec<Feedback>> {
        let d = self
            .read_live(&skey(t, sid), sid, Some(doc! { "uid": 1 }))
            .await?;
        let uid = uid_of(&d)?;
        let docs: Vec<Document> = self
            .c
            .feedbacks
            .find(doc! { "uid": uid })
            .sort(doc! { "idx": 1 })
            .await
            .map_err(|e| mongo_err("list_feedbacks", &e))?
            .try_collect()
            .await
            .map_err(|e| mongo_err("list_feedbacks", &e))?;
        docs.iter()
            .map(|d| {
                Ok(Feedback {
                    body: from_doc_text(d, "body", "feedback document")?,
                })
            })
            .collect()
    }

    fn set_retention(&self, retention: Retention) {
        let mut guard = self
            .retention
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard = Arc::new(retention);
    }

    async fn sweep_expired(&self, now: i64, limit: usize) -> StoreResult<SweepReport> {
        let ret = self.retention();
        let mut report = SweepReport::default();
        let expired = expired_conds(&ret, now);
        if !expired.is_empty() && limit > 0 {
            let filter = doc! { "deleted": { "$ne": true }, "$or": expired.clone() };
            let docs: Vec<Document> = self
                .c
                .sessions
                .find(filter)
                .projection(doc! { "tenant": 1, "session_id": 1 })
                .sort(doc! { "updated_at": 1 })
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .await
                .map_err(|e| mongo_err("sweep_expired", &e))?
                .try_collect()
                .await
                .map_err(|e| mongo_err("sweep_expired", &e))?;
            let payload = &serde_json::json!({ "reason": "expired" });
            for d in &docs {
                let tenant = get_str(d, "tenant", "session document")?;
                let sid = get_str(d, "session_id", "session document")?;
                // Still expired at delete time: a write meanwhile saves it.
                let filter = &doc! {
                    "_id": format!("{tenant}/{sid}"),
                    "deleted": { "$ne": true },
                    "$or": expired.clone(),
                };
                let res = self
                    .transaction(
                        "sweep_expired",
                        Some(&format!("{tenant}/{sid}")),
                        |mut s| async move {
                            let r = self
                                .delete_tx(&mut s, tenant, sid, filter, now, payload)
                                .await;
                            (s, r)
                        },
                    )
                    .await;
                match res {
                    Ok(uid) => {
                        spawn_purge(self.c.clone(), uid);
                        report.sessions += 1;
                    }
                    Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if let Some(window) = ret.events_ms {
            let cutoff = now.saturating_sub(window);
            // Once its events are gone, a tombstone has nothing to keep.
            self.c
                .sessions
                .delete_many(doc! { "deleted": true, "updated_at": { "$lte": date(cutoff) } })
                .await
                .map_err(|e| mongo_err("sweep_expired", &e))?;
            let batch = limit.saturating_mul(10);
            if batch > 0 {
                let old: Vec<Document> = self
                    .c
                    .events
                    .find(doc! { "ts": { "$lt": date(cutoff) } })
                    .projection(doc! { "_id": 1 })
                    .sort(doc! { "ts": 1, "key": 1, "seq": 1 })
                    .limit(i64::try_from(batch).unwrap_or(i64::MAX))
                    .await
                    .map_err(|e| mongo_err("sweep_expired", &e))?
                    .try_collect()
                    .await
                    .map_err(|e| mongo_err("sweep_expired", &e))?;
                let ids: Vec<Bson> = old.iter().filter_map(|d| d.get("_id").cloned()).collect();
                if !ids.is_empty() {
                    let res = self
                        .c
                        .events
                        .delete_many(doc! { "_id": { "$in": ids } })
                        .await
                        .map_err(|e| mongo_err("sweep_expired", &e))?;
                    report.events = res.deleted_count;
                }
            }
        }
        Ok(report)
    }

    async fn latest_event_seq(&self, t: &Tenant, sid: &str) -> StoreResult<u64> {
        let d = self
            .c
            .sessions
            .find_one(doc! { "_id": skey(t, sid) })
            .projection(doc! { "seq": 1 })
            .await
            .map_err(|e| mongo_err("latest_event_seq", &e))?;
        Ok(d.map_or(0, |d| uint(d.get("seq"))))
    }

    /// Every gateway pointed at the database writes to it.
    fn set_after_hooked(&self, kinds: AfterHooked) {
        self.after_hooked
            .store(kinds.0, std::sync::atomic::Ordering::Relaxed);
    }

    fn metrics_text(&self) -> String {
        self.pool.render()
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn events_since(&self, since: i64, limit: usize) -> StoreResult<Vec<Event>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let docs: Vec<Document> = self
            .c
            .events
            .find(doc! { "ts": { "$gte": date(since) } })
            .sort(doc! { "ts": 1, "key": 1, "seq": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(|e| mongo_err("events_since", &e))?
            .try_collect()
            .await
            .map_err(|e| mongo_err("events_since", &e))?;
        docs.iter()
            .map(|d| from_doc_text::<Event>(d, "doc", "event document"))
            .collect()
    }

    async fn events_after(
        &self,
        t: &Tenant,
        sid: &str,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<Event>> {
        if limit == 0 || after >= i64::MAX as u64 {
            return Ok(Vec::new());
        }
        let docs: Vec<Document> = self
            .c
            .events
            .find(doc! { "key": skey(t, sid), "seq": { "$gt": to_i64(after) } })
            .sort(doc! { "seq": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(|e| mongo_err("events_after", &e))?
            .try_collect()
            .await
            .map_err(|e| mongo_err("events_after", &e))?;
        docs.iter()
            .map(|d| from_doc_text::<Event>(d, "doc", "event document"))
            .collect()
    }

    async fn claim_pending_events(
        &self,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<Event>> {
        // One atomic claim per event, so gateways sharing the database never
        // hold the same lease.
        let mut out = Vec::new();
        let mut claimed: Vec<Bson> = Vec::new();
        while out.len() < limit {
            let d = self
                .c
                .events
                .find_one_and_update(
                    doc! {
                        "hooks_pending": true,
                        "lease_until": { "$lte": now },
                        "_id": { "$nin": claimed.clone() },
                    },
                    doc! { "$set": { "lease_until": now.saturating_add(lease_ms) } },
                )
                .sort(doc! { "ts": 1, "key": 1, "seq": 1 })
                .projection(doc! { "doc": 1 })
                .await
                .map_err(|e| mongo_err("claim_pending_events", &e))?;
            let Some(d) = d else { break };
            if let Some(id) = d.get("_id") {
                claimed.push(id.clone());
            }
            out.push(from_doc_text::<Event>(&d, "doc", "event document")?);
        }
        Ok(out)
    }

    async fn complete_event(
        &self,
        tenant: &str,
        session_id: &str,
        seq: u64,
        outbox: Vec<OutboxItem>,
    ) -> StoreResult<()> {
        let key = format!("{tenant}/{session_id}");
        let (key, outbox) = (key.as_str(), outbox.as_slice());
        self.transaction("complete_event", None, |mut s| async move {
            let r = self.complete_event_tx(&mut s, key, seq, outbox).await;
            (s, r)
        })
        .await
    }

    async fn claim_outbox(
        &self,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<OutboxItem>> {
        let mut out: Vec<OutboxItem> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        while out.len() < limit {
            let claimed: Vec<&str> = seen.iter().map(String::as_str).collect();
            let d = self
                .c
                .outbox
                .find_one_and_update(
                    doc! {
                        "state": state_str(OutboxState::Pending),
                        "next_attempt_at": { "$lte": now },
                        "_id": { "$nin": claimed },
                    },
                    doc! { "$set": { "next_attempt_at": now.saturating_add(lease_ms) } },
                )
                .sort(doc! { "next_attempt_at": 1, "created_at": 1, "_id": 1 })
                .return_document(ReturnDocument::Before)
                .await
                .map_err(|e| mongo_err("claim_outbox", &e))?;
            let Some(d) = d else { break };
            let item = outbox_from_doc(&d)?;
            seen.insert(item.id.clone());
            out.push(item);
        }
        Ok(out)
    }

    async fn outbox_delivered(&self, id: &str) -> StoreResult<()> {
        self.c
            .outbox
            .delete_one(doc! { "_id": id })
            .await
            .map_err(|e| mongo_err("outbox_delivered", &e))?;
        Ok(())
    }

    async fn outbox_failed(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_at: i64,
        error: &str,
        dead: bool,
    ) -> StoreResult<()> {
        let mut set = doc! {
            "attempts": i64::from(attempts),
            "next_attempt_at": next_attempt_at,
            "last_error": error,
        };
        if dead {
            set.insert("state", state_str(OutboxState::Dead));
        }
        self.c
            .outbox
            .update_one(doc! { "_id": id }, doc! { "$set": set })
            .await
            .map_err(|e| mongo_err("outbox_failed", &e))?;
        Ok(())
    }

    async fn list_outbox_of(
        &self,
        tenant: Option<&str>,
        state: Option<OutboxState>,
        limit: usize,
    ) -> StoreResult<Vec<OutboxItem>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut filter = state.map_or_else(Document::new, |s| doc! { "state": state_str(s) });
        if let Some(t) = tenant {
            filter.insert("tenant", t);
        }
        let docs: Vec<Document> = self
            .c
            .outbox
            .find(filter)
            .sort(doc! { "created_at": 1, "_id": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(|e| mongo_err("list_outbox", &e))?
            .try_collect()
            .await
            .map_err(|e| mongo_err("list_outbox", &e))?;
        docs.iter().map(outbox_from_doc).collect()
    }

    async fn retry_outbox_of(
        &self,
        tenant: Option<&str>,
        id: &str,
        now: i64,
    ) -> StoreResult<OutboxItem> {
        let mut filter = doc! { "_id": id };
        if let Some(t) = tenant {
            filter.insert("tenant", t);
        }
        let d = self
            .c
            .outbox
            .find_one_and_update(
                filter,
                doc! { "$set": {
                    "state": state_str(OutboxState::Pending),
                    "attempts": 0i64,
                    "next_attempt_at": now,
                } },
            )
            .return_document(ReturnDocument::After)
            .await
            .map_err(|e| mongo_err("retry_outbox", &e))?
            .ok_or_else(|| StoreError::NotFound(format!("outbox item {id:?} not found")))?;
        outbox_from_doc(&d)
    }

    async fn outbox_counts_of(&self, tenant: Option<&str>) -> StoreResult<(u64, u64)> {
        let count = |s: OutboxState| {
            let mut filter = doc! { "state": state_str(s) };
            if let Some(t) = tenant {
                filter.insert("tenant", t);
            }
            self.c.outbox.count_documents(filter)
        };
        let (pending, dead) =
            futures::try_join!(async { count(OutboxState::Pending).await }, async {
                count(OutboxState::Dead).await
            })
            .map_err(|e| mongo_err("outbox_counts", &e))?;
        Ok((pending, dead))
    }
}
