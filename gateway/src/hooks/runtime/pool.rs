//! A loaded plugin: its compiled component, limits, warm instances, and the
//! one path every call takes (breaker, suspect lane, checkout, run, record).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, StoreLimitsBuilder};
use wasmtime_wasi::WasiCtx;

use super::CallError;
use super::deadline::{self, YIELD_FUEL};
use super::engine::Runtime;
use super::host::{HostState, PluginMeta, PluginStats, Published};
use super::version::{Exports, Prepared};
use crate::config::{HookConfig, InstanceMode, OnError};
use crate::hooks::breaker::Breakers;

/// Most warm instances kept per plugin in `reuse` mode.
const MAX_WARM: usize = 16;
/// Fresh instances kept ready per plugin in `per-call` mode, instantiated
/// off the request path; each serves one call and is then dropped.
const READY: usize = 16;
/// The ready lane is woken once `ready` has fallen by this many (or this
/// many spent instances wait for their teardown): one wake-up of that
/// thread per `REFILL_BATCH` calls, not per call. Waking the parked lane is
/// the dearest part of a `per-call` call for its caller: 80–220 µs of the
/// caller's time on the 2-core development VM (the wake of an idle vCPU),
/// against ~20 µs for the instantiation the lane then does. At 2 (with 4
/// ready) that wake cost 3 per-call hooks ~50 µs per request; at 8 it is
/// spread over 8 calls (BENCHMARKS.md, "Per-call hooks: the wake-up of the
/// ready lane was most of their cost"). The price is memory: up to `READY + REFILL_BATCH` pool
/// slots per plugin, each keeping at most 1 MiB (`engine::KEEP_RESIDENT`) of what its
/// instances touched.
const REFILL_BATCH: usize = 8;
/// Least time an instance's start-up may take before it is stopped.
const INSTANTIATE_BUDGET: Duration = Duration::from_secs(1);
/// Longest a suspect's call waits for the low-priority lane to start it
/// before its caller runs it (see `Plugin::call`).
const LANE_START_WAIT: Duration = Duration::from_millis(5);
/// How long past a call's deadline its caller waits for the lane's answer
/// (the lane notices the deadline at the call's next yield or timer).
const LANE_GRACE: Duration = Duration::from_millis(5);

