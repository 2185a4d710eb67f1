//! `gateway.toml`: typed, strict, with defaults in code.
//!
//! Every table denies unknown keys, so a typo is a start-up error that names the
//! key instead of a silently ignored setting. The shipped `gateway.toml` is parsed
//! by a test, so it cannot drift from these structs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::model::EventType;
use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP listener and request limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// Which store to use and how to reach it.
    #[serde(default)]
    pub storage: StorageConfig,
    /// WebAssembly hooks, run in the order listed.
    #[serde(default)]
    pub hooks: Vec<HookConfig>,
    /// Plugin runtime settings shared by all hooks.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// How long sessions and change events are kept.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// API keys and tenants.
    #[serde(default)]
    pub auth: crate::auth::AuthConfig,
    /// Overload, rate, timeout and size limits.
    #[serde(default)]
    pub limits: crate::limits::LimitsConfig,
    /// Delivery of hook notifications to SNS/SQS.
    #[serde(default)]
    pub notify: NotifyConfig,
}

/// `[retention]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Session lifetime after its last change, by `session_type`, e.g. `{ AGENT = "30d" }`.
    pub sessions: BTreeMap<String, String>,
    /// Lifetime of sessions whose type is not listed; absent keeps them forever.
    pub default: Option<String>,
    /// How long change events are kept: the window in which an SSE client can
    /// resume and after-hooks can be redelivered. `"0"` keeps them forever.
    pub events: String,
    /// How often expired sessions and events are swept.
    pub sweep_interval_ms: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            sessions: BTreeMap::new(),
            default: None,
            events: "7d".into(),
            sweep_interval_ms: 60_000,
        }
    }
}

/// Parses `"30d"`, `"12h"`, `"15m"`, `"45s"` or `"250ms"` into milliseconds.
///
/// # Errors
/// A message naming the expected form.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: i64 = num.parse().map_err(|_| {
        format!("{s:?} is not a duration like \"30d\", \"12h\", \"15m\", \"45s\" or \"250ms\"")
    })?;
    let mult = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" if n == 0 => 0,
        _ => return Err(format!("{s:?}: unit must be d, h, m, s or ms")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too long"))
}

impl RetentionConfig {
    /// The policy the stores apply.
    ///
    /// # Errors
    /// When a duration does not parse.
    pub fn policy(&self) -> Result<crate::store::Retention, String> {
        let mut sessions = BTreeMap::new();
        for (ty, d) in &self.sessions {
            let ms = parse_duration_ms(d).map_err(|e| format!("retention.sessions.{ty}: {e}"))?;
            if ms <= 0 {
                return Err(format!("retention.sessions.{ty}: must be positive"));
            }
            sessions.insert(ty.clone(), ms);
        }
        let default_session_ms = self
            .default
            .as_deref()
            .map(|d| parse_duration_ms(d).map_err(|e| format!("retention.default: {e}")))
            .transpose()?;
        let events =
            parse_duration_ms(&self.events).map_err(|e| format!("retention.events: {e}"))?;
        Ok(crate::store::Retention {
            sessions,
            default_session_ms,
            events_ms: (events > 0).then_some(events),
        })
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest request body accepted; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Largest page `GET /v1/sessions` and `…/messages` return.
    pub max_page_size: usize,
    /// Most ids one `batch-get` may ask for.
    pub max_batch_ids: usize,
    /// Largest `message` (JSON text) one message may carry; larger is 422.
    pub max_message_bytes: usize,
    /// Most keys one metadata patch may set; more is 422.
    pub max_patch_keys: usize,
    /// Byte budget of one message list response: a page that would exceed it
    /// is shortened (at least one message is always returned) and says where
    /// to continue (`next_offset`, `truncated`). Also bounds what one list
    /// request reads from the store at a time.
    pub max_response_bytes: usize,
    /// How long graceful shutdown waits for in-flight requests.
    pub shutdown_grace_ms: u64,
    /// Interval of SSE heartbeat comments on idle event streams.
    pub sse_heartbeat_ms: u64,
    /// With a store shared by several gateways (MongoDB): how often one query
    /// looks for events committed by other gateways for local subscribers.
    pub sse_poll_ms: u64,
    /// A request's head (request line and headers) must arrive within this
    /// long of its first byte, and a new connection's first request within
    /// this long of connecting; otherwise the connection is closed.
    pub header_read_timeout_ms: u64,
    /// A keep-alive connection with no request in progress is closed after
    /// this long without a new request (an open SSE stream is a request in
    /// progress: it is never cut).
    pub idle_timeout_ms: u64,
    /// Most client connections open at once; `0` (default) derives it from
    /// the process's file limit (`RLIMIT_NOFILE`) minus headroom for the
    /// store, plugin files and outbound clients. A larger value is lowered to
    /// that. At the cap, the longest-idle connection is closed to make room;
    /// with none idle, new connections wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            max_body_bytes: 1024 * 1024,
            max_page_size: 1000,
            max_batch_ids: 100,
            max_message_bytes: 512 * 1024,
            max_patch_keys: 100,
            max_response_bytes: 8 * 1024 * 1024,
            shutdown_grace_ms: 10_000,
            sse_heartbeat_ms: 15_000,
            sse_poll_ms: 500,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 75_000,
            max_connections: 0,
        }
    }
}

