//! Request ids and Prometheus metrics.

mod common;

use std::time::Duration;

use common::{Backend, TestGateway, hook};
use reqwest::StatusCode;
use serde_json::json;

/// The value of the sample `series` (name with labels) in a Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

async fn metrics(gw: &TestGateway) -> String {
    let r = gw
        .client
        .get(format!("{}/metrics", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.text().await.unwrap()
}

/// Polls `/metrics` until `series` has `value`.
async fn wait_sample(gw: &TestGateway, series: &str, value: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = metrics(gw).await;
        if sample(&text, series) == Some(value) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} is not {value} after 30 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn request_ids_and_metrics(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cfg) = common::config(b, &dir) else {
        return;
    };
    // A closed stream is noticed at the next write: heartbeat often.
    cfg.server.sse_heartbeat_ms = 200;
    cfg.hooks = vec![
        hook("allow", "fixture_allow", "before", &["metadata.update"], ""),
        // Publishes each feedback; no target is configured, so it stays
        // pending in the outbox.
        hook(
            "router",
            "feedback_router",
            "after",
            &["feedback.add"],
            "grants = { publish = [\"good\", \"bad\", \"neutral\"] }",
        ),
    ];
    let gw = TestGateway::start(cfg).await;
    gw.session("s").await;
    gw.patch("/v1/sessions/s/metadata", json!({"a": 1})).await;
    gw.get("/v1/sessions/missing").await;
    // A given request id comes back; otherwise one is generated.
    let r = gw
        .client
        .get(format!("{}/v1/sessions/s", gw.base))
        .header("X-Request-Id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-123");
    let r = gw
        .client
        .get(format!("{}/v1/sessions/s", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"].len(), 32);

    let r = gw
        .client
        .get(format!("{}/metrics", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    for needle in [
        // (prometheus-client writes `le` first; label order carries no meaning)
        "gateway_http_request_duration_seconds_bucket{le=\"+Inf\",method=\"GET\",route=\"/v1/sessions/{sid}\"} 3",
        "gateway_http_responses_total{method=\"GET\",route=\"/v1/sessions/{sid}\",status=\"404\"} 1",
        "gateway_http_responses_total{method=\"PATCH\",route=\"/v1/sessions/{sid}/metadata\",status=\"200\"} 1",
        "gateway_hook_calls_total{plugin=\"allow\"} 1",
        "gateway_hook_errors_total{plugin=\"allow\"} 0",
        "gateway_outbox_items{state=\"pending\"} 0",
        "gateway_outbox_items{state=\"dead\"} 0",
        "gateway_sse_feeds 0",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    if b == Backend::Mongo {
        // The driver's pool: at least the connection that served us.
        let in_use = sample(&text, "gateway_mongodb_connections{state=\"in_use\"}");
        let idle = sample(&text, "gateway_mongodb_connections{state=\"idle\"}");
        assert!(
            matches!((in_use, idle), (Some(u), Some(i)) if u + i >= 1.0),
            "pool gauges {in_use:?} {idle:?} in:\n{text}"
        );
        assert!(
            sample(&text, "gateway_mongodb_checkout_failures_total").is_some(),
            "{text}"
        );
    } else {
        // The writes so far were committed, each commit holding one or more.
        let jobs = sample(&text, "gateway_embedded_writer_jobs_total");
        let commits = sample(&text, "gateway_embedded_writer_commits_total");
        assert!(
            matches!((jobs, commits), (Some(j), Some(c)) if c >= 1.0 && j >= c),
            "writer counters {jobs:?} {commits:?} in:\n{text}"
        );
    }
    for gauge in [
        "gateway_after_hook_events_pending",
        "gateway_after_hook_oldest_event_age_seconds",
    ] {
        assert!(
            sample(&text, gauge).is_some(),
            "missing {gauge} in:\n{text}"
        );
    }

    // The gauges move: an open stream is a feed, a published notification
    // with no target configured waits in the outbox.
    let stream = gw
        .client
        .get(format!("{}/v1/sessions/s/events", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let (s, v) = gw
        .post("/v1/sessions/s/feedbacks", json!({"rating": "up"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    wait_sample(&gw, "gateway_sse_feeds", 1.0).await;
    wait_sample(&gw, "gateway_outbox_items{state=\"pending\"}", 1.0).await;
    wait_sample(&gw, "gateway_hook_calls_total{plugin=\"router\"}", 1.0).await;
    // The feedback's after-hooks completed: nothing waits.
    wait_sample(&gw, "gateway_after_hook_events_pending", 0.0).await;
    wait_sample(&gw, "gateway_after_hook_oldest_event_age_seconds", 0.0).await;
    drop(stream);
    wait_sample(&gw, "gateway_sse_feeds", 0.0).await;
}

on_both_stores!(request_ids_and_metrics);
