//! What the Python client (issue #13) relies on: `POST /v1/sessions` takes
//! Strands' `Session.to_dict()`, and `POST /v1/sessions/{sid}/batch` writes
//! several things of one session with the documented atomicity rules.

mod common;

use common::{Backend, TestGateway, assert_error};
use reqwest::StatusCode;
use serde_json::{Value, json};

macro_rules! gw {
    ($b:expr) => {
        match TestGateway::new($b).await {
            Some(g) => g,
            None => return,
        }
    };
}

async fn session_to_dict_is_accepted(b: Backend) {
    let gw = gw!(b);
    // Exactly what strands.types.session.Session(session_id="sd-1", ...).to_dict() gives.
    let to_dict = json!({
        "session_id": "sd-1",
        "session_type": "AGENT",
        "created_at": "2026-12-01T03:25:07.123456+00:00",
        "updated_at": "2026-12-01T03:25:07.123456+00:00",
    });
    let (s, v) = gw.post("/v1/sessions", to_dict).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["session_id"], "sd-1");
    // The gateway's own times, not the client's.
    let created = v["created_at"].as_str().unwrap();
    assert!(
        created.ends_with('Z') && !created.starts_with("2026-12-01T03:25:07.123"),
        "{v}"
    );
    // Other unknown fields are still refused, and nothing is written.
    let (s, v) = gw
        .post(
            "/v1/sessions",
            json!({"session_id": "sd-2", "sesion_type": "AGENT"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_json");
    let (s, _) = gw.get("/v1/sessions/sd-2").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The timestamps must still be JSON values of the body (any type is ignored).
    let (s, v) = gw
        .post(
            "/v1/sessions",
            json!({"session_id": "sd-3", "created_at": 5}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

fn message(i: u64) -> Value {
    json!({"message_id": i, "message": {"role": "user", "content": [{"text": format!("m{i}")}]}})
}

async fn batch_writes_in_order(b: Backend) {
    let gw = gw!(b);
    gw.post("/v1/sessions", json!({"session_id": "b-1"})).await;
    let (s, v) = gw
        .put("/v1/sessions/b-1/agents/a", json!({"state": {"turn": 0}}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let version = v["version"].as_u64().unwrap();

    // The end of a Strands turn: the assistant message, then the agent, guarded by its version.
    let (s, v) = gw
        .post(
            "/v1/sessions/b-1/batch",
            json!({"ops": [
                {"op": "append_message", "agent_id": "a", "message": message(0)},
                {"op": "put_agent", "agent_id": "a", "agent": {"state": {"turn": 1}}, "if_match": version},
                {"op": "patch_message", "agent_id": "a", "message_id": 0, "patch": {"event_loop_metrics": {"latencyMs": 5}}},
            ]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["status"], 201);
    assert_eq!(results[0]["body"]["message_id"], 0);
    assert_eq!(results[1]["status"], 200);
    assert_eq!(results[1]["body"]["version"], version + 1);
    assert_eq!(results[2]["body"]["event_loop_metrics"]["latencyMs"], 5);
    let (_, agent) = gw.get("/v1/sessions/b-1/agents/a").await;
    assert_eq!(agent["state"]["turn"], 1);
    assert_eq!(agent["message_count"], 1);

    // An identical retry of an append answers 200, as the endpoint does.
    let append_1 =
        json!({"ops": [{"op": "append_message", "agent_id": "a", "message": message(1)}]});
    let (s, v) = gw.post("/v1/sessions/b-1/batch", append_1.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["results"][0]["status"], 201);
    let (s, v) = gw.post("/v1/sessions/b-1/batch", append_1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["results"][0]["status"], 200);
    let (_, list) = gw.get("/v1/sessions/b-1/agents/a/messages").await;
    assert_eq!(list["total"], 2);
}

async fn batch_malformed_writes_nothing(b: Backend) {
    let gw = gw!(b);
    gw.post("/v1/sessions", json!({"session_id": "b-2"})).await;
    gw.put("/v1/sessions/b-2/agents/a", json!({"state": {}}))
        .await;
    let cases = [
        // The second op lacks its message: checked before anything runs.
        (
            json!({"ops": [
                {"op": "append_message", "agent_id": "a", "message": message(0)},
                {"op": "append_message", "agent_id": "a"},
            ]}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({"ops": [
                {"op": "append_message", "agent_id": "a", "message": message(0)},
                {"op": "put_agent", "agent_id": "a", "agent": [1, 2]},
            ]}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({"ops": [
                {"op": "append_message", "agent_id": "a", "message": message(0)},
                {"op": "put_agent", "agent_id": "a", "agent": {"agent_id": "b"}},
            ]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "agent_id_mismatch",
        ),
        (
            json!({"ops": [
                {"op": "append_message", "agent_id": "a", "message": message(0)},
                {"op": "patch_message", "agent_id": "a", "message_id": 0, "patch": {}},
            ]}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({"ops": [
                {"op": "append_message", "agent_id": "a b", "message": message(0)},
            ]}),
            StatusCode::BAD_REQUEST,
            "invalid_agent_id",
        ),
        (
            json!({"ops": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_ops",
        ),
        (
            json!({"ops": (0..17).map(|_| json!({"op": "append_message", "agent_id": "a", "message": message(0)})).collect::<Vec<_>>()}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_ops",
        ),
        (
            json!({"ops": [{"op": "delete_everything", "agent_id": "a"}]}),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
    ];
    for (body, status, code) in cases {
        let (s, v) = gw.post("/v1/sessions/b-2/batch", body.clone()).await;
        assert_eq!(s, status, "{body} -> {v}");
        assert_error(&v, code);
        let (_, list) = gw.get("/v1/sessions/b-2/agents/a/messages").await;
        assert_eq!(list["total"], 0, "{body} wrote something");
    }
}

async fn batch_stops_at_the_first_failure(b: Backend) {
    let gw = gw!(b);
    gw.post("/v1/sessions", json!({"session_id": "b-3"})).await;
    gw.put("/v1/sessions/b-3/agents/a", json!({"state": {"v": 0}}))
        .await;
    // Op 1 is past the next id: ops 0 stays written, op 2 does not run.
    let (s, v) = gw
        .post(
            "/v1/sessions/b-3/batch",
            json!({"ops": [
                {"op": "append_message", "agent_id": "a", "message": message(0)},
                {"op": "append_message", "agent_id": "a", "message": message(5)},
                {"op": "put_agent", "agent_id": "a", "agent": {"state": {"v": 1}}},
            ]}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_error(&v, "message_id_gap");
    assert_eq!(v["failed_op"], 1);
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    assert_eq!(v["results"][0]["body"]["message_id"], 0);
    let (_, list) = gw.get("/v1/sessions/b-3/agents/a/messages").await;
    assert_eq!(list["total"], 1);
    let (_, agent) = gw.get("/v1/sessions/b-3/agents/a").await;
    assert_eq!(agent["state"]["v"], 0, "an op after the failed one ran");

    // A stale if_match fails with 412 like If-Match does.
    let (s, v) = gw
        .post(
            "/v1/sessions/b-3/batch",
            json!({"ops": [{"op": "put_agent", "agent_id": "a", "agent": {"state": {}}, "if_match": 99}]}),
        )
        .await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED, "{v}");
    assert_error(&v, "version_mismatch");
    assert_eq!(v["failed_op"], 0);

    // A missing session.
    let (s, v) = gw
        .post(
            "/v1/sessions/nope/batch",
            json!({"ops": [{"op": "append_message", "agent_id": "a", "message": message(0)}]}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_error(&v, "not_found");
}

on_both_stores!(
    session_to_dict_is_accepted,
    batch_writes_in_order,
    batch_malformed_writes_nothing,
    batch_stops_at_the_first_failure,
);
