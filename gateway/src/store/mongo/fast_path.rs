//! The fast write path (MongoDB 8.0+): a write is built from what this
//! gateway already knows of the session and handed to the group commit
//! ([`super::group_commit`]), so it costs the server a share of one
//! `bulkWrite` and one `commitTransaction` instead of a transaction of its
//! own (conditional `findAndModify`, child insert, event insert, commit).
//!
//! [`Known`] is a session's state as of its `seq`: uid, type, agents'
//! versions and message counts, feedback count, metadata. It is kept per
//! session after this gateway writes it (or read once, one `find`), and every
//! fast write names that `seq` in its filter: the session document changes
//! (and `seq` moves) with every committed change, so a filter that still
//! matches proves the answer computed from `Known` is the one the per-write
//! transaction would have given. When it does not match — another gateway
//! wrote, the session expired or was deleted — or when `Known` cannot decide
//! (an `If-Match` that fails, a message id that is not the next one, a
//! metadata path MongoDB may refuse), the write takes the per-write
//! transaction, which reads the stored state and answers authoritatively, and
//! the entry is dropped.

use std::collections::HashMap;

use mongodb::Collection;
use mongodb::bson::{Document, doc};
use mongodb::options::{
    InsertOneModel, ReadPreference, SelectionCriteria, UpdateOneModel, WriteModel,
};

use super::client::MongoStore;
use super::codec::{
    add_inc, agent_created_path, agent_upsert, append_inc, crosses_array, date, feedback_doc,
    feedback_update, int, message_doc, metadata_update, new_session_fields, put_agent_inc,
    session_update, to_i64, to_json_text,
};
use super::group_commit::{Guard, Outcome};
use super::known::{Known, KnownAgent, small};
use super::txn::Fast;
use super::writes::At;
use crate::metadata::MetadataChange;
use crate::model::{
    Agent, EventType, Feedback, JsonObject, Message, MessageInput, Session, now_ms,
};
use crate::store::{
    Appended, BatchWrite, BatchWritten, MetadataResult, agent_payload, apply_metadata,
    created_payload, created_session, message_event_payload, new_message, put_agent_answer,
    stamped_feedback,
};

macro_rules! known_or_fallback {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return Fast::Fallback,
        }
    };
}

fn update_model(c: &Collection<Document>, filter: Document, update: Document) -> WriteModel {
    UpdateOneModel::builder()
        .namespace(c.namespace())
        .filter(filter)
        .update(update)
        .build()
        .into()
}

fn insert_model(c: &Collection<Document>, d: Document) -> WriteModel {
    InsertOneModel::builder()
        .namespace(c.namespace())
        .document(d)
        .build()
        .into()
}

/// One write built on a [`Known`]: its increments of the session document
/// and the fields it sets there, its other models (child document, event),
/// and its answer.
struct Planned<T> {
    inc: Document,
    set: Document,
    models: Vec<WriteModel>,
    value: T,
}

/// Writes built in turn on one [`Known`], to be committed as one job: their
/// session changes merged (increments summed, one `seq` per write) and their
/// other models in order.
#[derive(Default)]
struct Combined {
    inc: Document,
    set: Document,
    models: Vec<WriteModel>,
    writes: i64,
}

impl Combined {
    /// Adds a planned write; answers its value.
    fn add<T>(&mut self, p: Planned<T>) -> T {
        add_inc(&mut self.inc, p.inc);
        self.set.extend(p.set);
        self.models.extend(p.models);
        self.writes += 1;
        p.value
    }
}

impl MongoStore {
    /// What is known of a live session: kept, else read (one `find` on the
    /// primary). `None` when it cannot be read (the per-write path decides).
    async fn known(&self, key: &str) -> Option<Known> {
        if let Some(k) = self.known.take(key) {
            return Some(k);
        }
        let d = self
            .c
            .sessions
            .find_one(self.live(key))
            .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
            .await
            .ok()??;
        Known::from_doc(&d).ok()
    }

    /// The guard: the live session document at the `seq` the write was built on.
    fn guard(&self, key: &str, seq: u64, update: Document) -> WriteModel {
        let mut filter = self.live(key);
        filter.insert("seq", to_i64(seq));
        update_model(&self.c.sessions, filter, update)
    }

    /// Commits `models` through the group commit; on success remembers `k`
    /// (already advanced to the new `seq`) and answers `value`.
    async fn commit_fast<T>(
        &self,
        key: &str,
        guard: Guard,
        models: Vec<WriteModel>,
        k: Known,
        value: T,
    ) -> Fast<T> {
        let Some(w) = &self.writer else {
            return Fast::Fallback;
        };
        match w.submit(guard, models).await {
            Outcome::Committed => {
                self.known.put(key.to_owned(), k);
                Fast::Done(Ok(value))
            }
            Outcome::Stale => Fast::Fallback,
            Outcome::Failed(e) => Fast::Done(Err(e)),
        }
    }

