//! Benchmark harness for the session gateway (issue #5; results in BENCHMARKS.md).
//!
//! Starts `target/release/gateway` as a child process with generated configs
//! and measures, each phase bounded in operations and time:
//! - the request mix at concurrency 1…64 on both stores, and the same work
//!   done with the Rust MongoDB driver directly ("raw") → P1, P2;
//! - before-hooks on `PATCH …/metadata` (0/1/3 hooks, reuse vs per-call) → P3;
//! - the Python peer `strands-mongodb-session-manager` vs the gateway → P4;
//! - append latency as one agent grows to 50 000 messages → P5;
//! - a plugin hot swap under load → P6;
//! - RSS idle with 4 plugins and per in-flight request → P7.
//!
//! `scripts/bench.sh` builds the gateway, starts a MongoDB-wire server and
//! runs this; `--quick` finishes in under a minute.

mod gateway;
mod http;
mod load;
mod raw;
mod raw_min;
mod stats;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde::Serialize;
use serde_json::{Value, json};

use gateway::{Gateway, Hook, Spec, Store};
use http::Http;
use load::{AID, Driver, Mix};
use raw::Raw;
use raw_min::RawMin;
use stats::{Caps, Pct, Rec, Summary, us};

/// Command line.
#[derive(Parser, Debug)]
#[command(about = "Session gateway benchmark harness (see BENCHMARKS.md)")]
struct Args {
    /// Short run (< 60 s): fewer points, shorter phases.
    #[arg(long)]
    quick: bool,
    /// Stores for the gateway figures: embedded, mongodb or both (mongodb needs a URI).
    #[arg(long, default_value = "both")]
    store: String,
    /// MongoDB server for the mongodb store, raw and peer phases.
    #[arg(long, env = "MONGODB_URI")]
    mongodb_uri: Option<String>,
    /// What the MongoDB server is (printed with the figures).
    #[arg(
        long,
        env = "BENCH_SERVER_LABEL",
        default_value = "unknown MongoDB-wire server"
    )]
    server_label: String,
    /// The gateway binary.
    #[arg(long, default_value = "target/release/gateway")]
    gateway_bin: PathBuf,
    /// Built plugins (plugins/build.sh).
    #[arg(long, default_value = "plugins/dist")]
    plugins: PathBuf,
    /// Compiled-plugin cache shared by the gateways started here.
    #[arg(long, default_value = "target/bench-plugin-cache")]
    cache_dir: PathBuf,
    /// Python with `strands-mongodb-session-manager` installed (peer phase).
    #[arg(
        long,
        env = "BENCH_PYTHON",
        default_value = "/work/.venv-bench/bin/python"
    )]
    python: PathBuf,
    /// The peer script.
    #[arg(long, default_value = "examples/bench/peer/peer.py")]
    peer_script: PathBuf,
    /// Only these phases (comma-separated): mix, hooks, peer, scale, swap, memory.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Seconds per load point (default 6, quick 1.5).
    #[arg(long)]
    point_secs: Option<f64>,
    /// Concurrency levels of the mix phase (default 1,4,16,32,64; quick 1,32).
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Message counts for the session-length phase (default 10,1000,10000,50000; quick 10,10000).
    #[arg(long, value_delimiter = ',')]
    levels: Vec<u64>,
    /// Write every figure as JSON here.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// Everything measured, for `--json-out`.
#[derive(Serialize, Default)]
struct Report {
    machine: Value,
    mix: Vec<MixRow>,
    p1: Option<f64>,
    /// Gateway (MongoDB) ÷ raw-min ops/s at the P1 concurrency.
    p1_min: Option<f64>,
    /// Gateway p50 − raw-min p50 at c=1, mix-weighted.
    p2_min_us: Option<f64>,
    /// Server commands per acknowledged write, gateway (MongoDB), by concurrency.
    cmd: BTreeMap<usize, f64>,
    /// Gateway CPU per operation (µs) on the embedded store's mix, by concurrency.
    gw_cpu_us: BTreeMap<usize, f64>,
    /// Gateway CPU per request (µs), embedded store, c=32, for requests that
    /// do less than the mix: `probe` (`GET /healthz`, the HTTP stack alone)
    /// and `read` (`GET /v1/sessions/{id}`, the whole request path with a
    /// point read and no write).
    gw_cpu_floor_us: BTreeMap<String, f64>,
    p2_us: Option<f64>,
    p2_by_op: BTreeMap<String, f64>,
    hooks: Value,
    p3_reuse_us: Option<f64>,
    p3_per_call_us: Option<f64>,
    peer: Vec<MixRow>,
    p4: Option<f64>,
    scale: Vec<ScaleRow>,
    p5: BTreeMap<String, f64>,
    swap: Value,
    p6: Option<u64>,
    memory: Value,
    p7_idle_mb: Option<f64>,
    p7_per_request_kb: Option<f64>,
    notes: Vec<String>,
}

#[derive(Serialize, Clone)]
struct MixRow {
    target: String,
    mix: String,
    summary: Summary,
    /// CPU time per operation (µs) of the gateway, the MongoDB server and this
    /// process (the load generator, and for raw the driver), from /proc.
    cpu_us_per_op: Option<[f64; 3]>,
    /// Server commands per acknowledged write over the load point.
    cmd_per_write: Option<f64>,
}

/// Commands the MongoDB-wire server has received: the sum of
/// `serverStatus.metrics.commands.<name>.total` when the server keeps them
/// (less `serverStatus` itself), else the sum of `opcounters` (less one for
/// the `serverStatus` of the previous sample).
async fn server_commands(c: &mongodb::Client) -> Option<u64> {
    use mongodb::bson::{Bson, doc};
    let s = c
        .database("admin")
        .run_command(doc! { "serverStatus": 1 })
        .await
        .ok()?;
    let num = |b: &Bson| match b {
        Bson::Int32(i) => u64::try_from(*i).unwrap_or(0),
        Bson::Int64(i) => u64::try_from(*i).unwrap_or(0),
        Bson::Double(f) => *f as u64,
        _ => 0,
    };
    if let Ok(cmds) = s
        .get_document("metrics")
        .and_then(|m| m.get_document("commands"))
    {
        let total: u64 = cmds
            .iter()
            .filter(|(name, _)| name.as_str() != "serverStatus")
            .filter_map(|(_, v)| v.as_document()?.get("total").map(num))
            .sum();
        if total > 0 {
            return Some(total);
        }
    }
    let o = s.get_document("opcounters").ok()?;
    Some(o.iter().map(|(_, v)| num(v)).sum::<u64>().saturating_sub(1))
}

/// Acknowledged writes of a mix run (every operation but the two reads).
fn writes(s: &Summary) -> u64 {
    s.per_op
        .iter()
        .filter(|(op, _)| !matches!(op.as_str(), "list_latest_20" | "get_session"))
        .map(|(_, p)| p.n)
        .sum()
}

/// Two fields of a `/proc/.../stat` file (counted after the command name),
/// added: CPU clock ticks (0 when unknown).
fn stat_ticks(path: impl AsRef<std::path::Path>, fields: (usize, usize)) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(fields.0)?.parse::<u64>().ok()? + f.get(fields.1)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks (0 when unknown).
fn cpu_ticks(pid: Option<u32>) -> u64 {
    let path = pid.map_or_else(
        || "/proc/self/stat".to_owned(),
        |p| format!("/proc/{p}/stat"),
    );
    stat_ticks(path, (11, 12))
}

/// CPU ticks of the gateway's `embedded-writer` thread (0 when it has none).
fn writer_ticks(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim_end() == "embedded-writer")
        })
        .map(|t| stat_ticks(t.path().join("stat"), (11, 12)))
        .sum()
}

/// cutime + cstime of this process (waited-for children, e.g. the peer), in clock ticks.
fn child_cpu_ticks() -> u64 {
    stat_ticks("/proc/self/stat", (13, 14))
}

