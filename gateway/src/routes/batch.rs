//! Several writes to one session in one request: what a Strands agent does at
//! the end of a turn (append the assistant message, then store the agent).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::Value;

use super::{check_aid, check_sid};
use crate::AppState;
use crate::api::{BatchFailure, BatchWriteItem, BatchWriteResult};
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::extract::{Json, Path};
use crate::model::{AGENT_SERVER_FIELDS, JsonObject, MessageInput, MessagePatch};
use crate::store::Appended;

/// Most operations in one batch.
pub const MAX_BATCH_OPS: usize = 16;

/// Batch routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/sessions/{sid}/batch", post(batch))
}

/// What an operation does.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = BatchOpKind)]
enum OpKind {
    /// `POST …/agents/{agent_id}/messages` with `message`.
    AppendMessage,
    /// `PUT …/agents/{agent_id}` with `agent` (and `if_match`).
    PutAgent,
    /// `PATCH …/agents/{agent_id}/messages/{message_id}` with `patch`.
    PatchMessage,
}

/// One write of a batch.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BatchOp)]
struct Op {
    /// What to do.
    op: OpKind,
    /// The agent written to.
    #[schema(value_type = crate::api::SessionId)]
    agent_id: String,
    /// `append_message`: the message, as for `POST …/messages`.
    #[serde(default)]
    message: Option<MessageInput>,
    /// `put_agent`: the agent object, as for `PUT …/agents/{aid}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    agent: Option<Value>,
    /// `put_agent`: write only if the agent's version is this one (as `If-Match`).
    #[serde(default)]
    if_match: Option<u64>,
    /// `patch_message`: the message's id.
    #[serde(default)]
    message_id: Option<u64>,
    /// `patch_message`: the fields to change, as for `PATCH …/messages/{mid}`.
    #[serde(default)]
    patch: Option<MessagePatch>,
}

/// Body of `POST /v1/sessions/{sid}/batch`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BatchRequest)]
struct Batch {
    /// The writes, run in this order (1 to 16).
    ops: Vec<Op>,
}

/// An operation checked and ready to run.
enum Ready {
    Append(String, MessageInput),
    Put(String, JsonObject, Option<u64>),
    Patch(String, u64, MessagePatch),
}

fn bad(i: usize, message: impl std::fmt::Display) -> AppError {
    AppError::bad_request("invalid_body", format!("ops[{i}]: {message}"))
}

/// Checks one operation the way its own endpoint would, before anything runs.
fn check_op(state: &AppState, i: usize, op: Op) -> AppResult<Ready> {
    check_aid(&op.agent_id)?;
    let max_msg = state.config.server.max_message_bytes;
    let too_large = || {
        AppError::unprocessable(
            "message_too_large",
            format!("ops[{i}]: a message may be at most {max_msg} bytes"),
        )
    };
    let given = |name: &str, present: bool, wanted: bool| {
        if present != wanted {
            let verb = if wanted { "needs" } else { "does not take" };
            Err(bad(i, format!("this op {verb} `{name}`")))
        } else {
            Ok(())
        }
    };
    let kind = op.op;
    given(
        "message",
        op.message.is_some(),
        kind == OpKind::AppendMessage,
    )?;
    given("agent", op.agent.is_some(), kind == OpKind::PutAgent)?;
    given("patch", op.patch.is_some(), kind == OpKind::PatchMessage)?;
    given(
        "message_id",
        op.message_id.is_some(),
        kind == OpKind::PatchMessage,
    )?;
    if op.if_match.is_some() && kind != OpKind::PutAgent {
        return Err(bad(i, "only put_agent takes `if_match`"));
    }
    match kind {
        OpKind::AppendMessage => {
            let input = op.message.expect("checked above");
            if input.message.get().len() > max_msg {
                return Err(too_large());
            }
            Ok(Ready::Append(op.agent_id, input))
        }
        OpKind::PutAgent => {
            let body = op.agent.expect("checked above");
            crate::limits::check_json("agent", &body, &state.config.limits, None)?;
            let Value::Object(mut body) = body else {
                return Err(bad(i, "an agent must be a JSON object"));
            };
            if let Some(given) = body.get("agent_id")
                && given.as_str() != Some(op.agent_id.as_str())
            {
                return Err(AppError::unprocessable(
                    "agent_id_mismatch",
                    format!("ops[{i}]: agent.agent_id {given} does not match agent_id"),
                ));
            }
            body.retain(|k, _| !AGENT_SERVER_FIELDS.contains(&k.as_str()));
            Ok(Ready::Put(op.agent_id, body as JsonObject, op.if_match))
        }
        OpKind::PatchMessage => {
            let patch = op.patch.expect("checked above");
            if patch.is_empty() {
                return Err(bad(
                    i,
                    "nothing to change: give message, redact_message or event_loop_metrics",
                ));
            }
            if let Some(m) = &patch.message
                && m.get().len() > max_msg
            {
                return Err(too_large());
            }
            Ok(Ready::Patch(
                op.agent_id,
                op.message_id.expect("checked above"),
                patch,
            ))
        }
    }
}

