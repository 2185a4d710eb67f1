//! Sessions, agents and messages: writes through
//! [`EmbeddedStore::mutate`], reads against snapshots.

use std::collections::BTreeMap;

use async_trait::async_trait;
use redb::{ReadableTable, WriteTransaction};
use serde_json::Value;

use super::tables::{
    AGENTS, AgentRecord, AgentSummary, FEEDBACKS, MESSAGES, SESSIONS, SessionRecord, from_json,
    internal, load_session, matches_query, next_uid, open_read, read_agent, read_message_w,
    read_session, record_event, to_json, tombstone,
};
use super::{Change, EmbeddedStore, MutateStep};
use crate::metadata::MetadataChange;
use crate::model::{
    Agent, DEFAULT_SESSION_TYPE, EventType, Feedback, JsonObject, Message, MessageInput,
    MessagePatch, MessageRange, NewSession, Session, Tenant, now_ms,
};
use crate::store::{
    AgentData, AppendAt, Appended, BatchOutcome, BatchWrite, BatchWritten, ListQuery,
    MetadataResult, Page, ReadBudget, SessionData, StoreError, StoreResult, agent_payload,
    append_at, append_retry, apply_metadata, created_payload, message_bounds,
    message_event_payload, new_message, put_agent_answer, session_exists, session_key,
    stamped_feedback, tenant_key_range,
};

/// Bytes of stored messages `list_messages` reads on the calling thread
/// before it moves the rest of the read to the blocking pool.
const INLINE_READ_BYTES: usize = 64 << 10;

/// A message range being read: the rows read so far, and what bounds it.
struct MessageRows {
    uid: u64,
    aid: String,
    /// The end of the range (exclusive).
    to: u64,
    out: Vec<Message>,
    /// What the whole read may take ([`EmbeddedStore::with_max_read_bytes`]).
    budget: ReadBudget,
}

impl MessageRows {
    /// Reads ids `from..self.to` until the budget is spent or this call has
    /// read `here` bytes; answers the id to go on from in the second case.
    fn read(
        &mut self,
        txn: &redb::ReadTransaction,
        from: u64,
        here: usize,
    ) -> StoreResult<Option<u64>> {
        let table = open_read(txn, MESSAGES)?;
        let range = (self.uid, self.aid.as_str(), from)..(self.uid, self.aid.as_str(), self.to);
        let mut read_here = 0usize;
        for row in table.range(range).map_err(internal)? {
            let (k, v) = row.map_err(internal)?;
            let raw = v.value();
            read_here = read_here.saturating_add(raw.len());
            // (A first row larger than `here` goes too: one large message
            // is not parsed on the request's thread either.)
            if read_here > here {
                return Ok(Some(k.value().2));
            }
            if !self.budget.take(raw.len()) {
                break;
            }
            self.out.push(from_json::<Message>(raw)?);
        }
        Ok(None)
    }
}

/// The summary of an agent the session has, else `NotFound`.
fn agent_of(rec: &SessionRecord, aid: &str) -> StoreResult<AgentSummary> {
    rec.agents
        .get(aid)
        .copied()
        .ok_or_else(|| StoreError::agent_not_found(&rec.session_id, aid))
}

