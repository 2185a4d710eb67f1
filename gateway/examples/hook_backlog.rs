//! Diagnostic: the order the embedded store hands out after-hook events when
//! the hooks are behind the writes.
//!
//! `cargo run --release -p session-gateway --example hook_backlog -- [sessions] [seconds] [hook_us]`
//!
//! 8 writers change the metadata of `[sessions]` sessions (default 100) round
//! robin for `[seconds]` (default 5). A processor claims 16 events at a time,
//! spends `[hook_us]` µs on each (default 300, slower than the writes, so a
//! backlog builds) and completes it. Prints how long the claimed events had
//! waited, how many sessions had no event processed at all, and the age of
//! the oldest event still queued at the end.
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use gateway::metadata::MetadataChange;
use gateway::model::{EventType, NewSession, Tenant, now_ms};
use gateway::store::{AfterHooked, SessionStore, embedded::EmbeddedStore};
use serde_json::json;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let sessions: usize = a.get(1).map_or(Ok(100), |s| s.parse())?;
    let secs: u64 = a.get(2).map_or(Ok(5), |s| s.parse())?;
    let hook_us: u64 = a.get(3).map_or(Ok(300), |s| s.parse())?;
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn SessionStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("db.redb"), 64)?);
    store.set_after_hooked(AfterHooked::default().with(EventType::MetadataUpdated));
    let t = Tenant("t".into());
    let ids: Vec<String> = (0..sessions).map(|i| format!("s{i:05}")).collect();
    for id in &ids {
        let new: NewSession = serde_json::from_value(json!({ "session_id": id }))?;
        store.create_session(&t, new).await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (store, t, ids, stop, written) = (
            store.clone(),
            t.clone(),
            ids.clone(),
            stop.clone(),
            written.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let change = MetadataChange::Update(vec![("n".into(), json!(i))]);
                store
                    .change_metadata(&t, &ids[i % ids.len()], &change)
                    .await
                    .expect("write");
                written.fetch_add(1, Ordering::Relaxed);
                i += 8;
            }
        }));
    }
    let processor = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut waited = Vec::new();
            let mut served = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                let claimed = store
                    .claim_pending_events(now_ms(), 60_000, 16)
                    .await
                    .expect("claim");
                if claimed.is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                for ev in claimed {
                    waited.push(now_ms() - ev.ts);
                    served.insert(ev.session_id.clone());
                    std::thread::sleep(Duration::from_micros(hook_us));
                    store
                        .complete_event(&ev.tenant, &ev.session_id, ev.seq, Vec::new())
                        .await
                        .expect("complete");
                }
            }
            (waited, served)
        })
    };
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await?;
    }
    let (mut waited, served) = processor.await?;
    let left = store
        .claim_pending_events(now_ms(), 60_000, usize::MAX)
        .await?;
    let oldest = left.iter().map(|e| e.ts).min().map(|ts| now_ms() - ts);
    waited.sort_unstable();
    let at = |q: f64| waited.get(((waited.len().max(1) - 1) as f64 * q) as usize);
    println!(
        "{} writes, {} events processed, {} left queued; wait of the processed: p50 {:?} ms, p99 {:?} ms, max {:?} ms; sessions with none processed: {} of {sessions}; oldest queued event: {:?} ms old",
        written.load(Ordering::Relaxed),
        waited.len(),
        left.len(),
        at(0.5),
        at(0.99),
        waited.last(),
        sessions - served.len(),
        oldest,
    );
    Ok(())
}
