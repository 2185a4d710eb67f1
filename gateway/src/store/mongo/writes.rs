//! The per-write path: what each write does inside its own transaction.
//!
//! Every body has the same shape, kept in two helpers: a conditional
//! `findAndModify` of the session document ([`MongoStore::bump`]: the
//! conditions — live session, agent present, `If-Match` version, next message
//! id — are in the filter; the update bumps `seq`, stamps `updated_at` and
//! applies the change), then the child document, then the event
//! ([`MongoStore::record`]). When the filter matches nothing, a read inside
//! the same transaction says why; a read-only outcome (an idempotent append
//! retry) aborts, writing nothing. Every filter names the session key.

use mongodb::ClientSession;
use mongodb::bson::{Document, doc};
use mongodb::options::ReturnDocument;
use serde_json::Value;

use super::client::MongoStore;
use super::codec::{
    agent_created_at, agent_created_path, agent_summary, agent_upsert, append_update,
    crosses_array, date, date_ms, doc_to_obj, enc, feedback_doc, feedback_update, from_doc_text,
    get_str, int, message_doc, message_filter, metadata_update, new_session_fields, obj_to_doc,
    put_agent_update, seq_of, to_i64, to_json_text, uid_of,
};
use super::error::{DUPLICATE_KEY, PATH_NOT_VIABLE, error_code, error_message, malformed};
use super::txn::{Step, TxErr, TxResult};
use crate::metadata::MetadataChange;
use crate::model::{
    Agent, Event, EventType, Feedback, JsonObject, Message, MessageInput, MessagePatch, Session,
    now_ms,
};
use crate::store::{
    AppendAt, Appended, MetadataResult, StoreError, StoreResult, agent_payload, append_at,
    append_retry, apply_metadata, created_payload, created_session, message_event_payload,
    metadata_conflict, new_message, put_agent_answer, session_exists, session_key,
    stamped_feedback,
};

/// The session a write is about.
pub(super) struct At<'a> {
    pub tenant: &'a str,
    pub sid: &'a str,
    /// `"<tenant>/<sid>"`: `_id` of the session, `key` of everything else.
    pub key: String,
    /// The session type the write expects (`OtherType` otherwise), if any.
    pub session_type: Option<&'a str>,
}

impl<'a> At<'a> {
    pub fn new(tenant: &'a str, sid: &'a str) -> Self {
        Self {
            tenant,
            sid,
            key: session_key(tenant, sid),
            session_type: None,
        }
    }

    /// Whether a session of type `ty` is what the write expects.
    pub fn expects(&self, ty: &str) -> bool {
        self.session_type.is_none_or(|e| e == ty)
    }
}

/// The session document as a write left it.
pub(super) struct Bumped {
    /// The projected fields.
    pub doc: Document,
    pub uid: i64,
    /// The `seq` of the event this write records.
    pub seq: u64,
    pub session_type: String,
}

impl Bumped {
    /// From the document after the update (or, with `before`, as it was).
    fn from_doc(doc: Document, before: bool) -> StoreResult<Self> {
        Ok(Self {
            uid: uid_of(&doc)?,
            seq: seq_of(&doc)? + u64::from(before),
            session_type: get_str(&doc, "session_type", "session document")?.to_owned(),
            doc,
        })
    }
}

impl MongoStore {
    /// The stored form of an event.
    pub(super) fn event_doc(
        &self,
        at: &At<'_>,
        session_type: &str,
        seq: u64,
        kind: EventType,
        now: i64,
        payload: Value,
    ) -> StoreResult<Document> {
        let ev = Event {
            tenant: at.tenant.to_owned(),
            session_id: at.sid.to_owned(),
            session_type: session_type.to_owned(),
            seq,
            kind,
            ts: now,
            payload,
        };
        Ok(doc! {
            "tenant": at.tenant,
            "session_id": at.sid,
            "key": &at.key,
            "seq": to_i64(seq),
            "type": kind.as_str(),
            "doc": to_json_text(&ev)?,
            "ts": date(now),
            "hooks_pending": self.after_hooked().contains(kind),
            "lease_until": 0i64,
        })
    }

    /// Records the event of the write that left the session as `b`.
    async fn record(
        &self,
        s: &mut ClientSession,
        at: &At<'_>,
        b: &Bumped,
        kind: EventType,
        now: i64,
        payload: Value,
    ) -> Result<(), TxErr> {
        let d = self.event_doc(at, &b.session_type, b.seq, kind, now, payload)?;
        self.c.events.insert_one(d).session(&mut *s).await?;
        Ok(())
    }

