//! [`AppState`]: the handles every handler shares, and what the extractors
//! read from them.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::Config;
use crate::hooks::HookHost;
use crate::store::SessionStore;
use crate::{extract, limits, observe, outbox, service, stream};

/// What every handler shares: one `Arc`, so the clone axum makes for each
/// handler and middleware is one reference count, not one per handle.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// Shares `handles` with every handler.
    #[must_use]
    pub fn new(handles: Shared) -> Self {
        Self(Arc::new(handles))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The handles behind an [`AppState`].
pub struct Shared {
    /// The store, chosen by `storage.type`.
    pub store: Arc<dyn SessionStore>,
    /// The configuration the gateway started with.
    pub config: Arc<Config>,
    /// Loaded hooks.
    pub hooks: Arc<HookHost>,
    /// Wakes the change-event processor after a commit.
    pub events_wake: Arc<Notify>,
    /// Wakes the outbox dispatcher (e.g. after an operator retry).
    pub outbox_wake: Arc<Notify>,
    /// Outbox delivery counters (`GET /v1/admin/outbox`).
    pub outbox_stats: Arc<outbox::OutboxStats>,
    /// Live feeds for SSE subscribers.
    pub hub: Arc<stream::EventHub>,
    /// Keys, rate limits and the in-flight limit.
    pub guard: Arc<limits::Guard>,
    /// Request metrics for `/metrics`.
    pub metrics: Arc<observe::Metrics>,
    /// The use cases the API routes call.
    pub service: Arc<service::Service>,
}

impl axum::extract::FromRef<AppState> for extract::MaxJsonDepth {
    fn from_ref(state: &AppState) -> Self {
        Self(state.config.limits.max_json_depth)
    }
}
