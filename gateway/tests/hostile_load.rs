//! Hostile plugins under load: the p99 of ordinary requests with and without
//! hostile hook calls (loop, memory bomb, trap, huge output) running beside
//! them. A measurement, not a timing assertion: it prints the figures (see
//! BENCHMARKS.md, Reliability) and asserts only that every ordinary request
//! succeeded and every hostile one was contained (503). Run with
//! `cargo test --release -p session-gateway --test hostile_load -- --ignored --nocapture`.
//!
//! Two kinds of ordinary load, each measured without and then with the
//! hostile requests:
//! - **paced:** a fixed rate (`HOSTILE_RATE`, default 4000 requests/s, well
//!   under what the machine can serve), each latency counted from when the
//!   request was due, so a stall also counts against the requests it delayed;
//! - **saturating:** 4 clients in a closed loop, as fast as they go. The
//!   machine is then already out of CPU, so whatever the hostile plugins burn
//!   shows up as queueing: this measures the share of CPU they take, not
//!   whether they are contained.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestGateway, hook};
use reqwest::StatusCode;
use serde_json::json;

/// One ordinary request: the latest 20 messages of a session no hook touches.
async fn ordinary_request(c: &reqwest::Client, base: &str) {
    let r = c
        .get(format!(
            "{base}/v1/sessions/ok/agents/bot/messages?latest=20"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let _ = r.bytes().await;
}

/// Every task's latencies, in one sorted list.
async fn sorted(tasks: Vec<tokio::task::JoinHandle<Vec<u128>>>) -> Vec<u128> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    all
}

/// Ordinary requests from 4 clients in a closed loop, as fast as they go.
async fn ordinary_load(gw: &TestGateway, secs: u64) -> Vec<u128> {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (c, base) = (gw.client.clone(), gw.base.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < end {
                let t = Instant::now();
                ordinary_request(&c, &base).await;
                lat.push(t.elapsed().as_micros());
            }
            lat
        }));
    }
    sorted(tasks).await
}

/// Ordinary requests at `rate` per second, from tasks that each send one
/// every 10 ms (tokio's timer has millisecond granularity). A latency runs
/// from when the request was due if the task's previous request was still
/// running then (the wait it caused counts), else from when the timer woke
/// the task.
async fn paced_load(gw: &TestGateway, secs: u64, rate: u64) -> Vec<u128> {
    let end = Instant::now() + Duration::from_secs(secs);
    let every = Duration::from_millis(10);
    let n = u32::try_from((rate / 100).max(1)).unwrap();
    let mut tasks = Vec::new();
    for k in 0..n {
        let (c, base) = (gw.client.clone(), gw.base.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut due = Instant::now() + every * k / n;
            let mut last_done = Instant::now();
            while due < end {
                tokio::time::sleep_until(due.into()).await;
                let from = if last_done > due { due } else { Instant::now() };
                ordinary_request(&c, &base).await;
                last_done = Instant::now();
                lat.push((last_done - from).as_micros());
                due += every;
            }
            lat
        }));
    }
    sorted(tasks).await
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
    // Knobs for finding what costs: HOSTILE_HOOKS picks some of
    // loop,huge (on metadata.update) and trap,bomb (on metadata.delete).
    let picked = std::env::var("HOSTILE_HOOKS").unwrap_or_else(|_| "loop,huge,trap,bomb".into());
    let picked: Vec<&str> = picked.split(',').collect();
    let update = picked.contains(&"loop") || picked.contains(&"huge");
    let delete = picked.contains(&"trap") || picked.contains(&"bomb");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(Backend::Embedded, &dir).unwrap();
    cfg.hooks = vec![
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
    ];
    cfg.hooks.retain(|h| picked.contains(&h.name.as_str()));
    // Alone, a fail-open hook (loop, trap) lets its request succeed.
    let all = cfg.hooks.len() == 4;
    let gw = TestGateway::start(cfg).await;
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
    let rate: u64 = std::env::var("HOSTILE_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000);
    let paced_baseline = paced_load(&gw, secs, rate).await;
    let saturating_baseline = ordinary_load(&gw, secs).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hostile = {
        let (c, base, stop) = (gw.client.clone(), gw.base.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut n, mut sent) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = match n % 2 {
                    0 if update || !delete => {
                        c.patch(format!("{base}/v1/sessions/evil/metadata"))
                            .json(&json!({"a": 1}))
                            .send()
                            .await
                    }
                    _ if !delete => {
                        n += 1;
                        continue;
                    }
                    _ => {
                        c.delete(format!("{base}/v1/sessions/evil/metadata?keys=a"))
                            .send()
                            .await
                    }
                }
                .unwrap();
                if all || !r.status().is_success() {
                    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
                }
                n += 1;
                sent += 1;
            }
            sent
        })
    };
    let paced_attack = paced_load(&gw, secs, rate).await;
    let saturating_attack = ordinary_load(&gw, secs).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let hostile_calls = hostile.await.unwrap();
    let line = |name: &str, base: &[u128], attack: &[u128]| {
        println!(
            "hostile load, {name}: baseline p50 {} us p99 {} us ({} req); with hostile plugins p50 {} us p99 {} us ({} req); p99 ratio {:.2}",
            pct(base, 0.5),
            pct(base, 0.99),
            base.len(),
            pct(attack, 0.5),
            pct(attack, 0.99),
            attack.len(),
            pct(attack, 0.99) as f64 / pct(base, 0.99) as f64
        );
    };
    line(&format!("paced {rate}/s"), &paced_baseline, &paced_attack);
    line("saturating", &saturating_baseline, &saturating_attack);
    println!("hostile load: {hostile_calls} hostile calls, every one contained (503)");
}
