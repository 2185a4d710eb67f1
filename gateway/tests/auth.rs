//! API keys, tenants, roles and request limits.

mod common;

use std::time::Duration;

use common::{Backend, TestGateway, assert_error, hook};
use gateway::auth::{AuthConfig, AuthMode, KeyConfig, Role, hash_key, new_key};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

struct Keys {
    a: String,
    b: String,
    reader: String,
    admin: String,
}

fn auth() -> (AuthConfig, Keys) {
    let k = Keys {
        a: new_key(),
        b: new_key(),
        reader: new_key(),
        admin: new_key(),
    };
    let entry = |id: &str, tenant: &str, role, key: &str| KeyConfig {
        id: id.into(),
        tenant: tenant.into(),
        role,
        sha256: hash_key(key),
    };
    let cfg = AuthConfig {
        mode: AuthMode::Keys,
        keys: vec![
            entry("a", "team-a", Role::Agent, &k.a),
            entry("b", "team-b", Role::Agent, &k.b),
            entry("r", "team-a", Role::Reader, &k.reader),
            entry("admin", "ops", Role::Admin, &k.admin),
        ],
    };
    (cfg, k)
}

async fn call(
    gw: &TestGateway,
    key: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut req = gw.client.request(method, format!("{}{path}", gw.base));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    TestGateway::parts(req.send().await.unwrap()).await
}

