//! `gateway.toml`: typed, strict, with defaults in code.
//!
//! Every table denies unknown keys, so a typo is a start-up error that names the
//! key instead of a silently ignored setting. The shipped `gateway.toml` is parsed
//! by a test, so it cannot drift from these structs.
//!
//! One file per section: [`server`](ServerConfig), [`storage`](StorageConfig),
//! [`hooks` and `plugins`](HookConfig), [`retention`](RetentionConfig),
//! [`limits`](LimitsConfig) and [`notify`](NotifyConfig); `[auth]` is
//! [`crate::auth::AuthConfig`]. Every type is used as `crate::config::X`.

mod hooks;
mod limits;
mod notify;
mod retention;
mod server;
mod storage;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use self::hooks::{
    BreakerConfig, Grants, HookConfig, HookEvent, HookPhase, InstanceMode, OnError, PluginsConfig,
};
pub use self::limits::LimitsConfig;
pub use self::notify::{AwsConfig, NotifyConfig, NotifyTarget, TargetKind};
pub use self::retention::{Retention, RetentionConfig, parse_duration_ms};
pub use self::server::ServerConfig;
pub use self::storage::{EmbeddedConfig, MongoConfig, StorageConfig, StorageType, redact_uri};

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
    pub limits: LimitsConfig,
    /// Delivery of hook notifications to SNS/SQS.
    #[serde(default)]
    pub notify: NotifyConfig,
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
        self.notify
            .validate(&self.hooks)
            .map_err(ConfigError::Invalid)?;
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
        let text = include_str!("../../../gateway.toml");
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
