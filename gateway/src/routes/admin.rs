//! Admin endpoints: plugins (list, reload) and the notification outbox.
//!
//! Tenancy: an `admin` key sees and acts on its own tenant only (its outbox
//! items, the counts of its items, its plugin quarantines); another tenant's
//! outbox item answers 404 like a missing one. Operations that affect every
//! tenant (plugin reload) and cross-tenant views (every tenant's outbox,
//! process-wide plugin and dispatcher counters) need the `operator` role.

use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::AppState;
use crate::api::{BreakerInfo, OutboxItem, OutboxList, PluginInfo, PluginList, ReloadResult};
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::extract::{Path, Query};
use crate::hooks::HookHost;
use crate::model::{format_ms, now_ms};
use crate::store::OutboxState;

/// Admin routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/plugins", get(plugins))
        .route("/v1/admin/reload", post(reload))
        .route("/v1/admin/outbox", get(outbox))
        .route("/v1/admin/outbox/{id}/retry", post(retry))
}

/// List plugins
///
/// Every loaded plugin with its file hash, events, load time and the outcome
/// of the last (re)load. An `admin` key sees whether the plugin is
/// quarantined for its own tenant (`breaker.quarantined_tenants` holds at
/// most its own name); an `operator` key sees every quarantined tenant and
/// the process-wide call statistics (`calls`, `errors`, latency, trips…),
/// which `admin` answers leave out.
#[utoipa::path(
    get,
    path = "/v1/admin/plugins",
    operation_id = "list_plugins",
    tag = "admin",
    responses(
        (status = 200, description = "The plugins", body = crate::api::PluginList),
    )
)]
async fn plugins(State(state): State<AppState>, caller: Caller) -> AppResult<Json<PluginList>> {
    caller.require_admin()?;
    let scope = caller.admin_scope(None)?;
    Ok(Json(plugin_list(&state.hooks, scope)))
}

/// The loaded plugins: everything for an operator (`tenant` `None`); for one
/// tenant's admin, the plugins' configuration and load state and that
/// tenant's own quarantine only — no other tenant's name, and none of the
/// process-wide call counters, which also count other tenants' traffic.
fn plugin_list(hooks: &HookHost, tenant: Option<&str>) -> PluginList {
    let loaded = hooks.snapshot();
    let report = hooks.last_report();
    let now = std::time::Instant::now();
    let operator = tenant.is_none();
    let plugins = loaded
        .plugins
        .iter()
        .map(|p| {
            let s = &p.meta.stats;
            let b = &p.breakers;
            let calls = s.calls.load(Relaxed);
            let stat = |v: u64| operator.then_some(v);
            let mut quarantined = b.open(now);
            if let Some(t) = tenant {
                quarantined.retain(|q| q == t);
            }
            PluginInfo {
                name: p.meta.name.clone(),
                wasm: p.config.wasm.to_string_lossy().into_owned(),
                sha256: p.sha256.clone(),
                events: p
                    .config
                    .events
                    .iter()
                    .map(|e| e.as_str().to_owned())
                    .collect(),
                phase: p.config.phase,
                instance: p.config.instance,
                on_error: p.config.on_error,
                exports: p.exports.clone(),
                wit: p.wit.to_owned(),
                loaded_at: format_ms(p.loaded_at),
                calls: stat(calls),
                errors: stat(s.errors.load(Relaxed)),
                instantiations: stat(s.instantiations.load(Relaxed)),
                publish_refused: stat(s.publish_refused.load(Relaxed)),
                latency_us_avg: stat(
                    s.latency_us_total
                        .load(Relaxed)
                        .checked_div(calls)
                        .unwrap_or(0),
                ),
                latency_us_max: stat(s.latency_us_max.load(Relaxed)),
                breaker: BreakerInfo {
                    config: p.config.breaker,
                    trips: stat(b.trips.load(Relaxed)),
                    skipped_calls: stat(b.skipped.load(Relaxed)),
                    isolated_calls: stat(b.isolated.load(Relaxed)),
                    isolated_inline_calls: stat(b.inline.load(Relaxed)),
                    quarantined_tenants: quarantined,
                },
                last_error: report
                    .failed
                    .iter()
                    .find(|(n, _)| n == &p.meta.name)
                    .map(|(_, e)| e.clone()),
            }
        })
        .collect();
    PluginList {
        plugins,
        last_reload: report.into(),
    }
}

