//! Extractors whose rejections use the uniform JSON error shape.
//!
//! axum's own `Json` and `Path` answer bad input with plain-text bodies; these
//! wrappers turn every rejection into an [`AppError`] so clients always get
//! `{"error":{"code","message"}}`.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::AppError;

/// A JSON body. Malformed JSON is 400 `invalid_json` with the parser's reason;
/// a body over the configured limit is 413. The content type is not checked,
/// so `curl -d` works as typed.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(Json)
    }
}

/// A JSON body that may be empty (then `None`), so `curl -X POST` works for
/// endpoints whose every field is optional.
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        parse_json(&bytes).map(|v| OptionalJson(Some(v)))
    }
}

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, AppError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::PayloadTooLarge("request body is larger than the configured limit".into())
        } else {
            AppError::bad_request("invalid_body", e.body_text())
        }
    })
}

/// Parses a JSON body, mapping errors to 400 `invalid_json`.
///
/// # Errors
/// 400 with serde's message (which names the field and position).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(AppError::bad_request(
            "invalid_json",
            "request body is empty; a JSON value is required",
        ));
    }
    // Every body of this API is a JSON object. Checked here because serde's
    // derived deserializers would also accept an array as positional fields.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => AppError::bad_request("invalid_body", "the body must be a JSON object"),
                Err(e) => AppError::bad_request("invalid_json", format!("invalid JSON body: {e}")),
            },
        );
    }
    serde_json::from_slice(bytes)
        .map_err(|e| AppError::bad_request("invalid_json", format!("invalid JSON body: {e}")))
}

/// Path parameters, with bad ones answered as 400 `invalid_path`.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| AppError::bad_request("invalid_path", e.body_text()))
    }
}

/// Query parameters as ordered pairs; malformed encodings are 400 `invalid_query`.
pub struct Query(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| AppError::bad_request("invalid_query", e.body_text()))
    }
}

impl Query {
    /// Rejects parameters outside `allowed` (prefix match for entries ending in '.').
    ///
    /// # Errors
    /// 400 `invalid_query` naming the parameter.
    pub fn only(&self, allowed: &[&str]) -> Result<(), AppError> {
        for (k, _) in &self.0 {
            let ok = allowed.iter().any(|a| {
                if a.ends_with('.') {
                    k.starts_with(a) && k.len() > a.len()
                } else {
                    k == a
                }
            });
            if !ok {
                return Err(AppError::bad_request(
                    "invalid_query",
                    format!(
                        "unknown query parameter {k:?} (allowed: {})",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The value of a parameter given at most once.
    ///
    /// # Errors
    /// 400 when the parameter is repeated.
    pub fn get(&self, name: &str) -> Result<Option<&str>, AppError> {
        let mut found = self.0.iter().filter(|(k, _)| k == name);
        let first = found.next().map(|(_, v)| v.as_str());
        if found.next().is_some() {
            return Err(AppError::bad_request(
                "invalid_query",
                format!("query parameter {name:?} is given more than once"),
            ));
        }
        Ok(first)
    }

    /// A non-negative integer parameter.
    ///
    /// # Errors
    /// 400 when it is not a non-negative integer.
    pub fn get_u64(&self, name: &str) -> Result<Option<u64>, AppError> {
        self.get(name)?
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    AppError::bad_request(
                        "invalid_query",
                        format!(
                            "query parameter {name:?} must be a non-negative integer, got {v:?}"
                        ),
                    )
                })
            })
            .transpose()
    }
}
