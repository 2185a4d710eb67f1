//! Hostile plugins under load: the p99 of ordinary requests with and without
//! hostile hook calls (loop, memory bomb, trap, huge output) running beside
//! them. A measurement, not a timing assertion: it prints the figures (see
//! BENCHMARKS.md, Reliability) and asserts only that every ordinary request
//! succeeded and every hostile one was contained (503). Run with
//! `cargo test --release -p session-gateway --test hostile_load -- --ignored --nocapture`.
//! CI runs a small version (`hostile_plugins_are_contained_under_load`: 2 s
//! phases at 200 requests/s) for those invariants only.
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
//!
//! The gateway runs as its own process with its default per-tenant
//! quarantine, so each hostile plugin runs 5 times (from the second on, on
//! the low-priority suspect lane) and is then skipped for the hostile
//! tenant; `HOSTILE_BREAKER=off` runs every hostile call in full (still on
//! the suspect lane). `HOSTILE_HOOKS` picks some of the hostile hooks, `HOSTILE_SECS` the
//! length of each phase, `HOSTILE_FLOOD=1` removes the hostile client's pacing.

mod common;

use std::time::{Duration, Instant};

use common::GatewayProcess;
use reqwest::StatusCode;
use serde_json::json;

/// The gateway process and a client for it.
struct Gateway {
    client: reqwest::Client,
    base: String,
    _process: GatewayProcess,
}

impl Gateway {
    /// A set-up request that must succeed.
    async fn send(&self, method: reqwest::Method, path: &str, body: serde_json::Value) {
        let r = self
            .client
            .request(method, format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }
}

const ORDINARY: &str = "/v1/sessions/ok/agents/bot/messages?latest=20";

/// One ordinary request: the latest 20 messages of a session no hook
/// touches. A failure is described as "GET path -> status body".
async fn ordinary_request(c: &reqwest::Client, base: &str) -> Result<(), String> {
    let r = c
        .get(format!("{base}{ORDINARY}"))
        .send()
        .await
        .map_err(|e| format!("GET {ORDINARY} -> no response: {e}"))?;
    let status = r.status();
    let body = r.bytes().await.unwrap_or_default();
    if status == StatusCode::OK {
        Ok(())
    } else {
        Err(format!(
            "GET {ORDINARY} -> {status} {}",
            String::from_utf8_lossy(&body)
        ))
    }
}

/// Latencies of one load task and its first few failures.
type TaskResult = (Vec<u128>, Vec<String>);

fn keep_failure(failures: &mut Vec<String>, r: Result<(), String>) {
    if let Err(e) = r
        && failures.len() < 5
    {
        failures.push(e);
    }
}

/// Every task's latencies, in one sorted list; panics with the first
/// failed requests if any request failed.
async fn sorted(tasks: Vec<tokio::task::JoinHandle<TaskResult>>) -> Vec<u128> {
    let (mut all, mut failures) = (Vec::new(), Vec::new());
    for t in tasks {
        let (lat, f) = t.await.unwrap();
        all.extend(lat);
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "ordinary requests failed; the first ones:\n{}",
        failures.join("\n")
    );
    all.sort_unstable();
    all
}

/// Ordinary requests from 4 clients in a closed loop, as fast as they go.
async fn ordinary_load(gw: &Gateway, secs: u64) -> Vec<u128> {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (c, base) = (gw.client.clone(), gw.base.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut failures) = (Vec::new(), Vec::new());
            while Instant::now() < end {
                let t = Instant::now();
                keep_failure(&mut failures, ordinary_request(&c, &base).await);
                lat.push(t.elapsed().as_micros());
            }
            (lat, failures)
        }));
    }
    sorted(tasks).await
}

/// Ordinary requests at `rate` per second, from tasks that each send one
/// every 10 ms (tokio's timer has millisecond granularity). A latency runs
/// from when the request was due if the task's previous request was still
/// running then (the wait it caused counts), else from when the timer woke
/// the task.
async fn paced_load(gw: &Gateway, secs: u64, rate: u64) -> Vec<u128> {
    let end = Instant::now() + Duration::from_secs(secs);
    let every = Duration::from_millis(10);
    let n = u32::try_from((rate / 100).max(1)).unwrap();
    let mut tasks = Vec::new();
    for k in 0..n {
        let (c, base) = (gw.client.clone(), gw.base.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut failures) = (Vec::new(), Vec::new());
            let mut due = Instant::now() + every * k / n;
            let mut last_done = Instant::now();
            while due < end {
                tokio::time::sleep_until(due.into()).await;
                let from = if last_done > due { due } else { Instant::now() };
                keep_failure(&mut failures, ordinary_request(&c, &base).await);
                last_done = Instant::now();
                lat.push((last_done - from).as_micros());
                due += every;
            }
            (lat, failures)
        }));
    }
    sorted(tasks).await
}

