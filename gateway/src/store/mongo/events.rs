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
use mongodb::ClientSession;
use mongodb::bson::{Bson, Document, doc};

use super::MongoStore;
use super::codec::{date, from_doc_text, get_str, int, outbox_fields, to_i64, uint};
use super::sessions::collect;
use super::txn::{Step, TxResult, mongo_err};
use crate::model::{Event, Tenant};
use crate::store::{AfterHooked, EventLog, OutboxItem, StoreResult, session_key};

fn events_from(docs: &[Document]) -> StoreResult<Vec<Event>> {
    docs.iter()
        .map(|d| from_doc_text::<Event>(d, "doc", "event document"))
        .collect()
}

/// Rounds of "read candidates, claim each" one claim call makes at most.
pub(super) const CLAIM_ROUNDS: usize = 4;

fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl MongoStore {
    async fn complete_event_tx(
        &self,
        s: &mut ClientSession,
        key: &str,
        seq: u64,
        outbox: &[OutboxItem],
    ) -> TxResult<()> {
        // An insert's duplicate-key error would abort the transaction, so an
        // upsert that only sets on insert skips existing ids instead.
        for item in outbox {
            self.c
                .outbox
                .update_one(
                    doc! { "_id": &item.id },
                    doc! { "$setOnInsert": outbox_fields(item) },
                )
                .upsert(true)
                .session(&mut *s)
                .await?;
        }
        self.c
            .events
            .update_one(
                doc! { "key": key, "seq": to_i64(seq) },
                doc! { "$set": { "hooks_pending": false } },
            )
            .session(&mut *s)
            .await?;
        Ok(Step::Commit(()))
    }
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
        let due = doc! { "hooks_pending": true, "lease_until": { "$lte": now } };
        let mut out = Vec::new();
        // Each candidate is tried once per call (a zero lease leaves it due).
        let mut tried: Vec<Bson> = Vec::new();
        // Candidates another gateway took meanwhile are leased, so the next
        // round's read skips them; bounded in rounds.
        for _ in 0..CLAIM_ROUNDS {
            let find = self
                .c
                .events
                .find({
                    let mut f = due.clone();
                    f.insert("_id", doc! { "$nin": tried.clone() });
                    f
                })
                .sort(doc! { "ts": 1, "key": 1, "seq": 1 })
                .projection(doc! { "key": 1, "seq": 1 })
                .limit(limit_i64(limit - out.len()));
            let candidates = collect("claim_pending_events", find).await?;
            if candidates.is_empty() {
                break;
            }
            // One atomic claim per event, by its key, still due: gateways
            // sharing the database never hold the same lease.
            tried.extend(candidates.iter().filter_map(|c| c.get("_id").cloned()));
            for c in &candidates {
                let (Ok(key), Some(seq)) = (get_str(c, "key", "event document"), int(c.get("seq")))
                else {
                    continue;
                };
                let mut filter = doc! { "key": key, "seq": seq };
                filter.extend(due.clone());
                let claimed = self
                    .c
                    .events
                    .find_one_and_update(
                        filter,
                        doc! { "$set": { "lease_until": now.saturating_add(lease_ms) } },
                    )
                    .projection(doc! { "doc": 1 })
                    .await
                    .map_err(|e| mongo_err("claim_pending_events", &e))?;
                if let Some(d) = claimed {
                    out.push(from_doc_text::<Event>(&d, "doc", "event document")?);
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    async fn complete_event(
        &self,
        tenant: &str,
        session_id: &str,
        seq: u64,
        outbox: Vec<OutboxItem>,
    ) -> StoreResult<()> {
        let key = session_key(tenant, session_id);
        let (key, outbox) = (key.as_str(), outbox.as_slice());
        self.transaction("complete_event", None, |mut s| async move {
            let r = self.complete_event_tx(&mut s, key, seq, outbox).await;
            (s, r)
        })
        .await
    }
}
