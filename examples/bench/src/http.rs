//! The gateway's HTTP API, as the load generator calls it.

use std::time::Duration;

use anyhow::bail;
use reqwest::Method;

/// A user message of ~300 bytes (a realistic short turn).
pub fn user_message(i: u64) -> String {
    format!(
        r#"{{"role":"user","content":[{{"text":"Turn {i}: could you summarise the open support tickets for account ACME-42, group them by priority and tell me which ones breach the SLA this week? Please include the owner of each ticket and the last customer reply."}}]}}"#
    )
}

/// An assistant message of ~700 bytes.
pub fn assistant_message(i: u64) -> String {
    format!(
        r#"{{"role":"assistant","content":[{{"text":"Turn {i}: there are 7 open tickets for ACME-42. High priority: #4411 (owner: dana, last reply 2 days ago, breaches SLA on Thursday) and #4420 (owner: li, replied today). Medium: #4398, #4402 and #4415, all owned by sam, none at risk. Low: #4371 and #4390 (owner: kim), waiting for the customer. Only #4411 breaches the SLA this week; I suggest escalating it to the on-call lead and sending the customer a status update today. Shall I draft that update?"}},{{"toolUse":{{"toolUseId":"t-{i}","name":"ticket_search","input":{{"account":"ACME-42","state":"open"}}}}}}]}}"#
    )
}

/// Event-loop metrics attached to assistant messages.
pub const METRICS: &str =
    r#"{"latencyMs":842,"inputTokens":1210,"outputTokens":187,"totalTokens":1397,"cycleCount":2}"#;

/// An agent body (Strands `SessionAgent` fields).
pub fn agent_body(aid: &str, turn: u64) -> String {
    format!(
        r#"{{"agent_id":"{aid}","state":{{"user_name":"Ada","locale":"en-GB","turn":{turn}}},"conversation_manager_state":{{"__name__":"SlidingWindowConversationManager","removed_message_count":0,"model_call_count":{turn}}},"_internal_state":{{"interrupt_state":{{"activated":false,"context":{{}},"interrupts":{{}}}}}}}}"#
    )
}

/// An HTTP client for one gateway.
#[derive(Clone)]
pub struct Http {
    /// The client (keep-alive pool).
    pub c: reqwest::Client,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Http {
    /// A client sized for `concurrency` keep-alive connections.
    pub fn new(base: &str, concurrency: usize) -> Self {
        let c = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency.max(1) * 2)
            .timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .expect("http client");
        Self {
            c,
            base: base.to_owned(),
        }
    }

    /// Sends a request; fails unless the status is one of `expect`. Returns the body.
    pub async fn req(
        &self,
        m: Method,
        path: &str,
        body: Option<String>,
        expect: &[u16],
    ) -> anyhow::Result<bytes_body::Body> {
        let mut r = self.c.request(m, format!("{}{path}", self.base));
        if let Some(b) = body {
            r = r.header("content-type", "application/json").body(b);
        }
        let resp = r.send().await?;
        let st = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        if !expect.contains(&st) {
            bail!(
                "HTTP {st}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            );
        }
        Ok(bytes_body::Body(bytes.to_vec()))
    }

    /// `POST /v1/sessions`.
    pub async fn create_session(&self, sid: &str) -> anyhow::Result<bytes_body::Body> {
        let b = format!(
            r#"{{"session_id":"{sid}","session_type":"AGENT","metadata":{{"status":"new","user":{{"id":"u-{sid}","tier":"gold"}},"channel":"web"}}}}"#
        );
        self.req(Method::POST, "/v1/sessions", Some(b), &[201])
            .await
    }

    /// `PUT …/agents/{aid}` (create 201 or update 200).
    pub async fn put_agent(
        &self,
        sid: &str,
        aid: &str,
        turn: u64,
    ) -> anyhow::Result<bytes_body::Body> {
        self.req(
            Method::PUT,
            &format!("/v1/sessions/{sid}/agents/{aid}"),
            Some(agent_body(aid, turn)),
            &[200, 201],
        )
        .await
    }

    /// `POST …/messages` without an explicit id (user turns) or with metrics (assistant turns).
    pub async fn append(&self, sid: &str, aid: &str, i: u64) -> anyhow::Result<bytes_body::Body> {
        let b = if i.is_multiple_of(2) {
            format!(r#"{{"message":{}}}"#, user_message(i))
        } else {
            format!(
                r#"{{"message":{},"event_loop_metrics":{METRICS}}}"#,
                assistant_message(i)
            )
        };
        self.req(
            Method::POST,
            &format!("/v1/sessions/{sid}/agents/{aid}/messages"),
            Some(b),
            &[201],
        )
        .await
    }

    /// `GET …/messages?latest=N`.
    pub async fn list_latest(
        &self,
        sid: &str,
        aid: &str,
        n: u32,
    ) -> anyhow::Result<bytes_body::Body> {
        self.req(
            Method::GET,
            &format!("/v1/sessions/{sid}/agents/{aid}/messages?latest={n}"),
            None,
            &[200],
        )
        .await
    }

    /// `PATCH /v1/sessions/{sid}/metadata`.
    pub async fn patch_metadata(&self, sid: &str, i: u64) -> anyhow::Result<bytes_body::Body> {
        let b = format!(
            r#"{{"status":"active","turns":{i},"user.last_seen":"2026-11-24T10:00:{:02}Z"}}"#,
            i % 60
        );
        self.req(
            Method::PATCH,
            &format!("/v1/sessions/{sid}/metadata"),
            Some(b),
            &[200],
        )
        .await
    }

    /// `GET /v1/sessions/{sid}/metadata`.
    pub async fn get_metadata(&self, sid: &str) -> anyhow::Result<bytes_body::Body> {
        self.req(
            Method::GET,
            &format!("/v1/sessions/{sid}/metadata"),
            None,
            &[200],
        )
        .await
    }

    /// `GET /v1/sessions/{sid}`.
    pub async fn get_session(&self, sid: &str) -> anyhow::Result<bytes_body::Body> {
        self.req(Method::GET, &format!("/v1/sessions/{sid}"), None, &[200])
            .await
    }

    /// `POST /v1/sessions/{sid}/feedbacks`.
    pub async fn add_feedback(&self, sid: &str) -> anyhow::Result<bytes_body::Body> {
        let b = r#"{"rating":"up","comment":"helpful, found the SLA breach quickly"}"#.to_owned();
        self.req(
            Method::POST,
            &format!("/v1/sessions/{sid}/feedbacks"),
            Some(b),
            &[201],
        )
        .await
    }

    /// `POST /v1/admin/reload`.
    pub async fn reload(&self) -> anyhow::Result<bytes_body::Body> {
        self.req(Method::POST, "/v1/admin/reload", None, &[200])
            .await
    }
}

/// A response body.
pub mod bytes_body {
    /// Bytes of a response body.
    #[derive(Debug, Default)]
    pub struct Body(pub Vec<u8>);

    impl Body {
        /// As JSON.
        pub fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.0).unwrap_or(serde_json::Value::Null)
        }
    }
}
