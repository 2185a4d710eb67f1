//! What leaves the gateway: every exit of stored metadata goes through the
//! get-hooks; admin keys see their own tenant only; a committed write is never
//! answered with an error; the bearer scheme and 401 challenge follow RFC
//! 9110 / 6750.

mod common;

use std::time::Duration;

use common::{Backend, TestGateway, assert_error, hook};
use gateway::auth::{AuthConfig, AuthMode, KeyConfig, Role, hash_key, new_key};
use gateway::model::Tenant;
use gateway::store::{OutboxItem, OutboxState};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The stored secrets; none may appear in anything a client receives.
const SECRETS: &[&str] = &["sk-live-4242", "sk-live-9999", "hush-hush"];

/// The redactor as a get-hook: `api_key` masked, `internal` hidden.
fn redactor(extra: &str) -> gateway::config::HookConfig {
    hook(
        "redactor",
        "metadata_redactor",
        "get",
        &["metadata.get"],
        &format!("config = {{ mask = [\"api_key\"], hide = [\"internal\"] }}\n{extra}"),
    )
}

/// A redactor that fails on every call: an invalid config makes `on-get`
/// trap (the plugin refuses to show what it cannot redact).
fn trapping_redactor() -> gateway::config::HookConfig {
    hook(
        "redactor",
        "metadata_redactor",
        "get",
        &["metadata.get"],
        "config = { mask = \"api_key\" }\nbreaker = { failures = 0 }",
    )
}

/// A redactor that runs out of its budget on every call (`fuel` far below
/// what parsing the metadata takes): the deterministic stand-in for a timeout.
fn exhausted_redactor() -> gateway::config::HookConfig {
    redactor("fuel = 500\nbreaker = { failures = 0 }")
}

/// Names of the secrets found in `v`.
fn leaks(v: &Value) -> Vec<&'static str> {
    let text = v.to_string();
    SECRETS
        .iter()
        .copied()
        .filter(|s| text.contains(s))
        .collect()
}

/// One parsed SSE event.
#[derive(Debug, Clone)]
struct Sse {
    event: String,
    data: Value,
}

/// Reads SSE events from a streaming response.
struct Reader {
    resp: reqwest::Response,
    buf: String,
}

impl Reader {
    async fn open(gw: &TestGateway, path: &str, last_event_id: Option<u64>) -> Self {
        let mut req = gw.client.get(format!("{}{path}", gw.base));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        Self {
            resp,
            buf: String::new(),
        }
    }

    /// The next `n` events (heartbeats skipped); panics after 20 s without one.
    async fn take(&mut self, n: usize) -> Vec<Sse> {
        let mut out = Vec::new();
        while out.len() < n {
            if let Some(pos) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..pos + 2).collect();
                let (mut event, mut data) = (String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !data.is_empty() {
                    out.push(Sse {
                        event,
                        data: serde_json::from_str(&data).unwrap(),
                    });
                }
                continue;
            }
            match tokio::time::timeout(Duration::from_secs(20), self.resp.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                other => panic!("stream ended after {} of {n} events ({other:?})", out.len()),
            }
        }
        out
    }
}

fn outbox_item(id: &str, tenant: &str, sid: &str, payload: Value) -> OutboxItem {
    OutboxItem {
        id: id.into(),
        target: "ui".into(),
        payload: payload.to_string(),
        plugin: "propagator".into(),
        tenant: tenant.into(),
        session_id: sid.into(),
        created_at: 1,
        attempts: 0,
        next_attempt_at: i64::MAX / 2,
        state: OutboxState::Pending,
        last_error: None,
    }
}

// ---------------------------------------------------------------------------
// 5. Every exit of stored metadata goes through the redactor.

