//! Message hooks (WIT `gateway:hooks@0.2.0`) end to end: the PII masker
//! rewrites what is stored, the guardrail refuses (nothing stored, no event),
//! a 0.2.0 plugin hot-swaps, and 0.1.0 plugins keep working beside 0.2.0 ones.

mod common;

use common::{Backend, TestGateway, assert_error, hook};
use reqwest::StatusCode;
use serde_json::{Value, json};

macro_rules! gw {
    ($b:expr, $hooks:expr) => {
        match TestGateway::with_hooks($b, $hooks).await {
            Some(g) => g,
            None => return,
        }
    };
}

const MESSAGES: &str = "/v1/sessions/s/agents/a/messages";

fn pii() -> gateway::config::HookConfig {
    hook(
        "pii",
        "pii_masker",
        "before",
        &["message.append", "message.update"],
        "",
    )
}

fn guard() -> gateway::config::HookConfig {
    hook(
        "guard",
        "message_guardrail",
        "before",
        &["message.append", "message.update"],
        "config = { max_chars = 40, blocked = [\"project x\"], roles = [\"user\"] }",
    )
}

fn msg(id: u64, role: &str, text: &str) -> Value {
    json!({"message_id": id, "message": {"role": role, "content": [{"text": text}]}})
}

fn text(v: &Value) -> &str {
    v["message"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
}

async fn session_and_agent(gw: &TestGateway) {
    gw.session("s").await;
    let (s, v) = gw
        .put("/v1/sessions/s/agents/a", json!({"state": {}}))
        .await;
    assert!(s.is_success(), "{v}");
}

async fn latest_seq(gw: &TestGateway) -> u64 {
    let t = gateway::model::Tenant::default_tenant();
    gw.state.store.latest_event_seq(&t, "s").await.unwrap()
}

async fn pii_is_masked_before_it_is_stored(b: Backend) {
    let gw = gw!(b, vec![pii()]);
    session_and_agent(&gw).await;
    let raw = "I am jane.doe@example.com, card 4111 1111 1111 1111, call +1 (555) 123-4567.";
    let masked = "I am [email], card [card], call [phone].";
    let (s, v) = gw.post(MESSAGES, msg(0, "user", raw)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(text(&v), masked);
    // What is stored, and read back, is the masked text.
    let (s, v) = gw.get(&format!("{MESSAGES}/0")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(text(&v), masked);
    let (_, list) = gw.get(MESSAGES).await;
    assert_eq!(text(&list["messages"][0]), masked, "{list}");
    // A retried append with the same (unmasked) content is the same message.
    let (s, v) = gw.post(MESSAGES, msg(0, "user", raw)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(text(&v), masked);
    // Other roles are left as they are (the plugin's default `roles`).
    let (s, v) = gw
        .post(MESSAGES, msg(1, "assistant", "ops@example.com"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(text(&v), "ops@example.com");
    // Replacing and patching the content go through `before-update`.
    let (s, v) = gw
        .put(
            &format!("{MESSAGES}/0"),
            msg(0, "user", "new mail: bob@example.org"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(text(&v), "new mail: [email]");
    let (s, v) = gw
        .patch(
            &format!("{MESSAGES}/0"),
            json!({"message": {"role": "user", "content": [{"text": "tel 020 7946 0958"}]}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(text(&v), "tel [phone]");
    // A PATCH that does not touch the content does not run the hook.
    let calls = gw.plugin_stats("pii").await["calls"].as_u64().unwrap();
    let (s, v) = gw
        .patch(&format!("{MESSAGES}/0"), json!({"redact_message": "r"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        gw.plugin_stats("pii").await["calls"].as_u64().unwrap(),
        calls
    );
    assert_eq!(
        text(&gw.get(&format!("{MESSAGES}/0")).await.1),
        "tel [phone]"
    );
    gw.stop().await;
}

async fn guardrail_refuses_and_nothing_is_stored(b: Backend) {
    let gw = gw!(b, vec![guard()]);
    session_and_agent(&gw).await;
    let before = latest_seq(&gw).await;
    let long = "x".repeat(41);
    let (s, v) = gw.post(MESSAGES, msg(0, "user", &long)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_error(&v, "denied_by_hook");
    assert_eq!(
        v["error"]["message"],
        "guard: message is 41 characters long; the policy allows at most 40"
    );
    let (s, v) = gw
        .post(MESSAGES, msg(0, "user", "tell me about Project X"))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(
        v["error"]["message"],
        "guard: message contains a term the policy blocks"
    );
    // Nothing stored, no change event recorded.
    let (_, list) = gw.get(MESSAGES).await;
    assert_eq!(list["total"], 0, "{list}");
    assert_eq!(latest_seq(&gw).await, before);
    // Within the policy (or not a user's message) it goes through.
    let (s, v) = gw.post(MESSAGES, msg(0, "user", "hello")).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = gw.post(MESSAGES, msg(1, "assistant", &long)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let seq = latest_seq(&gw).await;
    // An update over the policy is refused and changes nothing.
    let (s, v) = gw
        .put(&format!("{MESSAGES}/0"), msg(0, "user", &long))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_error(&v, "denied_by_hook");
    assert_eq!(text(&gw.get(&format!("{MESSAGES}/0")).await.1), "hello");
    assert_eq!(latest_seq(&gw).await, seq);
    gw.stop().await;
}

/// 0.1.0 plugins (metadata validator, redactor, audit) and 0.2.0 plugins
/// (PII masker, guardrail) in one gateway: each behaves as on its own.
async fn versions_side_by_side(b: Backend) {
    let gw = gw!(
        b,
        vec![
            hook(
                "validate",
                "metadata_validator",
                "before",
                &["metadata.update"],
                "config = { types = { status = \"string\" } }",
            ),
            hook(
                "redact",
                "metadata_redactor",
                "get",
                &["metadata.get"],
                "config = { mask = [\"api_key\"] }",
            ),
            hook(
                "audit",
                "audit_log",
                "after",
                &["metadata.update", "feedback.add"],
                "",
            ),
            guard(),
            pii(),
        ]
    );
    let (_, plugins) = gw.get("/v1/admin/plugins").await;
    let wit = |name: &str| {
        plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["wit"].clone())
            .unwrap_or_else(|| panic!("{plugins}"))
    };
    assert_eq!(wit("validate"), "gateway:hooks@0.1.0");
    assert_eq!(wit("audit"), "gateway:hooks@0.1.0");
    assert_eq!(wit("pii"), "gateway:hooks@0.2.0");
    session_and_agent(&gw).await;
    // 0.1.0: deny, then a change that passes; the get-hook masks.
    let (s, v) = gw
        .patch("/v1/sessions/s/metadata", json!({"status": 1}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_error(&v, "denied_by_hook");
    let (s, v) = gw
        .patch(
            "/v1/sessions/s/metadata",
            json!({"status": "ok", "api_key": "k-123"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_ne!(v["api_key"], "k-123", "{v}");
    // 0.2.0: the chain runs in config order: the guardrail, then the masker.
    let (s, v) = gw
        .post(MESSAGES, msg(0, "user", "mail a@example.com"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(text(&v), "mail [email]");
    let (s, v) = gw.post(MESSAGES, msg(1, "user", &"y".repeat(50))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    // The 0.1.0 after-hook still sees the change.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while gw.plugin_stats("audit").await["calls"]
        .as_u64()
        .unwrap_or(0)
        < 1
    {
        assert!(std::time::Instant::now() < deadline, "audit never ran");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(gw.plugin_stats("audit").await["errors"], 0);
    gw.stop().await;
}

/// `POST …/batch` runs the same message hooks as the single-message routes
/// (the Python client sends each turn's last message as a batch): an
/// `append_message` and a `patch_message` are masked, and a refused op stops
/// the batch there with nothing of it stored.
async fn batches_run_the_message_hooks(b: Backend) {
    let gw = gw!(b, vec![pii(), guard()]);
    session_and_agent(&gw).await;
    let batch = "/v1/sessions/s/batch";
    let op = |m: Value| json!({"op": "append_message", "agent_id": "a", "message": m});
    let (s, v) = gw
        .post(
            batch,
            json!({"ops": [
                op(msg(0, "user", "mail bob@example.org")),
                {"op": "patch_message", "agent_id": "a", "message_id": 0,
                 "patch": {"message": {"role": "user", "content": [{"text": "tel 020 7946 0958"}]}}},
            ]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(text(&v["results"][0]["body"]), "mail [email]", "{v}");
    assert_eq!(text(&v["results"][1]["body"]), "tel [phone]", "{v}");
    assert_eq!(
        text(&gw.get(&format!("{MESSAGES}/0")).await.1),
        "tel [phone]"
    );
    // The guardrail refuses the second op: the first stays written, the
    // refused one and the one after it are not.
    let (s, v) = gw
        .post(
            batch,
            json!({"ops": [
                op(msg(1, "user", "ok")),
                op(msg(2, "user", "tell me about Project X")),
                op(msg(3, "user", "after")),
            ]}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_error(&v, "denied_by_hook");
    assert_eq!(v["failed_op"], 1, "{v}");
    let (_, list) = gw.get(MESSAGES).await;
    assert_eq!(list["total"], 2, "{list}");
    gw.stop().await;
}

on_both_stores!(
    pii_is_masked_before_it_is_stored,
    guardrail_refuses_and_nothing_is_stored,
    versions_side_by_side,
    batches_run_the_message_hooks,
);

/// Swapping a 0.2.0 plugin's file (masker → guardrail) changes behaviour on
/// reload; the new version serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_plugin_hot_swaps() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("message.wasm");
    std::fs::copy(common::plugin("pii_masker"), &wasm).unwrap();
    let text_cfg = format!(
        "[storage.embedded]\npath = \"gateway.redb\"\n[plugins]\ncache_dir = \"cache\"\nwatch = false\n\n[[hooks]]\nname = \"msg\"\nwasm = {:?}\nevents = [\"message.append\"]\nphase = \"before\"\nconfig = {{ max_chars = 10 }}\n{}\n",
        wasm.display().to_string(),
        common::HOOK_TIMEOUT
    );
    let cfg_path = dir.path().join("gateway.toml");
    std::fs::write(&cfg_path, text_cfg).unwrap();
    let cfg = gateway::config::Config::load(&cfg_path).unwrap();
    let gw = TestGateway::start_with(cfg, Some(cfg_path)).await;
    session_and_agent(&gw).await;
    let (s, v) = gw
        .post(MESSAGES, msg(0, "user", "reach me at x@example.com"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(text(&v), "reach me at [email]");

    std::fs::copy(common::plugin("message_guardrail"), &wasm).unwrap();
    let report = gw.state.hooks.reload().await;
    assert_eq!(report.loaded, vec!["msg".to_owned()], "{report:?}");
    let (s, v) = gw
        .post(MESSAGES, msg(1, "user", "reach me at x@example.com"))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_error(&v, "denied_by_hook");
    let (s, v) = gw.post(MESSAGES, msg(1, "user", "ok")).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    gw.stop().await;
}

/// A 0.1.0 component has no message hook: binding it to a message event is
/// refused when it loads, naming what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_0_1_plugin_cannot_hook_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(Backend::Embedded, &dir).unwrap();
    cfg.hooks = vec![hook(
        "old",
        "metadata_validator",
        "before",
        &["message.append"],
        "",
    )];
    let err = match gateway::Gateway::start(cfg, None).await {
        Ok(_) => panic!("a 0.1.0 plugin was bound to message.append"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("old") && err.contains("gateway:hooks/message-hook"),
        "{err}"
    );
}
