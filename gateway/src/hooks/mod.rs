//! Metadata and feedback hooks as sandboxed, hot-swappable WebAssembly components.
//!
//! - [`runtime`]: engine, linker, limits, instance pools, artifact cache,
//!   generic over the WIT version.
//! - [`v0_1_0`], [`v0_2_0`]: one host module per released `gateway:hooks`
//!   WIT version (bindings, `host` imports, conversions).
//! - [`outcome`]: what a chain decided, in the hooks' own terms; the HTTP
//!   layer maps it onto statuses.
//! - this module: [`HookHost`], which loads the `[[hooks]]` of `gateway.toml`,
//!   swaps them atomically on reload, and runs chains for the HTTP layer
//!   (before/get phases) and for the change-event processor (after phase):
//!   its loading, reload and watching are in `lifecycle`, its chains in
//!   `chains`; `glue` holds the host glue the WIT versions share.
//!
//! A request takes a snapshot ([`Loaded`]) of the plugin set when it starts, so
//! a reload never changes the plugins under an in-flight request.

pub mod breaker;
pub mod outcome;
pub mod runtime;

#[macro_use]
mod glue;
pub mod v0_1_0;
pub mod v0_2_0;

mod chains;
mod lifecycle;
mod watch;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

pub use self::chains::metadata_event;
pub use self::lifecycle::{ReloadReport, check_plugin};
pub use self::outcome::{Notification, Outcome, Refusal, Subject};
use self::runtime::{Plugin, Runtime};
use crate::config::{HookEvent, HookPhase};
use crate::store::SessionStore;

/// The plugins in force, in config order. Immutable: a reload builds a new one.
#[derive(Default)]
pub struct Loaded {
    /// Loaded plugins.
    pub plugins: Vec<Arc<Plugin>>,
}

impl Loaded {
    /// The event types some after-hook observes.
    pub fn after_hooked(&self) -> crate::store::AfterHooked {
        let mut kinds = crate::store::AfterHooked::default();
        for p in self
            .plugins
            .iter()
            .filter(|p| p.config.phase == HookPhase::After)
        {
            for kind in p.config.events.iter().filter_map(|e| e.event_type()) {
                kinds = kinds.with(kind);
            }
        }
        kinds
    }

    /// Whether some get-hook shapes metadata on its way out (`metadata.get`):
    /// then every exit of stored metadata goes through it (see `service::shape`).
    pub fn shapes_metadata(&self) -> bool {
        self.runs(HookPhase::Get, HookEvent::MetadataGet)
    }

    /// Whether some plugin runs in `phase` on `event`.
    pub fn runs(&self, phase: HookPhase, event: HookEvent) -> bool {
        self.plugins
            .iter()
            .any(|p| p.config.phase == phase && p.config.events.contains(&event))
    }

    fn chain(&self, phase: HookPhase, event: HookEvent) -> Vec<Arc<Plugin>> {
        self.plugins
            .iter()
            .filter(|p| p.config.phase == phase && p.config.events.contains(&event))
            .cloned()
            .collect()
    }
}

/// Loads, swaps and runs hooks.
pub struct HookHost {
    runtime: Arc<Runtime>,
    /// The store, told which events to queue for after-hooks on every (re)load.
    store: Arc<dyn SessionStore>,
    current: RwLock<Arc<Loaded>>,
    /// Notified after every (re)load: it can change which events a commit
    /// queues for after-hooks (see [`HookHost::reloaded`]).
    reloaded: tokio::sync::Notify,
    config_path: Option<PathBuf>,
    reload_lock: tokio::sync::Mutex<()>,
    last_report: Mutex<ReloadReport>,
    /// Called with a plugin's name as it starts compiling (tests use it to
    /// change files in the middle of a reload).
    compile_observer: Mutex<Option<CompileObserver>>,
}

type CompileObserver = Arc<dyn Fn(&str) + Send + Sync>;