async fn every_metadata_exit_is_redacted(b: Backend) {
    let Some(gw) = TestGateway::with_hooks(b, vec![redactor("")]).await else {
        return;
    };
    let mut failures: Vec<String> = Vec::new();
    macro_rules! check {
        ($exit:expr, $v:expr) => {{
            let v: &Value = $v;
            let found = leaks(v);
            if !found.is_empty() {
                failures.push(format!("{} leaks {found:?}: {v}", $exit));
            }
        }};
    }
    // A live subscriber from before the session exists is impossible (404),
    // so the live stream is opened right after the creation.
    let (s, created) = gw
        .post(
            "/v1/sessions",
            json!({"session_id": "s", "metadata": {
                "api_key": "sk-live-4242", "internal": {"note": "hush-hush"}, "status": "open"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    check!("POST /v1/sessions", &created);
    assert_eq!(created["metadata"]["api_key"], "***", "{created}");
    let mut live = Reader::open(&gw, "/v1/sessions/s/events", None).await;

    let (_, v) = gw.get("/v1/sessions/s").await;
    check!("GET /v1/sessions/{sid}", &v);
    assert_eq!(v["metadata"], json!({"api_key": "***", "status": "open"}));
    let (_, v) = gw.get("/v1/sessions/s/metadata").await;
    check!("GET /v1/sessions/{sid}/metadata", &v);
    let (_, v) = gw.get("/v1/sessions").await;
    check!("GET /v1/sessions", &v);
    let (_, v) = gw
        .post("/v1/sessions/batch-get", json!({"ids": ["s"]}))
        .await;
    check!("POST /v1/sessions/batch-get", &v);
    let (s, v) = gw
        .patch(
            "/v1/sessions/s/metadata",
            json!({"api_key": "sk-live-9999", "internal.more": "hush-hush", "status": "busy"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    check!("PATCH /v1/sessions/{sid}/metadata", &v);
    let (s, v) = gw
        .delete("/v1/sessions/s/metadata?keys=internal.note,api_key")
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    check!("DELETE /v1/sessions/{sid}/metadata", &v);
    // Put a secret back for the filter checks.
    gw.patch(
        "/v1/sessions/s/metadata",
        json!({"api_key": "sk-live-4242"}),
    )
    .await;

    // SSE, live: metadata.updated, metadata.deleted, metadata.updated.
    let evs = live.take(3).await;
    for e in &evs {
        check!(&format!("SSE live {}", e.event), &e.data);
    }
    assert_eq!(evs[0].event, "metadata.updated");
    assert_eq!(
        evs[0].data["payload"]["values"],
        json!({"api_key": "***", "status": "busy"}),
        "the hidden path is left out, the masked one masked: {:?}",
        evs[0].data
    );
    assert_eq!(
        evs[0].data["payload"]["changed"],
        json!(["api_key", "status"])
    );
    assert_eq!(evs[1].data["payload"]["change"], json!(["api_key"]));
    // SSE replay, by header and by query: session.created + the three changes.
    for (label, path, last) in [
        ("SSE replay Last-Event-ID", "/v1/sessions/s/events", Some(0)),
        ("SSE replay ?after=", "/v1/sessions/s/events?after=0", None),
    ] {
        let mut r = Reader::open(&gw, path, last).await;
        let evs = r.take(4).await;
        assert_eq!(evs[0].event, "session.created");
        assert_eq!(
            evs[0].data["payload"]["metadata"],
            json!({"api_key": "***", "status": "open"})
        );
        for e in &evs {
            check!(&format!("{label} {}", e.event), &e.data);
        }
    }

    // List filters match what the caller can read: the stored value of a
    // masked or hidden field confirms nothing; the mask itself matches.
    for (filter, expect) in [
        ("metadata.api_key=sk-live-4242", json!([])),
        ("metadata.internal.more=hush-hush", json!([])),
        ("metadata.api_key=***", json!(["s"])),
        ("metadata.status=busy", json!(["s"])),
    ] {
        let (s, v) = gw.get(&format!("/v1/sessions?{filter}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        check!(&format!("GET /v1/sessions?{filter}"), &v);
        let ids: Vec<&Value> = v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| &s["session_id"])
            .collect();
        if json!(ids) != expect {
            failures.push(format!(
                "filter {filter} matched {ids:?}, expected {expect}"
            ));
        }
    }

    // Admin outbox views of notification payloads (published by after-hooks
    // from the change as stored): withheld from the tenant's admin while a
    // get-hook is loaded (auth off: the caller is the operator, who sees them).
    gw.state
        .store
        .complete_event(
            Tenant::default_tenant().as_str(),
            "s",
            999,
            vec![outbox_item(
                "n1",
                Tenant::default_tenant().as_str(),
                "s",
                json!({"fields": {"api_key": "sk-live-4242"}}),
            )],
        )
        .await
        .unwrap();
    let (_, v) = gw.get("/v1/admin/outbox").await;
    assert_eq!(v["items"][0]["payload_withheld"], false, "{v}");
    gw.stop().await;
    assert!(
        failures.is_empty(),
        "exits that bypass the get-hooks:\n{}",
        failures.join("\n")
    );
}

/// A tenant admin gets outbox items without their payload while a get-hook
/// shapes metadata; an operator sees the payload.
async fn admin_outbox_payloads_are_withheld_behind_a_redactor(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cfg) = common::config(b, &dir) else {
        return;
    };
    let k = keys();
    cfg.auth = k.config();
    cfg.hooks = vec![redactor("")];
    let gw = TestGateway::start(cfg).await;
    gw.state
        .store
        .complete_event(
            "team-a",
            "s",
            1,
            vec![outbox_item(
                "n1",
                "team-a",
                "s",
                json!({"fields": {"api_key": "sk-live-4242"}}),
            )],
        )
        .await
        .unwrap();
    let (s, _, v) = call(&gw, &k.admin_a, Method::GET, "/v1/admin/outbox").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["items"][0]["payload"], Value::Null, "{v}");
    assert_eq!(v["items"][0]["payload_withheld"], true, "{v}");
    assert!(leaks(&v).is_empty(), "{v}");
    let (s, _, v) = call(&gw, &k.admin_a, Method::POST, "/v1/admin/outbox/n1/retry").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(leaks(&v).is_empty(), "{v}");
    let (_, _, v) = call(&gw, &k.operator, Method::GET, "/v1/admin/outbox").await;
    assert_eq!(
        v["items"][0]["payload"]["fields"]["api_key"],
        "sk-live-4242"
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 6. Tenancy on every admin endpoint; the operator role.

struct Keys {
    agent_a: String,
    admin_a: String,
    admin_b: String,
    operator: String,
}

fn keys() -> Keys {
    Keys {
        agent_a: new_key(),
        admin_a: new_key(),
        admin_b: new_key(),
        operator: new_key(),
    }
}

impl Keys {
    fn config(&self) -> AuthConfig {
        let entry = |id: &str, tenant: &str, role, key: &str| KeyConfig {
            id: id.into(),
            tenant: tenant.into(),
            role,
            sha256: hash_key(key),
        };
        AuthConfig {
            mode: AuthMode::Keys,
            keys: vec![
                entry("agent-a", "team-a", Role::Agent, &self.agent_a),
                entry("admin-a", "team-a", Role::Admin, &self.admin_a),
                entry("admin-b", "team-b", Role::Admin, &self.admin_b),
                entry("ops", "ops", Role::Operator, &self.operator),
            ],
        }
    }
}

async fn call(
    gw: &TestGateway,
    key: &str,
    method: Method,
    path: &str,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut req = gw
        .client
        .request(method.clone(), format!("{}{path}", gw.base))
        .bearer_auth(key);
    if method == Method::POST {
        req = req.json(&json!({}));
    }
    TestGateway::parts(req.send().await.unwrap()).await
}

async fn admin_keys_see_their_own_tenant_only(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cfg) = common::config(b, &dir) else {
        return;
    };
    let k = keys();
    cfg.auth = k.config();
    // A fail-open get-hook that traps on every call: team-a's reads trip its
    // breaker, so the plugin is quarantined for team-a.
    cfg.hooks = vec![hook(
        "broken",
        "metadata_redactor",
        "get",
        &["metadata.get"],
        "on_error = \"allow\"\nconfig = { mask = \"x\" }\nbreaker = { failures = 2, failure_ratio = 0.5, window_ms = 60000, cooldown_ms = 600000 }",
    )];
    let gw = TestGateway::start(cfg).await;
    let store = &gw.state.store;
    for (tenant, id) in [("team-a", "a1"), ("team-a", "a2"), ("team-b", "b1")] {
        store
            .complete_event(
                tenant,
                "s",
                1,
                vec![outbox_item(id, tenant, "s", json!({"tenant": tenant}))],
            )
            .await
            .unwrap();
    }
    let (s, _, v) = call(&gw, &k.agent_a, Method::POST, "/v1/sessions").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let sid = v["session_id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let (s, _, v) = call(&gw, &k.agent_a, Method::GET, &format!("/v1/sessions/{sid}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }

    // Outbox: each admin lists and counts its own tenant's items only.
    let ids = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (s, _, v) = call(&gw, &k.admin_b, Method::GET, "/v1/admin/outbox").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(ids(&v), ["b1"], "{v}");
    assert_eq!(
        (v["pending"].as_u64(), v["dead"].as_u64()),
        (Some(1), Some(0))
    );
    assert!(v.get("delivered").is_none(), "process-wide counters: {v}");
    let (_, _, v) = call(
        &gw,
        &k.admin_a,
        Method::GET,
        "/v1/admin/outbox?state=pending",
    )
    .await;
    assert_eq!(ids(&v), ["a1", "a2"], "{v}");
    let (s, _, v) = call(
        &gw,
        &k.admin_b,
        Method::GET,
        "/v1/admin/outbox?tenant=team-a",
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_error(&v, "forbidden");
    let (s, _, _) = call(
        &gw,
        &k.admin_b,
        Method::GET,
        "/v1/admin/outbox?tenant=team-b",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // Retry: another tenant's item is 404, like a missing one; its own is fine.
    let (s, _, v) = call(&gw, &k.admin_b, Method::POST, "/v1/admin/outbox/a1/retry").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_error(&v, "not_found");
    let (s, _, v) = call(&gw, &k.admin_b, Method::POST, "/v1/admin/outbox/b1/retry").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The operator sees every tenant, or one.
    let (_, _, v) = call(&gw, &k.operator, Method::GET, "/v1/admin/outbox").await;
    assert_eq!(ids(&v), ["a1", "a2", "b1"], "{v}");
    assert_eq!(v["pending"], 3, "{v}");
    assert!(v.get("delivered").is_some(), "{v}");
    let (_, _, v) = call(
        &gw,
        &k.operator,
        Method::GET,
        "/v1/admin/outbox?tenant=team-a",
    )
    .await;
    assert_eq!(ids(&v), ["a1", "a2"], "{v}");
    let (s, _, v) = call(&gw, &k.operator, Method::POST, "/v1/admin/outbox/a1/retry").await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Plugins: quarantines of other tenants and process-wide counters are
    // the operator's view only.
    let plugin = |v: &Value| v["plugins"][0].clone();
    let (_, _, v) = call(&gw, &k.admin_b, Method::GET, "/v1/admin/plugins").await;
    let p = plugin(&v);
    assert_eq!(p["breaker"]["quarantined_tenants"], json!([]), "{p}");
    assert!(p.get("calls").is_none() && p.get("errors").is_none(), "{p}");
    assert!(!v.to_string().contains("team-a"), "{v}");
    let (_, _, v) = call(&gw, &k.admin_a, Method::GET, "/v1/admin/plugins").await;
    assert_eq!(
        plugin(&v)["breaker"]["quarantined_tenants"],
        json!(["team-a"])
    );
    let (_, _, v) = call(&gw, &k.operator, Method::GET, "/v1/admin/plugins").await;
    let p = plugin(&v);
    assert_eq!(
        p["breaker"]["quarantined_tenants"],
        json!(["team-a"]),
        "{p}"
    );
    assert!(p["calls"].as_u64().is_some_and(|c| c >= 2), "{p}");

    // Reload affects every tenant: operator only.
    for key in [&k.admin_a, &k.admin_b] {
        let (s, _, v) = call(&gw, key, Method::POST, "/v1/admin/reload").await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        assert_error(&v, "forbidden");
    }
    let (s, _, v) = call(&gw, &k.operator, Method::POST, "/v1/admin/reload").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Agents still cannot use admin endpoints at all.
    let (s, _, _) = call(&gw, &k.agent_a, Method::GET, "/v1/admin/outbox").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 8. After a commit nothing turns the answer into an error.

async fn committed_writes_answer_success_when_the_get_hook_fails(b: Backend) {
    for (label, failing) in [
        ("trap", trapping_redactor()),
        ("out of budget", exhausted_redactor()),
    ] {
        let Some(gw) = TestGateway::with_hooks(b, vec![failing]).await else {
            return;
        };
        let body = json!({"session_id": "w", "metadata": {"api_key": "sk-live-4242"}});
        let (s, h, v) = gw
            .call(Method::POST, "/v1/sessions", Some(body.clone()))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{label}: {v}");
        assert_eq!(h["metadata-withheld"], "hook_failed", "{label}");
        assert_eq!(v["session_id"], "w", "{label}: {v}");
        assert_eq!(v["metadata"], json!({}), "{label}: {v}");
        assert_eq!(
            v["metadata_withheld"]["code"], "hook_failed",
            "{label}: {v}"
        );
        assert!(leaks(&v).is_empty(), "{label}: {v}");
        // A retry behaves as for a committed write.
        let (s, v) = gw.post("/v1/sessions", body).await;
        assert_eq!(s, StatusCode::CONFLICT, "{label}: {v}");
        assert_error(&v, "session_exists");
        // Reads were never committed writes: they still fail closed (503).
        let (s, v) = gw.get("/v1/sessions/w").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{label}: {v}");
        assert_error(&v, "hook_failed");

        let patch = json!({"api_key": "sk-live-9999", "status": "busy"});
        for attempt in 0..2 {
            let (s, h, v) = gw
                .call(
                    Method::PATCH,
                    "/v1/sessions/w/metadata",
                    Some(patch.clone()),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{label} patch {attempt}: {v}");
            assert_eq!(h["metadata-withheld"], "hook_failed", "{label}");
            assert_eq!(v, json!({}), "{label}: {v}");
        }
        let (s, h, v) = gw
            .call(Method::DELETE, "/v1/sessions/w/metadata?keys=status", None)
            .await;
        assert_eq!(s, StatusCode::OK, "{label}: {v}");
        assert_eq!(h["metadata-withheld"], "hook_failed", "{label}");
        assert!(leaks(&v).is_empty(), "{label}: {v}");
        // What was committed is stored.
        let stored = gw
            .state
            .store
            .get_metadata(&Tenant::default_tenant(), "w")
            .await
            .unwrap();
        assert_eq!(Value::Object(stored), json!({"api_key": "sk-live-9999"}));
        // The event stream withholds instead of showing unredacted metadata.
        let mut r = Reader::open(&gw, "/v1/sessions/w/events", Some(0)).await;
        for e in r.take(4).await {
            assert!(leaks(&e.data).is_empty(), "{label}: {:?}", e.data);
            assert_eq!(
                e.data["payload"]["metadata_withheld"]["code"], "hook_failed",
                "{label}: {:?}",
                e.data
            );
        }
        gw.stop().await;
    }
}

on_both_stores!(
    every_metadata_exit_is_redacted,
    admin_outbox_payloads_are_withheld_behind_a_redactor,
    admin_keys_see_their_own_tenant_only,
    committed_writes_answer_success_when_the_get_hook_fails,
);

// ---------------------------------------------------------------------------
// Authorization scheme and the 401 challenge (no store involved).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_scheme_is_case_insensitive_and_401_challenges() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(Backend::Embedded, &dir).unwrap();
    let k = keys();
    cfg.auth = k.config();
    let gw = TestGateway::start(cfg).await;
    let send = |auth: Option<String>| {
        let mut req = gw.client.get(format!("{}/v1/sessions", gw.base));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        async move { TestGateway::parts(req.send().await.unwrap()).await }
    };
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let (s, _, v) = send(Some(format!("{scheme} {}", k.agent_a))).await;
        assert_eq!(s, StatusCode::OK, "{scheme}: {v}");
    }
    let (s, _, _) = send(Some(format!("Bearer   {}", k.agent_a))).await;
    assert_eq!(s, StatusCode::OK);
    // No credentials: a challenge without an error code (RFC 6750 §3.1).
    for auth in [None, Some(format!("Basic {}", k.agent_a))] {
        let (s, h, v) = send(auth.clone()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_error(&v, "unauthorized");
        assert_eq!(
            h["www-authenticate"], "Bearer realm=\"session-gateway\"",
            "{auth:?}"
        );
    }
    // A key that is not valid: error="invalid_token".
    let (s, h, v) = send(Some("Bearer sgw_not_a_key".into())).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_error(&v, "unauthorized");
    let challenge = h["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with("Bearer realm=\"session-gateway\"")
            && challenge.contains("error=\"invalid_token\""),
        "{challenge}"
    );
    gw.stop().await;
}
