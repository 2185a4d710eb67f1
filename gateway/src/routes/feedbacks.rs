//! Feedbacks: add (through before-hooks) and list.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::Value;

use super::check_sid;
use crate::AppState;
use crate::api::FeedbackList;
use crate::auth::Caller;
use crate::config::{HookEvent, HookPhase};
use crate::error::{AppError, AppResult};
use crate::extract::{Json, Path};
use crate::model::validate_feedback;

/// Feedback routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/sessions/{sid}/feedbacks", get(list).post(add))
}

/// Add a feedback
///
/// A JSON object with `rating` (`"up"`, `"down"` or null), an optional
/// `comment` and any extra fields; `created_at` is stamped by the server.
/// Before-hooks may deny or rewrite it.
#[utoipa::path(
    post,
    path = "/v1/sessions/{sid}/feedbacks",
    operation_id = "add_feedback",
    tag = "feedbacks",
    params(crate::api::SessionPath),
    request_body = crate::api::FeedbackInput,
    responses(
        (status = 201, description = "The stored feedback", body = crate::api::Feedback),
        (status = 400, description = "`invalid_json`, `invalid_body` (not an object) or `invalid_session_id`"),
        (status = 404, description = "`not_found`: no such session"),
        (status = 422, description = "`invalid_rating`, `invalid_feedback`, `denied_by_hook`, `too_deep` or `too_large`"),
    )
)]
async fn add(
    State(state): State<AppState>,
    caller: Caller,
    Path(sid): Path<String>,
    Json(body): Json<Value>,
) -> AppResult<impl IntoResponse> {
    caller.require_write()?;
    check_sid(&sid)?;
    let Value::Object(mut body) = body else {
        return Err(AppError::bad_request(
            "invalid_body",
            "a feedback must be a JSON object",
        ));
    };
    body.shift_remove("created_at");
    validate_feedback(&body).map_err(|m| AppError::unprocessable("invalid_rating", m))?;
    let limits = &state.config.limits;
    crate::limits::check_json(
        "feedback",
        &Value::Object(body.clone()),
        limits,
        Some(limits.max_metadata_bytes),
    )?;
    crate::metadata::validate_value(&Value::Object(body.clone()))
        .map_err(|m| AppError::unprocessable("invalid_feedback", m))?;
    let loaded = state.hooks.snapshot();
    let hooked = loaded.runs(HookPhase::Before, HookEvent::FeedbackAdd);
    let subject = state.hooks.subject(&caller.tenant, &sid, hooked).await?;
    let body = state.hooks.before_feedback(&loaded, &subject, body).await?;
    let fb = state.store.add_feedback(&caller.tenant, &sid, body).await?;
    state.committed(&caller.tenant, &sid);
    Ok((StatusCode::CREATED, axum::Json(fb.body)))
}

/// List a session's feedbacks
#[utoipa::path(
    get,
    path = "/v1/sessions/{sid}/feedbacks",
    operation_id = "list_feedbacks",
    tag = "feedbacks",
    params(crate::api::SessionPath),
    responses(
        (status = 200, description = "The feedbacks, oldest first", body = FeedbackList),
        (status = 400, description = "`invalid_session_id` or `invalid_path`"),
        (status = 404, description = "`not_found`: no such session"),
    )
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(sid): Path<String>,
) -> AppResult<axum::Json<FeedbackList>> {
    check_sid(&sid)?;
    let fbs = state.store.list_feedbacks(&caller.tenant, &sid).await?;
    Ok(axum::Json(FeedbackList {
        feedbacks: fbs.into_iter().map(|f| f.body).collect(),
    }))
}
