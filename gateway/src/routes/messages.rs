//! Messages: append (idempotent on retry), list (page or latest N), read, replace, patch.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;
use serde_json::value::RawValue;

use super::{check_aid, check_sid};
use crate::AppState;
use crate::auth::Caller;
use crate::config::{HookEvent, HookPhase};
use crate::error::{AppError, AppResult};
use crate::extract::{Json, Path, Query};
use crate::hooks::runtime::MessageTarget;
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

/// Checks each stored part of a message against `server.max_message_bytes`,
/// so one stored message is at most three times that (which bounds what a
/// list read holds per message).
fn check_size(
    state: &AppState,
    message: Option<&RawValue>,
    redact: Option<&RawValue>,
    metrics: Option<&Value>,
) -> AppResult<()> {
    let max = state.config.server.max_message_bytes;
    let too_large = |what: &str| {
        Err(AppError::unprocessable(
            "message_too_large",
            format!("{what} may be at most {max} bytes"),
        ))
    };
    if message.is_some_and(|m| m.get().len() > max) {
        return too_large("a message");
    }
    if redact.is_some_and(|r| r.get().len() > max) {
        return too_large("redact_message");
    }
    if metrics.is_some_and(|m| serde_json::to_vec(m).map_or(usize::MAX, |b| b.len()) > max) {
        return too_large("event_loop_metrics");
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
    params(crate::api::AgentPath),
    request_body = MessageInput,
    responses(
        (status = 201, description = "The message was appended", body = Message),
        (status = 200, description = "An identical retry: the message already stored", body = Message),
        (status = 400, description = "`invalid_json`, `invalid_session_id` or `invalid_agent_id`"),
        (status = 404, description = "`not_found`: no such session or agent"),
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
    caller.require_write()?;
    check(&sid, &aid)?;
    check_size(
        &state,
        Some(&input.message),
        input.redact_message.as_deref(),
        input.event_loop_metrics.as_ref(),
    )?;
    let mut input = input;
    input.message = message_hooks(
        &state,
        &caller,
        &sid,
        &aid,
        input.message_id,
        false,
        input.message,
    )
    .await?;
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
        (status = 404, description = "`not_found`: no such session or agent"),
    )
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path((sid, aid)): Path<(String, String)>,
    q: Query,
) -> AppResult<Response> {
    check(&sid, &aid)?;
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
    let body = read_page(&state, &caller, &sid, &aid, wanted).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// What a list request asked for.
#[derive(Debug, Clone, Copy)]
enum Wanted {
    /// `limit` (None: the page size) messages from `offset`.
    Page { limit: Option<u64>, offset: u64 },
    /// The last `n` messages.
    Latest(u64),
}

/// How many messages one store read may return. The embedded store stops
/// reading at the byte budget itself (`EmbeddedStore::with_max_read_bytes`),
/// so it is asked for the whole page at once; other stores return what they
/// are asked for, so they are asked for as many as fit in the budget if every
/// message were as large as allowed (a stored message is at most three times
/// `server.max_message_bytes`; the budget assumes one), which bounds what a
/// request holds to a few times the budget.
fn read_chunk(state: &AppState) -> u64 {
    if state.store.name() == "embedded" {
        u64::MAX
    } else {
        let s = &state.config.server;
        (s.max_response_bytes / s.max_message_bytes.max(1)).max(1) as u64
    }
}

/// Reads a page within the page size and the byte budget, serialized as the
/// response body: messages are written out as they are read (their text kept
/// as stored, never parsed into a JSON tree), so a request holds at most one
/// store read plus the budget.
async fn read_page(
    state: &AppState,
    caller: &Caller,
    sid: &str,
    aid: &str,
    wanted: Wanted,
) -> AppResult<Vec<u8>> {
    let store = &state.store;
    let cap = state.config.server.max_page_size as u64;
    let budget = state.config.server.max_response_bytes;
    let chunk = read_chunk(state);
    let t = &caller.tenant;
    // A first read, when the request is answered by one `Latest` read.
    let mut first = None;
    let (start, want) = match wanted {
        Wanted::Page { limit, offset } => (offset, limit.unwrap_or(cap)),
        Wanted::Latest(n) if n <= cap && n <= chunk => {
            let (msgs, total) = store
                .list_messages(t, sid, aid, MessageRange::Latest(n))
                .await?;
            first = Some((msgs, total));
            (total.saturating_sub(n), n)
        }
        Wanted::Latest(n) => {
            let (_, total) = store
                .list_messages(
                    t,
                    sid,
                    aid,
                    MessageRange::Page {
                        limit: 0,
                        offset: 0,
                    },
                )
                .await?;
            (total.saturating_sub(n), n)
        }
    };
    let end = start.saturating_add(want.min(cap));
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(b"{\"messages\":[");
    let mut next = start;
    let mut total: u64;
    let mut count = 0u64;
    let mut one = Vec::new();
    'read: loop {
        let (msgs, t_now) = match first.take() {
            Some(read) => read,
            None => {
                let limit = (end - next).min(chunk);
                store
                    .list_messages(
                        t,
                        sid,
                        aid,
                        MessageRange::Page {
                            limit,
                            offset: next,
                        },
                    )
                    .await?
            }
        };
        total = t_now;
        if msgs.is_empty() {
            break;
        }
        for m in msgs {
            one.clear();
            serde_json::to_writer(&mut one, &m).map_err(|e| {
                AppError::Internal(format!("message {} does not serialize: {e}", m.message_id))
            })?;
            if count > 0 && out.len() + one.len() + 1 > budget {
                break 'read;
            }
            if count > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&one);
            count += 1;
            next = m.message_id + 1;
        }
        if next >= end.min(total) {
            break;
        }
    }
    let next_offset = if count > 0 && next < total {
        next.to_string()
    } else {
        "null".to_owned()
    };
    let truncated = next < start.saturating_add(want).min(total);
    out.extend_from_slice(
        format!("],\"total\":{total},\"next_offset\":{next_offset},\"truncated\":{truncated}}}")
            .as_bytes(),
    );
    Ok(out)
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
    params(crate::api::MessagePath),
    request_body = MessageInput,
    responses(
        (status = 200, description = "The updated message", body = Message),
        (status = 400, description = "`invalid_json`, `invalid_path`, `invalid_session_id` or `invalid_agent_id`"),
        (status = 404, description = "`not_found`: no such session, agent or message"),
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
    caller.require_write()?;
    check(&sid, &aid)?;
    check_size(
        &state,
        Some(&input.message),
        input.redact_message.as_deref(),
        input.event_loop_metrics.as_ref(),
    )?;
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
    params(crate::api::MessagePath),
    request_body = MessagePatch,
    responses(
        (status = 200, description = "The updated message", body = Message),
        (status = 400, description = "`invalid_json`, `invalid_body` (nothing to change), `invalid_path`, `invalid_session_id` or `invalid_agent_id`"),
        (status = 404, description = "`not_found`: no such session, agent or message"),
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
    caller.require_write()?;
    check(&sid, &aid)?;
    if patch.is_empty() {
        return Err(AppError::bad_request(
            "invalid_body",
            "nothing to change: give message, redact_message or event_loop_metrics",
        ));
    }
    check_size(
        &state,
        patch.message.as_deref(),
        patch.redact_message.as_ref().and_then(|r| r.as_deref()),
        patch.event_loop_metrics.as_ref().and_then(|m| m.as_ref()),
    )?;
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
    let patch = hook_patch(&state, &caller, &sid, &aid, mid, patch).await?;
    let m = state
        .store
        .update_message(&caller.tenant, &sid, &aid, mid, patch)
        .await?;
    state.committed(&caller.tenant, &sid);
    Ok(axum::Json(m))
}

/// A message update after the `message.update` before-chain: the content it
/// sets, if any, as the hooks left it (a patch without content runs none).
/// Used by `PUT`/`PATCH …/messages/{mid}` and the batch's `patch_message`.
pub(super) async fn hook_patch(
    state: &AppState,
    caller: &Caller,
    sid: &str,
    aid: &str,
    mid: u64,
    mut patch: MessagePatch,
) -> AppResult<MessagePatch> {
    if let Some(content) = patch.message.take() {
        patch.message =
            Some(message_hooks(state, caller, sid, aid, Some(mid), true, content).await?);
    }
    Ok(patch)
}

/// Runs the `message.append` (or, with `update`, `message.update`) before-
/// chain over a message's content; returns the content to store. Reads the
/// session (for the hooks' `session-ref`) only when such a hook is loaded.
/// Used by `POST …/messages` and the batch's `append_message`.
pub(super) async fn message_hooks(
    state: &AppState,
    caller: &Caller,
    sid: &str,
    aid: &str,
    mid: Option<u64>,
    update: bool,
    content: Box<RawValue>,
) -> AppResult<Box<RawValue>> {
    let loaded = state.hooks.snapshot();
    let event = if update {
        HookEvent::MessageUpdate
    } else {
        HookEvent::MessageAppend
    };
    if !loaded.runs(HookPhase::Before, event) {
        return Ok(content);
    }
    let subject = state.hooks.subject(&caller.tenant, sid, true).await?;
    let target = MessageTarget {
        update,
        agent_id: aid.to_owned(),
        message_id: mid,
    };
    let max = state.config.server.max_message_bytes;
    Ok(state
        .hooks
        .before_message(&loaded, &subject, &target, content, max)
        .await?)
}
