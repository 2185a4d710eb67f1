//! What a plugin's store holds (its identity, limits, WASI context and what it
//! published during the current call), and the version-independent half of
//! the `host` interface each WIT version adapts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::MAX_OUTPUT_BYTES;

/// Most notifications one hook call may publish.
const MAX_PUBLISH_PER_CALL: usize = 64;
/// Longest log message a plugin may write (longer ones are truncated).
const MAX_LOG_MESSAGE: usize = 4096;
/// Most fields of one log line.
const MAX_LOG_FIELDS: usize = 32;

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
    pub(super) meta: Arc<PluginMeta>,
    pub(super) limits: StoreLimits,
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    /// Set during after-hooks: the event the call is about, from which
    /// notification ids are derived (so a re-run yields the same ids).
    pub(super) publish_key: Option<String>,
    pub(super) published: Vec<Published>,
}

/// Severity of a plugin's log line (every WIT version's `level`).
#[derive(Debug, Clone, Copy)]
pub enum LogLevel {
    /// `trace`
    Trace,
    /// `debug`
    Debug,
    /// `info`
    Info,
    /// `warn`
    Warn,
    /// `error`
    Error,
}

impl HostState {
    pub(crate) fn plugin_name(&self) -> &str {
        &self.meta.name
    }

    pub(crate) fn config_json(&self) -> &str {
        &self.meta.config_json
    }

    /// `host.log`: one tracing event with the plugin's name, the message
    /// truncated and at most a few fields.
    pub(crate) fn log_line<'a>(
        &self,
        level: LogLevel,
        mut message: String,
        fields: impl Iterator<Item = (&'a str, &'a str)>,
    ) {
        if message.len() > MAX_LOG_MESSAGE {
            let mut end = MAX_LOG_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        let fields: String = fields
            .take(MAX_LOG_FIELDS)
            .map(|(k, v)| format!("{k}={v:?} "))
            .collect();
        let (plugin, fields) = (self.plugin_name(), fields.trim_end());
        match level {
            LogLevel::Trace => tracing::trace!(plugin, fields, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, fields, "{message}"),
            LogLevel::Info => tracing::info!(plugin, fields, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, fields, "{message}"),
            LogLevel::Error => tracing::error!(plugin, fields, "{message}"),
        }
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
    /// Fresh instances calls took (`per-call`: one per call; an instance
    /// readied ahead of calls counts when a call takes it).
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
