//! Soak: mixed load against the real binary for `SOAK_SECS` (default 60 in
//! CI; `scripts/soak.sh` runs 600), reporting throughput, errors and the
//! gateway's RSS growth. Asserts only that nothing failed: the figures are
//! printed, not asserted (timings belong in BENCHMARKS.md).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use common::{GatewayProcess, ProcessConfig, free_port, rss_kb};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mixed_load() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = ProcessConfig::new(port)
        .tables("[retention]\nevents = \"30s\"\nsweep_interval_ms = 5000")
        .hook(
            "validate",
            &common::plugin("metadata_validator"),
            "before",
            &["metadata.update"],
            "timeout_ms = 10000\nconfig = { types = { status = \"string\" } }",
        )
        .hook(
            "audit",
            &common::plugin("audit_log"),
            "after",
            &["metadata.update", "feedback.add"],
            "timeout_ms = 10000",
        )
        .to_string();
    let gw = GatewayProcess::start(dir.path(), &config, "warn").await;
    let pid = gw.pid();
    let base = gw.base.clone();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // The first few failures, as "METHOD path -> status body".
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let warm_until = Instant::now() + Duration::from_secs(secs.min(60) / 6);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut rss_after_warmup = 0;
    let mut workers = Vec::new();
    for w in 0..8u64 {
        let (client, base, ok, failed, failures) = (
            client.clone(),
            base.clone(),
            ok.clone(),
            failed.clone(),
            failures.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < end {
                // A fresh session every 200 operations, deleted afterwards: a bounded working set.
                let sid = format!("soak-{w}-{}", n / 200);
                let ops: Vec<(reqwest::Method, String, Option<Value>)> = vec![
                    (
                        reqwest::Method::POST,
                        "/v1/sessions".into(),
                        Some(json!({"session_id": sid})),
                    ),
                    (
                        reqwest::Method::PUT,
                        format!("/v1/sessions/{sid}/agents/bot"),
                        Some(json!({"state": {"n": n}})),
                    ),
                    (
                        reqwest::Method::POST,
                        format!("/v1/sessions/{sid}/agents/bot/messages"),
                        Some(json!({"message": {"role": "user", "content": [{"text": "hello"}]}})),
                    ),
                    (
                        reqwest::Method::GET,
                        format!("/v1/sessions/{sid}/agents/bot/messages?latest=20"),
                        None,
                    ),
                    (
                        reqwest::Method::PATCH,
                        format!("/v1/sessions/{sid}/metadata"),
                        Some(json!({"status": "active", "n": n})),
                    ),
                    (reqwest::Method::GET, format!("/v1/sessions/{sid}"), None),
                    (
                        reqwest::Method::POST,
                        format!("/v1/sessions/{sid}/feedbacks"),
                        Some(json!({"rating": "up"})),
                    ),
                ];
                for (m, path, body) in ops {
                    let mut req = client.request(m.clone(), format!("{base}{path}"));
                    if let Some(b) = body {
                        req = req.json(&b);
                    }
                    let failure = match req.send().await {
                        // 409: the session of this block already exists (created by an earlier round).
                        Ok(r)
                            if r.status().is_success()
                                || r.status() == reqwest::StatusCode::CONFLICT =>
                        {
                            ok.fetch_add(1, Relaxed);
                            continue;
                        }
                        Ok(r) => {
                            let status = r.status();
                            let body = r.text().await.unwrap_or_else(|e| format!("<{e}>"));
                            format!("{m} {path} -> {status} {body}")
                        }
                        Err(e) => format!("{m} {path} -> no response: {e}"),
                    };
                    failed.fetch_add(1, Relaxed);
                    let mut f = failures.lock().unwrap();
                    if f.len() < 5 {
                        f.push(failure);
                    }
                }
                n += 7;
                if n % 200 < 7 {
                    let old = format!("soak-{w}-{}", n / 200 - 1);
                    let _ = client
                        .delete(format!("{base}/v1/sessions/{old}"))
                        .send()
                        .await;
                }
            }
        }));
    }
    // RSS once a minute, so a long soak shows a trend, not just two points.
    let started = Instant::now();
    let mut samples = Vec::new();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if rss_after_warmup == 0 && Instant::now() >= warm_until {
            rss_after_warmup = rss_kb(pid);
        }
        let minute = started.elapsed().as_secs() / 60;
        if minute > samples.len() as u64 {
            samples.push(rss_kb(pid));
            println!(
                "soak: {minute} min, {} ok, {} failed, RSS {} kB",
                ok.load(Relaxed),
                failed.load(Relaxed),
                samples[samples.len() - 1]
            );
        }
    }
    for w in workers {
        w.await.unwrap();
    }
    let rss_end = rss_kb(pid);
    let (ok, failed) = (ok.load(Relaxed), failed.load(Relaxed));
    println!(
        "soak: {secs} s, {ok} ok, {failed} failed, {:.0} req/s, RSS {rss_after_warmup} kB after warm-up -> {rss_end} kB at end ({:+} kB)",
        ok as f64 / secs as f64,
        rss_end as i64 - rss_after_warmup as i64
    );
    drop(gw);
    assert_eq!(
        failed,
        0,
        "requests failed during the soak; the first ones:\n{}",
        failures.lock().unwrap().join("\n")
    );
    assert!(ok > 0);
}