    /// The conditional update of the session document every write starts
    /// with; `None` when `filter` matches nothing. `extra` adds to the
    /// projection (`uid`, `seq`, `session_type`); with `before` the document
    /// is returned as it was.
    async fn bump(
        &self,
        s: &mut ClientSession,
        filter: Document,
        update: Document,
        extra: Document,
        before: bool,
    ) -> Result<Option<Bumped>, TxErr> {
        let mut proj = doc! { "uid": 1, "seq": 1, "session_type": 1 };
        proj.extend(extra);
        let found = self
            .c
            .sessions
            .find_one_and_update(filter, update)
            .return_document(if before {
                ReturnDocument::Before
            } else {
                ReturnDocument::After
            })
            .projection(proj)
            .session(&mut *s)
            .await?;
        Ok(found.map(|d| Bumped::from_doc(d, before)).transpose()?)
    }

    /// Why a bump matched nothing, read in the same transaction: the live
    /// session (`uid` and `proj`), or `NotFound`.
    async fn live_in(
        &self,
        s: &mut ClientSession,
        at: &At<'_>,
        proj: Document,
    ) -> Result<Document, TxErr> {
        let mut p = doc! { "uid": 1 };
        p.extend(proj);
        self.c
            .sessions
            .find_one(self.live(&at.key))
            .projection(p)
            .session(&mut *s)
            .await?
            .ok_or_else(|| StoreError::session_not_found(at.sid).into())
    }

    /// The live session filter of a write, with the type it expects.
    fn live_of(&self, at: &At<'_>) -> Document {
        let mut f = self.live(&at.key);
        if let Some(ty) = at.session_type {
            f.insert("session_type", ty);
        }
        f
    }

    /// Why the bump of a write that expects a type matched nothing, read in
    /// the same transaction: `OtherType` (with the stored type) or `NotFound`.
    async fn missed(&self, s: &mut ClientSession, at: &At<'_>) -> TxErr {
        if at.session_type.is_none() {
            return StoreError::session_not_found(at.sid).into();
        }
        match self.live_in(s, at, doc! { "session_type": 1 }).await {
            Ok(d) => match get_str(&d, "session_type", "session document") {
                Ok(ty) => StoreError::OtherType(ty.to_owned()).into(),
                Err(e) => e.into(),
            },
            Err(e) => e,
        }
    }

    pub(super) async fn create_tx(
        &self,
        s: &mut ClientSession,
        at: &At<'_>,
        session_type: &str,
        metadata: &JsonObject,
    ) -> TxResult<Session> {
        let now = now_ms();
        let update = doc! {
            "$set": new_session_fields(at.tenant, at.sid, session_type, metadata, now),
            "$inc": { "seq": 1i64 },
        };
        // Matches a tombstone (revived, keeping its seq) or inserts; a live
        // session makes the upsert collide on `_id`.
        let res = self
            .c
            .sessions
            .find_one_and_update(doc! { "_id": &at.key, "deleted": true }, update)
            .upsert(true)
            .return_document(ReturnDocument::After)
            .projection(doc! { "uid": 1, "seq": 1, "session_type": 1 })
            .session(&mut *s)
            .await;
        let after = match res {
            Ok(Some(d)) => Bumped::from_doc(d, false)?,
            Ok(None) => return Err(TxErr::Retry("upsert returned nothing".into())),
            Err(e) if error_code(&e) == Some(DUPLICATE_KEY) => {
                return Err(session_exists(at.sid).into());
            }
            Err(e) => return Err(e.into()),
        };
        let payload = created_payload(session_type, metadata);
        self.record(s, at, &after, EventType::SessionCreated, now, payload)
            .await?;
        Ok(Step::Commit(created_session(
            at.sid,
            session_type,
            metadata,
            now,
        )))
    }

    /// Turns the session matched by `filter` (`_id` included) into a
    /// tombstone, records the uid for purging and the `session.deleted` event.
    pub(super) async fn delete_tx(
        &self,
        s: &mut ClientSession,
        at: &At<'_>,
        filter: &Document,
        now: i64,
        payload: &Value,
    ) -> TxResult<i64> {
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
        let Some(after) = self.bump(s, filter.clone(), update, doc! {}, false).await? else {
            return Err(StoreError::session_not_found(at.sid).into());
        };
        self.c
            .purges
            .insert_one(doc! { "_id": after.uid, "key": &at.key, "at": date(now) })
            .session(&mut *s)
            .await?;
        self.record(
            s,
            at,
            &after,
            EventType::SessionDeleted,
            now,
            payload.clone(),
        )
        .await?;
        Ok(Step::Commit(after.uid))
    }

