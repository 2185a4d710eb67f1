//! "Raw": the same work as the gateway's MongoDB store, done directly with the
//! Rust driver from the benchmark process (no HTTP, no gateway).
//!
//! Each write is what `gateway/src/store/mongo.rs` does for it — one
//! multi-document transaction holding the conditional `findOneAndUpdate` on the
//! session document (bumping `seq`, the agent counters, `updated_at`), the
//! child document (agent / message / feedback) and the change event — with the
//! same collections, indexes, document shapes (JSON text fields) and write
//! concern (`majority`, journaled). Reads are the same queries (session by
//! `_id`; latest N = agent counter read + ranged find on the messages index).
//! What raw leaves out: HTTP, JSON request/response (de)serialisation in the
//! gateway, validation, hooks, the per-session in-process lock and retries.

use std::sync::Arc;

use anyhow::{Context, bail};
use futures::TryStreamExt;
use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::options::{
    Acknowledgment, ClientOptions, IndexOptions, ReadPreference, ReturnDocument, SelectionCriteria,
    WriteConcern,
};
use mongodb::{Client, ClientSession, Collection, IndexModel};
use serde_json::value::RawValue;

use crate::http::{METRICS, agent_body, assistant_message, user_message};

/// The raw driver target.
#[derive(Clone)]
pub struct Raw {
    client: Client,
    sessions: Collection<Document>,
    agents: Collection<Document>,
    messages: Collection<Document>,
    feedbacks: Collection<Document>,
    events: Collection<Document>,
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn int(d: &Document, k: &str) -> i64 {
    match d.get(k) {
        Some(Bson::Int64(i)) => *i,
        Some(Bson::Int32(i)) => i64::from(*i),
        Some(Bson::Double(f)) => *f as i64,
        _ => 0,
    }
}

fn agent_n(d: &Document, aid: &str) -> i64 {
    d.get_document("agents")
        .ok()
        .and_then(|a| a.get_document(aid).ok())
        .map_or(0, |a| int(a, "n"))
}

#[derive(serde::Serialize)]
struct Msg<'a> {
    message_id: i64,
    message: &'a RawValue,
    redact_message: Option<&'a RawValue>,
    event_loop_metrics: Option<serde_json::Value>,
    created_at: String,
    updated_at: String,
}

impl Raw {
    /// Connects like the gateway does (pool 100, w=majority, j=true) and
    /// creates the gateway's indexes in database `db`.
    pub async fn connect(uri: &str, db: &str) -> anyhow::Result<Arc<Self>> {
        let mut o = ClientOptions::parse(uri)
            .await
            .context("parsing the MongoDB URI")?;
        o.app_name = Some("bench-raw".into());
        o.max_pool_size = Some(100);
        o.min_pool_size = Some(0);
        o.write_concern = Some(
            WriteConcern::builder()
                .w(Acknowledgment::Majority)
                .journal(true)
                .build(),
        );
        o.retry_reads = Some(true);
        o.retry_writes = Some(true);
        let client = Client::with_options(o)?;
        let d = client.database(db);
        let r = Self {
            sessions: d.collection("sessions"),
            agents: d.collection("agents"),
            messages: d.collection("messages"),
            feedbacks: d.collection("feedbacks"),
            events: d.collection("events"),
            client,
        };
        let idx = |k: Document, unique: bool| {
            IndexModel::builder()
                .keys(k)
                .options(IndexOptions::builder().unique(unique).build())
                .build()
        };
        r.sessions
            .create_indexes([
                idx(doc! {"created_at": 1}, false),
                idx(doc! {"updated_at": 1}, false),
            ])
            .await?;
        r.agents
            .create_index(idx(doc! {"uid": 1, "agent_id": 1}, true))
            .await?;
        r.messages
            .create_index(idx(doc! {"uid": 1, "agent_id": 1, "message_id": 1}, true))
            .await?;
        r.feedbacks
            .create_index(idx(doc! {"uid": 1, "idx": 1}, true))
            .await?;
        r.events
            .create_indexes([
                idx(doc! {"key": 1, "seq": 1}, true),
                idx(doc! {"ts": 1, "key": 1, "seq": 1}, false),
                idx(doc! {"hooks_pending": 1, "lease_until": 1}, false),
            ])
            .await?;
        Ok(Arc::new(r))
    }

    async fn begin(&self) -> anyhow::Result<ClientSession> {
        let mut s = self.client.start_session().await?;
        s.start_transaction()
            .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
            .await?;
        Ok(s)
    }

