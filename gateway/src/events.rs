//! The change-event processor: runs after-hooks from the durable event log.
//!
//! Every committed change records an event atomically with it (see
//! [`crate::store`]). Events that after-hooks observe are queued in the store;
//! this task claims them (with a lease, so several gateways sharing a MongoDB
//! never process one twice at the same time), runs the after-chain, and marks
//! each event complete **together with** (never before) the notifications its
//! hooks published. A crash anywhere before that completion leaves the event
//! queued, so its hooks run again once its claim lease ([`LEASE_MS`]) expires:
//! at least once, never lost. Notification ids are derived from the event, so
//! a re-run does not queue duplicates.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::hooks::HookHost;
use crate::model::now_ms;
use crate::store::{NextDue, OutboxItem, OutboxState, SessionStore, sleep_or_forever};

/// How long a claimed event stays leased to this gateway: after a crash, the
/// longest an event it had claimed waits before another gateway re-runs it.
pub const LEASE_MS: i64 = 30_000;
/// Events claimed per round.
const BATCH: usize = 64;
/// Completions of a round in flight at once on a store shared over the
/// network (MongoDB), where each holds a pooled connection; on the embedded
/// store a completion is a job in the writer's queue, and all of a round's
/// are in flight together (see `process`).
const SHARED_COMPLETIONS_IN_FLIGHT: usize = 16;
/// Poll interval when nothing wakes the processor and the store cannot tell
/// when an event is next due (MongoDB: other gateways' writes, expired
/// leases). The embedded store can, so there the processor sleeps until a
/// commit, a reload of the hooks or a lease's end wakes it.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Runs until `stop` changes. `outbox_wake` tells the dispatcher when
/// completed events queued notifications.
pub async fn process(
    store: Arc<dyn SessionStore>,
    hooks: Arc<HookHost>,
    wake: Arc<Notify>,
    outbox_wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let claimed = match store.claim_pending_events(now_ms(), LEASE_MS, BATCH).await {
            Ok(evs) => evs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim pending events; retrying");
                Vec::new()
            }
        };
        let full = claimed.len() == BATCH;
        // The hooks run one event at a time, in order; each completion is
        // sent as soon as its hooks are done and not waited for before the
        // next event's hooks run. On the embedded store a completion waits
        // for a commit (an fsync): awaited one by one they bounded the
        // processor to one event per commit, while in flight together they
        // share commits (group commit) with each other and with requests.
        let mut completing = JoinSet::new();
        let in_flight = if store.is_shared() {
            SHARED_COMPLETIONS_IN_FLIGHT
        } else {
            BATCH
        };
        for ev in claimed {
            let now = now_ms();
            let outbox: Vec<OutboxItem> = hooks
                .after_event(&ev)
                .await
                .into_iter()
                .map(|n| OutboxItem {
                    id: n.id,
                    target: n.target,
                    payload: n.payload,
                    plugin: n.plugin,
                    tenant: ev.tenant.clone(),
                    session_id: ev.session_id.clone(),
                    created_at: now,
                    attempts: 0,
                    next_attempt_at: now,
                    state: OutboxState::Pending,
                    last_error: None,
                })
                .collect();
            // Bounded on MongoDB, so a backlog does not take a connection
            // from the pool per claimed event.
            if completing.len() >= in_flight {
                completing.join_next().await;
            }
            let store = store.clone();
            let outbox_wake = outbox_wake.clone();
            completing.spawn(async move {
                let queued = !outbox.is_empty();
                match store
                    .complete_event(&ev.tenant, &ev.session_id, ev.seq, outbox)
                    .await
                {
                    Ok(()) if queued => outbox_wake.notify_one(),
                    Ok(()) => {}
                    // The lease expires and the event is retried.
                    Err(e) => {
                        tracing::warn!(error = %e, seq = ev.seq, session_id = %ev.session_id, "cannot complete event");
                    }
                }
            });
        }
        // All of this round's completions are done before the next claim, so
        // it cannot claim an event whose completion is still in flight.
        while completing.join_next().await.is_some() {}
        if full {
            continue;
        }
        let due = store.next_event_due().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot tell when an event is next due; polling");
            NextDue::Unknown
        });
        tokio::select! {
            () = wake.notified() => {}
            // A reload can change which events a commit queues between the
            // commit and its notification (`service::Committed`).
            () = hooks.reloaded() => {}
            () = sleep_or_forever(due.wait(now_ms(), IDLE_POLL)) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NewSession, Tenant};
    use crate::store::{AfterHooked, embedded::EmbeddedStore};

    /// Waits until the store's after-hook queue is `want`, failing after 10 s.
    async fn queue_becomes(store: &Arc<dyn SessionStore>, want: NextDue, why: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let due = store.next_event_due().await.unwrap();
            if due == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{why}: queue still {due:?} after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// On the embedded store an idle processor does not poll (its idle poll
    /// would be 500 ms): an event queued without waking it stays queued;
    /// a commit's wake, or a reload of the hooks, has it processed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sleeps_until_a_commit_or_a_reload_wakes_it_on_the_embedded_store() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn SessionStore> =
            Arc::new(EmbeddedStore::open(&dir.path().join("db"), 16).unwrap());
        let mut cfg = crate::config::Config::default();
        cfg.plugins.cache_dir = dir.path().join("cache");
        let hooks = Arc::new(HookHost::start(&cfg, None, store.clone()).await.unwrap());
        // Queue every hookable kind, as with after-hooks loaded.
        store.set_after_hooked(AfterHooked(0b111));
        let wake = Arc::new(Notify::new());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(process(
            store.clone(),
            hooks.clone(),
            wake.clone(),
            Arc::new(Notify::new()),
            stop_rx,
        ));
        let t = Tenant("t".into());
        let new: NewSession =
            serde_json::from_value(serde_json::json!({"session_id": "s"})).unwrap();
        store.create_session(&t, new).await.unwrap();
        // Let the processor find the queue empty and go to sleep.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let feedback = |n: i64| serde_json::json!({"n": n}).as_object().cloned().unwrap();
        store.add_feedback(&t, "s", feedback(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        assert_eq!(
            store.next_event_due().await.unwrap(),
            NextDue::At(0),
            "the processor polled an embedded store that nothing had written"
        );
        wake.notify_one();
        queue_becomes(&store, NextDue::Nothing, "after a wake").await;

        // A reload between a commit and its notification: the reload wakes it.
        store.add_feedback(&t, "s", feedback(2)).await.unwrap();
        hooks.reload().await;
        queue_becomes(&store, NextDue::Nothing, "after a reload").await;
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}
