//! The process-wide engine and linker, and the epoch ticker that enforces
//! call deadlines.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use wasmtime::component::Linker;
use wasmtime::{Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::host::HostState;
use crate::hooks::{v0_1_0, v0_2_0};

/// Bytes of each linear memory kept resident (reset by memset, not madvise)
/// when its instance is dropped.
const KEEP_RESIDENT: usize = 1 << 20;
/// The same for each table.
const KEEP_RESIDENT_TABLE: usize = 64 << 10;
/// Epoch tick while a call is in flight.
const TICK: Duration = Duration::from_millis(1);
/// How long the ticker keeps ticking after the last call ended before it
/// parks: the calls of one request and of back-to-back requests do not pay a
/// thread wake-up each, and the ticker stops within 5 ms once calls stop
/// (calls further apart than that pay one `unpark`, a few µs).
const LINGER_TICKS: u32 = 5;

/// The process-wide engine and linker.
pub struct Runtime {
    pub(super) engine: Engine,
    pub(super) linker: Linker<HostState>,
    pub(super) cache_dir: PathBuf,
    pub(super) ticker: Arc<Ticker>,
}

/// Bumps the engine's epoch every `TICK` (1 ms) while some call is in flight, and
/// sleeps (parked, no wake-ups at all) while none is: a plugin's deadline is
/// checked at each tick, and only a running call has one.
pub struct Ticker {
    stop: AtomicBool,
    in_flight: AtomicUsize,
    parked: AtomicBool,
    ticks: AtomicU64,
    thread: std::sync::OnceLock<std::thread::Thread>,
}

impl Ticker {
    fn run(&self, engine: &Engine) {
        let mut idle = 0u32;
        while !self.stop.load(Ordering::Relaxed) {
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                idle += 1;
                if idle > LINGER_TICKS {
                    // Announce the park, then re-check: a call that began in
                    // between either is seen here or sees `parked` and unparks.
                    self.parked.store(true, Ordering::SeqCst);
                    if self.in_flight.load(Ordering::SeqCst) == 0
                        && !self.stop.load(Ordering::Relaxed)
                    {
                        std::thread::park();
                    }
                    self.parked.store(false, Ordering::SeqCst);
                    idle = 0;
                    continue;
                }
            } else {
                idle = 0;
            }
            std::thread::sleep(TICK);
            engine.increment_epoch();
            self.ticks.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn wake(&self) {
        // Read first: while the ticker is ticking (the common case under
        // load) a call writes nothing to this shared line. SeqCst on both
        // sides: either the ticker's re-check sees the call in flight, or
        // this load sees `parked` (see `run`).
        if self.parked.load(Ordering::SeqCst)
            && self.parked.swap(false, Ordering::SeqCst)
            && let Some(t) = self.thread.get()
        {
            t.unpark();
        }
    }

    /// Marks a call in flight until the guard is dropped.
    pub(super) fn enter(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.wake();
        InFlight(self)
    }

    /// Epoch ticks so far (tests watch it stand still when idle).
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Whether the ticker is parked (no call in flight for a while).
    pub fn is_parked(&self) -> bool {
        self.parked.load(Ordering::SeqCst)
    }
}

/// A call in flight: keeps the ticker ticking (see [`Ticker::enter`]).
pub(super) struct InFlight<'a>(&'a Ticker);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.thread.get() {
            t.unpark();
        }
    }
}

impl Runtime {
    /// Builds the engine and linker (WASI and every supported WIT version's
    /// `host`) and starts the epoch ticker.
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
            .max_memory_size(1 << 30)
            // A per-call instance is torn down after every call. By default
            // its memory is reset with madvise, so the next instance in that
            // slot page-faults every page it touches again (a Rust plugin
            // touches a few hundred KiB). Keeping the low MiB resident
            // resets it with memset instead, and PAGEMAP_SCAN (Linux 6.7+,
            // when present) limits that to the pages actually written. The
            // memory is still zeroed between instances.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT_TABLE)
            .pagemap_scan(Enabled::Auto);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&cfg)
            .map_err(anyhow::Error::from)
            .context("creating the wasm engine")?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking WASI")?;
        v0_1_0::add_to_linker(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking gateway:hooks@0.1.0")?;
        v0_2_0::add_to_linker(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking gateway:hooks@0.2.0")?;

        let ticker = Arc::new(Ticker {
            stop: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            thread: std::sync::OnceLock::new(),
        });
        let (e, t) = (engine.clone(), ticker.clone());
        let handle = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || t.run(&e))
            .context("starting the epoch ticker")?;
        let _ = ticker.thread.set(handle.thread().clone());
        Ok(Self {
            engine,
            linker,
            cache_dir: cache_dir.to_owned(),
            ticker,
        })
    }

    /// The engine (for `plugin check`).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The epoch ticker (for tests and diagnostics).
    pub fn ticker(&self) -> &Ticker {
        &self.ticker
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn poll(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_ticker_ticks_only_while_a_call_is_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let rt = Runtime::new(dir.path()).unwrap();
        let t = &rt.ticker;
        poll("the idle ticker parks", || t.is_parked());
        let idle = t.ticks();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(t.ticks(), idle, "a parked ticker does not tick");
        let call = t.enter();
        let start = t.ticks();
        poll("a call in flight gets ticks", || t.ticks() >= start + 3);
        assert!(!t.is_parked());
        drop(call);
        poll("the ticker parks again", || t.is_parked());
    }
}
