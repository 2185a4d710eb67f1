//! Closed-loop load: `concurrency` workers, each running session scripts
//! back to back, bounded by an operation count and a time cap.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::http::Http;
use crate::raw::Raw;
use crate::raw_min::RawMin;
use crate::stats::{Caps, Rec, Summary, timed};

/// What performs the operations.
#[derive(Clone)]
pub enum Driver {
    /// The gateway over HTTP.
    Http(Http),
    /// The MongoDB driver directly, doing what the gateway's store did
    /// before the group commit (a transaction per write).
    Raw(Arc<Raw>),
    /// The MongoDB driver directly, one command per operation.
    RawMin(Arc<RawMin>),
}

/// A session script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// 10 operations: create session, put agent, append ×4, list latest 20,
    /// patch metadata, get session, add feedback.
    Full,
    /// 10 Strands-level operations (what the Python peer supports): create
    /// session, create agent, append ×2, update agent, append ×2, update
    /// agent, list latest 20, read session.
    Strands,
}

/// The agent every script uses.
pub const AID: &str = "assistant";

async fn session(d: &Driver, mix: Mix, sid: &str, rec: &mut Rec, deadline: Instant) {
    macro_rules! op {
        ($name:literal, $h:ident => $http:expr, $r:ident => $raw:expr) => {{
            if Instant::now() >= deadline {
                return;
            }
            let ok = match d {
                Driver::Http($h) => timed(rec, $name, $http).await.is_some(),
                Driver::Raw($r) => timed(rec, $name, $raw).await.is_some(),
                Driver::RawMin($r) => timed(rec, $name, $raw).await.is_some(),
            };
            if !ok {
                return;
            }
        }};
    }
    op!("create_session", h => h.create_session(sid), r => r.create_session(sid));
    match mix {
        Mix::Full => {
            op!("put_agent", h => h.put_agent(sid, AID, 0), r => r.put_agent(sid, AID, 0));
            op!("append_message", h => h.append(sid, AID, 0), r => r.append(sid, AID, 0));
            op!("append_message", h => h.append(sid, AID, 1), r => r.append(sid, AID, 1));
            op!("list_latest_20", h => h.list_latest(sid, AID, 20), r => r.list_latest(sid, AID, 20));
            op!("patch_metadata", h => h.patch_metadata(sid, 1), r => r.patch_metadata(sid, 1));
            op!("append_message", h => h.append(sid, AID, 2), r => r.append(sid, AID, 2));
            op!("get_session", h => h.get_session(sid), r => r.get_session(sid));
            op!("append_message", h => h.append(sid, AID, 3), r => r.append(sid, AID, 3));
            op!("add_feedback", h => h.add_feedback(sid), r => r.add_feedback(sid));
        }
        Mix::Strands => {
            op!("create_agent", h => h.put_agent(sid, AID, 0), r => r.put_agent(sid, AID, 0));
            op!("append_message", h => h.append(sid, AID, 0), r => r.append(sid, AID, 0));
            op!("append_message", h => h.append(sid, AID, 1), r => r.append(sid, AID, 1));
            op!("update_agent", h => h.put_agent(sid, AID, 1), r => r.put_agent(sid, AID, 1));
            op!("append_message", h => h.append(sid, AID, 2), r => r.append(sid, AID, 2));
            op!("append_message", h => h.append(sid, AID, 3), r => r.append(sid, AID, 3));
            op!("update_agent", h => h.put_agent(sid, AID, 2), r => r.put_agent(sid, AID, 2));
            op!("list_latest_20", h => h.list_latest(sid, AID, 20), r => r.list_latest(sid, AID, 20));
            op!("get_session", h => h.get_session(sid), r => r.get_session(sid));
        }
    }
}

/// Runs `mix` with `concurrency` workers until `caps`; session ids are
/// `<tag>-<worker>-<n>` (the tag must be unique per phase and target).
pub async fn run(d: &Driver, mix: Mix, concurrency: usize, caps: Caps, tag: &str) -> Summary {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + caps.max_time;
    let mut tasks = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let d = d.clone();
        let done = done.clone();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut rec = Rec::default();
            let mut n = 0u64;
            while Instant::now() < deadline && done.load(Ordering::Relaxed) < caps.max_ops {
                let before = rec.count();
                let sid = format!("{tag}-{w}-{n}");
                session(&d, mix, &sid, &mut rec, deadline).await;
                done.fetch_add(rec.count() - before, Ordering::Relaxed);
                n += 1;
            }
            rec
        }));
    }
    let mut rec = Rec::default();
    for t in tasks {
        if let Ok(r) = t.await {
            rec.merge(r);
        }
    }
    rec.summary(start.elapsed(), concurrency)
}

/// Runs `f(worker, i)` in a closed loop with `concurrency` workers until
/// `caps`, recording each call under `op` (for single-operation phases).
pub async fn run_op<F, Fut>(op: &'static str, concurrency: usize, caps: Caps, f: F) -> Summary
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let f = Arc::new(f);
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + caps.max_time;
    let mut tasks = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let f = f.clone();
        let issued = issued.clone();
        tasks.push(tokio::spawn(async move {
            let mut rec = Rec::default();
            while Instant::now() < deadline {
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if i >= caps.max_ops {
                    break;
                }
                timed(&mut rec, op, f(w, i)).await;
            }
            rec
        }));
    }
    let mut rec = Rec::default();
    for t in tasks {
        if let Ok(r) = t.await {
            rec.merge(r);
        }
    }
    rec.summary(start.elapsed(), concurrency)
}
