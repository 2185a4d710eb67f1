//! The tables, the records stored in them, and the helpers that read and
//! write them inside a transaction.

use std::collections::BTreeMap;

use redb::{ReadableTable, TableDefinition, TableError, WriteTransaction};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::metadata;
use crate::model::{
    Agent, Event, EventType, JsonObject, Message, Session, Tenant, format_ms, now_ms,
};
use crate::store::{AfterHooked, ListQuery, Retention, StoreError, StoreResult};

pub(super) const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
pub(super) const AGENTS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("agents");
pub(super) const MESSAGES: TableDefinition<(u64, &str, u64), &[u8]> =
    TableDefinition::new("messages");
pub(super) const FEEDBACKS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("feedbacks");
pub(super) const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
pub(super) const EVENTS_BY_TS: TableDefinition<(i64, &str, u64), ()> =
    TableDefinition::new("events_by_ts");
/// Where files written before [`HOOK_PENDING`] queued after-hook events,
/// by session. Moved into `HOOK_PENDING` on open (`events::migrate_hook_queue`)
/// and written by nothing else.
pub(super) const HOOK_QUEUE: TableDefinition<(&str, u64), i64> = TableDefinition::new("hook_queue");
/// Events whose after-hooks have not completed, by
/// `(ts, "<tenant>/<sid>", seq)`: the order claims take them in, oldest
/// first, as the store contract says. The value is the claim lease (Unix ms;
/// 0 when unclaimed). Ordered by time, a hooked write appends to it, and a
/// backlog is served in order rather than by session id (which would starve
/// the sessions that sort last).
pub(super) const HOOK_PENDING: TableDefinition<(i64, &str, u64), i64> =
    TableDefinition::new("hook_pending");
pub(super) const OUTBOX: TableDefinition<&str, &[u8]> = TableDefinition::new("outbox");
/// The pending outbox items by `(next_attempt_at, id)`: what a claim reads
/// instead of scanning (and decoding) the whole outbox, which grows while a
/// target is down. Kept in step with [`OUTBOX`] by every write to it
/// (`outbox::put_item`, `outbox_delivered`); built from it on open
/// (`outbox::index_outbox`).
pub(super) const OUTBOX_DUE: TableDefinition<(i64, &str), ()> = TableDefinition::new("outbox_due");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// A session's stored header.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SessionRecord {
    pub(super) uid: u64,
    pub(super) session_id: String,
    pub(super) session_type: String,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
    pub(super) metadata: JsonObject,
    /// Last event sequence number used; survives deletion (tombstone).
    pub(super) seq: u64,
    pub(super) agents: BTreeMap<String, AgentSummary>,
    pub(super) feedbacks: u64,
    /// A tombstone: the session was deleted; only `seq` matters.
    #[serde(default)]
    pub(super) deleted: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct AgentSummary {
    pub(super) version: u64,
    pub(super) message_count: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct AgentRecord {
    pub(super) body: JsonObject,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
}

impl SessionRecord {
    /// Not a tombstone and not past its retention at `now`.
    pub(super) fn is_live(&self, ret: &Retention, now: i64) -> bool {
        !self.deleted && !ret.session_expired(&self.session_type, self.updated_at, now)
    }

    pub(super) fn to_session(&self) -> Session {
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

pub(super) fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("embedded store: {e}"))
}

pub(super) fn to_json<T: Serialize>(v: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(internal)
}

pub(super) fn from_json<T: for<'de> Deserialize<'de>>(b: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(b).map_err(internal)
}

// ---- inside write transactions ----

pub(super) fn load_session(
    txn: &WriteTransaction,
    key: &str,
) -> StoreResult<Option<SessionRecord>> {
    let table = txn.open_table(SESSIONS).map_err(internal)?;
    let got = table.get(key).map_err(internal)?;
    got.map(|v| from_json::<SessionRecord>(v.value()))
        .transpose()
}

pub(super) fn live_session(
    txn: &WriteTransaction,
    key: &str,
    sid: &str,
    ret: &Retention,
) -> StoreResult<SessionRecord> {
    load_session(txn, key)?
        .filter(|r| r.is_live(ret, now_ms()))
        .ok_or_else(|| StoreError::session_not_found(sid))
}

pub(super) fn save_session(
    txn: &WriteTransaction,
    key: &str,
    rec: &SessionRecord,
) -> StoreResult<()> {
    let mut table = txn.open_table(SESSIONS).map_err(internal)?;
    table
        .insert(key, to_json(rec)?.as_slice())
        .map_err(internal)?;
    Ok(())
}

/// Bumps the session's sequence, stamps `updated_at`, records the event (and
/// queues it for after-hooks when hooked), and saves the header.
pub(super) fn record_event(
    txn: &WriteTransaction,
    hooked: AfterHooked,
    t: &Tenant,
    key: &str,
    rec: &mut SessionRecord,
    (kind, now, payload): (EventType, i64, Value),
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
        txn.open_table(HOOK_PENDING)
            .map_err(internal)?
            .insert((now, key, rec.seq), 0i64)
            .map_err(internal)?;
    }
    save_session(txn, key, rec)?;
    Ok(rec.seq)
}

pub(super) fn next_uid(txn: &WriteTransaction) -> StoreResult<u64> {
    let mut meta = txn.open_table(META).map_err(internal)?;
    let uid = meta
        .get("next_uid")
        .map_err(internal)?
        .map_or(1, |v| v.value());
    meta.insert("next_uid", uid + 1).map_err(internal)?;
    Ok(uid)
}

pub(super) fn read_message_w(
    txn: &WriteTransaction,
    uid: u64,
    aid: &str,
    mid: u64,
) -> StoreResult<Option<Message>> {
    let table = txn.open_table(MESSAGES).map_err(internal)?;
    let got = table.get((uid, aid, mid)).map_err(internal)?;
    got.map(|v| from_json::<Message>(v.value())).transpose()
}

pub(super) fn purge_children(txn: &WriteTransaction, uid: u64) -> StoreResult<()> {
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

/// Turns a live session into a tombstone (children purged, `seq` kept);
/// the caller records `session.deleted`.
pub(super) fn tombstone(txn: &WriteTransaction, rec: &mut SessionRecord) -> StoreResult<()> {
    purge_children(txn, rec.uid)?;
    rec.deleted = true;
    rec.metadata = JsonObject::new();
    rec.agents.clear();
    Ok(())
}

// ---- inside read transactions ----

/// A live session: not a tombstone and not past its retention.
pub(super) fn read_session(
    txn: &redb::ReadTransaction,
    key: &str,
    ret: &Retention,
) -> StoreResult<Option<SessionRecord>> {
    let table = open_read(txn, SESSIONS)?;
    let got = table.get(key).map_err(internal)?;
    Ok(got
        .map(|v| from_json::<SessionRecord>(v.value()))
        .transpose()?
        .filter(|r| r.is_live(ret, now_ms())))
}

pub(super) fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    def: TableDefinition<K, V>,
) -> StoreResult<redb::ReadOnlyTable<K, V>> {
    txn.open_table(def).map_err(|e: TableError| internal(e))
}

pub(super) fn read_agent(
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

pub(super) fn matches_query(rec: &SessionRecord, q: &ListQuery) -> bool {
    q.updated_after.is_none_or(|t| rec.updated_at > t)
        && q.session_type
            .as_ref()
            .is_none_or(|ty| &rec.session_type == ty)
        && q.metadata
            .iter()
            .all(|(p, v)| metadata::get_path(&rec.metadata, p) == Some(v))
}
