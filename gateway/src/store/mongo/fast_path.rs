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
use std::sync::Mutex;

use mongodb::Collection;
use mongodb::bson::{Document, doc};
use mongodb::options::{
    InsertOneModel, ReadPreference, SelectionCriteria, UpdateOneModel, WriteModel,
};

use super::MongoStore;
use super::codec::{
    agent_summary, agent_upsert, append_update, crosses_array, dec, doc_to_obj, feedback_doc,
    feedback_update, get_str, int, message_doc, metadata_update, new_session_fields,
    put_agent_update, seq_of, to_i64, uid_of,
};
use super::group_commit::{Guard, Outcome};
use super::writes::At;
use crate::metadata::MetadataChange;
use crate::model::{
    Agent, EventType, Feedback, JsonObject, Message, MessageInput, Session, now_ms,
};
use crate::store::{
    Appended, MetadataResult, StoreResult, agent_payload, apply_metadata, created_payload,
    created_session, message_event_payload, new_message, put_agent_answer, stamped_feedback,
};

/// Sessions whose state is kept, at most (past it the cache starts over).
const MAX_KNOWN: usize = 4096;
/// Metadata larger than this (JSON bytes) is not kept: its changes take the
/// per-write transaction.
const MAX_KNOWN_METADATA: usize = 8 * 1024;

/// One agent as of the session's `seq`.
#[derive(Debug, Clone, Copy)]
pub(super) struct KnownAgent {
    /// Version (`If-Match`).
    pub v: u64,
    /// Message count = the next message id.
    pub n: u64,
    /// Creation time, when this gateway saw it (it lives in `agents`).
    pub created_at: Option<i64>,
}

/// A session's state as of `seq`.
#[derive(Debug, Clone)]
pub(super) struct Known {
    pub uid: i64,
    pub seq: u64,
    pub session_type: String,
    pub agents: HashMap<String, KnownAgent>,
    pub feedbacks: i64,
    /// `None` when too large to keep.
    pub metadata: Option<JsonObject>,
}

fn small(m: &JsonObject) -> bool {
    serde_json::to_vec(m).is_ok_and(|v| v.len() <= MAX_KNOWN_METADATA)
}

impl Known {
    fn from_doc(d: &Document) -> StoreResult<Self> {
        let mut agents = HashMap::new();
        if let Ok(a) = d.get_document("agents") {
            for (field, _) in a {
                if let Some((v, n)) = agent_summary(d, field) {
                    let aid = dec(field);
                    agents.insert(
                        aid,
                        KnownAgent {
                            v,
                            n,
                            created_at: None,
                        },
                    );
                }
            }
        }
        let metadata = d
            .get_document("metadata")
            .map(doc_to_obj)
            .unwrap_or_default();
        Ok(Self {
            uid: uid_of(d)?,
            seq: seq_of(d)?,
            session_type: get_str(d, "session_type", "session document")?.to_owned(),
            agents,
            feedbacks: int(d.get("feedbacks")).unwrap_or(0),
            metadata: small(&metadata).then_some(metadata),
        })
    }
}

/// What this gateway knows, by session key.
#[derive(Default)]
pub(super) struct KnownSessions {
    map: Mutex<HashMap<String, Known>>,
}

impl KnownSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the entry out (the caller holds the session's write turn).
    fn take(&self, key: &str) -> Option<Known> {
        self.lock().remove(key)
    }

    fn put(&self, key: String, k: Known) {
        let mut map = self.lock();
        if map.len() >= MAX_KNOWN && !map.contains_key(&key) {
            map.clear();
        }
        map.insert(key, k);
    }

    /// Drops what is known of a session (after a write that did not go
    /// through the fast path).
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// The result of a fast write, or the need for the per-write transaction.
pub(super) enum Fast<T> {
    Done(StoreResult<T>),
    Fallback,
}

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
    fn guard(&self, key: &str, k: &Known, update: Document) -> WriteModel {
        let mut filter = self.live(key);
        filter.insert("seq", to_i64(k.seq));
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
        let mut k = known_or_fallback!(self.known(&at.key).await);
        let cur = k.agents.get(aid).copied();
        let holds = match (if_match, cur) {
            (None, _) | (Some(0), None) => true,
            (Some(v), Some(a)) => a.v == v,
            (Some(_), None) => false,
        };
        if !holds {
            return Fast::Fallback;
        }
        let now = now_ms();
        let created_at = match cur {
            None => now,
            Some(a) => known_or_fallback!(a.created_at),
        };
        let version = cur.map_or(1, |a| a.v + 1);
        let message_count = cur.map_or(0, |a| a.n);
        let created = cur.is_none();
        let guard = self.guard(&at.key, &k, put_agent_update(aid, now));
        let (filter, update) = agent_upsert(&at.key, k.uid, aid, body.1, now);
        let agent = UpdateOneModel::builder()
            .namespace(self.c.agents.namespace())
            .filter(filter)
            .update(update)
            .upsert(true)
            .build()
            .into();
        let payload = agent_payload(aid, version, created);
        let event =
            known_or_fallback!(self.next_event(at, &k, EventType::AgentUpdated, now, payload));
        let models = vec![guard, agent, event];
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
        self.commit_fast(&at.key, Guard::Update, models, k, value)
            .await
    }

    pub(super) async fn append_fast(
        &self,
        at: &At<'_>,
        aid: &str,
        input: &MessageInput,
    ) -> Fast<Appended> {
        let mut k = known_or_fallback!(self.known(&at.key).await);
        let mut a = known_or_fallback!(k.agents.get(aid).copied());
        // Not the next id: a retry, a gap or a conflict; the stored state decides.
        if input.message_id.is_some_and(|mid| mid != a.n) {
            return Fast::Fallback;
        }
        let now = now_ms();
        let msg: Message = new_message(input, a.n, now);
        let guard = self.guard(&at.key, &k, append_update(aid, now));
        let message = known_or_fallback!(message_doc(&at.key, k.uid, aid, &msg).ok());
        let payload = message_event_payload(aid, &msg);
        let event =
            known_or_fallback!(self.next_event(at, &k, EventType::MessageAppended, now, payload));
        let models = vec![guard, insert_model(&self.c.messages, message), event];
        k.seq += 1;
        a.n += 1;
        k.agents.insert(aid.to_owned(), a);
        self.commit_fast(&at.key, Guard::Update, models, k, Appended::Created(msg))
            .await
    }

    pub(super) async fn feedback_fast(&self, at: &At<'_>, body: &JsonObject) -> Fast<Feedback> {
        let mut k = known_or_fallback!(self.known(&at.key).await);
        let now = now_ms();
        let guard = self.guard(&at.key, &k, feedback_update(now));
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
        let guard = self.guard(&at.key, &k, metadata_update(change, now));
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