/// CPU ticks of (gateway, server, self).
fn cpu3(gw: Option<u32>, server: Option<u32>) -> [u64; 3] {
    [
        gw.map_or(0, |p| cpu_ticks(Some(p))),
        server.map_or(0, |p| cpu_ticks(Some(p))),
        cpu_ticks(None),
    ]
}

/// CPU µs per op between two `cpu3` readings (clock ticks of 10 ms).
fn cpu_per_op(a: [u64; 3], b: [u64; 3], ops: u64) -> Option<[f64; 3]> {
    if ops == 0 {
        return None;
    }
    let f = |i: usize| (b[i].saturating_sub(a[i])) as f64 * 10_000.0 / ops as f64;
    Some([f(0), f(1), f(2)])
}

fn server_pid() -> Option<u32> {
    std::env::var("BENCH_SERVER_PID")
        .ok()
        .and_then(|p| p.parse().ok())
}

async fn run_measured(
    d: &Driver,
    mix: Mix,
    c: usize,
    caps: Caps,
    tag: &str,
    gw: Option<u32>,
) -> (Summary, Option<[f64; 3]>) {
    let a = cpu3(gw, server_pid());
    let s = load::run(d, mix, c, caps, tag).await;
    let b = cpu3(gw, server_pid());
    let cpu = cpu_per_op(a, b, s.ops);
    (s, cpu)
}

#[derive(Serialize, Clone)]
struct ScaleRow {
    store: String,
    level: u64,
    append: Pct,
    prefill_secs: f64,
}

struct Ctx {
    a: Args,
    bin: PathBuf,
    plugins: PathBuf,
    cache: PathBuf,
    secs: f64,
    run_id: String,
    r: Report,
}

impl Ctx {
    fn phase(&self, p: &str) -> bool {
        self.a.only.is_empty() || self.a.only.iter().any(|o| o == p)
    }
    fn mongo(&self) -> Option<String> {
        self.a.mongodb_uri.clone().filter(|u| !u.is_empty())
    }
    fn want(&self, store: &str) -> bool {
        self.a.store == "both" || self.a.store == store
    }
    fn plugin(&self, name: &str) -> PathBuf {
        self.plugins.join(format!("{name}.wasm"))
    }
    fn db(&self, what: &str) -> String {
        format!("bench_{}_{what}", self.run_id)
    }
    async fn start(&self, store: Store, hooks: Vec<Hook>) -> anyhow::Result<Gateway> {
        Gateway::start(&self.bin, &self.cache, &Spec { store, hooks }).await
    }
    fn caps(&self) -> Caps {
        Caps::new(self.secs, 5_000_000)
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let cores = cpu.lines().filter(|l| l.starts_with("processor")).count();
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: u64 = mem
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    json!({ "cpu": model, "cores": cores, "ram_gib": (mem_kb as f64 / 1048576.0 * 10.0).round() / 10.0, "date": date, "loadavg_start": loadavg() })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_mix_table(title: &str, rows: &[MixRow]) {
    println!("\n### {title}\n");
    println!("| target | c | ops/s | p50 | p95 | p99 | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let s = &r.summary;
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} |",
            r.target,
            s.concurrency,
            s.ops_per_s,
            us(f64::from(s.all.p50)),
            us(f64::from(s.all.p95)),
            us(f64::from(s.all.p99)),
            s.errors
        );
    }
}

fn print_cpu(title: &str, rows: &[MixRow]) {
    if rows.iter().all(|r| r.cpu_us_per_op.is_none()) {
        return;
    }
    println!("\n### {title}: CPU time per operation (from /proc/<pid>/stat, 10 ms ticks)\n");
    println!(
        "| target | c | gateway | MongoDB server | load generator (+ driver for raw) | total |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for r in rows {
        if let Some([g, sv, cl]) = r.cpu_us_per_op {
            let sv_s = if server_pid().is_some() {
                us(sv)
            } else {
                "n/a".into()
            };
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                r.target,
                r.summary.concurrency,
                us(g),
                sv_s,
                us(cl),
                us(g + sv + cl)
            );
        }
    }
}

fn print_per_op(title: &str, rows: &[MixRow]) {
    println!("\n### {title}: per operation (p50 / p95 / p99)\n");
    let mut ops: Vec<String> = Vec::new();
    for r in rows {
        for k in r.summary.per_op.keys() {
            if !ops.contains(k) {
                ops.push(k.clone());
            }
        }
    }
    println!("| target | c | {} |", ops.join(" | "));
    println!("|---|---:|{}", "---|".repeat(ops.len()));
    for r in rows {
        let cells: Vec<String> = ops
            .iter()
            .map(|o| {
                r.summary.per_op.get(o).map_or("–".into(), |p| {
                    format!(
                        "{} / {} / {}",
                        us(f64::from(p.p50)),
                        us(f64::from(p.p95)),
                        us(f64::from(p.p99))
                    )
                })
            })
            .collect();
        println!(
            "| {} | {} | {} |",
            r.target,
            r.summary.concurrency,
            cells.join(" | ")
        );
    }
}

fn note_errors(ctx: &mut Ctx, what: &str, s: &Summary) {
    if s.errors > 0 {
        let n = format!(
            "{what}: {} failed operations, e.g. {:?}",
            s.errors, s.error_samples
        );
        eprintln!("!! {n}");
        ctx.r.notes.push(n);
    }
}

// ---------------------------------------------------------------- mix + raw (P1, P2)

/// What a request that does less than the mix costs the gateway at c=32,
/// right after the c=32 mix on the same gateway: `GET /healthz` (the HTTP
/// stack, the request span and the connection, no store) and
/// `GET /v1/sessions/{id}` of a session the mix created (every middleware,
/// one point read, no write). The gap between these and the mix's figure is
/// what the writes cost.
/// The embedded writer's `(jobs, commits)` from the gateway's `/metrics`.
async fn writer_counts(d: &Driver) -> Option<(f64, f64)> {
    let Driver::Http(h) = d else { return None };
    let body = h
        .req(reqwest::Method::GET, "/metrics", None, &[200])
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&body.0).into_owned();
    let get = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    Some((
        get("gateway_embedded_writer_jobs_total")?,
        get("gateway_embedded_writer_commits_total")?,
    ))
}

/// `", N writer jobs per commit"` between two [`writer_counts`], or nothing.
fn per_commit(before: Option<(f64, f64)>, after: Option<(f64, f64)>) -> String {
    match (before, after) {
        (Some((j0, c0)), Some((j1, c1))) if c1 > c0 => {
            format!(", {:.1} writer jobs per commit", (j1 - j0) / (c1 - c0))
        }
        _ => String::new(),
    }
}

async fn cpu_floor(ctx: &mut Ctx, d: &Driver, pid: u32, caps: Caps) {
    let Driver::Http(h) = d else { return };
    let c = 32;
    // Each loop after `probe` works on session 0 of each worker of the c=32
    // mix (its tag is `emb-c{c}` in `phase_mix`): every worker created one,
    // with an agent. `patch` and `append` are the mix's writes with the
    // smallest and the largest body; `list` its message read.
    for name in ["probe", "read", "list", "patch", "append"] {
        let h = h.clone();
        let before = writer_counts(d).await;
        let wa = writer_ticks(pid);
        let a = cpu3(Some(pid), None);
        let s = load::run_op(name, c, caps, move |w, i| {
            let h = h.clone();
            let sid = format!("emb-c{c}-{w}-0");
            async move {
                match name {
                    "probe" => h.req(reqwest::Method::GET, "/healthz", None, &[200]).await,
                    "read" => h.get_session(&sid).await,
                    "list" => h.list_latest(&sid, load::AID, 20).await,
                    "patch" => h.patch_metadata(&sid, i).await,
                    _ => h.append(&sid, load::AID, i).await,
                }
                .map(|_| ())
            }
        })
        .await;
        let b = cpu3(Some(pid), None);
        let writer_us =
            writer_ticks(pid).saturating_sub(wa) as f64 * 10_000.0 / s.ops.max(1) as f64;
        note_errors(ctx, &format!("gateway-embedded {name} c={c}"), &s);
        let per_commit = per_commit(before, writer_counts(d).await);
        if let Some([g, _, _]) = cpu_per_op(a, b, s.ops) {
            eprintln!(
                "gateway-embedded {name} c={c}: {:.0} ops/s, {g:.0} µs gateway CPU per request ({writer_us:.0} of it the writer thread){per_commit}",
                s.ops_per_s
            );
            ctx.r.gw_cpu_floor_us.insert(name.to_owned(), g);
        }
    }
}

