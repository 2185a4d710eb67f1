//! One error type for the whole HTTP surface.
//!
//! Every failure a client can see is an [`AppError`]; it renders as
//! `{"error":{"code":"snake_case_code","message":"human text"}}` with the status
//! documented on each variant. Internal errors are logged with their detail and
//! answered with a generic message, so storage internals never leak to clients.
//!
//! This module imports nothing of the crate: a store error becomes an
//! [`AppError`] through `From<StoreError>`, implemented in [`crate::api`],
//! which sits above both.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: the request could not be understood (malformed JSON, bad query, bad id).
    #[error("{message}")]
    BadRequest {
        /// Machine-readable code, e.g. `invalid_json`.
        code: &'static str,
        /// What was wrong, for a human.
        message: String,
    },
    /// 401: no valid API key.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the key is valid but its role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: the named resource does not exist (or belongs to another tenant).
    #[error("{0}")]
    NotFound(String),
    /// 404: no endpoint has this path (`route_not_found`, so a wrong base URL
    /// is not mistaken for a missing session).
    #[error("{0}")]
    RouteNotFound(String),
    /// 409: the request conflicts with what is stored.
    #[error("{message}")]
    Conflict {
        /// Machine-readable code, e.g. `session_exists`.
        code: &'static str,
        /// What conflicted.
        message: String,
    },
    /// 412: `If-Match` named a version that is no longer current.
    #[error("{0}")]
    PreconditionFailed(String),
    /// 413: the body is larger than the configured limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 422: well-formed but semantically invalid input (bad rating, denied by a hook…).
    #[error("{message}")]
    Unprocessable {
        /// Machine-readable code, e.g. `invalid_rating` or `denied_by_hook`.
        code: &'static str,
        /// Why it was refused.
        message: String,
    },
    /// 429: the caller exceeded its rate limit; retry after the given seconds.
    #[error("{message}")]
    TooManyRequests {
        /// What limit was hit.
        message: String,
        /// Seconds until a retry may succeed.
        retry_after: u64,
    },
    /// 503: a dependency (the store, a fail-closed hook) is unavailable.
    #[error("{message}")]
    Unavailable {
        /// Machine-readable code, e.g. `store_unavailable` or `hook_failed`.
        code: &'static str,
        /// What is unavailable.
        message: String,
        /// Seconds after which a retry is sensible, when known.
        retry_after: Option<u64>,
    },
    /// 500: a bug or unexpected failure; the detail is logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    /// A 400 with the given code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// A 422 with the given code.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::Unprocessable {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) | Self::RouteNotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. }
            | Self::Conflict { code, .. }
            | Self::Unprocessable { code, .. }
            | Self::Unavailable { code, .. } => code,
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::RouteNotFound(_) => "route_not_found",
            Self::PreconditionFailed(_) => "version_mismatch",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::TooManyRequests { .. } => "rate_limited",
            Self::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            Self::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal error".to_owned()
            }
            Self::Unavailable { message, .. } => {
                tracing::warn!(error = %message, code = self.code(), "unavailable");
                message.clone()
            }
            other => other.to_string(),
        };
        let mut response = (status, ErrorBody::new(self.code(), message)).into_response();
        let retry_after = match &self {
            Self::TooManyRequests { retry_after, .. } => Some(*retry_after),
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Self::Unauthorized(message) = &self {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge(message));
        }
        response
    }
}

/// The 401 message when the key sent is not a configured one.
pub const INVALID_KEY: &str = "invalid API key";

/// The `WWW-Authenticate` challenge of a 401 with this message (RFC 6750 §3):
/// the realm always, `error="invalid_token"` when a key was sent but is not
/// valid (no error code when the request carried no bearer key at all).
pub fn challenge(message: &str) -> HeaderValue {
    if message == INVALID_KEY {
        HeaderValue::from_static(
            "Bearer realm=\"session-gateway\", error=\"invalid_token\", \
             error_description=\"the API key is not valid\"",
        )
    } else {
        HeaderValue::from_static("Bearer realm=\"session-gateway\"")
    }
}

/// The uniform error body of every failed request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable snake_case code, e.g. `not_found` or `denied_by_hook`.
    #[schema(example = "not_found")]
    pub code: &'static str,
    /// What was wrong, for a human.
    pub message: String,
}

impl ErrorBody {
    /// The body for `code` and `message`.
    pub fn new(code: &'static str, message: String) -> axum::Json<Self> {
        axum::Json(Self {
            error: ErrorDetail { code, message },
        })
    }
}

/// Result alias for handlers.
pub type AppResult<T> = Result<T, AppError>;
