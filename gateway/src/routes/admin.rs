//! Admin endpoints: plugins (list, reload) and the notification outbox.
//!
//! Tenancy: an `admin` key sees and acts on its own tenant only (its outbox
//! items, the counts of its items, its plugin quarantines); another tenant's
//! outbox item answers 404 like a missing one. Operations that affect every
//! tenant (plugin reload) and cross-tenant views (every tenant's outbox,
//! process-wide plugin and dispatcher counters) need the `operator` role.

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::extract::{Path, Query};
use crate::model::{format_ms, now_ms};
use crate::store::{OutboxItem, OutboxState};

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
        (status = 200, description = "The plugins", body = crate::openapi::PluginList),
    )
)]
async fn plugins(State(state): State<AppState>, caller: Caller) -> AppResult<axum::Json<Value>> {
    caller.require_admin()?;
    let scope = caller.admin_scope(None)?;
    Ok(axum::Json(state.hooks.describe_for(scope)))
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
        (status = 200, description = "The reload report", body = crate::openapi::ReloadResult),
        (status = 403, description = "`forbidden`: not an operator key"),
    )
)]
async fn reload(State(state): State<AppState>, caller: Caller) -> AppResult<axum::Json<Value>> {
    caller.require_operator("reloading plugins")?;
    let report = state.hooks.reload().await;
    Ok(axum::Json(json!({ "reload": report })))
}

/// An outbox item as the admin API shows it. `show_payload` false replaces
/// the payload with `null` and sets `payload_withheld` (see [`outbox`]).
fn item_json(i: &OutboxItem, show_payload: bool) -> Value {
    let payload = if show_payload {
        serde_json::from_str::<Value>(&i.payload).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    json!({
        "id": i.id,
        "target": i.target,
        "plugin": i.plugin,
        "tenant": i.tenant,
        "session_id": i.session_id,
        "state": i.state,
        "attempts": i.attempts,
        "created_at": format_ms(i.created_at),
        "next_attempt_at": format_ms(i.next_attempt_at),
        "last_error": i.last_error,
        "payload": payload,
        "payload_withheld": !show_payload,
    })
}

/// Whether a caller is shown notification payloads: an operator always; a
/// tenant admin only while no get-hook shapes metadata, because after-hooks
/// publish from the change as stored, so a payload may hold values a get-hook
/// (e.g. a redactor) hides from the session API.
fn shows_payloads(state: &AppState, caller: &Caller) -> bool {
    caller.is_operator() || !state.hooks.snapshot().shapes_metadata()
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
        ("state" = Option<crate::openapi::OutboxStateParam>, Query, description = "Only items in this state"),
        ("limit" = Option<u64>, Query, description = "At most this many items: default 100, capped at `server.max_page_size`"),
        ("tenant" = Option<String>, Query, description = "Only this tenant's items (operator keys; an admin key may name only its own tenant)"),
    ),
    responses(
        (status = 200, description = "Outbox items and counters", body = crate::openapi::OutboxList),
        (status = 400, description = "`invalid_query`"),
        (status = 403, description = "`forbidden`: an admin key named another tenant"),
    )
)]
async fn outbox(
    State(state): State<AppState>,
    caller: Caller,
    q: Query,
) -> AppResult<axum::Json<Value>> {
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
    let show = shows_payloads(&state, &caller);
    let items: Vec<Value> = items.iter().map(|i| item_json(i, show)).collect();
    let mut body = json!({ "items": items, "pending": pending, "dead": dead });
    // Counters since start (delivered, retried, dead_lettered,
    // dispatcher_running) cover every tenant: operators only.
    if caller.is_operator()
        && let (Some(body), Value::Object(stats)) =
            (body.as_object_mut(), state.outbox_stats.to_json())
    {
        body.extend(stats);
    }
    Ok(axum::Json(body))
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
        (status = 200, description = "The item, pending again", body = crate::openapi::OutboxItem),
        (status = 400, description = "`invalid_path`"),
        (status = 404, description = "`not_found`: no such outbox item (or another tenant's, for an admin key)"),
    )
)]
async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<axum::Json<Value>> {
    caller.require_admin()?;
    let scope = caller.admin_scope(None)?;
    let item = state.store.retry_outbox_of(scope, &id, now_ms()).await?;
    state.outbox_wake.notify_one();
    Ok(axum::Json(item_json(
        &item,
        shows_payloads(&state, &caller),
    )))
}
