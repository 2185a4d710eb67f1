//! Session event stream (SSE): order, every change type, resume without gaps
//! or duplicates, many subscribers, other gateways' writes.

mod common;

use std::time::Duration;

use common::{Backend, TestGateway};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// One parsed SSE event.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// Reads SSE events from a streaming response.
struct Reader {
    resp: reqwest::Response,
    buf: String,
}

impl Reader {
    async fn open(gw: &TestGateway, sid: &str, last_event_id: Option<u64>) -> Self {
        let mut req = gw
            .client
            .get(format!("{}/v1/sessions/{sid}/events", gw.base));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Self {
            resp,
            buf: String::new(),
        }
    }

    /// The next event (heartbeat comments skipped), or None at end of stream or after `wait`.
    async fn next(&mut self, wait: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(pos) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..pos + 2).collect();
                let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a comment (heartbeat)
                }
                return Some(Sse {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap(),
                });
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    async fn take(&mut self, n: usize) -> Vec<Sse> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.next(Duration::from_secs(10)).await {
                Some(e) => out.push(e),
                None => panic!("stream ended after {} of {n} events: {out:?}", out.len()),
            }
        }
        out
    }
}

macro_rules! gw {
    ($b:expr) => {
        match TestGateway::new($b).await {
            Some(g) => g,
            None => return,
        }
    };
}

async fn every_change_type_in_order(b: Backend) {
    let gw = gw!(b);
    gw.session("e").await;
    let mut r = Reader::open(&gw, "e", None).await;
    gw.put("/v1/sessions/e/agents/bot", json!({"state": {}}))
        .await;
    gw.post(
        "/v1/sessions/e/agents/bot/messages",
        json!({"message": {"role": "user", "content": [{"text": "hi"}]}}),
    )
    .await;
    gw.patch(
        "/v1/sessions/e/agents/bot/messages/0",
        json!({"event_loop_metrics": {"latencyMs": 5}}),
    )
    .await;
    gw.patch("/v1/sessions/e/metadata", json!({"status": "active"}))
        .await;
    gw.delete("/v1/sessions/e/metadata?keys=status").await;
    gw.post("/v1/sessions/e/feedbacks", json!({"rating": "up"}))
        .await;
    gw.delete("/v1/sessions/e").await;
    let evs = r.take(7).await;
    let types: Vec<&str> = evs.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        types,
        [
            "agent.updated",
            "message.appended",
            "message.updated",
            "metadata.updated",
            "metadata.deleted",
            "feedback.added",
            "session.deleted"
        ]
    );
    // Ids: strictly increasing by one, after session.created (1).
    let ids: Vec<u64> = evs.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, (2..=8).collect::<Vec<_>>());
    assert_eq!(
        evs[1].data["payload"]["message"]["content"][0]["text"],
        "hi"
    );
    assert_eq!(evs[3].data["payload"]["changed"], json!(["status"]));
    assert_eq!(evs[5].data["payload"]["feedback"]["rating"], "up");
    // The stream ends after session.deleted.
    assert!(r.next(Duration::from_secs(5)).await.is_none());
    // And a deleted session has no stream.
    assert_eq!(
        gw.get("/v1/sessions/e/events").await.0,
        StatusCode::NOT_FOUND
    );
}