async fn phase_mix(ctx: &mut Ctx) -> anyhow::Result<()> {
    let levels = if !ctx.a.concurrency.is_empty() {
        ctx.a.concurrency.clone()
    } else if ctx.a.quick {
        vec![1, 16, 32]
    } else {
        vec![1, 4, 16, 32, 64]
    };
    let caps = ctx.caps();
    if ctx.want("embedded") {
        let gw = ctx.start(Store::Embedded, vec![]).await?;
        let d = Driver::Http(Http::new(&gw.base, 64));
        load::run(&d, Mix::Full, 4, Caps::new(0.5, 2000), "warm").await;
        let mut rows = Vec::new();
        for &c in &levels {
            let before = writer_counts(&d).await;
            let (s, cpu) =
                run_measured(&d, Mix::Full, c, caps, &format!("emb-c{c}"), Some(gw.pid)).await;
            note_errors(ctx, &format!("gateway-embedded c={c}"), &s);
            let per_commit = per_commit(before, writer_counts(&d).await);
            eprintln!(
                "gateway-embedded c={c}: {:.0} ops/s p50 {} µs{per_commit}",
                s.ops_per_s, s.all.p50
            );
            if let Some([g, _, _]) = cpu {
                ctx.r.gw_cpu_us.insert(c, g);
            }
            rows.push(MixRow {
                target: "gateway (embedded)".into(),
                mix: "full".into(),
                summary: s,
                cpu_us_per_op: cpu,
                cmd_per_write: None,
            });
        }
        if levels.contains(&32) {
            cpu_floor(ctx, &d, gw.pid, caps).await;
        }
        print_mix_table("Request mix, embedded store", &rows);
        print_cpu("Request mix, embedded store", &rows);
        print_per_op("Request mix, embedded store", &rows);
        ctx.r.mix.extend(rows);
        gw.stop().await;
    }
    let Some(uri) = ctx.mongo().filter(|_| ctx.want("mongodb")) else {
        ctx.r
            .notes
            .push("mix: no MongoDB URI, so no MongoDB gateway figures and no P1/P2".into());
        return Ok(());
    };
    let gdb = ctx.db("gw");
    let gw = ctx
        .start(
            Store::Mongo {
                uri: uri.clone(),
                db: gdb.clone(),
            },
            vec![],
        )
        .await?;
    let raw = Raw::connect(&uri, &ctx.db("raw")).await?;
    let raw_min = RawMin::connect(&uri, &ctx.db("rawmin")).await?;
    let dg = Driver::Http(Http::new(&gw.base, 64));
    let dr = Driver::Raw(raw.clone());
    let dm = Driver::RawMin(raw_min.clone());
    load::run(&dg, Mix::Full, 4, Caps::new(0.5, 2000), "warm").await;
    load::run(&dr, Mix::Full, 4, Caps::new(0.5, 2000), "warm").await;
    load::run(&dm, Mix::Full, 4, Caps::new(0.5, 2000), "warm").await;
    let mut rows = Vec::new();
    // Interleaved per level, so background noise hits all alike.
    for &c in &levels {
        let targets: [(&str, &Driver, &str, Option<u32>); 3] = [
            ("gateway (mongodb)", &dg, "mgw", Some(gw.pid)),
            ("raw driver", &dr, "raw", None),
            ("raw-min", &dm, "rawmin", None),
        ];
        for (target, d, tag, pid) in targets {
            let before = server_commands(raw.client()).await;
            let (s, cpu) = run_measured(d, Mix::Full, c, caps, &format!("{tag}-c{c}"), pid).await;
            let after = server_commands(raw.client()).await;
            let cmd = match (before, after) {
                (Some(b), Some(a)) if writes(&s) > 0 => {
                    Some(a.saturating_sub(b) as f64 / writes(&s) as f64)
                }
                _ => None,
            };
            note_errors(ctx, &format!("{target} c={c}"), &s);
            eprintln!(
                "{target} c={c}: {:.0} ops/s p50 {} µs, {} commands per write",
                s.ops_per_s,
                s.all.p50,
                fmt_opt(cmd, |v| format!("{v:.2}"))
            );
            if target == "gateway (mongodb)"
                && let Some(v) = cmd
            {
                ctx.r.cmd.insert(c, v);
            }
            rows.push(MixRow {
                target: target.into(),
                mix: "full".into(),
                summary: s,
                cpu_us_per_op: cpu,
                cmd_per_write: cmd,
            });
        }
    }
    print_mix_table(
        &format!(
            "Request mix, MongoDB ({}) — gateway vs raw driver",
            ctx.a.server_label
        ),
        &rows,
    );
    print_cpu("Request mix, MongoDB", &rows);
    print_per_op("Request mix, MongoDB", &rows);
    let find = |t: &str, c: usize| {
        rows.iter()
            .find(|r| r.target == t && r.summary.concurrency == c)
            .map(|r| r.summary.clone())
    };
    let p1_c = if levels.contains(&32) {
        32
    } else {
        *levels.iter().max().unwrap_or(&1)
    };
    if let (Some(g), Some(r)) = (find("gateway (mongodb)", p1_c), find("raw driver", p1_c)) {
        ctx.r.p1 = Some(g.ops_per_s / r.ops_per_s);
        println!(
            "\nP1 = gateway/raw throughput at c={p1_c}: {:.0} / {:.0} = {:.2}",
            g.ops_per_s,
            r.ops_per_s,
            g.ops_per_s / r.ops_per_s
        );
    }
    if let (Some(g), Some(r)) = (find("gateway (mongodb)", p1_c), find("raw-min", p1_c)) {
        ctx.r.p1_min = Some(g.ops_per_s / r.ops_per_s);
        println!(
            "\nP1 (raw-min) = gateway/raw-min throughput at c={p1_c}: {:.0} / {:.0} = {:.2}",
            g.ops_per_s,
            r.ops_per_s,
            g.ops_per_s / r.ops_per_s
        );
    }
    if let (Some(g), Some(r)) = (find("gateway (mongodb)", 1), find("raw-min", 1)) {
        let (mut total, mut weight) = (0.0, 0.0);
        for (op, gp) in &g.per_op {
            if let Some(rp) = r.per_op.get(op) {
                total += (f64::from(gp.p50) - f64::from(rp.p50)) * gp.n as f64;
                weight += gp.n as f64;
            }
        }
        if weight > 0.0 {
            ctx.r.p2_min_us = Some(total / weight);
            println!(
                "\nP2 (raw-min) = mix-weighted added p50 at c=1: {}",
                us(total / weight)
            );
        }
    }
    println!("\nServer commands per acknowledged write (serverStatus, diffed per load point):\n");
    println!("| target | c | commands/write |");
    println!("|---|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} |",
            r.target,
            r.summary.concurrency,
            fmt_opt(r.cmd_per_write, |v| format!("{v:.2}"))
        );
    }
    if let (Some(g), Some(r)) = (find("gateway (mongodb)", 1), find("raw driver", 1)) {
        let mut total = 0.0;
        let mut weight = 0.0;
        println!("\nP2: added p50 per operation at c=1 (gateway − raw):\n");
        println!("| op | gateway p50 | raw p50 | added |");
        println!("|---|---:|---:|---:|");
        for (op, gp) in &g.per_op {
            if let Some(rp) = r.per_op.get(op) {
                let add = f64::from(gp.p50) - f64::from(rp.p50);
                println!(
                    "| {op} | {} | {} | {} |",
                    us(f64::from(gp.p50)),
                    us(f64::from(rp.p50)),
                    us(add)
                );
                ctx.r.p2_by_op.insert(op.clone(), add);
                total += add * gp.n as f64;
                weight += gp.n as f64;
            }
        }
        if weight > 0.0 {
            ctx.r.p2_us = Some(total / weight);
            println!(
                "\nP2 = mix-weighted added p50 at c=1: {}",
                us(total / weight)
            );
        }
    }
    ctx.r.mix.extend(rows);
    gw.stop().await;
    raw.drop_db().await;
    raw_min.drop_db().await;
    let _ = raw.client().database(&gdb).drop().await;
    Ok(())
}

