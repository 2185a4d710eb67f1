//! Indexes, and the start-up migration of databases written by older
//! versions.
//!
//! Every unique index of a collection holding session data starts with the
//! collection's shard key (`key`, or `_id`), as MongoDB requires of unique
//! indexes on a sharded collection.
//!
//! ## Layout versions (`meta` collection, `{_id: "schema", version}`)
//! - **1** (no `schema` document): agents, messages and feedbacks are found
//!   by the incarnation `uid` alone, with unique indexes on `(uid, …)`.
//! - **2**: they also carry the session `key` (the shard key), every filter
//!   names it, and the unique indexes are `(key, uid, …)`.
//!
//! [`MongoStore::migrate`] brings a version-1 database to version 2: it sets
//! `key` on every child of every session incarnation it can name (sessions,
//! tombstones and pending purges), drops the version-1 unique indexes, and
//! records the version. Each step is idempotent, so gateways starting
//! together, or a start interrupted half-way, end in the same state. Stop
//! gateways of the older version before the first one of this version
//! starts: children they write afterwards would lack `key`.

use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};

use super::client::MongoStore;
use super::codec::int;
use super::error::{error_code, mongo_err};
use crate::config::MongoConfig;
use crate::store::StoreResult;

/// The layout this version writes.
pub(super) const SCHEMA_VERSION: i64 = 2;

/// MongoDB's `IndexNotFound`.
const INDEX_NOT_FOUND: i32 = 27;
/// MongoDB's `NamespaceNotFound`.
const NAMESPACE_NOT_FOUND: i32 = 26;

fn index(keys: Document, unique: bool) -> IndexModel {
    let model = IndexModel::builder().keys(keys);
    if unique {
        model
            .options(IndexOptions::builder().unique(true).build())
            .build()
    } else {
        model.build()
    }
}

/// An index of the documents matching `filter` only.
fn partial_index(keys: Document, filter: Document) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(
            IndexOptions::builder()
                .partial_filter_expression(filter)
                .build(),
        )
        .build()
}

/// The retention sweep's index: per type, live sessions last changed before
/// a cut-off. Created by the first sweep that has sessions to expire, so a
/// deployment without session retention does not pay for it on every write.
pub(super) fn retention_index() -> IndexModel {
    index(doc! { "session_type": 1, "updated_at": 1 }, false)
}

impl MongoStore {
    /// Creates the retention sweep's index unless this process already
    /// has (idempotent on the server; a failure is retried by the next sweep).
    pub(super) async fn ensure_retention_index(&self) -> StoreResult<()> {
        self.retention_index
            .get_or_try_init(|| async {
                self.c
                    .sessions
                    .create_index(retention_index())
                    .await
                    .map(|_| ())
                    .map_err(|e| mongo_err("creating the retention index on sessions", &e))
            })
            .await
            .copied()
    }

    /// Creates the indexes the queries of this version need at start-up.
    /// Idempotent; indexes earlier versions created are left in place.
    pub(super) async fn create_indexes(&self, cfg: &MongoConfig) -> StoreResult<()> {
        // Every write changes a session's `updated_at`, so each index on it
        // costs every write an index update (about 10 % of the server's CPU
        // per write, BENCHMARKS.md "Which write design is left to try"):
        // only tombstones are indexed by default (the event sweep removes
        // those whose window has passed). The retention sweep's index is
        // made when retention first has something to expire
        // (`ensure_retention_index`), `updated_at` alone on request.
        let mut session_idx = vec![partial_index(
            doc! { "deleted": 1, "updated_at": 1 },
            doc! { "deleted": true },
        )];
        if cfg.index_updated_at {
            session_idx.push(index(doc! { "updated_at": 1 }, false));
        }
        for f in &cfg.metadata_index_fields {
            let mut keys = Document::new();
            keys.insert(format!("metadata.{f}"), 1);
            session_idx.push(index(keys, false));
        }
        let plan: Vec<(&Collection<Document>, Vec<IndexModel>)> = vec![
            (&self.c.sessions, session_idx),
            (
                &self.c.agents,
                vec![index(doc! { "key": 1, "uid": 1, "agent_id": 1 }, true)],
            ),
            (
                &self.c.messages,
                vec![index(
                    doc! { "key": 1, "uid": 1, "agent_id": 1, "message_id": 1 },
                    true,
                )],
            ),
            (
                &self.c.feedbacks,
                vec![index(doc! { "key": 1, "uid": 1, "idx": 1 }, true)],
            ),
            (
                &self.c.events,
                vec![
                    index(doc! { "key": 1, "seq": 1 }, true),
                    // `events_since` and the retention sweep (the window is
                    // set at run time, so it is swept, not a TTL index).
                    index(doc! { "ts": 1, "key": 1, "seq": 1 }, false),
                    // The after-hook queue.
                    index(doc! { "hooks_pending": 1, "lease_until": 1 }, false),
                ],
            ),
            (
                &self.c.outbox,
                vec![
                    index(doc! { "state": 1, "next_attempt_at": 1 }, false),
                    index(doc! { "created_at": 1 }, false),
                    // A tenant admin's view of its own outbox.
                    index(doc! { "tenant": 1, "created_at": 1 }, false),
                ],
            ),
            (&self.c.purges, vec![index(doc! { "key": 1 }, false)]),
        ];
        for (coll, models) in plan {
            coll.create_indexes(models)
                .await
                .map_err(|e| mongo_err(&format!("creating indexes on {}", coll.name()), &e))?;
        }
        Ok(())
    }

