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

/// A `[[hooks]]` entry for a plugin from `plugins/dist`. Unless `extra`
/// sets `timeout_ms`, it gets a generous one ([`HOOK_TIMEOUT`]): the default
/// 50 ms is a production budget, which a debug build on a loaded 2-core
/// machine can exceed now and then.
pub fn hook(name: &str, file: &str, phase: &str, events: &[&str], extra: &str) -> HookConfig {
    let extra = if extra.contains("timeout_ms") {
        extra.to_owned()
    } else {
        format!("{extra}\n{HOOK_TIMEOUT}")
    };
    let events: Vec<String> = events.iter().map(|e| format!("{e:?}")).collect();
    let text = format!(
        "name = {name:?}\nwasm = {:?}\nphase = {phase:?}\nevents = [{}]\n{extra}\n",
        plugin(file).display().to_string(),
        events.join(", ")
    );
    toml::from_str(&text).unwrap_or_else(|e| panic!("bad hook config: {e}\n{text}"))
}

/// The `timeout_ms` line tests give hooks that are not about timeouts.
pub const HOOK_TIMEOUT: &str = "timeout_ms = 10000";

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
    /// One plugin's entry in `GET /v1/admin/plugins` (panics when absent).
    pub async fn plugin_stats(&self, name: &str) -> Value {
        let (_, plugins) = self.get("/v1/admin/plugins").await;
        plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no plugin {name:?} in {plugins}"))
            .clone()
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

/// A free TCP port on 127.0.0.1 (free when asked; tests bind it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `port`; false after `within`.
pub async fn wait_port(port: u16, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Resident set size of a process in kB (0 when unknown).
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A child process, SIGKILLed and reaped on drop.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The gateway binary, run with a config of its own: killed on drop, its log
/// printed when the test panics.
pub struct GatewayProcess {
    pub child: std::process::Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// stdout and stderr of this run.
    pub log: PathBuf,
}

impl GatewayProcess {
    /// Writes `config` to `dir/gateway.toml` and starts the binary on it with
    /// `RUST_LOG=rust_log` and without `MONGODB_URI` (the config names the
    /// store); returns once `/readyz` answers 200. `config` must listen on
    /// `127.0.0.1:<port>`. Each run in `dir` logs to its own file.
    pub async fn start(dir: &std::path::Path, config: &str, rust_log: &str) -> Self {
        Self::start_with(dir, config, rust_log, |cmd, cfg| {
            cmd.arg("--config").arg(cfg);
        })
        .await
    }

    /// Like [`GatewayProcess::start`], but `configure` names the config file
    /// (given its path) in its own way — `--config`, or `GATEWAY_CONFIG` —
    /// and may set more of the environment (e.g. `MONGODB_URI`).
    pub async fn start_with(
        dir: &std::path::Path,
        config: &str,
        rust_log: &str,
        configure: impl FnOnce(&mut std::process::Command, &std::path::Path),
    ) -> Self {
        let cfg = dir.join("gateway.toml");
        std::fs::write(&cfg, config).unwrap();
        let port: u16 = config
            .lines()
            .find_map(|l| l.trim().strip_prefix("listen = \"127.0.0.1:"))
            .and_then(|p| p.trim_end_matches('"').parse().ok())
            .expect("the config listens on 127.0.0.1:<port>");
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let log = dir.join(format!(
            "gateway-{}.log",
            RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
        cmd.env("RUST_LOG", rust_log)
            .env_remove("MONGODB_URI")
            .env_remove("GATEWAY_CONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        configure(&mut cmd, &cfg);
        let child = cmd.spawn().expect("the gateway binary runs");
        let mut p = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        let client = reqwest::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", p.base)).send().await
                && r.status() == StatusCode::OK
            {
                return p;
            }
            if let Some(status) = p.child.try_wait().unwrap() {
                panic!("gateway exited with {status}:\n{}", p.log_text());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gateway did not become ready:\n{}",
                p.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` ("TERM", "HUP", ...) to the process, with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(
            status.success(),
            "kill -s {signal} {}: {status}",
            self.pid()
        );
    }

    /// Waits up to `within` for the process to exit; its status, or `None`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- gateway log ({}) ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// Serializes the start of gateways whose plugins embed a whole language
/// runtime (JS, Python): those take seconds to compile in a debug build, so
/// only the first start compiles and the others load the shared artifact.
pub static SLOW_PLUGIN_START: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A compiled-artifact cache shared by the tests of one such plugin, under
/// CARGO_TARGET_TMPDIR (keyed by the wasm's sha256 and the engine hash, and
/// checksummed: safe to share). Builds of those plugins are not byte-for-byte
/// reproducible, so artifacts of other builds are removed once per run.
pub fn shared_plugin_cache(wasm: &str) -> PathBuf {
    static PRUNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{wasm}-cache"));
    let mut pruned = PRUNED.lock().unwrap();
    if !pruned.iter().any(|w| w == wasm) {
        use sha2::Digest;
        let sha = hex::encode(sha2::Sha256::digest(std::fs::read(plugin(wasm)).unwrap()));
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if !entry.file_name().to_string_lossy().starts_with(&sha) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        pruned.push(wasm.to_owned());
    }
    dir
}

/// Copies the compiled artifacts of `plugins/dist/<wasm>.wasm` (the files
/// named after its sha256: `.cwasm` and its checksum) from cache directory
/// `from` to `to`, where missing. Artifacts are keyed by the engine too and
/// checksummed, so a copy is used only where it is valid.
pub fn copy_plugin_artifacts(wasm: &str, from: &std::path::Path, to: &std::path::Path) {
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(std::fs::read(plugin(wasm)).unwrap()));
    for entry in std::fs::read_dir(from).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let target = to.join(&name);
        if name.to_string_lossy().starts_with(&sha) && !target.exists() {
            let _ = std::fs::create_dir_all(to);
            // Through a temporary name, so a reader never sees half a file.
            let tmp = to.join(format!(".{}.tmp", name.to_string_lossy()));
            if std::fs::copy(entry.path(), &tmp).is_ok() {
                let _ = std::fs::rename(&tmp, &target);
            }
        }
    }
}

/// A gateway on the embedded store with `hooks` that load `wasm`, compiled
/// into [`shared_plugin_cache`] and started one at a time.
pub async fn gateway_with_slow_plugin(wasm: &str, hooks: Vec<HookConfig>) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Backend::Embedded, &dir).expect("embedded store");
    cfg.plugins.cache_dir = shared_plugin_cache(wasm);
    cfg.hooks = hooks;
    let mut gw = {
        let _one_at_a_time = SLOW_PLUGIN_START.lock().await;
        TestGateway::start(cfg).await
    };
    gw.dir = Some(dir);
    gw
}

/// The `[storage]` tables of a `gateway.toml` for `backend` (embedded at
/// `embedded_path`; MongoDB on `MONGODB_URI` with a fresh database); `None`
/// when the backend is unavailable. Call once per test: every run of the
/// binary with the returned text uses the same data.
pub fn storage_toml(backend: Backend, embedded_path: &str) -> Option<String> {
    Some(match backend {
        Backend::Embedded => {
            format!(
                "[storage]\ntype = \"embedded\"\n[storage.embedded]\npath = {embedded_path:?}\n"
            )
        }
        Backend::Mongo => format!(
            "[storage]\ntype = \"mongodb\"\n[storage.mongodb]\nuri = {:?}\ndatabase = \"gw_test_{}\"\nserver_selection_timeout_ms = 3000\n",
            mongo_uri()?,
            uuid::Uuid::new_v4().simple()
        ),
    })
}

/// The `gateway.toml` of a gateway binary a test runs ([`GatewayProcess`]):
/// it listens on `127.0.0.1:<port>`, keeps the embedded store in
/// `gateway.redb` and the plugin cache in `cache` (both relative to the
/// process's directory) and watches no plugin file. Each method adds to it;
/// `to_string()` is the text.
pub struct ProcessConfig {
    port: u16,
    server: String,
    storage: String,
    plugins: String,
    rest: String,
}

impl ProcessConfig {
    pub fn new(port: u16) -> Self {
        Self {
            port,
            server: String::new(),
            storage:
                "[storage]\ntype = \"embedded\"\n[storage.embedded]\npath = \"gateway.redb\"\n"
                    .to_owned(),
            plugins: "watch = false\ncache_dir = \"cache\"\n".to_owned(),
            rest: String::new(),
        }
    }

    /// Adds `line` (`key = value`) to `[server]`.
    pub fn server(mut self, line: &str) -> Self {
        self.server.push_str(line);
        self.server.push('\n');
        self
    }

    /// Replaces the `[storage]` tables (e.g. with [`storage_toml`]'s).
    pub fn storage(mut self, tables: &str) -> Self {
        self.storage = tables.to_owned();
        self
    }

    /// A `[[hooks]]` table for the plugin at `wasm` (see [`plugin`]);
    /// `extra` holds more of its lines. Unlike [`hook`], no timeout is added.
    pub fn hook(
        mut self,
        name: &str,
        wasm: &std::path::Path,
        phase: &str,
        events: &[&str],
        extra: &str,
    ) -> Self {
        let events: Vec<String> = events.iter().map(|e| format!("{e:?}")).collect();
        self.rest.push_str(&format!(
            "[[hooks]]\nname = {name:?}\nwasm = {:?}\nphase = {phase:?}\nevents = [{}]\n{extra}\n",
            wasm.display().to_string(),
            events.join(", ")
        ));
        self
    }

    /// Appends other tables, as TOML text.
    pub fn tables(mut self, toml: &str) -> Self {
        self.rest.push_str(toml);
        self.rest.push('\n');
        self
    }
}

impl std::fmt::Display for ProcessConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[server]\nlisten = \"127.0.0.1:{}\"\n{}{}[plugins]\n{}{}",
            self.port, self.server, self.storage, self.plugins, self.rest
        )
    }
}
