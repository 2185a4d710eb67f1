//! Request ids and Prometheus metrics.

mod common;

use common::{Backend, TestGateway, hook};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_and_metrics() {
    let gw = TestGateway::with_hooks(
        Backend::Embedded,
        vec![hook(
            "allow",
            "fixture_allow",
            "before",
            &["metadata.update"],
            "",
        )],
    )
    .await
    .unwrap();
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
        "gateway_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/sessions/{sid}\",le=\"+Inf\"} 3",
        "gateway_http_responses_total{method=\"GET\",route=\"/v1/sessions/{sid}\",status=\"404\"} 1",
        "gateway_http_responses_total{method=\"PATCH\",route=\"/v1/sessions/{sid}/metadata\",status=\"200\"} 1",
        "gateway_hook_calls_total{plugin=\"allow\"} 1",
        "gateway_hook_errors_total{plugin=\"allow\"} 0",
        "gateway_outbox_items{state=\"pending\"} 0",
        "gateway_sse_feeds 0",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}
