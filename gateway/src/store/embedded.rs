//! The embedded store: redb on local disk, zero setup.
//!
//! ## Schema (one redb file)
//! | table | key | value |
//! |---|---|---|
//! | `sessions` | `"<tenant>/<sid>"` | [`SessionRecord`] (JSON): header, metadata, agent summaries, event seq |
//! | `agents` | `(uid, agent_id)` | [`AgentRecord`] (JSON): the client's body and times |
//! | `messages` | `(uid, agent_id, message_id)` | [`Message`] (JSON; `message` kept as raw text) |
//! | `feedbacks` | `(uid, index)` | feedback object (JSON) |
//! | `events` | `("<tenant>/<sid>", seq)` | [`Event`] (JSON) |
//! | `events_by_ts` | `(ts, "<tenant>/<sid>", seq)` | — (index for the event window) |
//! | `hook_queue` | `("<tenant>/<sid>", seq)` | claim lease (Unix ms) of an event whose after-hooks are pending |
//! | `outbox` | notification id | [`OutboxItem`] (JSON) |
//! | `meta` | name | counter (next session uid) |
//!
//! `uid` is a per-incarnation number: deleting a session purges its children
//! in the same transaction and leaves a tombstone that keeps the event sequence,
//! so a re-created session continues its event ids instead of reusing them.
//!
//! ## Write path
//! All writes go to one writer thread that runs every queued job in a single
//! write transaction and commits once (fsync, `Durability::Immediate`): group
//! commit. A job checks everything before it writes, so a job that fails
//! leaves no trace; a storage error aborts the whole batch. A client is
//! answered only after the commit is durable. Reads run on blocking threads
//! against MVCC snapshots and never wait for the writer.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use async_trait::async_trait;
use redb::{
    Database, ReadableTable, ReadableTableMetadata, TableDefinition, TableError, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    AfterHooked, Appended, ListQuery, MetadataResult, OutboxItem, OutboxState, Page, Retention,
    SessionStore, StoreError, StoreResult, SweepReport, message_conflict, message_event_payload,
    message_gap,
};
use crate::metadata::{self, MetadataChange};
use crate::model::{
    Agent, DEFAULT_SESSION_TYPE, Event, EventType, Feedback, JsonObject, Message, MessageInput,
    MessagePatch, MessageRange, NewSession, Session, Tenant, format_ms, now_ms,
};

const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const AGENTS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("agents");
const MESSAGES: TableDefinition<(u64, &str, u64), &[u8]> = TableDefinition::new("messages");
const FEEDBACKS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("feedbacks");
const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
const EVENTS_BY_TS: TableDefinition<(i64, &str, u64), ()> = TableDefinition::new("events_by_ts");
const HOOK_QUEUE: TableDefinition<(&str, u64), i64> = TableDefinition::new("hook_queue");
const OUTBOX: TableDefinition<&str, &[u8]> = TableDefinition::new("outbox");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 512;

/// A session's stored header.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionRecord {
    uid: u64,
    session_id: String,
    session_type: String,
    created_at: i64,
    updated_at: i64,
    metadata: JsonObject,
    /// Last event sequence number used; survives deletion (tombstone).
    seq: u64,
    agents: BTreeMap<String, AgentSummary>,
    feedbacks: u64,
    /// A tombstone: the session was deleted; only `seq` matters.
    #[serde(default)]
    deleted: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct AgentSummary {
    version: u64,
    message_count: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AgentRecord {
    body: JsonObject,
    created_at: i64,
    updated_at: i64,
}

impl SessionRecord {
    fn to_session(&self) -> Session {
        Session {
            session_id: self.session_id.clone(),
            session_type: self.session_type.clone(),
            created_at: format_ms(self.created_at),
            updated_at: format_ms(self.updated_at),
            metadata: self.metadata.clone(),
            agents: self.agents.keys().cloned().collect(),
        }
    }
}

fn skey(t: &Tenant, sid: &str) -> String {
    format!("{}/{}", t.as_str(), sid)
}

fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("embedded store: {e}"))
}

fn to_json<T: Serialize>(v: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(internal)
}

fn from_json<T: for<'de> Deserialize<'de>>(b: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(b).map_err(internal)
}

type Completion = Box<dyn FnOnce(Option<StoreError>) + Send>;
type Job = Box<dyn FnOnce(&WriteTransaction) -> (bool, Completion) + Send>;

/// The embedded, durable store.
pub struct EmbeddedStore {
    db: Arc<Database>,
    retention: std::sync::RwLock<Arc<Retention>>,
    after_hooked: std::sync::atomic::AtomicU8,
    writer: Option<mpsc::Sender<Job>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    /// Bytes of stored messages one `list_messages` call reads at most (it
    /// returns the messages read so far once past it, at least one).
    max_read_bytes: usize,
}