fn pct(v: &[u128], p: f64) -> u128 {
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

/// CI's small version: 2 s phases at 200 requests/s, every hostile hook;
/// asserts only the invariants (every ordinary request succeeded, every
/// hostile one was contained), no timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_are_contained_under_load() {
    hostile_load(2, 200, "loop,huge,trap,bomb".into(), false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run explicitly (see module docs)"]
async fn hostile_plugins_p99() {
    let secs: u64 = std::env::var("HOSTILE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let rate: u64 = std::env::var("HOSTILE_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000);
    let picked = std::env::var("HOSTILE_HOOKS").unwrap_or_else(|_| "loop,huge,trap,bomb".into());
    let breaker_off = std::env::var("HOSTILE_BREAKER").as_deref() == Ok("off");
    let flood = std::env::var("HOSTILE_FLOOD").as_deref() == Ok("1");
    hostile_load(secs, rate, picked, breaker_off, flood).await;
}

async fn hostile_load(secs: u64, rate: u64, picked: String, breaker_off: bool, flood: bool) {
    // Knobs for finding what costs: HOSTILE_HOOKS picks some of
    // loop,huge (on metadata.update) and trap,bomb (on metadata.delete).
    let picked: Vec<&str> = picked.split(',').collect();
    let update = picked.contains(&"loop") || picked.contains(&"huge");
    let delete = picked.contains(&"trap") || picked.contains(&"bomb");
    // Each hostile request meets two hooks: the first fails open, so the second runs too.
    let hooks = [
        (
            "loop",
            "fixture_loop",
            "metadata.update",
            "timeout_ms = 50\non_error = \"allow\"",
        ),
        (
            "huge",
            "fixture_huge_rewrite",
            "metadata.update",
            "memory_mb = 128\ntimeout_ms = 1000",
        ),
        (
            "trap",
            "fixture_trap",
            "metadata.delete",
            "on_error = \"allow\"",
        ),
        (
            "bomb",
            "fixture_membomb",
            "metadata.delete",
            "memory_mb = 64\ntimeout_ms = 1000",
        ),
    ];
    let hooks: Vec<_> = hooks.iter().filter(|h| picked.contains(&h.0)).collect();
    // Alone, a fail-open hook (loop, trap) lets its request succeed.
    let all = hooks.len() == 4;
    // The gateway runs as its own process, as in production: its two
    // worker threads serve only it, and the load generator's tasks are not
    // delayed by whatever stalls a gateway worker (they still share the CPU).
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut config = common::ProcessConfig::new(port);
    // HOSTILE_BREAKER=off measures every hostile call running in full, with
    // the per-tenant quarantine turned off.
    let breaker = if breaker_off {
        "breaker = { failures = 0 }"
    } else {
        ""
    };
    for (name, file, events, extra) in &hooks {
        config = config.hook(
            name,
            &common::plugin(file),
            "before",
            &[events],
            &format!("{extra}\n{breaker}"),
        );
    }
    let gw = GatewayProcess::start(dir.path(), &config.to_string(), "error").await;
    let gw = Gateway {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        base: gw.base.clone(),
        _process: gw,
    };
    for id in ["ok", "evil"] {
        gw.send(
            reqwest::Method::POST,
            "/v1/sessions",
            json!({ "session_id": id }),
        )
        .await;
    }
    gw.send(
        reqwest::Method::PUT,
        "/v1/sessions/ok/agents/bot",
        json!({}),
    )
    .await;
    for i in 0..50 {
        gw.send(
            reqwest::Method::POST,
            "/v1/sessions/ok/agents/bot/messages",
            json!({"message": {"i": i}}),
        )
        .await;
    }
    let paced_baseline = paced_load(&gw, secs, rate).await;
    let saturating_baseline = ordinary_load(&gw, secs).await;

    // The hostile client starts a request at most every 10 ms (back to back
    // while hostile calls take longer than that, as they do unless
    // quarantined). Once its calls are refused at once, an unpaced client
    // would send thousands of cheap requests a second: a flood, which is the
    // per-key rate limit's business, and which would measure one more busy
    // client rather than the plugins. HOSTILE_FLOOD=1 sends them unpaced.
    let hostile_gap = if flood {
        None
    } else {
        Some(Duration::from_millis(10))
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hostile = {
        let (c, base, stop) = (gw.client.clone(), gw.base.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut n, mut sent) = (0u64, 0u64);
            let mut next = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(gap) = hostile_gap {
                    tokio::time::sleep_until(next.into()).await;
                    next = Instant::now() + gap;
                }
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
                let status = r.status();
                if (all || !status.is_success()) && status != StatusCode::SERVICE_UNAVAILABLE {
                    let what = if n % 2 == 0 {
                        "PATCH /v1/sessions/evil/metadata"
                    } else {
                        "DELETE /v1/sessions/evil/metadata?keys=a"
                    };
                    let body = r.text().await.unwrap_or_default();
                    panic!("a hostile request was not contained (503): {what} -> {status} {body}");
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
    println!("hostile load: {hostile_calls} hostile requests, every one contained (503)");
    assert!(hostile_calls > 0, "no hostile request was sent");
    let plugins: serde_json::Value = gw
        .client
        .get(format!("{}/v1/admin/plugins", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for p in plugins["plugins"].as_array().unwrap() {
        println!(
            "hostile load: plugin {}: {} calls ({} on the suspect lane), {} failed, slowest {} us; quarantined {} times, {} calls skipped",
            p["name"],
            p["calls"],
            p["breaker"]["isolated_calls"],
            p["errors"],
            p["latency_us_max"],
            p["breaker"]["trips"],
            p["breaker"]["skipped_calls"]
        );
    }
}
