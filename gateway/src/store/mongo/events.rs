//! The event log and the after-hook queue.
//!
//! Events are written by the session writes themselves (`writes.rs`,
//! `fast_path.rs`), one per committed change, keyed `(key, seq)`. An event
//! whose type has after-hooks is written with `hooks_pending: true`; gateways
//! claim such events by reading candidates (across sessions) and then taking
//! each with a conditional update by its `(key, seq)` whose filter repeats
//! the claim's condition, so exactly one gateway holds a lease and the write
//! names its session.

use async_trait::async_trait;
use mongodb::Collection;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::{ReturnDocument, UpdateOneModel, WriteModel};

use super::client::MongoStore;
use super::codec::{date, date_ms, from_doc_text, outbox_fields, to_i64, uint};
use super::error::mongo_err;
use super::error::{DUPLICATE_KEY, error_code};
use super::sessions::collect;
use crate::model::{Event, Tenant};
use crate::store::{AfterHooked, EventLog, HookBacklog, OutboxItem, StoreResult, session_key};

fn events_from(docs: &[Document]) -> StoreResult<Vec<Event>> {
    docs.iter()
        .map(|d| from_doc_text::<Event>(d, "doc", "event document"))
        .collect()
}

/// Rounds of "read candidates, claim each" one claim call makes at most.
const CLAIM_ROUNDS: usize = 4;

/// A claim of queued documents (pending after-hooks, due notifications) by
/// gateways sharing the database: candidates are read across sessions, then
/// each is taken by the fields that name it (its shard key first) with `due`
/// repeated in the filter, so exactly one gateway takes it and the write
/// goes to one shard.
pub(super) struct Claim<'a> {
    pub op: &'static str,
    pub coll: &'a Collection<Document>,
    /// What makes a document claimable.
    pub due: Document,
    /// Which candidates come first.
    pub sort: Document,
    /// The fields naming one document.
    pub key: &'static [&'static str],
    /// The lease the claim sets.
    pub set: Document,
    /// Projection of the claimed documents returned (as before the claim).
    pub returned: Option<Document>,
}