/// Write several things of one session
///
/// Runs message appends, agent writes and message patches of one session in
/// order, each exactly as its own endpoint would (same checks, same answers):
/// `append_message` is `POST …/agents/{agent_id}/messages`, `put_agent` is
/// `PUT …/agents/{agent_id}` (`if_match` as the `If-Match` header),
/// `patch_message` is `PATCH …/messages/{message_id}`.
///
/// Atomicity: every operation is checked before any runs, so a malformed batch
/// writes nothing. Each operation is then atomic on its own, as with its own
/// endpoint; the batch as a whole is not a transaction. The first operation
/// that fails stops the batch: the ones before it stay written, the ones after
/// it are not run. The error answer names it (`failed_op`, 0-based) and
/// carries the results of the ones written (`results`).
#[utoipa::path(
    post,
    path = "/v1/sessions/{sid}/batch",
    operation_id = "batch_write",
    tag = "sessions",
    params(crate::api::SessionPath),
    request_body = Batch,
    responses(
        (status = 200, description = "Every operation was written: `results[i]` has the `status` and `body` its own endpoint would have answered", body = BatchWriteResult),
        (status = 400, description = "`invalid_json`, `invalid_body` (an op lacks or has a field it should not; nothing written), `invalid_session_id` or `invalid_agent_id`"),
        (status = 404, description = "`not_found`: no such session, agent or message (the batch stopped there: the body is a `BatchFailure`)"),
        (status = 409, description = "`message_conflict` or `message_id_gap` (the batch stopped there: the body is a `BatchFailure`)"),
        (status = 412, description = "`version_mismatch`: a `put_agent`'s `if_match` is not current (the batch stopped there: the body is a `BatchFailure`)"),
        (status = 422, description = "`too_many_ops`, `message_too_large`, `agent_id_mismatch`, `too_deep`, or `denied_by_hook` (a message hook refused an op: the batch stopped there, the body is a `BatchFailure`)"),
        (status = 503, description = "`hook_failed`: a fail-closed message hook failed on an op (the batch stopped there: the body is a `BatchFailure`)"),
    )
)]
async fn batch(
    State(state): State<AppState>,
    caller: Caller,
    Path(sid): Path<String>,
    Json(body): Json<Batch>,
) -> AppResult<Response> {
    caller.require_write()?;
    check_sid(&sid)?;
    if body.ops.is_empty() || body.ops.len() > MAX_BATCH_OPS {
        return Err(AppError::unprocessable(
            "too_many_ops",
            format!("a batch has 1 to {MAX_BATCH_OPS} ops"),
        ));
    }
    let mut ready = Vec::with_capacity(body.ops.len());
    for (i, op) in body.ops.into_iter().enumerate() {
        ready.push(check_op(&state, i, op)?);
    }
    let mut results = Vec::with_capacity(ready.len());
    let mut wrote = false;
    for (i, op) in ready.into_iter().enumerate() {
        let outcome = run(&state, &caller, &sid, op).await;
        match outcome {
            Ok((status, created, value)) => {
                wrote |= created;
                results.push(BatchWriteItem {
                    status: status.as_u16(),
                    body: value,
                });
            }
            Err(e) => {
                if wrote {
                    state.committed(&caller.tenant, &sid);
                }
                return Ok(partial(e, i, results).await);
            }
        }
    }
    if wrote {
        state.committed(&caller.tenant, &sid);
    }
    Ok((StatusCode::OK, axum::Json(BatchWriteResult { results })).into_response())
}

/// Runs one checked operation: its status, whether it wrote, its answer body.
async fn run(
    state: &AppState,
    caller: &Caller,
    sid: &str,
    op: Ready,
) -> AppResult<(StatusCode, bool, Value)> {
    let t = &caller.tenant;
    match op {
        Ready::Append(aid, mut input) => {
            // The message hooks run as for `POST …/messages`: a batch is no
            // way around the masker or the guardrail.
            input.message = super::messages::message_hooks(
                state,
                caller,
                sid,
                &aid,
                input.message_id,
                false,
                input.message,
            )
            .await?;
            match state.store.append_message(t, sid, &aid, input).await? {
                Appended::Created(m) => Ok((StatusCode::CREATED, true, to_value(&m)?)),
                Appended::Existing(m) => Ok((StatusCode::OK, false, to_value(&m)?)),
            }
        }
        Ready::Put(aid, body, version) => {
            let (agent, created) = state.store.put_agent(t, sid, &aid, body, version).await?;
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, true, agent.to_json()))
        }
        Ready::Patch(aid, mid, patch) => {
            let patch = super::messages::hook_patch(state, caller, sid, &aid, mid, patch).await?;
            let m = state.store.update_message(t, sid, &aid, mid, patch).await?;
            Ok((StatusCode::OK, true, to_value(&m)?))
        }
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> AppResult<Value> {
    serde_json::to_value(v).map_err(|e| AppError::Internal(format!("serializing a result: {e}")))
}

/// The error answer of a batch stopped at `failed`: the uniform error body plus
/// `failed_op` and the `results` of the operations written before it.
async fn partial(e: AppError, failed: usize, results: Vec<BatchWriteItem>) -> Response {
    let resp = e.into_response();
    let (parts, body) = resp.into_parts();
    // The body of an AppError is a small in-memory JSON object.
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return (parts.status, parts.headers).into_response();
    };
    let error = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|mut v| v.get_mut("error").map(Value::take))
        .unwrap_or_default();
    let body = BatchFailure {
        error,
        failed_op: failed,
        results,
    };
    let mut out = (parts.status, axum::Json(body)).into_response();
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_LENGTH && name != axum::http::header::CONTENT_TYPE {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

// Messages inside a batch pass the body rule with the batch: their numbers
// are checked like any other field's (only a top-level `message` is verbatim).
impl crate::extract::JsonBody for Batch {}