impl Drop for EmbeddedStore {
    /// Closes the writer's queue and waits for it to finish what was queued,
    /// so the database file is released when the store is dropped.
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the database file at `path`, creating its tables,
    /// with a page cache of at most `cache_mb` MiB.
    ///
    /// # Errors
    /// When the file cannot be opened or is not a redb database.
    pub fn open(path: &Path, cache_mb: usize) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| internal(format!("cannot create directory {}: {e}", dir.display())))?;
        }
        let db = Database::builder()
            .set_cache_size(cache_mb.saturating_mul(1 << 20))
            .create(path)
            .map_err(|e| internal(format!("cannot open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(internal)?;
        {
            txn.open_table(SESSIONS).map_err(internal)?;
            txn.open_table(AGENTS).map_err(internal)?;
            txn.open_table(MESSAGES).map_err(internal)?;
            txn.open_table(FEEDBACKS).map_err(internal)?;
            txn.open_table(EVENTS).map_err(internal)?;
            txn.open_table(EVENTS_BY_TS).map_err(internal)?;
            txn.open_table(HOOK_QUEUE).map_err(internal)?;
            txn.open_table(OUTBOX).map_err(internal)?;
            txn.open_table(META).map_err(internal)?;
            // The file is locked to this process, so a claim lease found here
            // belongs to a process that died: release it now rather than wait
            // for it to expire.
            let mut queue = txn.open_table(HOOK_QUEUE).map_err(internal)?;
            let leased: Vec<(String, u64)> = queue
                .iter()
                .map_err(internal)?
                .filter_map(Result::ok)
                .filter(|(_, lease)| lease.value() != 0)
                .map(|(k, _)| {
                    let (key, seq) = k.value();
                    (key.to_owned(), seq)
                })
                .collect();
            for (key, seq) in leased {
                queue.insert((key.as_str(), seq), 0i64).map_err(internal)?;
            }
        }
        txn.commit().map_err(internal)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Job>();
        let wdb = db.clone();
        let thread = std::thread::Builder::new()
            .name("embedded-writer".into())
            .spawn(move || writer_loop(&wdb, &rx))
            .map_err(internal)?;
        Ok(Self {
            db,
            retention: std::sync::RwLock::new(Arc::new(Retention::default())),
            after_hooked: std::sync::atomic::AtomicU8::new(0),
            writer: Some(tx),
            writer_thread: Some(thread),
            max_read_bytes: Self::DEFAULT_MAX_READ_BYTES,
        })
    }

    /// Default of [`EmbeddedStore::with_max_read_bytes`] (8 MiB, the default
    /// `server.max_response_bytes`).
    pub const DEFAULT_MAX_READ_BYTES: usize = 8 << 20;

    /// Bounds what one `list_messages` call reads: once the stored messages
    /// read add up to `bytes`, it returns those (a prefix of the range asked
    /// for, at least one message); the caller continues from the next id.
    #[must_use]
    pub fn with_max_read_bytes(mut self, bytes: usize) -> Self {
        self.max_read_bytes = bytes.max(1);
        self
    }

    fn after_hooked(&self) -> AfterHooked {
        AfterHooked(self.after_hooked.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn retention(&self) -> Arc<Retention> {
        self.retention.read().expect("retention lock").clone()
    }

    /// Runs `f` in the next group-committed write transaction and answers once
    /// the commit is durable. `f` must not write anything before it returns an
    /// error of its own; a `StoreError::Internal` aborts the whole batch.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    {
        let (otx, orx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |txn| {
            let res = f(txn);
            let taints = matches!(res, Err(StoreError::Internal(_)));
            let done: Completion = Box::new(move |commit_err| {
                let _ = otx.send(match commit_err {
                    Some(e) if res.is_ok() || !taints => Err(e),
                    _ => res,
                });
            });
            (taints, done)
        });
        self.writer
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("embedded store is closing".into()))?
            .send(job)
            .map_err(|_| StoreError::Unavailable("embedded writer stopped".into()))?;
        orx.await
            .map_err(|_| StoreError::Internal("embedded writer dropped a job".into()))?
    }

    /// Runs a read against a snapshot on a blocking thread.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&redb::ReadTransaction) -> StoreResult<T> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(internal)?;
            f(&txn)
        })
        .await
        .map_err(internal)?
    }

    /// Runs a point read (a key or two, bounded work) on the calling thread.
    /// The hop to the blocking pool that [`Self::read`] makes costs more
    /// (tens of µs on a small machine) than such a read, which the page cache
    /// serves; scans and anything sized by the caller go through `read`.
    fn read_now<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let txn = self.db.begin_read().map_err(internal)?;
        f(&txn)
    }
}

fn writer_loop(db: &Database, rx: &mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let txn = match db.begin_write() {
            Ok(t) => t,
            Err(e) => {
                // Dropping the jobs unanswered makes each caller see an error.
                tracing::error!(error = %e, jobs = jobs.len(), "cannot begin write transaction");
                continue;
            }
        };
        let mut tainted = false;
        let mut done = Vec::with_capacity(jobs.len());
        for job in jobs {
            let (taints, completion) = job(&txn);
            tainted |= taints;
            done.push(completion);
        }
        let outcome = if tainted {
            let _ = txn.abort();
            Some(StoreError::Internal(
                "write batch aborted by a storage error".into(),
            ))
        } else {
            txn.commit().err().map(internal)
        };
        for d in done {
            d(outcome.clone());
        }
    }
}

// ---- transaction helpers (used inside write jobs) ----

fn load_session(txn: &WriteTransaction, key: &str) -> StoreResult<Option<SessionRecord>> {
    let table = txn.open_table(SESSIONS).map_err(internal)?;
    let got = table.get(key).map_err(internal)?;
    got.map(|v| from_json::<SessionRecord>(v.value()))
        .transpose()
}

