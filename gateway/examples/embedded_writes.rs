//! Diagnostic: what one write costs the embedded store's writer thread, with
//! no HTTP in front of it.
//!
//! `cargo run --release -p session-gateway --example embedded_writes -- [patch|append] [concurrency] [seconds]`
//!
//! `[concurrency]` tasks (default 32), each on its own session with one
//! agent, write for `[seconds]` (default 5): metadata patches, or message
//! appends with a body like the benchmark's assistant turns. Prints writes
//! per second, the writer thread's CPU per write, and writes per commit.
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::metadata::MetadataChange;
use gateway::model::{MessageInput, NewSession, Tenant};
use gateway::store::{SessionStore, embedded::EmbeddedStore};
use serde_json::json;

/// CPU ticks (10 ms) of this process's `embedded-writer` thread.
fn writer_ticks() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim_end() == "embedded-writer")
        })
        .filter_map(|t| {
            let s = std::fs::read_to_string(t.path().join("stat")).ok()?;
            let rest = s.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let op = a.get(1).cloned().unwrap_or_else(|| "patch".into());
    let conc: usize = a.get(2).map_or(Ok(32), |s| s.parse())?;
    let secs: u64 = a.get(3).map_or(Ok(5), |s| s.parse())?;
    anyhow::ensure!(op == "patch" || op == "append", "op is patch or append");
    let dir = tempfile::tempdir_in(".")?;
    let emb = Arc::new(EmbeddedStore::open(&dir.path().join("db.redb"), 64)?);
    let store: Arc<dyn SessionStore> = emb.clone();
    let t = Tenant("t".into());
    for w in 0..conc {
        let new: NewSession = serde_json::from_value(json!({
            "session_id": format!("s{w}"),
            "metadata": {"status": "new", "user": {"id": format!("u{w}"), "tier": "gold"}, "channel": "web"},
        }))?;
        store.create_session(&t, new).await?;
        store
            .put_agent(
                &t,
                &format!("s{w}"),
                "assistant",
                json!({"state": {"turn": 0}}).as_object().cloned().unwrap(),
                None,
            )
            .await?;
    }
    let (t0, c0) = (writer_ticks(), emb.commits());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..conc {
        let (store, t, op) = (store.clone(), t.clone(), op.clone());
        tasks.spawn(async move {
            let sid = format!("s{w}");
            let mut n = 0u64;
            while Instant::now() < deadline {
                if op == "patch" {
                    let change = MetadataChange::Update(vec![
                        ("status".into(), json!("active")),
                        ("turns".into(), json!(n)),
                    ]);
                    store.change_metadata(&t, &sid, &change).await.expect("patch");
                } else {
                    let input: MessageInput = serde_json::from_value(json!({
                        "message": {"role": "assistant", "content": [{"text": format!("answer {n}: the breach was in region eu-west-1, ticket 4412; next step is to page the owner")}]},
                        "event_loop_metrics": {"cycle_count": 2, "latency_ms": 812, "input_tokens": 1400, "output_tokens": 210, "tools": {"search": 1}},
                    }))
                    .expect("input");
                    store
                        .append_message(&t, &sid, "assistant", input)
                        .await
                        .expect("append");
                }
                n += 1;
            }
            n
        });
    }
    let mut writes = 0;
    while let Some(n) = tasks.join_next().await {
        writes += n?;
    }
    let took = started.elapsed().as_secs_f64();
    let (ticks, commits) = (writer_ticks() - t0, emb.commits() - c0);
    println!(
        "{op} c={conc}: {:.0} writes/s, writer thread {:.0} µs CPU per write, {:.1} writes per commit",
        writes as f64 / took,
        ticks as f64 * 10_000.0 / writes.max(1) as f64,
        writes as f64 / commits.max(1) as f64
    );
    Ok(())
}