async fn tenants_are_isolated(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cfg) = common::config(b, &dir) else {
        return;
    };
    let (auth, k) = auth();
    cfg.auth = auth;
    let gw = TestGateway::start(cfg).await;
    // No key / a wrong key: 401.
    let (s, h, v) = call(&gw, None, Method::GET, "/v1/sessions", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_error(&v, "unauthorized");
    let _ = h;
    assert_eq!(
        call(&gw, Some("sgw_wrong"), Method::GET, "/v1/sessions", None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    // Probes need no key.
    assert_eq!(
        call(&gw, None, Method::GET, "/healthz", None).await.0,
        StatusCode::OK
    );
    // The same session id in two tenants: two sessions.
    let body = |t: &str| Some(json!({"session_id": "shared", "metadata": {"owner": t}}));
    assert_eq!(
        call(&gw, Some(&k.a), Method::POST, "/v1/sessions", body("a"))
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        call(&gw, Some(&k.b), Method::POST, "/v1/sessions", body("b"))
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        call(
            &gw,
            Some(&k.a),
            Method::GET,
            "/v1/sessions/shared/metadata",
            None
        )
        .await
        .2,
        json!({"owner": "a"})
    );
    assert_eq!(
        call(
            &gw,
            Some(&k.b),
            Method::GET,
            "/v1/sessions/shared/metadata",
            None
        )
        .await
        .2,
        json!({"owner": "b"})
    );
    // Another tenant's session is indistinguishable from a missing one.
    call(
        &gw,
        Some(&k.a),
        Method::POST,
        "/v1/sessions",
        Some(json!({"session_id": "only-a"})),
    )
    .await;
    let (s, _, v_foreign) = call(&gw, Some(&k.b), Method::GET, "/v1/sessions/only-a", None).await;
    let (s2, _, v_missing) = call(&gw, Some(&k.b), Method::GET, "/v1/sessions/never", None).await;
    assert_eq!((s, s2), (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND));
    assert_eq!(v_foreign["error"]["code"], v_missing["error"]["code"]);
    assert_eq!(
        call(&gw, Some(&k.b), Method::DELETE, "/v1/sessions/only-a", None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(
            &gw,
            Some(&k.b),
            Method::PATCH,
            "/v1/sessions/only-a/metadata",
            Some(json!({"x": 1}))
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    let (_, _, list) = call(&gw, Some(&k.b), Method::GET, "/v1/sessions", None).await;
    let ids: Vec<&str> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["shared"]);
    let (_, _, batch) = call(
        &gw,
        Some(&k.b),
        Method::POST,
        "/v1/sessions/batch-get",
        Some(json!({"ids": ["only-a", "shared"]})),
    )
    .await;
    assert_eq!(batch["missing"], json!(["only-a"]));
    // Roles: a reader reads its tenant but cannot write; admin endpoints need admin.
    assert_eq!(
        call(
            &gw,
            Some(&k.reader),
            Method::GET,
            "/v1/sessions/only-a",
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    let (s, _, v) = call(
        &gw,
        Some(&k.reader),
        Method::PATCH,
        "/v1/sessions/only-a/metadata",
        Some(json!({"x": 1})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_error(&v, "forbidden");
    assert_eq!(
        call(&gw, Some(&k.a), Method::GET, "/v1/admin/plugins", None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&gw, Some(&k.admin), Method::GET, "/v1/admin/plugins", None)
            .await
            .0,
        StatusCode::OK
    );
}

on_both_stores!(tenants_are_isolated);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(Backend::Embedded, &dir).unwrap();
    // One token per 100 s: however slow the machine, no token comes back
    // during the test, so exactly the burst is served.
    cfg.limits.rate_limit_per_second = 0.01;
    cfg.limits.rate_limit_burst = 3.0;
    let gw = TestGateway::start(cfg).await;
    for _ in 0..3 {
        assert_eq!(gw.get("/v1/sessions").await.0, StatusCode::OK);
    }
    let (s, h, v) = gw.call(Method::GET, "/v1/sessions", None).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_error(&v, "rate_limited");
    // The wait until the next token: up to 100 s, and most of it still ahead.
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((50..=100).contains(&retry), "Retry-After: {retry}");
}

/// A request held by a slow hook fills the in-flight limit: the next gets 503
/// `overloaded`; and a request over the request timeout gets 503 `request_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_and_timeout_answer_503() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(Backend::Embedded, &dir).unwrap();
    cfg.limits.max_in_flight = 1;
    // The slow request holds the only slot for this long: the window in
    // which the test must see `overloaded` (generous for a loaded machine).
    cfg.limits.request_timeout_ms = 4_000;
    cfg.hooks = vec![hook(
        "slow",
        "fixture_loop",
        "before",
        &["metadata.update"],
        "timeout_ms = 20000",
    )];
    let gw = TestGateway::start(cfg).await;
    gw.session("s").await;
    let spawn_slow = || {
        let (c, base) = (gw.client.clone(), gw.base.clone());
        tokio::spawn(async move {
            TestGateway::parts(
                c.patch(format!("{base}/v1/sessions/s/metadata"))
                    .json(&json!({"a": 1}))
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        })
    };
    // Poll until the slow request holds the slot: from then on, a request is
    // refused at once. The polling GETs take the only slot too, so the slow
    // request itself may arrive while one of them holds it and be refused:
    // then it is sent again.
    let mut attempts = 0;
    let (slow, h, v) = 'send: loop {
        attempts += 1;
        assert!(
            attempts <= 50,
            "the slow request was refused {attempts} times"
        );
        let slow = spawn_slow();
        loop {
            let (s, h, v) = gw.call(Method::GET, "/v1/sessions/s", None).await;
            if s == StatusCode::SERVICE_UNAVAILABLE {
                break 'send (slow, h, v);
            }
            assert_eq!(s, StatusCode::OK, "{v}");
            if slow.is_finished() {
                let (s, _, v) = slow.await.unwrap();
                assert_eq!(
                    s,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the slow request finished before any request was refused: {v}"
                );
                assert_error(&v, "overloaded");
                continue 'send;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    assert_error(&v, "overloaded");
    assert_eq!(h["retry-after"], "1");
    let (s, _, v) = slow.await.unwrap();
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_error(&v, "request_timeout");
    // Nothing was written, and the gateway serves again.
    assert_eq!(
        gw.get("/v1/sessions/s/metadata").await,
        (StatusCode::OK, json!({}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_and_depth_limits_answer_422() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(Backend::Embedded, &dir).unwrap();
    cfg.limits.max_metadata_bytes = 100;
    cfg.limits.max_json_depth = 3;
    cfg.server.max_patch_keys = 2;
    cfg.server.max_message_bytes = 50;
    let gw = TestGateway::start(cfg).await;
    gw.session("s").await;
    gw.put("/v1/sessions/s/agents/a", json!({})).await;
    let cases = [
        (
            Method::PATCH,
            "/v1/sessions/s/metadata",
            json!({"x": "y".repeat(200)}),
            "too_large",
        ),
        (
            Method::PATCH,
            "/v1/sessions/s/metadata",
            json!({"x": {"a": {"b": {"c": {}}}}}),
            "too_deep",
        ),
        (
            Method::PATCH,
            "/v1/sessions/s/metadata",
            json!({"a": 1, "b": 2, "c": 3}),
            "too_many_keys",
        ),
        (
            Method::POST,
            "/v1/sessions/s/agents/a/messages",
            json!({"message": {"text": "z".repeat(100)}}),
            "message_too_large",
        ),
        (
            Method::PUT,
            "/v1/sessions/s/agents/a",
            json!({"state": {"a": {"b": {"c": {}}}}}),
            "too_deep",
        ),
        (
            Method::POST,
            "/v1/sessions",
            json!({"session_id": "t", "metadata": {"x": "y".repeat(200)}}),
            "too_large",
        ),
    ];
    for (m, path, body, code) in cases {
        let (s, _, v) = gw.call(m.clone(), path, Some(body)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{m} {path}: {v}");
        assert_error(&v, code);
    }
    assert_eq!(gw.get("/v1/sessions/s/metadata").await.1, json!({}));
    assert_eq!(
        gw.get("/v1/sessions/s/agents/a/messages").await.1["total"],
        0
    );
    assert_eq!(gw.get("/v1/sessions/t").await.0, StatusCode::NOT_FOUND);
}
