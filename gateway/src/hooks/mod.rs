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
//!   (before/get phases) and for the change-event processor (after phase).
//!
//! A request takes a snapshot ([`Loaded`]) of the plugin set when it starts, so
//! a reload never changes the plugins under an in-flight request.

pub mod breaker;
pub mod outcome;
pub mod runtime;

/// The host glue every WIT version shares as long as its `host` interface and
/// its metadata and feedback hooks are 0.1.0's: the `host` import
/// implementation, the calls into the metadata and feedback exports (an
/// `impl Exports` block), and the conversions between WIT values and the
/// gateway's types. Expanded inside each version module (`v0_1_0`,
/// `v0_2_0`), where the names it uses (`gateway`, `Exports`, `SessionRef`,
/// `WitChange`, …) are that version's generated types; a version that changes
/// one of them gets its own code instead.
macro_rules! shared_host_glue {
    () => {
        /// Adds this version's `host` imports to the linker.
        ///
        /// # Errors
        /// When the linker already defines them.
        pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
            gateway::hooks::host::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
        }

        impl gateway::hooks::types::Host for HostState {}

        impl gateway::hooks::host::Host for HostState {
            fn log(
                &mut self,
                level: Level,
                message: String,
                fields: Vec<gateway::hooks::types::Field>,
            ) {
                let level = match level {
                    Level::Trace => LogLevel::Trace,
                    Level::Debug => LogLevel::Debug,
                    Level::Info => LogLevel::Info,
                    Level::Warn => LogLevel::Warn,
                    Level::Error => LogLevel::Error,
                };
                self.log_line(
                    level,
                    message,
                    fields.iter().map(|f| (f.key.as_str(), f.value.as_str())),
                );
            }

            fn config(&mut self) -> String {
                self.config_json().to_owned()
            }

            fn publish(&mut self, target: String, payload: String) -> Result<String, PublishError> {
                self.publish_checked(target, payload).map_err(|e| match e {
                    PublishRefusal::NotGranted => PublishError::NotGranted,
                    PublishRefusal::InvalidPayload => PublishError::InvalidPayload,
                    PublishRefusal::Unavailable => PublishError::Unavailable,
                })
            }
        }

        #[allow(clippy::ptr_arg)]
        impl Exports {
            fn metadata(&self) -> Result<&metadata_hook::Guest, CallError> {
                self.metadata
                    .as_ref()
                    .ok_or(CallError::Missing(METADATA_EXPORT))
            }

            fn feedback(&self) -> Result<&feedback_hook::Guest, CallError> {
                self.feedback
                    .as_ref()
                    .ok_or(CallError::Missing(FEEDBACK_EXPORT))
            }

            /// `metadata-hook.before-change`, its rewrite checked like a client's change.
            pub async fn before_change(
                &self,
                store: &mut Store<HostState>,
                session: &Subject,
                change: &MetadataChange,
            ) -> Result<Verdict<MetadataChange>, CallError> {
                let verdict = self
                    .metadata()?
                    .call_before_change(store, &session_to_wit(session), &change_to_wit(change))
                    .await
                    .map_err(trap)?;
                check_len("verdict", verdict_len(&verdict))?;
                Ok(match verdict {
                    MetadataVerdict::Allow => Verdict::Allow,
                    MetadataVerdict::Deny(reason) => Verdict::Deny(reason),
                    MetadataVerdict::Rewrite(c) => {
                        Verdict::Rewrite(change_from_wit(c).map_err(CallError::BadOutput)?)
                    }
                })
            }

            /// `metadata-hook.after-change`.
            pub async fn after_change(
                &self,
                store: &mut Store<HostState>,
                session: &Subject,
                recorded: &Recorded,
                info: &Commit,
            ) -> Result<(), CallError> {
                let values = Value::Object(recorded.values.clone()).to_string();
                self.metadata()?
                    .call_after_change(
                        store,
                        &session_to_wit(session),
                        &change_to_wit(&recorded.change),
                        &recorded.changed,
                        &values,
                        &commit_to_wit(info),
                    )
                    .await
                    .map_err(trap)
            }

            /// `metadata-hook.on-get`: the result must be a JSON object.
            pub async fn on_get(
                &self,
                store: &mut Store<HostState>,
                session: &Subject,
                metadata: &String,
            ) -> Result<JsonObject, CallError> {
                let out = self
                    .metadata()?
                    .call_on_get(store, &session_to_wit(session), metadata)
                    .await
                    .map_err(trap)?;
                check_len("on-get result", out.len())?;
                object_from_wit("on-get result", &out).map_err(CallError::BadOutput)
            }

            /// `feedback-hook.before-add`, its rewrite checked like a client's feedback.
            pub async fn before_add(
                &self,
                store: &mut Store<HostState>,
                session: &Subject,
                feedback: &String,
            ) -> Result<Verdict<JsonObject>, CallError> {
                let v = self
                    .feedback()?
                    .call_before_add(store, &session_to_wit(session), feedback)
                    .await
                    .map_err(trap)?;
                Ok(match v {
                    FeedbackVerdict::Allow => Verdict::Allow,
                    FeedbackVerdict::Deny(reason) => {
                        check_len("verdict", reason.len())?;
                        Verdict::Deny(reason)
                    }
                    FeedbackVerdict::Rewrite(text) => {
                        check_len("verdict", text.len())?;
                        Verdict::Rewrite(feedback_from_wit(&text)?)
                    }
                })
            }

            /// `feedback-hook.after-add`.
            pub async fn after_add(
                &self,
                store: &mut Store<HostState>,
                session: &Subject,
                feedback: &String,
                info: &Commit,
            ) -> Result<(), CallError> {
                self.feedback()?
                    .call_after_add(
                        store,
                        &session_to_wit(session),
                        feedback,
                        &commit_to_wit(info),
                    )
                    .await
                    .map_err(trap)
            }
        }

        /// A feedback rewrite, checked like a client's feedback.
        pub(super) fn feedback_from_wit(text: &str) -> Result<JsonObject, CallError> {
            let fb = object_from_wit("feedback rewrite", text).map_err(CallError::BadOutput)?;
            crate::model::validate_feedback(&fb)
                .map_err(|e| CallError::BadOutput(format!("feedback rewrite: {e}")))?;
            Ok(fb)
        }

        fn verdict_len(v: &MetadataVerdict) -> usize {
            match v {
                MetadataVerdict::Allow => 0,
                MetadataVerdict::Deny(r) => r.len(),
                MetadataVerdict::Rewrite(WitChange::Update(a)) => {
                    a.iter().map(|x| x.path.len() + x.value.len()).sum()
                }
                MetadataVerdict::Rewrite(WitChange::Delete(k)) => k.iter().map(String::len).sum(),
            }
        }

        /// Converts who a call is about into its WIT form.
        pub fn session_to_wit(s: &super::outcome::Subject) -> SessionRef {
            SessionRef {
                tenant: s.tenant.clone(),
                session_id: s.session_id.clone(),
                session_type: s.session_type.clone(),
            }
        }

        /// Converts commit details into their WIT form.
        pub fn commit_to_wit(c: &Commit) -> CommitInfo {
            CommitInfo {
                event_id: c.event_id,
                timestamp: c.timestamp.clone(),
            }
        }

        /// Converts a gateway change into its WIT form.
        pub fn change_to_wit(change: &MetadataChange) -> WitChange {
            match change {
                MetadataChange::Update(a) => WitChange::Update(
                    a.iter()
                        .map(|(path, v)| Assignment {
                            path: path.clone(),
                            value: v.to_string(),
                        })
                        .collect(),
                ),
                MetadataChange::Delete(keys) => WitChange::Delete(keys.clone()),
            }
        }

        /// Converts a change a plugin returned, checking it like a client's.
        ///
        /// # Errors
        /// A message saying what the plugin got wrong.
        pub fn change_from_wit(change: WitChange) -> Result<MetadataChange, String> {
            let change = match change {
                WitChange::Update(a) => MetadataChange::Update(
                    a.into_iter()
                        .map(|x| {
                            serde_json::from_str::<Value>(&x.value)
                                .map(|v| (x.path.clone(), v))
                                .map_err(|e| {
                                    format!("rewrite value for {:?} is not JSON: {e}", x.path)
                                })
                        })
                        .collect::<Result<_, _>>()?,
                ),
                WitChange::Delete(keys) => MetadataChange::Delete(keys),
            };
            change
                .validate()
                .map_err(|e| format!("rewrite is invalid: {e}"))?;
            Ok(change)
        }

        /// Parses a JSON object a plugin returned.
        ///
        /// # Errors
        /// When it is not JSON or not an object.
        pub fn object_from_wit(what: &str, text: &str) -> Result<JsonObject, String> {
            match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(m)) => Ok(m),
                Ok(_) => Err(format!("{what} must be a JSON object")),
                Err(e) => Err(format!("{what} is not JSON: {e}")),
            }
        }
    };
}

