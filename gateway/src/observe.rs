//! Observability: a request id and a tracing span per request, and the
//! Prometheus metrics served at `GET /metrics`.
//!
//! Metrics are plain atomics behind a read-mostly map (no registry crate): the
//! hot path is one read lock and a few relaxed increments.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::AppState;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A latency histogram.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe_us(&self, us: u64) {
        let secs = us as f64 / 1e6;
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Per-route request metrics.
#[derive(Default)]
struct RouteMetrics {
    latency: Histogram,
    statuses: RwLock<BTreeMap<u16, AtomicU64>>,
}

/// The gateway's request metrics.
///
/// Label sets are bounded whatever clients send: the method label is one of
/// the standard methods or `other`, and the route label is the matched route
/// template (never the raw path) or `unmatched`.
#[derive(Default)]
pub struct Metrics {
    routes: RwLock<BTreeMap<(&'static str, String), Arc<RouteMetrics>>>,
    /// Client connections (see [`crate::server`]).
    pub connections: Arc<crate::server::ConnStats>,
}

/// The method label: a standard method, or `other` for anything else (so
/// clients cannot add label values).
pub fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

impl Metrics {
    fn route(&self, method: &'static str, route: &str) -> Arc<RouteMetrics> {
        let key = (method, route.to_owned());
        if let Some(r) = self.routes.read().expect("metrics lock").get(&key) {
            return r.clone();
        }
        self.routes
            .write()
            .expect("metrics lock")
            .entry(key)
            .or_default()
            .clone()
    }

    fn record(&self, method: &'static str, route: &str, status: u16, us: u64) {
        let r = self.route(method, route);
        r.latency.observe_us(us);
        if let Some(c) = r.statuses.read().expect("metrics lock").get(&status) {
            c.fetch_add(1, Relaxed);
            return;
        }
        r.statuses
            .write()
            .expect("metrics lock")
            .entry(status)
            .or_default()
            .fetch_add(1, Relaxed);
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Middleware: request id (accepted from `X-Request-Id` or generated, and
/// returned), a span carrying it, one log line per request, and metrics.
pub async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned);
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let span = tracing::info_span!("request", request_id = %id, method = %method, route = %route);
    let mut resp = next.run(req).instrument(span.clone()).await;
    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let status = resp.status().as_u16();
    state.metrics.record(method, &route, status, us);
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(status, us, "request failed");
        } else {
            tracing::debug!(status, us, "request");
        }
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// Renders every metric in the Prometheus text format.
pub async fn render(state: &AppState) -> String {
    let mut out = String::with_capacity(8192);
    out.push_str(
        "# HELP gateway_http_request_duration_seconds Time to produce the response, by route.\n",
    );
    out.push_str("# TYPE gateway_http_request_duration_seconds histogram\n");
    let routes: Vec<_> = state
        .metrics
        .routes
        .read()
        .expect("metrics lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for ((method, route), r) in &routes {
        let labels = format!("method=\"{method}\",route=\"{}\"", escape(route));
        r.latency
            .render(&mut out, "gateway_http_request_duration_seconds", &labels);
    }
    out.push_str("# HELP gateway_http_responses_total Responses by route and status.\n");
    out.push_str("# TYPE gateway_http_responses_total counter\n");
    for ((method, route), r) in &routes {
        for (status, n) in r.statuses.read().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "gateway_http_responses_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {}",
                escape(route),
                n.load(Relaxed)
            );
        }
    }

    type Read = fn(&crate::hooks::runtime::Plugin) -> f64;
    let per_plugin: [(&str, &str, Read); 8] = [
        ("gateway_hook_calls_total", "Hook calls by plugin.", |p| {
            p.meta.stats.calls.load(Relaxed) as f64
        }),
        (
            "gateway_hook_errors_total",
            "Failed hook calls (trap, timeout, limit, bad output) by plugin.",
            |p| p.meta.stats.errors.load(Relaxed) as f64,
        ),
        (
            "gateway_hook_latency_seconds_sum",
            "Total time spent in hook calls by plugin.",
            |p| p.meta.stats.latency_us_total.load(Relaxed) as f64 / 1e6,
        ),
        (
            "gateway_hook_publish_refused_total",
            "publish calls refused for lack of a grant.",
            |p| p.meta.stats.publish_refused.load(Relaxed) as f64,
        ),
        (
            "gateway_hook_quarantines_total",
            "Times a plugin was quarantined for a tenant after repeated failures.",
            |p| p.breakers.trips.load(Relaxed) as f64,
        ),
        (
            "gateway_hook_quarantined_calls_total",
            "Hook calls skipped (on_error outcome) during a quarantine.",
            |p| p.breakers.skipped.load(Relaxed) as f64,
        ),
        (
            "gateway_hook_isolated_calls_total",
            "Hook calls of suspect tenants (mostly failing lately), run at the lowest CPU priority.",
            |p| p.breakers.isolated.load(Relaxed) as f64,
        ),
        (
            "gateway_hook_isolated_inline_calls_total",
            "Suspects' calls the low-priority thread did not start in time (busy cores), run at normal priority instead.",
            |p| p.breakers.inline.load(Relaxed) as f64,
        ),
    ];
    let plugins = state.hooks.snapshot();
    for (name, help, read) in per_plugin {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for p in &plugins.plugins {
            let _ = writeln!(
                out,
                "{name}{{plugin=\"{}\"}} {}",
                escape(&p.meta.name),
                read(p)
            );
        }
    }

    let c = &state.metrics.connections;
    let gauges: [(&str, &str, &str, &AtomicU64); 2] = [
        (
            "gateway_http_connections",
            "gauge",
            "Client connections open.",
            &c.open,
        ),
        (
            "gateway_http_connections_max",
            "gauge",
            "The connection cap in force (server.max_connections or derived from the file limit).",
            &c.max,
        ),
    ];
    for (name, kind, help, v) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
            v.load(Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP gateway_http_connections_accepted_total Client connections accepted.\n# TYPE gateway_http_connections_accepted_total counter\ngateway_http_connections_accepted_total {}",
        c.accepted.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP gateway_http_accept_errors_total Failed accepts (e.g. EMFILE).\n# TYPE gateway_http_accept_errors_total counter\ngateway_http_accept_errors_total {}",
        c.accept_errors.load(Relaxed)
    );
    out.push_str("# HELP gateway_http_connections_closed_total Connections the gateway closed, by reason.\n# TYPE gateway_http_connections_closed_total counter\n");
    for (reason, v) in [
        ("header_timeout", &c.closed_header_timeout),
        ("idle_timeout", &c.closed_idle),
        ("evicted", &c.closed_evicted),
    ] {
        let _ = writeln!(
            out,
            "gateway_http_connections_closed_total{{reason=\"{reason}\"}} {}",
            v.load(Relaxed)
        );
    }

    out.push_str("# HELP gateway_sse_feeds Sessions with live SSE subscribers.\n# TYPE gateway_sse_feeds gauge\n");
    let _ = writeln!(out, "gateway_sse_feeds {}", state.hub.feeds());
    if let Ok((pending, dead)) = state.store.outbox_counts().await {
        out.push_str("# HELP gateway_outbox_items Notifications in the outbox by state.\n# TYPE gateway_outbox_items gauge\n");
        let _ = writeln!(out, "gateway_outbox_items{{state=\"pending\"}} {pending}");
        let _ = writeln!(out, "gateway_outbox_items{{state=\"dead\"}} {dead}");
    }
    out.push_str(&crate::store::render_metrics(&state.store.metrics()));
    out
}
