//! The notification outbox: items published by after-hooks, queued with the
//! completion of their event (`events.rs`) and delivered by the outbox
//! worker. An item is its own unit: every write names its `_id` (the shard
//! key); a claim reads due candidates and takes each by `_id` with the due
//! condition in the filter, so one gateway holds each lease.

use async_trait::async_trait;
use mongodb::bson::{Document, doc};
use mongodb::options::ReturnDocument;

use super::client::MongoStore;
use super::codec::{outbox_from_doc, state_str};
use super::error::mongo_err;
use super::events::Claim;
use super::sessions::collect;
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
        let claim = Claim {
            op: "claim_outbox",
            coll: &self.c.outbox,
            due: doc! {
                "state": state_str(OutboxState::Pending),
                "next_attempt_at": { "$lte": now },
            },
            sort: doc! { "next_attempt_at": 1, "created_at": 1, "_id": 1 },
            key: &["_id"],
            set: doc! { "next_attempt_at": now.saturating_add(lease_ms) },
            returned: None,
        };
        claim
            .run(limit)
            .await?
            .iter()
            .map(outbox_from_doc)
            .collect()
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
