//! The MongoDB store: the official driver with one pooled client.
//!
//! ## Layout of this module
//! The files form layers: each file imports only from files below it in
//! this table, so no import circles back. The `impl MongoStore` blocks are
//! spread over the files of their concern and import the struct from
//! `client.rs`; calling each other's methods needs no import.
//!
//! | layer | file | what it holds |
//! |---|---|---|
//! | top | `mod.rs` | connecting: the client's configuration, the write-path choice, start-up; [`Backend`] and the re-export of [`MongoStore`] |
//! | impls | `outbox.rs` | the notification outbox |
//! | | `events.rs` | the event log and the after-hook queue |
//! | | `retention.rs` | the retention sweep and the purge of deleted sessions' children |
//! | | `sessions.rs` | the [`SessionData`](crate::store::SessionData) and [`AgentData`](crate::store::AgentData) methods: reads, and writes through `mutate` |
//! | | `indexes.rs` | indexes, and the start-up migration of older layouts |
//! | | `fast_path.rs` | the writes built from what this gateway knows of a session |
//! | | `writes.rs` | what each write does inside its transaction (the per-write path) |
//! | | `txn.rs` | the per-write transaction, its retries and turn-taking, the `mutate` entry of every write |
//! | state | `client.rs` | the [`MongoStore`] struct and its own field types (collections, pool statistics, per-session locks); the accessors every file uses (`live`, `retention`) |
//! | | `known.rs` | what the fast path knows of each session (a field of the store) |
//! | | `group_commit.rs` | the writer task that commits many sessions' fast writes together (a field of the store) |
//! | leaves | `codec.rs` | the stored form: BSON documents and their conversions |
//! | | `error.rs` | how driver errors map onto [`StoreError`], which are retried, the back-off and commit retry |
//!
//! `python3 scripts/module_graph.py` reports any file cycle.
//!
//! ## Schema (one database, `storage.mongodb.database`)
//! | collection | shard key | unique key | fields |
//! |---|---|---|---|
//! | `sessions` | `_id` = `"<tenant>/<sid>"` | `_id` | `tenant`, `session_id`, `session_type`, `created_at`/`updated_at` (BSON dates, ms), `metadata` (document), `uid`, `seq`, `agents`, `feedbacks`, `deleted` |
//! | `agents` | `key` = `"<tenant>/<sid>"` | `(key, uid, agent_id)` | `body` (JSON text of the client's fields), `created_at`, `updated_at` |
//! | `messages` | `key` | `(key, uid, agent_id, message_id)` | `doc`: the whole [`Message`](crate::model::Message) as JSON text (`message` kept byte for byte) |
//! | `feedbacks` | `key` | `(key, uid, idx)` | `body`: the feedback object as JSON text |
//! | `events` | `key` | `(key, seq)` | `tenant`, `session_id`, `type`, `doc` (the [`Event`](crate::model::Event) as JSON text), `ts`, `hooks_pending`, `lease_until` |
//! | `purges` | `key` | `_id` = uid | children of a deleted incarnation still to be removed |
//! | `outbox` | `_id` = item id | `_id` | the [`OutboxItem`](crate::store::OutboxItem) fields; indexed on `(state, next_attempt_at)` and `(tenant, created_at)` |
//! | `meta` | — (unsharded) | `_id` | `{_id: "schema", version}`: the layout version (see `indexes.rs`) |
//!
//! - Session and agent ids cannot contain `/`, `%` or `$`, so `"<tenant>/<sid>"`
//!   keys sort per tenant (`"<tenant>/"` ≤ key < `"<tenant>0"`), and an agent id
//!   is a field name under `agents` once its dots are encoded as `%2E`:
//!   `agents: { "<aid>": { v: <version>, n: <message count>, c: <created_at> } }`
//!   (`c` copies the agent document's creation time so the fast path can
//!   answer a `PUT` from the session alone; agents written before it was
//!   kept get it on their next put).
//! - `metadata` is stored as a BSON document (integers as `Int64`, integers above
//!   `i64::MAX` as `Decimal128`, other numbers as `Double`, key order kept) so
//!   `metadata.<path>` can be indexed (`metadata_index_fields`) and filtered.
//! - Secondary indexes on `sessions` are kept off the write path, since every
//!   write changes `updated_at`: tombstones only, on `(deleted, updated_at)`
//!   (a partial index, for the event sweep); `(session_type, updated_at)`
//!   once retention has sessions to expire; `updated_at` with
//!   `index_updated_at = true`; `metadata.<field>` as configured.
//! - `uid` is a random positive `Int64` per incarnation of a session: agents,
//!   messages and feedbacks carry it next to the session `key`. Deleting a
//!   session keeps its document as a tombstone (`deleted: true`, metadata and
//!   agents emptied, `seq` kept) so a re-created session continues its event
//!   sequence, and records the old uid in `purges`; the unreachable children
//!   are deleted in the background after the commit, and `connect` sweeps
//!   purges left behind by a crash.
//! - One document per message: appends stay small and flat however long a
//!   session grows, and no session approaches the 16 MB document limit.
//! - Retention ([`Retention`](crate::store::Retention), set at run time): sessions past it are excluded
//!   by every "live session" filter (`$nor` of per-type `updated_at` cut-offs),
//!   and [`RetentionPolicy::sweep_expired`](crate::store::RetentionPolicy::sweep_expired)
//!   deletes them like `DELETE` would, drops events older than the event
//!   window (index on `ts`) and tombstones whose events are all gone.
//!
//! ## Shard keys: every write names one session
//! Every document that belongs to a session carries the session's key
//! (`"<tenant>/<sid>"`: `_id` of `sessions`, `key` of its children, events
//! and purges), and **every write's filter names it by equality** — updates,
//! deletes, `findAndModify`, upserts and each model of the group commit's
//! `bulkWrite` (inserts carry it in the document). With each collection
//! sharded on that field (`{ key: "hashed" }`, `{ _id: "hashed" }` for
//! `sessions` and `outbox`), mongos routes every write to exactly one shard
//! and never broadcasts it; sessions spread evenly however tenants are
//! sized, and one session's children, events and history stay on one shard
//! per collection, so reads of a session (latest N messages, events after a
//! `seq`) are single-shard too. Work that spans sessions — the after-hook
//! and outbox claims, the retention sweep, `events_since` — *reads* across
//! shards and then writes each document by its key with the claim's
//! condition in the filter (claimed by one gateway only). The outbox is keyed
//! by its item id, which the gateway derives from the event and the publish
//! call: an item is delivered, retried and removed by that id alone.
//! `tests/mongo_shard_keys.rs` watches the driver's commands and fails when a
//! write's filter lacks its key. See README "Scaling" for the commands.
//!
//! A transaction spans the session document, one child and one event, each
//! on the shard of its collection that owns the session's hash: on a
//! sharded cluster it is a distributed commit unless the collections are
//! kept on one shard per hash range (zones); on a replica set it is local.
//!
//! ## Write paths
//! **Group commit** (`write_path = "auto"` on MongoDB 8.0+, the default): a
//! write of a session this gateway knows (it created or last wrote it, or read
//! it once with one `find`) is built from what it knows — `seq`, agent versions
//! and message counts, feedback count, metadata — as a conditional update of
//! the session document whose filter names that `seq`, plus the child document
//! and the event. One writer task per gateway commits every write queued
//! meanwhile, of any number of sessions, as **one `bulkWrite` command across
//! the collections plus `commitTransaction`** (`group_commit.rs`). A write
//! whose filter no longer matches (another gateway wrote the session; it
//! expired or was deleted), or whose precondition the kept state cannot decide
//! (`If-Match` that fails, a message id that is not the next one, a metadata
//! path MongoDB may refuse), is taken out of the batch and runs as its own
//! transaction below, which reads the stored state and answers
//! authoritatively (`fast_path.rs`). Several writes of one session sent
//! together (`POST …/batch`, [`AgentData::write_batch`](crate::store::AgentData::write_batch))
//! are one job: one guard carrying their summed increments and one `seq` per
//! write, then each write's document and event, committed all or none; a job
//! that cannot be built or whose guard fails is written one by one.
//!
//! **One transaction per write** (servers before 8.0, `write_path =
//! "transaction"`, and every fallback): every mutating call runs in one
//! multi-document transaction that first does a
//! conditional `findAndModify` on the session document — the conditions (live
//! session, agent present, `If-Match` version, next message id) are in the
//! filter, the update bumps `seq`, stamps `updated_at` and applies the change —
//! and then inserts the child document and the [`Event`](crate::model::Event). When the filter
//! matches nothing, a read inside the same transaction says why (a read-only
//! outcome such as an idempotent append retry aborts, writing nothing).
//! Metadata changes are `$set`/`$unset` of `metadata.<path>`; the answer is
//! computed with [`metadata::apply`](crate::metadata::apply) from the document as it was, which also
//! refuses (and so aborts) anything MongoDB would have applied differently.
//!
//! The session document is the per-session lock: two transactions writing one
//! session conflict on it and one is retried (on `TransientTransactionError`,
//! with jittered back-off, bounded in attempts and time; commits are retried on
//! `UnknownTransactionCommitResult`), so message ids stay contiguous. Within
//! one process, writers of a session also take turns on an async mutex, so
//! only writers in different gateways ever conflict.
//!
//! `complete_event` is not a transaction (a killed gateway's open transaction
//! would hold the event until the server's transaction lifetime ends it): it
//! queues outbox items with `$setOnInsert` upserts (an id already queued is
//! kept), then marks the event complete, in one ordered `bulkWrite` on 8.0+.

