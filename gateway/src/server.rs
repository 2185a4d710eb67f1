//! The HTTP server: an accept loop over hyper's HTTP/1 connections with the
//! limits `axum::serve` does not have.
//!
//! - **Header read timeout** (`server.header_read_timeout_ms`): a request's
//!   head must arrive within it of its first byte (a new connection's first
//!   request, within it of connecting), so a slow-header client cannot hold a
//!   socket.
//! - **Idle timeout** (`server.idle_timeout_ms`): a keep-alive connection
//!   with no request in progress is closed after it. A request in progress
//!   (an SSE stream included, until its body ends) is never cut by either.
//! - **Connection cap** (`server.max_connections`, by default derived from the
//!   file limit): at the cap, the longest-idle connection is closed to make
//!   room; with none idle, new connections wait in the listen backlog until
//!   one closes. So idle clients cannot make `accept` fail with `EMFILE`, and
//!   `/healthz` keeps answering.
//! - **Graceful shutdown:** stop accepting, end SSE streams, let requests in
//!   progress finish (bounded by `server.shutdown_grace_ms`), close idle
//!   connections at once.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tower::ServiceExt as _;

use crate::config::Config;
pub use crate::observe::ConnStats;

/// Connection limits, resolved from `[server]` and the file limit.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// See `server.header_read_timeout_ms`.
    pub header_read_timeout: Duration,
    /// See `server.idle_timeout_ms`.
    pub idle_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

/// File descriptors kept free for everything but client connections: the
/// store (redb file, or the MongoDB pool on top), plugin files and the
/// compiled-plugin cache, outbound SNS/SQS clients, the listener, logs.
pub fn fd_headroom(config: &Config, soft_limit: u64) -> u64 {
    let mut headroom = (soft_limit / 8).max(64);
    if config.storage.kind == crate::config::StorageType::Mongodb {
        headroom += config.storage.mongodb.max_pool_size as u64;
    }
    headroom
}

/// Connections that must have closed, most of them since the last trim,
/// before freed memory is handed back to the OS.
const TRIM_AFTER_CLOSED: u64 = 256;

/// Hands memory freed by closed connections back to the OS after a burst of
/// connections ends (e.g. a thousand SSE streams closing): glibc keeps freed
/// chunks in its arenas, so without this the process stays at its peak RSS.
/// Runs when at least [`TRIM_AFTER_CLOSED`] connections closed since the
/// last trim and fewer are open now than closed since, at most once a second,
/// off the async threads. The bookkeeping is process-wide, like the heap.
fn release_memory(open: u64) {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    /// Connections closed since memory was last handed back.
    static CLOSED_SINCE_TRIM: AtomicU64 = AtomicU64::new(0);
    /// When memory was last handed back (ms since `BASE`; 0 = never).
    static LAST_TRIM_MS: AtomicU64 = AtomicU64::new(0);
    let closed = CLOSED_SINCE_TRIM.fetch_add(1, Ordering::Relaxed) + 1;
    if closed < TRIM_AFTER_CLOSED || open >= closed {
        return;
    }
    let now =
        u64::try_from(BASE.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX);
    let last = LAST_TRIM_MS.load(Ordering::Relaxed);
    if (last != 0 && now.saturating_sub(last) < 1_000)
        || LAST_TRIM_MS
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    CLOSED_SINCE_TRIM.store(0, Ordering::Relaxed);
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn_blocking(trim_heap);
    }
}

/// Returns free heap memory to the OS (glibc's `malloc_trim`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_heap() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

/// Raises the soft file limit to the hard one (as far as allowed) and returns
/// the soft limit in force.
#[allow(unsafe_code)]
pub fn raise_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid, initialised struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the valid struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    lim.rlim_cur
}

