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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::auth::Caller;
use crate::config::Config;
use crate::config::{HookEvent, HookPhase};
use crate::error::{AppError, AppResult};
use crate::hooks::{HookHost, Loaded, Refusal, Subject};
use crate::model::{Tenant, validate_id};
use crate::store::{AfterHooked, SessionStore, StoreError};
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
    types: SessionTypes,
}

/// How many session types [`SessionTypes`] keeps (an arbitrary one is
/// dropped to make room): about 1–2 MB at the longest ids.
const SESSION_TYPES_KEPT: usize = 8192;

/// How many times a hooked write runs its before-hooks again because the
/// session turned out to be of another type (deleted and re-created
/// meanwhile) before it gives up with 409 `session_replaced`.
const TYPE_RETRIES: usize = 4;

/// The types of sessions this gateway has seen, so that a hooked metadata or
/// feedback write need not read the session to give its plugins the
/// `session-ref`. A type never changes while a session lives, but a session
/// can be deleted and re-created under the same id with another type (here
/// or on another gateway), so an entry is only a guess: the write itself
/// checks it ([`SessionData::change_metadata_of_type`]) and, when the stored
/// type differs, nothing is written and the hooks run again with the stored
/// type. Bounded to [`SESSION_TYPES_KEPT`] entries.
///
/// [`SessionData::change_metadata_of_type`]: crate::store::SessionData::change_metadata_of_type
#[derive(Default)]
struct SessionTypes {
    map: Mutex<HashMap<(String, String), Arc<str>>>,
}

impl SessionTypes {
    fn get(&self, t: &Tenant, sid: &str) -> Option<Arc<str>> {
        let key = (t.as_str().to_owned(), sid.to_owned());
        self.map.lock().ok()?.get(&key).cloned()
    }

    fn put(&self, t: &Tenant, sid: &str, ty: &str) {
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        let key = (t.as_str().to_owned(), sid.to_owned());
        if map.get(&key).is_some_and(|known| **known == *ty) {
            return;
        }
        if map.len() >= SESSION_TYPES_KEPT
            && !map.contains_key(&key)
            && let Some(any) = map.keys().next().cloned()
        {
            map.remove(&any);
        }
        map.insert(key, Arc::from(ty));
    }

    fn forget(&self, t: &Tenant, sid: &str) {
        if let Ok(mut map) = self.map.lock()
            && !map.is_empty()
        {
            map.remove(&(t.as_str().to_owned(), sid.to_owned()));
        }
    }
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
            types: SessionTypes::default(),
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

impl Service {
    /// Notes the type of a session this request created, when a before-hook
    /// of a metadata or feedback write will need it.
    fn created(&self, loaded: &Loaded, t: &Tenant, sid: &str, session_type: &str) {
        let events = [
            HookEvent::MetadataUpdate,
            HookEvent::MetadataDelete,
            HookEvent::FeedbackAdd,
        ];
        if events
            .into_iter()
            .any(|e| loaded.runs(HookPhase::Before, e))
        {
            self.types.put(t, sid, session_type);
        }
    }

    /// Forgets the type of a session this gateway deleted.
    fn deleted(&self, t: &Tenant, sid: &str) {
        self.types.forget(t, sid);
    }

    /// Reads the session's type (404 when missing) and notes it.
    async fn read_type(&self, t: &Tenant, sid: &str) -> AppResult<Arc<str>> {
        match self.store.get_session(t, sid).await {
            Ok(s) => {
                self.types.put(t, sid, &s.session_type);
                Ok(Arc::from(s.session_type))
            }
            Err(e) => {
                if matches!(e, StoreError::NotFound(_)) {
                    self.types.forget(t, sid);
                }
                Err(e.into())
            }
        }
    }