pub mod v0_1_0;
pub mod v0_2_0;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

pub use self::outcome::{Notification, Outcome, Refusal, Subject};
use self::runtime::{CallError, MessageTarget, Plugin, Runtime, Verdict};
use crate::config::{Config, HookConfig, HookEvent, HookPhase};
use crate::metadata::{MetadataChange, Recorded};
use crate::model::{Event, EventType, JsonObject, Session, Tenant, format_ms, now_ms};
use crate::store::{SessionStore, StoreResult};

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

/// Loads, swaps and runs hooks.
pub struct HookHost {
    runtime: Arc<Runtime>,
    /// The store, told which events to queue for after-hooks on every (re)load.
    store: Arc<dyn SessionStore>,
    current: RwLock<Arc<Loaded>>,
    config_path: Option<PathBuf>,
    reload_lock: tokio::sync::Mutex<()>,
    last_report: Mutex<ReloadReport>,
    /// Called with a plugin's name as it starts compiling (tests use it to
    /// change files in the middle of a reload).
    compile_observer: Mutex<Option<CompileObserver>>,
}

type CompileObserver = Arc<dyn Fn(&str) + Send + Sync>;

fn denied(p: &Plugin, reason: String) -> Refusal {
    Refusal::Denied {
        plugin: p.meta.name.clone(),
        reason,
    }
}

