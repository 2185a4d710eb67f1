//! `metadata-propagator`: an example metadata plugin that publishes changes to
//! selected metadata fields to a notification target (e.g. so a UI can show a
//! session's status live).
//!
//! Configuration (the plugin's `config` table in gateway.toml; these are the
//! defaults):
//!
//! ```json
//! { "fields": ["status", "priority"], "target": "ui" }
//! ```
//!
//! `after-change` keeps the changed paths that are a listed field or lie under
//! one (`profile.tier` under `profile`); if none is left nothing is published,
//! otherwise it publishes to `target`:
//!
//! ```json
//! { "session_id": "...", "tenant": "...", "action": "update" | "delete",
//!   "fields": { "<path>": <new value, null when removed>, ... },
//!   "timestamp": "<commit time, RFC 3339>", "event_id": 12 }
//! ```
//!
//! The target must be granted to the plugin in gateway.toml. A failed
//! `publish` is logged as a warning. Before-hooks allow everything and
//! `on-get` returns the metadata unchanged.

mod propagate;

use std::sync::OnceLock;

use exports::gateway::hooks::metadata_hook::{
    CommitInfo, Guest, Json, MetadataChange, MetadataVerdict, SessionRef,
};
use gateway::hooks::host::{self, Field, Level, PublishError};
use propagate::Propagation;

wit_bindgen::generate!({
    path: "../../wit/hooks@0.1.0",
    world: "metadata-plugin",
});

fn propagation() -> &'static Result<Propagation, String> {
    static PROPAGATION: OnceLock<Result<Propagation, String>> = OnceLock::new();
    PROPAGATION.get_or_init(|| Propagation::from_config(&host::config()))
}

fn field(key: &str, value: impl Into<String>) -> Field {
    Field {
        key: key.to_owned(),
        value: value.into(),
    }
}

fn describe(error: PublishError) -> &'static str {
    match error {
        PublishError::NotGranted => "not-granted",
        PublishError::InvalidPayload => "invalid-payload",
        PublishError::Unavailable => "unavailable",
    }
}

struct Propagator;

impl Guest for Propagator {
    fn before_change(_session: SessionRef, _change: MetadataChange) -> MetadataVerdict {
        MetadataVerdict::Allow
    }

    fn after_change(
        session: SessionRef,
        change: MetadataChange,
        changed: Vec<String>,
        values: Json,
        info: CommitInfo,
    ) {
        let propagation = match propagation() {
            Ok(propagation) => propagation,
            Err(e) => {
                host::log(Level::Error, &format!("invalid config: {e}"), &[]);
                return;
            }
        };
        let action = match change {
            MetadataChange::Update(_) => "update",
            MetadataChange::Delete(_) => "delete",
        };
        let Some(payload) = propagation.payload(
            &session.tenant,
            &session.session_id,
            action,
            &changed,
            &values,
            &info.timestamp,
            info.event_id,
        ) else {
            return;
        };
        let target = propagation.target();
        match host::publish(target, &payload) {
            Ok(id) => host::log(
                Level::Debug,
                "metadata change published",
                &[
                    field("target", target),
                    field("notification_id", id),
                    field("event_id", info.event_id.to_string()),
                ],
            ),
            Err(e) => host::log(
                Level::Warn,
                &format!("publishing metadata change failed: {}", describe(e)),
                &[
                    field("target", target),
                    field("error", describe(e)),
                    field("session_id", session.session_id),
                    field("event_id", info.event_id.to_string()),
                ],
            ),
        }
    }

    fn on_get(_session: SessionRef, metadata: Json) -> Json {
        metadata
    }
}

export!(Propagator);
