//! `message-guardrail`: an example message plugin (WIT
//! `gateway:hooks@0.2.0`) that refuses messages over a policy before they
//! are stored.
//!
//! On `before-append` and `before-update` it collects the text of the message
//! content (every string in it, except the `role` field) and denies the
//! message, with a reason for the client, when
//!
//! * the text is longer than `max_chars` characters, or
//! * it contains one of the `blocked` terms (case-insensitive, as a
//!   substring; the reason does not repeat the term).
//!
//! Otherwise the message is allowed unchanged: this plugin never rewrites.
//!
//! Configuration (the plugin's `config` table in gateway.toml):
//!
//! ```json
//! { "max_chars": 4000, "blocked": ["internal only"], "roles": ["user"] }
//! ```
//!
//! * `max_chars` (optional, absent = no limit).
//! * `blocked` (optional, default none).
//! * `roles` (optional, absent = every message): the message roles the
//!   policy applies to; a message without a `role` is always checked.
//!
//! A `config` it cannot understand (e.g. `max_chars` not a number) denies
//! every message with a reason saying so (fail closed).

use std::sync::OnceLock;

use exports::gateway::hooks::message_hook::{Guest, Json, MessageRef, MessageVerdict, SessionRef};
use gateway::hooks::host;
use serde_json::Value;

wit_bindgen::generate!({
    path: "../../wit/hooks@0.2.0",
    world: "message-plugin",
});

#[derive(Debug, Default)]
struct Policy {
    max_chars: Option<usize>,
    blocked: Vec<String>,
    roles: Option<Vec<String>>,
}

impl Policy {
    fn from_config(text: &str) -> Result<Self, String> {
        let config: Value =
            serde_json::from_str(text).map_err(|e| format!("config is not JSON: {e}"))?;
        let max_chars = match config.get("max_chars") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or("max_chars must be a non-negative integer")?,
            ),
        };
        let strings = |key: &str| -> Result<Option<Vec<String>>, String> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| v.as_str().map(str::to_lowercase))
                    .collect::<Option<Vec<_>>>()
                    .map(Some)
                    .ok_or(format!("{key} must be a list of strings")),
                Some(_) => Err(format!("{key} must be a list of strings")),
            }
        };
        Ok(Self {
            max_chars,
            blocked: strings("blocked")?.unwrap_or_default(),
            roles: strings("roles")?,
        })
    }

    fn check(&self, content: &str) -> MessageVerdict {
        let Ok(value) = serde_json::from_str::<Value>(content) else {
            return MessageVerdict::Allow;
        };
        if let (Some(roles), Some(role)) = (&self.roles, value.get("role").and_then(Value::as_str))
            && !roles.iter().any(|r| r == &role.to_lowercase())
        {
            return MessageVerdict::Allow;
        }
        let mut text = String::new();
        collect_text(&value, true, &mut text);
        let chars = text.chars().count();
        if let Some(max) = self.max_chars
            && chars > max
        {
            return MessageVerdict::Deny(format!(
                "message is {chars} characters long; the policy allows at most {max}"
            ));
        }
        let lower = text.to_lowercase();
        if self
            .blocked
            .iter()
            .any(|t| !t.is_empty() && lower.contains(t))
        {
            return MessageVerdict::Deny("message contains a term the policy blocks".to_owned());
        }
        MessageVerdict::Allow
    }
}

/// Appends every string in `v` (but a top-level `role`) to `out`, one per line.
fn collect_text(v: &Value, top: bool, out: &mut String) {
    match v {
        Value::String(s) => {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(s);
        }
        Value::Array(items) => items.iter().for_each(|x| collect_text(x, false, out)),
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| !(top && k.as_str() == "role"))
            .for_each(|(_, x)| collect_text(x, false, out)),
        _ => {}
    }
}

fn policy() -> &'static Result<Policy, String> {
    static POLICY: OnceLock<Result<Policy, String>> = OnceLock::new();
    POLICY.get_or_init(|| Policy::from_config(&host::config()))
}

fn verdict(content: &str) -> MessageVerdict {
    match policy() {
        Ok(p) => p.check(content),
        Err(e) => MessageVerdict::Deny(format!("guardrail misconfigured: {e}")),
    }
}

struct Guardrail;

impl Guest for Guardrail {
    fn before_append(_session: SessionRef, _message: MessageRef, content: Json) -> MessageVerdict {
        verdict(&content)
    }

    fn before_update(_session: SessionRef, _message: MessageRef, content: Json) -> MessageVerdict {
        verdict(&content)
    }
}

export!(Guardrail);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_and_blocked_terms() {
        let p =
            Policy::from_config(r#"{"max_chars": 10, "blocked": ["Secret"], "roles": ["user"]}"#)
                .unwrap();
        let msg = |role: &str, text: &str| {
            serde_json::json!({"role": role, "content": [{"text": text}]}).to_string()
        };
        assert!(matches!(
            p.check(&msg("user", "short")),
            MessageVerdict::Allow
        ));
        assert!(matches!(
            p.check(&msg("user", "far too long a text")),
            MessageVerdict::Deny(_)
        ));
        assert!(matches!(
            p.check(&msg("user", "a SECRET")),
            MessageVerdict::Deny(_)
        ));
        assert!(matches!(
            p.check(&msg("assistant", "far too long a text")),
            MessageVerdict::Allow
        ));
        assert!(Policy::from_config(r#"{"max_chars": "x"}"#).is_err());
    }
}