/// Applies a plugin's failure policy: fail closed refuses, fail open logs and goes on.
fn on_failure(p: &Plugin, e: &CallError) -> Outcome<()> {
    // A quarantine was logged once, when it began: not again for every call it skips.
    let quarantined = matches!(e, CallError::Quarantined(_));
    if p.fails_closed() {
        if let CallError::Quarantined(left) = e {
            return Err(Refusal::Skipped {
                plugin: p.meta.name.clone(),
                retry_in: *left,
            });
        }
        tracing::warn!(plugin = %p.meta.name, error = %e, "hook failed; failing closed");
        Err(Refusal::Failed {
            plugin: p.meta.name.clone(),
            cause: e.to_string(),
        })
    } else {
        if !quarantined {
            tracing::warn!(plugin = %p.meta.name, error = %e, "hook failed; failing open");
        }
        Ok(())
    }
}

fn session_ref(t: &Tenant, sid: &str, session_type: &str) -> Subject {
    Subject {
        tenant: t.as_str().to_owned(),
        session_id: sid.to_owned(),
        session_type: session_type.to_owned(),
    }
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
            match self.load_one(hc, previous.as_deref()).await {
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
        let loaded = Loaded { plugins: next };
        self.store.set_after_hooked(loaded.after_hooked());
        *self.current.write().expect("hooks lock") = Arc::new(loaded);
        *self.last_report.lock().expect("report lock") = report.clone();
        report
    }

    /// Loads one plugin; `Ok(None)` when `previous` already is this file with this config.
    async fn load_one(
        &self,
        hc: &HookConfig,
        previous: Option<&Plugin>,
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
        tracing::info!(plugin = %hc.name, file = %hc.wasm.display(), "compiling plugin");
        let observer = self.compile_observer.lock().expect("observer lock").clone();
        if let Some(f) = observer {
            f(&hc.name);
        }
        let rt = self.runtime.clone();
        let sha2 = sha.clone();
        let component = tokio::task::spawn_blocking(move || rt.compile(&bytes, &sha2)).await??;
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
        tracing::info!(plugin = %hc.name, ms = started.elapsed().as_millis() as u64, "plugin compiled");
        let plugin = Plugin::new(&self.runtime, hc.clone(), sha, prepared);
        // A component that cannot even start is refused here, before the
        // swap, so the previous version keeps serving.
        plugin
            .prewarm()
            .await
            .map_err(|e| anyhow::anyhow!("the component fails to instantiate: {e:#}"))?;
        Ok(Some(plugin))
    }

    /// Who a chain in `loaded` is about. The session's type is read (one
    /// store read, through the store the host holds) only when `needed`, i.e.
    /// when some hook of the request will run; the same [`Subject`] then
    /// serves every chain of the request.
    ///
    /// # Errors
    /// A store error (e.g. no such session) when the type has to be read.
    pub async fn subject(&self, t: &Tenant, sid: &str, needed: bool) -> StoreResult<Subject> {
        let session_type = if needed {
            self.store.get_session(t, sid).await?.session_type
        } else {
            String::new()
        };
        Ok(session_ref(t, sid, &session_type))
    }

    /// Runs the before-chain of a metadata change; allows the change to store.
    ///
    /// # Errors
    /// The chain's [`Refusal`]: a deny, or a failing fail-closed plugin.
    pub async fn before_metadata(
        &self,
        loaded: &Loaded,
        subject: &Subject,
        change: MetadataChange,
    ) -> Outcome<MetadataChange> {
        let chain = loaded.chain(HookPhase::Before, metadata_event(&change));
        let mut change = change;
        for p in &chain {
            match p.before_change(subject, &change).await {
                Ok(Verdict::Allow) => {}
                Ok(Verdict::Deny(reason)) => return Err(denied(p, reason)),
                Ok(Verdict::Rewrite(c)) => change = c,
                Err(e) => on_failure(p, &e)?,
            }
        }
        Ok(change)
    }

    /// Runs the before-chain of a feedback; allows the feedback to store.
    ///
    /// # Errors
    /// As [`HookHost::before_metadata`].
    pub async fn before_feedback(
        &self,
        loaded: &Loaded,
        subject: &Subject,
        feedback: JsonObject,
    ) -> Outcome<JsonObject> {
        let chain = loaded.chain(HookPhase::Before, HookEvent::FeedbackAdd);
        let mut feedback = feedback;
        for p in &chain {
            let text = Value::Object(feedback.clone()).to_string();
            match p.before_add(subject, &text).await {
                Ok(Verdict::Allow) => {}
                Ok(Verdict::Deny(reason)) => return Err(denied(p, reason)),
                Ok(Verdict::Rewrite(fb)) => feedback = fb,
                Err(e) => on_failure(p, &e)?,
            }
        }
        Ok(feedback)
    }

    /// Runs the before-chain of a message's content (`message.append` when
    /// `target.update` is false, else `message.update`); allows the content
    /// to store. A rewrite must be JSON of at most `max_bytes`, or the call
    /// counts as failed.
    ///
    /// # Errors
    /// As [`HookHost::before_metadata`].
    pub async fn before_message(
        &self,
        loaded: &Loaded,
        subject: &Subject,
        target: &MessageTarget,
        content: Box<serde_json::value::RawValue>,
        max_bytes: usize,
    ) -> Outcome<Box<serde_json::value::RawValue>> {
        let event = if target.update {
            HookEvent::MessageUpdate
        } else {
            HookEvent::MessageAppend
        };
        let chain = loaded.chain(HookPhase::Before, event);
        let mut content = content;
        for p in &chain {
            match p
                .before_message(subject, target, content.get(), max_bytes)
                .await
            {
                Ok(Verdict::Allow) => {}
                Ok(Verdict::Deny(reason)) => return Err(denied(p, reason)),
                Ok(Verdict::Rewrite(c)) => content = c,
                Err(e) => on_failure(p, &e)?,
            }
        }
        Ok(content)
    }

    /// Runs the get-chain over metadata about to be shown.
    ///
    /// # Errors
    /// 503 `hook_failed` for a failing fail-closed plugin.
    pub async fn show_metadata(
        &self,
        t: &Tenant,
        sid: &str,
        session_type: &str,
        metadata: JsonObject,
    ) -> Outcome<JsonObject> {
        self.show_metadata_in(&self.snapshot(), t, sid, session_type, metadata)
            .await
    }

    /// [`HookHost::show_metadata`] with the plugin set `loaded` (a request's
    /// snapshot).
    ///
    /// # Errors
    /// As [`HookHost::show_metadata`].
    pub async fn show_metadata_in(
        &self,
        loaded: &Loaded,
        t: &Tenant,
        sid: &str,
        session_type: &str,
        metadata: JsonObject,
    ) -> Outcome<JsonObject> {
        let chain = loaded.chain(HookPhase::Get, HookEvent::MetadataGet);
        if chain.is_empty() {
            return Ok(metadata);
        }
        let sref = session_ref(t, sid, session_type);
        let mut metadata = metadata;
        for p in &chain {
            let text = Value::Object(metadata.clone()).to_string();
            match p.on_get(&sref, &text).await {
                Ok(m) => metadata = m,
                Err(e) => on_failure(p, &e)?,
            }
        }
        Ok(metadata)
    }

    /// [`HookHost::show_metadata`] over a session's metadata: what every read
    /// of a session shows. A failing fail-closed get-hook fails the read (503:
    /// nothing was written, a retry is safe).
    ///
    /// # Errors
    /// As [`HookHost::show_metadata`].
    pub async fn redact_session(&self, t: &Tenant, mut session: Session) -> Outcome<Session> {
        let md = std::mem::take(&mut session.metadata);
        session.metadata = self
            .show_metadata(t, &session.session_id, &session.session_type, md)
            .await?;
        Ok(session)
    }

    /// Runs the after-chain for one committed event and returns the
    /// notifications its plugins published. A failing after-hook is counted
    /// and logged; it does not stop the others.
    pub async fn after_event(&self, ev: &Event) -> Vec<Notification> {
        let Some(event) = HookEvent::of(ev.kind) else {
            return Vec::new();
        };
        let chain = self.snapshot().chain(HookPhase::After, event);
        if chain.is_empty() {
            return Vec::new();
        }
        // The change as the store recorded it; an event that does not read
        // back is an error, never an empty change.
        let recorded = match ev.kind {
            EventType::MetadataUpdated | EventType::MetadataDeleted => {
                Recorded::from_event_payload(ev.kind == EventType::MetadataDeleted, &ev.payload)
                    .map(AfterInput::Metadata)
            }
            EventType::FeedbackAdded => match ev.payload.get("feedback") {
                Some(fb @ Value::Object(_)) => Ok(AfterInput::Feedback(fb.to_string())),
                _ => Err("feedback event payload has no feedback object".to_owned()),
            },
            _ => Err(format!("no after-hooks on {} events", ev.kind.as_str())),
        };
        let input = match recorded {
            Ok(input) => input,
            Err(why) => {
                tracing::error!(seq = ev.seq, session_id = %ev.session_id, kind = ev.kind.as_str(), error = %why, "after-hooks not run: the event does not read back");
                return Vec::new();
            }
        };
        let subject = Subject {
            tenant: ev.tenant.clone(),
            session_id: ev.session_id.clone(),
            session_type: ev.session_type.clone(),
        };
        let info = runtime::Commit {
            event_id: ev.seq,
            timestamp: format_ms(ev.ts),
        };
        let key = format!("{}/{}/{}", ev.tenant, ev.session_id, ev.seq);
        let mut out = Vec::new();
        for p in &chain {
            let result = match &input {
                AfterInput::Metadata(r) => {
                    p.after_change(&subject, r, info.clone(), key.clone()).await
                }
                AfterInput::Feedback(fb) => {
                    p.after_add(&subject, fb, info.clone(), key.clone()).await
                }
            };
            match result {
                Ok(published) => {
                    out.extend(published.into_iter().map(|n| Notification {
                        plugin: p.meta.name.clone(),
                        id: n.id,
                        target: n.target,
                        payload: n.payload,
                    }));
                }
                // Logged once, when the quarantine began.
                Err(CallError::Quarantined(_)) => {
                    tracing::debug!(plugin = %p.meta.name, seq = ev.seq, session_id = %ev.session_id, "after-hook skipped: quarantined for this tenant")
                }
                Err(e) => {
                    tracing::warn!(plugin = %p.meta.name, seq = ev.seq, session_id = %ev.session_id, error = %e, "after-hook failed")
                }
            }
        }
        out
    }

    /// Polls the config file and plugin files and reloads when one changes.
    /// Returns when `stop` resolves.
    ///
    /// What counts as seen is the fingerprint taken *before* a reload: a file
    /// written while the reload runs (e.g. while the previous copy compiles)
    /// differs from it, so it is reloaded right after, never lost.
    ///
    /// The first fingerprint is taken when this is called, not when the
    /// future first runs, so a change made right after start-up is seen.
    pub fn watch(
        self: Arc<Self>,
        interval: Duration,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut seen = self.fingerprint();
        async move { self.watch_from(&mut seen, interval, stop).await }
    }

    async fn watch_from(
        &self,
        seen: &mut Vec<(PathBuf, Option<SystemTime>, u64, u64)>,
        interval: Duration,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut stop = stop;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => return,
            }
            let mut now = self.fingerprint();
            while now != *seen && !*stop.borrow() {
                tracing::info!("plugin or config file changed; reloading");
                let report = self.reload().await;
                tracing::info!(loaded = ?report.loaded, failed = ?report.failed, "reload done");
                *seen = now;
                now = self.fingerprint();
            }
        }
    }

    fn fingerprint(&self) -> Vec<(PathBuf, Option<SystemTime>, u64, u64)> {
        let mut paths: Vec<PathBuf> = self.config_path.iter().cloned().collect();
        if let Some(cfg) = self
            .config_path
            .as_deref()
            .and_then(|p| Config::load(p).ok())
        {
            paths.extend(cfg.hooks.into_iter().map(|h| h.wasm));
        } else {
            paths.extend(
                self.snapshot()
                    .plugins
                    .iter()
                    .map(|p| p.config.wasm.clone()),
            );
        }
        paths
            .into_iter()
            .map(|p| {
                use std::os::unix::fs::MetadataExt as _;
                let m = std::fs::metadata(&p).ok();
                // The inode too: an atomic-rename deploy replaces the file.
                let (mtime, len, ino) = (
                    m.as_ref().and_then(|m| m.modified().ok()),
                    m.as_ref().map_or(0, std::fs::Metadata::len),
                    m.map_or(0, |m| m.ino()),
                );
                (p, mtime, len, ino)
            })
            .collect()
    }
}

fn same_config(a: &HookConfig, b: &HookConfig) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// What an after-chain receives, read once from the event.
enum AfterInput {
    Metadata(Recorded),
    Feedback(String),
}

/// The hook event of a metadata change.
pub fn metadata_event(change: &MetadataChange) -> HookEvent {
    match change {
        MetadataChange::Update(_) => HookEvent::MetadataUpdate,
        MetadataChange::Delete(_) => HookEvent::MetadataDelete,
    }
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
