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
    /// Heartbeat comments seen so far.
    heartbeats: usize,
}

/// What [`Reader::next`] saw.
#[derive(Debug)]
enum Next {
    Event(Sse),
    /// The server ended the stream.
    End,
    /// Nothing arrived within the wait.
    Quiet,
}

impl Reader {
    async fn open(gw: &TestGateway, sid: &str, last_event_id: Option<u64>) -> Self {
        Self::open_query(gw, sid, "", last_event_id).await
    }

    /// Opens `/v1/sessions/{sid}/events{query}` (query: "" or "?after=N").
    async fn open_query(
        gw: &TestGateway,
        sid: &str,
        query: &str,
        last_event_id: Option<u64>,
    ) -> Self {
        let mut req = gw
            .client
            .get(format!("{}/v1/sessions/{sid}/events{query}", gw.base));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Self {
            resp,
            buf: String::new(),
            heartbeats: 0,
        }
    }

    /// The next event (heartbeat comments counted and skipped), the end of
    /// the stream, or `Quiet` after `wait`.
    async fn next_or_end(&mut self, wait: Duration) -> Next {
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
                    } else if line.starts_with(':') {
                        self.heartbeats += 1;
                    }
                }
                if data.is_empty() {
                    continue; // a comment (heartbeat)
                }
                return Next::Event(Sse {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap(),
                });
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(Ok(None)) => return Next::End,
                Ok(Err(e)) => panic!("stream failed: {e}"),
                Err(_) => return Next::Quiet,
            }
        }
    }

    async fn take(&mut self, n: usize) -> Vec<Sse> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.next_or_end(Duration::from_secs(20)).await {
                Next::Event(e) => out.push(e),
                other => panic!("{other:?} after {} of {n} events: {out:?}", out.len()),
            }
        }
        out
    }

    /// Asserts that the server ends the stream (within a generous deadline)
    /// without sending another event.
    async fn assert_ends(&mut self) {
        match self.next_or_end(Duration::from_secs(20)).await {
            Next::End => {}
            other => panic!("expected the end of the stream, got {other:?}"),
        }
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
    // The stream ends after session.deleted (the server closes it: a read
    // timeout would not do).
    r.assert_ends().await;
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
    // No duplicate or extra event: the next one is the next change.
    gw.patch("/v1/sessions/r/metadata", json!({"marker": 1}))
        .await;
    let marker = r.take(1).await;
    assert_eq!(
        (marker[0].id, marker[0].data["payload"]["changed"].clone()),
        (Some(last + 11), json!(["marker"])),
        "{marker:?}"
    );
    // An id from the future answers with a reset.
    let mut r = Reader::open(&gw, "r", Some(10_000)).await;
    let reset = r.take(1).await;
    assert_eq!(reset[0].event, "reset");
    assert_eq!(reset[0].data["resume_after"], last + 11);
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

/// More changes at once than a feed's broadcast ring holds
/// (`stream::FEED_CAPACITY`): a subscriber that falls behind re-reads from the
/// log, so it still gets every event once, in order.
async fn a_burst_larger_than_the_feed_ring_arrives_whole(b: Backend) {
    let gw = gw!(b);
    gw.session("burst").await;
    gw.put("/v1/sessions/burst/agents/bot", json!({})).await;
    let mut r = Reader::open(&gw, "burst", None).await;
    let n = gateway::stream::FEED_CAPACITY * 3;
    let writes = (0..4).map(|w| {
        let gw = &gw;
        async move {
            for i in (w..n).step_by(4) {
                gw.post(
                    "/v1/sessions/burst/agents/bot/messages",
                    json!({"message": {"i": i}}),
                )
                .await;
            }
        }
    });
    futures::future::join_all(writes).await;
    let got = r.take(n).await;
    let ids: Vec<u64> = got.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, (3..3 + n as u64).collect::<Vec<_>>());
    // Nothing repeated or extra after the burst.
    gw.patch("/v1/sessions/burst/metadata", json!({"done": true}))
        .await;
    assert_eq!(r.take(1).await[0].id, Some(3 + n as u64));
}