// ---------------------------------------------------------------- hooks (P3)

/// Median of `xs` (unsorted).
fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// Starts one gateway per hook configuration, then sends `op` to each in turn
/// (c=1, round robin, so drift and background noise spread evenly over the
/// configurations) until the time cap. Returns per-config summaries, the
/// median of the paired differences to config 0, and `/v1/admin/plugins`.
async fn hooks_round_robin(
    ctx: &Ctx,
    phase: &'static str,
    event: &'static str,
    op: &'static str,
    secs: f64,
) -> anyhow::Result<Vec<(String, Summary, f64, Value)>> {
    let allow = ctx.plugin("fixture_allow");
    let hooks = |n: usize, inst: &'static str| -> Vec<Hook> {
        (0..n)
            .map(|i| {
                Hook::new(&format!("allow-{i}"), &allow, phase, &[event], inst)
                    .extra("on_error = \"deny\"")
            })
            .collect()
    };
    let configs: Vec<(&str, Vec<Hook>)> = vec![
        ("0 hooks", vec![]),
        ("1 hook, reuse", hooks(1, "reuse")),
        ("3 hooks, reuse", hooks(3, "reuse")),
        ("1 hook, per-call", hooks(1, "per-call")),
        ("3 hooks, per-call", hooks(3, "per-call")),
    ];
    let mut gws = Vec::new();
    for (name, h) in &configs {
        let gw = ctx
            .start(Store::Embedded, h.clone())
            .await
            .with_context(|| format!("starting gateway with {name}"))?;
        let c = Http::new(&gw.base, 2);
        c.create_session("hooks").await?;
        gws.push((name.to_string(), gw, c));
    }
    let call = |c: &Http, i: u64| {
        let c = c.clone();
        async move {
            match op {
                "patch_metadata" => c.patch_metadata("hooks", i).await.map(|_| ()),
                _ => c.get_metadata("hooks").await.map(|_| ()),
            }
        }
    };
    for (_, _, c) in &gws {
        for i in 0..50 {
            call(c, i).await?;
        }
    }
    let mut recs: Vec<Rec> = vec![Rec::default(); gws.len()];
    let mut diffs: Vec<Vec<f64>> = vec![Vec::new(); gws.len()];
    let t0 = Instant::now();
    let mut i = 0u64;
    while t0.elapsed().as_secs_f64() < secs && i < 50_000 {
        let mut lat = Vec::with_capacity(gws.len());
        for (k, (_, _, c)) in gws.iter().enumerate() {
            let t = Instant::now();
            match call(c, i).await {
                Ok(()) => {
                    recs[k].add(op, t.elapsed());
                    lat.push(Some(t.elapsed().as_micros() as f64));
                }
                Err(e) => {
                    recs[k].fail(e.to_string());
                    lat.push(None);
                }
            }
        }
        if let Some(b) = lat[0] {
            for (k, l) in lat.iter().enumerate() {
                if let Some(l) = l {
                    diffs[k].push(l - b);
                }
            }
        }
        i += 1;
    }
    let el = t0.elapsed();
    let mut out = Vec::new();
    for (k, (name, gw, c)) in gws.into_iter().enumerate() {
        let plugins = c
            .req(reqwest::Method::GET, "/v1/admin/plugins", None, &[200])
            .await
            .map(|b| b.json())
            .unwrap_or(Value::Null);
        let s = std::mem::take(&mut recs[k]).summary(el, 1);
        out.push((name, s, median(std::mem::take(&mut diffs[k])), plugins));
        gw.stop().await;
    }
    Ok(out)
}

fn plugin_latency(v: &Value) -> String {
    v["plugins"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| format!("{}", p["latency_us_avg"].as_u64().unwrap_or(0)))
                .collect::<Vec<_>>()
                .join("+")
        })
        .unwrap_or_default()
}

