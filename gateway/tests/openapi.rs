//! The OpenAPI document (`GET /openapi.json`) covers every route, and only
//! routes that exist.
//!
//! The routes are read from the source of `gateway/src/routes/*.rs` (every
//! `.route("PATH", get(..).post(..))` chain), so adding a route without a
//! `#[utoipa::path]` (or documenting one that is gone) fails here.

mod common;

use std::collections::BTreeSet;

use common::{Backend, TestGateway};
use reqwest::StatusCode;
use serde_json::Value;

/// The route files, by name.
const ROUTE_FILES: &[(&str, &str)] = &[
    ("admin.rs", include_str!("../src/routes/admin.rs")),
    ("agents.rs", include_str!("../src/routes/agents.rs")),
    ("batch.rs", include_str!("../src/routes/batch.rs")),
    ("events.rs", include_str!("../src/routes/events.rs")),
    ("feedbacks.rs", include_str!("../src/routes/feedbacks.rs")),
    ("health.rs", include_str!("../src/routes/health.rs")),
    ("messages.rs", include_str!("../src/routes/messages.rs")),
    ("metadata.rs", include_str!("../src/routes/metadata.rs")),
    ("mod.rs", include_str!("../src/routes/mod.rs")),
    // `/openapi.json` is routed next to the router, in `app()`.
    ("lib.rs", include_str!("../src/lib.rs")),
    ("sessions.rs", include_str!("../src/routes/sessions.rs")),
];

const METHODS: &[&str] = &[
    "get", "post", "put", "patch", "delete", "head", "options", "trace",
];

/// `(method, path)` of every `.route(...)` call in `src`.
fn routes_in(file: &str, src: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let args = balanced(rest).unwrap_or_else(|| panic!("{file}: unbalanced .route( call"));
        let open = args
            .find('"')
            .unwrap_or_else(|| panic!("{file}: .route( without a path literal"));
        let close = open + 1 + args[open + 1..].find('"').expect("closing quote");
        let path = &args[open + 1..close];
        let after = &args[close + 1..];
        let chain = after
            .trim_start()
            .strip_prefix(',')
            .unwrap_or_else(|| panic!("{file}: no method router for {path}"));
        let methods = chain_methods(chain);
        assert!(
            !methods.is_empty(),
            "{file}: no get/post/put/patch/delete in the method router of {path}: {chain}"
        );
        out.extend(methods.into_iter().map(|m| (m, path.to_owned())));
        rest = &rest[args.len()..];
    }
    out
}

/// The text up to (not including) the parenthesis that closes the one just opened.
fn balanced(s: &str) -> Option<&str> {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut prev = '\0';
    for (i, c) in s.char_indices() {
        match c {
            '"' if prev != '\\' => in_str = !in_str,
            '(' if !in_str => depth += 1,
            ')' if !in_str => {
                if depth == 0 {
                    return Some(&s[..i]);
                }
                depth -= 1;
            }
            _ => {}
        }
        prev = c;
    }
    None
}

/// Method names called at the top level of a method-router chain such as
/// `get(read).put(replace).patch(patch)` (arguments are skipped).
fn chain_methods(chain: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = chain.trim();
    while !rest.is_empty() {
        let name_len = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let name = &rest[..name_len];
        let after = rest[name_len..].trim_start();
        let Some(inner) = after.strip_prefix('(') else {
            break;
        };
        let args = balanced(inner).expect("balanced method call");
        let method = name.rsplit("::").next().unwrap_or(name);
        if METHODS.contains(&method) {
            out.push(method.to_owned());
        }
        rest = inner[args.len() + 1..].trim_start();
        rest = rest.strip_prefix('.').unwrap_or(rest).trim_start();
    }
    out
}

fn source_routes() -> BTreeSet<(String, String)> {
    let mut all = BTreeSet::new();
    for (file, src) in ROUTE_FILES {
        for r in routes_in(file, src) {
            assert!(
                all.insert(r.clone()),
                "{file}: route {r:?} is declared twice"
            );
        }
    }
    all
}

fn doc_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let mut all = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, _) in item.as_object().expect("path item") {
            if METHODS.contains(&method.as_str()) {
                all.insert((method.clone(), path.clone()));
            }
        }
    }
    all
}

fn document() -> Value {
    serde_json::from_str(gateway::openapi::json()).expect("the document is JSON")
}

