//! A hook written in JavaScript (plugins/js/metadata-tagger, componentized by
//! plugins/js/build.sh into plugins/dist/js_metadata_tagger.wasm) runs in the
//! real gateway like the Rust plugins: deny with its reason, allow, on-get tag,
//! fail closed on a bad config. Passes with either JS backend of build.sh.
//!
//! The component embeds a whole JS engine (1.6 MB of wasm with QuickJS, 12 MB
//! with StarlingMonkey), which takes seconds (tens of seconds) to compile in a
//! debug build, so these tests share one compiled-artifact cache under
//! CARGO_TARGET_TMPDIR (keyed by the wasm's sha256 and the engine hash,
//! checksummed: safe to share) and start their gateways one at a time, so a
//! cold cache compiles it once.

mod common;

use std::path::PathBuf;

use common::{Backend, TestGateway, assert_error, hook};
use reqwest::StatusCode;
use serde_json::json;

const WASM: &str = "js_metadata_tagger";

/// Fails with the fix when the JS component has not been built.
fn require_js_plugin() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/dist")
        .join(format!("{WASM}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run plugins/js/build.sh (needs Node.js >= 20 and npm) to build the JavaScript plugin",
        p.display()
    );
}

/// Serializes gateway start-ups, so that only the first compiles the plugin.
static START: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The compiled-artifact cache shared by these tests. JS builds are not
/// byte-for-byte reproducible, so each rebuild is a new sha256: artifacts of
/// other builds are removed (once per run) rather than piling up.
fn shared_cache() -> PathBuf {
    static PRUNED: std::sync::Once = std::sync::Once::new();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("js-plugin-cache");
    PRUNED.call_once(|| {
        use sha2::Digest;
        let sha = hex::encode(sha2::Sha256::digest(
            std::fs::read(common::plugin(WASM)).unwrap(),
        ));
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if !entry.file_name().to_string_lossy().starts_with(&sha) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    });
    dir
}

async fn gw(hooks: Vec<gateway::config::HookConfig>) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(Backend::Embedded, &dir).expect("embedded store");
    cfg.plugins.cache_dir = shared_cache();
    cfg.hooks = hooks;
    let mut gw = {
        let _one_at_a_time = START.lock().await;
        TestGateway::start(cfg).await
    };
    gw.dir = Some(dir);
    gw
}

// Limits for the JS engine. Its linear memory starts at 23 pages (1.4 MiB)
// with QuickJS and 145 pages (9.1 MiB) with StarlingMonkey, so memory_mb must
// be at least 2 or 10; 32 (the default) leaves room for the heap with either.
// The timeout is generous only so that a slow debug build on a busy machine
// does not flake: a warm call takes well under a millisecond.
const LIMITS: &str = "memory_mb = 32\ntimeout_ms = 2000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_hook_denies_allows_and_tags() {
    require_js_plugin();
    let gw = gw(vec![
        hook(
            "tagger",
            WASM,
            "before",
            &["metadata.update", "metadata.delete"],
            &format!("{LIMITS}\nconfig = {{ forbidden_prefix = \"tmp_\" }}"),
        ),
        // Default config: tags = { js_plugin = true }. A fresh instance per
        // call, to show that instantiation works too, not only a warm instance.
        hook(
            "tagger-get",
            WASM,
            "get",
            &["metadata.get"],
            &format!("{LIMITS}\ninstance = \"per-call\""),
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
    assert_eq!(
        v,
        json!({"status": "active", "tmp_legacy": 1, "profile": {"tier": "gold"}, "js_plugin": true})
    );
    assert_eq!(
        stored().await,
        json!({"status": "active", "tmp_legacy": 1, "profile": {"tier": "gold"}})
    );
    let (s, v) = gw.get("/v1/sessions/s/metadata").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"status": "active", "tmp_legacy": 1, "profile": {"tier": "gold"}, "js_plugin": true})
    );
    assert_eq!(
        gw.get("/v1/sessions/s").await.1["metadata"]["js_plugin"],
        true
    );

    // Deletes are allowed, reserved keys included (so they can be cleaned up).
    let (s, v) = gw.delete("/v1/sessions/s/metadata?keys=tmp_legacy").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        stored().await,
        json!({"status": "active", "profile": {"tier": "gold"}})
    );

    let (_, plugins) = gw.get("/v1/admin/plugins").await;
    let by = |n: &str| {
        plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n)
            .unwrap()
            .clone()
    };
    let (before, get) = (by("tagger"), by("tagger-get"));
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
    require_js_plugin();
    let bad = format!("{LIMITS}\nconfig = {{ forbidden_prefix = 3 }}");
    let gw = gw(vec![
        hook(
            "tagger",
            WASM,
            "before",
            &["metadata.update", "metadata.delete"],
            &bad,
        ),
        hook("tagger-get", WASM, "get", &["metadata.get"], &bad),
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
    require_js_plugin();
    // check_plugin compiles into its own cache: not at the same time as a gateway.
    let _one_at_a_time = START.blocking_lock();
    let report = gateway::hooks::check_plugin(&common::plugin(WASM)).unwrap();
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
