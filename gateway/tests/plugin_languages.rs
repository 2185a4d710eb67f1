//! The same hook written in JavaScript (plugins/js/metadata-tagger, built by
//! plugins/js/build.sh with componentize-qjs) and in Python
//! (plugins/python/metadata-tagger, built by plugins/python/build.sh with
//! componentize-py) runs in the real gateway like the Rust plugins, and both
//! pass the same tests: deny with its reason, allow, on-get tag (reused and
//! per-call instances), fail closed on a bad config, and `plugin check` sees
//! no WASI imports. The JS tests pass with either backend of build.sh.
//!
//! The components embed a whole language runtime (1.6 MB of wasm with
//! QuickJS, 12 MB with StarlingMonkey, 18 MB with CPython), which takes
//! seconds to a minute to compile in a debug build, so these tests share one
//! compiled-artifact cache per component and start their gateways one at a
//! time (`common::gateway_with_slow_plugin`), so a cold cache compiles each
//! once.

mod common;

use std::path::PathBuf;

use common::{TestGateway, assert_error, hook};
use reqwest::StatusCode;
use serde_json::json;

/// One language's build of the tagger.
struct Tagger {
    /// `plugins/dist/<wasm>.wasm`.
    wasm: &'static str,
    /// The script that builds it.
    build: &'static str,
    /// The key its default config adds to what GET returns.
    tag: &'static str,
    /// `[[hooks]]` limits it needs.
    limits: &'static str,
}

// Linear memory starts at 23 pages (1.4 MiB) with QuickJS and 145 pages
// (9.1 MiB) with StarlingMonkey, so memory_mb must be at least 2 or 10; 32
// (the default) leaves room for the heap with either.
const JS: Tagger = Tagger {
    wasm: "js_metadata_tagger",
    build: "plugins/js/build.sh (needs Node.js >= 20 and npm)",
    tag: "js_plugin",
    limits: "memory_mb = 32\ntimeout_ms = 2000",
};

// CPython's linear memory starts at 199 pages (12.4 MiB): memory_mb must be
// at least 13.
const PY: Tagger = Tagger {
    wasm: "py_metadata_tagger",
    build: "plugins/python/build.sh",
    tag: "py_plugin",
    limits: "memory_mb = 48\ntimeout_ms = 5000",
};
// The timeouts are generous only so that a slow debug build on a busy machine
// does not flake: a warm call takes microseconds, a fresh CPython instance
// about a millisecond.

impl Tagger {
    /// Fails with the fix when the component has not been built.
    fn require(&self) {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../plugins/dist")
            .join(format!("{}.wasm", self.wasm));
        assert!(
            p.exists(),
            "{} is missing: run {} to build it",
            p.display(),
            self.build
        );
    }

