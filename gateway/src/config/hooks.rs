//! `[[hooks]]` and `[plugins]`: which WebAssembly plugins run, on what, with
//! which grants and limits.

use std::path::PathBuf;

use serde::Deserialize;

use crate::model::EventType;

/// Which phase of an operation a hook runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HookPhase {
    /// On the request path, before the write; may deny or rewrite.
    Before,
    /// After the write is committed, off the request path; observes.
    After,
    /// On reads of metadata; may mask or hide keys.
    Get,
}

/// What a hook runs on: the `events` of a `[[hooks]]` entry.
///
/// Each maps onto the [`EventType`] the change records (except
/// `metadata.get`, which records nothing), so config, store, hooks and the
/// event stream name the same thing the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
pub enum HookEvent {
    /// Metadata paths set (`PATCH .../metadata`).
    #[serde(rename = "metadata.update")]
    MetadataUpdate,
    /// Metadata paths removed (`DELETE .../metadata`).
    #[serde(rename = "metadata.delete")]
    MetadataDelete,
    /// Metadata read (get phase only).
    #[serde(rename = "metadata.get")]
    MetadataGet,
    /// A feedback added.
    #[serde(rename = "feedback.add")]
    FeedbackAdd,
    /// A message appended (before phase only; WIT 0.2.0 `message-hook`).
    #[serde(rename = "message.append")]
    MessageAppend,
    /// A message replaced or patched (before phase only; WIT 0.2.0 `message-hook`).
    #[serde(rename = "message.update")]
    MessageUpdate,
}

impl HookEvent {
    /// Every event, for messages listing them.
    pub const ALL: [Self; 6] = [
        Self::MetadataUpdate,
        Self::MetadataDelete,
        Self::MetadataGet,
        Self::FeedbackAdd,
        Self::MessageAppend,
        Self::MessageUpdate,
    ];

    /// The name used in gateway.toml, e.g. `metadata.update`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MetadataUpdate => "metadata.update",
            Self::MetadataDelete => "metadata.delete",
            Self::MetadataGet => "metadata.get",
            Self::FeedbackAdd => "feedback.add",
            Self::MessageAppend => "message.append",
            Self::MessageUpdate => "message.update",
        }
    }

    /// The change event a write hooked on this records (`None` for reads).
    pub fn event_type(self) -> Option<EventType> {
        match self {
            Self::MetadataUpdate => Some(EventType::MetadataUpdated),
            Self::MetadataDelete => Some(EventType::MetadataDeleted),
            Self::MetadataGet => None,
            Self::FeedbackAdd => Some(EventType::FeedbackAdded),
            Self::MessageAppend => Some(EventType::MessageAppended),
            Self::MessageUpdate => Some(EventType::MessageUpdated),
        }
    }

    /// The hook event of a recorded change, when hooks can observe it.
    pub fn of(kind: EventType) -> Option<Self> {
        match kind {
            EventType::MetadataUpdated => Some(Self::MetadataUpdate),
            EventType::MetadataDeleted => Some(Self::MetadataDelete),
            EventType::FeedbackAdded => Some(Self::FeedbackAdd),
            EventType::MessageAppended => Some(Self::MessageAppend),
            EventType::MessageUpdated => Some(Self::MessageUpdate),
            EventType::SessionCreated | EventType::SessionDeleted | EventType::AgentUpdated => None,
        }
    }

    /// Whether a hook of `phase` may run on this event.
    pub fn valid_in(self, phase: HookPhase) -> bool {
        match phase {
            HookPhase::Before => !matches!(self, Self::MetadataGet),
            HookPhase::After => matches!(
                self,
                Self::MetadataUpdate | Self::MetadataDelete | Self::FeedbackAdd
            ),
            HookPhase::Get => self == Self::MetadataGet,
        }
    }
}

impl std::fmt::Display for HookEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a hook does when it fails (trap, timeout, memory limit, bad output).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Fail closed: the request gets 503 `hook_failed`.
    #[default]
    Deny,
    /// Fail open: proceed as if the hook allowed it, and count the error.
    Allow,
}

/// How instances of a plugin are managed.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceMode {
    /// Keep warm instances and reuse them across calls (discarded after a trap).
    #[default]
    Reuse,
    /// A fresh instance for every call: full isolation between calls.
    PerCall,
}

/// Capabilities granted to a plugin; everything else is denied.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Logical notification targets the plugin may `publish` to.
    #[serde(default)]
    pub publish: Vec<String>,
}

/// One `[[hooks]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// Unique name; appears in errors, logs, metrics and the admin API.
    pub name: String,
    /// Path to the component (`.wasm`), relative to the config file.
    pub wasm: PathBuf,
    /// Optional sha256 pin (hex); a mismatch refuses the load.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Events the hook runs on: `metadata.update`, `metadata.delete`,
    /// `metadata.get`, `feedback.add`, `message.append`, `message.update`.
    pub events: Vec<HookEvent>,
    /// `before`, `after` or `get`.
    pub phase: HookPhase,
    /// Fail closed (`deny`, default) or open (`allow`).
    #[serde(default)]
    pub on_error: OnError,
    /// Wall-clock budget of one call, enforced around the call (the guest
    /// yields every `YIELD_FUEL` units of fuel; a host call it waits in is
    /// ended by a timer), see `hooks::runtime::deadline`.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Linear-memory ceiling of one instance.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// Optional instruction budget of one call (deterministic, unlike the timeout).
    #[serde(default)]
    pub fuel: Option<u64>,
    /// `reuse` (default) or `per-call`.
    #[serde(default)]
    pub instance: InstanceMode,
    /// A plugin that fails to load is skipped with a warning instead of stopping start-up.
    #[serde(default)]
    pub optional: bool,
    /// Capabilities (deny by default).
    #[serde(default)]
    pub grants: Grants,
    /// The plugin's own settings, handed to it as JSON.
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// Quarantine per tenant after repeated failures.
    #[serde(default)]
    pub breaker: BreakerConfig,
}

/// `breaker` of a `[[hooks]]` entry: when one tenant's calls to the plugin
/// fail at least `failures` times and at least `failure_ratio` of the time
/// within `window_ms`, the plugin is skipped for that tenant for
/// `cooldown_ms` (its calls get the `on_error` outcome at once).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Failed calls in one window that trip the breaker; 0 turns it off.
    pub failures: u32,
    /// Least share of the window's calls that must have failed (0 < r <= 1).
    pub failure_ratio: f64,
    /// Length of the counting window.
    pub window_ms: u64,
    /// How long the plugin is skipped for the tenant once tripped.
    pub cooldown_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            failure_ratio: 0.5,
            window_ms: 10_000,
            cooldown_ms: 30_000,
        }
    }
}

fn default_timeout_ms() -> u64 {
    50
}

fn default_memory_mb() -> u64 {
    32
}

/// `[plugins]`: runtime settings shared by every hook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Where compiled artifacts are cached (keyed by wasm sha256 and engine hash).
    pub cache_dir: PathBuf,
    /// Watch plugin files and the config for changes and reload automatically.
    pub watch: bool,
    /// How often the watcher looks at the files where the kernel cannot
    /// tell it of changes (not Linux, or a directory it cannot watch).
    pub watch_interval_ms: u64,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            cache_dir: PathBuf::from("data/plugin-cache"),
            watch: true,
            watch_interval_ms: 1_000,
        }
    }
}
