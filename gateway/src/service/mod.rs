//! The use cases of the API, one file per family, independent of HTTP
//! extractors and responses.
//!
//! Each use case runs the same steps in one place: authorize and validate the
//! input → run the before-hooks → write to the store → tell the change-event
//! processor and the session's SSE feed ([`Committed`]) → shape what is shown
//! ([`shape::Shaper`], the get-hooks). Handlers in `routes` only parse the
//! request, call one method of [`Service`] and turn its result into an
//! answer (status, headers, JSON), so no handler can forget a commit
//! notification or a redaction.
//!
//! - [`sessions`]: create, read, list, batch-get, delete.
//! - [`agents`]: put (with preconditions), read, list.
//! - [`messages`]: append, page/latest reads, read, replace/patch, and the
//!   message hooks.
//! - [`metadata`]: read, patch, delete keys.
//! - [`feedbacks`]: add, list.
//! - [`batch`]: several writes of one session in one request.
//! - [`events`]: a session's event stream (backfill, resume, live feed).
//! - [`shape`]: every exit of stored metadata, through the get-hooks.

pub mod agents;
pub mod batch;
pub mod events;
pub mod feedbacks;
pub mod messages;
pub mod metadata;
pub mod sessions;
pub mod shape;

use std::sync::Arc;

use tokio::sync::Notify;

use crate::auth::Caller;
use crate::config::Config;
use crate::error::{AppError, AppResult};
use crate::hooks::{HookHost, Refusal, Subject};
use crate::model::{Tenant, validate_id};
use crate::store::{AfterHooked, SessionStore};
use crate::stream::EventHub;

pub use self::shape::{Shaper, Shown};

/// Tells whoever waits for committed changes that a session changed: the
/// change-event processor (only while some after-hook observes events) and
/// the session's live SSE feed.
#[derive(Clone)]
pub struct Committed {
    hooks: Arc<HookHost>,
    events_wake: Arc<Notify>,
    hub: Arc<EventHub>,
}

impl Committed {
    /// A notifier waking `events_wake` (the event processor) and `hub`.
    pub fn new(hooks: Arc<HookHost>, events_wake: Arc<Notify>, hub: Arc<EventHub>) -> Self {
        Self {
            hooks,
            events_wake,
            hub,
        }
    }

    /// A change was committed in session `sid` of `t`.
    pub fn session(&self, t: &Tenant, sid: &str) {
        // Only events some after-hook observes are queued for the processor.
        if self.hooks.snapshot().after_hooked() != AfterHooked::default() {
            self.events_wake.notify_one();
        }
        self.hub.committed(t, sid);
    }
}

/// The use cases, with the handles they need: the store, the hook host, the
/// commit notifier, the shaper and the configuration's limits.
pub struct Service {
    store: Arc<dyn SessionStore>,
    hooks: Arc<HookHost>,
    config: Arc<Config>,
    committed: Committed,
    shape: Arc<Shaper>,
    hub: Arc<EventHub>,
}

impl Service {
    /// A service over `store` and `hooks`, notifying `committed`, shaping
    /// with `shape` (the one the SSE feeds use too) and following the feeds
    /// of `hub`.
    pub fn new(
        store: Arc<dyn SessionStore>,
        hooks: Arc<HookHost>,
        config: Arc<Config>,
        committed: Committed,
        shape: Arc<Shaper>,
        hub: Arc<EventHub>,
    ) -> Self {
        Self {
            store,
            hooks,
            config,
            committed,
            shape,
            hub,
        }
    }

    /// The shaper every exit of stored metadata goes through.
    pub fn shaper(&self) -> &Arc<Shaper> {
        &self.shape
    }

    /// Who the hooks of a request are about (their `session-ref`). The
    /// session's type is read (one store read) only when `needed`, i.e.
    /// when some hook of the request will run; the same [`Subject`] then
    /// serves every chain of the request.
    ///
    /// # Errors
    /// 404 when the type has to be read and the session is missing; a store
    /// error.
    async fn subject(&self, t: &Tenant, sid: &str, needed: bool) -> AppResult<Subject> {
        let session_type = if needed {
            self.store.get_session(t, sid).await?.session_type
        } else {
            String::new()
        };
        Ok(Subject {
            tenant: t.as_str().to_owned(),
            session_id: sid.to_owned(),
            session_type,
        })
    }
}

/// Checks a session id from a path or body (400 `invalid_session_id`).
pub fn check_sid(sid: &str) -> AppResult<()> {
    validate_id("session_id", sid).map_err(|m| AppError::bad_request("invalid_session_id", m))
}

/// Checks an agent id from a path (400 `invalid_agent_id`).
pub fn check_aid(aid: &str) -> AppResult<()> {
    validate_id("agent_id", aid).map_err(|m| AppError::bad_request("invalid_agent_id", m))
}

/// Checks a session and an agent id.
fn check_ids(sid: &str, aid: &str) -> AppResult<()> {
    check_sid(sid)?;
    check_aid(aid)
}

/// The caller may write (403 otherwise).
fn writer(caller: &Caller) -> AppResult<()> {
    caller.require_write()
}

/// A hook chain's refusal as the client sees it: a deny is 422
/// `denied_by_hook`; a failing or quarantined fail-closed plugin is 503
/// `hook_failed` (with `Retry-After` while quarantined). Messages name the plugin.
impl From<Refusal> for AppError {
    fn from(r: Refusal) -> Self {
        match &r {
            Refusal::Denied { .. } => AppError::unprocessable("denied_by_hook", r.to_string()),
            Refusal::Failed { .. } | Refusal::Skipped { .. } => AppError::Unavailable {
                code: "hook_failed",
                message: r.to_string(),
                retry_after: r.retry_after_secs(),
            },
        }
    }
}
