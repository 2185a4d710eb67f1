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

use super::group_commit::{Guard, Outcome};
use super::{
    MongoStore, agent_summary, crosses_array, date, doc_to_obj, enc, get_str, int, metadata_update,
    new_message, new_session_fields, seq_of, skey, to_i64, to_json_text, uid_of,
};
use crate::metadata::{self, MetadataChange};
use crate::model::{
    Agent, EventType, Feedback, JsonObject, Message, MessageInput, Session, Tenant, format_ms,
    now_ms,
};
use crate::store::{Appended, MetadataResult, StoreResult, message_event_payload};

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
                    let aid = super::dec(field);
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
        key: String,
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
                self.known.put(key, k);
                Fast::Done(Ok(value))
            }
            Outcome::Stale => Fast::Fallback,
            Outcome::Failed(e) => Fast::Done(Err(e)),
        }
    }

    pub(super) async fn create_fast(
        &self,
        t: &Tenant,
        sid: &str,
        session_type: &str,
        metadata: &JsonObject,
    ) -> Fast<Session> {
        let key = skey(t, sid);
        let now = now_ms();
        let mut session = doc! { "_id": &key };
        let fields = new_session_fields(t, sid, session_type, metadata, now);
        let uid = known_or_fallback!(fields.get_i64("uid").ok());
        session.extend(fields);
        session.insert("seq", 1i64);
        let payload = serde_json::json!({ "session_type": session_type, "metadata": metadata });
        let event = known_or_fallback!(
            self.event_doc(
                t.as_str(),
                sid,
                session_type,
                1,
                EventType::SessionCreated,
                now,
                payload
            )
            .ok()
        );
        let models = vec![
            insert_model(&self.c.sessions, session),
            insert_model(&self.c.events, event),
        ];
        let k = Known {
            uid,
            seq: 1,
            session_type: session_type.to_owned(),
            agents: HashMap::new(),
            feedbacks: 0,
            metadata: small(metadata).then(|| metadata.clone()),
        };
        let value = Session {
            session_id: sid.to_owned(),
            session_type: session_type.to_owned(),
            created_at: format_ms(now),
            updated_at: format_ms(now),
            metadata: metadata.clone(),
            agents: Vec::new(),
        };
        self.commit_fast(key, Guard::Insert, models, k, value).await
    }

    pub(super) async fn put_agent_fast(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        body: &JsonObject,
        body_text: &str,
        if_match: Option<u64>,
    ) -> Fast<(Agent, bool)> {
        let key = skey(t, sid);
        let mut k = known_or_fallback!(self.known(&key).await);
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
        let e = enc(aid);
        let mut inc = doc! { "seq": 1i64 };
        inc.insert(format!("agents.{e}.v"), 1i64);
        inc.insert(format!("agents.{e}.n"), 0i64);
        let guard = self.guard(
            &key,
            &k,
            doc! { "$inc": inc, "$set": { "updated_at": date(now) } },
        );
        let agent = UpdateOneModel::builder()
            .namespace(self.c.agents.namespace())
            .filter(doc! { "uid": k.uid, "agent_id": aid })
            .update(doc! {
                "$set": { "body": body_text, "updated_at": date(now) },
                "$setOnInsert": { "created_at": date(now) },
            })
            .upsert(true)
            .build()
            .into();
        let payload = serde_json::json!({
            "agent_id": aid, "version": version, "created": created,
        });
        let event = known_or_fallback!(
            self.event_doc(
                t.as_str(),
                sid,
                &k.session_type,
                k.seq + 1,
                EventType::AgentUpdated,
                now,
                payload
            )
            .ok()
        );
        let models = vec![guard, agent, insert_model(&self.c.events, event)];
        k.seq += 1;
        k.agents.insert(
            aid.to_owned(),
            KnownAgent {
                v: version,
                n: message_count,
                created_at: Some(created_at),
            },
        );
        let value = (
            Agent {
                agent_id: aid.to_owned(),
                body: body.clone(),
                created_at,
                updated_at: now,
                version,
                message_count,
            },
            created,
        );
        self.commit_fast(key, Guard::Update, models, k, value).await
    }

    pub(super) async fn append_fast(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        input: &MessageInput,
    ) -> Fast<Appended> {
        let key = skey(t, sid);
        let mut k = known_or_fallback!(self.known(&key).await);
        let mut a = known_or_fallback!(k.agents.get(aid).copied());
        // Not the next id: a retry, a gap or a conflict; the stored state decides.
        if input.message_id.is_some_and(|mid| mid != a.n) {
            return Fast::Fallback;
        }
        let now = now_ms();
        let next = a.n;
        let msg: Message = new_message(input, next, now);
        let e = enc(aid);
        let mut inc = doc! { "seq": 1i64 };
        inc.insert(format!("agents.{e}.n"), 1i64);
        let guard = self.guard(
            &key,
            &k,
            doc! { "$inc": inc, "$set": { "updated_at": date(now) } },
        );
        let text = known_or_fallback!(to_json_text(&msg).ok());
        let message = doc! {
            "uid": k.uid,
            "agent_id": aid,
            "message_id": to_i64(next),
            "doc": text,
        };
        let event = known_or_fallback!(
            self.event_doc(
                t.as_str(),
                sid,
                &k.session_type,
                k.seq + 1,
                EventType::MessageAppended,
                now,
                message_event_payload(aid, &msg),
            )
            .ok()
        );
        let models = vec![
            guard,
            insert_model(&self.c.messages, message),
            insert_model(&self.c.events, event),
        ];
        k.seq += 1;
        a.n += 1;
        k.agents.insert(aid.to_owned(), a);
        self.commit_fast(key, Guard::Update, models, k, Appended::Created(msg))
            .await
    }

    pub(super) async fn feedback_fast(
        &self,
        t: &Tenant,
        sid: &str,
        body: &JsonObject,
    ) -> Fast<Feedback> {
        let key = skey(t, sid);
        let mut k = known_or_fallback!(self.known(&key).await);
        let now = now_ms();
        let idx = k.feedbacks;
        let guard = self.guard(
            &key,
            &k,
            doc! {
                "$inc": { "seq": 1i64, "feedbacks": 1i64 },
                "$set": { "updated_at": date(now) },
            },
        );
        let mut body = body.clone();
        body.insert("created_at".into(), format_ms(now).into());
        let text = known_or_fallback!(to_json_text(&body).ok());
        let payload = serde_json::json!({ "feedback": body });
        let event = known_or_fallback!(
            self.event_doc(
                t.as_str(),
                sid,
                &k.session_type,
                k.seq + 1,
                EventType::FeedbackAdded,
                now,
                payload,
            )
            .ok()
        );
        let models = vec![
            guard,
            insert_model(
                &self.c.feedbacks,
                doc! { "uid": k.uid, "idx": idx, "body": text },
            ),
            insert_model(&self.c.events, event),
        ];
        k.seq += 1;
        k.feedbacks += 1;
        self.commit_fast(key, Guard::Update, models, k, Feedback { body })
            .await
    }

    pub(super) async fn metadata_fast(
        &self,
        t: &Tenant,
        sid: &str,
        change: &MetadataChange,
    ) -> Fast<MetadataResult> {
        let key = skey(t, sid);
        let mut k = known_or_fallback!(self.known(&key).await);
        let before = known_or_fallback!(k.metadata.as_ref());
        // Refused paths, and deletes through arrays, are worded and handled
        // by the per-write transaction.
        let applied = known_or_fallback!(metadata::apply(before, change).ok());
        if let MetadataChange::Delete(paths) = change
            && paths.iter().any(|p| crosses_array(before, p))
        {
            return Fast::Fallback;
        }
        let now = now_ms();
        let guard = self.guard(&key, &k, metadata_update(change, now));
        let seq = k.seq + 1;
        let event = known_or_fallback!(
            self.event_doc(
                t.as_str(),
                sid,
                &k.session_type,
                seq,
                super::super::metadata_event_type(change),
                now,
                metadata::event_payload(change, &applied),
            )
            .ok()
        );
        let models = vec![guard, insert_model(&self.c.events, event)];
        k.seq = seq;
        k.metadata = small(&applied.metadata).then(|| applied.metadata.clone());
        let value = MetadataResult {
            metadata: applied.metadata,
            changed: applied.changed,
            seq,
        };
        self.commit_fast(key, Guard::Update, models, k, value).await
    }
}

/// Whether the fast path can run on a server: the `bulkWrite` command needs
/// MongoDB 8.0 (wire version 25).
pub(super) fn server_has_bulk_write(hello: &Document) -> bool {
    int(hello.get("maxWireVersion")).is_some_and(|v| v >= 25)
}