async fn phase_hooks(ctx: &mut Ctx) -> anyhow::Result<()> {
    let (psecs, gsecs) = if ctx.a.quick { (4.0, 2.0) } else { (15.0, 8.0) };
    let mut rows = Vec::new();
    for (phase, event, op, secs) in [
        ("before", "metadata.update", "patch_metadata", psecs),
        ("get", "metadata.get", "get_metadata", gsecs),
    ] {
        let res = hooks_round_robin(ctx, phase, event, op, secs).await?;
        println!(
            "\n### Hooks: `{op}` with 0/1/3 `{phase}` hooks on {event} (fixture_allow, embedded store, c=1, round robin over 5 gateways)\n"
        );
        println!(
            "| config | p50 | p99 | added p50 (p50 − p50 of 0 hooks) | median of paired differences | in-plugin avg µs (admin API) | errors |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
        let base = f64::from(res[0].1.p50(op));
        for (name, s, paired, plugins) in &res {
            let p = f64::from(s.p50(op));
            println!(
                "| {name} | {} | {} | {} | {} | {} | {} |",
                us(p),
                us(f64::from(s.all.p99)),
                us(p - base),
                us(*paired),
                plugin_latency(plugins),
                s.errors
            );
            if op == "patch_metadata" && name == "3 hooks, reuse" {
                ctx.r.p3_reuse_us = Some(p - base);
            }
            if op == "patch_metadata" && name == "3 hooks, per-call" {
                ctx.r.p3_per_call_us = Some(p - base);
            }
            rows.push(json!({ "op": op, "phase": phase, "config": name, "summary": s, "added_p50_us": p - base, "paired_median_us": paired, "admin_plugins": plugins }));
        }
    }
    println!(
        "\nP3 = added PATCH p50 for 3 before hooks: reuse {}, per-call {}",
        us(ctx.r.p3_reuse_us.unwrap_or(f64::NAN)),
        us(ctx.r.p3_per_call_us.unwrap_or(f64::NAN))
    );
    ctx.r.hooks = Value::Array(rows);
    Ok(())
}

// ---------------------------------------------------------------- peer (P4)

async fn run_peer(ctx: &Ctx, uri: &str, c: usize, tag: &str) -> anyhow::Result<Summary> {
    let out = tokio::process::Command::new(&ctx.a.python)
        .arg(&ctx.a.peer_script)
        .args([
            "--uri",
            uri,
            "--db",
            &ctx.db(&format!("peer{c}")),
            "--concurrency",
            &c.to_string(),
        ])
        .args(["--seconds", &format!("{}", ctx.secs), "--tag", tag])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs_f64(ctx.secs + 60.0), out)
        .await
        .context("peer timed out")??;
    if !out.status.success() {
        bail!(
            "peer failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("peer output: {}", String::from_utf8_lossy(&out.stdout)))?;
    let pct = |p: &Value| Pct {
        n: p["n"].as_u64().unwrap_or(0),
        ops_per_s: 0.0,
        p50: p["p50"].as_u64().unwrap_or(0) as u32,
        p95: p["p95"].as_u64().unwrap_or(0) as u32,
        p99: p["p99"].as_u64().unwrap_or(0) as u32,
        max: p["max"].as_u64().unwrap_or(0) as u32,
        mean: 0.0,
    };
    let mut per_op = BTreeMap::new();
    if let Some(o) = v["per_op"].as_object() {
        for (k, p) in o {
            per_op.insert(k.clone(), pct(p));
        }
    }
    Ok(Summary {
        concurrency: c,
        ops: v["ops"].as_u64().unwrap_or(0),
        secs: v["secs"].as_f64().unwrap_or(0.0),
        ops_per_s: v["ops_per_s"].as_f64().unwrap_or(0.0),
        errors: v["errors"].as_u64().unwrap_or(0),
        error_samples: v["error_samples"]
            .as_array()
            .map(|a| a.iter().map(|e| e.to_string()).collect())
            .unwrap_or_default(),
        all: pct(&v["all"]),
        per_op,
    })
}

async fn phase_peer(ctx: &mut Ctx) -> anyhow::Result<()> {
    let Some(uri) = ctx.mongo() else {
        ctx.r.notes.push("peer: no MongoDB URI, so no P4".into());
        return Ok(());
    };
    if !ctx.a.python.exists() {
        ctx.r.notes.push(format!(
            "peer: {} not found (pip install strands-mongodb-session-manager into a venv), so no P4",
            ctx.a.python.display()
        ));
        return Ok(());
    }
    let levels: Vec<usize> = if ctx.a.quick { vec![16] } else { vec![1, 16] };
    let gdb = ctx.db("gwpeer");
    let gw = ctx
        .start(
            Store::Mongo {
                uri: uri.clone(),
                db: gdb.clone(),
            },
            vec![],
        )
        .await?;
    let d = Driver::Http(Http::new(&gw.base, 32));
    load::run(&d, Mix::Strands, 4, Caps::new(0.5, 2000), "warm").await;
    let mut rows = Vec::new();
    for &c in &levels {
        let (sv0, ch0) = (cpu_ticks(server_pid()), child_cpu_ticks());
        let res = run_peer(ctx, &uri, c, &format!("peer-c{c}")).await;
        let (sv1, ch1) = (cpu_ticks(server_pid()), child_cpu_ticks());
        match res {
            Ok(s) => {
                let cpu = cpu_per_op([0, sv0, ch0], [0, sv1, ch1], s.ops);
                eprintln!("peer c={c}: {:.0} ops/s", s.ops_per_s);
                note_errors(ctx, &format!("peer c={c}"), &s);
                rows.push(MixRow {
                    target: "peer: strands-mongodb-session-manager (pymongo, threads)".into(),
                    mix: "strands".into(),
                    summary: s,
                    cpu_us_per_op: cpu,
                    cmd_per_write: None,
                });
            }
            Err(e) => {
                eprintln!("!! peer c={c}: {e:#}");
                ctx.r.notes.push(format!("peer c={c} failed: {e:#}"));
            }
        }
        let (s, cpu) = run_measured(
            &d,
            Mix::Strands,
            c,
            ctx.caps(),
            &format!("gwpeer-c{c}"),
            Some(gw.pid),
        )
        .await;
        note_errors(ctx, &format!("gateway strands c={c}"), &s);
        eprintln!(
            "gateway (mongodb, strands mix) c={c}: {:.0} ops/s",
            s.ops_per_s
        );
        rows.push(MixRow {
            target: "gateway (mongodb) over HTTP".into(),
            mix: "strands".into(),
            summary: s,
            cpu_us_per_op: cpu,
            cmd_per_write: None,
        });
    }
    gw.stop().await;
    if let Ok(raw) = Raw::connect(&uri, &gdb).await {
        raw.drop_db().await;
    }
    if ctx.want("embedded") {
        let gw = ctx.start(Store::Embedded, vec![]).await?;
        let d = Driver::Http(Http::new(&gw.base, 32));
        load::run(&d, Mix::Strands, 4, Caps::new(0.5, 2000), "warm").await;
        let c = 16;
        let (s, cpu) = run_measured(
            &d,
            Mix::Strands,
            c,
            ctx.caps(),
            &format!("embpeer-c{c}"),
            Some(gw.pid),
        )
        .await;
        rows.push(MixRow {
            target: "gateway (embedded) over HTTP".into(),
            mix: "strands".into(),
            summary: s,
            cpu_us_per_op: cpu,
            cmd_per_write: None,
        });
        gw.stop().await;
    }
    print_mix_table(
        &format!(
            "Strands script: gateway vs Python peer (MongoDB: {})",
            ctx.a.server_label
        ),
        &rows,
    );
    print_cpu(
        "Strands script (for the peer, the load-generator column is the Python process)",
        &rows,
    );
    print_per_op("Strands script", &rows);
    let peer16 = rows
        .iter()
        .find(|r| r.target.starts_with("peer") && r.summary.concurrency == 16);
    let gw16 = rows
        .iter()
        .find(|r| r.target.starts_with("gateway (mongodb)") && r.summary.concurrency == 16);
    if let (Some(p), Some(g)) = (peer16, gw16) {
        let p4 = g.summary.ops_per_s / p.summary.ops_per_s;
        ctx.r.p4 = Some(p4);
        println!(
            "\nP4 = gateway(mongodb)/peer ops/s at c=16: {:.0} / {:.0} = {p4:.2}",
            g.summary.ops_per_s, p.summary.ops_per_s
        );
    }
    ctx.r.peer = rows;
    Ok(())
}

// ---------------------------------------------------------------- session length (P5)

async fn measure_appends(c: &Http, sid: &str, n: u64) -> Pct {
    let mut rec = Rec::default();
    let t = Instant::now();
    for i in 0..n {
        stats::timed(&mut rec, "append", c.append(sid, AID, i)).await;
        if t.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    let el = t.elapsed();
    rec.summary(el, 1)
        .per_op
        .get("append")
        .copied()
        .unwrap_or_default()
}

async fn count_messages(c: &Http, sid: &str) -> anyhow::Result<u64> {
    let v = c
        .req(
            reqwest::Method::GET,
            &format!("/v1/sessions/{sid}/agents/{AID}/messages?latest=1"),
            None,
            &[200],
        )
        .await?
        .json();
    v["total"].as_u64().context("no total")
}

async fn phase_scale(ctx: &mut Ctx) -> anyhow::Result<()> {
    let levels = if !ctx.a.levels.is_empty() {
        ctx.a.levels.clone()
    } else if ctx.a.quick {
        vec![10, 10_000]
    } else {
        vec![10, 1_000, 10_000, 50_000]
    };
    let per_level = if ctx.a.quick { 100 } else { 300 };
    let mut stores = Vec::new();
    if ctx.want("embedded") {
        stores.push(Store::Embedded);
    }
    if let Some(uri) = ctx.mongo().filter(|_| ctx.want("mongodb") && !ctx.a.quick) {
        stores.push(Store::Mongo {
            uri,
            db: ctx.db("scale"),
        });
    }
    for store in stores {
        let label = store.label().to_owned();
        let gw = ctx.start(store.clone(), vec![]).await?;
        let c = Http::new(&gw.base, 64);
        let sid = "long";
        c.create_session(sid).await?;
        c.put_agent(sid, AID, 0).await?;
        let raw = match &store {
            Store::Mongo { uri, .. } => Some(Raw::connect(uri, &ctx.db("scale_raw")).await?),
            Store::Embedded => None,
        };
        let mut rows = Vec::new();
        for &level in &levels {
            let have = count_messages(&c, sid).await?;
            let t = Instant::now();
            if level > have {
                match (&raw, &store) {
                    (Some(r), Store::Mongo { db, .. }) => {
                        r.prefill(db, sid, AID, have, level).await?
                    }
                    _ => {
                        // Concurrent HTTP appends: the embedded store group-commits them.
                        let cc = c.clone();
                        let s = load::run_op(
                            "prefill",
                            32,
                            Caps::new(120.0, level - have),
                            move |_, i| {
                                let cc = cc.clone();
                                async move { cc.append(sid, AID, i).await.map(|_| ()) }
                            },
                        )
                        .await;
                        eprintln!("prefill {label} to {level}: {:.0} appends/s", s.ops_per_s);
                    }
                }
            }
            let prefill_secs = t.elapsed().as_secs_f64();
            let at = count_messages(&c, sid).await?;
            let p = measure_appends(&c, sid, per_level).await;
            eprintln!(
                "{label} append at {at} messages: p50 {} µs (n={})",
                p.p50, p.n
            );
            rows.push(ScaleRow {
                store: label.clone(),
                level: at,
                append: p,
                prefill_secs,
            });
        }
        if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
            let p5 = f64::from(last.append.p50) / f64::from(first.append.p50.max(1));
            ctx.r.p5.insert(label.clone(), p5);
        }
        ctx.r.scale.extend(rows);
        gw.stop().await;
        if let (Some(r), Store::Mongo { db, .. }) = (&raw, &store) {
            let _ = r.client().database(db).drop().await;
            r.drop_db().await;
        }
    }
    println!(
        "\n### Append latency vs session length (one agent, c=1, {per_level} appends per point)\n"
    );
    println!("| store | messages | append p50 | p95 | p99 | pre-fill time |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &ctx.r.scale {
        println!(
            "| {} | {} | {} | {} | {} | {:.1} s |",
            r.store,
            r.level,
            us(f64::from(r.append.p50)),
            us(f64::from(r.append.p95)),
            us(f64::from(r.append.p99)),
            r.prefill_secs
        );
    }
    for (k, v) in &ctx.r.p5 {
        println!("\nP5 ({k}) = p50@last ÷ p50@first = {v:.2}");
    }
    Ok(())
}

// ---------------------------------------------------------------- hot swap (P6)

async fn phase_swap(ctx: &mut Ctx) -> anyhow::Result<()> {
    let allow = ctx.plugin("fixture_allow");
    let deny = ctx.plugin("fixture_deny");
    let dir = tempfile::tempdir()?;
    let swap = dir.path().join("swap.wasm");
    std::fs::copy(&allow, &swap)?;
    // A get hook (fixture_allow tags GET metadata with "fixture":"v2",
    // fixture_deny with "v1"), so every request must keep succeeding and the
    // answers show which version served; a before hook on updates
    // (validator) keeps the write path hooked too.
    let hooks = vec![
        Hook::new("swap", &swap, "get", &["metadata.get"], "reuse"),
        Hook::new(
            "validate",
            &ctx.plugin("metadata_validator"),
            "before",
            &["metadata.update", "metadata.delete"],
            "reuse",
        )
        .extra("config = { types = { status = \"string\", turns = \"integer\" } }"),
    ];
    let gw = ctx.start(Store::Embedded, hooks).await?;
    let workers = 16usize;
    let swaps = if ctx.a.quick { 3 } else { 6 };
    let gap = Duration::from_millis(if ctx.a.quick { 700 } else { 1000 });
    let c = Http::new(&gw.base, workers);
    for w in 0..workers {
        c.create_session(&format!("swap-{w}")).await?;
        c.put_agent(&format!("swap-{w}"), AID, 0).await?;
    }
    let start = Instant::now();
    let total = gap * (swaps as u32 + 1);
    let seen_v1 = Arc::new(AtomicU64::new(0));
    let seen_v2 = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let c = c.clone();
        let (v1, v2) = (seen_v1.clone(), seen_v2.clone());
        tasks.push(tokio::spawn(async move {
            let sid = format!("swap-{w}");
            let mut samples: Vec<(u32, u32, bool)> = Vec::new();
            let mut errs: Vec<String> = Vec::new();
            let mut i = 0u64;
            while start.elapsed() < total && i < 200_000 {
                let t = Instant::now();
                let at = t.duration_since(start).as_micros() as u32;
                let r = match i % 4 {
                    0 => c.get_metadata(&sid).await.map(|b| {
                        match b.json()["fixture"].as_str() {
                            Some("v1") => v1.fetch_add(1, Ordering::Relaxed),
                            Some("v2") => v2.fetch_add(1, Ordering::Relaxed),
                            _ => 0,
                        };
                    }),
                    1 => c.patch_metadata(&sid, i).await.map(|_| ()),
                    2 => c.append(&sid, AID, i).await.map(|_| ()),
                    _ => c.list_latest(&sid, AID, 20).await.map(|_| ()),
                };
                let lat = t.elapsed().as_micros() as u32;
                if let Err(e) = &r
                    && errs.len() < 3
                {
                    errs.push(e.to_string());
                }
                samples.push((at, lat, r.is_ok()));
                i += 1;
            }
            (samples, errs)
        }));
    }
    let mut swap_at = Vec::new();
    let mut reloads = Vec::new();
    for k in 0..swaps {
        tokio::time::sleep_until((start + gap * (k as u32 + 1)).into()).await;
        let src = if k % 2 == 0 { &deny } else { &allow };
        let t = Instant::now();
        std::fs::copy(src, &swap)?;
        let rep = c.reload().await;
        swap_at.push((
            t.duration_since(start).as_micros() as u32,
            t.elapsed().as_micros() as u32,
        ));
        reloads.push(
            rep.map(|b| b.json())
                .unwrap_or_else(|e| json!({ "error": e.to_string() })),
        );
    }
    let mut samples = Vec::new();
    let mut errs = Vec::new();
    for t in tasks {
        let (s, e) = t.await?;
        samples.extend(s);
        errs.extend(e);
    }
    let failed = samples.iter().filter(|s| !s.2).count() as u64;
    let window = 500_000u32;
    let near = |at: u32, lat: u32| {
        swap_at
            .iter()
            .any(|&(s, d)| at + lat + window >= s && at <= s + d + window)
    };
    let mut around: Vec<u32> = samples
        .iter()
        .filter(|s| near(s.0, s.1))
        .map(|s| s.1)
        .collect();
    let mut away: Vec<u32> = samples
        .iter()
        .filter(|s| !near(s.0, s.1))
        .map(|s| s.1)
        .collect();
    around.sort_unstable();
    away.sort_unstable();
    let el = start.elapsed();
    let pa = Pct::of(&around, el);
    let pw = Pct::of(&away, el);
    let reload_ms: Vec<f64> = swap_at
        .iter()
        .map(|&(_, d)| f64::from(d) / 1000.0)
        .collect();
    println!(
        "\n### Hot swap under load (embedded, {workers} workers, {swaps} swaps fixture_allow ⇄ fixture_deny + POST /v1/admin/reload)\n"
    );
    println!(
        "| requests | failed | p50 / p99 within ±500 ms of a swap | p50 / p99 elsewhere | reload call (ms) | answers tagged v1 / v2 |"
    );
    println!("|---:|---:|---:|---:|---|---:|");
    println!(
        "| {} | {failed} | {} / {} | {} / {} | {:?} | {} / {} |",
        samples.len(),
        us(f64::from(pa.p50)),
        us(f64::from(pa.p99)),
        us(f64::from(pw.p50)),
        us(f64::from(pw.p99)),
        reload_ms,
        seen_v1.load(Ordering::Relaxed),
        seen_v2.load(Ordering::Relaxed)
    );
    if failed > 0 {
        println!("\nfailures, e.g.: {errs:?}");
    }
    println!("\nP6 = {failed} failed requests");
    ctx.r.p6 = Some(failed);
    ctx.r.swap = json!({
        "requests": samples.len(), "failed": failed, "errors": errs,
        "around_swap": pa, "elsewhere": pw, "reload_ms": reload_ms, "reloads": reloads,
        "tagged_v1": seen_v1.load(Ordering::Relaxed), "tagged_v2": seen_v2.load(Ordering::Relaxed),
    });
    gw.stop().await;
    Ok(())
}

// ---------------------------------------------------------------- memory (P7)

async fn settle_rss(gw: &Gateway) -> u64 {
    tokio::time::sleep(Duration::from_millis(600)).await;
    gw.rss_kb()
}

/// Opens `n` SSE streams (on sessions `sse-<i>`, or all on `sse-0`), waits
/// until they are open, reads RSS, closes them; returns (open, RSS during, RSS after).
async fn hold_sse(
    base: &str,
    n: usize,
    shared: bool,
    gw: &Gateway,
) -> anyhow::Result<(u64, u64, u64)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let opened = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut holders = Vec::new();
    for i in 0..n {
        let url = format!(
            "{base}/v1/sessions/sse-{}/events",
            if shared { 0 } else { i }
        );
        let cl = client.clone();
        let opened = opened.clone();
        let mut stop = stop_rx.clone();
        holders.push(tokio::spawn(async move {
            if let Ok(resp) = cl.get(url).send().await
                && resp.status().is_success()
            {
                opened.fetch_add(1, Ordering::Relaxed);
                let _ = stop.wait_for(|s| *s).await;
                drop(resp);
            }
        }));
    }
    let t = Instant::now();
    while (opened.load(Ordering::Relaxed) as usize) < n && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = opened.load(Ordering::Relaxed);
    let during = settle_rss(gw).await;
    let _ = stop_tx.send(true);
    for h in holders {
        let _ = h.await;
    }
    let after = settle_rss(gw).await;
    Ok((held, during, after))
}

