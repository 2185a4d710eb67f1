//! What a hook chain decided, in the hooks' own terms (no HTTP, no storage):
//! the caller maps it onto its answer (the service: `From<Refusal> for AppError`).

use std::time::Duration;

/// Who a hook call is about: the `session-ref` every hook receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// Tenant that owns the session.
    pub tenant: String,
    /// The session's id.
    pub session_id: String,
    /// The session's type (empty when no hook needed it, see
    /// `service::Service::subject`).
    pub session_type: String,
}

/// Why a chain did not let a request through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A plugin denied it, with its reason for the client.
    Denied {
        /// The plugin's configured name.
        plugin: String,
        /// The reason it gave.
        reason: String,
    },
    /// A fail-closed plugin failed (trap, timeout, limits, invalid answer).
    Failed {
        /// The plugin's configured name.
        plugin: String,
        /// What went wrong.
        cause: String,
    },
    /// A fail-closed plugin was not run: its breaker is open for this tenant.
    Skipped {
        /// The plugin's configured name.
        plugin: String,
        /// How long until it runs again.
        retry_in: Duration,
    },
}

impl Refusal {
    /// Whole seconds a client should wait before retrying (`Skipped` only).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::Skipped { retry_in, .. } => Some(retry_in.as_secs() + 1),
            _ => None,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Denied { plugin, reason } => write!(f, "{plugin}: {reason}"),
            Self::Failed { plugin, cause } => write!(f, "{plugin}: {cause}"),
            Self::Skipped { plugin, retry_in } => write!(
                f,
                "{plugin}: quarantined after repeated failures; runs again in {} s",
                retry_in.as_secs() + 1
            ),
        }
    }
}

/// A chain's outcome: `Ok` is "allow", with the value as the chain let it
/// through (possibly rewritten); `Err` says why it stopped.
pub type Outcome<T> = Result<T, Refusal>;

/// A notification an after-hook published, to be queued for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The plugin that published it.
    pub plugin: String,
    /// Stable id derived from the event, the plugin and the call's position.
    pub id: String,
    /// Logical target.
    pub target: String,
    /// JSON payload text.
    pub payload: String,
}
