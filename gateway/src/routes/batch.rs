//! Several writes to one session in one request: what a Strands agent does at
//! the end of a turn (append the assistant message, then store the agent).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::Value;

use crate::AppState;
use crate::api::{BatchFailure, BatchWriteItem, BatchWriteResult};
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::extract::{Json, Path};
use crate::service::batch::{BatchError, Op};

/// Batch routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/sessions/{sid}/batch", post(batch))
}

/// Body of `POST /v1/sessions/{sid}/batch`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BatchRequest)]
struct Batch {
    /// The writes, run in this order (1 to 16).
    ops: Vec<Op>,
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
/// carries the results of the ones written (`results`). The operations'
/// message hooks run first, in order; a refusal stops the batch at that
/// operation in the same way. The gateway may commit the operations together
/// (on MongoDB 8.0+ they are one commit of its group-commit writer), but a
/// client should rely only on the rules above.
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
    match state.service.batch(&caller, &sid, body.ops).await {
        Ok(results) => {
            Ok((StatusCode::OK, axum::Json(BatchWriteResult { results })).into_response())
        }
        Err(BatchError::Invalid(e)) => Err(e),
        Err(BatchError::Stopped {
            error,
            failed_op,
            results,
        }) => Ok(partial(error, failed_op, results).await),
    }
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
