//! HTTP routes, one file per resource; each exports `router()`.
//!
//! A handler parses the request (extractors, query, headers), calls one use
//! case of [`crate::service::Service`] and answers (status, headers, JSON).
//! Validation, hooks, the store, commit notifications and the get-hook
//! shaping of what is shown all happen in the service.

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
use crate::api::CreatedSession;
use crate::model::{JsonObject, Session};
use crate::service::Shown;
use crate::service::shape::Withheld;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Response header set when the answer of a committed write withholds the
/// metadata because a get-hook failed: its value is the error code
/// (`hook_failed`).
pub const WITHHELD_HEADER: HeaderName = HeaderName::from_static("metadata-withheld");

fn withheld_header(response: &mut Response, w: &Withheld) {
    response.headers_mut().insert(
        WITHHELD_HEADER,
        HeaderValue::from_str(w.code).unwrap_or(HeaderValue::from_static("hook_failed")),
    );
}

/// The answer of a committed write that returns a session: `status` always;
/// when withheld, `metadata` is `{}`, the body gains `metadata_withheld` and
/// the `Metadata-Withheld` header is set.
pub(crate) fn session_response(status: StatusCode, shown: Shown<Session>) -> Response {
    let withheld = shown.withheld.as_ref().map(|w| crate::api::Withheld {
        code: w.code.to_owned(),
        message: w.message.clone(),
    });
    let body = CreatedSession::new(shown.value, withheld);
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(w) = &shown.withheld {
        withheld_header(&mut response, w);
    }
    response
}

/// The answer of a committed metadata change: 200 with the metadata; when
/// withheld, `{}` and the `Metadata-Withheld` header (the body is the
/// metadata object itself, so it has no room for a marker of its own).
pub(crate) fn metadata_response(shown: Shown<JsonObject>) -> Response {
    let mut response = (StatusCode::OK, axum::Json(shown.value)).into_response();
    if let Some(w) = &shown.withheld {
        withheld_header(&mut response, w);
    }
    response
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
