//! `[retention]`: how long sessions and change events are kept.

use std::collections::BTreeMap;

use serde::Deserialize;

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
    pub fn policy(&self) -> Result<Retention, String> {
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
        Ok(Retention {
            sessions,
            default_session_ms,
            events_ms: (events > 0).then_some(events),
        })
    }
}

/// How long sessions and events are kept: the policy the stores apply,
/// from [`RetentionConfig::policy`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Retention {
    /// Session lifetime after its last change, in ms, by `session_type`.
    pub sessions: BTreeMap<String, i64>,
    /// Lifetime of sessions whose type is not listed; `None` keeps them forever.
    pub default_session_ms: Option<i64>,
    /// How long change events are kept (the window for SSE resume and
    /// after-hook redelivery); `None` keeps them forever.
    pub events_ms: Option<i64>,
}

impl Retention {
    /// The lifetime of a session of this type, if it has one.
    pub fn session_ttl(&self, session_type: &str) -> Option<i64> {
        self.sessions
            .get(session_type)
            .copied()
            .or(self.default_session_ms)
    }

    /// Whether a session last changed at `updated_at` has expired at `now`.
    pub fn session_expired(&self, session_type: &str, updated_at: i64, now: i64) -> bool {
        self.session_ttl(session_type)
            .is_some_and(|ttl| updated_at.saturating_add(ttl) <= now)
    }
}
