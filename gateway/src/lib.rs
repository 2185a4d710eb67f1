//! Session Gateway: durable sessions for AI agents over HTTP, with metadata and
//! feedback hooks as sandboxed WebAssembly components.
//!
//! Crate map. Imports flow one way, from the top of this list's layers down:
//! `routes`/`server`/`openapi`/`state` → `service` → `api` → {`hooks`, `store`,
//! `events`, `outbox`, `stream`, `limits`, `observe`} → {`config`, `auth`,
//! `error`, `extract`, `metadata`} → `model`; `scripts/module_graph.py`
//! prints the graph, its cycles and any import that goes back up.
//! - [`config`]: `gateway.toml`, typed and strict, one file per section.
//! - [`error`]: [`error::AppError`], the uniform JSON error of every endpoint.
//! - [`extract`]: JSON/path/query extractors that answer bad input with that error.
//! - [`auth`]: API keys, tenants and roles: who a request is from.
//! - [`limits`]: the request guard: overload, auth, rate limit, timeout.
//! - [`model`]: sessions, agents, messages, feedbacks, events.
//! - [`api`]: the API's envelopes, admin views and parameters (serialized and documented by one type).
//! - [`openapi`]: assembles the OpenAPI document from the handlers' annotations.
//! - [`metadata`]: dotted-path metadata changes, shared by both stores.
//! - [`observe`]: request ids, tracing spans and Prometheus metrics.
//! - [`routes`]: one file per resource, each with `router()`: parse, call the service, answer.
//! - [`state`]: [`AppState`], the handles every handler shares.
//! - [`service`]: the use cases (validate, hooks, store, commit notification, get-hook shaping).
//! - [`server`]: the accept loop: connection cap, header and idle timeouts, shutdown.
//! - [`store`]: the [`store::SessionStore`] contract, embedded (redb) and MongoDB; [`store::open`].
//! - [`hooks`]: the wasmtime host: plugins, limits, chains, hot swap.
//! - [`events`]: runs after-hooks from the durable change-event log.
//! - [`outbox`]: delivers the notifications hooks publish to SNS/SQS.
//! - [`stream`]: live per-session feeds for SSE subscribers, from the same log.
//! - [`import`]: `gateway import`, bringing sessions over from the Python original.

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod events;
pub mod extract;
pub mod hooks;
#[cfg(feature = "mongodb")]
pub mod import;
pub mod limits;
pub mod metadata;
pub mod model;
pub mod observe;
pub mod openapi;
pub mod outbox;
pub mod routes;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
pub mod stream;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::config::Config;
use crate::hooks::HookHost;
use crate::store::SessionStore;

pub use state::AppState;

