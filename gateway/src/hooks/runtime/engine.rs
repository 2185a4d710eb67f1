//! The process-wide engine and linker.
//!
//! No thread of the runtime wakes while no call runs: call deadlines are not
//! epochs bumped by a ticker but a check around each call's future (see
//! [`super::deadline`]), which a busy guest reaches by yielding every
//! [`super::deadline::YIELD_FUEL`] units of fuel.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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

/// The process-wide engine and linker.
pub struct Runtime {
    pub(super) engine: Engine,
    pub(super) linker: Linker<HostState>,
    pub(super) cache_dir: PathBuf,
    /// Components compiled or loaded from the artifact cache so far.
    pub(super) components: AtomicU64,
}

impl Runtime {
    /// Builds the engine and linker (WASI and every supported WIT version's
    /// `host`).
    ///
    /// # Errors
    /// When wasmtime rejects the configuration.
    pub fn new(cache_dir: &Path) -> anyhow::Result<Self> {
        let mut cfg = wasmtime::Config::new();
        // Fuel both bounds a call (`fuel`) and makes a busy guest yield to
        // tokio (`Store::fuel_async_yield_interval`), where its deadline is
        // checked.
        cfg.consume_fuel(true).wasm_component_model(true);
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

        Ok(Self {
            engine,
            linker,
            cache_dir: cache_dir.to_owned(),
            components: AtomicU64::new(0),
        })
    }

    /// How many components were compiled or loaded from the artifact cache
    /// (entries of one wasm share one; tests count them).
    pub fn components(&self) -> u64 {
        self.components.load(Ordering::Relaxed)
    }

    /// The engine (for `plugin check`).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}