#[test]
fn route_parser_reads_chains() {
    let src = r#"Router::new()
        .route("/a", get(list).post(create))
        .route(
            "/a/{id}",
            get(read).put(replace).patch(patch),
        )
        .route("/b", axum::routing::delete(x(1, "(")).get(crate::y::serve))"#;
    let got = routes_in("t.rs", src);
    let want = [
        ("get", "/a"),
        ("post", "/a"),
        ("get", "/a/{id}"),
        ("put", "/a/{id}"),
        ("patch", "/a/{id}"),
        ("delete", "/b"),
        ("get", "/b"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn every_route_is_documented_and_nothing_else() {
    let source = source_routes();
    assert!(
        source.len() >= 27,
        "suspiciously few routes parsed: {source:?}"
    );
    let doc = doc_routes(&document());
    let undocumented: Vec<_> = source.difference(&doc).collect();
    let unrouted: Vec<_> = doc.difference(&source).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes missing from the OpenAPI document (add #[utoipa::path] and list the handler in openapi.rs): \
         {undocumented:?}\ndocumented operations with no route: {unrouted:?}"
    );
}

#[test]
fn document_is_openapi_3_1_and_complete() {
    let doc = document();
    assert_eq!(doc, gateway::openapi::document());
    let version = doc["openapi"].as_str().expect("openapi version");
    assert!(version.starts_with("3.1."), "not OpenAPI 3.1: {version}");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let responses = doc["components"]["responses"]
        .as_object()
        .expect("shared responses");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    // Every $ref resolves.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all_refs = Vec::new();
    refs(&doc, &mut all_refs);
    for r in all_refs {
        let target = r
            .strip_prefix("#/")
            .map(|p| p.split('/').fold(&doc, |v, seg| &v[seg]))
            .unwrap_or(&Value::Null);
        assert!(!target.is_null(), "dangling $ref {r}");
    }

    let resolve = |r: &'_ Value| -> Value {
        match r.get("$ref").and_then(Value::as_str) {
            Some(p) => responses[p.rsplit('/').next().unwrap()].clone(),
            None => r.clone(),
        }
    };
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let templated: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for (method, op) in item.as_object().unwrap() {
            let at = format!("{} {path}", method.to_uppercase());
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{at}: no operationId"));
            assert!(
                ids.insert(id.to_owned()),
                "{at}: duplicate operationId {id}"
            );
            assert!(op["summary"].is_string(), "{at}: no summary");
            assert!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{at}: no tag"
            );
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let path_params: BTreeSet<&str> = params
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert_eq!(
                path_params, templated,
                "{at}: path parameters do not match the template"
            );
            assert!(
                params
                    .iter()
                    .any(|p| p["in"] == "header" && p["name"] == "X-Request-Id"),
                "{at}: no X-Request-Id"
            );
            let public = gateway::openapi::PUBLIC_PATHS.contains(&path.as_str());
            let security = &op["security"];
            if public {
                assert_eq!(
                    *security,
                    serde_json::json!([{}]),
                    "{at}: public operations need no key"
                );
            } else {
                assert_eq!(
                    *security,
                    serde_json::json!([{ "bearer": [] }]),
                    "{at}: needs the bearer scheme"
                );
            }
            let rs = op["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{at}: no responses"));
            assert!(
                rs.keys().any(|s| s.starts_with('2')),
                "{at}: no success response"
            );
            for status in ["500", "503"]
                .into_iter()
                .chain((!public).then_some("401"))
                .chain((!public).then_some("429"))
            {
                assert!(rs.contains_key(status), "{at}: no {status} response");
            }
            if op.get("requestBody").is_some() {
                assert!(rs.contains_key("413"), "{at}: a body endpoint without 413");
            }
            for (status, r) in rs {
                let r = resolve(r);
                assert!(
                    r["headers"]["X-Request-Id"].is_object(),
                    "{at} {status}: no X-Request-Id header"
                );
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{at} {status}: error responses use the uniform error body"
                    );
                }
            }
        }
    }
    // Pieces the task names explicitly.
    let op = |m: &str, p: &str| doc["paths"][p][m].clone();
    assert!(
        op("get", "/v1/sessions/{sid}/events")["responses"]["200"]["content"]["text/event-stream"]
            .is_object()
    );
    let has_header = |o: &Value, name: &str| {
        o["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["in"] == "header" && p["name"] == name)
    };
    assert!(has_header(
        &op("get", "/v1/sessions/{sid}/events"),
        "Last-Event-ID"
    ));
    assert!(has_header(
        &op("put", "/v1/sessions/{sid}/agents/{aid}"),
        "If-Match"
    ));
    assert!(
        op("put", "/v1/sessions/{sid}/agents/{aid}")["responses"]["201"]["headers"]["ETag"]
            .is_object()
    );
    assert!(
        op("get", "/v1/sessions/{sid}/agents/{aid}")["responses"]["200"]["headers"]["ETag"]
            .is_object()
    );
    assert!(responses["Unavailable"]["headers"]["Retry-After"].is_object());
    assert!(responses["TooManyRequests"]["headers"]["Retry-After"].is_object());
    let list = op("get", "/v1/sessions");
    let md = list["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "metadata")
        .expect("metadata filter")
        .clone();
    assert_eq!(
        (md["style"].as_str(), md["explode"].as_bool()),
        (Some("form"), Some(true))
    );
    assert!(
        op("get", "/metrics")["responses"]["200"]["content"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| k.starts_with("text/plain"))
    );
    for name in [
        "ErrorBody",
        "Session",
        "Message",
        "MessageInput",
        "MessagePatch",
        "Agent",
        "Metadata",
        "Feedback",
    ] {
        assert!(schemas.contains_key(name), "schema {name} missing");
    }
    // Opaque message content: any JSON value.
    for (schema, field) in [
        ("MessageInput", "message"),
        ("MessageInput", "redact_message"),
        ("Message", "message"),
        ("Message", "redact_message"),
    ] {
        let s = &schemas[schema]["properties"][field];
        assert!(
            s.is_object() && s.get("type").is_none() && s.get("$ref").is_none(),
            "{schema}.{field} must be any JSON: {s}"
        );
    }
    // Every link names an existing operation and only its parameters.
    let mut links = 0;
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            for r in op["responses"].as_object().unwrap().values() {
                for (name, link) in r["links"].as_object().into_iter().flatten() {
                    let target = link["operationId"]
                        .as_str()
                        .unwrap_or_else(|| panic!("link {name} without operationId"));
                    let (path, _) = doc["paths"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .find(|(_, i)| {
                            i.as_object()
                                .unwrap()
                                .values()
                                .any(|o| o["operationId"] == target)
                        })
                        .unwrap_or_else(|| panic!("link {name} names no operation"));
                    for p in link["parameters"].as_object().unwrap().keys() {
                        assert!(
                            path.contains(&format!("{{{p}}}")),
                            "link {name}: {path} has no parameter {p}"
                        );
                    }
                    links += 1;
                }
            }
        }
    }
    assert!(links > 10, "the create → read links are missing");
    assert_eq!(schemas["MessagePatch"]["minProperties"], 1);
    assert!(schemas["MessagePatch"].get("maxProperties").is_none());
    // An optional body may be empty, but JSON null is not accepted.
    let create = &op("post", "/v1/sessions")["requestBody"];
    assert_ne!(create["required"], true);
    assert_eq!(
        create["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/NewSession"
    );
}

/// `GET /openapi.json` serves exactly this document, without a key even when
/// keys are required.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_document_is_the_generated_one_and_public() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(Backend::Embedded, &dir).expect("embedded config");
    let key = gateway::auth::new_key();
    cfg.auth.mode = gateway::auth::AuthMode::Keys;
    cfg.auth.keys = vec![gateway::auth::KeyConfig {
        id: "test".into(),
        tenant: "team-a".into(),
        role: gateway::auth::Role::Admin,
        sha256: gateway::auth::hash_key(&key),
    }];
    let gw = TestGateway::start(cfg).await;

    let resp = gw
        .client
        .get(format!("{}/openapi.json", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(ct.starts_with("application/json"), "content type {ct}");
    let served: Value = resp.json().await.unwrap();
    assert_eq!(served, document());
    assert!(served["openapi"].as_str().unwrap().starts_with("3.1."));

    // Every operation documented as public answers without a key; the others need one.
    for path in gateway::openapi::PUBLIC_PATHS {
        let (s, _) = gw.get(path).await;
        assert_eq!(s, StatusCode::OK, "{path} is documented as public");
    }
    for (path, item) in served["paths"].as_object().unwrap() {
        let concrete = path.replace("{mid}", "0").replace(['{', '}'], "");
        for (method, op) in item.as_object().unwrap() {
            if op["security"] == serde_json::json!([{}]) {
                continue;
            }
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (s, _, v) = gw.call(m, &concrete, None).await;
            assert_eq!(
                s,
                StatusCode::UNAUTHORIZED,
                "{method} {path} is documented as needing a key"
            );
            common::assert_error(&v, "unauthorized");
        }
    }

    // A method the document does not list for a path: 405 with `Allow` and the uniform error body.
    let (s, headers, v) = gw.call(reqwest::Method::DELETE, "/healthz", None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        headers.get("allow").and_then(|v| v.to_str().ok()),
        Some("GET,HEAD")
    );
    common::assert_error(&v, "method_not_allowed");
    gw.stop().await;
}

/// Writes the document to `$OPENAPI_OUT` when set (for scripts and review).
#[test]
fn write_document_when_asked() {
    if let Ok(path) = std::env::var("OPENAPI_OUT") {
        std::fs::write(&path, gateway::openapi::json()).unwrap();
    }
}

/// The answers are the documented shapes: for each JSON endpoint, the
/// top-level fields served (and those of the first list item) are declared
/// by the 200/201 schema, and every required one is present. The handlers
/// serialize the same types the document is derived from, so a field added
/// to an answer without its schema (or the reverse) fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_have_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(Backend::Embedded, &dir).expect("embedded config");
    cfg.hooks = vec![common::hook(
        "allow",
        "fixture_allow",
        "before",
        &["metadata.update"],
        "",
    )];
    let gw = TestGateway::start(cfg).await;
    let doc = document();
    let schemas = doc["components"]["schemas"].as_object().unwrap().clone();
    let resolve = |s: &Value| -> Value {
        match s["$ref"].as_str() {
            Some(r) => schemas[r.trim_start_matches("#/components/schemas/")].clone(),
            None => s.clone(),
        }
    };
    // Checks `v` against `schema`, and its nested objects (the first item of
    // lists) against theirs.
    fn check(what: &str, schema: &Value, v: &Value, resolve: &dyn Fn(&Value) -> Value) {
        let schema = resolve(schema);
        let props = schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let free = schema["additionalProperties"] == serde_json::json!(true);
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("{what}: not an object: {v}"));
        for k in obj.keys() {
            assert!(
                free || props.contains_key(k),
                "{what}: field {k} is not documented"
            );
        }
        for r in schema["required"].as_array().into_iter().flatten() {
            assert!(
                obj.contains_key(r.as_str().unwrap()),
                "{what}: required {r} missing in {v}"
            );
        }
        for (k, p) in props {
            let Some(field) = v.get(&k) else { continue };
            let (p, field) = match (p.get("items"), field.as_array()) {
                (Some(items), Some(a)) => match a.first() {
                    Some(first) => (items.clone(), first),
                    None => continue,
                },
                _ => (p, field),
            };
            let p = resolve(&p);
            if field.is_object() && (p.get("properties").is_some()) {
                check(&format!("{what}.{k}"), &p, field, resolve);
            }
        }
    }

    gw.session("s").await;
    gw.put("/v1/sessions/s/agents/a", serde_json::json!({"state": {}}))
        .await;
    gw.post(
        "/v1/sessions/s/feedbacks",
        serde_json::json!({"rating": "up"}),
    )
    .await;
    let ops: [(&str, &str, Option<Value>); 14] = [
        ("get", "/v1/sessions", None),
        (
            "post",
            "/v1/sessions/batch-get",
            Some(serde_json::json!({"ids": ["s", "x"]})),
        ),
        ("get", "/v1/sessions/{sid}/agents", None),
        ("get", "/v1/sessions/{sid}/feedbacks", None),
        ("get", "/healthz", None),
        ("get", "/readyz", None),
        ("get", "/v1/admin/plugins", None),
        ("get", "/v1/admin/outbox", None),
        (
            "post",
            "/v1/sessions/{sid}/batch",
            Some(
                serde_json::json!({"ops": [{"op": "append_message", "agent_id": "a", "message": {"message": {"role": "user"}}}]}),
            ),
        ),
        // Answers built outside the typed envelopes: the created session
        // (shaped by get-hooks) and the message page (written as it is read).
        (
            "post",
            "/v1/sessions",
            Some(serde_json::json!({"session_id": "t"})),
        ),
        ("get", "/v1/sessions/{sid}", None),
        ("get", "/v1/sessions/{sid}/agents/{aid}", None),
        ("get", "/v1/sessions/{sid}/agents/{aid}/messages", None),
        (
            "get",
            "/v1/sessions/{sid}/agents/{aid}/messages/{mid}",
            None,
        ),
    ];
    for (method, path, body) in ops {
        let concrete = path
            .replace("{sid}", "s")
            .replace("{aid}", "a")
            .replace("{mid}", "0");
        let (status, v) = match body {
            Some(b) => gw.post(&concrete, b).await,
            None => gw.get(&concrete).await,
        };
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        let op = &doc["paths"][path][method];
        let schema = &op["responses"][status.as_str()]["content"]["application/json"]["schema"];
        assert!(
            schema.is_object(),
            "{method} {path}: no schema for {status}"
        );
        check(&format!("{method} {path}"), schema, &v, &resolve);
    }
}
