//! `[server]`: the HTTP listener and its per-connection and per-request limits.

use std::net::SocketAddr;

use serde::Deserialize;

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest request body accepted; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Largest page `GET /v1/sessions` and `…/messages` return.
    pub max_page_size: usize,
    /// Most ids one `batch-get` may ask for.
    pub max_batch_ids: usize,
    /// Largest `message` (JSON text) one message may carry; larger is 422.
    pub max_message_bytes: usize,
    /// Most keys one metadata patch may set; more is 422.
    pub max_patch_keys: usize,
    /// Byte budget of one message list response: a page that would exceed it
    /// is shortened (at least one message is always returned) and says where
    /// to continue (`next_offset`, `truncated`). Also bounds what one list
    /// request reads from the store at a time.
    pub max_response_bytes: usize,
    /// How long graceful shutdown waits for in-flight requests.
    pub shutdown_grace_ms: u64,
    /// Interval of SSE heartbeat comments on idle event streams.
    pub sse_heartbeat_ms: u64,
    /// With a store shared by several gateways (MongoDB): how often one query
    /// looks for events committed by other gateways for local subscribers.
    pub sse_poll_ms: u64,
    /// A request's head (request line and headers) must arrive within this
    /// long of its first byte, and a new connection's first request within
    /// this long of connecting; otherwise the connection is closed.
    pub header_read_timeout_ms: u64,
    /// A keep-alive connection with no request in progress is closed after
    /// this long without a new request (an open SSE stream is a request in
    /// progress: it is never cut).
    pub idle_timeout_ms: u64,
    /// Most client connections open at once; `0` (default) derives it from
    /// the process's file limit (`RLIMIT_NOFILE`) minus headroom for the
    /// store, plugin files and outbound clients. A larger value is lowered to
    /// that. At the cap, the longest-idle connection is closed to make room;
    /// with none idle, new connections wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            max_body_bytes: 1024 * 1024,
            max_page_size: 1000,
            max_batch_ids: 100,
            max_message_bytes: 512 * 1024,
            max_patch_keys: 100,
            max_response_bytes: 8 * 1024 * 1024,
            shutdown_grace_ms: 10_000,
            sse_heartbeat_ms: 15_000,
            sse_poll_ms: 500,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 75_000,
            max_connections: 0,
        }
    }
}
