//! HTTP routes, one file per resource; each exports `router()`.

pub mod admin;
pub mod agents;
pub mod batch;
pub mod events;
pub mod feedbacks;
pub mod health;
pub mod messages;
pub mod metadata;
pub mod sessions;

use crate::AppState;
use crate::error::AppError;
use crate::model::validate_id;

/// Checks a session id from a path or body (400 `invalid_session_id`).
pub(crate) fn check_sid(sid: &str) -> Result<(), AppError> {
    validate_id("session_id", sid).map_err(|m| AppError::bad_request("invalid_session_id", m))
}

/// Checks an agent id from a path (400 `invalid_agent_id`).
pub(crate) fn check_aid(aid: &str) -> Result<(), AppError> {
    validate_id("agent_id", aid).map_err(|m| AppError::bad_request("invalid_agent_id", m))
}

/// A hook chain's refusal as the client sees it: a deny is 422
/// `denied_by_hook`; a failing or quarantined fail-closed plugin is 503
/// `hook_failed` (with `Retry-After` while quarantined). Messages name the plugin.
impl From<crate::hooks::Refusal> for AppError {
    fn from(r: crate::hooks::Refusal) -> Self {
        use crate::hooks::Refusal;
        match &r {
            Refusal::Denied { .. } => AppError::unprocessable("denied_by_hook", r.to_string()),
            Refusal::Failed { .. } | Refusal::Skipped { .. } => AppError::Unavailable {
                code: "hook_failed",
                message: r.to_string(),
                retry_after: r.retry_after_secs(),
            },
        }
    }
}

/// All routes of the v1 API plus health and admin endpoints.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .merge(sessions::router())
        .merge(agents::router())
        .merge(batch::router())
        .merge(messages::router())
        .merge(metadata::router())
        .merge(feedbacks::router())
        .merge(events::router())
        .merge(health::router())
        .merge(admin::router())
        .method_not_allowed_fallback(method_not_allowed)
}

/// 405 with the uniform error body (axum's default has an empty body); axum
/// still adds the `Allow` header.
async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> impl axum::response::IntoResponse {
    let message = format!("{method} is not allowed on {}", uri.path());
    (
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        crate::error::ErrorBody::new("method_not_allowed", message),
    )
}
