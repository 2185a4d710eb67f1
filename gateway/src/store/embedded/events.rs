//! The event log, the after-hook queue, and the retention sweep.
//!
//! Events are written by [`EmbeddedStore::mutate`] (via `record_event`), one
//! per committed change, keyed `("<tenant>/<sid>", seq)` with an index by
//! time for the event window and `events_since`.

use async_trait::async_trait;
use redb::{ReadableTable, ReadableTableMetadata};

use super::EmbeddedStore;
use super::tables::{
    EVENTS, EVENTS_BY_TS, HOOK_PENDING, HOOK_QUEUE, OUTBOX, SESSIONS, SessionRecord, from_json,
    internal, open_read, record_event, tombstone,
};
use crate::model::{Event, EventType, Tenant};
use crate::store::{
    AfterHooked, EventLog, HookBacklog, NextDue, OutboxItem, Retention, RetentionPolicy,
    StoreResult, SweepReport, expired_payload, session_key,
};

impl EmbeddedStore {
    /// When the earliest queued event is claimable (its lease ends; 0 when
    /// unclaimed), looked up in a snapshot; the scan stops at the first one
    /// claimable by `stop_at`. `None` when the queue is empty.
    async fn earliest_hook_due(&self, stop_at: i64) -> StoreResult<Option<i64>> {
        self.read(move |txn| {
            let mut earliest: Option<i64> = None;
            for row in open_read(txn, HOOK_PENDING)?.iter().map_err(internal)? {
                let at = row.map_err(internal)?.1.value();
                let at = earliest.map_or(at, |e| e.min(at));
                earliest = Some(at);
                if at <= stop_at {
                    break;
                }
            }
            Ok(earliest)
        })
        .await
    }
}

/// An event row's commit time, read without decoding the rest of it.
#[derive(serde::Deserialize)]
struct EventTs {
    ts: i64,
}

/// The commit time of event `(key, seq)`, from its row (`None` without one).
fn event_ts(txn: &redb::WriteTransaction, key: &str, seq: u64) -> StoreResult<Option<i64>> {
    txn.open_table(EVENTS)
        .map_err(internal)?
        .get((key, seq))
        .map_err(internal)?
        .map(|v| from_json::<EventTs>(v.value()).map(|e| e.ts))
        .transpose()
}

/// On open: moves what a file written before [`HOOK_PENDING`] has in
/// [`HOOK_QUEUE`] into it (by its event's commit time; a row whose event is
/// gone is dropped), and releases every claim lease. The file is locked
/// to this process, so a lease found here belongs to a process that died:
/// released now rather than when it expires.
pub(super) fn migrate_hook_queue(txn: &redb::WriteTransaction) -> StoreResult<()> {
    let mut legacy = txn.open_table(HOOK_QUEUE).map_err(internal)?;
    let mut moved = Vec::new();
    for row in legacy.iter().map_err(internal)? {
        let (k, _) = row.map_err(internal)?;
        let (key, seq) = k.value();
        moved.push((key.to_owned(), seq));
    }
    legacy.retain(|_, _| false).map_err(internal)?;
    let mut pending = txn.open_table(HOOK_PENDING).map_err(internal)?;
    for (key, seq) in moved {
        // A row whose event is gone has no hooks to run.
        if let Some(ts) = event_ts(txn, &key, seq)? {
            pending
                .insert((ts, key.as_str(), seq), 0)
                .map_err(internal)?;
        }
    }
    let leased: Vec<(i64, String, u64)> = pending
        .iter()
        .map_err(internal)?
        .filter_map(Result::ok)
        .filter(|(_, lease)| lease.value() != 0)
        .map(|(k, _)| {
            let (ts, key, seq) = k.value();
            (ts, key.to_owned(), seq)
        })
        .collect();
    for (ts, key, seq) in leased {
        pending
            .insert((ts, key.as_str(), seq), 0)
            .map_err(internal)?;
    }
    Ok(())
}

/// Removes event `(key, seq)` from [`HOOK_PENDING`], found by its commit
/// time from the event row. Without an event row there is nothing to remove:
/// the sweep removes an event and its pending row together, and a claim drops
/// a pending row whose event is gone.
fn unqueue(txn: &redb::WriteTransaction, key: &str, seq: u64) -> StoreResult<()> {
    if let Some(ts) = event_ts(txn, key, seq)? {
        txn.open_table(HOOK_PENDING)
            .map_err(internal)?
            .remove((ts, key, seq))
            .map_err(internal)?;
    }
    Ok(())
}

