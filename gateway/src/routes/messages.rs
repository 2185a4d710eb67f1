//! Messages: append (idempotent on retry), list (page or latest N), read, replace, patch.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

use super::{check_aid, check_sid};
use crate::AppState;
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::extract::{Json, Path, Query};
use crate::model::{Message, MessageInput, MessagePatch, MessageRange};
use crate::store::Appended;

/// Message routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/sessions/{sid}/agents/{aid}/messages",
            get(list).post(append),
        )
        .route(
            "/v1/sessions/{sid}/agents/{aid}/messages/{mid}",
            get(read).put(replace).patch(patch),
        )
}

fn check(sid: &str, aid: &str) -> AppResult<()> {
    check_sid(sid)?;
    check_aid(aid)
}

fn check_size(state: &AppState, input_len: usize) -> AppResult<()> {
    let max = state.config.server.max_message_bytes;
    if input_len > max {
        return Err(AppError::unprocessable(
            "message_too_large",
            format!("a message may be at most {max} bytes"),
        ));
    }
    Ok(())
}

/// Append a message
///
/// Without `message_id` the next id is assigned atomically. An explicit id must
/// be the agent's next one, or an existing one with the same content: then the
/// stored message is returned with 200 and nothing is written (idempotent retry).
#[utoipa::path(
    post,
    path = "/v1/sessions/{sid}/agents/{aid}/messages",
    operation_id = "append_message",
    tag = "messages",
    params(crate::openapi::AgentPath),
    request_body = MessageInput,
    responses(
        (status = 201, description = "The message was appended", body = Message),
        (status = 200, description = "An identical retry: the message already stored", body = Message),
        (status = 400, description = "`invalid_json`, `invalid_session_id` or `invalid_agent_id`"),
        (status = 404, description = "`not_found`: no such session or agent"),
        (status = 409, description = "`message_conflict` (the id exists with other content) or `message_id_gap` (the id is past the next one)"),
        (status = 422, description = "`message_too_large`"),
    )
)]
async fn append(
    State(state): State<AppState>,
    caller: Caller,
    Path((sid, aid)): Path<(String, String)>,
    Json(input): Json<MessageInput>,
) -> AppResult<impl IntoResponse> {
    caller.require_write()?;
    check(&sid, &aid)?;
    check_size(&state, input.message.get().len())?;
    match state
        .store
        .append_message(&caller.tenant, &sid, &aid, input)
        .await?
    {
        Appended::Created(m) => {
            state.committed(&caller.tenant, &sid);
            Ok((StatusCode::CREATED, axum::Json(m)))
        }
        Appended::Existing(m) => Ok((StatusCode::OK, axum::Json(m))),
    }
}

/// List messages
///
/// Either a page in ascending id order (`limit` + `offset`, Strands
/// `list_messages`) or the last `latest` messages (ascending); `latest` cannot
/// be combined with `limit` or `offset`. `total` is the agent's message count.
#[utoipa::path(
    get,
    path = "/v1/sessions/{sid}/agents/{aid}/messages",
    operation_id = "list_messages",
    tag = "messages",
    params(
        crate::openapi::AgentPath,
        ("limit" = Option<u64>, Query, description = "Page size: default and maximum `server.max_page_size` (default 1000)"),
        ("offset" = Option<u64>, Query, description = "Id of the first message of the page (default 0)"),
        ("latest" = Option<u64>, Query, description = "The last N messages instead of a page (at most `server.max_page_size`)"),
    ),
    responses(
        (status = 200, description = "The messages and the agent's message count", body = crate::openapi::MessageList),
        (status = 400, description = "`invalid_query`, `invalid_session_id` or `invalid_agent_id`"),
        (status = 404, description = "`not_found`: no such session or agent"),
    )
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path((sid, aid)): Path<(String, String)>,
    q: Query,
) -> AppResult<axum::Json<Value>> {
    check(&sid, &aid)?;
    q.only(&["limit", "offset", "latest"])?;
    let max = state.config.server.max_page_size as u64;
    let too_big = |name: &str| {
        AppError::bad_request("invalid_query", format!("{name} must be at most {max}"))
    };
    let range = match (
        q.get_u64("latest")?,
        q.get_u64("limit")?,
        q.get_u64("offset")?,
    ) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(AppError::bad_request(
                "invalid_query",
                "latest cannot be combined with limit or offset",
            ));
        }
        (Some(n), None, None) if n > max => return Err(too_big("latest")),
        (Some(n), None, None) => MessageRange::Latest(n),
        (None, Some(l), _) if l > max => return Err(too_big("limit")),
        (None, limit, offset) => MessageRange::Page {
            limit: limit.unwrap_or(max),
            offset: offset.unwrap_or(0),
        },
    };
    let (messages, total) = state
        .store
        .list_messages(&caller.tenant, &sid, &aid, range)
        .await?;
    Ok(axum::Json(json!({ "messages": messages, "total": total })))
}

