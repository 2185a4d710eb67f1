//! Diagnostic: how fast the change-event processor (`gateway::events::process`)
//! drains a backlog of after-hook events on the embedded store, and how many
//! commits it spends on it.
//!
//! `cargo run --release -p session-gateway --example after_hook_drain -- [events] [sessions]`
//!
//! With `MONGODB_URI` set, on that server instead (a fresh database, dropped
//! at the end; no commit count).
//!
//! Writes `[events]` metadata changes (default 2000) over `[sessions]`
//! sessions (default 50) with after-hooks marked as loaded but no processor
//! running, so they queue. Then starts the processor (with a hook host that
//! has no plugins, so each event costs the processor only its claim and
//! completion) and times it until the queue is empty. Prints events per
//! second and the commits the drain took.
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::hooks::HookHost;
use gateway::metadata::MetadataChange;
use gateway::model::{EventType, NewSession, Tenant};
use gateway::store::{AfterHooked, SessionStore, embedded::EmbeddedStore};
use serde_json::json;
use tokio::sync::{Notify, watch};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let events: usize = a.get(1).map_or(Ok(2000), |s| s.parse())?;
    let sessions: usize = a.get(2).map_or(Ok(50), |s| s.parse())?;
    let dir = tempfile::tempdir()?;
    let mut cfg = gateway::config::Config::default();
    cfg.plugins.cache_dir = dir.path().join("cache");
    let (store, emb): (Arc<dyn SessionStore>, Option<Arc<EmbeddedStore>>) =
        if let Ok(uri) = std::env::var("MONGODB_URI") {
            cfg.storage.kind = gateway::config::StorageType::Mongodb;
            cfg.storage.mongodb.uri = uri;
            cfg.storage.mongodb.database = format!("drain_{}", std::process::id());
            (gateway::open_store(&cfg).await?, None)
        } else {
            let emb = Arc::new(EmbeddedStore::open(&dir.path().join("db.redb"), 64)?);
            (emb.clone(), Some(emb))
        };
    let commits = || emb.as_ref().map(|e| e.commits());
    store.set_after_hooked(AfterHooked::default().with(EventType::MetadataUpdated));
    let t = Tenant("t".into());
    let ids: Vec<String> = (0..sessions).map(|i| format!("s{i:05}")).collect();
    for id in &ids {
        let new: NewSession = serde_json::from_value(json!({ "session_id": id }))?;
        store.create_session(&t, new).await?;
    }
    // Queue the backlog: 8 writers at a time, so it fills in group commits.
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..8 {
        let (store, t, ids) = (store.clone(), t.clone(), ids.clone());
        writers.spawn(async move {
            for i in (w..events).step_by(8) {
                let change = MetadataChange::Update(vec![("n".into(), json!(i))]);
                store
                    .change_metadata(&t, &ids[i % ids.len()], &change)
                    .await
                    .expect("write");
            }
        });
    }
    while let Some(r) = writers.join_next().await {
        r?;
    }
    let queued = store.hook_backlog().await?.pending;
    anyhow::ensure!(
        queued == events as u64,
        "{queued} of {events} events were queued"
    );

    let hooks = Arc::new(HookHost::start(&cfg, None, store.clone()).await?);
    let (stop, stop_rx) = watch::channel(false);
    let commits_before = commits();
    let started = Instant::now();
    let task = tokio::spawn(gateway::events::process(
        store.clone(),
        hooks,
        Arc::new(Notify::new()),
        Arc::new(Notify::new()),
        stop_rx,
    ));
    let deadline = started + Duration::from_secs(120);
    while store.hook_backlog().await?.pending > 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the backlog was not drained in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = started.elapsed();
    let commits = commits().zip(commits_before).map(|(a, b)| a - b);
    stop.send(true)?;
    task.await?;
    println!(
        "{}: drained {events} events in {:.1} ms: {:.0} events/s{}",
        store.name(),
        took.as_secs_f64() * 1e3,
        events as f64 / took.as_secs_f64(),
        commits.map_or(String::new(), |c| format!(
            ", {c} commits ({:.1} events per commit)",
            events as f64 / c.max(1) as f64
        ))
    );
    if emb.is_none() {
        mongodb::Client::with_uri_str(&cfg.storage.mongodb.uri)
            .await?
            .database(&cfg.storage.mongodb.database)
            .drop()
            .await?;
    }
    Ok(())
}
