//! HTTP API integration tests: every row of the v1 table, on both stores.

mod common;

use common::{Backend, TestGateway, assert_error};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

macro_rules! gw {
    ($b:expr) => {
        match TestGateway::new($b).await {
            Some(g) => g,
            None => return,
        }
    };
}

async fn sessions_crud(b: Backend) {
    let gw = gw!(b);
    // Generated id, default type.
    let (s, v) = gw.post("/v1/sessions", json!({})).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v["session_type"], "AGENT");
    assert_eq!(v["session_id"].as_str().unwrap().len(), 36);
    // Empty body also works (curl -X POST).
    let (s, _) = gw.raw(Method::POST, "/v1/sessions", Vec::new()).await;
    assert_eq!(s, StatusCode::CREATED);
    // Explicit id, type and metadata.
    let (s, v) = gw
        .post(
            "/v1/sessions",
            json!({"session_id": "s-1", "session_type": "chat", "metadata": {"status": "new"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["session_id"], "s-1");
    assert!(v["created_at"].as_str().unwrap().ends_with('Z'));
    // 409 on a taken id.
    let (s, v) = gw.post("/v1/sessions", json!({"session_id": "s-1"})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_error(&v, "session_exists");
    // Read.
    let (s, v) = gw.get("/v1/sessions/s-1").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["metadata"], json!({"status": "new"}));
    assert_eq!(v["agents"], json!([]));
    // 404.
    let (s, v) = gw.get("/v1/sessions/nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "not_found");
    // Delete, then gone.
    let (s, v) = gw.delete("/v1/sessions/s-1").await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(gw.get("/v1/sessions/s-1").await.0, StatusCode::NOT_FOUND);
    assert_eq!(gw.delete("/v1/sessions/s-1").await.0, StatusCode::NOT_FOUND);
    // The id can be reused.
    assert_eq!(
        gw.post("/v1/sessions", json!({"session_id": "s-1"}))
            .await
            .0,
        StatusCode::CREATED
    );
}

async fn bad_session_input(b: Backend) {
    let gw = gw!(b);
    let (s, v) = gw
        .raw(Method::POST, "/v1/sessions", b"{not json".to_vec())
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_json");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("line 1"),
        "{v}"
    );
    // Arrays are not objects, even where serde would read them as positional fields.
    for body in [json!(["arr1", "T"]), json!([]), json!("x")] {
        let (s, v) = gw.post("/v1/sessions", body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert_error(&v, "invalid_body");
    }
    assert_eq!(
        gw.post("/v1/sessions/batch-get", json!([["arr1"]])).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(gw.get("/v1/sessions/arr1").await.0, StatusCode::NOT_FOUND);
    let (s, v) = gw.post("/v1/sessions", json!({"session_id": "a/b"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_session_id");
    let (s, v) = gw
        .post("/v1/sessions", json!({"session_id": "x", "bogus": 1}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("bogus"),
        "{v}"
    );
    let (s, v) = gw
        .post(
            "/v1/sessions",
            json!({"session_id": "x", "metadata": {"$where": 1}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_metadata_key");
    let (s, v) = gw
        .post(
            "/v1/sessions",
            json!({"session_id": "x", "session_type": "has space"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&v, "invalid_session_type");
    // Nothing was written by any of those.
    assert_eq!(gw.get("/v1/sessions/x").await.0, StatusCode::NOT_FOUND);
    // Unknown route: uniform 404.
    let (s, v) = gw.get("/v1/nothing").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "route_not_found");
    // Body over the limit: 413. Last: the server closes the connection without
    // reading the rest of the body, so a pooled connection must not be reused after it.
    let big = format!(
        "{{\"session_id\":\"big\",\"metadata\":{{\"x\":\"{}\"}}}}",
        "a".repeat(2 * 1024 * 1024)
    );
    let (s, v) = gw.raw(Method::POST, "/v1/sessions", big.into_bytes()).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error(&v, "payload_too_large");
}

async fn list_and_batch(b: Backend) {
    let gw = gw!(b);
    for i in 0..7 {
        let ty = if i % 2 == 0 { "chat" } else { "AGENT" };
        let (s, _) = gw.post("/v1/sessions", json!({"session_id": format!("l-{i}"), "session_type": ty, "metadata": {"n": i, "tier": if i < 3 { "gold" } else { "free" }}})).await;
        assert_eq!(s, StatusCode::CREATED);
    }
    // Pages of 3 with cursors cover everything once, in id order.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/sessions?limit=3&cursor={c}"),
            None => "/v1/sessions?limit=3".into(),
        };
        let (s, v) = gw.get(&path).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        for sess in v["sessions"].as_array().unwrap() {
            seen.push(sess["session_id"].as_str().unwrap().to_owned());
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, (0..7).map(|i| format!("l-{i}")).collect::<Vec<_>>());
    let ids = |v: &Value| {
        v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["session_id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let (_, v) = gw.get("/v1/sessions?session_type=chat").await;
    assert_eq!(ids(&v), ["l-0", "l-2", "l-4", "l-6"]);
    let (_, v) = gw.get("/v1/sessions?metadata.tier=gold").await;
    assert_eq!(ids(&v), ["l-0", "l-1", "l-2"]);
    let (_, v) = gw.get("/v1/sessions?metadata.n=4&session_type=chat").await;
    assert_eq!(ids(&v), ["l-4"]);
    // updated_after: only sessions touched after the mark.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (_, v) = gw.get("/v1/sessions/l-6").await;
    let mark = v["updated_at"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    gw.patch("/v1/sessions/l-5/metadata", json!({"touched": true}))
        .await;
    let (_, v) = gw.get(&format!("/v1/sessions?updated_after={mark}")).await;
    assert_eq!(ids(&v), ["l-5"]);
    // Bad queries are 400 (limit=0 and limits above the page size are not:
    // see tests/security_input.rs).
    for q in [
        "limit=abc",
        "updated_after=yesterday",
        "bogus=1",
        "metadata.$x=1",
    ] {
        let (s, v) = gw.get(&format!("/v1/sessions?{q}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
        assert_error(&v, "invalid_query");
    }
    // Batch get: one call, missing ids reported.
    let (s, v) = gw
        .post(
            "/v1/sessions/batch-get",
            json!({"ids": ["l-1", "zz", "l-3"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut got = ids(&v);
    got.sort();
    assert_eq!(got, ["l-1", "l-3"]);
    assert_eq!(v["missing"], json!(["zz"]));
    // At most `server.max_batch_ids` (default 100) ids per call.
    let many = |n: usize| json!({"ids": (0..n).map(|i| format!("l-{i}")).collect::<Vec<_>>()});
    let (s, v) = gw.post("/v1/sessions/batch-get", many(100)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(ids(&v).len(), 7, "{v}");
    assert_eq!(v["missing"].as_array().unwrap().len(), 93, "{v}");
    let (s, v) = gw.post("/v1/sessions/batch-get", many(101)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_error(&v, "too_many_ids");
}

async fn agents(b: Backend) {
    let gw = gw!(b);
    gw.session("a").await;
    let agent = json!({"agent_id": "bot", "state": {"k": 1}, "conversation_manager_state": {"__name__": "SlidingWindow"}, "internal_state": {}, "extra": [1, 2]});
    let (s, h, v) = gw
        .call(
            Method::PUT,
            "/v1/sessions/a/agents/bot",
            Some(agent.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["version"], 1);
    assert_eq!(h["etag"], "\"1\"");
    assert_eq!(v["extra"], json!([1, 2]));
    // Update without If-Match: 200, version 2.
    let (s, v) = gw
        .put("/v1/sessions/a/agents/bot", json!({"state": {"k": 2}}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["version"], 2);
    assert_eq!(v["state"], json!({"k": 2}));
    // Stale If-Match: 412, nothing written.
    let resp = gw
        .client
        .put(format!("{}/v1/sessions/a/agents/bot", gw.base))
        .header("If-Match", "\"1\"")
        .json(&json!({"state": {"k": 3}}))
        .send()
        .await
        .unwrap();
    let (s, _, v) = TestGateway::parts(resp).await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED);
    assert_error(&v, "version_mismatch");
    let (s, h, v) = gw
        .call(Method::GET, "/v1/sessions/a/agents/bot", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["state"], json!({"k": 2}));
    assert_eq!(h["etag"], "\"2\"");
    // Current If-Match: 200.
    let resp = gw
        .client
        .put(format!("{}/v1/sessions/a/agents/bot", gw.base))
        .header("If-Match", "\"2\"")
        .json(&json!({"state": {"k": 3}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // If-None-Match: * creates only.
    let resp = gw
        .client
        .put(format!("{}/v1/sessions/a/agents/bot", gw.base))
        .header("If-None-Match", "*")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
    let resp = gw
        .client
        .put(format!("{}/v1/sessions/a/agents/fresh", gw.base))
        .header("If-None-Match", "*")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    // Mismatched agent_id in the body.
    let (s, v) = gw
        .put("/v1/sessions/a/agents/bot", json!({"agent_id": "other"}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&v, "agent_id_mismatch");
    // Missing session / agent.
    let (s, _) = gw.put("/v1/sessions/none/agents/bot", json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        gw.get("/v1/sessions/a/agents/ghost").await.0,
        StatusCode::NOT_FOUND
    );
    // List.
    gw.put("/v1/sessions/a/agents/alpha", json!({"state": {}}))
        .await;
    let (s, v) = gw.get("/v1/sessions/a/agents").await;
    assert_eq!(s, StatusCode::OK);
    let ids: Vec<&str> = v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alpha", "bot", "fresh"]);
    assert_eq!(
        gw.get("/v1/sessions/a").await.1["agents"],
        json!(["alpha", "bot", "fresh"])
    );
    assert_eq!(
        gw.get("/v1/sessions/none/agents").await.0,
        StatusCode::NOT_FOUND
    );
}

async fn messages(b: Backend) {
    let gw = gw!(b);
    gw.session("m").await;
    gw.put("/v1/sessions/m/agents/bot", json!({"state": {}}))
        .await;
    let base = "/v1/sessions/m/agents/bot/messages";
    // Assigned ids.
    let (s, v) = gw
        .post(
            base,
            json!({"message": {"role": "user", "content": [{"text": "hi"}]}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["message_id"], 0);
    // Explicit next id (Strands), with metrics.
    let (s, v) = gw.post(base, json!({"message_id": 1, "message": {"role": "assistant", "content": [{"text": "hello"}]}, "event_loop_metrics": {"latencyMs": 12, "inputTokens": 3}})).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v["event_loop_metrics"]["latencyMs"], 12);
    // Idempotent retry: 200, same message.
    let (s, v) = gw.post(base, json!({"message_id": 1, "message": {"role": "assistant", "content": [{"text": "hello"}]}, "event_loop_metrics": {"latencyMs": 12, "inputTokens": 3}})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["message_id"], 1);
    // Same id, different content: 409.
    let (s, v) = gw
        .post(
            base,
            json!({"message_id": 1, "message": {"role": "assistant", "content": []}}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_error(&v, "message_conflict");
    // A gap: 409.
    let (s, v) = gw.post(base, json!({"message_id": 7, "message": {}})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_error(&v, "message_id_gap");
    // Byte-for-byte round trip of the message JSON.
    let raw = r#"{"message": {"role":"user", "content":[{"text":"caf\u00e9 ☕","n":1.0,"big":12345678901234567890}],"z":null}}"#;
    let (s, v) = gw.raw(Method::POST, base, raw.as_bytes().to_vec()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let resp = gw
        .client
        .get(format!("{}{base}/2", gw.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(resp.contains(r#""message":{"role":"user", "content":[{"text":"caf\u00e9 ☕","n":1.0,"big":12345678901234567890}],"z":null}"#), "{resp}");
    for i in 3..10 {
        gw.post(base, json!({"message": {"i": i}})).await;
    }
    // Paging (Strands list_messages) and latest N.
    let (s, v) = gw.get(&format!("{base}?limit=3&offset=2")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["total"], 10);
    let ids = |v: &Value| {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["message_id"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&v), [2, 3, 4]);
    assert_eq!(
        ids(&gw.get(&format!("{base}?latest=4")).await.1),
        [6, 7, 8, 9]
    );
    assert_eq!(ids(&gw.get(&format!("{base}?offset=8")).await.1), [8, 9]);
    assert_eq!(
        ids(&gw.get(&format!("{base}?offset=50")).await.1),
        Vec::<u64>::new()
    );
    let (s, v) = gw.get(&format!("{base}?latest=2&limit=1")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_query");
    // Read one; 404s.
    assert_eq!(
        gw.get(&format!("{base}/3")).await.1["message"],
        json!({"i": 3})
    );
    assert_eq!(gw.get(&format!("{base}/99")).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        gw.get(&format!("{base}/abc")).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        gw.post(
            "/v1/sessions/m/agents/ghost/messages",
            json!({"message": {}})
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        gw.post(
            "/v1/sessions/ghost/agents/bot/messages",
            json!({"message": {}})
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    // Redaction through PUT keeps metrics; PATCH sets metrics only.
    let (s, v) = gw.put(&format!("{base}/1"), json!({"message_id": 1, "message": {"role": "assistant", "content": [{"text": "[redacted]"}]}, "redact_message": {"role": "assistant", "content": [{"text": "[redacted]"}]}})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["event_loop_metrics"]["latencyMs"], 12);
    assert_eq!(v["redact_message"]["content"][0]["text"], "[redacted]");
    let (s, v) = gw
        .patch(
            &format!("{base}/0"),
            json!({"event_loop_metrics": {"totalTokens": 9}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["event_loop_metrics"], json!({"totalTokens": 9}));
    assert_eq!(v["message"]["content"][0]["text"], "hi");
    let (s, _) = gw.patch(&format!("{base}/0"), json!({})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        gw.put(&format!("{base}/42"), json!({"message": {}}))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    // Message counts per agent.
    assert_eq!(
        gw.get("/v1/sessions/m/agents/bot").await.1["message_count"],
        10
    );
}

async fn concurrent_appends(b: Backend) {
    let gw = gw!(b);
    gw.session("c").await;
    gw.put("/v1/sessions/c/agents/bot", json!({})).await;
    let mut tasks = Vec::new();
    for w in 0..4 {
        let client = gw.client.clone();
        let url = format!("{}/v1/sessions/c/agents/bot/messages", gw.base);
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..25 {
                let r = client
                    .post(&url)
                    .json(&json!({"message": {"w": w, "i": i}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::CREATED);
                ids.push(
                    r.json::<Value>().await.unwrap()["message_id"]
                        .as_u64()
                        .unwrap(),
                );
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (0..100).collect::<Vec<u64>>());
    assert_eq!(
        gw.get("/v1/sessions/c/agents/bot/messages?latest=1")
            .await
            .1["total"],
        100
    );
}

async fn metadata(b: Backend) {
    let gw = gw!(b);
    gw.post(
        "/v1/sessions",
        json!({"session_id": "md", "metadata": {"keep": 1}}),
    )
    .await;
    let (s, v) = gw
        .patch(
            "/v1/sessions/md/metadata",
            json!({"status": "active", "profile.tier": "gold"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"keep": 1, "status": "active", "profile": {"tier": "gold"}})
    );
    let (s, v) = gw
        .patch("/v1/sessions/md/metadata", json!({"profile.region": "eu"}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["profile"], json!({"tier": "gold", "region": "eu"}));
    assert_eq!(gw.get("/v1/sessions/md/metadata").await.1, v);
    // Bad keys: 400 and nothing changes.
    for bad in [
        json!({"$set": 1}),
        json!({"a..b": 1}),
        json!({"": 1}),
        json!({"a": 1, "a.b": 2}),
        json!({"x.$y": 1}),
    ] {
        let (s, e) = gw.patch("/v1/sessions/md/metadata", bad.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {e}");
        assert_error(&e, "invalid_metadata_key");
    }
    let (s, e) = gw
        .patch("/v1/sessions/md/metadata", json!({"status.sub": 1}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_error(&e, "metadata_path_conflict");
    assert_eq!(gw.get("/v1/sessions/md/metadata").await.1, v);
    // Delete keys.
    let (s, v) = gw
        .delete("/v1/sessions/md/metadata?keys=status,profile.tier,missing")
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"keep": 1, "profile": {"region": "eu"}}));
    let (s, e) = gw.delete("/v1/sessions/md/metadata").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&e, "invalid_query");
    assert_eq!(
        gw.delete("/v1/sessions/zz/metadata?keys=a").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        gw.patch("/v1/sessions/zz/metadata", json!({"a": 1}))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        gw.get("/v1/sessions/zz/metadata").await.0,
        StatusCode::NOT_FOUND
    );
}

async fn feedbacks(b: Backend) {
    let gw = gw!(b);
    gw.session("f").await;
    let (s, v) = gw
        .post(
            "/v1/sessions/f/feedbacks",
            json!({"rating": "up", "comment": "great", "source": "ui"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["source"], "ui");
    assert!(v["created_at"].is_string());
    gw.post("/v1/sessions/f/feedbacks", json!({"rating": null}))
        .await;
    gw.post("/v1/sessions/f/feedbacks", json!({"rating": "down"}))
        .await;
    let (s, v) = gw
        .post("/v1/sessions/f/feedbacks", json!({"rating": "meh"}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&v, "invalid_rating");
    let (s, v) = gw.get("/v1/sessions/f/feedbacks").await;
    assert_eq!(s, StatusCode::OK);
    let ratings: Vec<&Value> = v["feedbacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["rating"])
        .collect();
    assert_eq!(ratings, [&json!("up"), &Value::Null, &json!("down")]);
    assert_eq!(
        gw.post("/v1/sessions/none/feedbacks", json!({"rating": "up"}))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        gw.get("/v1/sessions/none/feedbacks").await.0,
        StatusCode::NOT_FOUND
    );
}

async fn health(b: Backend) {
    let gw = gw!(b);
    assert_eq!(
        gw.get("/healthz").await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let (s, v) = gw.get("/readyz").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "ready");
}

async fn restart_persists(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(cfg) = common::config(b, &dir) else {
        return;
    };
    let gw = TestGateway::start(cfg.clone()).await;
    gw.post(
        "/v1/sessions",
        json!({"session_id": "p", "metadata": {"a": 1}}),
    )
    .await;
    gw.put("/v1/sessions/p/agents/bot", json!({"state": {"x": 1}}))
        .await;
    for i in 0..5 {
        gw.post(
            "/v1/sessions/p/agents/bot/messages",
            json!({"message": {"i": i}}),
        )
        .await;
    }
    gw.post("/v1/sessions/p/feedbacks", json!({"rating": "up"}))
        .await;
    gw.stop().await;
    let gw = TestGateway::start(cfg).await;
    let (s, v) = gw.get("/v1/sessions/p").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["metadata"], json!({"a": 1}));
    assert_eq!(
        gw.get("/v1/sessions/p/agents/bot/messages").await.1["total"],
        5
    );
    assert_eq!(
        gw.get("/v1/sessions/p/agents/bot").await.1["state"],
        json!({"x": 1})
    );
    assert_eq!(
        gw.get("/v1/sessions/p/feedbacks").await.1["feedbacks"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    gw.stop().await;
}

on_both_stores!(
    sessions_crud,
    bad_session_input,
    list_and_batch,
    agents,
    messages,
    concurrent_appends,
    metadata,
    feedbacks,
    health,
    restart_persists
);