/// Polls `GET path` until it answers `status` (generous deadline).
async fn wait_status(gw: &TestGateway, path: &str, status: StatusCode) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = gw.get(path).await;
        if s == status {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET {path} still answers {s} {v}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A session past its lifetime disappears from every endpoint at once; the
/// sweeper then deletes it and its children, telling open streams
/// (`session.deleted`, `reason: expired`); a re-created session continues
/// its event ids.
async fn expired_sessions_disappear_and_streams_are_told(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cfg) = common::config(b, &dir) else {
        return;
    };
    // A lifetime long enough that the checks made while it lives cannot race it.
    cfg.retention.sessions.insert("short".into(), "3s".into());
    cfg.retention.sweep_interval_ms = 100;
    let gw = TestGateway::start(cfg).await;
    let (s, v) = gw
        .post(
            "/v1/sessions",
            json!({"session_id": "brief", "session_type": "short"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    gw.session("kept").await;
    let (s, v) = gw.put("/v1/sessions/brief/agents/bot", json!({})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = gw
        .post(
            "/v1/sessions/brief/agents/bot/messages",
            json!({"message": {"text": "old"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(gw.get("/v1/sessions/brief").await.0, StatusCode::OK);
    let mut stream = Reader::open(&gw, "brief", None).await;
    wait_status(&gw, "/v1/sessions/brief", StatusCode::NOT_FOUND).await;
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
    // The sweeper deletes it and tells the open stream why, then ends it.
    let e = stream.take(1).await;
    assert_eq!(e[0].event, "session.deleted", "{e:?}");
    assert_eq!(e[0].data["payload"]["reason"], "expired", "{e:?}");
    stream.assert_ends().await;
    let t = gateway::model::Tenant::default_tenant();
    let deleted_at = gw.state.store.latest_event_seq(&t, "brief").await.unwrap();
    assert_eq!(e[0].id, Some(deleted_at));
    // The id is free again, its events continue after the old ones, and
    // nothing of the old session's children is left.
    let (s, _) = gw
        .post("/v1/sessions", json!({"session_id": "brief"}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(
        gw.state.store.latest_event_seq(&t, "brief").await.unwrap(),
        deleted_at + 1
    );
    assert_eq!(
        gw.get("/v1/sessions/brief/agents").await.1["agents"],
        json!([])
    );
    let (s, _) = gw.put("/v1/sessions/brief/agents/bot", json!({})).await;
    assert_eq!(s, StatusCode::CREATED, "a fresh agent, not the expired one");
    assert_eq!(
        gw.get("/v1/sessions/brief/agents/bot/messages").await.1["total"],
        0,
        "the expired session's messages were purged"
    );
    assert_eq!(
        gw.get("/v1/sessions/kept").await.0,
        StatusCode::OK,
        "a session without a lifetime stays"
    );
}

/// Events older than `retention.events` leave the log; a resume from before
/// the window gets a `reset` and then continues from the oldest event kept,
/// then live.
async fn resume_past_the_window_resets_then_continues(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cfg) = common::config(b, &dir) else {
        return;
    };
    // Long enough that an event written below is still kept when the reader
    // asks for it, short enough to wait for.
    cfg.retention.events = "3s".into();
    cfg.retention.sweep_interval_ms = 100;
    let gw = TestGateway::start(cfg).await;
    let t = gateway::model::Tenant::default_tenant();
    gw.session("k").await;
    for i in 0..3 {
        gw.patch("/v1/sessions/k/metadata", json!({"old": i})).await;
    }
    assert_eq!(gw.state.store.latest_event_seq(&t, "k").await.unwrap(), 4);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let evs = gw.state.store.events_after(&t, "k", 0, 10).await.unwrap();
        if evs.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events not dropped: {evs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..2 {
        gw.patch("/v1/sessions/k/metadata", json!({"new": i})).await;
    }
    let mut r = Reader::open(&gw, "k", Some(1)).await;
    let evs = r.take(3).await;
    assert_eq!(evs[0].event, "reset", "{evs:?}");
    assert_eq!(evs[0].data["resume_after"], 4, "{evs:?}");
    assert!(evs[0].data["reason"].is_string(), "{evs:?}");
    let ids: Vec<Option<u64>> = evs[1..].iter().map(|e| e.id).collect();
    assert_eq!(ids, [Some(5), Some(6)], "{evs:?}");
    gw.patch("/v1/sessions/k/metadata", json!({"live": 1}))
        .await;
    let live = r.take(1).await;
    assert_eq!(live[0].id, Some(7), "{live:?}");
}

/// `?after=N` resumes like `Last-Event-ID: N` (the header wins when both are
/// given), and every event's `data` has exactly the documented fields.
async fn after_query_resumes_and_data_has_the_documented_fields(b: Backend) {
    let gw = gw!(b);
    gw.session("q").await;
    for i in 0..3 {
        gw.patch("/v1/sessions/q/metadata", json!({"n": i})).await;
    }
    let mut r = Reader::open_query(&gw, "q", "?after=2", None).await;
    let evs = r.take(2).await;
    assert_eq!(
        evs.iter().map(|e| e.id).collect::<Vec<_>>(),
        [Some(3), Some(4)]
    );
    for e in &evs {
        let mut keys: Vec<&str> = e
            .data
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["payload", "seq", "session_id", "ts", "type"],
            "{e:?}"
        );
        assert_eq!(e.data["seq"].as_u64(), e.id, "{e:?}");
        assert_eq!(e.data["type"], e.event.as_str(), "{e:?}");
        assert_eq!(e.data["session_id"], "q", "{e:?}");
        let ts = e.data["ts"].as_str().expect("ts is a timestamp string");
        assert!(
            time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).is_ok(),
            "ts {ts:?} is not RFC 3339"
        );
    }
    assert_eq!(evs[1].data["payload"]["values"]["n"], 2, "{evs:?}");
    // The header takes precedence over the query.
    let mut r = Reader::open_query(&gw, "q", "?after=0", Some(3)).await;
    assert_eq!(r.take(1).await[0].id, Some(4));
    for bad in ["?after=x", "?after=-1", "?since=1"] {
        let (s, v) = gw.get(&format!("/v1/sessions/q/events{bad}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(v["error"]["code"].is_string(), "{bad}: {v}");
    }
}

/// An idle stream gets a heartbeat comment every `server.sse_heartbeat_ms`.
async fn idle_streams_get_heartbeats(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cfg) = common::config(b, &dir) else {
        return;
    };
    cfg.server.sse_heartbeat_ms = 100;
    let gw = TestGateway::start(cfg).await;
    gw.session("h").await;
    let mut r = Reader::open(&gw, "h", None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while r.heartbeats < 3 {
        match r.next_or_end(Duration::from_millis(200)).await {
            Next::Quiet => assert!(
                tokio::time::Instant::now() < deadline,
                "{} heartbeats in 30 s at one per 100 ms",
                r.heartbeats
            ),
            other => panic!("an idle stream sent {other:?}"),
        }
    }
    // Still a live stream: the next change arrives.
    gw.patch("/v1/sessions/h/metadata", json!({"a": 1})).await;
    assert_eq!(r.take(1).await[0].event, "metadata.updated");
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

/// The writes only `POST …/batch` and `PUT …/messages/{mid}` make reach a
/// live subscriber: a batch tells the feed once for all its writes, also
/// when it stops at a failing op after earlier ops were written. (On the
/// embedded store nothing but that notification wakes a live feed.)
async fn batch_and_replace_reach_live_subscribers(b: Backend) {
    let gw = gw!(b);
    gw.session("bt").await;
    let mut r = Reader::open(&gw, "bt", None).await;
    let text = |t: &str| json!({"message": {"role": "user", "content": [{"text": t}]}});
    let (s, v) = gw
        .post(
            "/v1/sessions/bt/batch",
            json!({"ops": [
                {"op": "put_agent", "agent_id": "bot", "agent": {"state": {}}},
                {"op": "append_message", "agent_id": "bot", "message": text("one")},
            ]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let evs = r.take(2).await;
    assert_eq!(evs[0].event, "agent.updated");
    assert_eq!(evs[1].event, "message.appended");
    // Stops at op 1 (there is no message 7): op 0 stays written, and is
    // streamed before any later write could wake the feed.
    let (s, v) = gw
        .post(
            "/v1/sessions/bt/batch",
            json!({"ops": [
                {"op": "append_message", "agent_id": "bot", "message": text("two")},
                {"op": "patch_message", "agent_id": "bot", "message_id": 7,
                 "patch": {"event_loop_metrics": {"latencyMs": 1}}},
            ]}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["failed_op"], 1, "{v}");
    let ev = r.take(1).await.remove(0);
    assert_eq!(ev.event, "message.appended");
    assert_eq!(ev.data["payload"]["message"]["content"][0]["text"], "two");
    let (s, v) = gw
        .put("/v1/sessions/bt/agents/bot/messages/0", text("uno"))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let ev = r.take(1).await.remove(0);
    assert_eq!(ev.event, "message.updated");
    assert_eq!(ev.data["payload"]["message"]["content"][0]["text"], "uno");
}

on_both_stores!(
    redaction_leaves_no_copy_in_the_log,
    every_change_type_in_order,
    batch_and_replace_reach_live_subscribers,
    resume_misses_and_repeats_nothing,
    many_subscribers_share_one_feed,
    a_burst_larger_than_the_feed_ring_arrives_whole,
    expired_sessions_disappear_and_streams_are_told,
    resume_past_the_window_resets_then_continues,
    after_query_resumes_and_data_has_the_documented_fields,
    idle_streams_get_heartbeats
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
