//! `pii-masker`: an example message plugin (WIT `gateway:hooks@0.2.0`) that
//! masks personal data in user messages before they are stored.
//!
//! On `before-append` and `before-update` it walks every string in the
//! message content (except the `role` field) and replaces
//!
//! * e-mail addresses (`local@domain.tld`) with `[email]`,
//! * card numbers (13 to 19 digits, optionally grouped by spaces or hyphens,
//!   that pass the Luhn check) with `[card]`,
//! * phone numbers (9 to 15 digits, or 7 to 15 after a leading `+`, grouped by
//!   spaces, hyphens, dots or parentheses) with `[phone]`.
//!
//! A message that contains none is allowed unchanged; otherwise the masked
//! copy is what gets stored (a rewrite). Masking is deterministic, so a
//! client's retried append is recognised as the message already stored.
//!
//! Configuration (the plugin's `config` table in gateway.toml, all optional):
//!
//! ```json
//! { "roles": ["user"], "mask": ["email", "card", "phone"] }
//! ```
//!
//! * `roles`: the message roles to mask (default `["user"]`). A message whose
//!   content is not an object with a `role` string is masked as well (its
//!   author is unknown).
//! * `mask`: which kinds to mask (default all three).
//!
//! The detectors are heuristics over plain text (no regex engine, to keep
//! the component small); they favour masking a number that merely looks like
//! a phone number over storing a real one.

mod mask;

use std::sync::OnceLock;

use exports::gateway::hooks::message_hook::{Guest, Json, MessageRef, MessageVerdict, SessionRef};
use gateway::hooks::host;
use mask::Kinds;
use serde_json::Value;

wit_bindgen::generate!({
    path: "../../wit/hooks@0.2.0",
    world: "message-plugin",
});

struct Settings {
    roles: Vec<String>,
    kinds: Kinds,
}

fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let config: Value = serde_json::from_str(&host::config()).unwrap_or(Value::Null);
        let list = |key: &str| -> Option<Vec<String>> {
            config.get(key)?.as_array().map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
        };
        let roles = list("roles").unwrap_or_else(|| vec!["user".to_owned()]);
        let kinds = list("mask").map_or(Kinds::ALL, |k| Kinds {
            email: k.iter().any(|x| x == "email"),
            card: k.iter().any(|x| x == "card"),
            phone: k.iter().any(|x| x == "phone"),
        });
        Settings { roles, kinds }
    })
}

/// The verdict on one message's content.
fn verdict(content: &str, settings: &Settings) -> MessageVerdict {
    let Ok(mut value) = serde_json::from_str::<Value>(content) else {
        // The host only passes JSON; nothing to mask in anything else.
        return MessageVerdict::Allow;
    };
    if let Some(role) = value.get("role").and_then(Value::as_str)
        && !settings.roles.iter().any(|r| r == role)
    {
        return MessageVerdict::Allow;
    }
    if mask_value(&mut value, settings.kinds, true) {
        MessageVerdict::Rewrite(value.to_string())
    } else {
        MessageVerdict::Allow
    }
}

/// Masks every string in `v` (but a top-level `role`); whether any changed.
fn mask_value(v: &mut Value, kinds: Kinds, top: bool) -> bool {
    match v {
        Value::String(s) => match mask::mask(s, kinds) {
            Some(masked) => {
                *s = masked;
                true
            }
            None => false,
        },
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |any, x| mask_value(x, kinds, false) | any),
        Value::Object(map) => map
            .iter_mut()
            .filter(|(k, _)| !(top && k.as_str() == "role"))
            .fold(false, |any, (_, x)| mask_value(x, kinds, false) | any),
        _ => false,
    }
}

struct Masker;

impl Guest for Masker {
    fn before_append(_session: SessionRef, _message: MessageRef, content: Json) -> MessageVerdict {
        verdict(&content, settings())
    }

    fn before_update(_session: SessionRef, _message: MessageRef, content: Json) -> MessageVerdict {
        verdict(&content, settings())
    }
}

export!(Masker);

#[cfg(test)]
mod tests {
    use super::*;

    fn user_only() -> Settings {
        Settings {
            roles: vec!["user".into()],
            kinds: Kinds::ALL,
        }
    }

    #[test]
    fn masks_user_messages_only() {
        let s = user_only();
        let user = r#"{"role":"user","content":[{"text":"mail bob@example.com"}]}"#;
        match verdict(user, &s) {
            MessageVerdict::Rewrite(t) => {
                assert_eq!(t, r#"{"role":"user","content":[{"text":"mail [email]"}]}"#)
            }
            _ => panic!("not rewritten"),
        }
        let bot = r#"{"role":"assistant","content":[{"text":"mail bob@example.com"}]}"#;
        assert!(matches!(verdict(bot, &s), MessageVerdict::Allow));
        let clean = r#"{"role":"user","content":[{"text":"hello"}]}"#;
        assert!(matches!(verdict(clean, &s), MessageVerdict::Allow));
    }
}
