//! The wasmtime side of hooks: one engine, one linker, a compiled component and
//! an instance pool per plugin, and the limits that contain a hostile plugin.
//!
//! - **Engine** ([`engine`]): one per process, with fuel metering and the
//!   pooling allocator, and no thread of its own. Calls are async: a busy
//!   plugin yields to tokio every [`deadline::YIELD_FUEL`] units of fuel, so
//!   it never pins a worker thread, and the call is stopped once its
//!   wall-clock budget (`timeout_ms`) is spent, whether the guest computes
//!   or waits in a host call ([`deadline`]).
//! - **Limits per call:** a deadline, optional fuel, and `StoreLimits`
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
//! - **Chain input** ([`input`]): a before-change chain's subject and
//!   change, converted to each WIT version's form once and shared by the
//!   chain's plugins.
//! - **Versions** ([`version`]): a component is served by the host module of
//!   the WIT version it exports (`hooks::v0_1_0`, `hooks::v0_2_0`); the
//!   pool and the call wrappers ([`calls`]) work on the gateway's own types
//!   and dispatch to that module.
//! - **Artifacts** (`artifact.rs`): compiled components are cached on disk under the wasm's
//!   sha256 and the engine's compatibility hash, with a checksum sidecar; only
//!   files the gateway wrote itself are ever deserialized.

mod artifact;
pub mod calls;
pub mod deadline;
pub mod engine;
mod host;
pub mod input;
mod pool;
pub mod version;

use std::time::Duration;

pub use self::artifact::read_wasm;
pub use self::engine::Runtime;
pub use self::host::{HostState, LogLevel, PluginMeta, PluginStats, PublishRefusal, Published};
pub use self::pool::Plugin;
pub use self::version::Prepared;

/// Largest JSON a plugin may return or publish.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

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

/// What a committed change looked like, given to after-hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Per-session sequence number of the change event.
    pub event_id: u64,
    /// When it was committed, RFC 3339 in UTC.
    pub timestamp: String,
}

/// Which message a message hook is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageTarget {
    /// `before-update` (true) or `before-append` (false).
    pub update: bool,
    /// The agent.
    pub agent_id: String,
    /// The message id, when known (always for an update).
    pub message_id: Option<u64>,
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

/// A wasmtime error as a failed call, saying why in plain words.
pub(crate) fn trap(e: wasmtime::Error) -> CallError {
    let msg = match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => "ran out of fuel".to_owned(),
        Some(t) => format!("trapped: {t}"),
        None => format!("failed: {e:#}"),
    };
    CallError::Trap(msg)
}

/// Refuses a plugin's output over [`MAX_OUTPUT_BYTES`].
pub(crate) fn check_len(what: &str, len: usize) -> Result<(), CallError> {
    if len > MAX_OUTPUT_BYTES {
        return Err(CallError::BadOutput(format!(
            "{what} is {len} bytes, over the {MAX_OUTPUT_BYTES}-byte limit"
        )));
    }
    Ok(())
}

/// A message rewrite: JSON text of at most `max_bytes`.
pub(crate) fn message_from_wit(
    text: String,
    max_bytes: usize,
) -> Result<Box<serde_json::value::RawValue>, CallError> {
    if text.len() > max_bytes.min(MAX_OUTPUT_BYTES) {
        return Err(CallError::BadOutput(format!(
            "message rewrite is {} bytes, over the {}-byte limit",
            text.len(),
            max_bytes.min(MAX_OUTPUT_BYTES)
        )));
    }
    serde_json::value::RawValue::from_string(text)
        .map_err(|e| CallError::BadOutput(format!("message rewrite is not JSON: {e}")))
}
