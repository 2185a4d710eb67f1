//! Extractors whose rejections use the uniform JSON error shape.
//!
//! axum's own `Json` and `Path` answer bad input with plain-text bodies; these
//! wrappers turn every rejection into an [`AppError`] so clients always get
//! `{"error":{"code","message"}}`.

use std::borrow::Cow;
use std::collections::HashSet;

use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::AppError;

/// The deepest JSON nesting a body may have (`limits.max_json_depth`): the
/// one value the body extractors need from the application state, which
/// provides it with [`FromRef`].
#[derive(Debug, Clone, Copy)]
pub struct MaxJsonDepth(pub usize);

/// A type accepted as a JSON request body.
///
/// Every body passes [`check_body`] before it is parsed: nesting depth,
/// duplicate keys and numbers that would not be kept exactly. `VERBATIM` names
/// top-level fields stored as the exact text sent (a message's `message` and
/// `redact_message`), whose numbers are therefore kept as written and not
/// checked.
pub trait JsonBody: DeserializeOwned {
    /// Top-level fields kept as raw JSON text.
    const VERBATIM: &'static [&'static str] = &[];
}

impl JsonBody for serde_json::Value {}
impl JsonBody for crate::model::NewSession {}
impl JsonBody for crate::model::MessageInput {
    const VERBATIM: &'static [&'static str] = &["message", "redact_message"];
}
impl JsonBody for crate::model::MessagePatch {
    const VERBATIM: &'static [&'static str] = &["message", "redact_message"];
}

/// A JSON body. Malformed JSON is 400 `invalid_json` with the parser's reason;
/// a body over the configured limit is 413; the body rule of [`check_body`]
/// applies before parsing. The content type is not checked, so `curl -d`
/// works as typed.
pub struct Json<T>(pub T);

impl<T: JsonBody, S: Send + Sync> FromRequest<S> for Json<T>
where
    MaxJsonDepth: FromRef<S>,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let MaxJsonDepth(depth) = MaxJsonDepth::from_ref(state);
        let bytes = body_bytes(req, state).await?;
        parse_body::<T>(&bytes, depth).map(Json)
    }
}

/// A JSON body that may be empty (then `None`), so `curl -X POST` works for
/// endpoints whose every field is optional.
pub struct OptionalJson<T>(pub Option<T>);

impl<T: JsonBody, S: Send + Sync> FromRequest<S> for OptionalJson<T>
where
    MaxJsonDepth: FromRef<S>,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let MaxJsonDepth(depth) = MaxJsonDepth::from_ref(state);
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        parse_body::<T>(&bytes, depth).map(|v| OptionalJson(Some(v)))
    }
}

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, AppError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::PayloadTooLarge("request body is larger than the configured limit".into())
        } else {
            AppError::bad_request("invalid_body", "the request body could not be read")
        }
    })
}

/// Checks a body against the body rule, then parses it.
///
/// # Errors
/// As [`check_body`] and [`parse_json`].
pub fn parse_body<T: JsonBody>(bytes: &[u8], max_depth: usize) -> Result<T, AppError> {
    check_object(bytes)?;
    check_body(bytes, max_depth, T::VERBATIM)?;
    parse_json(bytes)
}

/// Parses a JSON body, mapping errors to 400 `invalid_json`.
///
/// # Errors
/// 400 with serde's message (which names the field and position).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    check_object(bytes)?;
    serde_json::from_slice(bytes)
        .map_err(|e| AppError::bad_request("invalid_json", format!("invalid JSON body: {e}")))
}

fn check_object(bytes: &[u8]) -> Result<(), AppError> {
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
    Ok(())
}

/// Path parameters, with bad ones answered as 400 `invalid_path`.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| AppError::bad_request("invalid_path", path_message(&e)))
    }
}