fn live_session(
    txn: &WriteTransaction,
    key: &str,
    sid: &str,
    ret: &Retention,
) -> StoreResult<SessionRecord> {
    match load_session(txn, key)? {
        Some(r) if !r.deleted && !ret.session_expired(&r.session_type, r.updated_at, now_ms()) => {
            Ok(r)
        }
        _ => Err(StoreError::session_not_found(sid)),
    }
}

fn save_session(txn: &WriteTransaction, key: &str, rec: &SessionRecord) -> StoreResult<()> {
    let mut table = txn.open_table(SESSIONS).map_err(internal)?;
    table
        .insert(key, to_json(rec)?.as_slice())
        .map_err(internal)?;
    Ok(())
}

/// Bumps the session's sequence, stamps `updated_at`, records the event (and
/// queues it for after-hooks when hooked), and saves the header.
#[allow(clippy::too_many_arguments)]
fn record_event(
    txn: &WriteTransaction,
    hooked: AfterHooked,
    t: &Tenant,
    key: &str,
    rec: &mut SessionRecord,
    kind: EventType,
    now: i64,
    payload: Value,
) -> StoreResult<u64> {
    rec.seq += 1;
    rec.updated_at = now;
    let ev = Event {
        tenant: t.as_str().to_owned(),
        session_id: rec.session_id.clone(),
        session_type: rec.session_type.clone(),
        seq: rec.seq,
        kind,
        ts: now,
        payload,
    };
    txn.open_table(EVENTS)
        .map_err(internal)?
        .insert((key, rec.seq), to_json(&ev)?.as_slice())
        .map_err(internal)?;
    txn.open_table(EVENTS_BY_TS)
        .map_err(internal)?
        .insert((now, key, rec.seq), ())
        .map_err(internal)?;
    if hooked.contains(kind) {
        txn.open_table(HOOK_QUEUE)
            .map_err(internal)?
            .insert((key, rec.seq), 0i64)
            .map_err(internal)?;
    }
    save_session(txn, key, rec)?;
    Ok(rec.seq)
}

fn next_uid(txn: &WriteTransaction) -> StoreResult<u64> {
    let mut meta = txn.open_table(META).map_err(internal)?;
    let uid = meta
        .get("next_uid")
        .map_err(internal)?
        .map_or(1, |v| v.value());
    meta.insert("next_uid", uid + 1).map_err(internal)?;
    Ok(uid)
}

fn read_message_w(
    txn: &WriteTransaction,
    uid: u64,
    aid: &str,
    mid: u64,
) -> StoreResult<Option<Message>> {
    let table = txn.open_table(MESSAGES).map_err(internal)?;
    let got = table.get((uid, aid, mid)).map_err(internal)?;
    got.map(|v| from_json::<Message>(v.value())).transpose()
}

fn purge_children(txn: &WriteTransaction, uid: u64) -> StoreResult<()> {
    let mut agents = txn.open_table(AGENTS).map_err(internal)?;
    agents
        .retain_in((uid, "")..(uid + 1, ""), |_, _| false)
        .map_err(internal)?;
    let mut messages = txn.open_table(MESSAGES).map_err(internal)?;
    messages
        .retain_in((uid, "", 0)..(uid + 1, "", 0), |_, _| false)
        .map_err(internal)?;
    let mut feedbacks = txn.open_table(FEEDBACKS).map_err(internal)?;
    feedbacks
        .retain_in((uid, 0)..(uid + 1, 0), |_, _| false)
        .map_err(internal)?;
    Ok(())
}

// ---- read helpers ----

/// A live session: not a tombstone and not past its retention.
fn read_session(
    txn: &redb::ReadTransaction,
    key: &str,
    ret: &Retention,
) -> StoreResult<Option<SessionRecord>> {
    let table = open_read(txn, SESSIONS)?;
    let got = table.get(key).map_err(internal)?;
    match got
        .map(|v| from_json::<SessionRecord>(v.value()))
        .transpose()?
    {
        Some(r) if !r.deleted && !ret.session_expired(&r.session_type, r.updated_at, now_ms()) => {
            Ok(Some(r))
        }
        _ => Ok(None),
    }
}

fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    def: TableDefinition<K, V>,
) -> StoreResult<redb::ReadOnlyTable<K, V>> {
    txn.open_table(def).map_err(|e: TableError| internal(e))
}

fn read_agent(
    txn: &redb::ReadTransaction,
    rec: &SessionRecord,
    aid: &str,
) -> StoreResult<Option<Agent>> {
    let Some(summary) = rec.agents.get(aid) else {
        return Ok(None);
    };
    let table = open_read(txn, AGENTS)?;
    let got = table.get((rec.uid, aid)).map_err(internal)?;
    let Some(v) = got else { return Ok(None) };
    let a: AgentRecord = from_json(v.value())?;
    Ok(Some(Agent {
        agent_id: aid.to_owned(),
        body: a.body,
        created_at: a.created_at,
        updated_at: a.updated_at,
        version: summary.version,
        message_count: summary.message_count,
    }))
}

fn matches_query(rec: &SessionRecord, q: &ListQuery) -> bool {
    q.updated_after.is_none_or(|t| rec.updated_at > t)
        && q.session_type
            .as_ref()
            .is_none_or(|ty| &rec.session_type == ty)
        && q.metadata
            .iter()
            .all(|(p, v)| metadata::get_path(&rec.metadata, p) == Some(v))
}

