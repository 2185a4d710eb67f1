//! The wasmtime side of hooks: one engine, one linker, a compiled component and
//! an instance pool per plugin, and the limits that contain a hostile plugin.
//!
//! - **Engine:** one per process, with epoch interruption (a ticker thread
//!   bumps the epoch every millisecond), fuel metering and the pooling
//!   allocator. Calls are async: a busy plugin yields to tokio at every tick,
//!   so it never pins a worker thread, and is trapped once its wall-clock
//!   budget (`timeout_ms`) is spent.
//! - **Limits per call:** a deadline (epoch), optional fuel, and `StoreLimits`
//!   on linear memory (`memory_mb`), instances, tables and memories.
//! - **Suspects:** the calls of a tenant whose recent calls to a plugin
//!   mostly failed run on one thread of their own at `SCHED_IDLE` priority;
//!   if they keep failing the plugin is quarantined for that tenant (see
//!   [`super::breaker`]). When busy work starves that thread, the caller
//!   runs the call itself after a few milliseconds, so `timeout_ms` holds.
//! - **Instances:** `reuse` keeps warm instances in a small pool (≈1 µs a
//!   call); `per-call` instantiates a fresh one each time. An instance that
//!   trapped or ran out of time is dropped, never reused.
//! - **Sandbox:** WASI is linked with an empty context: no files, no
//!   environment, no network, no stdio; the only way out is the `host`
//!   interface, whose `publish` is deny-by-default.
//! - **Artifacts:** compiled components are cached on disk under the wasm's
//!   sha256 and the engine's compatibility hash, with a checksum sidecar; only
//!   files the gateway wrote itself are ever deserialized.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, InstancePre, Linker, ResourceTable};
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::breaker::Breakers;
use super::v0_1_0 as v1;
use crate::config::{HookConfig, InstanceMode, OnError};
use crate::metadata::MetadataChange;
use crate::model::JsonObject;

/// Most warm instances kept per plugin in `reuse` mode.
const MAX_WARM: usize = 16;
/// Largest JSON a plugin may return or publish.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// Most notifications one hook call may publish.
const MAX_PUBLISH_PER_CALL: usize = 64;
/// Least time an instance's start-up may take before it is stopped.
const INSTANTIATE_BUDGET: Duration = Duration::from_secs(1);
/// Epoch tick while no plugin is loaded.
const IDLE_TICK: Duration = Duration::from_millis(100);
/// Epoch tick.
const TICK: Duration = Duration::from_millis(1);
/// Longest a suspect's call waits for the low-priority lane to start it
/// before its caller runs it (see `Plugin::call`).
const LANE_START_WAIT: Duration = Duration::from_millis(5);
/// How long past a call's deadline its caller waits for the lane's answer
/// (the lane notices the deadline at its next epoch tick).
const LANE_GRACE: Duration = Duration::from_millis(5);

/// The process-wide engine and linker.
pub struct Runtime {
    engine: Engine,
    active: Arc<std::sync::atomic::AtomicBool>,
    linker: Linker<HostState>,
    cache_dir: PathBuf,
    _ticker: Ticker,
}