    fn live(key: &str) -> Document {
        doc! { "_id": key, "deleted": { "$ne": true } }
    }

    #[allow(clippy::too_many_arguments)]
    async fn event(
        &self,
        s: &mut ClientSession,
        sid: &str,
        stype: &str,
        seq: i64,
        kind: &str,
        now: i64,
        payload: serde_json::Value,
    ) -> anyhow::Result<()> {
        let ev = serde_json::json!({
            "tenant": "default", "session_id": sid, "session_type": stype, "seq": seq,
            "type": kind, "ts": now, "payload": payload,
        });
        self.events
            .insert_one(doc! {
                "tenant": "default", "session_id": sid, "key": format!("default/{sid}"), "seq": seq,
                "type": kind, "doc": serde_json::to_string(&ev)?, "ts": DateTime::from_millis(now),
                "hooks_pending": false, "lease_until": 0i64,
            })
            .session(&mut *s)
            .await?;
        Ok(())
    }

    /// Creates a session (upsert over a tombstone + event).
    pub async fn create_session(&self, sid: &str) -> anyhow::Result<()> {
        let key = format!("default/{sid}");
        let now = now_ms();
        let uid = (rand::random::<i64>() & i64::MAX).max(1);
        let meta = doc! { "status": "new", "user": { "id": format!("u-{sid}"), "tier": "gold" }, "channel": "web" };
        let mut s = self.begin().await?;
        let after = self
            .sessions
            .find_one_and_update(
                doc! { "_id": &key, "deleted": true },
                doc! {
                    "$set": {
                        "tenant": "default", "session_id": sid, "session_type": "AGENT",
                        "created_at": DateTime::from_millis(now), "updated_at": DateTime::from_millis(now),
                        "metadata": meta.clone(), "uid": uid, "agents": {}, "feedbacks": 0i64, "deleted": false,
                    },
                    "$inc": { "seq": 1i64 },
                },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .projection(doc! { "seq": 1 })
            .session(&mut s)
            .await?
            .context("upsert returned nothing")?;
        let payload = serde_json::json!({ "session_type": "AGENT", "metadata": Bson::Document(meta).into_relaxed_extjson() });
        self.event(
            &mut s,
            sid,
            "AGENT",
            int(&after, "seq"),
            "session.created",
            now,
            payload,
        )
        .await?;
        s.commit_transaction().await?;
        Ok(())
    }

    /// Creates or replaces an agent (session counters + agent upsert + event).
    pub async fn put_agent(&self, sid: &str, aid: &str, turn: u64) -> anyhow::Result<()> {
        let key = format!("default/{sid}");
        let now = now_ms();
        let body = agent_body(aid, turn);
        let mut inc = doc! { "seq": 1i64 };
        inc.insert(format!("agents.{aid}.v"), 1i64);
        inc.insert(format!("agents.{aid}.n"), 0i64);
        let mut proj = doc! { "uid": 1, "seq": 1, "session_type": 1 };
        proj.insert(format!("agents.{aid}"), 1);
        let mut s = self.begin().await?;
        let after = self
            .sessions
            .find_one_and_update(
                Self::live(&key),
                doc! { "$inc": inc, "$set": { "updated_at": DateTime::from_millis(now) } },
            )
            .return_document(ReturnDocument::After)
            .projection(proj)
            .session(&mut s)
            .await?
            .context("session not found")?;
        let uid = int(&after, "uid");
        let version = after
            .get_document("agents")
            .ok()
            .and_then(|a| a.get_document(aid).ok())
            .map_or(0, |a| int(a, "v"));
        self.agents
            .find_one_and_update(
                doc! { "uid": uid, "agent_id": aid },
                doc! { "$set": { "body": &body, "updated_at": DateTime::from_millis(now) }, "$setOnInsert": { "created_at": DateTime::from_millis(now) } },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .projection(doc! { "created_at": 1 })
            .session(&mut s)
            .await?;
        let payload =
            serde_json::json!({ "agent_id": aid, "version": version, "created": version == 1 });
        self.event(
            &mut s,
            sid,
            after.get_str("session_type").unwrap_or("AGENT"),
            int(&after, "seq"),
            "agent.updated",
            now,
            payload,
        )
        .await?;
        s.commit_transaction().await?;
        Ok(())
    }

    /// Appends message `i` (counter bump + message insert + event).
    pub async fn append(&self, sid: &str, aid: &str, i: u64) -> anyhow::Result<()> {
        let key = format!("default/{sid}");
        let now = now_ms();
        let text = if i.is_multiple_of(2) {
            user_message(i)
        } else {
            assistant_message(i)
        };
        let metrics: Option<serde_json::Value> =
            (!i.is_multiple_of(2)).then(|| serde_json::from_str(METRICS).unwrap_or_default());
        let mut filter = Self::live(&key);
        filter.insert(format!("agents.{aid}"), doc! { "$exists": true });
        let mut inc = doc! { "seq": 1i64 };
        inc.insert(format!("agents.{aid}.n"), 1i64);
        let mut proj = doc! { "uid": 1, "seq": 1, "session_type": 1 };
        proj.insert(format!("agents.{aid}"), 1);
        let mut s = self.begin().await?;
        let after = self
            .sessions
            .find_one_and_update(
                filter,
                doc! { "$inc": inc, "$set": { "updated_at": DateTime::from_millis(now) } },
            )
            .return_document(ReturnDocument::After)
            .projection(proj)
            .session(&mut s)
            .await?
            .context("session or agent not found")?;
        let uid = int(&after, "uid");
        let next = agent_n(&after, aid) - 1;
        let raw: Box<RawValue> = RawValue::from_string(text)?;
        let msg = Msg {
            message_id: next,
            message: &raw,
            redact_message: None,
            event_loop_metrics: metrics,
            created_at: rfc3339(now),
            updated_at: rfc3339(now),
        };
        let doc_text = serde_json::to_string(&msg)?;
        self.messages
            .insert_one(doc! { "uid": uid, "agent_id": aid, "message_id": next, "doc": &doc_text })
            .session(&mut s)
            .await?;
        let payload =
            serde_json::json!({ "agent_id": aid, "message": serde_json::to_value(&msg)? });
        self.event(
            &mut s,
            sid,
            after.get_str("session_type").unwrap_or("AGENT"),
            int(&after, "seq"),
            "message.appended",
            now,
            payload,
        )
        .await?;
        s.commit_transaction().await?;
        Ok(())
    }

    /// Latest `n` messages: agent counter read + ranged find, parsed.
    pub async fn list_latest(&self, sid: &str, aid: &str, n: i64) -> anyhow::Result<usize> {
        let key = format!("default/{sid}");
        let mut proj = doc! { "uid": 1 };
        proj.insert(format!("agents.{aid}"), 1);
        let d = self
            .sessions
            .find_one(Self::live(&key))
            .projection(proj)
            .await?
            .context("session not found")?;
        let total = agent_n(&d, aid);
        let docs: Vec<Document> = self
            .messages
            .find(doc! { "uid": int(&d, "uid"), "agent_id": aid, "message_id": { "$gte": (total - n).max(0), "$lt": total } })
            .sort(doc! { "message_id": 1 })
            .await?
            .try_collect()
            .await?;
        let mut out = Vec::with_capacity(docs.len());
        for m in &docs {
            let v: serde_json::Value = serde_json::from_str(m.get_str("doc")?)?;
            out.push(v);
        }
        let body = serde_json::to_vec(&serde_json::json!({ "messages": out, "total": total }))?;
        Ok(body.len())
    }

    /// Session header by `_id`, converted to JSON.
    pub async fn get_session(&self, sid: &str) -> anyhow::Result<usize> {
        let key = format!("default/{sid}");
        let d = self
            .sessions
            .find_one(Self::live(&key))
            .await?
            .context("session not found")?;
        let v = Bson::Document(d).into_relaxed_extjson();
        Ok(serde_json::to_vec(&v)?.len())
    }

    /// Metadata patch (`$set` of dotted paths + event), returning the metadata before.
    pub async fn patch_metadata(&self, sid: &str, i: u64) -> anyhow::Result<()> {
        let key = format!("default/{sid}");
        let now = now_ms();
        let last_seen = format!("2026-11-24T10:00:{:02}Z", i % 60);
        let mut s = self.begin().await?;
        let before = self
            .sessions
            .find_one_and_update(
                Self::live(&key),
                doc! {
                    "$set": { "updated_at": DateTime::from_millis(now), "metadata.status": "active", "metadata.turns": i as i64, "metadata.user.last_seen": &last_seen },
                    "$inc": { "seq": 1i64 },
                },
            )
            .return_document(ReturnDocument::Before)
            .projection(doc! { "metadata": 1, "seq": 1, "session_type": 1 })
            .session(&mut s)
            .await?
            .context("session not found")?;
        let payload = serde_json::json!({ "set": { "status": "active", "turns": i, "user.last_seen": last_seen } });
        self.event(
            &mut s,
            sid,
            before.get_str("session_type").unwrap_or("AGENT"),
            int(&before, "seq") + 1,
            "metadata.updated",
            now,
            payload,
        )
        .await?;
        s.commit_transaction().await?;
        Ok(())
    }

    /// Adds a feedback (counter + feedback insert + event).
    pub async fn add_feedback(&self, sid: &str) -> anyhow::Result<()> {
        let key = format!("default/{sid}");
        let now = now_ms();
        let mut s = self.begin().await?;
        let after = self
            .sessions
            .find_one_and_update(
                Self::live(&key),
                doc! { "$inc": { "seq": 1i64, "feedbacks": 1i64 }, "$set": { "updated_at": DateTime::from_millis(now) } },
            )
            .return_document(ReturnDocument::After)
            .projection(doc! { "uid": 1, "seq": 1, "feedbacks": 1, "session_type": 1 })
            .session(&mut s)
            .await?
            .context("session not found")?;
        let body = serde_json::json!({ "rating": "up", "comment": "helpful, found the SLA breach quickly", "created_at": rfc3339(now) });
        let idx = int(&after, "feedbacks") - 1;
        if idx < 0 {
            bail!("feedback counter");
        }
        self.feedbacks
            .insert_one(doc! { "uid": int(&after, "uid"), "idx": idx, "body": serde_json::to_string(&body)? })
            .session(&mut s)
            .await?;
        self.event(
            &mut s,
            sid,
            after.get_str("session_type").unwrap_or("AGENT"),
            int(&after, "seq"),
            "feedback.added",
            now,
            serde_json::json!({ "feedback": body }),
        )
        .await?;
        s.commit_transaction().await?;
        Ok(())
    }

    /// Drops the database (best effort).
    pub async fn drop_db(&self) {
        let db = self.client.database(self.sessions.namespace().db.as_str());
        let _ = db.drop().await;
    }

    /// The client (to drop the gateway's databases afterwards).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Pre-fills agent `aid` of session `sid` in the gateway's database `db`
    /// with messages `from..to` (batched `insertMany`) and sets the agent's
    /// message counter to `to`, following the schema in
    /// `gateway/src/store/mongo.rs`. Much faster than HTTP appends, which a
    /// gateway serialises per session.
    pub async fn prefill(
        &self,
        db: &str,
        sid: &str,
        aid: &str,
        from: u64,
        to: u64,
    ) -> anyhow::Result<()> {
        let d = self.client.database(db);
        let sessions: Collection<Document> = d.collection("sessions");
        let messages: Collection<Document> = d.collection("messages");
        let key = format!("default/{sid}");
        let mut proj = doc! { "uid": 1 };
        proj.insert(format!("agents.{aid}"), 1);
        let sd = sessions
            .find_one(Self::live(&key))
            .projection(proj)
            .await?
            .context("prefill: session not found")?;
        let uid = int(&sd, "uid");
        let n = agent_n(&sd, aid) as u64;
        if n != from {
            bail!("prefill: agent has {n} messages, expected {from}");
        }
        let now = now_ms();
        let mut i = from;
        while i < to {
            let end = (i + 1000).min(to);
            let mut batch = Vec::with_capacity((end - i) as usize);
            for k in i..end {
                let text = if k.is_multiple_of(2) {
                    user_message(k)
                } else {
                    assistant_message(k)
                };
                let raw: Box<RawValue> = RawValue::from_string(text)?;
                let msg = Msg {
                    message_id: k as i64,
                    message: &raw,
                    redact_message: None,
                    event_loop_metrics: None,
                    created_at: rfc3339(now),
                    updated_at: rfc3339(now),
                };
                batch.push(doc! { "uid": uid, "agent_id": aid, "message_id": k as i64, "doc": serde_json::to_string(&msg)? });
            }
            messages.insert_many(batch).await?;
            i = end;
        }
        let mut set = Document::new();
        set.insert(format!("agents.{aid}.n"), to as i64);
        sessions
            .update_one(doc! { "_id": &key }, doc! { "$set": set })
            .await?;
        Ok(())
    }
}
