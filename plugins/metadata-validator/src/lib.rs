//! `metadata-validator`: an example metadata plugin that checks what clients
//! write into a session's metadata.
//!
//! Configuration (the plugin's `config` table in gateway.toml):
//!
//! ```json
//! {
//!   "required": ["status"],
//!   "allowed": ["status", "priority", "profile", "notes"],
//!   "types": { "status": "string", "priority": "integer", "profile": "object" },
//!   "max_value_bytes": 4096
//! }
//! ```
//!
//! * `required`: keys that can be neither deleted nor set to `null`.
//! * `allowed` (optional, absent = any key): the keys an update may set.
//! * `types`: the JSON type each key's value must have, one of `string`,
//!   `number`, `integer`, `boolean`, `object`, `array`, `null`.
//! * `max_value_bytes` (optional): the largest value an update may set. A
//!   string is measured by its UTF-8 length, any other value by its compact
//!   JSON text.
//!
//! Keys are dotted paths. An `allowed` or `types` entry matches an assigned
//! path that equals it or whose first segment equals it (`profile` covers
//! `profile.tier`); an exact entry wins over a first-segment one in `types`.
//! Deleting, or replacing with a value that lacks it, a parent of a required
//! key (`profile` when `profile.tier` is required) is denied as well.
//!
//! The first violation found denies the whole change, with a reason meant for
//! the client, e.g. `value for "status" must be a string, got number`. A
//! configuration the plugin cannot understand denies every change (fail
//! closed) with a reason that says so. `on-get` and `after-change` do nothing.

mod rules;

use std::sync::OnceLock;

use exports::gateway::hooks::metadata_hook::{
    CommitInfo, Guest, Json, MetadataChange, MetadataVerdict, SessionRef,
};
use gateway::hooks::host;
use rules::Rules;

wit_bindgen::generate!({
    path: "../../wit/hooks@0.1.0",
    world: "metadata-plugin",
});

/// The rules, parsed from the config once per instance (the config is fixed
/// for an instance's life).
fn rules() -> &'static Result<Rules, String> {
    static RULES: OnceLock<Result<Rules, String>> = OnceLock::new();
    RULES.get_or_init(|| Rules::from_config(&host::config()))
}

struct Validator;

impl Guest for Validator {
    fn before_change(_session: SessionRef, change: MetadataChange) -> MetadataVerdict {
        let rules = match rules() {
            Ok(rules) => rules,
            Err(e) => {
                host::log(host::Level::Error, &format!("invalid config: {e}"), &[]);
                return MetadataVerdict::Deny(format!("metadata validator misconfigured: {e}"));
            }
        };
        let result = match &change {
            MetadataChange::Update(assignments) => rules.check_update(
                assignments
                    .iter()
                    .map(|a| (a.path.as_str(), a.value.as_str())),
            ),
            MetadataChange::Delete(paths) => rules.check_delete(paths.iter().map(String::as_str)),
        };
        match result {
            Ok(()) => MetadataVerdict::Allow,
            Err(reason) => MetadataVerdict::Deny(reason),
        }
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
        metadata
    }
}

export!(Validator);
