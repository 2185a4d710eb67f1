//! Test helpers: start a real gateway on 127.0.0.1:0 against either store.
#![allow(dead_code, missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

use gateway::Gateway;
use gateway::config::{Config, HookConfig, StorageType};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Mongo,
}

/// The MongoDB URI for tests, or `None` (after printing why) when the test
/// should be skipped. With `REQUIRE_MONGODB=1` (CI) a missing URI is a failure.
pub fn mongo_uri() -> Option<String> {
    match std::env::var("MONGODB_URI") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var("REQUIRE_MONGODB").as_deref() != Ok("1"),
                "REQUIRE_MONGODB=1 but MONGODB_URI is not set"
            );
            eprintln!("skipping: MONGODB_URI is not set");
            None
        }
    }
}

/// A config for `backend` with a private data directory; `None` to skip.
pub fn config(backend: Backend, dir: &tempfile::TempDir) -> Option<Config> {
    let mut cfg = Config::default();
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.shutdown_grace_ms = 2_000;
    cfg.plugins.cache_dir = dir.path().join("plugin-cache");
    cfg.plugins.watch = false;
    cfg.storage.embedded.path = dir.path().join("gateway.redb");
    if backend == Backend::Mongo {
        cfg.storage.kind = StorageType::Mongodb;
        cfg.storage.mongodb.uri = mongo_uri()?;
        cfg.storage.mongodb.database = format!("gw_test_{}", uuid::Uuid::new_v4().simple());
        cfg.storage.mongodb.server_selection_timeout_ms = 3_000;
    }
    Some(cfg)
}

/// Path of a built plugin (`plugins/dist/<name>.wasm`).
pub fn plugin(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/dist")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run plugins/build.sh first",
        p.display()
    );
    p
}

/// A `[[hooks]]` entry for a plugin from `plugins/dist`.
pub fn hook(name: &str, file: &str, phase: &str, events: &[&str], extra: &str) -> HookConfig {
    let events: Vec<String> = events.iter().map(|e| format!("{e:?}")).collect();
    let text = format!(
        "name = {name:?}\nwasm = {:?}\nphase = {phase:?}\nevents = [{}]\n{extra}\n",
        plugin(file).display().to_string(),
        events.join(", ")
    );
    toml::from_str(&text).unwrap_or_else(|e| panic!("bad hook config: {e}\n{text}"))
}

/// A running gateway and a client for it.
pub struct TestGateway {
    pub base: String,
    pub client: reqwest::Client,
    pub state: gateway::AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub dir: Option<tempfile::TempDir>,
}

impl TestGateway {
    /// Starts a gateway with `cfg`.
    pub async fn start(cfg: Config) -> Self {
        Self::start_with(cfg, None).await
    }

    pub async fn start_with(cfg: Config, config_path: Option<PathBuf>) -> Self {
        let gw = Gateway::start(cfg, config_path)
            .await
            .expect("gateway starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = gw.state.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(gw.serve(listener, async move {
            let _ = rx.await;
        }));
        Self {
            base,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            state,
            stop: Some(tx),
            task: Some(task),
            dir: None,
        }
    }

    /// Starts a gateway on `backend` with hooks; `None` when the backend is unavailable.
    pub async fn with_hooks(backend: Backend, hooks: Vec<HookConfig>) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(backend, &dir)?;
        cfg.hooks = hooks;
        let mut gw = Self::start(cfg).await;
        gw.dir = Some(dir);
        Some(gw)
    }

    /// Starts a gateway on `backend` without hooks; `None` when unavailable.
    pub async fn new(backend: Backend) -> Option<Self> {
        Self::with_hooks(backend, Vec::new()).await
    }

    /// Sends a request with an optional JSON body; returns status, headers and JSON body (Null when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        Self::parts(resp).await
    }

    /// Sends raw bytes.
    pub async fn raw(&self, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let resp = self
            .client
            .request(method, format!("{}{path}", self.base))
            .body(body)
            .send()
            .await
            .expect("request sent");
        let (s, _, v) = Self::parts(resp).await;
        (s, v)
    }

    pub async fn parts(resp: reqwest::Response) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, headers, v)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (s, _, v) = self.call(Method::GET, path, None).await;
        (s, v)
    }
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (s, _, v) = self.call(Method::POST, path, Some(body)).await;
        (s, v)
    }
    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (s, _, v) = self.call(Method::PUT, path, Some(body)).await;
        (s, v)
    }
    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (s, _, v) = self.call(Method::PATCH, path, Some(body)).await;
        (s, v)
    }
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let (s, _, v) = self.call(Method::DELETE, path, None).await;
        (s, v)
    }

    /// Creates a session with `id` and returns its JSON.
    pub async fn session(&self, id: &str) -> Value {
        let (s, v) = self
            .post("/v1/sessions", serde_json::json!({ "session_id": id }))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v
    }

    /// Stops the server (graceful) and waits for it.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
        self.dir.take()
    }
}

/// Asserts an error body's shape and code.
#[track_caller]
pub fn assert_error(v: &Value, code: &str) {
    assert_eq!(v["error"]["code"], code, "unexpected error body: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error without message: {v}"
    );
}

/// Generates one `#[tokio::test]` per backend for each listed async fn taking `Backend`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name($crate::common::Backend::Embedded).await } )*
        }
        mod mongodb {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name($crate::common::Backend::Mongo).await } )*
        }
    };
}
