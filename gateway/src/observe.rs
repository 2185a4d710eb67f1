//! Observability: a request id and a tracing span per request, and the
//! Prometheus metrics served at `GET /metrics`.
//!
//! Metrics live in a [`prometheus_client`] registry: request latency and
//! response counts are families the middleware updates; hook, connection and
//! SSE figures are read from their owners' counters at scrape time by
//! collectors, so the hot paths keep their plain atomics.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use tracing::Instrument;

use crate::hooks::HookHost;
use crate::store::SessionStore;
use crate::stream::EventHub;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Labels of the request metrics. Bounded whatever clients send: the method
/// is one of the standard methods or `other`, and the route is the matched
/// route template (never the raw path) or `unmatched`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

/// [`RouteLabels`] plus the response status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    method: &'static str,
    route: String,
    status: u16,
}

/// The `state` label of the outbox gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboxLabels {
    state: &'static str,
}

/// A label value as the text format needs it (`\\`, `"` and newlines
/// escaped); borrowed when nothing needs escaping, as for every route.
fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['\\', '"', '\n']) {
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        s.into()
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Connection counters for `/metrics`, kept by the accept loop
/// ([`crate::server`]).
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Closed for taking longer than the header read timeout.
    pub closed_header_timeout: AtomicU64,
    /// Closed after the idle timeout.
    pub closed_idle: AtomicU64,
    /// Idle connections closed to make room at the connection cap.
    pub closed_evicted: AtomicU64,
    /// Times `accept` failed (e.g. `EMFILE`).
    pub accept_errors: AtomicU64,
    /// The connection cap in force.
    pub max: AtomicU64,
}

/// The gateway's metrics: the registry `GET /metrics` encodes, and the
/// families the request middleware updates.
pub struct Metrics {
    registry: Registry,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    responses: Family<StatusLabels, Counter>,
    outbox: Family<OutboxLabels, Gauge>,
    /// The last read of the store's queue depths.
    queue_depths: tokio::sync::Mutex<Option<QueueDepths>>,
    /// Client connections (see [`crate::server`]).
    pub connections: Arc<ConnStats>,
}

impl Metrics {
    /// The registry, with collectors reading the plugins' counters from
    /// `hooks`, the connection counters and the live SSE feeds of `hub`.
    pub fn new(hooks: Arc<HookHost>, hub: Arc<EventHub>) -> Self {
        let connections = Arc::new(ConnStats::default());
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let responses = Family::<StatusLabels, Counter>::default();
        let outbox = Family::<OutboxLabels, Gauge>::default();
        let mut registry = Registry::default();
        registry.register(
            "gateway_http_request_duration_seconds",
            "Time to produce the response, by route",
            latency.clone(),
        );
        // Counters are exposed with the `_total` suffix.
        registry.register(
            "gateway_http_responses",
            "Responses by route and status",
            responses.clone(),
        );
        registry.register(
            "gateway_outbox_items",
            "Notifications in the outbox by state",
            outbox.clone(),
        );
        registry.register_collector(Box::new(Scraped {
            hooks,
            hub,
            connections: connections.clone(),
        }));
        Self {
            registry,
            latency,
            responses,
            outbox,
            queue_depths: tokio::sync::Mutex::new(None),
            connections,
        }
    }

    fn record(&self, method: &'static str, route: String, status: u16, us: u64) {
        let route = RouteLabels {
            method,
            route: match escape(&route) {
                std::borrow::Cow::Borrowed(_) => route,
                std::borrow::Cow::Owned(escaped) => escaped,
            },
        };
        self.latency.get_or_create(&route).observe(us as f64 / 1e6);
        self.responses
            .get_or_create(&StatusLabels {
                method,
                route: route.route,
                status,
            })
            .inc();
    }