/// Which store backs the gateway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageType {
    /// redb on local disk (zero setup).
    #[default]
    Embedded,
    /// MongoDB through the official driver.
    Mongodb,
}

/// `[storage]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `"embedded"` (default) or `"mongodb"`.
    #[serde(default, rename = "type")]
    pub kind: StorageType,
    /// Settings of the embedded store.
    #[serde(default)]
    pub embedded: EmbeddedConfig,
    /// Settings of the MongoDB store.
    #[serde(default)]
    pub mongodb: MongoConfig,
}

/// `[storage.embedded]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// Database file; its directory is created when missing.
    pub path: PathBuf,
    /// Most memory (MiB) the store keeps for cached database pages; the
    /// operating system's file cache comes on top. redb's own default, 1 GiB,
    /// lets a busy gateway's RSS creep up for a long time.
    pub cache_mb: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("data/gateway.redb"),
            cache_mb: 128,
        }
    }
}

/// `[storage.mongodb]`: one pooled client for the whole process.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MongoConfig {
    /// Connection string; `MONGODB_URI` in the environment overrides it.
    pub uri: String,
    /// Database holding the gateway's collections.
    pub database: String,
    /// Name reported to the server (shows in server logs and `currentOp`).
    pub app_name: String,
    /// Connections kept open even when idle.
    pub min_pool_size: u32,
    /// Most connections the pool opens.
    pub max_pool_size: u32,
    /// Idle connections older than this are closed.
    pub max_idle_time_ms: u64,
    /// Timeout to establish a connection.
    pub connect_timeout_ms: u64,
    /// How long an operation waits for a suitable server before failing (and
    /// so how fast requests fail with 503 when MongoDB is down).
    pub server_selection_timeout_ms: u64,
    /// Wire compressors, in preference order: `"zlib"` is supported.
    pub compressors: Vec<String>,
    /// `primary`, `primaryPreferred`, `secondary`, `secondaryPreferred` or `nearest`.
    pub read_preference: String,
    /// Write concern `w`: `"majority"` or a number of nodes, e.g. `"1"`.
    pub write_concern: String,
    /// Whether writes wait for the journal.
    pub journal: bool,
    /// Let the driver retry reads once on transient errors.
    pub retry_reads: bool,
    /// Let the driver retry writes once on transient errors.
    pub retry_writes: bool,
    /// Metadata fields to index (`metadata.<field>`) for `GET /v1/sessions?metadata.<field>=…`.
    pub metadata_index_fields: Vec<String>,
    /// `"auto"` (the default): concurrent writes are group-committed in one
    /// `bulkWrite` transaction on MongoDB 8.0+, one transaction per write on
    /// older servers; `"group_commit"` (refuse to start without 8.0) or
    /// `"transaction"` forces one. `MONGODB_WRITE_PATH` overrides `"auto"`.
    pub write_path: String,
}

impl Default for MongoConfig {
    fn default() -> Self {
        Self {
            uri: "mongodb://127.0.0.1:27017".into(),
            database: "session_gateway".into(),
            app_name: "session-gateway".into(),
            min_pool_size: 0,
            max_pool_size: 100,
            max_idle_time_ms: 30_000,
            connect_timeout_ms: 5_000,
            server_selection_timeout_ms: 5_000,
            compressors: Vec::new(),
            read_preference: "primary".into(),
            write_concern: "majority".into(),
            journal: true,
            retry_reads: true,
            retry_writes: true,
            metadata_index_fields: Vec::new(),
            write_path: "auto".into(),
        }
    }
}

