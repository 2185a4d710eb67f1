//! "raw-min": the physical floor — the same 10-operation sessions straight
//! from the Rust driver with **one command per operation**, in the schema of
//! the Python library (`strands-mongodb-session-manager`): one document per
//! record, written with a single `insert`/`update`/`replace` (no transaction,
//! no change event, no counters), `w: majority, j: true`.
//!
//! | operation | command |
//! |---|---|
//! | create session | `insert` of the session document |
//! | put agent | `update` (replace, upsert) of `<sid>/<aid>` |
//! | append | `insert` of `<sid>/<aid>/<id>` (the id is the caller's) |
//! | list latest 20 | one `find` on `(session_id, agent_id, message_id)`, descending, limit 20 |
//! | patch metadata | `update` with `$set` of `metadata.<path>` |
//! | get session | `find` by `_id` |
//! | add feedback | `update` with `$push` onto the session's `feedbacks` |
//!
//! It is what a client gets with no gateway at all, and no guarantee beyond
//! each single-document write: no contiguous ids, no `If-Match`, no change
//! feed, no after-hooks.

use std::sync::Arc;

use anyhow::Context;
use futures::TryStreamExt;
use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::options::{Acknowledgment, ClientOptions, IndexOptions, WriteConcern};
use mongodb::{Client, Collection, IndexModel};

use crate::http::{METRICS, agent_body, assistant_message, user_message};

/// The one-command-per-operation target.
pub struct RawMin {
    client: Client,
    sessions: Collection<Document>,
    agents: Collection<Document>,
    messages: Collection<Document>,
}

fn now() -> DateTime {
    DateTime::now()
}

impl RawMin {
    /// Connects (pool 100, w=majority, j=true) and creates the indexes in `db`.
    pub async fn connect(uri: &str, db: &str) -> anyhow::Result<Arc<Self>> {
        let mut o = ClientOptions::parse(uri)
            .await
            .context("parsing the MongoDB URI")?;
        o.app_name = Some("bench-raw-min".into());
        o.max_pool_size = Some(100);
        o.write_concern = Some(
            WriteConcern::builder()
                .w(Acknowledgment::Majority)
                .journal(true)
                .build(),
        );
        let client = Client::with_options(o)?;
        let d = client.database(db);
        let r = Self {
            sessions: d.collection("sessions"),
            agents: d.collection("agents"),
            messages: d.collection("messages"),
            client,
        };
        r.messages
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "session_id": 1, "agent_id": 1, "message_id": 1 })
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
            )
            .await?;
        Ok(Arc::new(r))
    }

    pub async fn create_session(&self, sid: &str) -> anyhow::Result<()> {
        let t = now();
        self.sessions
            .insert_one(doc! {
                "_id": sid, "session_type": "AGENT", "created_at": t, "updated_at": t,
                "metadata": { "status": "new", "user": { "id": format!("u-{sid}"), "tier": "gold" }, "channel": "web" },
                "feedbacks": [],
            })
            .await?;
        Ok(())
    }

    pub async fn put_agent(&self, sid: &str, aid: &str, turn: u64) -> anyhow::Result<()> {
        let t = now();
        self.agents
            .replace_one(
                doc! { "_id": format!("{sid}/{aid}") },
                doc! { "session_id": sid, "agent_id": aid, "body": agent_body(aid, turn), "created_at": t, "updated_at": t },
            )
            .upsert(true)
            .await?;
        Ok(())
    }

    pub async fn append(&self, sid: &str, aid: &str, i: u64) -> anyhow::Result<()> {
        let (text, metrics) = if i.is_multiple_of(2) {
            (user_message(i), Bson::Null)
        } else {
            (assistant_message(i), Bson::String(METRICS.into()))
        };
        let t = now();
        self.messages
            .insert_one(doc! {
                "_id": format!("{sid}/{aid}/{i}"), "session_id": sid, "agent_id": aid,
                "message_id": i as i64, "message": text, "event_loop_metrics": metrics,
                "created_at": t, "updated_at": t,
            })
            .await?;
        Ok(())
    }

    pub async fn list_latest(&self, sid: &str, aid: &str, n: i64) -> anyhow::Result<usize> {
        let docs: Vec<Document> = self
            .messages
            .find(doc! { "session_id": sid, "agent_id": aid })
            .sort(doc! { "message_id": -1 })
            .limit(n)
            .await?
            .try_collect()
            .await?;
        let out: Vec<serde_json::Value> = docs
            .into_iter()
            .rev()
            .map(|d| Bson::Document(d).into_relaxed_extjson())
            .collect();
        Ok(serde_json::to_vec(&out)?.len())
    }

    pub async fn patch_metadata(&self, sid: &str, i: u64) -> anyhow::Result<()> {
        let last_seen = format!("2026-11-24T10:00:{:02}Z", i % 60);
        self.sessions
            .update_one(
                doc! { "_id": sid },
                doc! { "$set": { "updated_at": now(), "metadata.status": "active", "metadata.turns": i as i64, "metadata.user.last_seen": last_seen } },
            )
            .await?;
        Ok(())
    }

    pub async fn get_session(&self, sid: &str) -> anyhow::Result<usize> {
        let d = self
            .sessions
            .find_one(doc! { "_id": sid })
            .await?
            .context("session not found")?;
        Ok(serde_json::to_vec(&Bson::Document(d).into_relaxed_extjson())?.len())
    }

    pub async fn add_feedback(&self, sid: &str) -> anyhow::Result<()> {
        self.sessions
            .update_one(
                doc! { "_id": sid },
                doc! { "$push": { "feedbacks": { "rating": "up", "comment": "helpful, found the SLA breach quickly", "created_at": now() } } },
            )
            .await?;
        Ok(())
    }

    pub async fn drop_db(&self) {
        let _ = self
            .client
            .database(self.sessions.namespace().db.as_str())
            .drop()
            .await;
    }
}