    /// A hooked metadata or feedback write: `hooks` (the before-chain) run
    /// with the session's type ([`Service::hook_type`]), then `write` stores
    /// what they answered, checked against that type; a refusal goes through
    /// [`Service::refused`], a write error through [`Service::retyped`], and
    /// the hooks run again with the type they answer.
    ///
    /// # Errors
    /// The refusal, 404, 409 `session_replaced`, a store error.
    async fn hooked_write<I, O, H, W>(
        &self,
        t: &Tenant,
        sid: &str,
        hooks: impl Fn(Subject) -> H,
        write: impl Fn(I, String) -> W,
    ) -> AppResult<O>
    where
        H: Future<Output = Result<I, Refusal>>,
        W: Future<Output = Result<O, StoreError>>,
    {
        let mut ty = self.hook_type(t, sid).await?;
        loop {
            let hooked = match hooks(ty.subject.clone()).await {
                Ok(hooked) => hooked,
                Err(r) => {
                    ty = self.refused(t, sid, ty, r).await?;
                    continue;
                }
            };
            match write(hooked, ty.subject.session_type.clone()).await {
                Ok(out) => return Ok(out),
                Err(e) => ty = self.retyped(t, sid, ty, e)?,
            }
        }
    }

    /// The session type a hooked metadata or feedback write gives its
    /// before-hooks: from [`SessionTypes`] when this gateway knows it, so the
    /// request reads nothing more than its write; otherwise read once.
    ///
    /// The write then runs as a loop ([`Service::hooked_write`]).
    ///
    /// # Errors
    /// 404 when the type has to be read and the session is missing; a store
    /// error.
    async fn hook_type(&self, t: &Tenant, sid: &str) -> AppResult<HookType> {
        let (ty, learned) = match self.types.get(t, sid) {
            Some(ty) => (ty, false),
            None => (self.read_type(t, sid).await?, true),
        };
        Ok(HookType {
            subject: Subject {
                tenant: t.as_str().to_owned(),
                session_id: sid.to_owned(),
                session_type: ty.to_string(),
            },
            learned,
            runs: 1,
        })
    }

    /// The before-hooks refused a write given `ty`. A refusal given with a
    /// remembered type is answered only once a read confirms the type (a
    /// session deleted elsewhere answers 404, as it would without hooks);
    /// when the type read differs, the hooks run again with it.
    ///
    /// # Errors
    /// The refusal (422, 503), 404, a store error.
    async fn refused(
        &self,
        t: &Tenant,
        sid: &str,
        ty: HookType,
        r: Refusal,
    ) -> AppResult<HookType> {
        if ty.learned {
            return Err(r.into());
        }
        let read = self.read_type(t, sid).await?;
        if *read == *ty.subject.session_type {
            return Err(r.into());
        }
        ty.again(&read)
    }

    /// A hooked write failed with `e`: when the session is of another type
    /// than the hooks were given (deleted and re-created meanwhile), nothing
    /// was written and the hooks run again with the stored type.
    ///
    /// # Errors
    /// `e` otherwise (a missing session forgets its type); 409
    /// `session_replaced` after [`TYPE_RETRIES`] runs.
    fn retyped(&self, t: &Tenant, sid: &str, ty: HookType, e: StoreError) -> AppResult<HookType> {
        match e {
            StoreError::OtherType(stored) => {
                self.types.put(t, sid, &stored);
                ty.again(&stored)
            }
            e => {
                if matches!(e, StoreError::NotFound(_)) {
                    self.types.forget(t, sid);
                }
                Err(e.into())
            }
        }
    }
}

/// The `session-ref` a hooked write gives its before-hooks
/// ([`Service::hook_type`]).
struct HookType {
    subject: Subject,
    /// Whether this request learned the type (a read, its own write) rather
    /// than remembered it.
    learned: bool,
    /// How many times the hooks ran.
    runs: usize,
}

impl HookType {
    /// The hooks run again with the stored type `ty`.
    fn again(mut self, ty: &str) -> AppResult<Self> {
        if self.runs >= TYPE_RETRIES {
            return Err(StoreError::OtherType(ty.to_owned()).into());
        }
        self.subject.session_type = ty.to_owned();
        self.learned = true;
        self.runs += 1;
        Ok(self)
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
