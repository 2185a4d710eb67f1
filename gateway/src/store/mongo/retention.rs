//! Retention and purges.
//!
//! The sweep *reads* across sessions (expired sessions by `(session_type,
//! updated_at)`, old events by `ts`, stale tombstones) and then *writes* each
//! session on its own, by its key: an expired session is deleted in its own
//! transaction whose filter repeats "still expired" (a write meanwhile saves
//! it), events are deleted per session key, tombstones by `_id`. Children of
//! a deleted incarnation are purged after the commit, by `(key, uid)`;
//! `purges` remembers the ones a crash interrupted.

use std::collections::BTreeMap;

use async_trait::async_trait;
use mongodb::bson::{Bson, Document, doc};

use super::client::{Colls, MongoStore};
use super::codec::{child, date, expired_conds, get_str, int};
use super::error::{error_message, mongo_err};
use super::sessions::collect;
use super::writes::At;
use crate::store::{
    Retention, RetentionPolicy, StoreError, StoreResult, SweepReport, expired_payload,
};

/// Deletes the children of the incarnation `uid` of the session `key`, then
/// its purge record.
async fn purge(c: &Colls, key: &str, uid: i64) -> Result<(), mongodb::error::Error> {
    let filter = child(key, uid);
    c.agents.delete_many(filter.clone()).await?;
    c.messages.delete_many(filter.clone()).await?;
    c.feedbacks.delete_many(filter).await?;
    c.purges.delete_one(doc! { "key": key, "_id": uid }).await?;
    Ok(())
}

/// Purges the children of sessions whose delete committed but whose purge
/// did not finish (e.g. the process died).
pub(super) async fn sweep_purges(c: Colls) {
    let docs: Vec<Document> = match collect("reading pending purges", c.purges.find(doc! {})).await
    {
        Ok(docs) => docs,
        Err(e) => {
            tracing::warn!(error = %e, "reading pending purges failed");
            return;
        }
    };
    for d in &docs {
        let (Some(uid), Ok(key)) = (int(d.get("_id")), d.get_str("key")) else {
            continue;
        };
        if let Err(e) = purge(&c, key, uid).await {
            tracing::warn!(uid, error = %error_message(&e), "purging a deleted session's children failed");
        }
    }
}

impl MongoStore {
    /// Purges a deleted incarnation's children in the background.
    pub(super) fn spawn_purge(&self, key: &str, uid: i64) {
        let (c, key) = (self.c.clone(), key.to_owned());
        tokio::spawn(async move {
            if let Err(e) = purge(&c, &key, uid).await {
                tracing::warn!(uid, error = %error_message(&e), "purging a deleted session's children failed; retried at next start-up");
            }
        });
    }

    /// Deletes up to `limit` expired sessions, each like `DELETE` would.
    async fn sweep_sessions(
        &self,
        expired: Vec<Document>,
        now: i64,
        limit: usize,
    ) -> StoreResult<u64> {
        self.ensure_retention_index().await?;
        let filter = doc! { "deleted": { "$ne": true }, "$or": expired.clone() };
        let find = self
            .c
            .sessions
            .find(filter)
            .projection(doc! { "tenant": 1, "session_id": 1 })
            .sort(doc! { "updated_at": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX));
        let docs = collect("sweep_expired", find).await?;
        let payload = &expired_payload();
        let mut swept = 0;
        for d in &docs {
            let tenant = get_str(d, "tenant", "session document")?;
            let sid = get_str(d, "session_id", "session document")?;
            let at = &At::new(tenant, sid);
            // Still expired at delete time: a write meanwhile saves it.
            let filter = &doc! {
                "_id": &at.key,
                "deleted": { "$ne": true },
                "$or": expired.clone(),
            };
            let res = self
                .transaction("sweep_expired", Some(&at.key), |mut s| async move {
                    let r = self.delete_tx(&mut s, at, filter, now, payload).await;
                    (s, r)
                })
                .await;
            match res {
                Ok(uid) => {
                    self.spawn_purge(&at.key, uid);
                    swept += 1;
                }
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(swept)
    }

    /// Deletes up to `batch` events older than `cutoff`, session by session,
    /// and the tombstones whose events are all gone.
    async fn sweep_events(&self, cutoff: i64, batch: usize) -> StoreResult<u64> {
        let err = |e: &mongodb::error::Error| mongo_err("sweep_expired", e);
        let old = doc! { "deleted": true, "updated_at": { "$lte": date(cutoff) } };
        let find = self
            .c
            .sessions
            .find(old.clone())
            .projection(doc! { "_id": 1 })
            .limit(i64::try_from(batch).unwrap_or(i64::MAX));
        for d in collect("sweep_expired", find).await? {
            let mut filter = doc! { "_id": d.get("_id").cloned().unwrap_or(Bson::Null) };
            filter.extend(old.clone());
            self.c
                .sessions
                .delete_one(filter)
                .await
                .map_err(|e| err(&e))?;
        }
        let find = self
            .c
            .events
            .find(doc! { "ts": { "$lt": date(cutoff) } })
            .projection(doc! { "key": 1, "seq": 1 })
            .sort(doc! { "ts": 1, "key": 1, "seq": 1 })
            .limit(i64::try_from(batch).unwrap_or(i64::MAX));
        let mut by_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for d in collect("sweep_expired", find).await? {
            if let (Ok(key), Some(seq)) = (d.get_str("key"), int(d.get("seq"))) {
                by_key.entry(key.to_owned()).or_default().push(seq);
            }
        }
        let mut deleted = 0;
        for (key, seqs) in by_key {
            let res = self
                .c
                .events
                .delete_many(doc! { "key": key, "seq": { "$in": seqs } })
                .await
                .map_err(|e| err(&e))?;
            deleted += res.deleted_count;
        }
        Ok(deleted)
    }
}

#[async_trait]
impl RetentionPolicy for MongoStore {
    fn set_retention(&self, retention: Retention) {
        let mut guard = self
            .retention
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard = std::sync::Arc::new(retention);
    }

    async fn sweep_expired(&self, now: i64, limit: usize) -> StoreResult<SweepReport> {
        let ret = self.retention();
        let mut report = SweepReport::default();
        let expired = expired_conds(&ret, now);
        if !expired.is_empty() && limit > 0 {
            report.sessions = self.sweep_sessions(expired, now, limit).await?;
        }
        if let Some(window) = ret.events_ms {
            let batch = limit.saturating_mul(10);
            if batch > 0 {
                report.events = self.sweep_events(now.saturating_sub(window), batch).await?;
            }
        }
        Ok(report)
    }
}
