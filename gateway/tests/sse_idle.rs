//! 1 000 idle SSE subscribers: the gateway's RSS before and after, and proof
//! that they all still receive the next event. A measurement (printed, see
//! BENCHMARKS.md); run with
//! `cargo test --release -p session-gateway --test sse_idle -- --ignored --nocapture`.

mod common;

use std::time::Duration;

use common::{GatewayProcess, free_port, rss_kb};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run explicitly (see module docs)"]
async fn thousand_idle_subscribers() {
    const SUBSCRIBERS: usize = 1_000;
    const SESSIONS: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage.embedded]\npath = \"gateway.redb\"\n[plugins]\nwatch = false\ncache_dir = \"cache\"\n"
    );
    let gw = GatewayProcess::start(dir.path(), &config, "warn").await;
    let base = gw.base.clone();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for s in 0..SESSIONS {
        client
            .post(format!("{base}/v1/sessions"))
            .json(&json!({"session_id": format!("s{s}")}))
            .send()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kb(gw.pid());
    let mut streams = Vec::with_capacity(SUBSCRIBERS);
    for i in 0..SUBSCRIBERS {
        let c = reqwest::Client::new(); // one connection each, like real subscribers
        let r = c
            .get(format!("{base}/v1/sessions/s{}/events", i % SESSIONS))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        streams.push((c, r));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kb(gw.pid());
    // Every subscriber still gets the next change of its session.
    for s in 0..SESSIONS {
        client
            .patch(format!("{base}/v1/sessions/s{s}/metadata"))
            .json(&json!({"n": s}))
            .send()
            .await
            .unwrap();
    }
    let mut delivered = 0;
    for (_, r) in &mut streams {
        let got = tokio::time::timeout(Duration::from_secs(10), r.chunk()).await;
        if matches!(got, Ok(Ok(Some(_)))) {
            delivered += 1;
        }
    }
    println!(
        "sse idle: {SUBSCRIBERS} subscribers on {SESSIONS} sessions: RSS {before} kB -> {after} kB ({:.1} kB per subscriber); {delivered}/{SUBSCRIBERS} got the next event",
        (after as f64 - before as f64) / SUBSCRIBERS as f64
    );
    assert_eq!(delivered, SUBSCRIBERS);
    drop(gw);
}