async fn phase_memory(ctx: &mut Ctx) -> anyhow::Result<()> {
    let hooks = vec![
        Hook::new(
            "validate",
            &ctx.plugin("metadata_validator"),
            "before",
            &["metadata.update", "metadata.delete"],
            "reuse",
        )
        .extra("config = { types = { status = \"string\", turns = \"integer\" } }"),
        Hook::new(
            "redact",
            &ctx.plugin("metadata_redactor"),
            "get",
            &["metadata.get"],
            "reuse",
        )
        .extra("config = { mask = [\"api_key\"] }"),
        Hook::new(
            "audit",
            &ctx.plugin("audit_log"),
            "after",
            &["metadata.update", "metadata.delete", "feedback.add"],
            "reuse",
        )
        .extra("on_error = \"allow\""),
        Hook::new(
            "allow",
            &ctx.plugin("fixture_allow"),
            "before",
            &["metadata.update"],
            "reuse",
        ),
    ];
    let gw = ctx.start(Store::Embedded, hooks).await?;
    let c = Http::new(&gw.base, 16);
    let rss_start = settle_rss(&gw).await;
    c.create_session("mem").await?;
    c.put_agent("mem", AID, 0).await?;
    for i in 0..20 {
        c.patch_metadata("mem", i).await?;
        c.get_metadata("mem").await?;
        c.append("mem", AID, i).await?;
        c.add_feedback("mem").await?;
    }
    let idle = settle_rss(&gw).await;
    println!("\n### Memory (VmRSS of the gateway process)\n");
    println!(
        "idle with 4 plugins loaded (validator, redactor, audit-log, fixture_allow), after a few requests: {:.1} MB (at start: {:.1} MB)",
        idle as f64 / 1024.0,
        rss_start as f64 / 1024.0
    );
    ctx.r.p7_idle_mb = Some(idle as f64 / 1024.0);

    // (a) N open SSE streams, one per session, then N on one shared session.
    let n_sse: usize = if ctx.a.quick { 300 } else { 1000 };
    let cc = c.clone();
    load::run_op("create", 16, Caps::new(60.0, n_sse as u64), move |_, i| {
        let cc = cc.clone();
        async move { cc.create_session(&format!("sse-{i}")).await.map(|_| ()) }
    })
    .await;
    let mut sse = Vec::new();
    for shared in [false, true] {
        let before = settle_rss(&gw).await;
        let (held, during, after) = hold_sse(&gw.base, n_sse, shared, &gw).await?;
        let per = (during as f64 - before as f64) / held.max(1) as f64;
        println!(
            "{held} open SSE streams ({}): RSS {:.1} → {:.1} MB = {per:.1} KB per stream (after closing: {:.1} MB)",
            if shared {
                "all on one session"
            } else {
                "one per session"
            },
            before as f64 / 1024.0,
            during as f64 / 1024.0,
            after as f64 / 1024.0
        );
        sse.push(json!({ "shared_session": shared, "streams": held, "before_kb": before, "during_kb": during, "after_kb": after, "per_stream_kb": per }));
    }
    let per_sse = sse[0]["per_stream_kb"].as_f64().unwrap_or(f64::NAN);
    gw.stop().await;

    // (b) N slow requests held in a before hook that spins until its timeout.
    let n_slow: usize = if ctx.a.quick { 32 } else { 64 };
    let hooks = vec![
        Hook::new(
            "loop",
            &ctx.plugin("fixture_loop"),
            "before",
            &["metadata.update"],
            "reuse",
        )
        .extra("timeout_ms = 2000\non_error = \"allow\""),
    ];
    let gw = ctx.start(Store::Embedded, hooks).await?;
    let c = Http::new(&gw.base, n_slow);
    for i in 0..n_slow {
        c.create_session(&format!("slow-{i}")).await?;
    }
    // one warm-up call (instantiates the plugin once)
    c.patch_metadata("slow-0", 0).await?;
    let before_slow = settle_rss(&gw).await;
    let mut reqs = Vec::new();
    for i in 0..n_slow {
        let c = c.clone();
        reqs.push(tokio::spawn(async move {
            c.patch_metadata(&format!("slow-{i}"), 1).await.is_ok()
        }));
    }
    let mut peak = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1900) {
        peak = peak.max(gw.rss_kb());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut ok = 0;
    for r in reqs {
        if r.await.unwrap_or(false) {
            ok += 1;
        }
    }
    let after_slow = settle_rss(&gw).await;
    let per_slow = (peak as f64 - before_slow as f64) / n_slow as f64;
    println!(
        "{n_slow} requests held 2 s in a spinning before hook (fixture_loop, timeout_ms=2000, on_error=allow): RSS {:.1} → peak {:.1} MB = {per_slow:.1} KB per in-flight request ({ok} answered; after: {:.1} MB)",
        before_slow as f64 / 1024.0,
        peak as f64 / 1024.0,
        after_slow as f64 / 1024.0
    );
    gw.stop().await;
    ctx.r.p7_per_request_kb = Some(per_sse);
    println!(
        "\nP7 = idle {:.1} MB with 4 plugins; {per_sse:.1} KB per in-flight request (open SSE stream); {per_slow:.1} KB per request held in a hook",
        idle as f64 / 1024.0
    );
    ctx.r.memory = json!({
        "rss_start_kb": rss_start, "idle_kb": idle,
        "sse": sse,
        "slow_hook": { "requests": n_slow, "answered": ok, "before_kb": before_slow, "peak_kb": peak, "after_kb": after_slow, "per_request_kb": per_slow },
    });
    Ok(())
}