impl ConnLimits {
    /// The limits for `config`, with the file limit read (and raised to the
    /// hard limit) now.
    pub fn from_config(config: &Config) -> Self {
        let soft = raise_file_limit();
        let allowed = usize::try_from(soft.saturating_sub(fd_headroom(config, soft)))
            .unwrap_or(usize::MAX)
            .max(1);
        let wanted = config.server.max_connections;
        let max_connections = if wanted == 0 {
            allowed
        } else if wanted > allowed {
            tracing::warn!(
                max_connections = wanted,
                file_limit = soft,
                lowered_to = allowed,
                "server.max_connections is above what the file limit allows (minus headroom for the store, plugins and outbound clients); lowered"
            );
            allowed
        } else {
            wanted
        };
        Self {
            header_read_timeout: Duration::from_millis(config.server.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(config.server.idle_timeout_ms),
            max_connections,
        }
    }
}

/// One connection's state, shared by its task, its service and its socket.
struct Conn {
    /// Requests in progress (from head parsed to response body dropped).
    active: AtomicUsize,
    /// Milliseconds since `base` when the connection last became idle.
    idle_since: AtomicU64,
    /// Milliseconds since `base` (+1) of the first byte of a head being read
    /// while idle; 0 when none.
    head_started: AtomicU64,
    /// Whether it has served a request (the first one is bound by the
    /// header timeout from connecting, later ones by the idle timeout).
    served: AtomicBool,
    /// Asked to close to make room at the cap.
    evict: AtomicBool,
    changed: Notify,
    base: Instant,
}

impl Conn {
    fn ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn idle(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0
    }
}

/// Marks a request in progress until dropped (with the response body).
struct Busy {
    conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl Busy {
    fn new(conn: Arc<Conn>, registry: Arc<Registry>) -> Self {
        conn.active.fetch_add(1, Ordering::AcqRel);
        conn.head_started.store(0, Ordering::Release);
        conn.served.store(true, Ordering::Release);
        conn.changed.notify_one();
        Self { conn, registry }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn
            .idle_since
            .store(self.conn.ms(), Ordering::Release);
        if self.conn.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.conn.changed.notify_one();
            self.registry.went_idle.notify_one();
        }
    }
}

/// The socket, noting when the first byte of a head arrives on an idle connection.
struct Watched {
    inner: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let c = &self.conn;
            // A new connection's first head is timed from connecting.
            if c.served.load(Ordering::Acquire)
                && c.idle()
                && c.head_started.load(Ordering::Acquire) == 0
            {
                c.head_started.store(c.ms() + 1, Ordering::Release);
                c.changed.notify_one();
            }
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The open connections.
#[derive(Default)]
struct Registry {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    /// A connection went idle (a candidate to close at the cap).
    went_idle: Notify,
    /// The last connection closed.
    all_closed: Notify,
    next_id: AtomicU64,
}

impl Registry {
    /// Asks the longest-idle connection (no request in progress, not already
    /// asked) to close; false when there is none.
    fn evict_oldest_idle(&self) -> bool {
        let conns = self.conns.lock().expect("connections lock");
        let victim = conns
            .values()
            .filter(|c| c.idle() && !c.evict.load(Ordering::Acquire))
            .min_by_key(|c| {
                let head = c.head_started.load(Ordering::Acquire);
                if head > 0 {
                    head - 1
                } else {
                    c.idle_since.load(Ordering::Acquire)
                }
            });
        match victim {
            Some(c) => {
                c.evict.store(true, Ordering::Release);
                c.changed.notify_one();
                true
            }
            None => false,
        }
    }

