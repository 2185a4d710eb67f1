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

/// A gateway on `backend` with one session (and agent `a`) per property;
/// `None` when the backend is unavailable.
fn start_fixture(backend: common::Backend) -> Option<Fixture> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(backend, &dir)?;
    cfg.limits.max_json_depth = 5;
    let app = rt.block_on(async {
        let gw = gateway::Gateway::start(cfg, None).await.unwrap();
        let app = gateway::app(gw.state.clone());
        std::mem::forget(gw); // background tasks live for the whole test binary
        // One session per property, since properties run in parallel.
        for sid in ["md", "fb", "msg", "agent", "raw", "del", "list"] {
            let (s, v) = send(
                &app,
                Method::POST,
                "/v1/sessions",
                json!({"session_id": sid, "metadata": {"keep": 1}}).to_string(),
            )
            .await;
            assert_eq!(s, 201, "{backend:?}: creating {sid}: {v}");
            let (s, v) = send(
                &app,
                Method::PUT,
                &format!("/v1/sessions/{sid}/agents/a"),
                "{}".into(),
            )
            .await;
            assert_eq!(s, 201, "{backend:?}: creating agent a of {sid}: {v}");
        }
        app
    });
    Some(Fixture { rt, app, _dir: dir })
}

/// The fixtures to check: embedded always, MongoDB when `MONGODB_URI` is set.
fn fixtures() -> &'static [(common::Backend, Fixture)] {
    static F: OnceLock<Vec<(common::Backend, Fixture)>> = OnceLock::new();
    F.get_or_init(|| {
        [common::Backend::Embedded, common::Backend::Mongo]
            .into_iter()
            .filter_map(|b| Some((b, start_fixture(b)?)))
            .collect()
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

/// A GET that must succeed (the snapshot must not compare two errors).
async fn read(app: &axum::Router, path: &str) -> Value {
    let (s, v) = send(app, Method::GET, path, String::new()).await;
    assert_eq!(s, 200, "GET {path}: {v}");
    v
}

/// Everything a write could change in a fixture session (metadata, agent,
/// every message with its contents, every feedback), and every session id.
async fn snapshot(app: &axum::Router, sid: &str) -> Value {
    let session = read(app, &format!("/v1/sessions/{sid}")).await;
    let agent = read(app, &format!("/v1/sessions/{sid}/agents/a")).await;
    let msgs = read(
        app,
        &format!("/v1/sessions/{sid}/agents/a/messages?limit=1000"),
    )
    .await;
    let fbs = read(app, &format!("/v1/sessions/{sid}/feedbacks")).await;
    let list = read(app, "/v1/sessions?limit=1000").await;
    let mut sessions: Vec<Value> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].clone())
        .collect();
    sessions.sort_by_key(Value::to_string);
    json!({
        "metadata": session["metadata"],
        "updated_at": session["updated_at"],
        "agent": agent,
        "messages": msgs,
        "feedbacks": fbs["feedbacks"],
        "sessions": sessions,
        "more_sessions": list["next_cursor"],
    })
}

/// Properties run in parallel, and a write accepted for one would change
/// another's snapshot (e.g. the session list): one check at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Sends one request about fixture session `sid` and checks the invariants,
/// on the embedded store every time and on MongoDB every fourth time (its
/// test server is much slower).
fn check(sid: &str, method: Method, path: &str, body: String) -> Result<(), TestCaseError> {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (backend, f) in fixtures() {
        if *backend == common::Backend::Mongo
            && (!n.is_multiple_of(4) || secantusd_py_misreads(path, &body))
        {
            continue;
        }
        f.rt.block_on(async {
            let before = snapshot(&f.app, sid).await;
            let (status, v) = send(&f.app, method.clone(), path, body.clone()).await;
            prop_assert!(
                status < 500,
                "{backend:?}: {method} {path} {body:?} -> {status} {v}"
            );
            if status >= 400 {
                prop_assert!(
                    v["error"]["code"].is_string() && v["error"]["message"].is_string(),
                    "{backend:?}: non-uniform error {v}"
                );
                let after = snapshot(&f.app, sid).await;
                prop_assert_eq!(
                    before,
                    after,
                    "{:?}: a refused request changed state: {} {} {:?}",
                    backend,
                    method,
                    path,
                    body
                );
            }
            Ok(())
        })?;
    }
    Ok(())
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

/// Whether a request names a metadata path that `secantusd-py` (the CI's
/// MongoDB-wire test server) fails on with an internal error rather than
/// treating as a field name: it parses every path segment for which Python's
/// `str.isdigit()` holds as an array index with `int()`, which raises on
/// non-ASCII digits such as `₂` or `²` (`secantus/diff.py`,
/// `_elementwise_array_paths`). MongoDB treats them as field names; the
/// embedded half of every property still checks such requests.
fn secantusd_py_misreads(path: &str, body: &str) -> bool {
    let path = percent_decode(path);
    [path.as_str(), body]
        .iter()
        .any(|s| s.chars().any(|c| !c.is_ascii() && c.is_numeric()))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
