//! WebAssembly hooks end to end: deny, rewrite, redaction, failure policies,
//! hostile plugins, hot swap, grants.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestGateway, assert_error, hook};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn gw(hooks: Vec<gateway::config::HookConfig>) -> TestGateway {
    TestGateway::with_hooks(Backend::Embedded, hooks)
        .await
        .expect("embedded store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validator_denies_with_reason_and_writes_nothing() {
    let gw = gw(vec![hook(
        "validate",
        "metadata_validator",
        "before",
        &["metadata.update", "metadata.delete"],
        "config = { required = [\"status\"], types = { status = \"string\" }, max_value_bytes = 64 }",
    )])
    .await;
    gw.post(
        "/v1/sessions",
        json!({"session_id": "s", "metadata": {"status": "new"}}),
    )
    .await;
    let (s, v) = gw
        .patch("/v1/sessions/s/metadata", json!({"status": 5}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_error(&v, "denied_by_hook");
    assert_eq!(
        v["error"]["message"],
        "validate: value for \"status\" must be a string, got number"
    );
    let (s, v) = gw.delete("/v1/sessions/s/metadata?keys=status").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("validate: "),
        "{v}"
    );
    let (s, v) = gw
        .patch("/v1/sessions/s/metadata", json!({"notes": "x".repeat(100)}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(
        gw.get("/v1/sessions/s/metadata").await.1,
        json!({"status": "new"})
    );
    // A valid change goes through.
    let (s, v) = gw
        .patch("/v1/sessions/s/metadata", json!({"status": "active"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"status": "active"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redactor_masks_and_hides_on_get_only() {
    let gw = gw(vec![hook(
        "redact",
        "metadata_redactor",
        "get",
        &["metadata.get"],
        "config = { mask = [\"api_key\", \"customer.ssn\"], hide = [\"internal\"] }",
    )])
    .await;
    gw.post("/v1/sessions", json!({"session_id": "s", "metadata": {"api_key": "sk-123", "internal": {"x": 1}, "customer": {"ssn": "123", "name": "Ann"}}})).await;
    let expect = json!({"api_key": "***", "customer": {"ssn": "***", "name": "Ann"}});
    assert_eq!(gw.get("/v1/sessions/s/metadata").await.1, expect);
    assert_eq!(gw.get("/v1/sessions/s").await.1["metadata"], expect);
    let (_, v) = gw
        .patch("/v1/sessions/s/metadata", json!({"plan": "pro"}))
        .await;
    assert_eq!(v["api_key"], "***");
    assert!(v.get("internal").is_none());
    // The store still holds the secret.
    let stored = gw
        .state
        .store
        .get_metadata(&gateway::model::Tenant::default_tenant(), "s")
        .await
        .unwrap();
    assert_eq!(stored["api_key"], "sk-123");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_rewrite_is_contained() {
    let gw = gw(vec![hook(
        "huge",
        "fixture_huge_rewrite",
        "before",
        &["metadata.update"],
        "memory_mb = 32\ntimeout_ms = 2000",
    )])
    .await;
    gw.session("s").await;
    let (s, v) = gw.patch("/v1/sessions/s/metadata", json!({"a": 1})).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_error(&v, "hook_failed");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("huge: "),
        "{v}"
    );
    assert_eq!(gw.get("/v1/sessions/s/metadata").await.1, json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_and_fail_closed() {
    let gw = gw(vec![
        hook(
            "trap-open",
            "fixture_trap",
            "before",
            &["metadata.update"],
            "on_error = \"allow\"",
        ),
        hook(
            "trap-closed",
            "fixture_trap",
            "before",
            &["metadata.delete"],
            "on_error = \"deny\"",
        ),
    ])
    .await;
    gw.session("s").await;
    let (s, v) = gw.patch("/v1/sessions/s/metadata", json!({"a": 1})).await;
    assert_eq!(s, StatusCode::OK, "fail-open lets the change through: {v}");
    let (s, v) = gw.delete("/v1/sessions/s/metadata?keys=a").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_error(&v, "hook_failed");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("trap-closed: trapped"),
        "{v}"
    );
    assert_eq!(gw.get("/v1/sessions/s/metadata").await.1, json!({"a": 1}));
    let (_, plugins) = gw.get("/v1/admin/plugins").await;
    let open = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "trap-open")
        .unwrap();
    assert_eq!(open["errors"], 1);
}

/// The loop and memory-bomb fixtures are stopped within their limits while
/// other requests keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_are_contained() {
    let gw = gw(vec![
        hook(
            "loop",
            "fixture_loop",
            "before",
            &["metadata.update"],
            "timeout_ms = 50",
        ),
        hook(
            "bomb",
            "fixture_membomb",
            "before",
            &["metadata.delete"],
            "memory_mb = 16\ntimeout_ms = 5000",
        ),
    ])
    .await;
    gw.session("s").await;
    gw.session("other").await;
    let started = Instant::now();
    let hostile = {
        let (c, base) = (gw.client.clone(), gw.base.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..5 {
                let r = c
                    .patch(format!("{base}/v1/sessions/s/metadata"))
                    .json(&json!({"a": 1}))
                    .send()
                    .await
                    .unwrap();
                statuses.push(r.status());
                let r = c
                    .delete(format!("{base}/v1/sessions/s/metadata?keys=a"))
                    .send()
                    .await
                    .unwrap();
                statuses.push(r.status());
            }
            statuses
        })
    };
    // Meanwhile, ordinary requests keep succeeding.
    let mut served = 0;
    while !hostile.is_finished() {
        let (s, _) = gw.get("/v1/sessions/other").await;
        assert_eq!(s, StatusCode::OK);
        served += 1;
    }
    let statuses = hostile.await.unwrap();
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    assert!(served > 0);
    // Five 50 ms timeouts plus five memory bombs: bounded well below what an
    // unbounded loop would take. (Not a latency assertion: a containment check.)
    assert!(started.elapsed() < Duration::from_secs(30));
    let (_, plugins) = gw.get("/v1/admin/plugins").await;
    for p in plugins["plugins"].as_array().unwrap() {
        assert_eq!(p["errors"], 5, "{p}");
        // A trapped instance is discarded: every call needed a new one.
        assert_eq!(p["instantiations"], 5, "{p}");
    }
    let (_, v) = gw.get("/v1/sessions/s/metadata").await;
    assert_eq!(v, json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_and_per_call_instances() {
    let gw = gw(vec![
        hook(
            "reuse",
            "fixture_allow",
            "before",
            &["metadata.update"],
            "instance = \"reuse\"",
        ),
        hook(
            "fresh",
            "fixture_allow",
            "before",
            &["metadata.update"],
            "instance = \"per-call\"",
        ),
    ])
    .await;
    gw.session("s").await;
    for i in 0..10 {
        assert_eq!(
            gw.patch("/v1/sessions/s/metadata", json!({"i": i})).await.0,
            StatusCode::OK
        );
    }
    let (reuse, fresh) = (
        gw.plugin_stats("reuse").await,
        gw.plugin_stats("fresh").await,
    );
    assert_eq!(reuse["calls"], 10);
    assert_eq!(reuse["instantiations"], 1);
    assert_eq!(fresh["instantiations"], 10);
}

fn write_config(
    dir: &std::path::Path,
    wasm: &std::path::Path,
    pin: Option<&str>,
) -> std::path::PathBuf {
    let pin = pin.map(|p| format!("sha256 = {p:?}\n")).unwrap_or_default();
    let text = format!(
        "[storage.embedded]\npath = \"gateway.redb\"\n[plugins]\ncache_dir = \"cache\"\nwatch = false\n\n[[hooks]]\nname = \"swap\"\nwasm = {:?}\n{pin}events = [\"metadata.get\"]\nphase = \"get\"\n",
        wasm.display().to_string()
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Hot swap under concurrent load: behaviour changes, no request fails, and a
/// broken replacement keeps the old version serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("hook.wasm");
    std::fs::copy(common::plugin("fixture_deny"), &wasm).unwrap();
    let cfg_path = write_config(dir.path(), &wasm, None);
    let cfg = gateway::config::Config::load(&cfg_path).unwrap();
    let gw = TestGateway::start_with(cfg, Some(cfg_path.clone())).await;
    gw.session("s").await;
    assert_eq!(gw.get("/v1/sessions/s/metadata").await.1["fixture"], "v1");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (c, base, stop) = (gw.client.clone(), gw.base.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut versions) =
                (0u32, 0u32, std::collections::BTreeSet::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = c
                    .get(format!("{base}/v1/sessions/s/metadata"))
                    .send()
                    .await
                    .unwrap();
                if r.status() == StatusCode::OK {
                    ok += 1;
                    versions.insert(
                        r.json::<Value>().await.unwrap()["fixture"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned(),
                    );
                } else {
                    failed += 1;
                }
            }
            (ok, failed, versions)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::copy(common::plugin("fixture_allow"), &wasm).unwrap();
    let (s, report) = gw.post("/v1/admin/reload", json!({})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(report["reload"]["loaded"], json!(["swap"]), "{report}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed, mut versions) = (0, 0, std::collections::BTreeSet::new());
    for t in load {
        let (o, f, v) = t.await.unwrap();
        ok += o;
        failed += f;
        versions.extend(v);
    }
    assert_eq!(failed, 0, "requests failed across the swap");
    assert!(ok > 0);
    assert!(
        versions.contains("v1") && versions.contains("v2"),
        "{versions:?}"
    );
    assert_eq!(gw.get("/v1/sessions/s/metadata").await.1["fixture"], "v2");

    // A broken replacement: the old version keeps serving; the report says why.
    std::fs::write(&wasm, b"not a component").unwrap();
    let (_, report) = gw.post("/v1/admin/reload", json!({})).await;
    assert_eq!(report["reload"]["failed"][0][0], "swap", "{report}");
    assert_eq!(gw.get("/v1/sessions/s/metadata").await.1["fixture"], "v2");
    let (_, plugins) = gw.get("/v1/admin/plugins").await;
    assert!(plugins["plugins"][0]["last_error"].is_string(), "{plugins}");

    // A sha256 pin that does not match refuses the load.
    std::fs::copy(common::plugin("fixture_deny"), &wasm).unwrap();
    write_config(dir.path(), &wasm, Some(&"0".repeat(64)));
    let (_, report) = gw.post("/v1/admin/reload", json!({})).await;
    assert!(
        report["reload"]["failed"][0][1]
            .as_str()
            .unwrap()
            .contains("pins"),
        "{report}"
    );
    assert_eq!(gw.get("/v1/sessions/s/metadata").await.1["fixture"], "v2");
    gw.stop().await;
}

/// The file watcher picks up a replaced plugin by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_reloads_changed_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("hook.wasm");
    std::fs::copy(common::plugin("fixture_deny"), &wasm).unwrap();
    let cfg_path = write_config(dir.path(), &wasm, None);
    let mut cfg = gateway::config::Config::load(&cfg_path).unwrap();
    cfg.plugins.watch = true;
    cfg.plugins.watch_interval_ms = 50;
    let gw = TestGateway::start_with(cfg, Some(cfg_path)).await;
    gw.session("s").await;
    assert_eq!(gw.get("/v1/sessions/s/metadata").await.1["fixture"], "v1");
    std::fs::copy(common::plugin("fixture_allow"), &wasm).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while gw.get("/v1/sessions/s/metadata").await.1["fixture"] != "v2" {
        assert!(Instant::now() < deadline, "watcher did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.stop().await;
}

/// After-hooks publish to granted targets only; notifications are persisted
/// in the outbox and visible to operators.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_hooks_publish_to_granted_targets_only() {
    let gw = gw(vec![
        hook(
            "router",
            "feedback_router",
            "after",
            &["feedback.add"],
            "grants = { publish = [\"good\", \"bad\"] }",
        ),
        hook(
            "audit",
            "audit_log",
            "after",
            &["feedback.add", "metadata.update"],
            "",
        ),
    ])
    .await;
    gw.session("s").await;
    gw.post(
        "/v1/sessions/s/feedbacks",
        json!({"rating": "up", "comment": "nice"}),
    )
    .await;
    gw.post("/v1/sessions/s/feedbacks", json!({"rating": "down"}))
        .await;
    gw.post("/v1/sessions/s/feedbacks", json!({"rating": null}))
        .await; // "neutral" is not granted
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, plugins) = gw.get("/v1/admin/plugins").await;
        let router = plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "router")
            .unwrap()
            .clone();
        if router["calls"] == 3 {
            assert_eq!(router["publish_refused"], 1, "{router}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after-hooks did not run: {plugins}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (s, v) = gw.get("/v1/admin/outbox").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["pending"], 2, "{v}");
    let mut targets: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["target"].as_str().unwrap())
        .collect();
    targets.sort_unstable();
    assert_eq!(targets, ["bad", "good"]);
    let good = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["target"] == "good")
        .unwrap();
    assert_eq!(good["payload"]["feedback"]["comment"], "nice");
    assert_eq!(good["payload"]["session_id"], "s");
    assert_eq!(good["plugin"], "router");
}

#[test]
fn plugin_check_reports_exports() {
    let report = gateway::hooks::check_plugin(&common::plugin("audit_log")).unwrap();
    let exports: Vec<&str> = report["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(
        exports,
        [
            "gateway:hooks/metadata-hook@0.1.0",
            "gateway:hooks/feedback-hook@0.1.0"
        ]
    );
    let err = gateway::hooks::check_plugin(std::path::Path::new("Cargo.toml")).unwrap_err();
    assert!(!format!("{err:#}").is_empty());
}

/// A rewrite feeds the next hook in the chain and is what gets stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_are_chained_and_stored() {
    let gw = gw(vec![
        hook(
            "rewrite",
            "fixture_rewrite",
            "before",
            &["metadata.update", "metadata.delete", "feedback.add"],
            "",
        ),
        // Runs second: sees the rewritten change (a lower-cased status passes the enum check).
        hook(
            "validate",
            "metadata_validator",
            "before",
            &["metadata.update"],
            "config = { types = { status = \"string\", rewritten_by = \"string\" } }",
        ),
    ])
    .await;
    gw.post(
        "/v1/sessions",
        json!({"session_id": "s", "metadata": {"protected": 1, "tmp": 2}}),
    )
    .await;
    let (s, v) = gw
        .patch("/v1/sessions/s/metadata", json!({"status": "ACTIVE"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"protected": 1, "tmp": 2, "status": "active", "rewritten_by": "fixture"})
    );
    let (s, v) = gw
        .delete("/v1/sessions/s/metadata?keys=protected,tmp")
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"protected": 1, "status": "active", "rewritten_by": "fixture"})
    );
    let (s, v) = gw
        .post("/v1/sessions/s/feedbacks", json!({"rating": "up"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["tagged"], true);
    assert_eq!(
        gw.get("/v1/sessions/s/feedbacks").await.1["feedbacks"][0]["tagged"],
        true
    );
}

/// Asserts a 503 `hook_failed` whose message starts with `prefix`.
fn assert_hook_failed(s: StatusCode, v: &Value, prefix: &str) {
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_error(v, "hook_failed");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.starts_with(prefix), "{v}");
}

/// A plugin that keeps failing for one tenant is quarantined for that tenant
/// only: its calls get the `on_error` outcome at once (503 with Retry-After
/// when it fails closed), other tenants keep running it, and after the
/// cool-down it runs again on probation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_quarantine_the_plugin_per_tenant() {
    use gateway::auth::{AuthConfig, AuthMode, KeyConfig, Role, hash_key, new_key};
    let breaker = "breaker = { failures = 3, cooldown_ms = 1500 }";
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(Backend::Embedded, &dir).unwrap();
    cfg.hooks = vec![
        hook(
            "closed",
            "fixture_trap",
            "before",
            &["metadata.delete"],
            breaker,
        ),
        hook(
            "open",
            "fixture_trap",
            "before",
            &["metadata.update"],
            &format!("on_error = \"allow\"\n{breaker}"),
        ),
    ];
    let (a, b, admin) = (new_key(), new_key(), new_key());
    let entry = |id: &str, tenant: &str, role, key: &str| KeyConfig {
        id: id.into(),
        tenant: tenant.into(),
        role,
        sha256: hash_key(key),
    };
    cfg.auth = AuthConfig {
        mode: AuthMode::Keys,
        keys: vec![
            entry("a", "team-a", Role::Agent, &a),
            entry("b", "team-b", Role::Agent, &b),
            entry("admin", "ops", Role::Operator, &admin),
        ],
    };
    let gw = TestGateway::start(cfg).await;
    let send = |key: &str, method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = gw
            .client
            .request(method, format!("{}{path}", gw.base))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move { TestGateway::parts(req.send().await.unwrap()).await }
    };
    let delete = |key: &str| {
        send(
            key,
            reqwest::Method::DELETE,
            "/v1/sessions/s/metadata?keys=k",
            None,
        )
    };
    let plugin = |name: &'static str| {
        let f = send(&admin, reqwest::Method::GET, "/v1/admin/plugins", None);
        async move {
            let (_, _, v) = f.await;
            v["plugins"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap()
                .clone()
        }
    };
    for key in [&a, &b] {
        let body = json!({"session_id": "s", "metadata": {"k": 1}});
        let (s, _, v) = send(key, reqwest::Method::POST, "/v1/sessions", Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    // Fail closed: three traps, then a quarantine for team-a.
    for _ in 0..3 {
        let (s, _, v) = delete(&a).await;
        assert_hook_failed(s, &v, "closed: trapped");
    }
    let (s, headers, v) = delete(&a).await;
    assert_hook_failed(s, &v, "closed: quarantined");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // team-b still runs the plugin (and is refused by the trap itself).
    let (s, _, v) = delete(&b).await;
    assert_hook_failed(s, &v, "closed: trapped");
    let closed = plugin("closed").await;
    assert_eq!(closed["errors"], 4, "{closed}");
    assert_eq!(closed["breaker"]["trips"], 1, "{closed}");
    assert_eq!(closed["breaker"]["skipped_calls"], 1, "{closed}");
    assert_eq!(
        closed["breaker"]["quarantined_tenants"],
        json!(["team-a"]),
        "{closed}"
    );
    // After its first failure team-a was a suspect: its next two calls ran
    // on the low-priority thread; team-b's one call was not.
    assert_eq!(closed["breaker"]["isolated_calls"], 2, "{closed}");

    // Fail open: the change goes through either way; once quarantined the
    // plugin is not even called.
    for i in 0..4 {
        let (s, _, v) = send(
            &a,
            reqwest::Method::PATCH,
            "/v1/sessions/s/metadata",
            Some(json!({ "n": i })),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let open = plugin("open").await;
    assert_eq!(open["calls"], 3, "{open}");
    assert_eq!(open["breaker"]["skipped_calls"], 1, "{open}");
    assert_eq!(open["breaker"]["isolated_calls"], 2, "{open}");

    // After the cool-down the plugin runs again; one more failure re-trips it.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (s, _, v) = delete(&a).await;
    assert_hook_failed(s, &v, "closed: trapped");
    let (s, _, v) = delete(&a).await;
    assert_hook_failed(s, &v, "closed: quarantined");
    let closed = plugin("closed").await;
    assert_eq!(closed["breaker"]["trips"], 2, "{closed}");
    assert_eq!(closed["breaker"]["isolated_calls"], 3, "{closed}");
    // Nothing was deleted by any of it.
    let (_, _, v) = send(&a, reqwest::Method::GET, "/v1/sessions/s/metadata", None).await;
    assert_eq!(v["k"], 1, "{v}");

    let metrics = gw
        .client
        .get(format!("{}/metrics", gw.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gateway_hook_quarantines_total{plugin=\"closed\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_hook_quarantined_calls_total{plugin=\"open\"} 1"),
        "{metrics}"
    );
}
