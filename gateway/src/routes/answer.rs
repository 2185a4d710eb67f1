//! Answers of committed writes whose shown metadata a get-hook may have
//! withheld: the `Metadata-Withheld` header and body marker.

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