impl std::fmt::Debug for MongoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoConfig")
            .field("uri", &redact_uri(&self.uri))
            .field("database", &self.database)
            .field("app_name", &self.app_name)
            .field("min_pool_size", &self.min_pool_size)
            .field("max_pool_size", &self.max_pool_size)
            .field("read_preference", &self.read_preference)
            .field("write_concern", &self.write_concern)
            .finish_non_exhaustive()
    }
}

/// Replaces the password in a connection string with `***`.
pub fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_owned();
    };
    let host_start = rest.find('/').unwrap_or(rest.len());
    match rest[..host_start].rfind('@') {
        Some(at) => {
            let creds = &rest[..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None => uri.to_owned(),
    }
}

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
    /// Wall-clock budget of one call, enforced by epoch interruption.
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
    /// How often the watcher polls file modification times.
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

/// `[notify]`: delivery of the notifications after-hooks `publish`, from the
/// durable outbox to Amazon SNS topics and SQS queues (see [`crate::outbox`]).
///
/// Plugins publish to logical target names; `[notify.targets.<name>]` maps
/// each name to a topic or queue. With no targets the dispatcher is not
/// started and published notifications stay pending in the outbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Most deliveries in flight at once.
    pub concurrency: usize,
    /// Attempts before a notification is dead-lettered (kept in the store
    /// until an operator retries it).
    pub max_attempts: u32,
    /// Base of the exponential backoff between attempts: attempt `n` waits a
    /// random time in `[0, min(backoff_max_ms, backoff_base_ms * 2^(n-1))]`
    /// ("full jitter").
    pub backoff_base_ms: u64,
    /// Ceiling of the backoff.
    pub backoff_max_ms: u64,
    /// Budget of one delivery attempt (connect, send, answer).
    pub send_timeout_ms: u64,
    /// How long a claimed notification stays leased to this gateway; must
    /// exceed `send_timeout_ms` so that no other gateway claims it mid-send.
    pub lease_ms: u64,
    /// How often the dispatcher looks for due notifications when nothing wakes it.
    pub poll_interval_ms: u64,
    /// How to reach AWS.
    pub aws: AwsConfig,
    /// Logical target name -> SNS topic or SQS queue.
    pub targets: BTreeMap<String, NotifyTarget>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            concurrency: 8,
            max_attempts: 10,
            backoff_base_ms: 500,
            backoff_max_ms: 300_000,
            send_timeout_ms: 10_000,
            lease_ms: 60_000,
            poll_interval_ms: 500,
            aws: AwsConfig::default(),
            targets: BTreeMap::new(),
        }
    }
}

/// `[notify.aws]`: region, endpoint and (for tests only) static credentials.
/// Anything not set here comes from the standard AWS chain (environment,
/// shared config/credentials files, web identity, ECS/EC2 instance roles).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    /// Region, e.g. `"eu-west-1"`; otherwise `AWS_REGION` or the profile's.
    pub region: Option<String>,
    /// Endpoint for both SNS and SQS, e.g. `"http://127.0.0.1:5000"` for
    /// moto or LocalStack; otherwise the regional AWS endpoints.
    pub endpoint_url: Option<String>,
    /// Static access key id. Intended for local emulators and tests only;
    /// in production leave it out and use the standard credential chain.
    pub access_key_id: Option<String>,
    /// Static secret key (with `access_key_id`).
    pub secret_access_key: Option<String>,
    /// Optional session token (with the static keys).
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AwsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsConfig")
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "***"),
            )
            .field("session_token", &self.session_token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// What kind of destination a notification target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// An SNS topic (`topic_arn`).
    Sns,
    /// An SQS queue (`queue_url`).
    Sqs,
}

/// `[notify.targets.<name>]`: `kind = "sns"` with `topic_arn`, or
/// `kind = "sqs"` with `queue_url`. A name ending in `.fifo` selects FIFO
/// semantics (deduplication id and message group).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyTarget {
    /// `"sns"` or `"sqs"`.
    pub kind: TargetKind,
    /// The topic (SNS targets).
    #[serde(default)]
    pub topic_arn: Option<String>,
    /// The queue (SQS targets).
    #[serde(default)]
    pub queue_url: Option<String>,
}