struct Ticker(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    /// Builds the engine and linker and starts the epoch ticker.
    ///
    /// # Errors
    /// When wasmtime rejects the configuration.
    pub fn new(cache_dir: &Path) -> anyhow::Result<Self> {
        let mut cfg = wasmtime::Config::new();
        cfg.epoch_interruption(true)
            .consume_fuel(true)
            .wasm_component_model(true);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(1000)
            .total_core_instances(4000)
            .total_memories(2000)
            .total_tables(4000)
            .total_stacks(1000)
            .max_memory_size(1 << 30);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&cfg)
            .map_err(anyhow::Error::from)
            .context("creating the wasm engine")?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking WASI")?;
        v1::add_to_linker(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking gateway:hooks@0.1.0")?;

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let active = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (e, s, a) = (engine.clone(), stop.clone(), active.clone());
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    // With no plugin loaded nothing runs wasm: tick slowly
                    // instead of waking the CPU a thousand times a second.
                    std::thread::sleep(if a.load(Ordering::Relaxed) {
                        TICK
                    } else {
                        IDLE_TICK
                    });
                    e.increment_epoch();
                }
            })
            .context("starting the epoch ticker")?;
        Ok(Self {
            engine,
            active,
            linker,
            cache_dir: cache_dir.to_owned(),
            _ticker: Ticker(stop),
        })
    }

    /// Whether any plugin is loaded (the epoch ticker runs at full rate only then).
    pub fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Relaxed);
    }

    /// The engine (for `plugin check`).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn cache_key(&self, sha: &str) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!("{sha}-{:016x}", h.finish())
    }

    /// Compiles a component, through the on-disk artifact cache.
    ///
    /// # Errors
    /// When the bytes are not a valid component for this engine.
    pub fn compile(&self, bytes: &[u8], sha: &str) -> anyhow::Result<Component> {
        let key = self.cache_key(sha);
        let art = self.cache_dir.join(format!("{key}.cwasm"));
        let sum = self.cache_dir.join(format!("{key}.sha256"));
        if let Some(c) = self.load_cached(&art, &sum) {
            return Ok(c);
        }
        let compiled = self.engine.precompile_component(bytes)?;
        if let Err(e) = write_artifact(&self.cache_dir, &art, &sum, &compiled) {
            tracing::warn!(error = %e, dir = %self.cache_dir.display(), "cannot cache compiled plugin");
        }
        // Deserializing what we just produced in memory is as safe as compiling.
        self.deserialize(&compiled)
    }

    #[allow(unsafe_code)]
    fn deserialize(&self, compiled: &[u8]) -> anyhow::Result<Component> {
        // SAFETY: `compiled` was produced by `precompile_component` on this
        // very engine a moment ago, never read from outside the process.
        unsafe { Component::deserialize(&self.engine, compiled) }.map_err(anyhow::Error::from)
    }

    #[allow(unsafe_code)]
    fn load_cached(&self, art: &Path, sum: &Path) -> Option<Component> {
        let expected = std::fs::read_to_string(sum).ok()?;
        let bytes = std::fs::read(art).ok()?;
        if hex::encode(Sha256::digest(&bytes)) != expected.trim() {
            tracing::warn!(file = %art.display(), "cached plugin artifact fails its checksum; recompiling");
            return None;
        }
        // SAFETY: the artifact lives in the gateway's private cache directory,
        // was written by `write_artifact` from `precompile_component` output of
        // an engine with the same compatibility hash (part of the file name),
        // and its checksum matches the sidecar written with it.
        unsafe { Component::deserialize(&self.engine, &bytes) }.ok()
    }

    /// Prepares a component for instantiation: resolves imports and looks up
    /// the hook exports of a known WIT version.
    ///
    /// # Errors
    /// When it imports something the host does not provide, or exports no
    /// hook interface of a known version.
    pub fn prepare(&self, component: &Component) -> anyhow::Result<Prepared> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(anyhow::Error::from)
            .context("the component imports something the gateway does not provide")?;
        let metadata = v1::metadata_hook::GuestIndices::new(&pre).ok();
        let feedback = v1::feedback_hook::GuestIndices::new(&pre).ok();
        if metadata.is_none() && feedback.is_none() {
            return Err(anyhow!(
                "the component exports neither {} nor {}",
                v1::METADATA_EXPORT,
                v1::FEEDBACK_EXPORT
            ));
        }
        Ok(Prepared {
            pre,
            metadata,
            feedback,
        })
    }
}

fn write_artifact(dir: &Path, art: &Path, sum: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = art.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::write(sum, hex::encode(Sha256::digest(bytes)))?;
    std::fs::rename(tmp, art)
}

/// A component ready to instantiate, with its export indices.
pub struct Prepared {
    pre: InstancePre<HostState>,
    metadata: Option<v1::metadata_hook::GuestIndices>,
    feedback: Option<v1::feedback_hook::GuestIndices>,
}

impl Prepared {
    /// Exported hook interfaces, by WIT name.
    pub fn exports(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.metadata.is_some() {
            out.push(v1::METADATA_EXPORT);
        }
        if self.feedback.is_some() {
            out.push(v1::FEEDBACK_EXPORT);
        }
        out
    }
}

/// A notification a plugin published during an after-hook call. It is
/// persisted with the event's completion, so it is durable exactly when the
/// event is marked processed.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// Stable id derived from the event, the plugin and the call's position.
    pub id: String,
    /// Logical target.
    pub target: String,
    /// JSON payload text.
    pub payload: String,
}

