//! The notification outbox: items published by after-hooks, queued with the
//! completion of their event (`events.rs`) and delivered by the outbox
//! worker. An item is its own unit: every write names its `_id` (the shard
//! key); a claim reads due candidates and takes each by `_id` with the due
//! condition in the filter, so one gateway holds each lease.

use async_trait::async_trait;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::ReturnDocument;

use super::MongoStore;
use super::codec::{get_str, outbox_from_doc, state_str};
use super::events::CLAIM_ROUNDS;
use super::sessions::collect;
use super::txn::mongo_err;
use crate::store::{OutboxItem, OutboxQueue, OutboxState, StoreResult, outbox_not_found};

/// `filter` limited to one tenant's items, when given.
fn of_tenant(mut filter: Document, tenant: Option<&str>) -> Document {
    if let Some(t) = tenant {
        filter.insert("tenant", t);
    }
    filter
}

#[async_trait]
impl OutboxQueue for MongoStore {
    async fn claim_outbox(
        &self,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<OutboxItem>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let due = doc! {
            "state": state_str(OutboxState::Pending),
            "next_attempt_at": { "$lte": now },
        };
        let mut out = Vec::new();
        // Each candidate is tried once per call (a zero lease leaves it due).
        let mut tried: Vec<Bson> = Vec::new();
        // Candidates another gateway took meanwhile are no longer due, so
        // the next round's read skips them; bounded in rounds.
        for _ in 0..CLAIM_ROUNDS {
            let find = self
                .c
                .outbox
                .find({
                    let mut f = due.clone();
                    f.insert("_id", doc! { "$nin": tried.clone() });
                    f
                })
                .sort(doc! { "next_attempt_at": 1, "created_at": 1, "_id": 1 })
                .projection(doc! { "_id": 1 })
                .limit(i64::try_from(limit - out.len()).unwrap_or(i64::MAX));
            let candidates = collect("claim_outbox", find).await?;
            if candidates.is_empty() {
                break;
            }
            tried.extend(candidates.iter().filter_map(|c| c.get("_id").cloned()));
            for c in &candidates {
                let Ok(id) = get_str(c, "_id", "outbox document") else {
                    continue;
                };
                let mut filter = doc! { "_id": id };
                filter.extend(due.clone());
                let claimed = self
                    .c
                    .outbox
                    .find_one_and_update(
                        filter,
                        doc! { "$set": { "next_attempt_at": now.saturating_add(lease_ms) } },
                    )
                    .return_document(ReturnDocument::Before)
                    .await
                    .map_err(|e| mongo_err("claim_outbox", &e))?;
                if let Some(d) = claimed {
                    out.push(outbox_from_doc(&d)?);
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    async fn outbox_delivered(&self, id: &str) -> StoreResult<()> {
        self.c
            .outbox
            .delete_one(doc! { "_id": id })
            .await
            .map_err(|e| mongo_err("outbox_delivered", &e))?;
        Ok(())
    }

    async fn outbox_failed(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_at: i64,
        error: &str,
        dead: bool,
    ) -> StoreResult<()> {
        let mut set = doc! {
            "attempts": i64::from(attempts),
            "next_attempt_at": next_attempt_at,
            "last_error": error,
        };
        if dead {
            set.insert("state", state_str(OutboxState::Dead));
        }
        self.c
            .outbox
            .update_one(doc! { "_id": id }, doc! { "$set": set })
            .await
            .map_err(|e| mongo_err("outbox_failed", &e))?;
        Ok(())
    }

    async fn list_outbox_of(
        &self,
        tenant: Option<&str>,
        state: Option<OutboxState>,
        limit: usize,
    ) -> StoreResult<Vec<OutboxItem>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let filter = state.map_or_else(Document::new, |s| doc! { "state": state_str(s) });
        let find = self
            .c
            .outbox
            .find(of_tenant(filter, tenant))
            .sort(doc! { "created_at": 1, "_id": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX));
        collect("list_outbox", find)
            .await?
            .iter()
            .map(outbox_from_doc)
            .collect()
    }

    async fn retry_outbox_of(
        &self,
        tenant: Option<&str>,
        id: &str,
        now: i64,
    ) -> StoreResult<OutboxItem> {
        let d = self
            .c
            .outbox
            .find_one_and_update(
                of_tenant(doc! { "_id": id }, tenant),
                doc! { "$set": {
                    "state": state_str(OutboxState::Pending),
                    "attempts": 0i64,
                    "next_attempt_at": now,
                } },
            )
            .return_document(ReturnDocument::After)
            .await
            .map_err(|e| mongo_err("retry_outbox", &e))?
            .ok_or_else(|| outbox_not_found(id))?;
        outbox_from_doc(&d)
    }

    async fn outbox_counts_of(&self, tenant: Option<&str>) -> StoreResult<(u64, u64)> {
        let count = |s: OutboxState| {
            let filter = of_tenant(doc! { "state": state_str(s) }, tenant);
            self.c.outbox.count_documents(filter)
        };
        let (pending, dead) =
            futures::try_join!(async { count(OutboxState::Pending).await }, async {
                count(OutboxState::Dead).await
            })
            .map_err(|e| mongo_err("outbox_counts", &e))?;
        Ok((pending, dead))
    }
}