#[async_trait]
impl SessionStore for EmbeddedStore {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|txn| {
            open_read(txn, META)?;
            Ok(())
        })
        .await
    }

    async fn create_session(&self, t: &Tenant, new: NewSession) -> StoreResult<Session> {
        let hooked = self.after_hooked();
        let sid = new
            .session_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let t = t.clone();
        self.write(move |txn| {
            let key = skey(&t, &sid);
            let prior_seq = match load_session(txn, &key)? {
                Some(r) if !r.deleted => {
                    return Err(StoreError::Conflict {
                        code: "session_exists",
                        message: format!("session {sid:?} already exists"),
                    });
                }
                Some(r) => r.seq,
                None => 0,
            };
            let now = now_ms();
            let mut rec = SessionRecord {
                uid: next_uid(txn)?,
                session_id: sid.clone(),
                session_type: new
                    .session_type
                    .unwrap_or_else(|| DEFAULT_SESSION_TYPE.to_owned()),
                created_at: now,
                updated_at: now,
                metadata: new.metadata.unwrap_or_default(),
                seq: prior_seq,
                agents: BTreeMap::new(),
                feedbacks: 0,
                deleted: false,
            };
            let payload = serde_json::json!({
                "session_type": rec.session_type,
                "metadata": rec.metadata,
            });
            record_event(
                txn,
                hooked,
                &t,
                &key,
                &mut rec,
                EventType::SessionCreated,
                now,
                payload,
            )?;
            Ok(rec.to_session())
        })
        .await
    }

    async fn get_session(&self, t: &Tenant, sid: &str) -> StoreResult<Session> {
        let ret = self.retention();
        let key = skey(t, sid);
        self.read_now(|txn| {
            read_session(txn, &key, &ret)?
                .map(|r| r.to_session())
                .ok_or_else(|| StoreError::session_not_found(sid))
        })
    }

    async fn batch_get_sessions(&self, t: &Tenant, ids: &[String]) -> StoreResult<Vec<Session>> {
        let ret = self.retention();
        let keys: Vec<String> = ids.iter().map(|id| skey(t, id)).collect();
        self.read(move |txn| {
            let mut out = Vec::new();
            for k in &keys {
                if let Some(r) = read_session(txn, k, &ret)? {
                    out.push(r.to_session());
                }
            }
            Ok(out)
        })
        .await
    }

    async fn list_sessions(&self, t: &Tenant, q: &ListQuery) -> StoreResult<Page> {
        let ret = self.retention();
        let prefix = format!("{}/", t.as_str());
        let end = format!("{}0", t.as_str()); // '0' sorts right after '/'
        let start = q
            .after
            .as_ref()
            .map_or_else(|| prefix.clone(), |a| format!("{prefix}{a}"));
        let q = q.clone();
        self.read(move |txn| {
            let table = open_read(txn, SESSIONS)?;
            let mut out = Vec::new();
            let mut more = false;
            for row in table
                .range(start.as_str()..end.as_str())
                .map_err(internal)?
            {
                let (k, v) = row.map_err(internal)?;
                if q.after.is_some() && k.value() == start {
                    continue;
                }
                let rec: SessionRecord = from_json(v.value())?;
                if rec.deleted
                    || ret.session_expired(&rec.session_type, rec.updated_at, now_ms())
                    || !matches_query(&rec, &q)
                {
                    continue;
                }
                if out.len() == q.limit {
                    more = true;
                    break;
                }
                out.push(rec.to_session());
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
        })
        .await
    }

    async fn delete_session(&self, t: &Tenant, sid: &str) -> StoreResult<()> {
        let hooked = self.after_hooked();
        let ret = self.retention();
        let t = t.clone();
        let sid = sid.to_owned();
        self.write(move |txn| {
            let key = skey(&t, &sid);
            let mut rec = live_session(txn, &key, &sid, &ret)?;
            purge_children(txn, rec.uid)?;
            rec.deleted = true;
            rec.metadata = JsonObject::new();
            rec.agents.clear();
            record_event(
                txn,
                hooked,
                &t,
                &key,
                &mut rec,
                EventType::SessionDeleted,
                now_ms(),
                Value::Object(JsonObject::new()),
            )?;
            Ok(())
        })
        .await
    }

    async fn put_agent(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        body: JsonObject,
        if_match: Option<u64>,
    ) -> StoreResult<(Agent, bool)> {
        let hooked = self.after_hooked();
        let ret = self.retention();
        let t = t.clone();
        let (sid, aid) = (sid.to_owned(), aid.to_owned());
        self.write(move |txn| {
            let key = skey(&t, &sid);
            let mut rec = live_session(txn, &key, &sid, &ret)?;
            let prior = rec.agents.get(&aid).copied();
            if let Some(expected) = if_match {
                let current = prior.map_or(0, |p| p.version);
                if current != expected {
                    return Err(StoreError::VersionMismatch { expected, current });
                }
            }
            let now = now_ms();
            let mut agents = txn.open_table(AGENTS).map_err(internal)?;
            let created_at = match agents.get((rec.uid, aid.as_str())).map_err(internal)? {
                Some(v) => from_json::<AgentRecord>(v.value())?.created_at,
                None => now,
            };
            let summary = AgentSummary {
                version: prior.map_or(1, |p| p.version + 1),
                message_count: prior.map_or(0, |p| p.message_count),
            };
            let stored = AgentRecord {
                body,
                created_at,
                updated_at: now,
            };
            agents
                .insert((rec.uid, aid.as_str()), to_json(&stored)?.as_slice())
                .map_err(internal)?;
            drop(agents);
            rec.agents.insert(aid.clone(), summary);
            let payload = serde_json::json!({
                "agent_id": aid, "version": summary.version, "created": prior.is_none(),
            });
            record_event(
                txn,
                hooked,
                &t,
                &key,
                &mut rec,
                EventType::AgentUpdated,
                now,
                payload,
            )?;
            Ok((
                Agent {
                    agent_id: aid,
                    body: stored.body,
                    created_at,
                    updated_at: now,
                    version: summary.version,
                    message_count: summary.message_count,
                },
                prior.is_none(),
            ))
        })
        .await
    }

    async fn get_agent(&self, t: &Tenant, sid: &str, aid: &str) -> StoreResult<Agent> {
        let ret = self.retention();
        let key = skey(t, sid);
        self.read_now(|txn| {
            let rec =
                read_session(txn, &key, &ret)?.ok_or_else(|| StoreError::session_not_found(sid))?;
            read_agent(txn, &rec, aid)?.ok_or_else(|| StoreError::agent_not_found(sid, aid))
        })
    }

    async fn list_agents(&self, t: &Tenant, sid: &str) -> StoreResult<Vec<Agent>> {
        let ret = self.retention();
        let key = skey(t, sid);
        let sid = sid.to_owned();
        self.read(move |txn| {
            let rec = read_session(txn, &key, &ret)?
                .ok_or_else(|| StoreError::session_not_found(&sid))?;
            let mut out = Vec::with_capacity(rec.agents.len());
            for aid in rec.agents.keys() {
                if let Some(a) = read_agent(txn, &rec, aid)? {
                    out.push(a);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn append_message(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        input: MessageInput,
    ) -> StoreResult<Appended> {
        let hooked = self.after_hooked();
        let ret = self.retention();
        let t = t.clone();
        let (sid, aid) = (sid.to_owned(), aid.to_owned());
        self.write(move |txn| {
            let key = skey(&t, &sid);
            let mut rec = live_session(txn, &key, &sid, &ret)?;
            let Some(mut summary) = rec.agents.get(&aid).copied() else {
                return Err(StoreError::agent_not_found(&sid, &aid));
            };
            let next = summary.message_count;
            match input.message_id {
                Some(mid) if mid < next => {
                    let stored = read_message_w(txn, rec.uid, &aid, mid)?
                        .ok_or_else(|| internal(format!("message {mid} missing below count")))?;
                    return if input.same_content(&stored) {
                        Ok(Appended::Existing(stored))
                    } else {
                        Err(message_conflict(mid))
                    };
                }
                Some(mid) if mid > next => return Err(message_gap(mid, next)),
                _ => {}
            }
            let now = now_ms();
            let msg = Message {
                message_id: next,
                message: input.message,
                redact_message: input.redact_message.filter(|r| r.get().trim() != "null"),
                event_loop_metrics: input.event_loop_metrics.filter(|v| !v.is_null()),
                created_at: format_ms(now),
                updated_at: format_ms(now),
            };
            txn.open_table(MESSAGES)
                .map_err(internal)?
                .insert((rec.uid, aid.as_str(), next), to_json(&msg)?.as_slice())
                .map_err(internal)?;
            summary.message_count += 1;
            rec.agents.insert(aid.clone(), summary);
            let payload = message_event_payload(&aid, &msg);
            record_event(
                txn,
                hooked,
                &t,
                &key,
                &mut rec,
                EventType::MessageAppended,
                now,
                payload,
            )?;
            Ok(Appended::Created(msg))
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
        let ret = self.retention();
        let max_read = self.max_read_bytes;
        let key = skey(t, sid);
        let (sid, aid) = (sid.to_owned(), aid.to_owned());
        self.read(move |txn| {
            let rec = read_session(txn, &key, &ret)?
                .ok_or_else(|| StoreError::session_not_found(&sid))?;
            let total = rec
                .agents
                .get(&aid)
                .ok_or_else(|| StoreError::agent_not_found(&sid, &aid))?
                .message_count;
            let (from, to) = super::message_bounds(range, total);
            let table = open_read(txn, MESSAGES)?;
            let mut out = Vec::with_capacity(((to - from) as usize).min(1024));
            let mut bytes = 0usize;
            for row in table
                .range((rec.uid, aid.as_str(), from)..(rec.uid, aid.as_str(), to))
                .map_err(internal)?
            {
                let (_, v) = row.map_err(internal)?;
                let raw = v.value();
                if !out.is_empty() && bytes.saturating_add(raw.len()) > max_read {
                    break;
                }
                bytes = bytes.saturating_add(raw.len());
                out.push(from_json::<Message>(raw)?);
            }
            Ok((out, total))
        })
        .await
    }

    async fn get_message(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        mid: u64,
    ) -> StoreResult<Message> {
        let ret = self.retention();
        let key = skey(t, sid);
        let (sid, aid) = (sid.to_owned(), aid.to_owned());
        self.read(move |txn| {
            let rec = read_session(txn, &key, &ret)?
                .ok_or_else(|| StoreError::session_not_found(&sid))?;
            if !rec.agents.contains_key(&aid) {
                return Err(StoreError::agent_not_found(&sid, &aid));
            }
            let table = open_read(txn, MESSAGES)?;
            let got = table.get((rec.uid, aid.as_str(), mid)).map_err(internal)?;
            got.map(|v| from_json::<Message>(v.value()))
                .transpose()?
                .ok_or_else(|| StoreError::message_not_found(&aid, mid))
        })
        .await
    }

    async fn update_message(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        mid: u64,
        patch: MessagePatch,
    ) -> StoreResult<Message> {
        let hooked = self.after_hooked();
        let ret = self.retention();
        let t = t.clone();
        let (sid, aid) = (sid.to_owned(), aid.to_owned());
        self.write(move |txn| {
            let key = skey(&t, &sid);
            let mut rec = live_session(txn, &key, &sid, &ret)?;
            if !rec.agents.contains_key(&aid) {
                return Err(StoreError::agent_not_found(&sid, &aid));
            }
            let mut msg = read_message_w(txn, rec.uid, &aid, mid)?
                .ok_or_else(|| StoreError::message_not_found(&aid, mid))?;
            let now = now_ms();
            patch.apply(&mut msg, now);
            txn.open_table(MESSAGES)
                .map_err(internal)?
                .insert((rec.uid, aid.as_str(), mid), to_json(&msg)?.as_slice())
                .map_err(internal)?;
            let payload = message_event_payload(&aid, &msg);
            record_event(
                txn,
                hooked,
                &t,
                &key,
                &mut rec,
                EventType::MessageUpdated,
                now,
                payload,
            )?;
            Ok(msg)
        })
        .await
    }

    async fn get_metadata(&self, t: &Tenant, sid: &str) -> StoreResult<JsonObject> {
        let ret = self.retention();
        let key = skey(t, sid);
        self.read_now(|txn| {
            read_session(txn, &key, &ret)?
                .map(|r| r.metadata)
                .ok_or_else(|| StoreError::session_not_found(sid))
        })
    }

    async fn change_metadata(
        &self,
        t: &Tenant,
        sid: &str,
        change: &MetadataChange,
    ) -> StoreResult<MetadataResult> {
        let hooked = self.after_hooked();
        let ret = self.retention();
        let t = t.clone();
        let sid = sid.to_owned();
        let change = change.clone();
        self.write(move |txn| {
            let key = skey(&t, &sid);
            let mut rec = live_session(txn, &key, &sid, &ret)?;
            let applied =
                metadata::apply(&rec.metadata, &change).map_err(|message| StoreError::Invalid {
                    code: "metadata_path_conflict",
                    message,
                })?;
            let payload = metadata::event_payload(&change, &applied);
            rec.metadata = applied.metadata.clone();
            let kind = super::metadata_event_type(&change);
            let seq = record_event(txn, hooked, &t, &key, &mut rec, kind, now_ms(), payload)?;
            Ok(MetadataResult {
                metadata: applied.metadata,
                changed: applied.changed,
                seq,
            })
        })
        .await
    }

    async fn add_feedback(&self, t: &Tenant, sid: &str, body: JsonObject) -> StoreResult<Feedback> {
        let hooked = self.after_hooked();
        let ret = self.retention();
        let t = t.clone();
        let sid = sid.to_owned();
        self.write(move |txn| {
            let key = skey(&t, &sid);
            let mut rec = live_session(txn, &key, &sid, &ret)?;
            let now = now_ms();
            let mut body = body;
            body.insert("created_at".into(), format_ms(now).into());
            txn.open_table(FEEDBACKS)
                .map_err(internal)?
                .insert((rec.uid, rec.feedbacks), to_json(&body)?.as_slice())
                .map_err(internal)?;
            rec.feedbacks += 1;
            let payload = serde_json::json!({ "feedback": body });
            record_event(
                txn,
                hooked,
                &t,
                &key,
                &mut rec,
                EventType::FeedbackAdded,
                now,
                payload,
            )?;
            Ok(Feedback { body })
        })
        .await
    }

    async fn list_feedbacks(&self, t: &Tenant, sid: &str) -> StoreResult<Vec<Feedback>> {
        let ret = self.retention();
        let key = skey(t, sid);
        let sid = sid.to_owned();
        self.read(move |txn| {
            let rec = read_session(txn, &key, &ret)?
                .ok_or_else(|| StoreError::session_not_found(&sid))?;
            let table = open_read(txn, FEEDBACKS)?;
            let mut out = Vec::new();
            for row in table
                .range((rec.uid, 0)..(rec.uid + 1, 0))
                .map_err(internal)?
            {
                let (_, v) = row.map_err(internal)?;
                out.push(Feedback {
                    body: from_json(v.value())?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn events_after(
        &self,
        t: &Tenant,
        sid: &str,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<Event>> {
        let key = skey(t, sid);
        self.read(move |txn| {
            let table = open_read(txn, EVENTS)?;
            let mut out = Vec::new();
            for row in table
                .range((key.as_str(), after.saturating_add(1))..=(key.as_str(), u64::MAX))
                .map_err(internal)?
                .take(limit)
            {
                let (_, v) = row.map_err(internal)?;
                out.push(from_json::<Event>(v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn latest_event_seq(&self, t: &Tenant, sid: &str) -> StoreResult<u64> {
        let key = skey(t, sid);
        self.read_now(|txn| {
            let table = open_read(txn, SESSIONS)?;
            let got = table.get(key.as_str()).map_err(internal)?;
            Ok(got
                .map(|v| from_json::<SessionRecord>(v.value()))
                .transpose()?
                .map_or(0, |r| r.seq))
        })
    }

    /// One process owns the redb file (it is locked), so nobody else writes.
    fn is_shared(&self) -> bool {
        false
    }

    async fn events_since(&self, since: i64, limit: usize) -> StoreResult<Vec<Event>> {
        self.read(move |txn| {
            let index = open_read(txn, EVENTS_BY_TS)?;
            let events = open_read(txn, EVENTS)?;
            let mut out = Vec::new();
            for row in index.range((since, "", 0)..).map_err(internal)?.take(limit) {
                let (k, _) = row.map_err(internal)?;
                let (_, key, seq) = k.value();
                if let Some(v) = events.get((key, seq)).map_err(internal)? {
                    out.push(from_json::<Event>(v.value())?);
                }
            }
            Ok(out)
        })
        .await
    }

    fn set_after_hooked(&self, kinds: AfterHooked) {
        self.after_hooked
            .store(kinds.0, std::sync::atomic::Ordering::Relaxed);
    }

    fn set_retention(&self, retention: Retention) {
        *self.retention.write().expect("retention lock") = Arc::new(retention);
    }

    async fn sweep_expired(&self, now: i64, limit: usize) -> StoreResult<SweepReport> {
        let hooked = self.after_hooked();
        let ret = self.retention();
        self.write(move |txn| {
            let mut report = SweepReport::default();
            // Expired sessions: deleted like DELETE would, with an event.
            let mut expired = Vec::new();
            let mut stale_tombstones = Vec::new();
            {
                let table = txn.open_table(SESSIONS).map_err(internal)?;
                for row in table.iter().map_err(internal)? {
                    let (k, v) = row.map_err(internal)?;
                    let rec: SessionRecord = from_json(v.value())?;
                    if rec.deleted {
                        // Once its events are gone, a tombstone has nothing to keep.
                        if ret.events_ms.is_some_and(|w| rec.updated_at + w <= now) {
                            stale_tombstones.push(k.value().to_owned());
                        }
                    } else if ret.session_expired(&rec.session_type, rec.updated_at, now) {
                        expired.push((k.value().to_owned(), rec));
                    }
                    if expired.len() >= limit {
                        break;
                    }
                }
            }
            for (key, mut rec) in expired {
                let tenant = Tenant(key.split_once('/').map_or("", |(t, _)| t).to_owned());
                purge_children(txn, rec.uid)?;
                rec.deleted = true;
                rec.metadata = JsonObject::new();
                rec.agents.clear();
                let payload = serde_json::json!({ "reason": "expired" });
                record_event(
                    txn,
                    hooked,
                    &tenant,
                    &key,
                    &mut rec,
                    EventType::SessionDeleted,
                    now,
                    payload,
                )?;
                report.sessions += 1;
            }
            {
                let mut table = txn.open_table(SESSIONS).map_err(internal)?;
                for key in &stale_tombstones {
                    table.remove(key.as_str()).map_err(internal)?;
                }
            }
            // Events past the window.
            if let Some(window) = ret.events_ms {
                let cutoff = now - window;
                let mut old = Vec::new();
                {
                    let index = txn.open_table(EVENTS_BY_TS).map_err(internal)?;
                    for row in index
                        .range(..(cutoff, "", 0))
                        .map_err(internal)?
                        .take(limit * 10)
                    {
                        let (k, _) = row.map_err(internal)?;
                        let (ts, key, seq) = k.value();
                        old.push((ts, key.to_owned(), seq));
                    }
                }
                let mut index = txn.open_table(EVENTS_BY_TS).map_err(internal)?;
                let mut events = txn.open_table(EVENTS).map_err(internal)?;
                let mut queue = txn.open_table(HOOK_QUEUE).map_err(internal)?;
                for (ts, key, seq) in &old {
                    index.remove((*ts, key.as_str(), *seq)).map_err(internal)?;
                    events.remove((key.as_str(), *seq)).map_err(internal)?;
                    queue.remove((key.as_str(), *seq)).map_err(internal)?;
                }
                report.events = old.len() as u64;
            }
            Ok(report)
        })
        .await
    }

    async fn claim_pending_events(
        &self,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<Event>> {
        self.write(move |txn| {
            let mut queue = txn.open_table(HOOK_QUEUE).map_err(internal)?;
            let mut claimed: Vec<(String, u64)> = Vec::new();
            for row in queue.iter().map_err(internal)? {
                let (k, lease) = row.map_err(internal)?;
                if lease.value() <= now {
                    let (key, seq) = k.value();
                    claimed.push((key.to_owned(), seq));
                    if claimed.len() == limit {
                        break;
                    }
                }
            }
            let events = txn.open_table(EVENTS).map_err(internal)?;
            let mut out = Vec::with_capacity(claimed.len());
            for (key, seq) in &claimed {
                queue
                    .insert((key.as_str(), *seq), now + lease_ms)
                    .map_err(internal)?;
                if let Some(v) = events.get((key.as_str(), *seq)).map_err(internal)? {
                    out.push(from_json::<Event>(v.value())?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn complete_event(
        &self,
        tenant: &str,
        session_id: &str,
        seq: u64,
        outbox: Vec<OutboxItem>,
    ) -> StoreResult<()> {
        let key = format!("{tenant}/{session_id}");
        self.write(move |txn| {
            let mut table = txn.open_table(OUTBOX).map_err(internal)?;
            for item in &outbox {
                if table.get(item.id.as_str()).map_err(internal)?.is_none() {
                    table
                        .insert(item.id.as_str(), to_json(item)?.as_slice())
                        .map_err(internal)?;
                }
            }
            txn.open_table(HOOK_QUEUE)
                .map_err(internal)?
                .remove((key.as_str(), seq))
                .map_err(internal)?;
            Ok(())
        })
        .await
    }

    async fn claim_outbox(
        &self,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<OutboxItem>> {
        self.write(move |txn| {
            let mut table = txn.open_table(OUTBOX).map_err(internal)?;
            let mut due = Vec::new();
            for row in table.iter().map_err(internal)? {
                let (_, v) = row.map_err(internal)?;
                let item: OutboxItem = from_json(v.value())?;
                if item.state == OutboxState::Pending && item.next_attempt_at <= now {
                    due.push(item);
                }
            }
            due.sort_by_key(|i| (i.next_attempt_at, i.created_at));
            due.truncate(limit);
            for item in &mut due {
                let mut leased = item.clone();
                leased.next_attempt_at = now + lease_ms;
                table
                    .insert(item.id.as_str(), to_json(&leased)?.as_slice())
                    .map_err(internal)?;
            }
            Ok(due)
        })
        .await
    }

    async fn outbox_delivered(&self, id: &str) -> StoreResult<()> {
        let id = id.to_owned();
        self.write(move |txn| {
            txn.open_table(OUTBOX)
                .map_err(internal)?
                .remove(id.as_str())
                .map_err(internal)?;
            Ok(())
        })
        .await
    }

    async fn outbox_failed(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_at: i64,
        error: &str,
        dead: bool,
    ) -> StoreResult<()> {
        let id = id.to_owned();
        let error = error.to_owned();
        self.write(move |txn| {
            let mut table = txn.open_table(OUTBOX).map_err(internal)?;
            let Some(mut item) = table
                .get(id.as_str())
                .map_err(internal)?
                .map(|v| from_json::<OutboxItem>(v.value()))
                .transpose()?
            else {
                return Ok(());
            };
            item.attempts = attempts;
            item.next_attempt_at = next_attempt_at;
            item.last_error = Some(error);
            if dead {
                item.state = OutboxState::Dead;
            }
            table
                .insert(id.as_str(), to_json(&item)?.as_slice())
                .map_err(internal)?;
            Ok(())
        })
        .await
    }

    async fn list_outbox_of(
        &self,
        tenant: Option<&str>,
        state: Option<OutboxState>,
        limit: usize,
    ) -> StoreResult<Vec<OutboxItem>> {
        let tenant = tenant.map(str::to_owned);
        self.read(move |txn| {
            let table = open_read(txn, OUTBOX)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(internal)? {
                let (_, v) = row.map_err(internal)?;
                let item: OutboxItem = from_json(v.value())?;
                if state.is_none_or(|s| s == item.state)
                    && tenant.as_ref().is_none_or(|t| *t == item.tenant)
                {
                    out.push(item);
                }
            }
            out.sort_by_key(|i| i.created_at);
            out.truncate(limit);
            Ok(out)
        })
        .await
    }

    async fn retry_outbox_of(
        &self,
        tenant: Option<&str>,
        id: &str,
        now: i64,
    ) -> StoreResult<OutboxItem> {
        let id = id.to_owned();
        let tenant = tenant.map(str::to_owned);
        self.write(move |txn| {
            let mut table = txn.open_table(OUTBOX).map_err(internal)?;
            let mut item = table
                .get(id.as_str())
                .map_err(internal)?
                .map(|v| from_json::<OutboxItem>(v.value()))
                .transpose()?
                .filter(|i: &OutboxItem| tenant.as_ref().is_none_or(|t| *t == i.tenant))
                .ok_or_else(|| StoreError::NotFound(format!("outbox item {id:?} not found")))?;
            item.state = OutboxState::Pending;
            item.attempts = 0;
            item.next_attempt_at = now;
            table
                .insert(id.as_str(), to_json(&item)?.as_slice())
                .map_err(internal)?;
            Ok(item)
        })
        .await
    }

    async fn outbox_counts_of(&self, tenant: Option<&str>) -> StoreResult<(u64, u64)> {
        let tenant = tenant.map(str::to_owned);
        self.read(move |txn| {
            let table = open_read(txn, OUTBOX)?;
            let (mut pending, mut dead) = (0, 0);
            if table.len().map_err(internal)? == 0 {
                return Ok((0, 0));
            }
            for row in table.iter().map_err(internal)? {
                let (_, v) = row.map_err(internal)?;
                let item = from_json::<OutboxItem>(v.value())?;
                if tenant.as_ref().is_some_and(|t| *t != item.tenant) {
                    continue;
                }
                match item.state {
                    OutboxState::Pending => pending += 1,
                    OutboxState::Dead => dead += 1,
                }
            }
            Ok((pending, dead))
        })
        .await
    }
}