async fn resume_misses_and_repeats_nothing(b: Backend) {
    let gw = gw!(b);
    gw.session("r").await;
    gw.put("/v1/sessions/r/agents/bot", json!({})).await;
    // From the beginning of the log.
    let mut r = Reader::open(&gw, "r", Some(0)).await;
    let first = r.take(2).await;
    assert_eq!(first[0].event, "session.created");
    assert_eq!(first[1].event, "agent.updated");
    for i in 0..3 {
        gw.post(
            "/v1/sessions/r/agents/bot/messages",
            json!({"message": {"i": i}}),
        )
        .await;
    }
    let seen = r.take(1).await;
    let last = seen[0].id.unwrap();
    drop(r);
    // Changes while disconnected.
    for i in 3..10 {
        gw.post(
            "/v1/sessions/r/agents/bot/messages",
            json!({"message": {"i": i}}),
        )
        .await;
    }
    let mut r = Reader::open(&gw, "r", Some(last)).await;
    gw.patch("/v1/sessions/r/metadata", json!({"done": true}))
        .await;
    let rest = r.take(10).await;
    let ids: Vec<u64> = rest.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, (last + 1..=last + 10).collect::<Vec<_>>());
    let is: Vec<Value> = rest[..9]
        .iter()
        .map(|e| e.data["payload"]["message"]["i"].clone())
        .collect();
    assert_eq!(is, (1..10).map(|i| json!(i)).collect::<Vec<_>>());
    assert_eq!(rest[9].event, "metadata.updated");
    assert!(
        r.next(Duration::from_millis(300)).await.is_none(),
        "no duplicate or extra event"
    );
    // An id from the future answers with a reset.
    let mut r = Reader::open(&gw, "r", Some(10_000)).await;
    let reset = r.take(1).await;
    assert_eq!(reset[0].event, "reset");
    assert_eq!(reset[0].data["resume_after"], last + 10);
    // A bad id is 400.
    let resp = gw
        .client
        .get(format!("{}/v1/sessions/r/events", gw.base))
        .header("Last-Event-ID", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

async fn many_subscribers_share_one_feed(b: Backend) {
    let gw = gw!(b);
    gw.session("m").await;
    let mut readers = Vec::new();
    for _ in 0..200 {
        readers.push(Reader::open(&gw, "m", None).await);
    }
    assert_eq!(gw.state.hub.feeds(), 1);
    gw.patch("/v1/sessions/m/metadata", json!({"n": 1})).await;
    for r in &mut readers {
        let e = r.take(1).await;
        assert_eq!(e[0].event, "metadata.updated");
    }
    drop(readers);
    // The feed goes away with its last subscriber.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while gw.state.hub.feeds() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "feed not released");
        gw.get("/healthz").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn retention_expires_sessions_and_events(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cfg) = common::config(b, &dir) else {
        return;
    };
    cfg.retention
        .sessions
        .insert("short".into(), "400ms".into());
    cfg.retention.events = "300ms".into();
    cfg.retention.sweep_interval_ms = 100;
    let gw = TestGateway::start(cfg).await;
    gw.post(
        "/v1/sessions",
        json!({"session_id": "brief", "session_type": "short"}),
    )
    .await;
    gw.post("/v1/sessions", json!({"session_id": "kept"})).await;
    gw.put("/v1/sessions/brief/agents/bot", json!({})).await;
    assert_eq!(gw.get("/v1/sessions/brief").await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Gone from every endpoint as soon as it expires, swept or not.
    for path in [
        "/v1/sessions/brief",
        "/v1/sessions/brief/metadata",
        "/v1/sessions/brief/agents/bot",
        "/v1/sessions/brief/agents",
    ] {
        assert_eq!(gw.get(path).await.0, StatusCode::NOT_FOUND, "{path}");
    }
    let (_, v) = gw.get("/v1/sessions").await;
    let ids: Vec<&str> = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["kept"]);
    assert_eq!(
        gw.post(
            "/v1/sessions/brief/agents/bot/messages",
            json!({"message": {}})
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    // The sweeper removes it for good and records why; old events leave the window.
    let t = gateway::model::Tenant::default_tenant();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let evs = gw
            .state
            .store
            .events_after(&t, "brief", 0, 10)
            .await
            .unwrap();
        if evs.len() == 1 && evs[0].kind == gateway::model::EventType::SessionDeleted {
            assert_eq!(evs[0].payload["reason"], "expired");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not swept: {evs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The id is free again and its events continue after the old ones.
    let (s, _) = gw
        .post("/v1/sessions", json!({"session_id": "brief"}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(gw.state.store.latest_event_seq(&t, "brief").await.unwrap() > 3);
    // An SSE resume from before the window gets a reset.
    let mut r = Reader::open(&gw, "kept", Some(0)).await;
    let e = r.take(1).await;
    assert_eq!(e[0].event, "reset", "{e:?}");
}

/// A redaction leaves no copy of the original text in the event log; streams
/// show messages as they are stored now.
async fn redaction_leaves_no_copy_in_the_log(b: Backend) {
    let gw = gw!(b);
    gw.session("red").await;
    gw.put("/v1/sessions/red/agents/bot", json!({})).await;
    gw.post(
        "/v1/sessions/red/agents/bot/messages",
        json!({"message": {"role": "user", "content": [{"text": "my card is 4111"}]}}),
    )
    .await;
    gw.put("/v1/sessions/red/agents/bot/messages/0", json!({"message": {"role": "user", "content": [{"text": "[redacted]"}]}, "redact_message": {"role": "user", "content": [{"text": "[redacted]"}]}})).await;
    let t = gateway::model::Tenant::default_tenant();
    let log = gw
        .state
        .store
        .events_after(&t, "red", 0, 100)
        .await
        .unwrap();
    assert!(
        !serde_json::to_string(&log).unwrap().contains("4111"),
        "{log:?}"
    );
    let mut r = Reader::open(&gw, "red", Some(0)).await;
    let evs = r.take(4).await;
    assert_eq!(evs[2].event, "message.appended");
    assert_eq!(
        evs[2].data["payload"]["message"]["content"][0]["text"],
        "[redacted]"
    );
    assert_eq!(evs[3].event, "message.updated");
}

on_both_stores!(
    redaction_leaves_no_copy_in_the_log,
    every_change_type_in_order,
    resume_misses_and_repeats_nothing,
    many_subscribers_share_one_feed,
    retention_expires_sessions_and_events
);

/// Two gateways share one MongoDB: a subscriber on one sees writes made through the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_subscriber_sees_other_gateways_writes() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cfg) = common::config(Backend::Mongo, &dir) else {
        return;
    };
    cfg.server.sse_poll_ms = 100;
    let a = TestGateway::start(cfg.clone()).await;
    let b = TestGateway::start(cfg).await;
    a.session("x").await;
    let mut r = Reader::open(&a, "x", None).await;
    b.patch("/v1/sessions/x/metadata", json!({"from": "b"}))
        .await;
    let e = r.take(1).await;
    assert_eq!(e[0].event, "metadata.updated");
    assert_eq!(e[0].data["payload"]["values"]["from"], "b");
}