/// Our own wording for a path that does not fit its parameters (axum's names
/// Rust types and its own internals).
fn path_message(e: &PathRejection) -> String {
    let expected = |ty: &str| match ty {
        "u64" | "u32" | "usize" => "a non-negative integer",
        _ => "valid",
    };
    match e {
        PathRejection::FailedToDeserializePathParams(f) => match f.kind() {
            ErrorKind::ParseErrorAtKey {
                key,
                value,
                expected_type,
            } => format!(
                "path parameter {key} must be {}, got {value:?}",
                expected(expected_type)
            ),
            ErrorKind::ParseErrorAtIndex {
                value,
                expected_type,
                ..
            }
            | ErrorKind::ParseError {
                value,
                expected_type,
            } => format!("path segment {value:?} must be {}", expected(expected_type)),
            ErrorKind::InvalidUtf8InPathParam { key } => {
                format!("path parameter {key} is not valid UTF-8")
            }
            _ => "the path does not name a resource of this endpoint".to_owned(),
        },
        _ => "the path does not name a resource of this endpoint".to_owned(),
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
            .map_err(|_| {
                AppError::bad_request(
                    "invalid_query",
                    "the query string is not valid URL-encoded text",
                )
            })
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

/// The body rule, applied to the raw bytes of every JSON body before it is
/// parsed (so nothing deeper than the limit is ever built, parsed or stored):
///
/// - **depth**: no value lies more than `max_depth` objects/arrays below the
///   body's own object (422 `too_deep`);
/// - **duplicate keys**: no object names a key twice, at any depth (400
///   `duplicate_key`), so what is stored is what every JSON reader would see;
/// - **numbers**: outside the `verbatim` top-level fields (kept as the exact
///   text sent), an integer must fit 64 bits (−2^63 … 2^64−1) and any other
///   number must be one a 64-bit double holds (see [`number_is_exact`]:
///   `0.1`, `1e300` are; `1e-400`, `1e400`, `123456789012345678901234567890`
///   and `0.1000000000000000000001` are not), because such values are stored
///   as numbers and would come back changed (400 `invalid_number`).
///
/// Malformed JSON is left to the parser, which names the position.
///
/// # Errors
/// As above.
pub fn check_body(bytes: &[u8], max_depth: usize, verbatim: &[&str]) -> Result<(), AppError> {
    struct Frame<'a> {
        object: bool,
        expect_key: bool,
        keys: Vec<Cow<'a, [u8]>>,
        set: Option<HashSet<Cow<'a, [u8]>>>,
    }
    let mut stack: Vec<Frame<'_>> = Vec::new();
    // Depth (stack length) of the container that holds a verbatim field's value.
    let mut verbatim_at: Option<usize> = None;
    let mut verbatim_next = false;
    let mut i = 0;
    let n = bytes.len();
    while i < n {
        let b = bytes[i];
        match b {
            b'{' | b'[' => {
                if stack.len() > max_depth {
                    return Err(AppError::unprocessable(
                        "too_deep",
                        format!(
                            "the body nests more than {max_depth} levels of objects and arrays \
                             (limits.max_json_depth)"
                        ),
                    ));
                }
                stack.push(Frame {
                    object: b == b'{',
                    expect_key: b == b'{',
                    keys: Vec::new(),
                    set: None,
                });
                if std::mem::take(&mut verbatim_next) && verbatim_at.is_none() {
                    verbatim_at = Some(stack.len());
                }
                i += 1;
            }
            b'}' | b']' => {
                if verbatim_at == Some(stack.len()) {
                    verbatim_at = None;
                }
                stack.pop();
                i += 1;
            }
            b',' => {
                if let Some(f) = stack.last_mut() {
                    f.expect_key = f.object;
                }
                i += 1;
            }
            b'"' => {
                let start = i + 1;
                let mut j = start;
                let mut escaped = false;
                while j < n && bytes[j] != b'"' {
                    if bytes[j] == b'\\' {
                        escaped = true;
                        j += 1;
                    }
                    j += 1;
                }
                let end = j.min(n);
                i = end + 1;
                let Some(f) = stack.last_mut() else { continue };
                if !(f.object && f.expect_key) {
                    verbatim_next = false;
                    continue;
                }
                f.expect_key = false;
                let key: Cow<'_, [u8]> = if escaped {
                    match serde_json::from_slice::<String>(&bytes[start - 1..i.min(n)]) {
                        Ok(k) => Cow::Owned(k.into_bytes()),
                        Err(_) => return Ok(()), // malformed: the parser names it
                    }
                } else {
                    Cow::Borrowed(&bytes[start..end])
                };
                let dup = match &mut f.set {
                    Some(set) => !set.insert(key.clone()),
                    None if f.keys.len() < 16 => {
                        let dup = f.keys.contains(&key);
                        f.keys.push(key.clone());
                        dup
                    }
                    None => {
                        let mut set: HashSet<_> = f.keys.drain(..).collect();
                        let dup = !set.insert(key.clone());
                        f.set = Some(set);
                        dup
                    }
                };
                if dup {
                    return Err(AppError::bad_request(
                        "duplicate_key",
                        format!(
                            "key {:?} appears twice in one object",
                            String::from_utf8_lossy(&key)
                        ),
                    ));
                }
                if stack.len() == 1 {
                    verbatim_next = verbatim.iter().any(|v| v.as_bytes() == &*key);
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < n && matches!(bytes[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
                    i += 1;
                }
                let exempt = std::mem::take(&mut verbatim_next) || verbatim_at.is_some();
                if !exempt
                    && let Ok(text) = std::str::from_utf8(&bytes[start..i])
                    && !number_is_exact(text)
                {
                    let shown: String = text.chars().take(40).collect();
                    return Err(AppError::bad_request(
                        "invalid_number",
                        format!(
                            "number {shown} cannot be stored exactly: integers must fit 64 bits \
                             and other numbers a 64-bit double (finite, at most 17 significant \
                             digits); send it as a string"
                        ),
                    ));
                }
            }
            b't' | b'f' | b'n' => {
                verbatim_next = false;
                i += 1;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Whether a JSON number token is kept: an integer within 64 bits (stored as
/// that integer), or a number a 64-bit double holds — finite, not a non-zero
/// value that underflows to zero, and at most 17 significant digits (the
/// precision of a double: every double's shortest rendering has at most 17,
/// so whatever a double-based client such as Python or JavaScript writes is
/// kept and reads back as the same double; its last digit may be written
/// differently when two shortest renderings are equally close, e.g. Python's
/// `0.013643264770507812` comes back as `0.013643264770507813`, the same
/// double). Texts carrying more precision than a double are refused, since
/// they would come back changed — below 2.2250738585072014e-308 (subnormal
/// doubles, which hold fewer than 17 digits) that is any text other than the
/// double's shortest rendering. Malformed tokens answer true (the parser
/// refuses them with a position).
pub fn number_is_exact(text: &str) -> bool {
    if !text.contains(['.', 'e', 'E'])
        && (text.parse::<i64>().is_ok() || text.parse::<u64>().is_ok())
    {
        return true;
    }
    let Ok(f) = text.parse::<f64>() else {
        return true;
    };
    // No decimal reading: an exponent beyond i64, so infinite or underflowed.
    let Some((neg, digits, power)) = decimal(text) else {
        return false;
    };
    if f != 0.0 && f.is_finite() && !f.is_normal() {
        // Subnormal (below 2.2250738585072014e-308): a double holds fewer
        // digits here, down to one, so only the double's own shortest
        // rendering comes back as sent (`41e-324` would come back `4e-323`).
        return decimal(&format!("{f:e}"))
            .is_some_and(|(n, d, p)| n == neg && d == digits && p == power);
    }
    f.is_finite() && (f != 0.0 || digits.is_empty()) && digits.len() <= 17
}

/// A decimal number as (negative, significant digits, power of ten of the
/// last digit), zero as (false, "", 0).
fn decimal(text: &str) -> Option<(bool, String, i64)> {
    let (neg, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(p) => (&rest[..p], rest[p + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: String = format!("{int}{frac}");
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some((false, String::new(), 0));
    }
    let trimmed = digits.trim_end_matches('0');
    let power = exp
        .checked_sub(i64::try_from(frac.len()).ok()?)?
        .checked_add(i64::try_from(digits.len() - trimmed.len()).ok()?)?;
    Some((neg, trimmed.to_owned(), power))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: &str, depth: usize, verbatim: &[&str]) -> Option<&'static str> {
        check_body(body.as_bytes(), depth, verbatim)
            .err()
            .map(|e| e.code())
    }

    #[test]
    fn numbers_kept_exactly_pass_and_others_are_refused() {
        for ok in [
            "0",
            "-0",
            "1",
            "-9223372036854775808",
            "18446744073709551615",
            "0.1",
            "1.5",
            "1e300",
            "2.5E-8",
            "1.0",
            "100000000000000000000",
            "0.30000000000000004",
            "1.7976931348623157e308",
            "5e-324",
            "0e99",
            // Python's repr; Rust prints the same double as ...813.
            "0.013643264770507812",
            "0.0032854080200195312",
        ] {
            assert!(number_is_exact(ok), "{ok}");
        }
        for bad in [
            "123456789012345678901234567890",
            "1e-400",
            "1e400",
            "-1e400",
            "18446744073709551616",
            "0.1000000000000000000001",
            "9007199254740993.000000000001",
            "1e99999999999999999999",
        ] {
            assert!(!number_is_exact(bad), "{bad}");
        }
    }

    #[test]
    fn the_body_rule() {
        assert_eq!(code(r#"{"a":[[1]]}"#, 2, &[]), None);
        assert_eq!(code(r#"{"a":[[[1]]]}"#, 2, &[]), Some("too_deep"));
        assert_eq!(code(r#"{"a":"[[[[[[{{{{"}"#, 2, &[]), None);
        assert_eq!(code(r#"{"a":1,"b":{"a":2}}"#, 5, &[]), None);
        assert_eq!(code(r#"{"a":1,"a":2}"#, 5, &[]), Some("duplicate_key"));
        assert_eq!(code(r#"{"a":1,"\u0061":2}"#, 5, &[]), Some("duplicate_key"));
        assert_eq!(
            code(r#"{"x":[{"k":1,"k":1}]}"#, 5, &[]),
            Some("duplicate_key")
        );
        let many: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
        assert_eq!(code(&format!("{{{}}}", many.join(",")), 5, &[]), None);
        assert_eq!(
            code(&format!("{{{},\"k7\":0}}", many.join(",")), 5, &[]),
            Some("duplicate_key")
        );
        assert_eq!(code(r#"{"m":1e-400}"#, 5, &[]), Some("invalid_number"));
        // Subnormals: only the double's shortest rendering is kept.
        assert_eq!(code(r#"{"m":41e-324}"#, 5, &[]), Some("invalid_number"));
        assert_eq!(code(r#"{"m":4.1e-323}"#, 5, &[]), Some("invalid_number"));
        for kept in [
            "4e-323",
            "-4e-323",
            "5e-324",
            "2.225073858507201e-308",
            "2.2250738585072014e-308",
        ] {
            assert_eq!(code(&format!(r#"{{"m":{kept}}}"#), 5, &[]), None, "{kept}");
        }
        assert_eq!(code(r#"{"m":1e-400,"x":1}"#, 5, &["m"]), None);
        assert_eq!(code(r#"{"m":{"v":[1e-400]},"x":1}"#, 5, &["m"]), None);
        assert_eq!(
            code(r#"{"m":{"v":1},"x":1e-400}"#, 5, &["m"]),
            Some("invalid_number")
        );
        assert_eq!(
            code(r#"{"x":{"m":1e-400}}"#, 5, &["m"]),
            Some("invalid_number")
        );
        assert_eq!(code(r#"{"s":"1e-400 \" [[[["}"#, 1, &[]), None);
    }
}
