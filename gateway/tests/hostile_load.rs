//! Hostile plugins under load: the p99 of ordinary requests with and without
//! hostile hook calls (loop, memory bomb, trap, huge output) running beside
//! them. A measurement, not a timing assertion: it prints the figures (see
//! BENCHMARKS.md, Reliability) and asserts only that every ordinary request
//! succeeded and every hostile one was contained (503). Run with
//! `cargo test --release -p session-gateway --test hostile_load -- --ignored --nocapture`.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestGateway, hook};
use reqwest::StatusCode;
use serde_json::json;

async fn ordinary_load(gw: &TestGateway, secs: u64) -> Vec<u128> {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (c, base) = (gw.client.clone(), gw.base.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < end {
                let t = Instant::now();
                let r = c
                    .get(format!(
                        "{base}/v1/sessions/ok/agents/bot/messages?latest=20"
                    ))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                let _ = r.bytes().await;
                lat.push(t.elapsed().as_micros());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    all
}

fn pct(v: &[u128], p: f64) -> u128 {
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run explicitly (see module docs)"]
async fn hostile_plugins_p99() {
    let secs: u64 = std::env::var("HOSTILE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let gw = TestGateway::with_hooks(
        Backend::Embedded,
        vec![
            // Each hostile request meets two: the first fails open, so the second runs too.
            hook(
                "loop",
                "fixture_loop",
                "before",
                &["metadata.update"],
                "timeout_ms = 50\non_error = \"allow\"",
            ),
            hook(
                "huge",
                "fixture_huge_rewrite",
                "before",
                &["metadata.update"],
                "memory_mb = 128\ntimeout_ms = 1000",
            ),
            hook(
                "trap",
                "fixture_trap",
                "before",
                &["metadata.delete"],
                "on_error = \"allow\"",
            ),
            hook(
                "bomb",
                "fixture_membomb",
                "before",
                &["metadata.delete"],
                "memory_mb = 64\ntimeout_ms = 1000",
            ),
        ],
    )
    .await
    .unwrap();
    gw.session("ok").await;
    gw.session("evil").await;
    gw.put("/v1/sessions/ok/agents/bot", json!({})).await;
    for i in 0..50 {
        gw.post(
            "/v1/sessions/ok/agents/bot/messages",
            json!({"message": {"i": i}}),
        )
        .await;
    }
    let baseline = ordinary_load(&gw, secs).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hostile = {
        let (c, base, stop) = (gw.client.clone(), gw.base.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = match n % 2 {
                    0 => {
                        c.patch(format!("{base}/v1/sessions/evil/metadata"))
                            .json(&json!({"a": 1}))
                            .send()
                            .await
                    }
                    _ => {
                        c.delete(format!("{base}/v1/sessions/evil/metadata?keys=a"))
                            .send()
                            .await
                    }
                }
                .unwrap();
                assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
                n += 1;
            }
            n
        })
    };
    let under_attack = ordinary_load(&gw, secs).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let hostile_calls = hostile.await.unwrap();
    println!(
        "hostile load: baseline p50 {} us p99 {} us ({} req); with hostile plugins p50 {} us p99 {} us ({} req, {} hostile calls contained); p99 ratio {:.2}",
        pct(&baseline, 0.5),
        pct(&baseline, 0.99),
        baseline.len(),
        pct(&under_attack, 0.5),
        pct(&under_attack, 0.99),
        under_attack.len(),
        hostile_calls,
        pct(&under_attack, 0.99) as f64 / pct(&baseline, 0.99) as f64
    );
}