impl NotifyTarget {
    /// The topic ARN or queue URL (validated to be present for the kind).
    pub fn address(&self) -> &str {
        match self.kind {
            TargetKind::Sns => self.topic_arn.as_deref().unwrap_or_default(),
            TargetKind::Sqs => self.queue_url.as_deref().unwrap_or_default(),
        }
    }

    /// Whether the topic or queue is FIFO (its name ends with `.fifo`).
    pub fn is_fifo(&self) -> bool {
        self.address().ends_with(".fifo")
    }

    fn validate(&self, name: &str) -> Result<(), String> {
        let (needed, other, other_kind) = match self.kind {
            TargetKind::Sns => ("topic_arn", &self.queue_url, "queue_url"),
            TargetKind::Sqs => ("queue_url", &self.topic_arn, "topic_arn"),
        };
        let kind = match self.kind {
            TargetKind::Sns => "sns",
            TargetKind::Sqs => "sqs",
        };
        if other.is_some() {
            return Err(format!(
                "notify.targets.{name}: {other_kind} is not a key of kind = {kind:?} (it needs {needed})"
            ));
        }
        let address = match self.kind {
            TargetKind::Sns => &self.topic_arn,
            TargetKind::Sqs => &self.queue_url,
        };
        let Some(address) = address.as_deref().filter(|a| !a.is_empty()) else {
            return Err(format!(
                "notify.targets.{name}: kind = {kind:?} needs {needed}"
            ));
        };
        let ok = match self.kind {
            // arn:partition:sns:region:account:topic
            TargetKind::Sns => {
                let parts: Vec<&str> = address.split(':').collect();
                parts.len() == 6 && parts[0] == "arn" && parts[2] == "sns" && !parts[5].is_empty()
            }
            TargetKind::Sqs => {
                (address.starts_with("https://") || address.starts_with("http://"))
                    && address
                        .trim_end_matches('/')
                        .rsplit('/')
                        .next()
                        .is_some_and(|q| !q.is_empty() && !q.contains(':'))
            }
        };
        if !ok {
            let form = match self.kind {
                TargetKind::Sns => "arn:aws:sns:<region>:<account>:<topic>",
                TargetKind::Sqs => "https://sqs.<region>.amazonaws.com/<account>/<queue>",
            };
            return Err(format!(
                "notify.targets.{name}: {needed} {address:?} is not of the form {form}"
            ));
        }
        Ok(())
    }
}