/// Reload plugins
///
/// Re-reads the config file and the plugin files now (as on `SIGHUP`). A
/// plugin that fails to load keeps its previous version serving. Plugins are
/// shared by every tenant, so this needs an `operator` key (403 for `admin`).
#[utoipa::path(
    post,
    path = "/v1/admin/reload",
    operation_id = "reload_plugins",
    tag = "admin",
    responses(
        (status = 200, description = "The reload report", body = crate::api::ReloadResult),
        (status = 403, description = "`forbidden`: not an operator key"),
    )
)]
async fn reload(State(state): State<AppState>, caller: Caller) -> AppResult<Json<ReloadResult>> {
    caller.require_operator("reloading plugins")?;
    let report = state.hooks.reload().await;
    Ok(Json(ReloadResult {
        reload: report.into(),
    }))
}

/// List outbox notifications
///
/// Notifications published by after-hooks, waiting for delivery (`pending`)
/// or given up on (`dead`). An `admin` key sees its own tenant's items and
/// counts; an `operator` key sees every tenant's (or one, with `tenant`) and
/// the dispatcher's process-wide counters. While a get-hook shapes metadata,
/// payloads are withheld from `admin` keys (`payload: null`,
/// `payload_withheld: true`): they are published from the change as stored
/// and may hold what the get-hook hides.
#[utoipa::path(
    get,
    path = "/v1/admin/outbox",
    operation_id = "list_outbox",
    tag = "admin",
    params(
        ("state" = Option<crate::api::OutboxStateParam>, Query, description = "Only items in this state"),
        ("limit" = Option<u64>, Query, description = "At most this many items: default 100, capped at `server.max_page_size`"),
        ("tenant" = Option<String>, Query, description = "Only this tenant's items (operator keys; an admin key may name only its own tenant)"),
    ),
    responses(
        (status = 200, description = "Outbox items and counters", body = crate::api::OutboxList),
        (status = 400, description = "`invalid_query`"),
        (status = 403, description = "`forbidden`: an admin key named another tenant"),
    )
)]
async fn outbox(
    State(state): State<AppState>,
    caller: Caller,
    q: Query,
) -> AppResult<Json<OutboxList>> {
    caller.require_admin()?;
    q.only(&["state", "limit", "tenant"])?;
    let scope = caller.admin_scope(q.get("tenant")?)?;
    let filter = match q.get("state")? {
        None => None,
        Some("pending") => Some(OutboxState::Pending),
        Some("dead") => Some(OutboxState::Dead),
        Some(other) => {
            return Err(AppError::bad_request(
                "invalid_query",
                format!("state must be pending or dead, got {other:?}"),
            ));
        }
    };
    let limit = q
        .get_u64("limit")?
        .unwrap_or(100)
        .min(state.config.server.max_page_size as u64) as usize;
    let items = state.store.list_outbox_of(scope, filter, limit).await?;
    let (pending, dead) = state.store.outbox_counts_of(scope).await?;
    let show = state.service.shaper().shows_payloads(&caller);
    // Counters since start cover every tenant: operators only.
    let stats = &state.outbox_stats;
    let since_start =
        |c: &std::sync::atomic::AtomicU64| caller.is_operator().then(|| c.load(Relaxed));
    Ok(Json(OutboxList {
        items: items
            .into_iter()
            .map(|i| OutboxItem::view(i, show))
            .collect(),
        pending,
        dead,
        delivered: since_start(&stats.delivered),
        retried: since_start(&stats.retried),
        dead_lettered: since_start(&stats.dead_lettered),
        dispatcher_running: caller.is_operator().then(|| stats.running.load(Relaxed)),
    }))
}

/// Retry an outbox notification
///
/// Makes the item pending again with its next attempt due now. An `admin`
/// key may retry its own tenant's items only (another tenant's is 404).
#[utoipa::path(
    post,
    path = "/v1/admin/outbox/{id}/retry",
    operation_id = "retry_outbox",
    tag = "admin",
    params(("id" = String, Path, description = "The outbox item's id")),
    responses(
        (status = 200, description = "The item, pending again", body = crate::api::OutboxItem),
        (status = 400, description = "`invalid_path`"),
        (status = 404, description = "`not_found`: no such outbox item (or another tenant's, for an admin key)"),
    )
)]
async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<OutboxItem>> {
    caller.require_admin()?;
    let scope = caller.admin_scope(None)?;
    let item = state.store.retry_outbox_of(scope, &id, now_ms()).await?;
    state.outbox_wake.notify_one();
    Ok(Json(OutboxItem::view(
        item,
        state.service.shaper().shows_payloads(&caller),
    )))
}
