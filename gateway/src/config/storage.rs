//! `[storage]`: which store backs the gateway and how to reach it.

use std::path::PathBuf;

use serde::Deserialize;

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
    /// Index `sessions` on `updated_at`, for `GET /v1/sessions?updated_after=…`
    /// over large tenants. Off by default: every write changes `updated_at`,
    /// so the index costs every write an index update, and without it such a
    /// listing scans the tenant's sessions.
    pub index_updated_at: bool,
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
            index_updated_at: false,
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
