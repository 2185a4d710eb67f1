//! The request guard: overload protection, authentication, rate limits and
//! the request timeout, in one middleware in front of every route.
//!
//! `/healthz`, `/readyz` and `/metrics` bypass the in-flight limit and the
//! rate limit: probes and monitoring must answer exactly when the gateway is
//! overloaded.
//!
//! Order matters: the global in-flight limit comes first so an overloaded
//! gateway sheds load (503 + `Retry-After`) before doing any work; then the
//! key is checked (401/403); then the key's token bucket (429 +
//! `Retry-After`); then the handler runs under the request timeout (503).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::auth::Keys;
pub use crate::config::LimitsConfig;
use crate::error::AppError;

/// Paths served without a key (probes and documents).
fn is_public(path: &str) -> bool {
    is_probe(path) || path == "/openapi.json"
}

/// Health probes and metrics: exempt from the in-flight limit and the rate
/// limit, so an overloaded gateway still answers its orchestrator and its
/// monitoring (they are cheap, and never read request bodies).
fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// A token bucket per key.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Shared state of the guard.
pub struct Guard {
    keys: Keys,
    in_flight: Arc<Semaphore>,
    buckets: Mutex<HashMap<String, Bucket>>,
    rate: f64,
    burst: f64,
    timeout: Duration,
}

impl Guard {
    /// Builds the guard from config.
    pub fn new(keys: Keys, limits: &LimitsConfig) -> Self {
        Self {
            keys,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            buckets: Mutex::new(HashMap::new()),
            rate: limits.rate_limit_per_second,
            burst: limits.rate_limit_burst.max(1.0),
            timeout: Duration::from_millis(limits.request_timeout_ms),
        }
    }

    /// Whether API keys are required.
    pub fn keys_required(&self) -> bool {
        self.keys.required()
    }

    /// Takes a token for `id`, or says how many seconds until one is free.
    fn take_token(&self, id: &str) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("buckets lock");
        let b = buckets.entry(id.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

/// The middleware; its state is the [`Guard`] alone.
pub async fn guard(State(g): State<Arc<Guard>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if is_probe(&path) {
        return match tokio::time::timeout(g.timeout, next.run(req)).await {
            Ok(resp) => resp,
            Err(_) => timed_out(g.timeout),
        };
    }
    let Ok(_permit) = g.in_flight.clone().try_acquire_owned() else {
        return AppError::Unavailable {
            code: "overloaded",
            message: "too many requests in flight; retry shortly".into(),
            retry_after: Some(1),
        }
        .into_response();
    };
    if !is_public(&path) {
        match g.keys.authenticate(req.method(), &path, req.headers()) {
            Ok((id, caller)) => {
                if let Err(retry_after) = g.take_token(&id) {
                    return AppError::TooManyRequests {
                        message: format!(
                            "rate limit of {} requests/s exceeded for key {id:?}",
                            g.rate
                        ),
                        retry_after,
                    }
                    .into_response();
                }
                req.extensions_mut().insert(caller);
            }
            Err(e) => return e.into_response(),
        }
    }
    match tokio::time::timeout(g.timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => timed_out(g.timeout),
    }
}

fn timed_out(timeout: Duration) -> Response {
    AppError::Unavailable {
        code: "request_timeout",
        message: format!("the request took longer than {} ms", timeout.as_millis()),
        retry_after: Some(1),
    }
    .into_response()
}

/// Depth of the deepest nesting in a JSON value (a scalar is 0).
pub fn json_depth(v: &serde_json::Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            serde_json::Value::Object(m) => stack.extend(m.values().map(|x| (x, d + 1))),
            serde_json::Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    max
}

/// How many levels of objects and arrays nest inside `v`'s own container
/// (`{"a":[{}]}` is 2; a scalar or an empty container is 0).
fn container_nesting(v: &serde_json::Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &serde_json::Value>> = match v {
            serde_json::Value::Object(m) => Box::new(m.values()),
            serde_json::Value::Array(a) => Box::new(a.iter()),
            _ => continue,
        };
        max = max.max(d);
        stack.extend(
            children
                .filter(|c| c.is_object() || c.is_array())
                .map(|c| (c, d + 1)),
        );
    }
    max
}

/// Checks a JSON value against the depth limit and (when `max_bytes` is set)
/// its serialized size.
///
/// # Errors
/// 422 `too_deep` or `too_large`, naming `what`.
pub fn check_json(
    what: &str,
    v: &serde_json::Value,
    limits: &LimitsConfig,
    max_bytes: Option<usize>,
) -> Result<(), AppError> {
    // Counted like the body rule (`extract::check_body`): levels of objects
    // and arrays inside the value's own container, so a whole body passes
    // here exactly when it passed that rule.
    let depth = container_nesting(v);
    if depth > limits.max_json_depth {
        return Err(AppError::unprocessable(
            "too_deep",
            format!(
                "{what} nests {depth} levels deep; at most {} are allowed",
                limits.max_json_depth
            ),
        ));
    }
    if let Some(max) = max_bytes {
        let len = serde_json::to_vec(v).map_or(usize::MAX, |b| b.len());
        if len > max {
            return Err(AppError::unprocessable(
                "too_large",
                format!("{what} is {len} bytes; at most {max} are allowed"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn depth() {
        assert_eq!(json_depth(&json!(1)), 0);
        assert_eq!(json_depth(&json!({"a": [1, {"b": 2}]})), 3);
        assert_eq!(container_nesting(&json!(1)), 0);
        assert_eq!(container_nesting(&json!({"a": 1})), 0);
        assert_eq!(container_nesting(&json!({"a": [1, {"b": 2}]})), 2);
        assert_eq!(container_nesting(&json!({"a": [[]]})), 2);
    }

    #[test]
    fn token_bucket_refuses_beyond_burst() {
        let limits = LimitsConfig {
            rate_limit_per_second: 1.0,
            rate_limit_burst: 3.0,
            ..LimitsConfig::default()
        };
        let g = Guard::new(Keys::new(&crate::auth::AuthConfig::default()), &limits);
        for _ in 0..3 {
            assert!(g.take_token("k").is_ok());
        }
        assert_eq!(g.take_token("k"), Err(1));
        assert!(g.take_token("other").is_ok());
    }
}