#[async_trait]
impl EventLog for EmbeddedStore {
    async fn events_after(
        &self,
        t: &Tenant,
        sid: &str,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<Event>> {
        let key = session_key(t.as_str(), sid);
        self.read(move |txn| {
            let table = open_read(txn, EVENTS)?;
            let mut out = Vec::new();
            for row in table
                .range((key.as_str(), after.saturating_add(1))..=(key.as_str(), u64::MAX))
                .map_err(internal)?
                .take(limit)
            {
                let (_, v) = row.map_err(internal)?;
                out.push(from_json::<Event>(v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn latest_event_seq(&self, t: &Tenant, sid: &str) -> StoreResult<u64> {
        let key = session_key(t.as_str(), sid);
        self.read_now(|txn| {
            let table = open_read(txn, SESSIONS)?;
            let got = table.get(key.as_str()).map_err(internal)?;
            Ok(got
                .map(|v| from_json::<SessionRecord>(v.value()))
                .transpose()?
                .map_or(0, |r| r.seq))
        })
    }

    /// One process owns the redb file (it is locked), so nobody else writes.
    async fn events_since(&self, since: i64, limit: usize) -> StoreResult<Vec<Event>> {
        self.read(move |txn| {
            let index = open_read(txn, EVENTS_BY_TS)?;
            let events = open_read(txn, EVENTS)?;
            let mut out = Vec::new();
            for row in index.range((since, "", 0)..).map_err(internal)?.take(limit) {
                let (k, _) = row.map_err(internal)?;
                let (_, key, seq) = k.value();
                if let Some(v) = events.get((key, seq)).map_err(internal)? {
                    out.push(from_json::<Event>(v.value())?);
                }
            }
            Ok(out)
        })
        .await
    }

    fn set_after_hooked(&self, kinds: AfterHooked) {
        self.after_hooked
            .store(kinds.0, std::sync::atomic::Ordering::Relaxed);
    }

    async fn claim_pending_events(
        &self,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<Event>> {
        // Looked up in a snapshot first, so that a poll with nothing due
        // takes no writer turn (a commit, with its fsync).
        if self.earliest_hook_due(now).await?.is_none_or(|at| at > now) {
            return Ok(Vec::new());
        }
        self.write(move |txn| {
            let mut pending = txn.open_table(HOOK_PENDING).map_err(internal)?;
            let events = txn.open_table(EVENTS).map_err(internal)?;
            // Oldest first; the rows passed over are the ones leased now,
            // at most what the processors hold. A row whose event is gone
            // (nothing the store writes leaves one) is dropped, not leased
            // for ever.
            let mut claimed: Vec<(i64, String, u64)> = Vec::new();
            let mut out = Vec::new();
            let mut stray: Vec<(i64, String, u64)> = Vec::new();
            for row in pending.iter().map_err(internal)? {
                let (k, lease) = row.map_err(internal)?;
                if lease.value() > now {
                    continue;
                }
                let (ts, key, seq) = k.value();
                match events.get((key, seq)).map_err(internal)? {
                    Some(v) => {
                        out.push(from_json::<Event>(v.value())?);
                        claimed.push((ts, key.to_owned(), seq));
                        if claimed.len() == limit {
                            break;
                        }
                    }
                    None => stray.push((ts, key.to_owned(), seq)),
                }
            }
            for (ts, key, seq) in &claimed {
                pending
                    .insert((*ts, key.as_str(), *seq), now + lease_ms)
                    .map_err(internal)?;
            }
            for (ts, key, seq) in &stray {
                pending
                    .remove((*ts, key.as_str(), *seq))
                    .map_err(internal)?;
            }
            Ok(out)
        })
        .await
    }

    async fn next_event_due(&self) -> StoreResult<NextDue> {
        // The file is this process's alone (redb locks it), so only its own
        // writes queue events.
        let due = self.earliest_hook_due(i64::MIN).await?;
        Ok(due.map_or(NextDue::Nothing, NextDue::At))
    }

    /// The queue's length is kept in its B-tree's header, and its first row
    /// is the oldest event: two lookups, whatever the backlog.
    async fn hook_backlog(&self) -> StoreResult<HookBacklog> {
        self.read_now(|txn| {
            let table = open_read(txn, HOOK_PENDING)?;
            let pending = table.len().map_err(internal)?;
            let oldest_ts = table.first().map_err(internal)?.map(|(k, _)| k.value().0);
            Ok(HookBacklog { pending, oldest_ts })
        })
    }

    async fn complete_event(
        &self,
        tenant: &str,
        session_id: &str,
        seq: u64,
        outbox: Vec<OutboxItem>,
    ) -> StoreResult<()> {
        let key = session_key(tenant, session_id);
        self.write(move |txn| {
            for item in &outbox {
                let exists = txn
                    .open_table(OUTBOX)
                    .map_err(internal)?
                    .get(item.id.as_str())
                    .map_err(internal)?
                    .is_some();
                if !exists {
                    super::outbox::put_item(txn, item, None)?;
                }
            }
            unqueue(txn, &key, seq)?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl RetentionPolicy for EmbeddedStore {
    fn set_retention(&self, retention: Retention) {
        *self.retention.write().expect("retention lock") = std::sync::Arc::new(retention);
    }

    async fn sweep_expired(&self, now: i64, limit: usize) -> StoreResult<SweepReport> {
        let hooked = self.after_hooked();
        let ret = self.retention();
        // What to remove is found in a snapshot, off the writer: a scan of
        // every session must not hold up the writes queued behind it, and a
        // sweep with nothing to do takes no writer turn (no commit, no
        // fsync).
        let cutoff = ret.events_ms.map(|w| now - w);
        let scan = ret.clone();
        let (expired, stale_tombstones, old_events) = self
            .read(move |txn| {
                let ret = scan;
                let mut expired = Vec::new();
                let mut stale = Vec::new();
                for row in open_read(txn, SESSIONS)?.iter().map_err(internal)? {
                    let (k, v) = row.map_err(internal)?;
                    let rec: SessionRecord = from_json(v.value())?;
                    match sweep_of(&ret, &rec, now) {
                        Some(Sweep::Expire) => expired.push(k.value().to_owned()),
                        Some(Sweep::Remove) => stale.push(k.value().to_owned()),
                        None => {}
                    }
                    if expired.len() >= limit {
                        break;
                    }
                }
                let old_events = match cutoff {
                    Some(cutoff) => open_read(txn, EVENTS_BY_TS)?
                        .range(..(cutoff, "", 0))
                        .map_err(internal)?
                        .next()
                        .is_some(),
                    None => false,
                };
                Ok((expired, stale, old_events))
            })
            .await?;
        if expired.is_empty() && stale_tombstones.is_empty() && !old_events {
            return Ok(SweepReport::default());
        }
        self.write(move |txn| {
            let mut report = SweepReport::default();
            // Each candidate again, as it is now: it may have been written,
            // deleted or re-created since the snapshot.
            let mut now_expired = Vec::new();
            let mut now_stale = Vec::new();
            {
                let table = txn.open_table(SESSIONS).map_err(internal)?;
                for key in expired.iter().chain(&stale_tombstones) {
                    let Some(v) = table.get(key.as_str()).map_err(internal)? else {
                        continue;
                    };
                    let rec: SessionRecord = from_json(v.value())?;
                    match sweep_of(&ret, &rec, now) {
                        Some(Sweep::Expire) => now_expired.push((key.clone(), rec)),
                        Some(Sweep::Remove) => now_stale.push(key.clone()),
                        None => {}
                    }
                }
            }
            // Expired sessions: deleted like DELETE would, with an event.
            for (key, mut rec) in now_expired {
                let tenant = Tenant(key.split_once('/').map_or("", |(t, _)| t).to_owned());
                tombstone(txn, &mut rec)?;
                let ev = (EventType::SessionDeleted, now, expired_payload());
                record_event(txn, hooked, &tenant, &key, &mut rec, ev)?;
                report.sessions += 1;
            }
            {
                let mut table = txn.open_table(SESSIONS).map_err(internal)?;
                for key in &now_stale {
                    table.remove(key.as_str()).map_err(internal)?;
                }
            }
            // Events past the window.
            if let Some(window) = ret.events_ms {
                let cutoff = now - window;
                let mut old = Vec::new();
                {
                    let index = txn.open_table(EVENTS_BY_TS).map_err(internal)?;
                    for row in index
                        .range(..(cutoff, "", 0))
                        .map_err(internal)?
                        .take(limit * 10)
                    {
                        let (k, _) = row.map_err(internal)?;
                        let (ts, key, seq) = k.value();
                        old.push((ts, key.to_owned(), seq));
                    }
                }
                let mut index = txn.open_table(EVENTS_BY_TS).map_err(internal)?;
                let mut events = txn.open_table(EVENTS).map_err(internal)?;
                // The time index and the pending table are keyed by the
                // same commit time, the one `record_event` gave the event.
                let mut pending = txn.open_table(HOOK_PENDING).map_err(internal)?;
                for (ts, key, seq) in &old {
                    index.remove((*ts, key.as_str(), *seq)).map_err(internal)?;
                    events.remove((key.as_str(), *seq)).map_err(internal)?;
                    pending
                        .remove((*ts, key.as_str(), *seq))
                        .map_err(internal)?;
                }
                report.events = old.len() as u64;
            }
            Ok(report)
        })
        .await
    }
}

/// What the retention sweep does with a session record.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sweep {
    /// A live session past its retention: deleted, with an event.
    Expire,
    /// A tombstone whose events are past the event window: removed.
    Remove,
}

/// What the retention sweep does with `rec` at `now` (`None`: keeps it).
fn sweep_of(ret: &Retention, rec: &SessionRecord, now: i64) -> Option<Sweep> {
    if rec.deleted {
        // Once its events are gone, a tombstone has nothing to keep.
        ret.events_ms
            .is_some_and(|w| rec.updated_at + w <= now)
            .then_some(Sweep::Remove)
    } else {
        ret.session_expired(&rec.session_type, rec.updated_at, now)
            .then_some(Sweep::Expire)
    }
}
