//! Admin endpoints: plugins (list, reload) and the notification outbox.

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
/// Every loaded plugin with its file hash, events, load time and call
/// statistics, and the outcome of the last (re)load.
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
    Ok(axum::Json(state.hooks.describe()))
}

/// Reload plugins
///
/// Re-reads the config file and the plugin files now (as on `SIGHUP`). A
/// plugin that fails to load keeps its previous version serving.
#[utoipa::path(
    post,
    path = "/v1/admin/reload",
    operation_id = "reload_plugins",
    tag = "admin",
    responses(
        (status = 200, description = "The reload report", body = crate::openapi::ReloadResult),
    )
)]
async fn reload(State(state): State<AppState>, caller: Caller) -> AppResult<axum::Json<Value>> {
    caller.require_admin()?;
    let report = state.hooks.reload().await;
    Ok(axum::Json(json!({ "reload": report })))
}

fn item_json(i: &OutboxItem) -> Value {
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
        "payload": serde_json::from_str::<Value>(&i.payload).unwrap_or(Value::Null),
    })
}

/// List outbox notifications
///
/// Notifications published by after-hooks, waiting for delivery (`pending`)
/// or given up on (`dead`), with the dispatcher's counters.
#[utoipa::path(
    get,
    path = "/v1/admin/outbox",
    operation_id = "list_outbox",
    tag = "admin",
    params(
        ("state" = Option<crate::openapi::OutboxStateParam>, Query, description = "Only items in this state"),
        ("limit" = Option<u64>, Query, description = "At most this many items: default 100, capped at `server.max_page_size`"),
    ),
    responses(
        (status = 200, description = "Outbox items and counters", body = crate::openapi::OutboxList),
        (status = 400, description = "`invalid_query`"),
    )
)]
async fn outbox(
    State(state): State<AppState>,
    caller: Caller,
    q: Query,
) -> AppResult<axum::Json<Value>> {
    caller.require_admin()?;
    q.only(&["state", "limit"])?;
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
    let items = state.store.list_outbox(filter, limit).await?;
    let (pending, dead) = state.store.outbox_counts().await?;
    let items: Vec<Value> = items.iter().map(item_json).collect();
    // Counters since start: delivered, retried, dead_lettered, dispatcher_running.
    let stats = state.outbox_stats.to_json();
    let mut body = json!({ "items": items, "pending": pending, "dead": dead });
    if let (Some(body), Value::Object(stats)) = (body.as_object_mut(), stats) {
        body.extend(stats);
    }
    Ok(axum::Json(body))
}

/// Retry an outbox notification
///
/// Makes the item pending again with its next attempt due now.
#[utoipa::path(
    post,
    path = "/v1/admin/outbox/{id}/retry",
    operation_id = "retry_outbox",
    tag = "admin",
    params(("id" = String, Path, description = "The outbox item's id")),
    responses(
        (status = 200, description = "The item, pending again", body = crate::openapi::OutboxItem),
        (status = 400, description = "`invalid_path`"),
        (status = 404, description = "`not_found`: no such outbox item"),
    )
)]
async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<axum::Json<Value>> {
    caller.require_admin()?;
    let item = state.store.retry_outbox(&id, now_ms()).await?;
    state.outbox_wake.notify_one();
    Ok(axum::Json(item_json(&item)))
}