mod client;
mod codec;
mod error;
mod events;
mod fast_path;
mod group_commit;
mod indexes;
mod known;
mod outbox;
mod retention;
mod sessions;
mod txn;
mod writes;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mongodb::Client;
use mongodb::bson::doc;
use mongodb::options::{
    Acknowledgment, ClientOptions, Compressor, ReadPreference, SelectionCriteria, WriteConcern,
};

pub use self::client::MongoStore;
use self::client::PoolStats;
use self::error::mongo_err;
use self::group_commit::GroupCommit;
use crate::config::MongoConfig;
use crate::store::{Backend, SessionStore, StoreError, StoreMetrics, StoreResult};

fn read_preference(name: &str) -> StoreResult<ReadPreference> {
    Ok(match name {
        "primary" => ReadPreference::Primary,
        "primaryPreferred" => ReadPreference::PrimaryPreferred { options: None },
        "secondary" => ReadPreference::Secondary { options: None },
        "secondaryPreferred" => ReadPreference::SecondaryPreferred { options: None },
        "nearest" => ReadPreference::Nearest { options: None },
        other => {
            return Err(StoreError::Internal(format!(
                "mongodb: unknown read preference {other:?}"
            )));
        }
    })
}

fn write_concern(cfg: &MongoConfig) -> StoreResult<WriteConcern> {
    let w = if cfg.write_concern == "majority" {
        Acknowledgment::Majority
    } else {
        let n = cfg.write_concern.parse::<u32>().map_err(|_| {
            StoreError::Internal(format!(
                "mongodb: write concern {:?} must be \"majority\" or a number",
                cfg.write_concern
            ))
        })?;
        Acknowledgment::Nodes(n)
    };
    Ok(WriteConcern::builder().w(w).journal(cfg.journal).build())
}