/// Get a message
#[utoipa::path(
    get,
    path = "/v1/sessions/{sid}/agents/{aid}/messages/{mid}",
    operation_id = "get_message",
    tag = "messages",
    params(crate::openapi::MessagePath),
    responses(
        (status = 200, description = "The message", body = Message),
        (status = 400, description = "`invalid_path` (`mid` is not a non-negative integer), `invalid_session_id` or `invalid_agent_id`"),
        (status = 404, description = "`not_found`: no such session, agent or message"),
    )
)]
async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path((sid, aid, mid)): Path<(String, String, u64)>,
) -> AppResult<axum::Json<Message>> {
    check(&sid, &aid)?;
    Ok(axum::Json(
        state
            .store
            .get_message(&caller.tenant, &sid, &aid, mid)
            .await?,
    ))
}

/// Replace a message
///
/// `PUT`: Strands' `update_message` (used for redaction) sends the whole
/// message; `message` and `redact_message` are replaced, `event_loop_metrics`
/// only when given (Strands does not carry them).
#[utoipa::path(
    put,
    path = "/v1/sessions/{sid}/agents/{aid}/messages/{mid}",
    operation_id = "replace_message",
    tag = "messages",
    params(crate::openapi::MessagePath),
    request_body = MessageInput,
    responses(
        (status = 200, description = "The updated message", body = Message),
        (status = 400, description = "`invalid_json`, `invalid_path`, `invalid_session_id` or `invalid_agent_id`"),
        (status = 404, description = "`not_found`: no such session, agent or message"),
        (status = 422, description = "`message_id_mismatch` (body `message_id` differs from the path's) or `message_too_large`"),
    )
)]
async fn replace(
    State(state): State<AppState>,
    caller: Caller,
    Path((sid, aid, mid)): Path<(String, String, u64)>,
    Json(input): Json<MessageInput>,
) -> AppResult<axum::Json<Message>> {
    caller.require_write()?;
    check(&sid, &aid)?;
    check_size(&state, input.message.get().len())?;
    if input.message_id.is_some_and(|id| id != mid) {
        return Err(AppError::unprocessable(
            "message_id_mismatch",
            format!("body message_id does not match the path's {mid}"),
        ));
    }
    let patch = MessagePatch {
        message: Some(input.message),
        redact_message: Some(input.redact_message),
        event_loop_metrics: input.event_loop_metrics.map(Some),
    };
    update(state, caller, sid, aid, mid, patch).await
}

/// Patch a message
///
/// Changes only the fields given; `null` clears `redact_message` or
/// `event_loop_metrics`.
#[utoipa::path(
    patch,
    path = "/v1/sessions/{sid}/agents/{aid}/messages/{mid}",
    operation_id = "patch_message",
    tag = "messages",
    params(crate::openapi::MessagePath),
    request_body = MessagePatch,
    responses(
        (status = 200, description = "The updated message", body = Message),
        (status = 400, description = "`invalid_json`, `invalid_body` (nothing to change), `invalid_path`, `invalid_session_id` or `invalid_agent_id`"),
        (status = 404, description = "`not_found`: no such session, agent or message"),
        (status = 422, description = "`message_too_large`"),
    )
)]
async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Path((sid, aid, mid)): Path<(String, String, u64)>,
    Json(patch): Json<MessagePatch>,
) -> AppResult<axum::Json<Message>> {
    caller.require_write()?;
    check(&sid, &aid)?;
    if patch.is_empty() {
        return Err(AppError::bad_request(
            "invalid_body",
            "nothing to change: give message, redact_message or event_loop_metrics",
        ));
    }
    if let Some(m) = &patch.message {
        check_size(&state, m.get().len())?;
    }
    update(state, caller, sid, aid, mid, patch).await
}

async fn update(
    state: AppState,
    caller: Caller,
    sid: String,
    aid: String,
    mid: u64,
    patch: MessagePatch,
) -> AppResult<axum::Json<Message>> {
    let m = state
        .store
        .update_message(&caller.tenant, &sid, &aid, mid, patch)
        .await?;
    state.committed(&caller.tenant, &sid);
    Ok(axum::Json(m))
}