    pub(super) async fn put_agent_tx(
        &self,
        s: &mut ClientSession,
        at: &At<'_>,
        aid: &str,
        body: (&JsonObject, &str),
        if_match: Option<u64>,
    ) -> TxResult<(Agent, bool)> {
        let e = enc(aid);
        let now = now_ms();
        let mut filter = self.live(&at.key);
        match if_match {
            Some(0) => {
                filter.insert(format!("agents.{e}"), doc! { "$exists": false });
            }
            Some(v) => {
                filter.insert(format!("agents.{e}.v"), to_i64(v));
            }
            None => {}
        }
        let mut proj = Document::new();
        proj.insert(format!("agents.{e}"), 1);
        let update = put_agent_update(aid, now);
        let Some(after) = self.bump(s, filter, update, proj.clone(), false).await? else {
            let d = self.live_in(s, at, proj).await?;
            let current = agent_summary(&d, &e).map_or(0, |(v, _)| v);
            return match if_match {
                Some(expected) if expected != current => {
                    Err(StoreError::VersionMismatch { expected, current }.into())
                }
                _ => Err(TxErr::Retry("agent precondition changed".into())),
            };
        };
        let (version, message_count) = agent_summary(&after.doc, &e)
            .ok_or_else(|| malformed("session document", "agent missing"))?;
        let created = version == 1;
        let (filter, update) = agent_upsert(&at.key, after.uid, aid, body.1, now);
        let stored = self
            .c
            .agents
            .find_one_and_update(filter, update)
            .upsert(true)
            .return_document(ReturnDocument::After)
            .projection(doc! { "created_at": 1 })
            .session(&mut *s)
            .await?
            .ok_or_else(|| malformed("agent document", "upsert returned nothing"))?;
        let created_at = date_ms(&stored, "created_at");
        if self.writer.is_some() && agent_created_at(&after.doc, &e) != Some(created_at) {
            // The session's copy of the creation time, for the fast path's
            // next put (once per agent written here: new, or older than the copy).
            let mut set = Document::new();
            set.insert(agent_created_path(aid), date(created_at));
            self.c
                .sessions
                .update_one(self.live(&at.key), doc! { "$set": set })
                .session(&mut *s)
                .await?;
        }
        let payload = agent_payload(aid, version, created);
        self.record(s, at, &after, EventType::AgentUpdated, now, payload)
            .await?;
        let summary = (version, message_count);
        let answer = put_agent_answer(aid, body.0.clone(), created_at, now, summary);
        Ok(Step::Commit(answer))
    }

    pub(super) async fn append_tx(
        &self,
        s: &mut ClientSession,
        at: &At<'_>,
        aid: &str,
        input: &MessageInput,
    ) -> TxResult<Appended> {
        let e = enc(aid);
        let now = now_ms();
        let mut filter = self.live(&at.key);
        match input.message_id {
            Some(mid) => filter.insert(format!("agents.{e}.n"), to_i64(mid)),
            None => filter.insert(format!("agents.{e}"), doc! { "$exists": true }),
        };
        let mut proj = Document::new();
        proj.insert(format!("agents.{e}"), 1);
        let update = append_update(aid, now);
        let Some(after) = self.bump(s, filter, update, proj.clone(), false).await? else {
            // Why not: missing session/agent, or an id that is not the next one.
            let d = self.live_in(s, at, proj).await?;
            let Some((_, next)) = agent_summary(&d, &e) else {
                return Err(StoreError::agent_not_found(at.sid, aid).into());
            };
            return match append_at(input, next)? {
                AppendAt::Stored(mid) => {
                    let filter = message_filter(&at.key, uid_of(&d)?, aid, mid);
                    let stored = self
                        .c
                        .messages
                        .find_one(filter)
                        .session(&mut *s)
                        .await?
                        .ok_or_else(|| {
                            malformed("messages", format!("message {mid} missing below count"))
                        })?;
                    let stored: Message = from_doc_text(&stored, "doc", "message document")?;
                    Ok(Step::Abort(append_retry(input, stored)?))
                }
                AppendAt::Next => Err(TxErr::Retry("message count changed".into())),
            };
        };
        let (_, count) = agent_summary(&after.doc, &e)
            .ok_or_else(|| malformed("session document", "agent missing"))?;
        let next = count
            .checked_sub(1)
            .ok_or_else(|| malformed("session document", "message count"))?;
        let msg = new_message(input, next, now);
        self.c
            .messages
            .insert_one(message_doc(&at.key, after.uid, aid, &msg)?)
            .session(&mut *s)
            .await?;
        let payload = message_event_payload(aid, &msg);
        self.record(s, at, &after, EventType::MessageAppended, now, payload)
            .await?;
        Ok(Step::Commit(Appended::Created(msg)))
    }

