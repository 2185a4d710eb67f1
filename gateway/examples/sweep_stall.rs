//! Diagnostic: what the embedded store's retention sweep costs the writes
//! made while it runs.
//!
//! `cargo run --release -p session-gateway --example sweep_stall -- <sessions> [seconds]`
//!
//! Fills a store in a temporary directory with `<sessions>` sessions (64
//! concurrent creators, so the writer group-commits them), sets a retention
//! under which none of them expires (only `ephemeral` sessions expire, after an
//! hour), then times one sweep on its own, and the latency of sequential
//! metadata writes made for `[seconds]` (default 3) while sweeps run back to
//! back, against as long with no sweep.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use gateway::model::{NewSession, Tenant, now_ms};
use gateway::store::{Retention, SessionStore, embedded::EmbeddedStore};
use serde_json::json;

#[path = "support/writes.rs"]
mod support;
use support::{summary, writes};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let sessions: usize = a.get(1).map_or(Ok(100_000), |s| s.parse())?;
    let secs: u64 = a.get(2).map_or(Ok(3), |s| s.parse())?;
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn SessionStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("db.redb"), 64)?);
    let t = Tenant("t".into());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..64 {
        let (store, t) = (store.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..sessions).step_by(64) {
                let new: NewSession =
                    serde_json::from_value(json!({"session_id": format!("s{i}")}))
                        .expect("new session");
                store.create_session(&t, new).await.expect("create");
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    println!(
        "{sessions} sessions created in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    store.set_retention(Retention {
        sessions: BTreeMap::from([("ephemeral".to_owned(), 3_600_000)]),
        default_session_ms: None,
        events_ms: Some(7 * 24 * 3_600_000),
    });
    for _ in 0..3 {
        let t0 = Instant::now();
        let r = store.sweep_expired(now_ms(), 1_000).await?;
        println!(
            "one sweep: {} ms (removed {} sessions, {} events)",
            t0.elapsed().as_millis(),
            r.sessions,
            r.events
        );
    }
    let quiet = writes(&store, &t, secs).await;
    let sweeping = Arc::new(AtomicBool::new(true));
    let sweeper = {
        let (store, sweeping) = (store.clone(), sweeping.clone());
        tokio::spawn(async move {
            let mut n = 0u32;
            while sweeping.load(Ordering::Relaxed) {
                store.sweep_expired(now_ms(), 1_000).await.expect("sweep");
                n += 1;
            }
            n
        })
    };
    let during = writes(&store, &t, secs).await;
    sweeping.store(false, Ordering::Relaxed);
    let sweeps = sweeper.await?;
    println!("no sweep:               {}", summary(quiet));
    println!("{sweeps:>3} sweeps running:   {}", summary(during));
    Ok(())
}
