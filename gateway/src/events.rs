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

use crate::hooks::HookHost;
use crate::model::now_ms;
use crate::store::{OutboxItem, OutboxState, SessionStore};

/// How long a claimed event stays leased to this gateway: after a crash, the
/// longest an event it had claimed waits before another gateway re-runs it.
pub const LEASE_MS: i64 = 30_000;
/// Events claimed per round.
const BATCH: usize = 64;
/// Poll interval when nothing wakes the processor (other gateways' writes,
/// expired leases).
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
            let queued = !outbox.is_empty();
            match store
                .complete_event(&ev.tenant, &ev.session_id, ev.seq, outbox)
                .await
            {
                Ok(()) if queued => outbox_wake.notify_one(),
                Ok(()) => {}
                // The lease expires and the event is retried.
                Err(e) => {
                    tracing::warn!(error = %e, seq = ev.seq, session_id = %ev.session_id, "cannot complete event")
                }
            }
        }
        if full {
            continue;
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(IDLE_POLL) => {}
            _ = stop.changed() => return,
        }
    }
}
