//! Starts the `gateway` binary as a child process with a generated config.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// Which store a gateway uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// redb file in the gateway's temp dir.
    Embedded,
    /// MongoDB at `uri`, database `db` (fresh per gateway).
    Mongo {
        /// Connection string.
        uri: String,
        /// Database name.
        db: String,
    },
}

impl Store {
    /// Short label.
    pub fn label(&self) -> &'static str {
        match self {
            Store::Embedded => "embedded",
            Store::Mongo { .. } => "mongodb",
        }
    }
}

/// One `[[hooks]]` entry.
#[derive(Debug, Clone)]
pub struct Hook {
    /// Unique name.
    pub name: String,
    /// The component file.
    pub wasm: PathBuf,
    /// `before`, `after` or `get`.
    pub phase: &'static str,
    /// Events.
    pub events: Vec<&'static str>,
    /// `reuse` or `per-call`.
    pub instance: &'static str,
    /// Extra TOML lines (timeout_ms = …, config = …).
    pub extra: String,
}

impl Hook {
    /// A hook with defaults for the rest.
    pub fn new(
        name: &str,
        wasm: &Path,
        phase: &'static str,
        events: &[&'static str],
        instance: &'static str,
    ) -> Self {
        Self {
            name: name.to_owned(),
            wasm: wasm.to_owned(),
            phase,
            events: events.to_vec(),
            instance,
            extra: String::new(),
        }
    }

    /// Adds TOML lines.
    pub fn extra(mut self, s: &str) -> Self {
        self.extra.push_str(s);
        self.extra.push('\n');
        self
    }
}

/// What a gateway is started with.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Store.
    pub store: Store,
    /// Hooks, in order.
    pub hooks: Vec<Hook>,
}

/// A running gateway child process.
pub struct Gateway {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The gateway's pid (for /proc: CPU time, RSS); under
    /// `BENCH_GATEWAY_WRAPPER`, the wrapper's child, not the wrapper.
    pub pid: u32,
    /// The process spawned: the gateway, or the wrapper running it.
    spawned: u32,
    child: Child,
    /// Private directory: config, redb file, log.
    pub dir: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn q(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

impl Gateway {
    /// Writes a config and starts `bin` with it; waits until `/healthz` answers.
    pub async fn start(bin: &Path, cache_dir: &Path, spec: &Spec) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("gw-bench-").tempdir()?;
        let port = free_port()?;
        let mut toml = String::new();
        writeln!(
            toml,
            "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace_ms = 2000\nmax_page_size = 1000"
        )?;
        match &spec.store {
            Store::Embedded => {
                writeln!(
                    toml,
                    "[storage]\ntype = \"embedded\"\n[storage.embedded]\npath = {}",
                    q(&dir.path().join("gateway.redb"))
                )?;
            }
            Store::Mongo { uri, db } => {
                writeln!(
                    toml,
                    "[storage]\ntype = \"mongodb\"\n[storage.mongodb]\nuri = {uri:?}\ndatabase = {db:?}\nserver_selection_timeout_ms = 5000"
                )?;
            }
        }
        writeln!(
            toml,
            "[plugins]\ncache_dir = {}\nwatch = false",
            q(cache_dir)
        )?;
        writeln!(
            toml,
            "[limits]\nmax_in_flight = 100000\nrequest_timeout_ms = 60000"
        )?;
        for h in &spec.hooks {
            let events: Vec<String> = h.events.iter().map(|e| format!("{e:?}")).collect();
            writeln!(
                toml,
                "[[hooks]]\nname = {:?}\nwasm = {}\nphase = {:?}\nevents = [{}]\ninstance = {:?}\n{}",
                h.name,
                q(&h.wasm),
                h.phase,
                events.join(", "),
                h.instance,
                h.extra
            )?;
        }
        let cfg = dir.path().join("gateway.toml");
        std::fs::write(&cfg, &toml)?;
        let log = std::fs::File::create(dir.path().join("gateway.log"))?;
        // BENCH_GATEWAY_WRAPPER prefixes the command, e.g. "valgrind --tool=callgrind".
        let wrapper: Vec<String> = std::env::var("BENCH_GATEWAY_WRAPPER")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let mut cmd = match wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("--config")
            .arg(&cfg)
            .env_remove("MONGODB_URI")
            .env_remove("GATEWAY_CONFIG")
            .env(
                "RUST_LOG",
                std::env::var("BENCH_GATEWAY_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("no pid")?;
        let mut gw = Self {
            base: format!("http://127.0.0.1:{port}"),
            pid,
            spawned: pid,
            child,
            dir,
        };
        gw.wait_ready(Duration::from_secs(300)).await?;
        if !wrapper.is_empty() {
            // Measure the gateway, not the profiler around it (whose CPU
            // time and RSS would pass for the gateway's).
            gw.pid = children(pid)
                .first()
                .and_then(|c| c.parse().ok())
                .context("the wrapper has no child process to measure")?;
        }
        Ok(gw)
    }

    async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let c = reqwest::Client::new();
        let t = Instant::now();
        loop {
            if let Ok(r) = c
                .get(format!("{}/readyz", self.base))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && r.status().is_success()
            {
                return Ok(());
            }
            if t.elapsed() > limit {
                bail!(
                    "gateway not ready after {limit:?}; log:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                bail!(
                    "gateway exited with {st} before becoming ready; log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Last lines of the gateway's log.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Resident set size in KiB (VmRSS).
    pub fn rss_kb(&self) -> u64 {
        rss_kb(self.pid)
    }

    /// Stops the gateway: SIGTERM (so a profiler wrapping it can write its
    /// output), then SIGKILL after 20 s.
    pub async fn stop(mut self) {
        // Under a wrapper (a profiler), signal the gateway itself first: the
        // wrapper finishes its output when its workload exits.
        let children = children(self.spawned);
        if self.spawned != self.pid && !children.is_empty() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .args(&children)
                .status()
                .await;
            if tokio::time::timeout(Duration::from_secs(60), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.spawned.to_string())
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// The child processes of `pid`'s main thread.
fn children(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// VmRSS of a process in KiB (0 when unreadable).
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}