impl Claim<'_> {
    /// Claims up to `limit` documents, in rounds: candidates another gateway
    /// took meanwhile are no longer due, so the next round's read skips them.
    pub async fn run(&self, limit: usize) -> StoreResult<Vec<Document>> {
        let mut out = Vec::new();
        // Each candidate is tried once per call (a zero lease leaves it due).
        let mut tried: Vec<Bson> = Vec::new();
        let mut proj = doc! { "_id": 1 };
        for k in self.key {
            proj.insert(*k, 1);
        }
        for _ in 0..CLAIM_ROUNDS {
            if out.len() >= limit {
                break;
            }
            let mut filter = self.due.clone();
            filter.insert("_id", doc! { "$nin": tried.clone() });
            let find = self
                .coll
                .find(filter)
                .sort(self.sort.clone())
                .projection(proj.clone())
                .limit(limit_i64(limit - out.len()));
            let candidates = collect(self.op, find).await?;
            if candidates.is_empty() {
                break;
            }
            tried.extend(candidates.iter().filter_map(|c| c.get("_id").cloned()));
            for c in &candidates {
                let mut filter = Document::new();
                for k in self.key {
                    filter.insert(*k, c.get(*k).cloned().unwrap_or(Bson::Null));
                }
                filter.extend(self.due.clone());
                let mut take = self
                    .coll
                    .find_one_and_update(filter, doc! { "$set": self.set.clone() })
                    .return_document(ReturnDocument::Before);
                if let Some(p) = &self.returned {
                    take = take.projection(p.clone());
                }
                if let Some(d) = take.await.map_err(|e| mongo_err(self.op, &e))? {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }
}

fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[async_trait]
impl EventLog for MongoStore {
    fn set_after_hooked(&self, kinds: AfterHooked) {
        self.after_hooked
            .store(kinds.0, std::sync::atomic::Ordering::Relaxed);
    }

    async fn latest_event_seq(&self, t: &Tenant, sid: &str) -> StoreResult<u64> {
        let d = self
            .c
            .sessions
            .find_one(doc! { "_id": session_key(t.as_str(), sid) })
            .projection(doc! { "seq": 1 })
            .await
            .map_err(|e| mongo_err("latest_event_seq", &e))?;
        Ok(d.map_or(0, |d| uint(d.get("seq"))))
    }

    async fn events_since(&self, since: i64, limit: usize) -> StoreResult<Vec<Event>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let find = self
            .c
            .events
            .find(doc! { "ts": { "$gte": date(since) } })
            .sort(doc! { "ts": 1, "key": 1, "seq": 1 })
            .limit(limit_i64(limit));
        events_from(&collect("events_since", find).await?)
    }

    async fn events_after(
        &self,
        t: &Tenant,
        sid: &str,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<Event>> {
        if limit == 0 || after >= i64::MAX as u64 {
            return Ok(Vec::new());
        }
        let find = self
            .c
            .events
            .find(doc! { "key": session_key(t.as_str(), sid), "seq": { "$gt": to_i64(after) } })
            .sort(doc! { "seq": 1 })
            .limit(limit_i64(limit));
        events_from(&collect("events_after", find).await?)
    }

    async fn claim_pending_events(
        &self,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<Event>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let claim = Claim {
            op: "claim_pending_events",
            coll: &self.c.events,
            due: doc! { "hooks_pending": true, "lease_until": { "$lte": now } },
            sort: doc! { "ts": 1, "key": 1, "seq": 1 },
            key: &["key", "seq"],
            set: doc! { "lease_until": now.saturating_add(lease_ms) },
            returned: Some(doc! { "doc": 1 }),
        };
        events_from(&claim.run(limit).await?)
    }

    /// Two queries on the `(hooks_pending, lease_until)` index: the count,
    /// and the oldest pending event's `ts` (sorted among the pending only).
    async fn hook_backlog(&self) -> StoreResult<HookBacklog> {
        let pending = doc! { "hooks_pending": true };
        let (count, oldest) = futures::try_join!(
            async { self.c.events.count_documents(pending.clone()).await },
            async {
                self.c
                    .events
                    .find_one(pending.clone())
                    .sort(doc! { "ts": 1 })
                    .projection(doc! { "_id": 0, "ts": 1 })
                    .await
            },
        )
        .map_err(|e| mongo_err("hook_backlog", &e))?;
        Ok(HookBacklog {
            pending: count,
            oldest_ts: oldest.map(|d| date_ms(&d, "ts")),
        })
    }

    async fn complete_event(
        &self,
        tenant: &str,
        session_id: &str,
        seq: u64,
        outbox: Vec<OutboxItem>,
    ) -> StoreResult<()> {
        // No multi-document transaction here, on purpose: a gateway killed
        // between a transaction's statements and its commit leaves the
        // transaction open on the server, holding the event document until
        // the server's transaction lifetime (60 s on mongod; a server that
        // reaps lazily, later still) ends it, and every claim of that event by
        // a restarted or other gateway blocks on it meanwhile, stalling all
        // after-hooks. Instead: the items, each inserted only if its id
        // (derived from the event) is new, then the event, in that order, so
        // an event is never complete without its notifications.
        let items = outbox.iter().map(|item| {
            UpdateOneModel::builder()
                .namespace(self.c.outbox.namespace())
                .filter(doc! { "_id": &item.id })
                .update(doc! { "$setOnInsert": outbox_fields(item) })
                .upsert(true)
                .build()
        });
        let done = UpdateOneModel::builder()
            .namespace(self.c.events.namespace())
            .filter(doc! { "key": session_key(tenant, session_id), "seq": to_i64(seq) })
            .update(doc! { "$set": { "hooks_pending": false } })
            .build();
        if self.writer.is_some() {
            // bulkWrite (MongoDB 8.0+): one ordered command, which the server
            // runs to the end even when this gateway dies after sending it,
            // so a crash cannot split the items from the event.
            let models: Vec<WriteModel> = items.chain([done]).map(Into::into).collect();
            self.client
                .bulk_write(models)
                .ordered(true)
                .await
                .map_err(|e| mongo_err("complete_event", &e))?;
            return Ok(());
        }
        // Older servers: one write each. A crash between them leaves the
        // event pending; its re-run finds the items it queued (unless one
        // was delivered meanwhile, which is then sent again: at least once).
        for m in items {
            let r = self
                .c
                .outbox
                .update_one(m.filter, m.update)
                .upsert(true)
                .await;
            match r {
                Ok(_) => {}
                // Two gateways upserting one id at once: the item exists.
                Err(e) if error_code(&e) == Some(DUPLICATE_KEY) => {}
                Err(e) => return Err(mongo_err("complete_event", &e)),
            }
        }
        self.c
            .events
            .update_one(done.filter, done.update)
            .await
            .map_err(|e| mongo_err("complete_event", &e))?;
        Ok(())
    }
}
