//! Property tests: arbitrary request bodies never produce a 5xx, every error
//! has the uniform shape, and a refused write changes nothing; WIT boundary
//! conversions round-trip. Bounded case counts keep this quick.

mod common;

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Method, Request};
use gateway::hooks::v0_1_0::{change_from_wit, change_to_wit};
use gateway::metadata::MetadataChange;
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;

/// Arbitrary JSON, including awkward keys (dots, `$`, empty, unicode) and deep nesting.
fn arb_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        "[a-z]{1,6}",
        Just(String::new()),
        Just("$set".to_owned()),
        Just("a.b".to_owned()),
        Just("a..b".to_owned()),
        "\\PC{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = common::config(common::Backend::Embedded, &dir).unwrap();
        cfg.limits.max_json_depth = 5;
        let app = rt.block_on(async {
            let gw = gateway::Gateway::start(cfg, None).await.unwrap();
            let app = gateway::app(gw.state.clone());
            std::mem::forget(gw); // background tasks live for the whole test binary
            // One session per property, since properties run in parallel.
            for sid in ["md", "fb", "msg", "agent", "raw", "del", "list"] {
                send(
                    &app,
                    Method::POST,
                    "/v1/sessions",
                    json!({"session_id": sid, "metadata": {"keep": 1}}).to_string(),
                )
                .await;
                send(
                    &app,
                    Method::PUT,
                    &format!("/v1/sessions/{sid}/agents/a"),
                    "{}".into(),
                )
                .await;
            }
            app
        });
        Fixture { rt, app, _dir: dir }
    })
}

async fn send(app: &axum::Router, method: Method, path: &str, body: String) -> (u16, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::from(body))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Everything a write could change in a fixture session, and the number of sessions.
async fn snapshot(app: &axum::Router, sid: &str) -> Value {
    let (_, md) = send(
        app,
        Method::GET,
        &format!("/v1/sessions/{sid}/metadata"),
        String::new(),
    )
    .await;
    let (_, msgs) = send(
        app,
        Method::GET,
        &format!("/v1/sessions/{sid}/agents/a/messages?latest=1"),
        String::new(),
    )
    .await;
    let (_, fbs) = send(
        app,
        Method::GET,
        &format!("/v1/sessions/{sid}/feedbacks"),
        String::new(),
    )
    .await;
    let (_, agent) = send(
        app,
        Method::GET,
        &format!("/v1/sessions/{sid}/agents/a"),
        String::new(),
    )
    .await;
    json!({"md": md, "total": msgs["total"], "fbs": fbs["feedbacks"].as_array().map(Vec::len), "version": agent["version"]})
}

/// Sends one request about fixture session `sid` and checks the invariants.
fn check(sid: &str, method: Method, path: &str, body: String) -> Result<(), TestCaseError> {
    let f = fixture();
    f.rt.block_on(async {
        let before = snapshot(&f.app, sid).await;
        let (status, v) = send(&f.app, method.clone(), path, body.clone()).await;
        prop_assert!(status < 500, "{method} {path} {body:?} -> {status} {v}");
        if status >= 400 {
            prop_assert!(
                v["error"]["code"].is_string() && v["error"]["message"].is_string(),
                "non-uniform error {v}"
            );
            let after = snapshot(&f.app, sid).await;
            prop_assert_eq!(
                before,
                after,
                "a refused request changed state: {} {} {:?}",
                method,
                path,
                body
            );
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn metadata_patch_bodies(body in arb_json()) {
        check("md", Method::PATCH, "/v1/sessions/md/metadata", body.to_string())?;
    }

    #[test]
    fn feedback_bodies(body in arb_json()) {
        check("fb", Method::POST, "/v1/sessions/fb/feedbacks", body.to_string())?;
    }

    #[test]
    fn message_bodies(body in arb_json(), id in proptest::option::of(0u64..4)) {
        let mut body = body;
        if let (Some(id), Some(obj)) = (id, body.as_object_mut()) {
            obj.insert("message_id".into(), id.into());
        }
        check("msg", Method::POST, "/v1/sessions/msg/agents/a/messages", body.to_string())?;
    }

    #[test]
    fn agent_bodies(body in arb_json()) {
        check("agent", Method::PUT, "/v1/sessions/agent/agents/a", body.to_string())?;
    }

    #[test]
    fn raw_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let body = String::from_utf8_lossy(&bytes).into_owned();
        check("raw", Method::PATCH, "/v1/sessions/raw/metadata", body.clone())?;
        check("raw", Method::POST, "/v1/sessions", body)?;
    }

    #[test]
    fn metadata_delete_keys(keys in "\\PC{0,30}") {
        let q: String = url_escape(&keys);
        check("del", Method::DELETE, &format!("/v1/sessions/del/metadata?keys={q}"), String::new())?;
    }

    #[test]
    fn list_queries(k in "[a-z_.$]{1,12}", v in "\\PC{0,12}") {
        check("list", Method::GET, &format!("/v1/sessions?{}={}", url_escape(&k), url_escape(&v)), String::new())?;
    }

    /// A valid change survives the trip through the WIT types unchanged.
    #[test]
    fn wit_change_round_trips(assignments in prop::collection::btree_map("[a-z]{1,5}(\\.[a-z]{1,5}){0,2}", arb_json(), 1..5), delete in any::<bool>()) {
        let change = if delete {
            MetadataChange::Delete(assignments.keys().cloned().collect())
        } else {
            MetadataChange::Update(assignments.into_iter().collect())
        };
        prop_assume!(change.validate().is_ok());
        prop_assert_eq!(change_from_wit(change_to_wit(&change)), Ok(change));
    }
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