    /// Every metric in the Prometheus text format, then the store's own.
    pub async fn render(&self, store: &dyn SessionStore) -> String {
        let depths = self.queue_depths(store).await;
        // On failure the gauge has no samples rather than stale ones.
        match depths.outbox {
            Some((pending, dead)) => {
                for (state, n) in [("pending", pending), ("dead", dead)] {
                    self.outbox
                        .get_or_create(&OutboxLabels { state })
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
            None => self.outbox.clear(),
        }
        let mut out = String::with_capacity(8192);
        // `encode_registry` leaves out the OpenMetrics `# EOF` line: the
        // store's metrics follow.
        prometheus_client::encoding::text::encode_registry(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        // The store's numbers, read now: a registry of one collector per scrape.
        let mut store_registry = Registry::default();
        store_registry.register_collector(Box::new(StoreScraped(store.metrics())));
        // Left out when its query failed.
        if let Some(backlog) = depths.backlog {
            store_registry.register_collector(Box::new(BacklogScraped {
                backlog,
                now: crate::model::now_ms(),
            }));
        }
        prometheus_client::encoding::text::encode_registry(&mut out, &store_registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The store's queue depths: queried at most once per
    /// [`QUEUE_DEPTHS_MAX_AGE`] however often `/metrics` is scraped (it is
    /// open to anyone and exempt from the request limits, and on MongoDB
    /// these are queries whose work grows with a backlog). Concurrent
    /// scrapes wait for the one query in flight.
    async fn queue_depths(&self, store: &dyn SessionStore) -> QueueDepths {
        let mut last = self.queue_depths.lock().await;
        if let Some(d) = *last
            && d.at.elapsed() < QUEUE_DEPTHS_MAX_AGE
        {
            return d;
        }
        let d = QueueDepths {
            outbox: store.outbox_counts().await.ok(),
            backlog: store.hook_backlog().await.ok(),
            at: Instant::now(),
        };
        *last = Some(d);
        d
    }
}

/// How long `/metrics` shows the queue depths it read before it reads them
/// again.
pub const QUEUE_DEPTHS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);

/// The store's queues as of one read (`None`: its query failed).
#[derive(Debug, Clone, Copy)]
struct QueueDepths {
    /// Pending and dead notifications.
    outbox: Option<(u64, u64)>,
    backlog: Option<crate::store::HookBacklog>,
    at: Instant,
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

/// Metrics read from their owners' counters at each scrape.
struct Scraped {
    hooks: Arc<HookHost>,
    hub: Arc<EventHub>,
    connections: Arc<ConnStats>,
}

impl std::fmt::Debug for Scraped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scraped")
    }
}

/// Encodes one metric without labels.
fn encode_one(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric: &(impl EncodeMetric + TypedMetric),
) -> Result<(), std::fmt::Error> {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;

        // Per plugin; names without `_total`, which counters get when encoded.
        type Read = fn(&crate::hooks::runtime::Plugin) -> u64;
        let per_plugin: [(&str, &str, Read); 7] = [
            ("gateway_hook_calls", "Hook calls by plugin.", |p| {
                p.meta.stats.calls.load(Relaxed)
            }),
            (
                "gateway_hook_errors",
                "Failed hook calls (trap, timeout, limit, bad output) by plugin.",
                |p| p.meta.stats.errors.load(Relaxed),
            ),
            (
                "gateway_hook_publish_refused",
                "publish calls refused for lack of a grant.",
                |p| p.meta.stats.publish_refused.load(Relaxed),
            ),
            (
                "gateway_hook_quarantines",
                "Times a plugin was quarantined for a tenant after repeated failures.",
                |p| p.breakers.trips.load(Relaxed),
            ),
            (
                "gateway_hook_quarantined_calls",
                "Hook calls skipped (on_error outcome) during a quarantine.",
                |p| p.breakers.skipped.load(Relaxed),
            ),
            (
                "gateway_hook_isolated_calls",
                "Hook calls of suspect tenants (mostly failing lately), run at the lowest CPU priority.",
                |p| p.breakers.isolated.load(Relaxed),
            ),
            (
                "gateway_hook_isolated_inline_calls",
                "Suspects' calls the low-priority thread did not start in time (busy cores), run at normal priority instead.",
                |p| p.breakers.inline.load(Relaxed),
            ),
        ];
        let plugins = self.hooks.snapshot();
        for (name, help, read) in per_plugin {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for p in &plugins.plugins {
                let labels = [("plugin", escape(&p.meta.name))];
                ConstCounter::new(read(p)).encode(family.encode_family(&labels)?)?;
            }
        }
        // A running total that keeps its historical name (no `_total`), so
        // it is exposed as a gauge that only grows.
        let mut family = encoder.encode_descriptor(
            "gateway_hook_latency_seconds_sum",
            "Total time spent in hook calls by plugin (only grows).",
            None,
            MetricType::Gauge,
        )?;
        for p in &plugins.plugins {
            let labels = [("plugin", escape(&p.meta.name))];
            let secs = p.meta.stats.latency_us_total.load(Relaxed) as f64 / 1e6;
            ConstGauge::new(secs).encode(family.encode_family(&labels)?)?;
        }

        let c = &self.connections;
        encode_one(
            &mut encoder,
            "gateway_http_connections",
            "Client connections open.",
            &ConstGauge::new(c.open.load(Relaxed)),
        )?;
        encode_one(
            &mut encoder,
            "gateway_http_connections_max",
            "The connection cap in force (server.max_connections or derived from the file limit).",
            &ConstGauge::new(c.max.load(Relaxed)),
        )?;
        encode_one(
            &mut encoder,
            "gateway_http_connections_accepted",
            "Client connections accepted.",
            &ConstCounter::new(c.accepted.load(Relaxed)),
        )?;
        encode_one(
            &mut encoder,
            "gateway_http_accept_errors",
            "Failed accepts (e.g. EMFILE).",
            &ConstCounter::new(c.accept_errors.load(Relaxed)),
        )?;
        let mut closed = encoder.encode_descriptor(
            "gateway_http_connections_closed",
            "Connections the gateway closed, by reason.",
            None,
            MetricType::Counter,
        )?;
        for (reason, v) in [
            ("header_timeout", &c.closed_header_timeout),
            ("idle_timeout", &c.closed_idle),
            ("evicted", &c.closed_evicted),
        ] {
            ConstCounter::new(v.load(Relaxed))
                .encode(closed.encode_family(&[("reason", reason)])?)?;
        }
        encode_one(
            &mut encoder,
            "gateway_sse_feeds",
            "Sessions with live SSE subscribers.",
            &ConstGauge::new(self.hub.feeds() as u64),
        )
    }
}

/// The store's own metrics ([`crate::store::StoreMetrics`]) at one scrape.
#[derive(Debug)]
struct StoreScraped(crate::store::StoreMetrics);

impl Collector for StoreScraped {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        if let Some(w) = self.0.embedded_writer {
            for (name, help, n) in [
                (
                    "gateway_embedded_writer_jobs",
                    "Jobs the embedded store's writer ran (writes, claims, completions).",
                    w.jobs,
                ),
                (
                    "gateway_embedded_writer_commits",
                    "Write transactions the embedded store committed, each one fsync.",
                    w.commits,
                ),
            ] {
                encode_one(&mut encoder, name, help, &ConstCounter::new(n))?;
            }
        }
        if let Some(g) = self.0.group_commit {
            for (name, help, n) in [
                (
                    "gateway_mongodb_group_commit_jobs",
                    "Writes (or batches of one session's writes) the group commit committed.",
                    g.jobs,
                ),
                (
                    "gateway_mongodb_group_commit_transactions",
                    "Transactions the group commit committed (each holds one or more jobs).",
                    g.transactions,
                ),
                (
                    "gateway_mongodb_group_commit_stale",
                    "Jobs sent back to a transaction of their own (their session had changed).",
                    g.stale,
                ),
                (
                    "gateway_mongodb_group_commit_recounts",
                    "Batches sent again for per-model results (their summary showed a guard that matched nothing).",
                    g.recounts,
                ),
            ] {
                encode_one(&mut encoder, name, help, &ConstCounter::new(n))?;
            }
        }
        let Some(p) = self.0.pool else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "gateway_mongodb_connections",
            "Connections of the driver's pool by state.",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in [("in_use", p.in_use), ("idle", p.idle)] {
            ConstGauge::new(n).encode(family.encode_family(&[("state", state)])?)?;
        }
        encode_one(
            &mut encoder,
            "gateway_mongodb_checkout_failures",
            "Connection checkouts that failed.",
            &ConstCounter::new(p.checkout_failures),
        )?;
        encode_one(
            &mut encoder,
            "gateway_mongodb_pool_cleared",
            "Times the pool was cleared (server went away).",
            &ConstCounter::new(p.pool_cleared),
        )
    }
}

/// The after-hook queue at one scrape ([`crate::store::HookBacklog`]).
#[derive(Debug)]
struct BacklogScraped {
    backlog: crate::store::HookBacklog,
    /// The scrape's time (Unix ms).
    now: i64,
}

impl Collector for BacklogScraped {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        encode_one(
            &mut encoder,
            "gateway_after_hook_events_pending",
            "Events whose after-hooks have not completed (claimed ones included).",
            &ConstGauge::new(self.backlog.pending),
        )?;
        // 0 when nothing waits; never negative (a clock behind the commit).
        let age_ms = self
            .backlog
            .oldest_ts
            .map_or(0, |ts| self.now.saturating_sub(ts).max(0));
        encode_one(
            &mut encoder,
            "gateway_after_hook_oldest_event_age_seconds",
            "Age of the oldest event whose after-hooks have not completed (0 when none).",
            &ConstGauge::new(age_ms as f64 / 1e3),
        )
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A random (v4) UUID in simple form, from the thread's CSPRNG: `new_v4`
/// asks the kernel (one `getrandom` system call per request).
fn new_request_id() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .simple()
        .to_string()
}

/// Middleware: request id (accepted from `X-Request-Id` or generated, and
/// returned), a span carrying it, one log line per request, and metrics.
pub async fn observe(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(new_request_id, str::to_owned);
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let span = tracing::info_span!("request", request_id = %id, method = %method, route = %route);
    let mut resp = next.run(req).instrument(span.clone()).await;
    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let status = resp.status().as_u16();
    metrics.record(method, route, status, us);
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

#[cfg(test)]
mod tests {
    use super::{BacklogScraped, Registry, StoreScraped, escape};
    use crate::store::{
        EmbeddedWriterMetrics, GroupCommitMetrics, HookBacklog, PoolMetrics, StoreMetrics,
    };

    fn store_text(m: StoreMetrics) -> String {
        let mut r = Registry::default();
        r.register_collector(Box::new(StoreScraped(m)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode_registry(&mut out, &r).unwrap();
        out
    }

    /// The store's numbers keep the names, labels and types `/metrics` has
    /// always shown (samples of counters end in `_total`).
    #[test]
    fn store_metrics_are_exposed() {
        assert_eq!(store_text(StoreMetrics::default()), "");
        let text = store_text(StoreMetrics {
            pool: Some(PoolMetrics {
                in_use: 2,
                idle: 3,
                checkout_failures: 4,
                pool_cleared: 5,
            }),
            group_commit: Some(GroupCommitMetrics {
                jobs: 6,
                transactions: 7,
                stale: 8,
                recounts: 9,
            }),
            embedded_writer: Some(EmbeddedWriterMetrics {
                jobs: 10,
                commits: 11,
            }),
        });
        for line in [
            "# TYPE gateway_mongodb_connections gauge",
            "gateway_mongodb_connections{state=\"in_use\"} 2",
            "gateway_mongodb_connections{state=\"idle\"} 3",
            "# TYPE gateway_mongodb_checkout_failures counter",
            "gateway_mongodb_checkout_failures_total 4",
            "# TYPE gateway_mongodb_pool_cleared counter",
            "gateway_mongodb_pool_cleared_total 5",
            "# TYPE gateway_mongodb_group_commit_jobs counter",
            "gateway_mongodb_group_commit_jobs_total 6",
            "gateway_mongodb_group_commit_transactions_total 7",
            "gateway_mongodb_group_commit_stale_total 8",
            "gateway_mongodb_group_commit_recounts_total 9",
            "# TYPE gateway_embedded_writer_jobs counter",
            "gateway_embedded_writer_jobs_total 10",
            "gateway_embedded_writer_commits_total 11",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
    }

    /// The after-hook queue's depth and the age of its oldest event, as
    /// gauges; an empty queue reads 0 and 0, and an event stamped after the
    /// scrape's clock (clocks of gateways sharing a MongoDB differ) reads 0,
    /// not a negative age.
    #[test]
    fn the_after_hook_backlog_is_exposed() {
        let text = |pending, oldest_ts| {
            let mut r = Registry::default();
            r.register_collector(Box::new(BacklogScraped {
                backlog: HookBacklog { pending, oldest_ts },
                now: 10_000,
            }));
            let mut out = String::new();
            prometheus_client::encoding::text::encode_registry(&mut out, &r).unwrap();
            out
        };
        for (pending, oldest, want) in [
            (
                3,
                Some(8_500),
                [
                    "gateway_after_hook_events_pending 3",
                    "gateway_after_hook_oldest_event_age_seconds 1.5",
                ],
            ),
            (
                0,
                None,
                [
                    "gateway_after_hook_events_pending 0",
                    "gateway_after_hook_oldest_event_age_seconds 0.0",
                ],
            ),
            (
                1,
                Some(10_250),
                [
                    "gateway_after_hook_events_pending 1",
                    "gateway_after_hook_oldest_event_age_seconds 0.0",
                ],
            ),
        ] {
            let got = text(pending, oldest);
            for line in want {
                assert!(got.lines().any(|l| l == line), "{line:?} missing in\n{got}");
            }
            assert!(
                got.contains("# TYPE gateway_after_hook_events_pending gauge"),
                "{got}"
            );
        }
    }

    /// Generated request ids keep the form they had with `Uuid::new_v4`:
    /// a version-4 UUID in simple form, different every time.
    #[test]
    fn generated_request_ids_are_v4_uuids() {
        let a = super::new_request_id();
        let b = super::new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        let u = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(u.get_version_num(), 4);
        assert_eq!(u.simple().to_string(), a);
    }

    #[test]
    fn label_values_are_escaped_for_the_text_format() {
        assert!(matches!(
            escape("/v1/sessions/{sid}"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