// ---------------------------------------------------------------- main

fn fmt_opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("n/a".into(), f)
}

/// Gateway CPU per request on the embedded store's mix at c=32 (issue #16).
fn gw_cpu_32(r: &Report) -> Option<f64> {
    r.gw_cpu_us.get(&32).copied()
}

fn verdicts(r: &Report) -> Vec<(String, String, String, Option<bool>)> {
    let p5max =
        r.p5.values()
            .cloned()
            .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))));
    let gw_cpu = gw_cpu_32(r);
    vec![
        (
            "P1 gateway/raw ops/s at c=32".into(),
            "≥ 0.85".into(),
            fmt_opt(r.p1, |v| format!("{v:.3}")),
            r.p1.map(|v| v >= 0.85),
        ),
        (
            "P1 gateway/raw-min ops/s at c=32".into(),
            "≥ 0.85".into(),
            fmt_opt(r.p1_min, |v| format!("{v:.3}")),
            r.p1_min.map(|v| v >= 0.85),
        ),
        (
            "P2 added p50 vs raw-min (c=1)".into(),
            "≤ 150 µs".into(),
            fmt_opt(r.p2_min_us, |v| format!("{v:.0} µs")),
            r.p2_min_us.map(|v| v <= 150.0),
        ),
        (
            "CPU gateway CPU per request, embedded mix, c=32".into(),
            "≤ 60 µs".into(),
            fmt_opt(gw_cpu, |v| format!("{v:.0} µs")),
            gw_cpu.map(|v| v <= 60.0),
        ),
        (
            "CMD server commands per write, c=16 / c=1".into(),
            "≤ 1.5 / ≤ 3".into(),
            format!(
                "{} / {}",
                fmt_opt(r.cmd.get(&16).copied(), |v| format!("{v:.2}")),
                fmt_opt(r.cmd.get(&1).copied(), |v| format!("{v:.2}"))
            ),
            match (r.cmd.get(&16), r.cmd.get(&1)) {
                (Some(a), Some(b)) => Some(*a <= 1.5 && *b <= 3.0),
                _ => None,
            },
        ),
        (
            "P2 added p50 (c=1)".into(),
            "≤ 150 µs".into(),
            fmt_opt(r.p2_us, |v| format!("{v:.0} µs")),
            r.p2_us.map(|v| v <= 150.0),
        ),
        (
            "P3 3 hooks, reuse".into(),
            "≤ 15 µs".into(),
            fmt_opt(r.p3_reuse_us, |v| format!("{v:.0} µs")),
            r.p3_reuse_us.map(|v| v <= 15.0),
        ),
        (
            "P3 3 hooks, per-call".into(),
            "≤ 75 µs".into(),
            fmt_opt(r.p3_per_call_us, |v| format!("{v:.0} µs")),
            r.p3_per_call_us.map(|v| v <= 75.0),
        ),
        (
            "P4 gateway/peer ops/s at c=16".into(),
            "≥ 3".into(),
            fmt_opt(r.p4, |v| format!("{v:.2}")),
            r.p4.map(|v| v >= 3.0),
        ),
        (
            "P5 append p50@50k ÷ p50@10".into(),
            "≤ 1.5".into(),
            if r.p5.is_empty() {
                "n/a".into()
            } else {
                r.p5.iter()
                    .map(|(k, v)| format!("{v:.2} ({k})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            p5max.map(|v| v <= 1.5),
        ),
        (
            "P6 failed requests during swaps".into(),
            "= 0".into(),
            r.p6.map_or("n/a".into(), |v| v.to_string()),
            r.p6.map(|v| v == 0),
        ),
        (
            "P7 RSS idle, 4 plugins".into(),
            "≤ 64 MB".into(),
            fmt_opt(r.p7_idle_mb, |v| format!("{v:.1} MB")),
            r.p7_idle_mb.map(|v| v <= 64.0),
        ),
        (
            "P7 RSS per in-flight request".into(),
            "≤ 20 KB".into(),
            fmt_opt(r.p7_per_request_kb, |v| format!("{v:.1} KB")),
            r.p7_per_request_kb.map(|v| v <= 20.0),
        ),
    ]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let bin = std::fs::canonicalize(&a.gateway_bin).with_context(|| {
        format!(
            "{} (build it: cargo build --release --bin gateway)",
            a.gateway_bin.display()
        )
    })?;
    let plugins = std::fs::canonicalize(&a.plugins)
        .with_context(|| format!("{} (run plugins/build.sh)", a.plugins.display()))?;
    std::fs::create_dir_all(&a.cache_dir)?;
    let cache = std::fs::canonicalize(&a.cache_dir)?;
    let secs = a.point_secs.unwrap_or(if a.quick { 1.5 } else { 6.0 });
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut ctx = Ctx {
        a,
        bin,
        plugins,
        cache,
        secs,
        run_id,
        r: Report {
            machine: machine(),
            ..Default::default()
        },
    };
    let started = Instant::now();
    println!(
        "# Session gateway benchmark{}",
        if ctx.a.quick { " (quick)" } else { "" }
    );
    println!(
        "\nmachine: {} × {} cores, {} GiB RAM; {}; load average at start {}",
        ctx.r.machine["cpu"].as_str().unwrap_or("?"),
        ctx.r.machine["cores"],
        ctx.r.machine["ram_gib"],
        ctx.r.machine["date"].as_str().unwrap_or("?"),
        loadavg()
    );
    println!(
        "MongoDB: {}",
        ctx.mongo()
            .map_or("none (embedded only)".into(), |u| format!(
                "{} at {u}",
                ctx.a.server_label
            ))
    );
    println!(
        "gateway: {}; {} s per load point",
        ctx.bin.display(),
        ctx.secs
    );
    type PhaseFn = for<'a> fn(
        &'a mut Ctx,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = anyhow::Result<()>> + 'a>,
    >;
    let phases: Vec<(&str, PhaseFn)> = vec![
        ("mix", |c| Box::pin(phase_mix(c))),
        ("hooks", |c| Box::pin(phase_hooks(c))),
        ("peer", |c| Box::pin(phase_peer(c))),
        ("scale", |c| Box::pin(phase_scale(c))),
        ("swap", |c| Box::pin(phase_swap(c))),
        ("memory", |c| Box::pin(phase_memory(c))),
    ];
    for (name, f) in phases {
        if !ctx.phase(name) {
            continue;
        }
        let t = Instant::now();
        eprintln!("== phase {name}");
        if let Err(e) = f(&mut ctx).await {
            eprintln!("!! phase {name} failed: {e:#}");
            ctx.r.notes.push(format!("phase {name} failed: {e:#}"));
        }
        eprintln!("== phase {name}: {:.1} s", t.elapsed().as_secs_f64());
    }
    let r = &ctx.r;
    println!("\n### Targets\n");
    println!("| figure | target | measured | met |");
    println!("|---|---|---:|---|");
    for (f, t, m, ok) in verdicts(r) {
        println!(
            "| {f} | {t} | {m} | {} |",
            ok.map_or("n/a", |b| if b { "yes" } else { "**no**" })
        );
    }
    if !r.notes.is_empty() {
        println!("\nnotes:");
        for n in &r.notes {
            println!("- {n}");
        }
    }
    let p5 = if r.p5.is_empty() {
        "n/a".to_owned()
    } else {
        r.p5.values()
            .map(|v| format!("{v:.2}"))
            .collect::<Vec<_>>()
            .join("/")
    };
    println!(
        "\nload average at end {}; total {:.1} s",
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "\nP1={}/{} P2={}/{} P3={}/{} P4={} P5={} P6={} P7={}/{} CMD={}/{} CPU={} CPU-read/probe={}/{} CPU-list/patch/append={}",
        fmt_opt(r.p1, |v| format!("{v:.2}")),
        fmt_opt(r.p1_min, |v| format!("{v:.2}")),
        fmt_opt(r.p2_us, |v| format!("{v:.0}us")),
        fmt_opt(r.p2_min_us, |v| format!("{v:.0}us")),
        fmt_opt(r.p3_reuse_us, |v| format!("{v:.0}us")),
        fmt_opt(r.p3_per_call_us, |v| format!("{v:.0}us")),
        fmt_opt(r.p4, |v| format!("{v:.2}")),
        p5,
        r.p6.map_or("n/a".into(), |v| v.to_string()),
        fmt_opt(r.p7_idle_mb, |v| format!("{v:.0}MB")),
        fmt_opt(r.p7_per_request_kb, |v| format!("{v:.1}KB")),
        fmt_opt(r.cmd.get(&16).copied(), |v| format!("{v:.2}")),
        fmt_opt(r.cmd.get(&1).copied(), |v| format!("{v:.2}")),
        fmt_opt(gw_cpu_32(r), |v| format!("{v:.0}us")),
        fmt_opt(r.gw_cpu_floor_us.get("read").copied(), |v| format!(
            "{v:.0}us"
        )),
        fmt_opt(r.gw_cpu_floor_us.get("probe").copied(), |v| format!(
            "{v:.0}us"
        )),
        ["list", "patch", "append"]
            .map(|k| fmt_opt(r.gw_cpu_floor_us.get(k).copied(), |v| format!("{v:.0}us")))
            .join("/"),
    );
    if let Some(p) = &ctx.a.json_out {
        let mut v = serde_json::to_value(&ctx.r)?;
        v["server"] = json!(ctx.a.server_label);
        v["quick"] = json!(ctx.a.quick);
        v["loadavg_end"] = json!(loadavg());
        std::fs::write(p, serde_json::to_string_pretty(&v)?)?;
    }
    Ok(())
}