    async fn gateway(&self, hooks: Vec<gateway::config::HookConfig>) -> TestGateway {
        self.require();
        common::gateway_with_slow_plugin(self.wasm, hooks).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_hook_denies_allows_and_tags() {
    denies_allows_and_tags(&JS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_hook_denies_allows_and_tags() {
    denies_allows_and_tags(&PY).await;
}

async fn denies_allows_and_tags(t: &Tagger) {
    let (wasm, limits) = (t.wasm, t.limits);
    let gw = t
        .gateway(vec![
            hook(
                "tagger",
                wasm,
                "before",
                &["metadata.update", "metadata.delete"],
                &format!("{limits}\nconfig = {{ forbidden_prefix = \"tmp_\" }}"),
            ),
            // Default config: tags = { <tag> = true }. A fresh instance per
            // call, to show that instantiation works too, not only a warm instance.
            hook(
                "tagger-get",
                wasm,
                "get",
                &["metadata.get"],
                &format!("{limits}\ninstance = \"per-call\""),
            ),
        ])
        .await;
    gw.post(
        "/v1/sessions",
        json!({"session_id": "s", "metadata": {"status": "new", "tmp_legacy": 1}}),
    )
    .await;

    // Denied, with the plugin's reason, and nothing stored.
    let (s, v) = gw
        .patch(
            "/v1/sessions/s/metadata",
            json!({"tmp_x": 1, "status": "active"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_error(&v, "denied_by_hook");
    assert_eq!(v["error"]["message"], "tagger: key \"tmp_x\" is reserved");
    // Also inside an object value.
    let (s, v) = gw
        .patch(
            "/v1/sessions/s/metadata",
            json!({"profile": {"tier": "gold", "tmp_note": "x"}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(
        v["error"]["message"],
        "tagger: key \"profile.tmp_note\" is reserved"
    );
    let stored = || async {
        serde_json::Value::Object(
            gw.state
                .store
                .get_metadata(&gateway::model::Tenant::default_tenant(), "s")
                .await
                .unwrap(),
        )
    };
    assert_eq!(stored().await, json!({"status": "new", "tmp_legacy": 1}));

    // Allowed: stored as sent; the tag appears in what the client sees only.
    let (s, v) = gw
        .patch(
            "/v1/sessions/s/metadata",
            json!({"status": "active", "profile": {"tier": "gold"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut shown = json!({"status": "active", "tmp_legacy": 1, "profile": {"tier": "gold"}});
    shown[t.tag] = json!(true);
    assert_eq!(v, shown);
    assert_eq!(
        stored().await,
        json!({"status": "active", "tmp_legacy": 1, "profile": {"tier": "gold"}})
    );
    let (s, v) = gw.get("/v1/sessions/s/metadata").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut shown = json!({"status": "active", "tmp_legacy": 1, "profile": {"tier": "gold"}});
    shown[t.tag] = json!(true);
    assert_eq!(v, shown);
    assert_eq!(gw.get("/v1/sessions/s").await.1["metadata"][t.tag], true);

    // Deletes are allowed, reserved keys included (so they can be cleaned up).
    let (s, v) = gw.delete("/v1/sessions/s/metadata?keys=tmp_legacy").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        stored().await,
        json!({"status": "active", "profile": {"tier": "gold"}})
    );

    let (before, get) = (
        gw.plugin_stats("tagger").await,
        gw.plugin_stats("tagger-get").await,
    );
    assert_eq!(
        before["exports"],
        json!(["gateway:hooks/metadata-hook@0.1.0"]),
        "{before}"
    );
    assert_eq!(
        (before["calls"].as_u64(), before["errors"].as_u64()),
        (Some(4), Some(0)),
        "{before}"
    );
    assert_eq!(
        before["instantiations"], 1,
        "one warm instance served every call: {before}"
    );
    assert_eq!(get["errors"], 0, "{get}");
    assert!(get["calls"].as_u64().unwrap() >= 4, "{get}");
    assert_eq!(get["instantiations"], get["calls"], "per-call: {get}");
    gw.stop().await;
}

/// A config the plugin cannot understand denies every change (fail closed)
/// with a reason that says so, and GET shows the metadata untagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_hook_with_bad_config_fails_closed() {
    bad_config_fails_closed(&JS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_hook_with_bad_config_fails_closed() {
    bad_config_fails_closed(&PY).await;
}

async fn bad_config_fails_closed(t: &Tagger) {
    let wasm = t.wasm;
    let bad = format!("{}\nconfig = {{ forbidden_prefix = 3 }}", t.limits);
    let gw = t
        .gateway(vec![
            hook(
                "tagger",
                wasm,
                "before",
                &["metadata.update", "metadata.delete"],
                &bad,
            ),
            hook("tagger-get", wasm, "get", &["metadata.get"], &bad),
        ])
        .await;
    gw.session("s").await;
    let (s, v) = gw
        .patch("/v1/sessions/s/metadata", json!({"status": "active"}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_error(&v, "denied_by_hook");
    assert_eq!(
        v["error"]["message"],
        "tagger: metadata tagger misconfigured: \"forbidden_prefix\" must be a non-empty string"
    );
    assert_eq!(gw.get("/v1/sessions/s/metadata").await.1, json!({}));
    gw.stop().await;
}

/// `gateway plugin check` accepts the component: it imports nothing but the
/// gateway's own interfaces (no WASI at all) and exports the metadata hook.
#[test]
fn js_plugin_check_reports_no_wasi_imports() {
    plugin_check_reports_no_wasi_imports(&JS);
}

#[test]
fn python_plugin_check_reports_no_wasi_imports() {
    plugin_check_reports_no_wasi_imports(&PY);
}

fn plugin_check_reports_no_wasi_imports(t: &Tagger) {
    t.require();
    // check_plugin compiles into a cache of its own (the same engine, so the
    // same artifacts): share the gateways' cache with it both ways, so that
    // the component is compiled once per run, not twice. Not at the same
    // time as a gateway.
    let _one_at_a_time = common::SLOW_PLUGIN_START.blocking_lock();
    let shared = common::shared_plugin_cache(t.wasm);
    let own = std::env::temp_dir().join("session-gateway-check");
    common::copy_plugin_artifacts(t.wasm, &shared, &own);
    let report = gateway::hooks::check_plugin(&common::plugin(t.wasm)).unwrap();
    common::copy_plugin_artifacts(t.wasm, &own, &shared);
    assert_eq!(
        report["exports"],
        json!(["gateway:hooks/metadata-hook@0.1.0"]),
        "{report}"
    );
    assert_eq!(
        report["imports"],
        json!(["gateway:hooks/types@0.1.0", "gateway:hooks/host@0.1.0"]),
        "{report}"
    );
}