/// An instance with its exports, ready for a call.
pub(super) struct Warm {
    pub(super) store: Store<HostState>,
    pub(super) exports: Exports,
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
    /// The WIT package it is served as, e.g. `gateway:hooks@0.1.0`.
    pub wit: &'static str,
    prepared: Prepared,
    engine: Engine,
    warm: Mutex<Vec<Warm>>,
    /// `per-call`: fresh instances no call has used, at most [`READY`].
    /// They belong to this version: a hot swap drops them with it.
    ready: Mutex<Vec<Warm>>,
    /// `per-call`: instances that served their call, waiting for the ready
    /// lane to tear them down.
    spent: Mutex<Vec<Warm>>,
    /// Whether a task is refilling `ready` (one at a time).
    refilling: AtomicBool,
    /// Swapped out or removed: `ready` is emptied and not refilled.
    retired: AtomicBool,
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
            wit: prepared.wit(),
            breakers: Breakers::new(config.breaker),
            sha256,
            loaded_at: crate::model::now_ms(),
            config,
            prepared,
            engine: rt.engine.clone(),
            warm: Mutex::new(Vec::new()),
            ready: Mutex::new(Vec::new()),
            spent: Mutex::new(Vec::new()),
            refilling: AtomicBool::new(false),
            retired: AtomicBool::new(false),
        }
    }

    /// This version was swapped out or removed: drops its ready instances
    /// now (calls still in flight finish on theirs) and readies no more.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        let ready = std::mem::take(&mut *self.ready.lock().expect("ready lock"));
        drop(ready);
        drop(std::mem::take(&mut *self.spent.lock().expect("spent lock")));
    }

    /// Its compiled component, when its wasm's sha256 is `sha`.
    pub fn component_of(&self, sha: &str) -> Option<wasmtime::component::Component> {
        (self.sha256 == sha).then(|| self.prepared.pre.component().clone())
    }

    /// How many fresh instances are ready for `per-call` calls.
    pub fn ready_instances(&self) -> usize {
        self.ready.lock().expect("ready lock").len()
    }

    /// Whether the plugin fails closed.
    pub fn fails_closed(&self) -> bool {
        self.config.on_error == OnError::Deny
    }

    /// A fresh instance; `count` adds it to `instantiations` (an instance
    /// readied ahead of a call is counted when a call takes it).
    async fn instantiate(&self, count: bool) -> anyhow::Result<Warm> {
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
            publish_key: None,
            published: Vec::new(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.fuel_async_yield_interval(Some(YIELD_FUEL))?;
        store.set_fuel(u64::MAX)?;
        // Counted as attempted, so `instantiations` is the number of fresh
        // instances calls needed, whether or not their start-up succeeded.
        if count {
            self.count_instance();
        }
        // Start-up code gets its own budget, at least INSTANTIATE_BUDGET: a
        // cold instance must not fail a call on a busy machine, and a plugin
        // that loops or sleeps at start-up is still stopped.
        let budget = Duration::from_millis(self.config.timeout_ms).max(INSTANTIATE_BUDGET);
        let instance = deadline::by(
            Instant::now() + budget,
            self.prepared.pre.instantiate_async(&mut store),
        )
        .await
        .map_err(|deadline::TimedOut| anyhow::anyhow!("start-up timed out"))??;
        let exports = self.prepared.indices.load(&mut store, &instance)?;
        Ok(Warm { store, exports })
    }

    fn count_instance(&self) {
        self.meta
            .stats
            .instantiations
            .fetch_add(1, Ordering::Relaxed);
    }

    /// An instance for one call.
    async fn checkout(self: &Arc<Self>, publish_key: Option<String>) -> Result<Warm, CallError> {
        let pooled = match self.config.instance {
            InstanceMode::Reuse => self.warm.lock().expect("warm pool lock").pop(),
            InstanceMode::PerCall => {
                // Topped up when the call ends (`run`), in the same hand-off
                // to the ready lane as the spent instance: one wake-up of
                // that thread per call, not two.
                let ready = self.ready.lock().expect("ready lock").pop();
                if ready.is_some() {
                    self.count_instance();
                }
                ready
            }
        };
        let mut w = match pooled {
            Some(w) => w,
            None => {
                // Instantiation runs guest start-up code: it gets the same budget.
                self.instantiate(true)
                    .await
                    .map_err(|e| CallError::Trap(format!("instantiation failed: {e:#}")))?
            }
        };
        let data = w.store.data_mut();
        data.publish_key = publish_key;
        data.published.clear();
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
        match self.config.instance {
            InstanceMode::Reuse => {
                let w = self.instantiate(true).await?;
                self.checkin(w);
            }
            InstanceMode::PerCall => {
                let w = self.instantiate(false).await?;
                self.ready.lock().expect("ready lock").push(w);
            }
        }
        Ok(())
    }

    /// `per-call`: queues `spent` (an instance that served its call) for
    /// teardown and, once `ready` has fallen by [`REFILL_BATCH`] or as many
    /// spent instances wait, wakes the ready lane to drop them and top
    /// `ready` up to [`READY`], in a task of its own, so neither the
    /// teardown nor the next call's instantiation is on a request's path.
    /// The task holds the plugin only while it instantiates: a swapped-out
    /// version stops being refilled once its last call ended, and its
    /// ready instances go with it.
    fn refill(self: &Arc<Self>, spent: Option<Warm>) {
        let waiting = {
            let mut s = self.spent.lock().expect("spent lock");
            s.extend(spent);
            s.len()
        };
        let ready = self.ready.lock().expect("ready lock").len();
        if ready > READY - REFILL_BATCH && waiting < REFILL_BATCH {
            return;
        }
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let plugin = Arc::downgrade(self);
        // On a thread of its own: a task spawned on a request worker runs
        // there as soon as the request awaits its store write, and then
        // delays it.
        ready_lane().spawn(async move {
            while let Some(p) = plugin.upgrade() {
                drop(std::mem::take(&mut *p.spent.lock().expect("spent lock")));
                if p.retired.load(Ordering::Acquire)
                    || p.ready.lock().expect("ready lock").len() >= READY
                {
                    p.refilling.store(false, Ordering::Release);
                    // Calls that ended since the drain above saw `refilling`
                    // and left their instance here: drop it now rather than
                    // hold it until a later call wakes the lane.
                    drop(std::mem::take(&mut *p.spent.lock().expect("spent lock")));
                    return;
                }
                match p.instantiate(false).await {
                    Ok(w) => {
                        let mut ready = p.ready.lock().expect("ready lock");
                        if ready.len() < READY && !p.retired.load(Ordering::Acquire) {
                            ready.push(w);
                        }
                    }
                    Err(e) => {
                        // Calls instantiate for themselves and report it.
                        tracing::debug!(plugin = %p.meta.name, error = %format!("{e:#}"), "readying an instance failed");
                        p.refilling.store(false, Ordering::Release);
                        return;
                    }
                }
            }
        });
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
        let now = Instant::now();
        if let Some((failures, calls)) = self.breakers.record(tenant, ok, now) {
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
        let us = u64::try_from((now - started).as_micros()).unwrap_or(u64::MAX);
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
    pub(super) async fn call<R: Send + 'static>(
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
                    Some((key, f)) => Some(this.run(key, f, Instant::now()).await),
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
                            self.run(key, f, Instant::now()).await
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
            self.run(publish_key, f, started).await
        };
        self.record(tenant, started, out.is_ok());
        out
    }

    /// Runs one call on an instance, discarding the instance if it failed;
    /// its deadline is `timeout_ms` after `start`.
    async fn run<R>(
        self: &Arc<Self>,
        publish_key: Option<String>,
        f: impl for<'w> FnOnce(&'w mut Warm) -> futures::future::BoxFuture<'w, Result<R, CallError>>,
        start: Instant,
    ) -> Result<(R, Vec<Published>), CallError> {
        let mut w = match self.checkout(publish_key).await {
            Ok(w) => w,
            Err(e) => {
                self.refill_after_failure();
                return Err(e);
            }
        };
        let deadline = start + Duration::from_millis(self.config.timeout_ms);
        // Past the deadline the call's future is dropped mid-run, unwinding
        // the guest: the instance is discarded below like a trapped one.
        let out = deadline::by(deadline, f(&mut w))
            .await
            .unwrap_or_else(|deadline::TimedOut| Err(CallError::Trap("timed out".into())));
        match out {
            Ok(r) => {
                let published = std::mem::take(&mut w.store.data_mut().published);
                match self.config.instance {
                    InstanceMode::Reuse => self.checkin(w),
                    // Never reused: torn down off the request's path.
                    InstanceMode::PerCall => self.refill(Some(w)),
                }
                Ok((r, published))
            }
            // A trapped (or misbehaving) instance is never reused. Tearing it
            // down hands its linear memory back to the pool, releasing every
            // page it touched (up to memory_mb): milliseconds for a large
            // one, so not on a request worker.
            Err(e) => {
                tokio::task::spawn_blocking(move || drop(w));
                self.refill_after_failure();
                Err(e)
            }
        }
    }

    /// `per-call`: a call that failed took (or found no) ready instance and
    /// hands none back; tops `ready` up all the same.
    fn refill_after_failure(self: &Arc<Self>) {
        if self.config.instance == InstanceMode::PerCall {
            self.refill(None);
        }
    }
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

/// Where `per-call` instances are readied and torn down ([`Plugin::refill`]):
/// one thread of its own at normal priority, off the request workers.
/// Process-wide, created on first use, never dropped.
fn ready_lane() -> &'static tokio::runtime::Handle {
    static LANE: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    LANE.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("wasm-ready")
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