    pub(super) async fn update_message_tx(
        &self,
        s: &mut ClientSession,
        at: &At<'_>,
        aid: &str,
        mid: u64,
        patch: &MessagePatch,
    ) -> TxResult<Message> {
        let now = now_ms();
        let mut filter = self.live(&at.key);
        filter.insert(format!("agents.{}", enc(aid)), doc! { "$exists": true });
        let update = doc! { "$inc": { "seq": 1i64 }, "$set": { "updated_at": date(now) } };
        let Some(after) = self.bump(s, filter, update, doc! {}, false).await? else {
            self.live_in(s, at, doc! {}).await?;
            return Err(StoreError::agent_not_found(at.sid, aid).into());
        };
        // The session document is written (locked) by this transaction, so
        // this read-modify-write of the message cannot race another writer.
        let filter = message_filter(&at.key, after.uid, aid, mid);
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
        self.record(s, at, &after, EventType::MessageUpdated, now, payload)
            .await?;
        Ok(Step::Commit(msg))
    }

    pub(super) async fn change_metadata_tx(
        &self,
        s: &mut ClientSession,
        at: &At<'_>,
        change: &MetadataChange,
    ) -> TxResult<MetadataResult> {
        let now = now_ms();
        let update = metadata_update(change, now);
        let res = self
            .bump(s, self.live_of(at), update, doc! { "metadata": 1 }, true)
            .await;
        let before = match res {
            Ok(Some(b)) => b,
            Ok(None) => return Err(self.missed(s, at).await),
            Err(TxErr::Mongo(e)) if error_code(&e) == Some(PATH_NOT_VIABLE) => {
                return Err(metadata_conflict(error_message(&e)).into());
            }
            Err(e) => return Err(e),
        };
        let before_meta = before
            .doc
            .get_document("metadata")
            .map(doc_to_obj)
            .unwrap_or_default();
        // Computes the answer from the document as it was; also refuses what
        // MongoDB would have done differently (e.g. `$set` into an array), in
        // which case the abort undoes the update.
        let (applied, kind, payload) = apply_metadata(&before_meta, change)?;
        // `$unset` through an array nulls an element (`tags.0`) or edits one
        // (`list.0.x`), where the contract removes nothing: store the answer.
        if let MetadataChange::Delete(paths) = change
            && paths.iter().any(|p| crosses_array(&before_meta, p))
        {
            self.c
                .sessions
                .update_one(
                    doc! { "_id": &at.key },
                    doc! { "$set": { "metadata": obj_to_doc(&applied.metadata) } },
                )
                .session(&mut *s)
                .await?;
        }
        self.record(s, at, &before, kind, now, payload).await?;
        Ok(Step::Commit(MetadataResult {
            metadata: applied.metadata,
            changed: applied.changed,
            seq: before.seq,
            session_type: before.session_type,
        }))
    }

    pub(super) async fn add_feedback_tx(
        &self,
        s: &mut ClientSession,
        at: &At<'_>,
        body: &JsonObject,
    ) -> TxResult<Feedback> {
        let now = now_ms();
        let update = feedback_update(now);
        let extra = doc! { "feedbacks": 1 };
        let Some(after) = self.bump(s, self.live_of(at), update, extra, false).await? else {
            return Err(self.missed(s, at).await);
        };
        let idx = int(after.doc.get("feedbacks"))
            .and_then(|n| n.checked_sub(1))
            .ok_or_else(|| malformed("session document", "feedbacks"))?;
        let (body, payload) = stamped_feedback(body, now);
        self.c
            .feedbacks
            .insert_one(feedback_doc(&at.key, after.uid, idx, &body)?)
            .session(&mut *s)
            .await?;
        self.record(s, at, &after, EventType::FeedbackAdded, now, payload)
            .await?;
        Ok(Step::Commit(Feedback { body }))
    }
}
