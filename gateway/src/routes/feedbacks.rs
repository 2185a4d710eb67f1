//! Feedbacks: add (through before-hooks) and list.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::Value;

use crate::AppState;
use crate::api::FeedbackList;
use crate::auth::Caller;
use crate::error::AppResult;
use crate::extract::{Json, Path};

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
        crate::api::NoSuchSession,
        (status = 422, description = "`invalid_rating`, `invalid_feedback`, `denied_by_hook`, `too_deep` or `too_large`"),
    )
)]
async fn add(
    State(state): State<AppState>,
    caller: Caller,
    Path(sid): Path<String>,
    Json(body): Json<Value>,
) -> AppResult<impl IntoResponse> {
    let fb = state.service.add_feedback(&caller, &sid, body).await?;
    Ok((StatusCode::CREATED, axum::Json(fb)))
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
        crate::api::BadSessionPath,
        crate::api::NoSuchSession,
    )
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(sid): Path<String>,
) -> AppResult<axum::Json<FeedbackList>> {
    Ok(axum::Json(FeedbackList {
        feedbacks: state.service.list_feedbacks(&caller, &sid).await?,
    }))
}
