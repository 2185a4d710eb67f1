//! Diagnostic: what claiming from a large outbox costs the embedded store's
//! writes (an outbox grows while a notification target is down).
//!
//! `cargo run --release -p session-gateway --example outbox_claim -- <items> [seconds]`
//!
//! Queues `<items>` pending notifications due in an hour (as retries backing
//! off) and 16 due now, then times claims of 16 items, and the latency of
//! sequential metadata writes made for `[seconds]` (default 3) while claims
//! run back to back (each claimed item is delivered and another queued, as a
//! dispatcher draining a backlog would), against as long with no claim.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use gateway::model::{NewSession, Tenant, now_ms};
use gateway::store::{OutboxItem, OutboxState, SessionStore, embedded::EmbeddedStore};
use serde_json::json;

#[path = "support/writes.rs"]
mod support;
use support::{summary, writes};

fn item(id: String, next_attempt_at: i64) -> OutboxItem {
    OutboxItem {
        id,
        target: "orders".into(),
        payload: json!({"session_id": "s0", "rating": "up", "comment": "a notification body of some length"})
            .to_string(),
        plugin: "feedback-router".into(),
        tenant: "t".into(),
        session_id: "s0".into(),
        created_at: now_ms(),
        attempts: 3,
        next_attempt_at,
        state: OutboxState::Pending,
        last_error: Some("target unreachable".into()),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let items: usize = a.get(1).map_or(Ok(100_000), |s| s.parse())?;
    let secs: u64 = a.get(2).map_or(Ok(3), |s| s.parse())?;
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn SessionStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("db.redb"), 64)?);
    let t = Tenant("t".into());
    let new: NewSession = serde_json::from_value(json!({"session_id": "s0"}))?;
    store.create_session(&t, new).await?;
    let later = now_ms() + 3_600_000;
    for (seq, chunk) in (0..items).collect::<Vec<_>>().chunks(1_000).enumerate() {
        let batch = chunk
            .iter()
            .map(|i| item(format!("later-{i:08}"), later))
            .collect();
        store.complete_event("t", "s0", seq as u64, batch).await?;
    }
    let due: Vec<OutboxItem> = (0..16).map(|i| item(format!("due-{i}"), 0)).collect();
    store.complete_event("t", "s0", u64::MAX, due).await?;
    for _ in 0..3 {
        let t0 = Instant::now();
        let claimed = store.claim_outbox(now_ms(), 30_000, 16).await?;
        println!(
            "claim of {} items, {items} queued: {} µs",
            claimed.len(),
            t0.elapsed().as_micros()
        );
        for i in claimed {
            store
                .outbox_failed(&i.id, i.attempts + 1, 0, "again", false)
                .await?;
        }
    }
    let quiet = writes(&store, &t, secs).await;
    let claiming = Arc::new(AtomicBool::new(true));
    let dispatcher = {
        let (store, claiming) = (store.clone(), claiming.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while claiming.load(Ordering::Relaxed) {
                let claimed = store
                    .claim_outbox(now_ms(), 30_000, 16)
                    .await
                    .expect("claim");
                for i in claimed {
                    n += 1;
                    store.outbox_delivered(&i.id).await.expect("delivered");
                    let next = vec![item(format!("next-{n}"), 0)];
                    store
                        .complete_event("t", "s0", 1 << 40 | n, next)
                        .await
                        .expect("queue");
                }
            }
            n
        })
    };
    let during = writes(&store, &t, secs).await;
    claiming.store(false, Ordering::Relaxed);
    let delivered = dispatcher.await?;
    println!("no claims:                    {}", summary(quiet));
    println!("claiming ({delivered:>6} delivered): {}", summary(during));
    Ok(())
}