impl MongoStore {
    /// Connects with one pooled client configured from `cfg`, creates the
    /// indexes (idempotent), brings a database written by an older version
    /// to the current layout (idempotent, see `indexes.rs`) and starts a
    /// sweep of unfinished purges.
    ///
    /// # Errors
    /// `Unavailable` when no server answers within the server selection
    /// timeout; `Internal` for a bad URI or a refused index.
    pub async fn connect(cfg: &MongoConfig) -> StoreResult<Self> {
        Self::connect_observed(cfg, None).await
    }

    /// [`MongoStore::connect`] with a handler that sees every command the
    /// driver sends (command monitoring: e.g. to trace them, or to check in a
    /// test that each write names its shard key).
    ///
    /// # Errors
    /// As [`MongoStore::connect`].
    pub async fn connect_observed(
        cfg: &MongoConfig,
        commands: Option<mongodb::event::EventHandler<mongodb::event::command::CommandEvent>>,
    ) -> StoreResult<Self> {
        let mut opts = ClientOptions::parse(cfg.uri.as_str())
            .await
            .map_err(|e| mongo_err("parsing the connection string", &e))?;
        if !cfg.app_name.is_empty() {
            opts.app_name = Some(cfg.app_name.clone());
        }
        opts.min_pool_size = Some(cfg.min_pool_size);
        opts.max_pool_size = Some(cfg.max_pool_size);
        opts.max_idle_time = Some(Duration::from_millis(cfg.max_idle_time_ms));
        opts.connect_timeout = Some(Duration::from_millis(cfg.connect_timeout_ms));
        opts.server_selection_timeout =
            Some(Duration::from_millis(cfg.server_selection_timeout_ms));
        if !cfg.compressors.is_empty() {
            let mut compressors = Vec::new();
            for c in &cfg.compressors {
                match c.as_str() {
                    "zlib" => compressors.push(Compressor::Zlib { level: None }),
                    other => {
                        return Err(StoreError::Internal(format!(
                            "mongodb: compressor {other:?} is not supported"
                        )));
                    }
                }
            }
            opts.compressors = Some(compressors);
        }
        opts.selection_criteria = Some(SelectionCriteria::ReadPreference(read_preference(
            &cfg.read_preference,
        )?));
        opts.write_concern = Some(write_concern(cfg)?);
        opts.retry_reads = Some(cfg.retry_reads);
        opts.retry_writes = Some(cfg.retry_writes);
        let pool = Arc::new(PoolStats::default());
        let observer = pool.clone();
        opts.cmap_event_handler = Some(mongodb::event::EventHandler::callback(move |ev| {
            observer.observe(ev);
        }));
        opts.command_event_handler = commands;
        let client =
            Client::with_options(opts).map_err(|e| mongo_err("creating the client", &e))?;
        let mut store = Self::new(client, &cfg.database, pool);
        store.writer = store.choose_write_path(cfg).await?;
        let started = std::time::Instant::now();
        tracing::info!("creating MongoDB indexes (idempotent)");
        store.create_indexes(cfg).await?;
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            "MongoDB indexes ready"
        );
        store.migrate().await?;
        tokio::spawn(retention::sweep_purges(store.c.clone()));
        Ok(store)
    }

    /// Which write path this gateway uses: the group commit when the server
    /// has `bulkWrite` (8.0+) and `write_path` (or `MONGODB_WRITE_PATH`) allows it.
    async fn choose_write_path(
        &self,
        cfg: &MongoConfig,
    ) -> StoreResult<Option<group_commit::GroupCommit>> {
        // The environment overrides the default only (e.g. to run a test
        // suite on the path older servers get).
        let wanted = match std::env::var("MONGODB_WRITE_PATH") {
            Ok(v) if !v.is_empty() && cfg.write_path == "auto" => v,
            _ => cfg.write_path.clone(),
        };
        let bulk = match wanted.as_str() {
            "transaction" => false,
            "auto" | "group_commit" => {
                let hello = self
                    .db
                    .run_command(doc! { "hello": 1 })
                    .await
                    .map_err(|e| mongo_err("hello", &e))?;
                let has = fast_path::server_has_bulk_write(&hello);
                if !has && wanted == "group_commit" {
                    return Err(StoreError::Internal(
                        "mongodb: write_path = \"group_commit\" needs MongoDB 8.0 or later (bulkWrite)"
                            .into(),
                    ));
                }
                has
            }
            other => {
                return Err(StoreError::Internal(format!(
                    "mongodb: write_path {other:?} is not one of \"auto\", \"group_commit\", \"transaction\""
                )));
            }
        };
        tracing::info!(
            write_path = if bulk { "group_commit" } else { "transaction" },
            "MongoDB write path"
        );
        Ok(bulk.then(|| group_commit::GroupCommit::start(self.client.clone())))
    }
}

#[async_trait]
impl Backend for MongoStore {
    fn name(&self) -> &'static str {
        "mongodb"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.db
            .run_command(doc! { "ping": 1 })
            .await
            .map_err(|e| mongo_err("ping", &e))?;
        Ok(())
    }

    /// Every gateway pointed at the database writes to it.
    fn is_shared(&self) -> bool {
        true
    }

    fn metrics(&self) -> StoreMetrics {
        StoreMetrics {
            pool: Some(self.pool.snapshot()),
            group_commit: self.writer.as_ref().map(GroupCommit::metrics),
            embedded_writer: None,
        }
    }
}

impl SessionStore for MongoStore {}
