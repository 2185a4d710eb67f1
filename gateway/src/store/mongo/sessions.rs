//! Sessions, agents and messages: reads (one `find` on the session document,
//! then at most one on the child collection, both by the session key), and
//! writes through [`MongoStore::mutate`] (the fast path, else the
//! transaction in `writes.rs`).

use std::collections::HashMap;

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};

use super::client::MongoStore;
use super::codec::{
    add_live, agent_ids, agent_summary, child, date, date_ms, doc_to_obj, enc, filterable,
    from_doc_text, get_str, json_to_bson, message_filter, session_from_doc, to_i64, uid_of,
};
use super::error::mongo_err;
use super::txn::Fast;
use super::writes::At;
use crate::metadata::{self, MetadataChange};
use crate::model::{
    Agent, DEFAULT_SESSION_TYPE, Feedback, JsonObject, Message, MessageInput, MessagePatch,
    MessageRange, NewSession, Session, Tenant, now_ms,
};
use crate::store::{
    AgentData, Appended, BatchOutcome, BatchWrite, ListQuery, MetadataResult, Page, ReadBudget,
    SessionData, StoreError, StoreResult, message_bounds, tenant_key_range, write_one_by_one,
};

/// Collects a cursor of documents, naming the operation in errors.
pub(super) async fn collect(
    op: &str,
    find: impl std::future::IntoFuture<Output = mongodb::error::Result<mongodb::Cursor<Document>>>,
) -> StoreResult<Vec<Document>> {
    find.await
        .map_err(|e| mongo_err(op, &e))?
        .try_collect()
        .await
        .map_err(|e| mongo_err(op, &e))
}

impl MongoStore {
    /// Reads a live session document (outside a transaction).
    async fn read_live(&self, at: &At<'_>, projection: Option<Document>) -> StoreResult<Document> {
        let mut find = self.c.sessions.find_one(self.live(&at.key));
        if let Some(p) = projection {
            find = find.projection(p);
        }
        find.await
            .map_err(|e| mongo_err("reading a session", &e))?
            .ok_or_else(|| StoreError::session_not_found(at.sid))
    }

    /// Reads a live session's uid and one agent's summary (outside a transaction).
    async fn read_agent_summary(&self, at: &At<'_>, aid: &str) -> StoreResult<(i64, u64, u64)> {
        let e = enc(aid);
        let mut proj = doc! { "uid": 1 };
        proj.insert(format!("agents.{e}"), 1);
        let d = self.read_live(at, Some(proj)).await?;
        let (v, n) =
            agent_summary(&d, &e).ok_or_else(|| StoreError::agent_not_found(at.sid, aid))?;
        Ok((uid_of(&d)?, v, n))
    }
}

fn agent_from_doc(aid: &str, d: &Document, version: u64, message_count: u64) -> StoreResult<Agent> {
    Ok(Agent {
        agent_id: aid.to_owned(),
        body: from_doc_text(d, "body", "agent document")?,
        created_at: date_ms(d, "created_at"),
        updated_at: date_ms(d, "updated_at"),
        version,
        message_count,
    })
}

#[async_trait]
impl SessionData for MongoStore {
    async fn create_session(&self, t: &Tenant, new: NewSession) -> StoreResult<Session> {
        let sid = new
            .session_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let session_type = new
            .session_type
            .unwrap_or_else(|| DEFAULT_SESSION_TYPE.to_owned());
        let metadata = new.metadata.unwrap_or_default();
        let at = &At::new(t.as_str(), &sid);
        let (session_type, metadata) = (&session_type, &metadata);
        self.mutate(
            "create_session",
            &at.key,
            || self.create_fast(at, session_type, metadata),
            |mut s| async move {
                let r = self.create_tx(&mut s, at, session_type, metadata).await;
                (s, r)
            },
        )
        .await
    }

    async fn get_session(&self, t: &Tenant, sid: &str) -> StoreResult<Session> {
        let d = self.read_live(&At::new(t.as_str(), sid), None).await?;
        session_from_doc(&d)
    }

