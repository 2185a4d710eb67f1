//! `metadata-redactor`: an example metadata plugin that masks or hides parts
//! of the metadata that GET returns. What is stored is never changed.
//!
//! Configuration (the plugin's `config` table in gateway.toml):
//!
//! ```json
//! { "mask": ["api_key", "profile.ssn"], "hide": ["internal"], "mask_with": "***" }
//! ```
//!
//! * `mask`: dotted paths whose value, when present, is replaced by
//!   `mask_with` (so a client can see that the key exists).
//! * `hide`: dotted paths removed from the result altogether.
//! * `mask_with` (default `"***"`): the replacement value, any JSON value.
//!
//! Paths go through nested objects only (`profile.ssn` is
//! `metadata["profile"]["ssn"]`). Before-hooks allow everything and
//! `after-change` does nothing.
//!
//! A config the plugin cannot understand makes `on-get` fail (the plugin logs
//! an error and traps) rather than show what it was meant to hide.
//!
//! Note: a client that reads a masked value and writes it back stores the mask
//! text; pair this plugin with a validator rule if that matters.

mod redact;

use std::sync::OnceLock;

use exports::gateway::hooks::metadata_hook::{
    CommitInfo, Guest, Json, MetadataChange, MetadataVerdict, SessionRef,
};
use gateway::hooks::host;
use redact::Redaction;

wit_bindgen::generate!({
    path: "../../wit/hooks@0.1.0",
    world: "metadata-plugin",
});

fn redaction() -> &'static Result<Redaction, String> {
    static REDACTION: OnceLock<Result<Redaction, String>> = OnceLock::new();
    REDACTION.get_or_init(|| Redaction::from_config(&host::config()))
}

struct Redactor;

impl Guest for Redactor {
    fn before_change(_session: SessionRef, _change: MetadataChange) -> MetadataVerdict {
        MetadataVerdict::Allow
    }

    fn after_change(
        _session: SessionRef,
        _change: MetadataChange,
        _changed: Vec<String>,
        _values: Json,
        _info: CommitInfo,
    ) {
    }

    fn on_get(_session: SessionRef, metadata: Json) -> Json {
        match redaction() {
            Ok(redaction) => redaction.apply(&metadata),
            Err(e) => {
                host::log(host::Level::Error, &format!("invalid config: {e}"), &[]);
                panic!("metadata-redactor: invalid config: {e}");
            }
        }
    }
}

export!(Redactor);
