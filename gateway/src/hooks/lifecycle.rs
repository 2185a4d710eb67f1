//! Loading and reloading (hot swap) the plugins of `[[hooks]]`, and
//! `gateway plugin check`. Watching their files for changes: `watch.rs`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{Value, json};

use super::runtime::{self, Plugin, Runtime};
use super::{CompileObserver, HookHost, Loaded};
use crate::config::{Config, HookConfig, HookEvent};
use crate::model::{format_ms, now_ms};
use crate::store::SessionStore;

/// Outcome of a (re)load, per plugin.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadReport {
    /// When it ran (RFC 3339).
    pub at: String,
    /// Plugins (re)compiled and now live.
    pub loaded: Vec<String>,
    /// Plugins whose file and config did not change.
    pub unchanged: Vec<String>,
    /// Plugins that failed, with the reason; the previous version (if any) keeps serving.
    pub failed: Vec<(String, String)>,
    /// Plugins removed from the config.
    pub removed: Vec<String>,
    /// The config file itself failed to load; nothing changed.
    pub config_error: Option<String>,
}

impl HookHost {
    /// Builds the runtime and loads every configured hook. A plugin that fails
    /// to load stops the start (naming it) unless it is marked `optional`.
    ///
    /// # Errors
    /// When the engine cannot be built or a required plugin fails to load.
    pub async fn start(
        config: &Config,
        config_path: Option<PathBuf>,
        store: Arc<dyn SessionStore>,
    ) -> anyhow::Result<Self> {
        let runtime = Arc::new(Runtime::new(&config.plugins.cache_dir)?);
        let host = Self {
            runtime,
            store,
            current: RwLock::new(Arc::new(Loaded::default())),
            reloaded: tokio::sync::Notify::new(),
            config_path,
            reload_lock: tokio::sync::Mutex::new(()),
            last_report: Mutex::new(ReloadReport::default()),
            compile_observer: Mutex::new(None),
        };
        let report = host.apply(&config.hooks).await;
        for (name, why) in &report.failed {
            let optional = config.hooks.iter().any(|h| &h.name == name && h.optional);
            if optional {
                tracing::warn!(plugin = %name, error = %why, "optional plugin not loaded");
            } else {
                anyhow::bail!("plugin {name:?} failed to load: {why}");
            }
        }
        Ok(host)
    }

    /// The plugin set in force now.
    pub fn snapshot(&self) -> Arc<Loaded> {
        self.current.read().expect("hooks lock").clone()
    }

    /// Resolves after the next (re)load of the plugin set, or at once if one
    /// happened since the last call resolved. For the after-hook processor,
    /// its only caller: a commit queues its event by the set in force when
    /// it wrote, but notifies the processor only if the set in force after
    /// it has after-hooks, so a reload in between would leave an event
    /// queued with nothing to wake the processor.
    pub async fn reloaded(&self) {
        self.reloaded.notified().await;
    }

    /// The engine, for `plugin check`.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Sets a function called with a plugin's name each time one starts
    /// compiling, its file already read. For tests: it lets them change a
    /// file in the middle of a reload, deterministically.
    #[doc(hidden)]
    pub fn set_compile_observer(&self, f: Option<CompileObserver>) {
        *self.compile_observer.lock().expect("observer lock") = f;
    }

    /// The last reload's report.
    pub fn last_report(&self) -> ReloadReport {
        self.last_report.lock().expect("report lock").clone()
    }

    /// Re-reads the config file (when there is one) and swaps in what changed.
    /// A plugin that fails to load keeps its previous version serving.
    pub async fn reload(&self) -> ReloadReport {
        let Some(path) = &self.config_path else {
            let hooks: Vec<HookConfig> = self
                .snapshot()
                .plugins
                .iter()
                .map(|p| p.config.clone())
                .collect();
            return self.apply(&hooks).await;
        };
        match Config::load(path) {
            Ok(cfg) => self.apply(&cfg.hooks).await,
            Err(e) => {
                tracing::error!(error = %e, "reload: config invalid; keeping the current plugins");
                let report = ReloadReport {
                    at: format_ms(now_ms()),
                    config_error: Some(e.to_string()),
                    ..ReloadReport::default()
                };
                *self.last_report.lock().expect("report lock") = report.clone();
                report
            }
        }
    }

