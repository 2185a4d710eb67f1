//! HTTP routes, one file per resource; each exports `router()`.
//!
//! A handler parses the request (extractors, query, headers), calls one use
//! case of [`crate::service::Service`] and answers (status, headers, JSON).
//! Validation, hooks, the store, commit notifications and the get-hook
//! shaping of what is shown all happen in the service.

pub mod admin;
pub mod agents;
mod answer;
pub mod batch;
pub mod events;
pub mod feedbacks;
pub mod health;
pub mod messages;
pub mod metadata;
pub mod sessions;

pub use answer::WITHHELD_HEADER;

use crate::state::AppState;

/// All routes of the v1 API plus health and admin endpoints (`/openapi.json`
/// is added by [`crate::app`], since the document is built from these
/// handlers). Give the whole router [`method_not_allowed`] as its
/// method-not-allowed fallback.
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
}

/// 405 with the uniform error body (axum's default has an empty body); axum
/// still adds the `Allow` header.
pub async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> impl axum::response::IntoResponse {
    let message = format!("{method} is not allowed on {}", uri.path());
    (
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        crate::error::ErrorBody::new("method_not_allowed", message),
    )
}
