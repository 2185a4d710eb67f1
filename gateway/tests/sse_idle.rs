//! Idle SSE subscribers: every one still receives the next event of its
//! session, and subscribers of one session share one feed.
//!
//! - `idle_subscribers_all_get_the_next_event` (CI): 100 subscribers on 10
//!   sessions; asserts only those invariants.
//! - `thousand_idle_subscribers` (a measurement, printed, see BENCHMARKS.md):
//!   1 000 subscribers, with the gateway's RSS before and after; run with
//!   `cargo test --release -p session-gateway --test sse_idle -- --ignored --nocapture`.

mod common;

use std::time::Duration;

use common::{GatewayProcess, ProcessConfig, free_port, rss_kb};
use serde_json::json;

/// A request that must succeed; on failure, says which, with status and body.
async fn must(req: reqwest::RequestBuilder, what: &str) -> reqwest::Response {
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: no response: {e}"));
    if !r.status().is_success() {
        let status = r.status();
        panic!("{what} -> {status} {}", r.text().await.unwrap_or_default());
    }
    r
}

/// The value of gauge `name` in the gateway's `/metrics`.
async fn gauge(client: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
    let text = must(client.get(format!("{base}/metrics")), "GET /metrics")
        .await
        .text()
        .await
        .unwrap();
    text.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// `subscribers` idle streams over `sessions` sessions; returns the RSS
/// (kB) before and after they connected, once each got the next event.
async fn idle_subscribers(subscribers: usize, sessions: usize, settle: Duration) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = ProcessConfig::new(port).to_string();
    let gw = GatewayProcess::start(dir.path(), &config, "warn").await;
    let base = gw.base.clone();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for s in 0..sessions {
        must(
            client
                .post(format!("{base}/v1/sessions"))
                .json(&json!({"session_id": format!("s{s}")})),
            &format!("POST /v1/sessions (s{s})"),
        )
        .await;
    }
    tokio::time::sleep(settle).await;
    let before = rss_kb(gw.pid());
    let mut streams = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let c = reqwest::Client::new(); // one connection each, like real subscribers
        let path = format!("/v1/sessions/s{}/events", i % sessions);
        let r = must(c.get(format!("{base}{path}")), &format!("GET {path}")).await;
        streams.push((c, r));
    }
    // One feed per session, however many subscribers.
    assert_eq!(
        gauge(&client, &base, "gateway_sse_feeds").await,
        Some(sessions as f64)
    );
    tokio::time::sleep(settle).await;
    let after = rss_kb(gw.pid());
    // Every subscriber still gets the next change of its session.
    for s in 0..sessions {
        must(
            client
                .patch(format!("{base}/v1/sessions/s{s}/metadata"))
                .json(&json!({"n": s})),
            &format!("PATCH /v1/sessions/s{s}/metadata"),
        )
        .await;
    }
    let mut missed = Vec::new();
    for (i, (_, r)) in streams.iter_mut().enumerate() {
        let mut got = String::new();
        // Generous: a loaded machine may take a while to reach the last one.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !got.contains("event: metadata.updated") {
            match tokio::time::timeout_at(deadline, r.chunk()).await {
                Ok(Ok(Some(bytes))) => got.push_str(&String::from_utf8_lossy(&bytes)),
                other => {
                    missed.push(format!(
                        "subscriber {i} of s{}: {other:?} after {got:?}",
                        i % sessions
                    ));
                    break;
                }
            }
        }
    }
    println!(
        "sse idle: {subscribers} subscribers on {sessions} sessions: RSS {before} kB -> {after} kB ({:.1} kB per subscriber); {}/{subscribers} got the next event",
        (after as f64 - before as f64) / subscribers as f64,
        subscribers - missed.len()
    );
    assert!(
        missed.is_empty(),
        "{} subscribers missed the event; the first ones:\n{}",
        missed.len(),
        missed[..missed.len().min(5)].join("\n")
    );
    drop(gw);
    (before, after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_subscribers_all_get_the_next_event() {
    idle_subscribers(100, 10, Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run explicitly (see module docs)"]
async fn thousand_idle_subscribers() {
    idle_subscribers(1_000, 100, Duration::from_secs(2)).await;
}