/// The HTTP application: every route and the OpenAPI document, with the body
/// limit applied.
pub fn app(state: AppState) -> Router {
    let limit = state.config.server.max_body_bytes;
    routes::router()
        .route("/openapi.json", axum::routing::get(openapi::serve))
        .method_not_allowed_fallback(routes::method_not_allowed)
        .fallback(|| async { error::AppError::RouteNotFound("no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.guard.clone(),
            limits::guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            observe::observe,
        ))
        .with_state(state)
}

pub use store::open as open_store;

/// A running gateway's background parts; dropping it stops them.
pub struct Gateway {
    /// Shared state (also handed to the router).
    pub state: AppState,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    /// Opens the store, loads the hooks and starts the background tasks.
    ///
    /// # Errors
    /// When the store cannot be opened or a required plugin fails to load.
    pub async fn start(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<Self> {
        let store = store::open(&config).await?;
        store.set_retention(config.retention.policy().map_err(anyhow::Error::msg)?);
        if config.auth.mode == auth::AuthMode::None {
            tracing::warn!(
                "AUTHENTICATION IS OFF (auth.mode = \"none\"): every client acts as admin of the default tenant. \
                 Use this only for local development; see [auth] in gateway.toml to require API keys."
            );
        }
        let hooks = Arc::new(HookHost::start(&config, config_path, store.clone()).await?);
        let (stop, stop_rx) = watch::channel(false);
        let guard = Arc::new(limits::Guard::new(
            auth::Keys::new(&config.auth),
            &config.limits,
        ));
        let shaper = Arc::new(service::Shaper::new(store.clone(), hooks.clone()));
        let hub = Arc::new(stream::EventHub::new(store.clone(), shaper.clone()));
        let config = Arc::new(config);
        let events_wake = Arc::new(Notify::new());
        let service = Arc::new(service::Service::new(
            store.clone(),
            hooks.clone(),
            config.clone(),
            service::Committed::new(hooks.clone(), events_wake.clone(), hub.clone()),
            shaper,
            hub.clone(),
        ));
        let state = AppState::new(state::Shared {
            store: store.clone(),
            config,
            hooks: hooks.clone(),
            events_wake,
            outbox_wake: Arc::new(Notify::new()),
            outbox_stats: Arc::new(outbox::OutboxStats::default()),
            metrics: Arc::new(observe::Metrics::new(hooks.clone(), hub.clone())),
            hub,
            guard,
            service,
        });
        let mut tasks = vec![tokio::spawn(events::process(
            store,
            hooks.clone(),
            state.events_wake.clone(),
            state.outbox_wake.clone(),
            stop_rx.clone(),
        ))];
        if state.store.is_shared() {
            let interval = Duration::from_millis(state.config.server.sse_poll_ms);
            tasks.push(tokio::spawn(
                state.hub.clone().poll_shared(interval, stop_rx.clone()),
            ));
        }
        tasks.push(tokio::spawn(sweep(
            state.store.clone(),
            state.hub.clone(),
            state.events_wake.clone(),
            Duration::from_millis(state.config.retention.sweep_interval_ms),
            stop_rx.clone(),
        )));
        tasks.extend(
            outbox::spawn(
                state.store.clone(),
                &state.config.notify,
                state.outbox_stats.clone(),
                state.outbox_wake.clone(),
                stop_rx.clone(),
            )
            .await?,
        );
        if state.config.plugins.watch {
            let interval = Duration::from_millis(state.config.plugins.watch_interval_ms);
            tasks.push(tokio::spawn(hooks.watch(interval, stop_rx)));
        }
        Ok(Self { state, stop, tasks })
    }

    /// Serves HTTP on `listener` (with the connection limits of [`server`])
    /// until `shutdown` resolves, then ends SSE streams, drains in-flight
    /// requests (bounded by `server.shutdown_grace_ms`) and stops the
    /// background tasks.
    ///
    /// # Errors
    /// When the server fails.
    pub fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        // Boxed, so that the server (accept loop, connection tasks) is
        // compiled once here and not again in every crate that calls this
        // with its own shutdown future (the binary, each test binary).
        self.serve_until(listener, Box::pin(shutdown))
    }

    async fn serve_until(
        self,
        listener: TcpListener,
        shutdown: server::Shutdown,
    ) -> anyhow::Result<()> {
        let grace = Duration::from_millis(self.state.config.server.shutdown_grace_ms);
        let limits = server::ConnLimits::from_config(&self.state.config);
        let hub = self.state.hub.clone();
        server::serve(
            listener,
            app(self.state.clone()),
            limits,
            self.state.metrics.connections.clone(),
            shutdown,
            // Open SSE streams end now (clients resume with Last-Event-ID),
            // so they do not hold the shutdown for the whole grace period.
            Box::new(move || hub.close_streams()),
            grace,
        )
        .await?;
        self.shutdown().await;
        Ok(())
    }

    /// Stops the background tasks and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

/// `gateway serve`: loads the config at `config_path`, starts the gateway,
/// serves until SIGINT or SIGTERM (reloading the plugins on SIGHUP), then
/// shuts down as [`Gateway::serve`] does.
///
/// The future is boxed so that the binary only awaits it: were the gateway
/// owned and dropped there, every type it holds (the hooks, wasmtime's
/// stores, the store's futures) would get its drop code and generic
/// instances compiled a second time, in the binary.
pub fn serve_config(
    config_path: PathBuf,
) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> {
    use anyhow::Context as _;
    Box::pin(async move {
        let config = Config::load(&config_path)?;
        let listen = config.server.listen;
        let gw = Gateway::start(config, Some(config_path)).await?;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        tracing::info!(addr = %listener.local_addr()?, store = gw.state.store.name(), "session gateway listening");
        let hooks = gw.state.hooks.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading plugins");
                hooks.reload().await;
            }
        });
        gw.serve(listener, shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: draining in-flight requests");
}

/// Removes expired sessions and events every `interval` until stopped.
async fn sweep(
    store: Arc<dyn SessionStore>,
    hub: Arc<stream::EventHub>,
    events_wake: Arc<Notify>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    const BATCH: usize = 1_000;
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        loop {
            match store.sweep_expired(model::now_ms(), BATCH).await {
                Ok(r) if r.sessions > 0 || r.events > 0 => {
                    tracing::info!(sessions = r.sessions, events = r.events, "retention sweep");
                    if r.sessions > 0 {
                        // Subscribers of an expired session get its
                        // `session.deleted` (reason "expired").
                        hub.committed_anywhere();
                        // Their events may be queued for after-hooks.
                        events_wake.notify_one();
                    }
                    if r.sessions < BATCH as u64 && r.events < BATCH as u64 * 10 {
                        break;
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "retention sweep failed; retrying later");
                    break;
                }
            }
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
