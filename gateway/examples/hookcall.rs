//! Diagnostic: host cost of a before-hook chain, in process.
//! `cargo run --release -p session-gateway --example hookcall -- <plugins/dist> <n> <reuse|per-call> <hooks> [thrash|idle|spin]`
//! `thrash` dirties 16 MiB and sleeps 0.5 ms before each chain (every cache cold);
//! `idle` only sleeps 1 ms, as a request does while its write waits for fsync;
//! `spin` waits 1 ms without sleeping (the core stays awake).
use std::sync::Arc;
use std::time::Instant;

use gateway::config::{Config, HookConfig};
use gateway::hooks::{HookHost, Subject};
use gateway::metadata::MetadataChange;
use serde_json::json;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let dist = &a[1];
    let n: usize = a[2].parse()?;
    let mode = &a[3];
    let k: usize = a[4].parse()?;
    let wait = a.get(5).map_or("none", String::as_str);
    let (thrash, idle, spin) = (wait == "thrash", wait == "idle", wait == "spin");
    let dir = tempfile::tempdir()?;
    let mut cfg = Config::default();
    cfg.plugins.cache_dir =
        std::env::var("HC_CACHE").map_or_else(|_| dir.path().join("cache"), Into::into);
    cfg.plugins.watch = false;
    cfg.storage.embedded.path = dir.path().join("g.redb");
    for i in 0..k {
        let text = format!(
            "name = \"allow-{i}\"\nwasm = \"{dist}/fixture_allow.wasm\"\nphase = \"before\"\nevents = [\"metadata.update\"]\ninstance = \"{mode}\"\non_error = \"deny\"\n"
        );
        let h: HookConfig = toml::from_str(&text)?;
        cfg.hooks.push(h);
    }
    let store = gateway::open_store(&cfg).await?;
    let host = Arc::new(HookHost::start(&cfg, None, store).await?);
    let subject = Subject {
        tenant: "default".into(),
        session_id: "s1".into(),
        session_type: "chat".into(),
    };
    let mut junk = vec![0u8; 16 << 20];
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let change = MetadataChange::Update(vec![
            ("status".into(), json!("active")),
            ("turns".into(), json!(i)),
            ("user.last_seen".into(), json!("2026-11-24T10:00:00Z")),
        ]);
        if thrash {
            for j in (0..junk.len()).step_by(64) {
                junk[j] = junk[j].wrapping_add(1);
            }
            tokio::time::sleep(std::time::Duration::from_micros(500)).await;
        }
        if spin {
            let t = Instant::now();
            while t.elapsed() < std::time::Duration::from_millis(1) {
                std::hint::spin_loop();
            }
        }
        if idle {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let loaded = host.snapshot();
        let t = Instant::now();
        let out = host.before_metadata(&loaded, &subject, change).await;
        lat.push(t.elapsed().as_nanos() as f64 / 1000.0);
        if let Err(e) = &out {
            eprintln!("call {i} failed: {e:?}");
        }
    }
    let per_plugin: Vec<String> = host
        .snapshot()
        .plugins
        .iter()
        .map(|p| {
            let s = &p.meta.stats;
            let calls = s.calls.load(std::sync::atomic::Ordering::Relaxed).max(1);
            format!(
                "{:.1}",
                s.latency_us_total
                    .load(std::sync::atomic::Ordering::Relaxed) as f64
                    / calls as f64
            )
        })
        .collect();
    println!(
        "in-plugin average per hook (µs): {}",
        per_plugin.join(" + ")
    );
    lat.sort_by(f64::total_cmp);
    let mean: f64 = lat.iter().sum::<f64>() / lat.len() as f64;
    println!(
        "{mode} x{k} wait={wait}: n={n} p50={:.1}us p90={:.1}us mean={:.1}us junk={}",
        lat[n / 2],
        lat[n * 9 / 10],
        mean,
        junk[0]
    );
    Ok(())
}