impl Config {
    /// Checks `[notify]`, and that every hook's publish grant names a
    /// configured target (only when targets are configured at all, so a
    /// config without `[notify]` still loads and notifications stay pending).
    fn validate_notify(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let n = &self.notify;
        if n.concurrency == 0 || n.max_attempts == 0 {
            return invalid("notify.concurrency and notify.max_attempts must be at least 1".into());
        }
        if n.backoff_base_ms == 0 || n.backoff_max_ms < n.backoff_base_ms {
            return invalid(
                "notify.backoff_base_ms must be positive and at most notify.backoff_max_ms".into(),
            );
        }
        if n.send_timeout_ms == 0 || n.poll_interval_ms == 0 {
            return invalid(
                "notify.send_timeout_ms and notify.poll_interval_ms must be positive".into(),
            );
        }
        if n.lease_ms <= n.send_timeout_ms {
            return invalid(format!(
                "notify.lease_ms ({}) must exceed notify.send_timeout_ms ({}), or a slow send could be claimed twice",
                n.lease_ms, n.send_timeout_ms
            ));
        }
        let aws = &n.aws;
        if aws.access_key_id.is_some() != aws.secret_access_key.is_some() {
            return invalid("notify.aws: access_key_id and secret_access_key go together".into());
        }
        if aws.session_token.is_some() && aws.access_key_id.is_none() {
            return invalid(
                "notify.aws: session_token needs access_key_id and secret_access_key".into(),
            );
        }
        if aws.region.as_deref() == Some("") {
            return invalid("notify.aws.region must not be empty".into());
        }
        if let Some(url) = &aws.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return invalid(format!(
                "notify.aws.endpoint_url {url:?} must start with http:// or https://"
            ));
        }
        for (name, target) in &n.targets {
            target.validate(name).map_err(ConfigError::Invalid)?;
        }
        if n.targets.is_empty() {
            return Ok(());
        }
        for h in &self.hooks {
            for g in &h.grants.publish {
                if !n.targets.contains_key(g) {
                    let known: Vec<&str> = n.targets.keys().map(String::as_str).collect();
                    return invalid(format!(
                        "hooks.{}: grants.publish names target {g:?}, which is not configured in [notify.targets] (configured: {})",
                        h.name,
                        known.join(", ")
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown/mistyped keys.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the key.
        message: String,
    },
    /// The values are inconsistent.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads and validates a config file. Relative paths inside it are resolved
    /// against the file's directory; `MONGODB_URI` overrides the MongoDB uri.
    ///
    /// # Errors
    /// When the file is unreadable, malformed, has unknown keys or bad values.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        if let Ok(uri) = std::env::var("MONGODB_URI")
            && !uri.is_empty()
        {
            cfg.storage.mongodb.uri = uri;
        }
        Ok(cfg)
    }

    /// Parses and validates config text (paths are left as written).
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Makes relative paths relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.storage.embedded.path);
        fix(&mut self.plugins.cache_dir);
        for h in &mut self.hooks {
            fix(&mut h.wasm);
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.server.max_page_size == 0 {
            return invalid("server.max_page_size must be at least 1".into());
        }
        if self.server.header_read_timeout_ms == 0 || self.server.idle_timeout_ms == 0 {
            return invalid(
                "server.header_read_timeout_ms and server.idle_timeout_ms must be positive".into(),
            );
        }
        let mut names = BTreeMap::new();
        for (i, h) in self.hooks.iter().enumerate() {
            if names.insert(h.name.clone(), i).is_some() {
                return invalid(format!("hooks: name {:?} is used twice", h.name));
            }
            if h.events.is_empty() {
                return invalid(format!("hooks.{}: events must not be empty", h.name));
            }
            for e in &h.events {
                if !e.valid_in(h.phase) {
                    return invalid(format!(
                        "hooks.{}: event \"{e}\" is not valid for phase {:?} (before: metadata.update, metadata.delete, feedback.add, message.append, message.update; after: metadata.update, metadata.delete, feedback.add; get: metadata.get)",
                        h.name, h.phase
                    ));
                }
            }
            if h.timeout_ms == 0 || h.memory_mb == 0 {
                return invalid(format!(
                    "hooks.{}: timeout_ms and memory_mb must be positive",
                    h.name
                ));
            }
            let b = &h.breaker;
            if b.failures > 0
                && (!(b.failure_ratio > 0.0 && b.failure_ratio <= 1.0)
                    || b.window_ms == 0
                    || b.cooldown_ms == 0)
            {
                return invalid(format!(
                    "hooks.{}: breaker.failure_ratio must be in (0, 1], and breaker.window_ms and breaker.cooldown_ms positive",
                    h.name
                ));
            }
            if let Some(pin) = &h.sha256
                && (pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return invalid(format!("hooks.{}: sha256 must be 64 hex digits", h.name));
            }
        }
        self.retention.policy().map_err(ConfigError::Invalid)?;
        self.auth.validate().map_err(ConfigError::Invalid)?;
        if self.limits.max_in_flight == 0 || self.limits.request_timeout_ms == 0 {
            return invalid(
                "limits.max_in_flight and limits.request_timeout_ms must be positive".into(),
            );
        }
        if self.server.max_response_bytes == 0 {
            return invalid("server.max_response_bytes must be positive".into());
        }
        if self.retention.sweep_interval_ms == 0 {
            return invalid("retention.sweep_interval_ms must be positive".into());
        }
        self.validate_notify()?;
        let m = &self.storage.mongodb;
        if !matches!(
            m.read_preference.as_str(),
            "primary" | "primaryPreferred" | "secondary" | "secondaryPreferred" | "nearest"
        ) {
            return invalid(format!(
                "storage.mongodb.read_preference {:?} is not one of primary, primaryPreferred, secondary, secondaryPreferred, nearest",
                m.read_preference
            ));
        }
        for c in &m.compressors {
            if c != "zlib" {
                return invalid(format!(
                    "storage.mongodb.compressors: {c:?} is not supported (supported: zlib)"
                ));
            }
        }
        if m.write_concern != "majority" && m.write_concern.parse::<u32>().is_err() {
            return invalid(format!(
                "storage.mongodb.write_concern {:?} must be \"majority\" or a number",
                m.write_concern
            ));
        }
        for f in &m.metadata_index_fields {
            crate::metadata::validate_path(f).map_err(|e| {
                ConfigError::Invalid(format!("storage.mongodb.metadata_index_fields: {e}"))
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_parses() {
        let text = include_str!("../../gateway.toml");
        let cfg = Config::parse(text).expect("gateway.toml parses");
        assert_eq!(cfg.storage.kind, StorageType::Embedded);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        let err = Config::parse("[storage.mongodb]\nurl = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("url"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("30d"), Ok(30 * 86_400_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("0"), Ok(0));
        assert!(parse_duration_ms("3 weeks").is_err());
        let err = Config::parse("[retention]\nsessions = { AGENT = \"soon\" }\n").unwrap_err();
        assert!(
            err.to_string().contains("retention.sessions.AGENT"),
            "{err}"
        );
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_uri("mongodb://app:s3cret@db:27017/x?a=b"),
            "mongodb://app:***@db:27017/x?a=b"
        );
        assert_eq!(redact_uri("mongodb://db:27017"), "mongodb://db:27017");
        let cfg = MongoConfig {
            uri: "mongodb://u:p@h".into(),
            ..MongoConfig::default()
        };
        assert!(!format!("{cfg:?}").contains(":p@"));
    }

    #[test]
    fn bad_hook_events_are_refused() {
        let text = r#"
[[hooks]]
name = "x"
wasm = "x.wasm"
events = ["metadata.get"]
phase = "before"
"#;
        let err = Config::parse(text).unwrap_err();
        assert!(err.to_string().contains("not valid for phase"), "{err}");
    }

    #[test]
    fn breaker_settings() {
        let hook = |breaker: &str| {
            format!(
                "[[hooks]]\nname = \"x\"\nwasm = \"x.wasm\"\nevents = [\"metadata.update\"]\nphase = \"before\"\n{breaker}\n"
            )
        };
        let cfg = Config::parse(&hook("")).unwrap();
        assert_eq!(cfg.hooks[0].breaker, BreakerConfig::default());
        let cfg = Config::parse(&hook("breaker = { failures = 2, cooldown_ms = 500 }")).unwrap();
        assert_eq!(cfg.hooks[0].breaker.failures, 2);
        assert_eq!(cfg.hooks[0].breaker.cooldown_ms, 500);
        assert_eq!(cfg.hooks[0].breaker.window_ms, 10_000);
        // Off: the other settings do not matter.
        Config::parse(&hook("breaker = { failures = 0, failure_ratio = 0.0 }")).unwrap();
        for bad in [
            "breaker = { failure_ratio = 0.0 }",
            "breaker = { failure_ratio = 1.5 }",
            "breaker = { window_ms = 0 }",
            "breaker = { cooldown_ms = 0 }",
        ] {
            let err = Config::parse(&hook(bad)).unwrap_err().to_string();
            assert!(err.contains("breaker."), "{bad}: {err}");
        }
        let err = Config::parse(&hook("breaker = { failurs = 3 }"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("failurs"), "{err}");
    }
}

#[cfg(test)]
mod notify_tests {
    use super::*;

    const TARGETS: &str = r#"
[notify.aws]
region = "us-east-1"
[notify.targets.good]
kind = "sns"
topic_arn = "arn:aws:sns:us-east-1:123456789012:good"
[notify.targets.ui]
kind = "sqs"
queue_url = "https://sqs.us-east-1.amazonaws.com/123456789012/ui.fifo"
"#;

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_and_targets() {
        let cfg = Config::parse("").unwrap();
        assert!(cfg.notify.targets.is_empty());
        assert_eq!(cfg.notify.max_attempts, 10);
        let cfg = Config::parse(TARGETS).unwrap();
        let good = &cfg.notify.targets["good"];
        assert_eq!(
            (good.kind, good.address(), good.is_fifo()),
            (
                TargetKind::Sns,
                "arn:aws:sns:us-east-1:123456789012:good",
                false
            )
        );
        let ui = &cfg.notify.targets["ui"];
        assert_eq!(ui.kind, TargetKind::Sqs);
        assert!(ui.is_fifo());
    }

    #[test]
    fn targets_need_the_keys_of_their_kind() {
        let e = err("[notify.targets.good]\nkind = \"sns\"\n");
        assert!(
            e.contains("notify.targets.good: kind = \"sns\" needs topic_arn"),
            "{e}"
        );
        let e = err("[notify.targets.ui]\nkind = \"sqs\"\ntopic_arn = \"arn:aws:sns:r:1:t\"\n");
        assert!(
            e.contains("notify.targets.ui: topic_arn is not a key of kind = \"sqs\""),
            "{e}"
        );
        let e = err("[notify.targets.ui]\nkind = \"sqs\"\nqueue_url = \"ui\"\n");
        assert!(
            e.contains("notify.targets.ui: queue_url \"ui\" is not of the form"),
            "{e}"
        );
        let e = err("[notify.targets.good]\nkind = \"sns\"\ntopic_arn = \"good\"\n");
        assert!(
            e.contains("notify.targets.good: topic_arn \"good\" is not of the form"),
            "{e}"
        );
        let e = err("[notify.targets.x]\nkind = \"sms\"\n");
        assert!(e.contains("sms"), "{e}");
        let e = err("[notify.targets.x]\nkind = \"sqs\"\nqueue = \"x\"\n");
        assert!(e.contains("queue"), "{e}");
    }

    #[test]
    fn grants_must_name_configured_targets() {
        let hook = "[[hooks]]\nname = \"router\"\nwasm = \"r.wasm\"\nphase = \"after\"\nevents = [\"feedback.add\"]\ngrants = { publish = [\"good\", \"neutral\"] }\n";
        // Without targets the grants are not checked: notifications stay pending.
        Config::parse(hook).unwrap();
        let e = err(&format!("{TARGETS}\n{hook}"));
        assert!(
            e.contains("hooks.router: grants.publish names target \"neutral\""),
            "{e}"
        );
        assert!(e.contains("configured: good, ui"), "{e}");
    }

    #[test]
    fn delivery_settings_are_checked() {
        assert!(err("[notify]\nconcurrency = 0\n").contains("notify.concurrency"));
        assert!(
            err("[notify]\nbackoff_base_ms = 10\nbackoff_max_ms = 5\n").contains("backoff_base_ms")
        );
        assert!(err("[notify]\nlease_ms = 1000\nsend_timeout_ms = 1000\n").contains("lease_ms"));
        assert!(err("[notify.aws]\naccess_key_id = \"a\"\n").contains("go together"));
        assert!(err("[notify.aws]\nendpoint_url = \"127.0.0.1:5000\"\n").contains("endpoint_url"));
        assert!(err("[notify]\nbatch = 1\n").contains("batch"));
    }

    /// The commented-out targets and hooks of the shipped gateway.toml are
    /// consistent: enabled together, they load.
    #[test]
    fn shipped_notify_examples_load_when_enabled() {
        let mut on = false;
        let mut text = String::new();
        for line in include_str!("../../gateway.toml").lines() {
            if line == "# [notify.targets.good]" {
                on = true;
            } else if line.trim().is_empty() {
                on = false;
            }
            let line = if on {
                line.strip_prefix("# ")
                    .or_else(|| line.strip_prefix('#'))
                    .unwrap_or(line)
            } else {
                line
            };
            if line.starts_with("# Notification examples") {
                on = true;
            }
            text.push_str(line);
            text.push('\n');
        }
        let cfg = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(cfg.notify.targets.len(), 4);
        assert!(cfg.hooks.iter().any(|h| h.name == "route-feedback"));
        assert!(cfg.hooks.iter().any(|h| h.name == "propagate-metadata"));
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let cfg = Config::parse(
            "[notify.aws]\naccess_key_id = \"AKID\"\nsecret_access_key = \"s3cret\"\n",
        )
        .unwrap();
        let s = format!("{:?}", cfg.notify.aws);
        assert!(s.contains("AKID") && !s.contains("s3cret"), "{s}");
    }
}