    async fn apply(&self, hooks: &[HookConfig]) -> ReloadReport {
        let _guard = self.reload_lock.lock().await;
        let old = self.snapshot();
        let mut report = ReloadReport {
            at: format_ms(now_ms()),
            ..ReloadReport::default()
        };
        let mut next = Vec::with_capacity(hooks.len());
        for hc in hooks {
            let previous = old
                .plugins
                .iter()
                .find(|p| p.config.name == hc.name)
                .cloned();
            // A wasm already loaded (by this set or the one it replaces)
            // is not compiled again: its entries share one compiled
            // component, so one copy of its code and memory image.
            let siblings = next.iter().chain(old.plugins.iter());
            match self.load_one(hc, previous.as_deref(), siblings).await {
                Ok(None) => {
                    report.unchanged.push(hc.name.clone());
                    next.push(previous.expect("unchanged implies a previous version"));
                }
                Ok(Some(p)) => {
                    tracing::info!(plugin = %hc.name, sha256 = %p.sha256, exports = ?p.exports, "plugin loaded");
                    report.loaded.push(hc.name.clone());
                    next.push(Arc::new(p));
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    tracing::error!(plugin = %hc.name, error = %why, kept_previous = previous.is_some(), "plugin failed to load");
                    report.failed.push((hc.name.clone(), why));
                    if let Some(p) = previous {
                        next.push(p);
                    }
                }
            }
        }
        for p in &old.plugins {
            if !hooks.iter().any(|h| h.name == p.config.name) {
                report.removed.push(p.config.name.clone());
            }
        }
        let loaded = Arc::new(Loaded { plugins: next });
        self.store.set_after_hooked(loaded.after_hooked());
        *self.current.write().expect("hooks lock") = loaded.clone();
        self.reloaded.notify_one();
        // Versions swapped out or removed give up their ready instances now.
        for p in &old.plugins {
            if !loaded.plugins.iter().any(|n| Arc::ptr_eq(n, p)) {
                p.retire();
            }
        }
        *self.last_report.lock().expect("report lock") = report.clone();
        report
    }

    /// Loads one plugin; `Ok(None)` when `previous` already is this file with this config.
    async fn load_one(
        &self,
        hc: &HookConfig,
        previous: Option<&Plugin>,
        mut loaded: impl Iterator<Item = &Arc<Plugin>>,
    ) -> anyhow::Result<Option<Plugin>> {
        let (bytes, sha) = runtime::read_wasm(&hc.wasm)?;
        if let Some(pin) = &hc.sha256
            && !pin.eq_ignore_ascii_case(&sha)
        {
            anyhow::bail!(
                "sha256 of {} is {sha}, but the config pins {pin}",
                hc.wasm.display()
            );
        }
        if let Some(p) = previous
            && p.sha256 == sha
            && same_config(&p.config, hc)
        {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let observer = self.compile_observer.lock().expect("observer lock").clone();
        if let Some(f) = observer {
            f(&hc.name);
        }
        let component = if let Some(c) = loaded.find_map(|p| p.component_of(&sha)) {
            tracing::info!(plugin = %hc.name, file = %hc.wasm.display(), "plugin shares the compiled component of an entry with the same wasm");
            c
        } else {
            tracing::info!(plugin = %hc.name, file = %hc.wasm.display(), "compiling plugin");
            let rt = self.runtime.clone();
            let sha2 = sha.clone();
            tokio::task::spawn_blocking(move || rt.compile(&bytes, &sha2)).await??
        };
        let prepared = self.runtime.prepare(&component)?;
        let exports = prepared.exports();
        for e in &hc.events {
            let iface = match e {
                HookEvent::FeedbackAdd => "feedback-hook",
                HookEvent::MetadataUpdate | HookEvent::MetadataDelete | HookEvent::MetadataGet => {
                    "metadata-hook"
                }
                HookEvent::MessageAppend | HookEvent::MessageUpdate => "message-hook",
            };
            let prefix = format!("gateway:hooks/{iface}@");
            if !exports.iter().any(|x| x.starts_with(&prefix)) {
                let since = if iface == "message-hook" {
                    "0.2.0"
                } else {
                    "0.1.0"
                };
                anyhow::bail!(
                    "event \"{e}\" needs the component to export gateway:hooks/{iface} (WIT {since} or later); it exports {exports:?}"
                );
            }
        }
        tracing::info!(plugin = %hc.name, ms = started.elapsed().as_millis() as u64, "plugin prepared");
        let plugin = Plugin::new(&self.runtime, hc.clone(), sha, prepared);
        // A component that cannot even start is refused here, before the
        // swap, so the previous version keeps serving.
        plugin
            .prewarm()
            .await
            .map_err(|e| anyhow::anyhow!("the component fails to instantiate: {e:#}"))?;
        Ok(Some(plugin))
    }
}

fn same_config(a: &HookConfig, b: &HookConfig) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// Validates a component file against the WIT and describes its exports
/// (`gateway plugin check`).
///
/// # Errors
/// When it cannot be read, compiled or linked, or exports no hook interface.
pub fn check_plugin(path: &Path) -> anyhow::Result<Value> {
    let dir = std::env::temp_dir().join("session-gateway-check");
    let rt = Runtime::new(&dir)?;
    let (bytes, sha) = runtime::read_wasm(path)?;
    let component = rt.compile(&bytes, &sha)?;
    let prepared = rt.prepare(&component)?;
    let ty = component.component_type();
    let imports: Vec<String> = ty.imports(rt.engine()).map(|(n, _)| n.to_owned()).collect();
    Ok(json!({
        "file": path,
        "sha256": sha,
        "bytes": bytes.len(),
        "wit": prepared.wit(),
        "exports": prepared.exports(),
        "imports": imports,
    }))
}