    /// Commits writes built on `seq` as one job: the guard, with their
    /// merged session update, then their models (`k` is already past them).
    async fn commit_combined<T>(
        &self,
        key: &str,
        (seq, now): (u64, i64),
        c: Combined,
        k: Known,
        value: T,
    ) -> Fast<T> {
        let update = session_update(c.inc, c.set, c.writes, now);
        let mut models = Vec::with_capacity(1 + c.models.len());
        models.push(self.guard(key, seq, update));
        models.extend(c.models);
        self.commit_fast(key, Guard::Update, models, k, value).await
    }

    /// The event of the write that advances `k` by one, as a model.
    fn next_event(
        &self,
        at: &At<'_>,
        k: &Known,
        kind: EventType,
        now: i64,
        payload: serde_json::Value,
    ) -> Option<WriteModel> {
        let d = self
            .event_doc(at, &k.session_type, k.seq + 1, kind, now, payload)
            .ok()?;
        Some(insert_model(&self.c.events, d))
    }

    pub(super) async fn create_fast(
        &self,
        at: &At<'_>,
        session_type: &str,
        metadata: &JsonObject,
    ) -> Fast<Session> {
        let now = now_ms();
        let mut session = doc! { "_id": &at.key };
        let fields = new_session_fields(at.tenant, at.sid, session_type, metadata, now);
        let uid = known_or_fallback!(fields.get_i64("uid").ok());
        session.extend(fields);
        session.insert("seq", 1i64);
        let mut k = Known {
            uid,
            seq: 0,
            session_type: session_type.to_owned(),
            agents: HashMap::new(),
            feedbacks: 0,
            metadata: small(metadata).then(|| metadata.clone()),
        };
        let payload = created_payload(session_type, metadata);
        let event =
            known_or_fallback!(self.next_event(at, &k, EventType::SessionCreated, now, payload));
        let models = vec![insert_model(&self.c.sessions, session), event];
        k.seq = 1;
        let value = created_session(at.sid, session_type, metadata, now);
        self.commit_fast(&at.key, Guard::Insert, models, k, value)
            .await
    }

    pub(super) async fn put_agent_fast(
        &self,
        at: &At<'_>,
        aid: &str,
        body: (&JsonObject, &str),
        if_match: Option<u64>,
    ) -> Fast<(Agent, bool)> {
        self.single_fast(at, |s, k, now| {
            s.plan_put_agent(at, k, aid, body, if_match, now)
        })
        .await
    }

    pub(super) async fn append_fast(
        &self,
        at: &At<'_>,
        aid: &str,
        input: &MessageInput,
    ) -> Fast<Appended> {
        self.single_fast(at, |s, k, now| s.plan_append(at, k, aid, input, now))
            .await
    }

    /// One write, planned by `plan` on what is known of the session, as a
    /// job of its own.
    async fn single_fast<T>(
        &self,
        at: &At<'_>,
        plan: impl FnOnce(&Self, &mut Known, i64) -> Option<Planned<T>>,
    ) -> Fast<T> {
        let mut k = known_or_fallback!(self.known(&at.key).await);
        let (seq, now) = (k.seq, now_ms());
        let p = known_or_fallback!(plan(self, &mut k, now));
        let mut c = Combined::default();
        let value = c.add(p);
        self.commit_combined(&at.key, (seq, now), c, k, value).await
    }

    /// Several writes of one session as **one** job of the group commit: one
    /// guard (the session document at the `seq` they were built on, moved by
    /// their summed increments and one `seq` per write), then each write's
    /// child document and event, in order. All are committed or none; when
    /// any cannot be decided from what is known (an update of a message, a
    /// failing `If-Match`, a message id that is not the next one) or the
    /// guard does not hold, the caller writes them one by one.
    pub(super) async fn batch_fast(
        &self,
        at: &At<'_>,
        writes: &[BatchWrite],
    ) -> Fast<Vec<BatchWritten>> {
        let mut k = known_or_fallback!(self.known(&at.key).await);
        let (seq, now) = (k.seq, now_ms());
        let mut c = Combined::default();
        let mut done = Vec::with_capacity(writes.len());
        for w in writes {
            let written = match w {
                BatchWrite::Append { aid, input } => {
                    let p = known_or_fallback!(self.plan_append(at, &mut k, aid, input, now));
                    BatchWritten::Appended(c.add(p))
                }
                BatchWrite::PutAgent {
                    aid,
                    body,
                    if_match,
                } => {
                    let text = known_or_fallback!(to_json_text(body).ok());
                    let body = (body, text.as_str());
                    let p = known_or_fallback!(
                        self.plan_put_agent(at, &mut k, aid, body, *if_match, now)
                    );
                    let (agent, created) = c.add(p);
                    BatchWritten::Agent(agent, created)
                }
                BatchWrite::UpdateMessage { .. } => return Fast::Fallback,
            };
            done.push(written);
        }
        self.commit_combined(&at.key, (seq, now), c, k, done).await
    }