    async fn batch_get_sessions(&self, t: &Tenant, ids: &[String]) -> StoreResult<Vec<Session>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| At::new(t.as_str(), id).key).collect();
        let mut filter = doc! { "_id": { "$in": &keys } };
        add_live(&mut filter, &self.retention());
        let docs = collect("batch_get_sessions", self.c.sessions.find(filter)).await?;
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
        let (after, end) = tenant_key_range(t.as_str(), q.after.as_deref());
        let mut filter = doc! { "_id": { "$gt": after, "$lt": end } };
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
        let at = &At::new(t.as_str(), sid);
        let filter = &self.live(&at.key);
        let payload = &serde_json::Value::Object(JsonObject::new());
        let uid = self
            .transaction("delete_session", Some(&at.key), |mut s| async move {
                let r = self.delete_tx(&mut s, at, filter, now_ms(), payload).await;
                (s, r)
            })
            .await?;
        self.spawn_purge(&at.key, uid);
        Ok(())
    }

    async fn get_metadata(&self, t: &Tenant, sid: &str) -> StoreResult<JsonObject> {
        let at = &At::new(t.as_str(), sid);
        let d = self.read_live(at, Some(doc! { "metadata": 1 })).await?;
        Ok(d.get_document("metadata")
            .map(doc_to_obj)
            .unwrap_or_default())
    }

    async fn change_metadata_of_type(
        &self,
        t: &Tenant,
        sid: &str,
        session_type: Option<&str>,
        change: &MetadataChange,
    ) -> StoreResult<MetadataResult> {
        let mut at = At::new(t.as_str(), sid);
        at.session_type = session_type;
        let at = &at;
        let res = self
            .mutate(
                "change_metadata",
                &at.key,
                || self.metadata_fast(at, change),
                |mut s| async move {
                    let r = self.change_metadata_tx(&mut s, at, change).await;
                    (s, r)
                },
            )
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

    async fn add_feedback_of_type(
        &self,
        t: &Tenant,
        sid: &str,
        session_type: Option<&str>,
        body: JsonObject,
    ) -> StoreResult<Feedback> {
        let mut at = At::new(t.as_str(), sid);
        at.session_type = session_type;
        let at = &at;
        let body = &body;
        self.mutate(
            "add_feedback",
            &at.key,
            || self.feedback_fast(at, body),
            |mut s| async move {
                let r = self.add_feedback_tx(&mut s, at, body).await;
                (s, r)
            },
        )
        .await
    }

    async fn list_feedbacks(&self, t: &Tenant, sid: &str) -> StoreResult<Vec<Feedback>> {
        let at = &At::new(t.as_str(), sid);
        let d = self.read_live(at, Some(doc! { "uid": 1 })).await?;
        let find = self
            .c
            .feedbacks
            .find(child(&at.key, uid_of(&d)?))
            .sort(doc! { "idx": 1 });
        let docs = collect("list_feedbacks", find).await?;
        docs.iter()
            .map(|d| {
                Ok(Feedback {
                    body: from_doc_text(d, "body", "feedback document")?,
                })
            })
            .collect()
    }
}

#[async_trait]
impl AgentData for MongoStore {
    async fn put_agent(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        body: JsonObject,
        if_match: Option<u64>,
    ) -> StoreResult<(Agent, bool)> {
        let at = &At::new(t.as_str(), sid);
        let text = super::codec::to_json_text(&body)?;
        let body = (&body, text.as_str());
        self.mutate(
            "put_agent",
            &at.key,
            || self.put_agent_fast(at, aid, body, if_match),
            |mut s| async move {
                let r = self.put_agent_tx(&mut s, at, aid, body, if_match).await;
                (s, r)
            },
        )
        .await
    }

    async fn get_agent(&self, t: &Tenant, sid: &str, aid: &str) -> StoreResult<Agent> {
        let at = &At::new(t.as_str(), sid);
        let (uid, version, message_count) = self.read_agent_summary(at, aid).await?;
        let mut filter = child(&at.key, uid);
        filter.insert("agent_id", aid);
        let d = self
            .c
            .agents
            .find_one(filter)
            .await
            .map_err(|e| mongo_err("get_agent", &e))?
            .ok_or_else(|| StoreError::agent_not_found(sid, aid))?;
        agent_from_doc(aid, &d, version, message_count)
    }