/// Why `publish` refused.
pub enum PublishRefusal {
    /// The target is not in the plugin's grants.
    NotGranted,
    /// The payload is not JSON or too large.
    InvalidPayload,
    /// Publishing is not possible in this phase.
    Unavailable,
}

/// Per-store state: the plugin's identity, limits, WASI context and what it
/// published during the current call.
pub struct HostState {
    meta: Arc<PluginMeta>,
    limits: StoreLimits,
    wasi: WasiCtx,
    table: ResourceTable,
    deadline: Instant,
    /// Set during after-hooks: the event the call is about, from which
    /// notification ids are derived (so a re-run yields the same ids).
    publish_key: Option<String>,
    published: Vec<Published>,
}

impl HostState {
    pub(crate) fn plugin_name(&self) -> &str {
        &self.meta.name
    }

    pub(crate) fn config_json(&self) -> &str {
        &self.meta.config_json
    }

    pub(crate) fn publish_checked(
        &mut self,
        target: String,
        payload: String,
    ) -> Result<String, PublishRefusal> {
        if !self.meta.grants.iter().any(|g| g == &target) {
            self.meta
                .stats
                .publish_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(plugin = %self.meta.name, target, "publish refused: target not granted");
            return Err(PublishRefusal::NotGranted);
        }
        if payload.len() > MAX_OUTPUT_BYTES
            || serde_json::from_str::<serde::de::IgnoredAny>(&payload).is_err()
        {
            return Err(PublishRefusal::InvalidPayload);
        }
        let Some(key) = &self.publish_key else {
            return Err(PublishRefusal::Unavailable);
        };
        if self.published.len() >= MAX_PUBLISH_PER_CALL {
            return Err(PublishRefusal::Unavailable);
        }
        let seed = format!("{key}/{}/{}", self.meta.name, self.published.len());
        let id = hex::encode(&Sha256::digest(seed.as_bytes())[..16]);
        self.published.push(Published {
            id: id.clone(),
            target,
            payload,
        });
        Ok(id)
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Counters of one plugin, shown by the admin API and metrics.
#[derive(Default)]
pub struct PluginStats {
    /// Calls made.
    pub calls: AtomicU64,
    /// Calls that failed (trap, timeout, limit, bad output).
    pub errors: AtomicU64,
    /// Sum of call latencies, in microseconds.
    pub latency_us_total: AtomicU64,
    /// Slowest call, in microseconds.
    pub latency_us_max: AtomicU64,
    /// `publish` calls refused for lack of a grant.
    pub publish_refused: AtomicU64,
    /// Instances created.
    pub instantiations: AtomicU64,
}

/// What does not change for the life of a loaded plugin.
pub struct PluginMeta {
    /// Name from the config.
    pub name: String,
    /// The `config` table as JSON text.
    pub config_json: String,
    /// Targets it may publish to.
    pub grants: Vec<String>,
    /// Counters (shared by every instance).
    pub stats: PluginStats,
}

/// How a hook call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The call trapped, ran out of time, fuel or memory.
    #[error("{0}")]
    Trap(String),
    /// The plugin answered something invalid.
    #[error("{0}")]
    BadOutput(String),
    /// The plugin does not export the needed interface.
    #[error("plugin does not export {0}")]
    Missing(&'static str),
    /// Not called: the tenant's breaker is open (see [`super::breaker`]).
    #[error("quarantined after repeated failures; runs again in {} s", .0.as_secs() + 1)]
    Quarantined(Duration),
}

/// What a before-hook decided, its rewrite already checked like a client's input.
#[derive(Debug)]
pub enum Verdict<T> {
    /// Go on unchanged.
    Allow,
    /// Refuse, with the plugin's reason.
    Deny(String),
    /// Go on with this instead.
    Rewrite(T),
}

struct Warm {
    store: Store<HostState>,
    metadata: Option<v1::metadata_hook::Guest>,
    feedback: Option<v1::feedback_hook::Guest>,
}

/// A loaded plugin: its compiled component, limits and warm instances.
pub struct Plugin {
    /// Identity, config and counters.
    pub meta: Arc<PluginMeta>,
    /// The `[[hooks]]` entry it was loaded from.
    pub config: HookConfig,
    /// sha256 of the wasm file.
    pub sha256: String,
    /// When it was loaded (Unix ms).
    pub loaded_at: i64,
    /// Exported interfaces.
    pub exports: Vec<&'static str>,
    /// Per-tenant quarantine after repeated failures.
    pub breakers: Breakers,
    prepared: Prepared,
    engine: Engine,
    warm: Mutex<Vec<Warm>>,
}

impl Plugin {
    /// Wraps a prepared component with its configuration.
    pub fn new(rt: &Runtime, config: HookConfig, sha256: String, prepared: Prepared) -> Self {
        let config_json = config.config.as_ref().map_or_else(
            || "{}".to_owned(),
            |t| serde_json::to_string(t).unwrap_or_else(|_| "{}".into()),
        );
        Self {
            meta: Arc::new(PluginMeta {
                name: config.name.clone(),
                config_json,
                grants: config.grants.publish.clone(),
                stats: PluginStats::default(),
            }),
            exports: prepared.exports(),
            breakers: Breakers::new(config.breaker),
            sha256,
            loaded_at: crate::model::now_ms(),
            config,
            prepared,
            engine: rt.engine.clone(),
            warm: Mutex::new(Vec::new()),
        }
    }

    /// Whether the plugin fails closed.
    pub fn fails_closed(&self) -> bool {
        self.config.on_error == OnError::Deny
    }

    async fn instantiate(&self) -> anyhow::Result<Warm> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(
                usize::try_from(self.config.memory_mb.saturating_mul(1 << 20))
                    .unwrap_or(usize::MAX),
            )
            .instances(64)
            .tables(64)
            .memories(32)
            .trap_on_grow_failure(false)
            .build();
        let state = HostState {
            meta: self.meta.clone(),
            limits,
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            // Start-up code gets its own budget, at least INSTANTIATE_BUDGET:
            // a cold instance must not fail a call on a busy machine, and a
            // plugin that loops at start-up is still stopped.
            deadline: Instant::now()
                + Duration::from_millis(self.config.timeout_ms).max(INSTANTIATE_BUDGET),
            publish_key: None,
            published: Vec::new(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store.set_epoch_deadline(1);
        store.set_fuel(u64::MAX)?;
        // Counted as attempted, so `instantiations` is the number of fresh
        // instances calls needed, whether or not their start-up succeeded.
        self.meta
            .stats
            .instantiations
            .fetch_add(1, Ordering::Relaxed);
        let instance = self.prepared.pre.instantiate_async(&mut store).await?;
        let metadata = self
            .prepared
            .metadata
            .as_ref()
            .map(|i| i.load(&mut store, &instance))
            .transpose()?;
        let feedback = self
            .prepared
            .feedback
            .as_ref()
            .map(|i| i.load(&mut store, &instance))
            .transpose()?;
        Ok(Warm {
            store,
            metadata,
            feedback,
        })
    }

    async fn checkout(&self, publish_key: Option<String>) -> Result<Warm, CallError> {
        let pooled = match self.config.instance {
            InstanceMode::Reuse => self.warm.lock().expect("warm pool lock").pop(),
            InstanceMode::PerCall => None,
        };
        let mut w = match pooled {
            Some(w) => w,
            None => {
                // Instantiation runs guest start-up code: it gets the same budget.
                self.instantiate()
                    .await
                    .map_err(|e| CallError::Trap(format!("instantiation failed: {e:#}")))?
            }
        };
        let data = w.store.data_mut();
        data.deadline = Instant::now() + Duration::from_millis(self.config.timeout_ms);
        data.publish_key = publish_key;
        data.published.clear();
        w.store.set_epoch_deadline(1);
        w.store
            .set_fuel(self.config.fuel.unwrap_or(u64::MAX))
            .map_err(|e| CallError::Trap(e.to_string()))?;
        Ok(w)
    }

    /// Readies one warm instance ahead of the first call (reuse mode), so a
    /// freshly loaded or swapped plugin does not make its first callers wait.
    ///
    /// # Errors
    /// When the component fails to instantiate.
    pub async fn prewarm(&self) -> anyhow::Result<()> {
        if self.config.instance == InstanceMode::Reuse {
            let w = self.instantiate().await?;
            self.checkin(w);
        }
        Ok(())
    }

    fn checkin(&self, w: Warm) {
        if self.config.instance == InstanceMode::Reuse {
            let mut pool = self.warm.lock().expect("warm pool lock");
            if pool.len() < MAX_WARM {
                pool.push(w);
            }
        }
    }

    fn record(&self, tenant: &str, started: Instant, ok: bool) {
        if let Some((failures, calls)) = self.breakers.record(tenant, ok, Instant::now()) {
            tracing::warn!(
                plugin = %self.meta.name,
                tenant,
                failures,
                calls,
                cooldown_ms = self.config.breaker.cooldown_ms,
                "plugin keeps failing for this tenant; quarantined (calls get its on_error outcome without running it)"
            );
        }
        let s = &self.meta.stats;
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        s.calls.fetch_add(1, Ordering::Relaxed);
        s.latency_us_total.fetch_add(us, Ordering::Relaxed);
        s.latency_us_max.fetch_max(us, Ordering::Relaxed);
        if !ok {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Runs one call for `tenant` (unless the tenant's breaker is open).
    ///
    /// A suspect's call (most of its calls in the window failed) is offered
    /// to the [`suspect_lane`], so that a plugin burning its budget only gets
    /// CPU nothing else wants. But that idle-priority thread may not run at
    /// all while other work keeps the cores busy, and `timeout_ms` must still
    /// bound the call for its caller: when the lane has not started the call
    /// within [`LANE_START_WAIT`] (a quarter of `timeout_ms` at most), the
    /// caller runs it itself, at normal priority, with its full budget. So a
    /// call ends within `timeout_ms` plus that wait (plus [`LANE_GRACE`] for
    /// one the lane started), whatever the load, and a healthy plugin that
    /// timed out once on a busy machine is not starved into failing again.
    async fn call<R: Send + 'static>(
        self: &Arc<Self>,
        tenant: &str,
        publish_key: Option<String>,
        f: impl for<'w> FnOnce(&'w mut Warm) -> futures::future::BoxFuture<'w, Result<R, CallError>>
        + Send
        + 'static,
    ) -> Result<(R, Vec<Published>), CallError> {
        let started = Instant::now();
        let suspect = self
            .breakers
            .admit(tenant, started)
            .map_err(CallError::Quarantined)?;
        let out = if suspect {
            self.breakers.isolated.fetch_add(1, Ordering::Relaxed);
            let timeout = Duration::from_millis(self.config.timeout_ms);
            let wait = (timeout / 4).clamp(Duration::from_millis(1), LANE_START_WAIT);
            // Whoever takes the job first runs it: the lane, or the caller.
            let job = Arc::new(Mutex::new(Some((publish_key, f))));
            let (this, lane_job) = (self.clone(), job.clone());
            let mut task = suspect_lane().spawn(async move {
                let taken = lane_job.lock().expect("job lock").take();
                match taken {
                    Some((key, f)) => Some(this.run(key, f).await),
                    None => None,
                }
            });
            let joined = |r: Result<Option<Result<_, CallError>>, tokio::task::JoinError>| match r {
                Ok(Some(out)) => out,
                Ok(None) => Err(CallError::Trap("not run".into())),
                Err(e) => Err(CallError::Trap(format!("failed: {e}"))),
            };
            tokio::select! {
                r = &mut task => joined(r),
                () = tokio::time::sleep(wait) => {
                    let taken = job.lock().expect("job lock").take();
                    match taken {
                        Some((key, f)) => {
                            // The lane did not get CPU in time: a busy machine.
                            self.breakers.inline.fetch_add(1, Ordering::Relaxed);
                            self.run(key, f).await
                        }
                        None => {
                            let bound = Instant::now() + timeout + LANE_GRACE;
                            match tokio::time::timeout_at(bound.into(), task).await {
                                Ok(r) => joined(r),
                                // Preempted past its deadline on the lane: it
                                // is interrupted (and its instance dropped)
                                // when it runs again.
                                Err(_) => Err(CallError::Trap("timed out".into())),
                            }
                        }
                    }
                }
            }
        } else {
            self.run(publish_key, f).await
        };
        self.record(tenant, started, out.is_ok());
        out
    }

    /// Runs one call on an instance, discarding the instance if it failed.
    async fn run<R>(
        &self,
        publish_key: Option<String>,
        f: impl for<'w> FnOnce(&'w mut Warm) -> futures::future::BoxFuture<'w, Result<R, CallError>>,
    ) -> Result<(R, Vec<Published>), CallError> {
        let mut w = self.checkout(publish_key).await?;
        let out = f(&mut w).await;
        match out {
            Ok(r) => {
                let published = std::mem::take(&mut w.store.data_mut().published);
                self.checkin(w);
                Ok((r, published))
            }
            // A trapped (or misbehaving) instance is never reused. Tearing it
            // down hands its linear memory back to the pool, releasing every
            // page it touched (up to memory_mb): milliseconds for a large
            // one, so not on a request worker.
            Err(e) => {
                tokio::task::spawn_blocking(move || drop(w));
                Err(e)
            }
        }
    }

    /// `metadata-hook.before-change`.
    ///
    /// # Errors
    /// When the call fails or answers an invalid rewrite.
    pub async fn before_change(
        self: &Arc<Self>,
        session: &v1::SessionRef,
        change: &MetadataChange,
    ) -> Result<Verdict<MetadataChange>, CallError> {
        let (session2, change) = (session.clone(), v1::change_to_wit(change));
        self.call(&session.tenant, None, move |w| {
            Box::pin(async move {
                let g = w
                    .metadata
                    .clone()
                    .ok_or(CallError::Missing(v1::METADATA_EXPORT))?;
                let verdict = g
                    .call_before_change(&mut w.store, &session2, &change)
                    .await
                    .map_err(trap)?;
                check_verdict_size(&verdict)?;
                Ok(match verdict {
                    v1::MetadataVerdict::Allow => Verdict::Allow,
                    v1::MetadataVerdict::Deny(reason) => Verdict::Deny(reason),
                    v1::MetadataVerdict::Rewrite(c) => {
                        Verdict::Rewrite(v1::change_from_wit(c).map_err(CallError::BadOutput)?)
                    }
                })
            })
        })
        .await
        .map(|(v, _)| v)
    }

    /// `metadata-hook.after-change`; returns what it published.
    ///
    /// # Errors
    /// When the call fails.
    pub async fn after_change(
        self: &Arc<Self>,
        session: &v1::SessionRef,
        change: &v1::WitChange,
        changed: &[String],
        values: &str,
        info: v1::CommitInfo,
        publish_key: String,
    ) -> Result<Vec<Published>, CallError> {
        let (session, change, changed, values) = (
            session.clone(),
            change.clone(),
            changed.to_vec(),
            values.to_owned(),
        );
        let tenant = session.tenant.clone();
        self.call(&tenant, Some(publish_key), move |w| {
            Box::pin(async move {
                let g = w
                    .metadata
                    .clone()
                    .ok_or(CallError::Missing(v1::METADATA_EXPORT))?;
                g.call_after_change(&mut w.store, &session, &change, &changed, &values, &info)
                    .await
                    .map_err(trap)
            })
        })
        .await
        .map(|((), p)| p)
    }

    /// `metadata-hook.on-get`.
    ///
    /// # Errors
    /// When the call fails or answers something that is not a JSON object.
    pub async fn on_get(
        self: &Arc<Self>,
        session: &v1::SessionRef,
        metadata: &str,
    ) -> Result<JsonObject, CallError> {
        let (session2, metadata) = (session.clone(), metadata.to_owned());
        self.call(&session.tenant, None, move |w| {
            Box::pin(async move {
                let g = w
                    .metadata
                    .clone()
                    .ok_or(CallError::Missing(v1::METADATA_EXPORT))?;
                let out = g
                    .call_on_get(&mut w.store, &session2, &metadata)
                    .await
                    .map_err(trap)?;
                check_len("on-get result", out.len())?;
                v1::object_from_wit("on-get result", &out).map_err(CallError::BadOutput)
            })
        })
        .await
        .map(|(v, _)| v)
    }

    /// `feedback-hook.before-add`.
    ///
    /// # Errors
    /// When the call fails or answers an invalid rewrite.
    pub async fn before_add(
        self: &Arc<Self>,
        session: &v1::SessionRef,
        feedback: &str,
    ) -> Result<Verdict<JsonObject>, CallError> {
        let (session2, feedback) = (session.clone(), feedback.to_owned());
        self.call(&session.tenant, None, move |w| {
            Box::pin(async move {
                let g = w
                    .feedback
                    .clone()
                    .ok_or(CallError::Missing(v1::FEEDBACK_EXPORT))?;
                let v = g
                    .call_before_add(&mut w.store, &session2, &feedback)
                    .await
                    .map_err(trap)?;
                if let v1::FeedbackVerdict::Rewrite(s) | v1::FeedbackVerdict::Deny(s) = &v {
                    check_len("verdict", s.len())?;
                }
                Ok(match v {
                    v1::FeedbackVerdict::Allow => Verdict::Allow,
                    v1::FeedbackVerdict::Deny(reason) => Verdict::Deny(reason),
                    v1::FeedbackVerdict::Rewrite(text) => {
                        let fb = v1::object_from_wit("feedback rewrite", &text)
                            .map_err(CallError::BadOutput)?;
                        crate::model::validate_feedback(&fb)
                            .map_err(|e| CallError::BadOutput(format!("feedback rewrite: {e}")))?;
                        Verdict::Rewrite(fb)
                    }
                })
            })
        })
        .await
        .map(|(v, _)| v)
    }

    /// `feedback-hook.after-add`; returns what it published.
    ///
    /// # Errors
    /// When the call fails.
    pub async fn after_add(
        self: &Arc<Self>,
        session: &v1::SessionRef,
        feedback: &str,
        info: v1::CommitInfo,
        publish_key: String,
    ) -> Result<Vec<Published>, CallError> {
        let tenant = session.tenant.clone();
        let (session, feedback) = (session.clone(), feedback.to_owned());
        self.call(&tenant, Some(publish_key), move |w| {
            Box::pin(async move {
                let g = w
                    .feedback
                    .clone()
                    .ok_or(CallError::Missing(v1::FEEDBACK_EXPORT))?;
                g.call_after_add(&mut w.store, &session, &feedback, &info)
                    .await
                    .map_err(trap)
            })
        })
        .await
        .map(|((), p)| p)
    }
}

fn trap(e: wasmtime::Error) -> CallError {
    let msg = match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => "timed out".to_owned(),
        Some(wasmtime::Trap::OutOfFuel) => "ran out of fuel".to_owned(),
        Some(t) => format!("trapped: {t}"),
        None => format!("failed: {e:#}"),
    };
    CallError::Trap(msg)
}

fn check_len(what: &str, len: usize) -> Result<(), CallError> {
    if len > MAX_OUTPUT_BYTES {
        return Err(CallError::BadOutput(format!(
            "{what} is {len} bytes, over the {MAX_OUTPUT_BYTES}-byte limit"
        )));
    }
    Ok(())
}

fn check_verdict_size(v: &v1::MetadataVerdict) -> Result<(), CallError> {
    let len = match v {
        v1::MetadataVerdict::Allow => 0,
        v1::MetadataVerdict::Deny(r) => r.len(),
        v1::MetadataVerdict::Rewrite(v1::WitChange::Update(a)) => {
            a.iter().map(|x| x.path.len() + x.value.len()).sum()
        }
        v1::MetadataVerdict::Rewrite(v1::WitChange::Delete(k)) => k.iter().map(String::len).sum(),
    };
    check_len("verdict", len)
}

/// Where the calls of suspects run: one thread of its own at the lowest CPU
/// priority (`SCHED_IDLE`), so a plugin that keeps failing for a tenant gets
/// only CPU that nothing else wants until its breaker opens. Process-wide,
/// created on first use, never dropped.
fn suspect_lane() -> &'static tokio::runtime::Handle {
    static LANE: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    LANE.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("wasm-suspect")
            .on_thread_start(lowest_priority)
            .enable_all()
            .build()
            .expect("a one-thread runtime can be built")
    })
    .handle()
}

/// Moves the calling thread to `SCHED_IDLE` (always allowed, no privilege needed).
#[allow(unsafe_code)]
fn lowest_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid,
    // initialised parameter; it only reads `param`.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &raw const param) };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower the suspect lane's priority");
    }
}

/// Reads a wasm file and returns its bytes and sha256 (hex).
///
/// # Errors
/// When the file cannot be read.
pub fn read_wasm(path: &Path) -> anyhow::Result<(Vec<u8>, String)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let sha = hex::encode(Sha256::digest(&bytes));
    Ok((bytes, sha))
}
