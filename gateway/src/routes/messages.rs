//! Messages: append (idempotent on retry), list (page or latest N), read, replace, patch.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::extract::{Json, Path, Query};
use crate::model::{Message, MessageInput, MessagePatch};
use crate::service::messages::Wanted;

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
    params(crate::api::AgentPath),
    request_body = MessageInput,
    responses(
        (status = 201, description = "The message was appended", body = Message),
        (status = 200, description = "An identical retry: the message already stored", body = Message),
        (status = 400, description = "`invalid_json`, `invalid_session_id` or `invalid_agent_id`"),
        crate::api::NoSuchAgent,
        (status = 409, description = "`message_conflict` (the id exists with other content) or `message_id_gap` (the id is past the next one)"),
        (status = 422, description = "`message_too_large`, or `denied_by_hook` (a `message.append` hook refused it)"),
        (status = 503, description = "`hook_failed`: a fail-closed message hook failed; nothing was stored"),
    )
)]
async fn append(
    State(state): State<AppState>,
    caller: Caller,
    Path((sid, aid)): Path<(String, String)>,
    Json(input): Json<MessageInput>,
) -> AppResult<impl IntoResponse> {
    let (m, created) = state
        .service
        .append_message(&caller, &sid, &aid, input)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(m)))
}

/// List messages
///
/// Either a page in ascending id order (`limit` + `offset`, Strands
/// `list_messages`) or the last `latest` messages (ascending); `latest` cannot
/// be combined with `limit` or `offset`. `total` is the agent's message count.
///
/// A page holds at most `server.max_page_size` messages (a larger `limit` or
/// `latest` is clamped to it; `limit=0` or no `limit` means that size) and at
/// most about `server.max_response_bytes` of JSON (at least one message).
/// When it holds fewer messages than asked for, `truncated` is true; whenever
/// messages follow the last one returned, `next_offset` is the `offset` that
/// continues after it (null at the end). Read everything with
/// `offset=0`, then `offset=next_offset` until it is null.
#[utoipa::path(
    get,
    path = "/v1/sessions/{sid}/agents/{aid}/messages",
    operation_id = "list_messages",
    tag = "messages",
    params(
        crate::api::AgentPath,
        ("limit" = Option<u64>, Query, description = "Page size: default and maximum `server.max_page_size` (default 1000); larger values are clamped, 0 means the default"),
        ("offset" = Option<u64>, Query, description = "Id of the first message of the page (default 0)"),
        ("latest" = Option<u64>, Query, description = "The last N messages instead of a page; beyond `server.max_page_size` (or the byte budget) the first part of them, with `next_offset` to continue"),
    ),
    responses(
        (status = 200, description = "The messages, the agent's message count and where to continue", body = crate::api::MessageList),
        (status = 400, description = "`invalid_query`, `invalid_session_id` or `invalid_agent_id`"),
        crate::api::NoSuchAgent,
    )
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path((sid, aid)): Path<(String, String)>,
    q: Query,
) -> AppResult<Response> {
    q.only(&["limit", "offset", "latest"])?;
    let wanted = match (
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
        (Some(n), None, None) => Wanted::Latest(n),
        (None, limit, offset) => Wanted::Page {
            limit: limit.filter(|l| *l > 0),
            offset: offset.unwrap_or(0),
        },
    };
    let body = state
        .service
        .list_messages(&caller, &sid, &aid, wanted)
        .await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// Get a message
#[utoipa::path(
    get,
    path = "/v1/sessions/{sid}/agents/{aid}/messages/{mid}",
    operation_id = "get_message",
    tag = "messages",
    params(crate::api::MessagePath),
    responses(
        (status = 200, description = "The message", body = Message),
        (status = 400, description = "`invalid_path` (`mid` is not a non-negative integer), `invalid_session_id` or `invalid_agent_id`"),
        crate::api::NoSuchMessage,
    )
)]
async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path((sid, aid, mid)): Path<(String, String, u64)>,
) -> AppResult<axum::Json<Message>> {
    Ok(axum::Json(
        state.service.get_message(&caller, &sid, &aid, mid).await?,
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
    params(crate::api::MessagePath),
    request_body = MessageInput,
    responses(
        (status = 200, description = "The updated message", body = Message),
        (status = 400, description = "`invalid_json`, `invalid_path`, `invalid_session_id` or `invalid_agent_id`"),
        crate::api::NoSuchMessage,
        (status = 422, description = "`message_id_mismatch` (body `message_id` differs from the path's), `message_too_large` or `denied_by_hook` (a `message.update` hook refused it)"),
        (status = 503, description = "`hook_failed`: a fail-closed message hook failed; nothing was changed"),
    )
)]
async fn replace(
    State(state): State<AppState>,
    caller: Caller,
    Path((sid, aid, mid)): Path<(String, String, u64)>,
    Json(input): Json<MessageInput>,
) -> AppResult<axum::Json<Message>> {
    Ok(axum::Json(
        state
            .service
            .replace_message(&caller, &sid, &aid, mid, input)
            .await?,
    ))
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
    params(crate::api::MessagePath),
    request_body = MessagePatch,
    responses(
        (status = 200, description = "The updated message", body = Message),
        (status = 400, description = "`invalid_json`, `invalid_body` (nothing to change), `invalid_path`, `invalid_session_id` or `invalid_agent_id`"),
        crate::api::NoSuchMessage,
        (status = 422, description = "`message_too_large` or `denied_by_hook` (a `message.update` hook refused a new `message`)"),
        (status = 503, description = "`hook_failed`: a fail-closed message hook failed; nothing was changed"),
    )
)]
async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Path((sid, aid, mid)): Path<(String, String, u64)>,
    Json(patch): Json<MessagePatch>,
) -> AppResult<axum::Json<Message>> {
    Ok(axum::Json(
        state
            .service
            .patch_message(&caller, &sid, &aid, mid, patch)
            .await?,
    ))
}