    /// The layout version recorded in the database (1 when none is).
    pub(super) async fn schema_version(&self) -> StoreResult<i64> {
        let d = self
            .c
            .meta
            .find_one(doc! { "_id": "schema" })
            .await
            .map_err(|e| mongo_err("reading the schema version", &e))?;
        Ok(d.and_then(|d| int(d.get("version"))).unwrap_or(1))
    }

    /// Brings the database to [`SCHEMA_VERSION`] (see the module docs).
    /// Idempotent; a no-op once the version is recorded.
    pub(super) async fn migrate(&self) -> StoreResult<()> {
        if self.schema_version().await? >= SCHEMA_VERSION {
            return Ok(());
        }
        let started = std::time::Instant::now();
        tracing::info!(
            "migrating the MongoDB layout to version {SCHEMA_VERSION} (session keys on children)"
        );
        let err = |e: &mongodb::error::Error| mongo_err("migrating to layout 2", e);
        // Every incarnation the database can name: live sessions and
        // tombstones (their current uid), and purges (older uids).
        let mut owners: Vec<(String, i64)> = Vec::new();
        let sessions: Vec<Document> = self
            .c
            .sessions
            .find(doc! {})
            .projection(doc! { "_id": 1, "uid": 1 })
            .await
            .map_err(|e| err(&e))?
            .try_collect()
            .await
            .map_err(|e| err(&e))?;
        let purges: Vec<Document> = self
            .c
            .purges
            .find(doc! {})
            .await
            .map_err(|e| err(&e))?
            .try_collect()
            .await
            .map_err(|e| err(&e))?;
        for (d, key_field) in sessions
            .iter()
            .map(|d| (d, "_id"))
            .chain(purges.iter().map(|d| (d, "key")))
        {
            let uid = if key_field == "_id" {
                int(d.get("uid"))
            } else {
                int(d.get("_id"))
            };
            if let (Ok(key), Some(uid)) = (d.get_str(key_field), uid) {
                owners.push((key.to_owned(), uid));
            }
        }
        let mut children = 0u64;
        for (key, uid) in &owners {
            for coll in [&self.c.agents, &self.c.messages, &self.c.feedbacks] {
                let r = coll
                    .update_many(
                        doc! { "uid": *uid, "key": { "$exists": false } },
                        doc! { "$set": { "key": key } },
                    )
                    .await
                    .map_err(|e| err(&e))?;
                children += r.modified_count;
            }
        }
        let old: [(&Collection<Document>, &str); 3] = [
            (&self.c.agents, "uid_1_agent_id_1"),
            (&self.c.messages, "uid_1_agent_id_1_message_id_1"),
            (&self.c.feedbacks, "uid_1_idx_1"),
        ];
        for (coll, name) in old {
            match coll.drop_index(name).await {
                Ok(()) => {}
                Err(e) if matches!(error_code(&e), Some(INDEX_NOT_FOUND | NAMESPACE_NOT_FOUND)) => {
                }
                Err(e) => return Err(err(&e)),
            }
        }
        self.c
            .meta
            .update_one(
                doc! { "_id": "schema" },
                doc! { "$max": { "version": SCHEMA_VERSION } },
            )
            .upsert(true)
            .await
            .map_err(|e| err(&e))?;
        tracing::info!(
            sessions = owners.len(),
            children,
            ms = started.elapsed().as_millis() as u64,
            "MongoDB layout migrated to version {SCHEMA_VERSION}"
        );
        Ok(())
    }
}