    async fn list_agents(&self, t: &Tenant, sid: &str) -> StoreResult<Vec<Agent>> {
        let at = &At::new(t.as_str(), sid);
        let d = self
            .read_live(at, Some(doc! { "uid": 1, "agents": 1 }))
            .await?;
        let ids = agent_ids(&d);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let find = self.c.agents.find(child(&at.key, uid_of(&d)?));
        let docs = collect("list_agents", find).await?;
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
            out.push(agent_from_doc(aid, a, version, message_count)?);
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
        let at = &At::new(t.as_str(), sid);
        let input = &input;
        self.mutate(
            "append_message",
            &at.key,
            || self.append_fast(at, aid, input),
            |mut s| async move {
                let r = self.append_tx(&mut s, at, aid, input).await;
                (s, r)
            },
        )
        .await
    }

    async fn write_batch(&self, t: &Tenant, sid: &str, writes: Vec<BatchWrite>) -> BatchOutcome {
        if self.writer.is_some() && writes.len() > 1 {
            let at = &At::new(t.as_str(), sid);
            let turn = self.locks.lock(&at.key).await;
            match self.batch_fast(at, &writes).await {
                Fast::Done(Ok(done)) => return BatchOutcome { done, failed: None },
                Fast::Done(Err(e)) => {
                    return BatchOutcome {
                        done: Vec::new(),
                        failed: Some(e),
                    };
                }
                Fast::Fallback => drop(turn),
            }
        }
        write_one_by_one(self, t, sid, writes).await
    }

    async fn list_messages(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        range: MessageRange,
    ) -> StoreResult<(Vec<Message>, u64)> {
        let at = &At::new(t.as_str(), sid);
        let (uid, _, total) = self.read_agent_summary(at, aid).await?;
        let (from, to) = message_bounds(range, total);
        if from >= to {
            return Ok((Vec::new(), total));
        }
        let mut filter = child(&at.key, uid);
        filter.insert("agent_id", aid);
        filter.insert(
            "message_id",
            doc! { "$gte": to_i64(from), "$lt": to_i64(to) },
        );
        // One `find` for the whole range: the server sends it in batches of
        // at most 16 MB, and reading stops once the messages read reach
        // `max_read_bytes` (the rest of the range is left to the caller).
        let count = to - from;
        let err = |e: &mongodb::error::Error| mongo_err("list_messages", e);
        let mut cursor = self
            .c
            .messages
            .find(filter)
            .sort(doc! { "message_id": 1 })
            // The limit lets the server close the cursor with the batch (no
            // `getMore` to learn that the range has ended).
            .limit(i64::try_from(count).unwrap_or(i64::MAX))
            .batch_size(u32::try_from(count).unwrap_or(u32::MAX))
            .await
            .map_err(|e| err(&e))?;
        let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(1024));
        let mut budget = ReadBudget::new(self.max_read_bytes);
        while let Some(d) = cursor.try_next().await.map_err(|e| err(&e))? {
            if !budget.take(d.get_str("doc").map_or(0, str::len)) {
                break;
            }
            out.push(from_doc_text::<Message>(&d, "doc", "message document")?);
        }
        Ok((out, total))
    }

    async fn get_message(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        mid: u64,
    ) -> StoreResult<Message> {
        let at = &At::new(t.as_str(), sid);
        let (uid, _, _) = self.read_agent_summary(at, aid).await?;
        let d = self
            .c
            .messages
            .find_one(message_filter(&at.key, uid, aid, mid))
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
        let at = &At::new(t.as_str(), sid);
        let patch = &patch;
        self.transaction("update_message", Some(&at.key), |mut s| async move {
            let r = self.update_message_tx(&mut s, at, aid, mid, patch).await;
            (s, r)
        })
        .await
    }
}
