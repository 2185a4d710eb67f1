//! `[limits]`: overload, rate, timeout and size limits of requests.

use serde::Deserialize;

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Longest a request may take to produce its response; then 503 `request_timeout`.
    pub request_timeout_ms: u64,
    /// Requests served at once; beyond it, 503 `overloaded` with `Retry-After`.
    pub max_in_flight: usize,
    /// Sustained requests per second allowed per API key (0 = unlimited).
    pub rate_limit_per_second: f64,
    /// Burst allowance per key above the sustained rate.
    pub rate_limit_burst: f64,
    /// Largest metadata (serialized) one create or patch may carry; 422 above.
    pub max_metadata_bytes: usize,
    /// Deepest nesting of objects/arrays accepted in metadata, agent state and
    /// feedback; 422 above.
    pub max_json_depth: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            request_timeout_ms: 30_000,
            max_in_flight: 2048,
            rate_limit_per_second: 0.0,
            rate_limit_burst: 100.0,
            max_metadata_bytes: 64 * 1024,
            max_json_depth: 32,
        }
    }
}