    /// `PUT agent` built on `k` (advanced past it on success).
    fn plan_put_agent(
        &self,
        at: &At<'_>,
        k: &mut Known,
        aid: &str,
        body: (&JsonObject, &str),
        if_match: Option<u64>,
        now: i64,
    ) -> Option<Planned<(Agent, bool)>> {
        let cur = k.agents.get(aid).copied();
        let holds = match (if_match, cur) {
            (None, _) | (Some(0), None) => true,
            (Some(v), Some(a)) => a.v == v,
            (Some(_), None) => false,
        };
        if !holds {
            return None;
        }
        let created_at = match cur {
            None => now,
            Some(a) => a.created_at?,
        };
        let version = cur.map_or(1, |a| a.v + 1);
        let message_count = cur.map_or(0, |a| a.n);
        let created = cur.is_none();
        let (filter, update) = agent_upsert(&at.key, k.uid, aid, body.1, now);
        let agent = UpdateOneModel::builder()
            .namespace(self.c.agents.namespace())
            .filter(filter)
            .update(update)
            .upsert(true)
            .build()
            .into();
        let payload = agent_payload(aid, version, created);
        let event = self.next_event(at, k, EventType::AgentUpdated, now, payload)?;
        k.seq += 1;
        k.agents.insert(
            aid.to_owned(),
            KnownAgent {
                v: version,
                n: message_count,
                created_at: Some(created_at),
            },
        );
        let value = put_agent_answer(
            aid,
            body.0.clone(),
            created_at,
            now,
            (version, message_count),
        );
        let mut set = Document::new();
        set.insert(agent_created_path(aid), date(created_at));
        Some(Planned {
            inc: put_agent_inc(aid),
            set,
            models: vec![agent, event],
            value,
        })
    }

    /// An append built on `k` (advanced past it on success).
    fn plan_append(
        &self,
        at: &At<'_>,
        k: &mut Known,
        aid: &str,
        input: &MessageInput,
        now: i64,
    ) -> Option<Planned<Appended>> {
        let mut a = k.agents.get(aid).copied()?;
        // Not the next id: a retry, a gap or a conflict; the stored state decides.
        if input.message_id.is_some_and(|mid| mid != a.n) {
            return None;
        }
        let msg: Message = new_message(input, a.n, now);
        let message = message_doc(&at.key, k.uid, aid, &msg).ok()?;
        let payload = message_event_payload(aid, &msg);
        let event = self.next_event(at, k, EventType::MessageAppended, now, payload)?;
        k.seq += 1;
        a.n += 1;
        k.agents.insert(aid.to_owned(), a);
        Some(Planned {
            inc: append_inc(aid),
            set: Document::new(),
            models: vec![insert_model(&self.c.messages, message), event],
            value: Appended::Created(msg),
        })
    }

    pub(super) async fn feedback_fast(&self, at: &At<'_>, body: &JsonObject) -> Fast<Feedback> {
        let mut k = known_or_fallback!(self.known(&at.key).await);
        if !at.expects(&k.session_type) {
            return Fast::Fallback;
        }
        let now = now_ms();
        let guard = self.guard(&at.key, k.seq, feedback_update(now));
        let (body, payload) = stamped_feedback(body, now);
        let fb = known_or_fallback!(feedback_doc(&at.key, k.uid, k.feedbacks, &body).ok());
        let event =
            known_or_fallback!(self.next_event(at, &k, EventType::FeedbackAdded, now, payload));
        let models = vec![guard, insert_model(&self.c.feedbacks, fb), event];
        k.seq += 1;
        k.feedbacks += 1;
        self.commit_fast(&at.key, Guard::Update, models, k, Feedback { body })
            .await
    }

    pub(super) async fn metadata_fast(
        &self,
        at: &At<'_>,
        change: &MetadataChange,
    ) -> Fast<MetadataResult> {
        let mut k = known_or_fallback!(self.known(&at.key).await);
        if !at.expects(&k.session_type) {
            return Fast::Fallback;
        }
        let before = known_or_fallback!(k.metadata.as_ref());
        // Refused paths, and deletes through arrays, are worded and handled
        // by the per-write transaction.
        let (applied, kind, payload) = known_or_fallback!(apply_metadata(before, change).ok());
        if let MetadataChange::Delete(paths) = change
            && paths.iter().any(|p| crosses_array(before, p))
        {
            return Fast::Fallback;
        }
        let now = now_ms();
        let guard = self.guard(&at.key, k.seq, metadata_update(change, now));
        let event = known_or_fallback!(self.next_event(at, &k, kind, now, payload));
        let models = vec![guard, event];
        k.seq += 1;
        k.metadata = small(&applied.metadata).then(|| applied.metadata.clone());
        let value = MetadataResult {
            metadata: applied.metadata,
            changed: applied.changed,
            seq: k.seq,
            session_type: k.session_type.clone(),
        };
        self.commit_fast(&at.key, Guard::Update, models, k, value)
            .await
    }
}

/// Whether the fast path can run on a server: the `bulkWrite` command needs
/// MongoDB 8.0 (wire version 25).
pub(super) fn server_has_bulk_write(hello: &Document) -> bool {
    int(hello.get("maxWireVersion")).is_some_and(|v| v >= 25)
}