    fn len(&self) -> usize {
        self.conns.lock().expect("connections lock").len()
    }
}

/// Unregisters a connection when its task ends (a panicking handler included).
struct Closed {
    id: u64,
    registry: Arc<Registry>,
    stats: Arc<ConnStats>,
    end: End,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Closed {
    fn drop(&mut self) {
        let counter = match self.end {
            End::Done => None,
            End::HeaderTimeout => Some(&self.stats.closed_header_timeout),
            End::Idle => Some(&self.stats.closed_idle),
            End::Evicted => Some(&self.stats.closed_evicted),
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let open = self.stats.open.fetch_sub(1, Ordering::Relaxed) - 1;
        release_memory(open);
        let mut conns = self
            .registry
            .conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        conns.remove(&self.id);
        if conns.is_empty() {
            self.registry.all_closed.notify_one();
        }
    }
}

/// Why a connection's task ended.
enum End {
    Done,
    HeaderTimeout,
    Idle,
    Evicted,
}

/// What ends [`serve`]'s accept loop. Boxed (as is its `on_shutdown`), so
/// that `serve` is not generic: it is compiled once, in this crate.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves `app` on `listener` with `limits` until `shutdown` resolves; then
/// stops accepting, calls `on_shutdown` (which ends SSE streams), closes idle
/// connections and waits for requests in progress, at most `grace`.
///
/// # Errors
/// Never at present (accept errors are logged and retried); kept for
/// callers' sake.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    stats: Arc<ConnStats>,
    mut shutdown: Shutdown,
    on_shutdown: Box<dyn FnOnce() + Send>,
    grace: Duration,
) -> anyhow::Result<()> {
    stats
        .max
        .store(limits.max_connections as u64, Ordering::Relaxed);
    tracing::info!(
        max_connections = limits.max_connections,
        header_read_timeout_ms = limits.header_read_timeout.as_millis() as u64,
        idle_timeout_ms = limits.idle_timeout.as_millis() as u64,
        "connection limits"
    );
    let registry = Arc::new(Registry::default());
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let base = Instant::now();
    'accept: loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if !is_connection_error(&e) {
                        // EMFILE/ENFILE/ENOMEM: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed; retrying shortly");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break 'accept,
        };
        let permit = loop {
            if let Ok(p) = slots.clone().try_acquire_owned() {
                break p;
            }
            // At the cap: make room by closing the longest-idle connection;
            // with none idle, wait for one to close or go idle (meanwhile new
            // connections queue in the listen backlog).
            registry.evict_oldest_idle();
            tokio::select! {
                p = slots.clone().acquire_owned() => break p.expect("the semaphore is never closed"),
                () = registry.went_idle.notified() => {}
                () = &mut shutdown => break 'accept,
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let now = u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX);
        let conn = Arc::new(Conn {
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now),
            head_started: AtomicU64::new(0),
            served: AtomicBool::new(false),
            evict: AtomicBool::new(false),
            changed: Notify::new(),
            base,
        });
        let id = registry.next_id.fetch_add(1, Ordering::Relaxed);
        registry
            .conns
            .lock()
            .expect("connections lock")
            .insert(id, conn.clone());
        let closed = Closed {
            id,
            registry: registry.clone(),
            stats: stats.clone(),
            end: End::Done,
            _permit: permit,
        };
        let (app, registry, stop) = (app.clone(), registry.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut closed = closed;
            closed.end = connection(stream, conn, registry, app, limits, stop).await;
        });
    }
    drop(listener);
    on_shutdown();
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(grace, async {
        while registry.len() > 0 {
            registry.all_closed.notified().await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            open = registry.len(),
            "in-flight requests did not finish in time"
        );
    }
    Ok(())
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// Serves one connection until it ends, times out or is evicted.
async fn connection(
    stream: TcpStream,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
    app: Router,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
) -> End {
    let io = TokioIo::new(Watched {
        inner: stream,
        conn: conn.clone(),
    });
    let (c, r) = (conn.clone(), registry);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let busy = Busy::new(c.clone(), r.clone());
        let app = app.clone();
        async move {
            let resp = match app.oneshot(req.map(Body::new)).await {
                Ok(r) => r,
                Err(e) => match e {},
            };
            // The connection stays busy until the body is sent (or dropped):
            // an SSE stream is a request in progress for its whole life.
            Ok::<_, Infallible>(resp.map(move |b| {
                b.map_frame(move |f| {
                    let _ = &busy;
                    f
                })
            }))
        }
    });
    let http = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(io, service);
    let mut http = std::pin::pin!(http);
    let mut stopping = false;
    loop {
        if conn.evict.swap(false, Ordering::AcqRel) && conn.idle() {
            return End::Evicted;
        }
        // A connection picked while busy declines; once it goes idle the
        // acceptor (woken by `went_idle`) picks again.
        let deadline = conn.idle().then(|| {
            let head = conn.head_started.load(Ordering::Acquire);
            let (since, limit, end) = if head > 0 {
                (head - 1, limits.header_read_timeout, End::HeaderTimeout)
            } else if conn.served.load(Ordering::Acquire) {
                (
                    conn.idle_since.load(Ordering::Acquire),
                    limits.idle_timeout,
                    End::Idle,
                )
            } else {
                // Not served yet: `idle_since` is when it connected.
                (
                    conn.idle_since.load(Ordering::Acquire),
                    limits.header_read_timeout,
                    End::HeaderTimeout,
                )
            };
            (conn.base + Duration::from_millis(since) + limit, end)
        });
        if let Some((at, _)) = &deadline
            && Instant::now() >= *at
        {
            return deadline.map_or(End::Done, |(_, end)| end);
        }
        let sleep = async {
            match &deadline {
                Some((at, _)) => tokio::time::sleep_until((*at).into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = http.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return End::Done;
            }
            // Re-checked at the top of the loop, with the state as it is then.
            () = sleep => {}
            () = conn.changed.notified() => {}
            _ = stop.changed(), if !stopping => {
                stopping = true;
                // Idle: closes now; busy: after the response in progress.
                http.as_mut().graceful_shutdown();
            }
        }
    }
}