#[async_trait]
impl SessionData for EmbeddedStore {
    async fn create_session(&self, t: &Tenant, new: NewSession) -> StoreResult<Session> {
        let hooked = self.after_hooked();
        let sid = new
            .session_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let t = t.clone();
        self.write(move |txn| {
            let key = session_key(t.as_str(), &sid);
            let prior_seq = match load_session(txn, &key)? {
                Some(r) if !r.deleted => return Err(session_exists(&sid)),
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
            let payload = created_payload(&rec.session_type, &rec.metadata);
            let ev = (EventType::SessionCreated, now, payload);
            record_event(txn, hooked, &t, &key, &mut rec, ev)?;
            Ok(rec.to_session())
        })
        .await
    }

    async fn get_session(&self, t: &Tenant, sid: &str) -> StoreResult<Session> {
        self.read_live_now(t, sid, |_, rec| Ok(rec.to_session()))
    }

    async fn batch_get_sessions(&self, t: &Tenant, ids: &[String]) -> StoreResult<Vec<Session>> {
        let ret = self.retention();
        let keys: Vec<String> = ids.iter().map(|id| session_key(t.as_str(), id)).collect();
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
        let (start, end) = tenant_key_range(t.as_str(), q.after.as_deref());
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
                if !rec.is_live(&ret, now_ms()) || !matches_query(&rec, &q) {
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
        self.mutate(t, sid, |txn, rec, _| {
            tombstone(txn, rec)?;
            let payload = Value::Object(JsonObject::new());
            Ok(Change::Event(EventType::SessionDeleted, payload, ()))
        })
        .await
    }

    async fn get_metadata(&self, t: &Tenant, sid: &str) -> StoreResult<JsonObject> {
        self.read_live_now(t, sid, |_, rec| Ok(rec.metadata))
    }

    async fn change_metadata_of_type(
        &self,
        t: &Tenant,
        sid: &str,
        session_type: Option<&str>,
        change: &MetadataChange,
    ) -> StoreResult<MetadataResult> {
        let change = change.clone();
        let expected = session_type.map(str::to_owned);
        self.mutate(t, sid, move |_, rec, _| {
            check_type(rec, expected.as_deref())?;
            let (applied, kind, payload) = apply_metadata(&rec.metadata, &change)?;
            rec.metadata = applied.metadata.clone();
            let result = MetadataResult {
                metadata: applied.metadata,
                changed: applied.changed,
                seq: rec.seq + 1,
                session_type: rec.session_type.clone(),
            };
            Ok(Change::Event(kind, payload, result))
        })
        .await
    }

    async fn add_feedback_of_type(
        &self,
        t: &Tenant,
        sid: &str,
        session_type: Option<&str>,
        body: JsonObject,
    ) -> StoreResult<Feedback> {
        let expected = session_type.map(str::to_owned);
        self.mutate(t, sid, move |txn, rec, now| {
            check_type(rec, expected.as_deref())?;
            let (body, payload) = stamped_feedback(&body, now);
            txn.open_table(FEEDBACKS)
                .map_err(internal)?
                .insert((rec.uid, rec.feedbacks), to_json(&body)?.as_slice())
                .map_err(internal)?;
            rec.feedbacks += 1;
            Ok(Change::Event(
                EventType::FeedbackAdded,
                payload,
                Feedback { body },
            ))
        })
        .await
    }

    async fn list_feedbacks(&self, t: &Tenant, sid: &str) -> StoreResult<Vec<Feedback>> {
        self.read_live(t, sid, |txn, rec| {
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
}

#[async_trait]
impl AgentData for EmbeddedStore {
    async fn put_agent(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        body: JsonObject,
        if_match: Option<u64>,
    ) -> StoreResult<(Agent, bool)> {
        let aid = aid.to_owned();
        self.mutate(t, sid, move |txn, rec, now| {
            put_agent_in(txn, rec, now, &aid, body, if_match)
        })
        .await
    }

    async fn get_agent(&self, t: &Tenant, sid: &str, aid: &str) -> StoreResult<Agent> {
        self.read_live_now(t, sid, |txn, rec| {
            read_agent(txn, &rec, aid)?.ok_or_else(|| StoreError::agent_not_found(sid, aid))
        })
    }

    async fn list_agents(&self, t: &Tenant, sid: &str) -> StoreResult<Vec<Agent>> {
        self.read_live(t, sid, |txn, rec| {
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
        let aid = aid.to_owned();
        self.mutate(t, sid, move |txn, rec, now| {
            append_in(txn, rec, now, &aid, &input)
        })
        .await
    }

    /// Starts on the calling thread, as a point read does: a `latest=20`
    /// read is a few rows, and the hop to the blocking pool costs more than
    /// reading them (on this machine, a list of 4 messages cost 83-112 µs of
    /// CPU with the hop and 55 µs without). Once the rows read here pass
    /// [`INLINE_READ_BYTES`], the rest of the range is read on the blocking
    /// pool, in the same snapshot.
    async fn list_messages(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        range: MessageRange,
    ) -> StoreResult<(Vec<Message>, u64)> {
        let max_read = self.max_read_bytes;
        let ret = self.retention();
        let key = session_key(t.as_str(), sid);
        let txn = self.db.begin_read().map_err(internal)?;
        let rec =
            read_session(&txn, &key, &ret)?.ok_or_else(|| StoreError::session_not_found(sid))?;
        let total = agent_of(&rec, aid)?.message_count;
        let (from, to) = message_bounds(range, total);
        let mut rows = MessageRows {
            uid: rec.uid,
            aid: aid.to_owned(),
            to,
            out: Vec::with_capacity(((to - from) as usize).min(1024)),
            budget: ReadBudget::new(max_read),
        };
        let Some(rest) = rows.read(&txn, from, INLINE_READ_BYTES)? else {
            return Ok((rows.out, total));
        };
        tokio::task::spawn_blocking(move || {
            rows.read(&txn, rest, usize::MAX)?;
            Ok((rows.out, total))
        })
        .await
        .map_err(internal)?
    }

    /// A point read, on the calling thread.
    async fn get_message(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        mid: u64,
    ) -> StoreResult<Message> {
        self.read_live_now(t, sid, move |txn, rec| {
            agent_of(&rec, aid)?;
            let table = open_read(txn, MESSAGES)?;
            let got = table.get((rec.uid, aid, mid)).map_err(internal)?;
            got.map(|v| from_json::<Message>(v.value()))
                .transpose()?
                .ok_or_else(|| StoreError::message_not_found(aid, mid))
        })
    }

    async fn update_message(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        mid: u64,
        patch: MessagePatch,
    ) -> StoreResult<Message> {
        let aid = aid.to_owned();
        self.mutate(t, sid, move |txn, rec, now| {
            update_message_in(txn, rec, now, &aid, mid, &patch)
        })
        .await
    }

    async fn write_batch(&self, t: &Tenant, sid: &str, writes: Vec<BatchWrite>) -> BatchOutcome {
        let steps = writes
            .into_iter()
            .map(|w| -> MutateStep<BatchWritten> {
                match w {
                    BatchWrite::Append { aid, input } => Box::new(move |txn, rec, now| {
                        append_in(txn, rec, now, &aid, &input)
                            .map(|c| c.map(BatchWritten::Appended))
                    }),
                    BatchWrite::PutAgent {
                        aid,
                        body,
                        if_match,
                    } => Box::new(move |txn, rec, now| {
                        put_agent_in(txn, rec, now, &aid, body, if_match)
                            .map(|c| c.map(|(a, created)| BatchWritten::Agent(a, created)))
                    }),
                    BatchWrite::UpdateMessage { aid, mid, patch } => {
                        Box::new(move |txn, rec, now| {
                            update_message_in(txn, rec, now, &aid, mid, &patch)
                                .map(|c| c.map(BatchWritten::Message))
                        })
                    }
                }
            })
            .collect();
        let (done, failed) = self.mutate_steps(t, sid, steps).await;
        BatchOutcome { done, failed }
    }
}

/// `PUT agent` in a write transaction.
fn put_agent_in(
    txn: &WriteTransaction,
    rec: &mut SessionRecord,
    now: i64,
    aid: &str,
    body: JsonObject,
    if_match: Option<u64>,
) -> StoreResult<Change<(Agent, bool)>> {
    let prior = rec.agents.get(aid).copied();
    if let Some(expected) = if_match {
        let current = prior.map_or(0, |p| p.version);
        if current != expected {
            return Err(StoreError::VersionMismatch { expected, current });
        }
    }
    let mut agents = txn.open_table(AGENTS).map_err(internal)?;
    let created_at = match agents.get((rec.uid, aid)).map_err(internal)? {
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
        .insert((rec.uid, aid), to_json(&stored)?.as_slice())
        .map_err(internal)?;
    drop(agents);
    rec.agents.insert(aid.to_owned(), summary);
    let payload = agent_payload(aid, summary.version, prior.is_none());
    let summary = (summary.version, summary.message_count);
    let value = put_agent_answer(aid, stored.body, created_at, now, summary);
    Ok(Change::Event(EventType::AgentUpdated, payload, value))
}

/// An append in a write transaction.
fn append_in(
    txn: &WriteTransaction,
    rec: &mut SessionRecord,
    now: i64,
    aid: &str,
    input: &MessageInput,
) -> StoreResult<Change<Appended>> {
    let mut summary = agent_of(rec, aid)?;
    let next = summary.message_count;
    if let AppendAt::Stored(mid) = append_at(input, next)? {
        let stored = read_message_w(txn, rec.uid, aid, mid)?
            .ok_or_else(|| internal(format!("message {mid} missing below count")))?;
        return append_retry(input, stored).map(Change::Unchanged);
    }
    let msg = new_message(input, next, now);
    txn.open_table(MESSAGES)
        .map_err(internal)?
        .insert((rec.uid, aid, next), to_json(&msg)?.as_slice())
        .map_err(internal)?;
    summary.message_count += 1;
    rec.agents.insert(aid.to_owned(), summary);
    let payload = message_event_payload(aid, &msg);
    let value = Appended::Created(msg);
    Ok(Change::Event(EventType::MessageAppended, payload, value))
}

/// A message update in a write transaction.
fn update_message_in(
    txn: &WriteTransaction,
    rec: &mut SessionRecord,
    now: i64,
    aid: &str,
    mid: u64,
    patch: &MessagePatch,
) -> StoreResult<Change<Message>> {
    agent_of(rec, aid)?;
    let mut msg = read_message_w(txn, rec.uid, aid, mid)?
        .ok_or_else(|| StoreError::message_not_found(aid, mid))?;
    patch.apply(&mut msg, now);
    txn.open_table(MESSAGES)
        .map_err(internal)?
        .insert((rec.uid, aid, mid), to_json(&msg)?.as_slice())
        .map_err(internal)?;
    let payload = message_event_payload(aid, &msg);
    Ok(Change::Event(EventType::MessageUpdated, payload, msg))
}

/// `OtherType` unless the session is of the type a write expects (if any).
fn check_type(rec: &SessionRecord, expected: Option<&str>) -> StoreResult<()> {
    match expected {
        Some(ty) if ty != rec.session_type => Err(StoreError::OtherType(rec.session_type.clone())),
        _ => Ok(()),
    }
}
