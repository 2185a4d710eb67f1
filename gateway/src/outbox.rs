//! The outbox dispatcher: delivers the notifications after-hooks published to
//! Amazon SNS topics and SQS queues.
//!
//! After-hooks run from the durable change-event log and their `publish` calls
//! are persisted as [`OutboxItem`]s atomically with the event's completion
//! (see [`crate::events`]). This task drains that outbox:
//!
//! - It claims due items with a lease ([`OutboxQueue::claim_outbox`]), so
//!   gateways sharing a MongoDB never send one item concurrently, and at most
//!   `notify.concurrency` sends are in flight.
//! - Each item goes to the topic or queue its logical target names in
//!   `[notify.targets]`. The item id is the notification's stable id: it is
//!   sent as the message attribute `notification_id` and, for FIFO topics and
//!   queues (names ending in `.fifo`), as the deduplication id, with the
//!   session id as the message group (per-session ordering).
//! - A failed attempt (AWS error, timeout, or a target that is not
//!   configured) is retried after an exponential backoff with full jitter;
//!   after `notify.max_attempts` the item becomes a dead letter, kept in the
//!   store and listed by `GET /v1/admin/outbox?state=dead` until an operator
//!   re-queues it (`POST /v1/admin/outbox/{id}/retry`, which wakes this task).
//! - Delivery is at least once: a crash between the send and its
//!   acknowledgement in the store sends the item again after its lease. The
//!   `notification_id` attribute lets consumers drop such duplicates; FIFO
//!   targets drop them by themselves within their deduplication window.
//!
//! Nothing here is on the request path: a client's write never waits for,
//! or fails because of, a delivery.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::{NotifyConfig, NotifyTarget};
use crate::model::now_ms;
use crate::store::{NextDue, OutboxItem, OutboxQueue, sleep_or_forever};

#[cfg(feature = "aws")]
mod aws;
#[cfg(feature = "aws")]
pub use aws::{AwsTransport, sdk_config};

/// Name of the message attribute carrying the notification id.
pub const ID_ATTRIBUTE: &str = "notification_id";

/// How long in-flight sends may finish after a stop before they are
/// abandoned (an abandoned item is sent again once its lease expires).
const DRAIN: Duration = Duration::from_secs(2);

/// Delivery counters since start, shown by `GET /v1/admin/outbox`.
#[derive(Debug, Default)]
pub struct OutboxStats {
    /// Notifications delivered and removed from the outbox (a delivery whose
    /// removal failed is counted when it is sent again and removed).
    pub delivered: AtomicU64,
    /// Failed attempts that will be retried.
    pub retried: AtomicU64,
    /// Notifications that exhausted their attempts and became dead letters.
    pub dead_lettered: AtomicU64,
    /// Whether the dispatcher is running (false when no target is configured).
    pub running: AtomicBool,
}

/// Sends one notification to one destination.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Delivers `item` to `target`; the error text becomes the item's `last_error`.
    async fn send(&self, target: &NotifyTarget, item: &OutboxItem) -> Result<(), String>;
}

/// The delay before attempt `failed + 1`, after `failed` failed attempts:
/// uniformly random in `[0, min(max, base * 2^(failed-1))]` (full jitter).
pub fn backoff(failed: u32, base: Duration, max: Duration) -> Duration {
    let exp = failed.saturating_sub(1).min(31);
    let ceiling = base.saturating_mul(1u32 << exp).min(max);
    let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=ms))
}

struct Inner {
    store: Arc<dyn OutboxQueue>,
    cfg: NotifyConfig,
    transport: Arc<dyn Transport>,
    stats: Arc<OutboxStats>,
}

impl Inner {
    async fn deliver(&self, item: OutboxItem) {
        let attempt = item.attempts.saturating_add(1);
        let timeout = Duration::from_millis(self.cfg.send_timeout_ms);
        let result = match self.cfg.targets.get(&item.target) {
            None => Err(format!(
                "target {:?} is not configured in [notify.targets]",
                item.target
            )),
            Some(target) => {
                match tokio::time::timeout(timeout, self.transport.send(target, &item)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("timed out after {} ms", self.cfg.send_timeout_ms)),
                }
            }
        };
        let s = &self.stats;
        match result {
            Ok(()) => {
                tracing::debug!(id = %item.id, target = %item.target, attempt, "notification delivered");
                // Counted once the outbox no longer holds it, so no reader of
                // the counters sees it both delivered and pending.
                match self.store.outbox_delivered(&item.id).await {
                    Ok(()) => {
                        s.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    // The lease expires and the item is sent (and counted)
                    // again: at least once.
                    Err(e) => {
                        tracing::warn!(id = %item.id, error = %e, "delivered, but cannot remove it from the outbox");
                    }
                }
            }
            Err(error) => {
                let now = now_ms();
                let dead = attempt >= self.cfg.max_attempts;
                let next = if dead {
                    now
                } else {
                    let d = backoff(
                        attempt,
                        Duration::from_millis(self.cfg.backoff_base_ms),
                        Duration::from_millis(self.cfg.backoff_max_ms),
                    );
                    now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                };
                match self
                    .store
                    .outbox_failed(&item.id, attempt, next, &error, dead)
                    .await
                {
                    Ok(()) if dead => {
                        s.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(id = %item.id, target = %item.target, plugin = %item.plugin, attempts = attempt, %error, "notification dead-lettered");
                    }
                    Ok(()) => {
                        s.retried.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(id = %item.id, target = %item.target, attempt, retry_in_ms = next - now, %error, "notification delivery failed; will retry");
                    }
                    Err(e) => {
                        tracing::warn!(id = %item.id, error = %e, "cannot record a failed delivery; the lease will expire")
                    }
                }
            }
        }
    }
}

/// Drains the outbox; see the module documentation.
pub struct Dispatcher {
    inner: Arc<Inner>,
    wake: Arc<Notify>,
}

impl Dispatcher {
    /// A dispatcher delivering through `transport`.
    pub fn new(
        store: Arc<dyn OutboxQueue>,
        cfg: NotifyConfig,
        transport: Arc<dyn Transport>,
        stats: Arc<OutboxStats>,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                cfg,
                transport,
                stats,
            }),
            wake,
        }
    }

    /// Runs until `stop` changes: claims due items while fewer than
    /// `notify.concurrency` sends are in flight, and otherwise sleeps until
    /// woken, a send finishes, or the next item is due: when the store can
    /// tell (the embedded store), at that item's next attempt or lease end,
    /// and never while nothing is queued; else (MongoDB, which other
    /// gateways write too) after `notify.poll_interval_ms`. On stop,
    /// in-flight sends get a short grace to finish.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let cfg = &self.inner.cfg;
        let concurrency = cfg.concurrency.max(1);
        let permits = Arc::new(Semaphore::new(concurrency));
        let lease = i64::try_from(cfg.lease_ms).unwrap_or(i64::MAX);
        let poll = Duration::from_millis(cfg.poll_interval_ms);
        let mut inflight = JoinSet::new();
        self.inner.stats.running.store(true, Ordering::Relaxed);
        tracing::info!(targets = ?cfg.targets.keys().collect::<Vec<_>>(), concurrency, "outbox dispatcher started");
        loop {
            if *stop.borrow() {
                break;
            }
            while let Some(done) = inflight.try_join_next() {
                if let Err(e) = done {
                    tracing::error!(error = %e, "outbox delivery task failed");
                }
            }
            let free = permits.available_permits();
            let mut more = false;
            if free > 0 {
                match self.inner.store.claim_outbox(now_ms(), lease, free).await {
                    Ok(items) => {
                        more = items.len() == free;
                        for item in items {
                            let permit = permits
                                .clone()
                                .try_acquire_owned()
                                .expect("a permit per claimed item");
                            let inner = self.inner.clone();
                            inflight.spawn(async move {
                                inner.deliver(item).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot claim outbox items; retrying"),
                }
            }
            if more {
                continue;
            }
            let due = self.inner.store.next_outbox_due().await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot tell when an outbox item is next due; polling");
                NextDue::Unknown
            });
            tokio::select! {
                () = self.wake.notified() => {}
                () = sleep_or_forever(due.wait(now_ms(), poll)) => {}
                Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
                _ = stop.changed() => break,
            }
        }
        let drained = tokio::time::timeout(DRAIN, async {
            while inflight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                abandoned = inflight.len(),
                "outbox dispatcher stopped with sends in flight; they are retried after their lease"
            );
            inflight.abort_all();
        }
        self.inner.stats.running.store(false, Ordering::Relaxed);
        tracing::info!("outbox dispatcher stopped");
    }
}

/// Starts the dispatcher over `store`'s outbox when `[notify.targets]` is
/// not empty; otherwise logs once that notifications stay pending and returns
/// `None`. It counts deliveries in `stats` and also runs when `wake` is
/// notified (e.g. after an operator retry).
///
/// # Errors
/// When the AWS configuration cannot be loaded (e.g. no region).
pub async fn spawn(
    store: Arc<dyn OutboxQueue>,
    cfg: &NotifyConfig,
    stats: Arc<OutboxStats>,
    wake: Arc<Notify>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if cfg.targets.is_empty() {
        tracing::info!(
            "notify: no [notify.targets] configured; the outbox dispatcher is not started and published notifications stay pending"
        );
        return Ok(None);
    }
    #[cfg(not(feature = "aws"))]
    {
        drop((store, stats, wake, stop));
        anyhow::bail!(
            "[notify.targets] needs the `aws` feature (SNS/SQS delivery), which this binary was built without; \
             build the whole gateway with `cargo build --release` (scripts/run.sh does so when the config names targets)"
        )
    }
    #[cfg(feature = "aws")]
    {
        let transport = AwsTransport::new(cfg)
            .await
            .map_err(|e| e.context("notify: configuring AWS"))?;
        let d = Dispatcher::new(store, cfg.clone(), Arc::new(transport), stats, wake);
        Ok(Some(tokio::spawn(d.run(stop))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::OutboxState;
    use std::sync::atomic::AtomicUsize;

    /// Counts sends in flight; fails every send to `flaky` once.
    #[derive(Default)]
    struct Fake {
        now: AtomicUsize,
        max: AtomicUsize,
        sent: AtomicUsize,
        failed_once: std::sync::Mutex<std::collections::BTreeSet<String>>,
    }

    #[async_trait]
    impl Transport for Fake {
        async fn send(&self, target: &NotifyTarget, item: &OutboxItem) -> Result<(), String> {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.max.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            if target.address().ends_with("flaky")
                && self.failed_once.lock().unwrap().insert(item.id.clone())
            {
                return Err("flaky".into());
            }
            self.sent.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn item(id: usize, target: &str) -> OutboxItem {
        OutboxItem {
            id: format!("n{id:03}"),
            target: target.into(),
            payload: "{}".into(),
            plugin: "p".into(),
            tenant: "default".into(),
            session_id: "s".into(),
            created_at: 0,
            attempts: 0,
            next_attempt_at: 0,
            state: OutboxState::Pending,
            last_error: None,
        }
    }

    /// Bounded concurrency, retries, and dead letters for unknown targets.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drains_with_bounded_concurrency() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn crate::store::SessionStore> = Arc::new(
            crate::store::embedded::EmbeddedStore::open(&dir.path().join("db"), 16).unwrap(),
        );
        let mut items: Vec<OutboxItem> = (0..20)
            .map(|i| item(i, if i % 4 == 0 { "flaky" } else { "q" }))
            .collect();
        items.push(item(99, "nowhere"));
        store
            .complete_event("default", "s", 1, items)
            .await
            .unwrap();
        let cfg: NotifyConfig = toml::from_str(
            r#"
concurrency = 3
max_attempts = 2
backoff_base_ms = 1
backoff_max_ms = 5
poll_interval_ms = 20
[targets.q]
kind = "sqs"
queue_url = "http://127.0.0.1:1/1/q"
[targets.flaky]
kind = "sqs"
queue_url = "http://127.0.0.1:1/1/flaky"
"#,
        )
        .unwrap();
        let fake = Arc::new(Fake::default());
        let stats = Arc::new(OutboxStats::default());
        let d = Dispatcher::new(
            store.clone(),
            cfg,
            fake.clone(),
            stats.clone(),
            Arc::new(Notify::new()),
        );
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(d.run(stop_rx));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while store.outbox_counts().await.unwrap() != (0, 1) {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                store.list_outbox(None, 50).await
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(fake.sent.load(Ordering::SeqCst), 20);
        assert!(
            fake.max.load(Ordering::SeqCst) <= 3,
            "max in flight {}",
            fake.max.load(Ordering::SeqCst)
        );
        assert_eq!(stats.delivered.load(Ordering::SeqCst), 20);
        // 5 flaky first attempts + the first attempt to "nowhere".
        assert_eq!(stats.retried.load(Ordering::SeqCst), 6);
        assert_eq!(stats.dead_lettered.load(Ordering::SeqCst), 1);
        assert!(!stats.running.load(Ordering::SeqCst));
        let dead = store
            .list_outbox(Some(OutboxState::Dead), 10)
            .await
            .unwrap();
        assert_eq!(
            dead[0].last_error.as_deref(),
            Some("target \"nowhere\" is not configured in [notify.targets]")
        );
        assert_eq!(dead[0].attempts, 2);
    }

    /// On the embedded store an idle dispatcher does not poll, even with a
    /// 20 ms poll interval: an item queued without waking it stays queued;
    /// the wake delivers it, and an item due later is delivered when due
    /// (with no poll, only the due time can wake the dispatcher then).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sleeps_until_woken_or_due_on_the_embedded_store() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn crate::store::SessionStore> = Arc::new(
            crate::store::embedded::EmbeddedStore::open(&dir.path().join("db"), 16).unwrap(),
        );
        let cfg: NotifyConfig = toml::from_str(
            r#"
poll_interval_ms = 20
[targets.q]
kind = "sqs"
queue_url = "http://127.0.0.1:1/1/q"
"#,
        )
        .unwrap();
        let fake = Arc::new(Fake::default());
        let wake = Arc::new(Notify::new());
        let d = Dispatcher::new(
            store.clone(),
            cfg,
            fake.clone(),
            Arc::new(OutboxStats::default()),
            wake.clone(),
        );
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(d.run(stop_rx));
        let sent = |n: usize| {
            let fake = fake.clone();
            async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while fake.sent.load(Ordering::SeqCst) < n {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "item {n} not delivered in 10 s"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        // Let the dispatcher find the outbox empty and go to sleep.
        tokio::time::sleep(Duration::from_millis(100)).await;
        store
            .complete_event("default", "s", 1, vec![item(1, "q")])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            fake.sent.load(Ordering::SeqCst),
            0,
            "the dispatcher polled an embedded store that nothing had written"
        );
        wake.notify_one();
        sent(1).await;
        // Due 300 ms from now: the wake finds it not due, and the
        // dispatcher sleeps until it is.
        let due = now_ms() + 300;
        let mut later = item(2, "q");
        later.next_attempt_at = due;
        store
            .complete_event("default", "s", 2, vec![later])
            .await
            .unwrap();
        wake.notify_one();
        sent(2).await;
        assert!(now_ms() >= due, "delivered before it was due");
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[test]
    fn backoff_is_capped_full_jitter() {
        let (base, max) = (Duration::from_millis(100), Duration::from_millis(1_000));
        for _ in 0..200 {
            assert!(backoff(1, base, max) <= Duration::from_millis(100));
            assert!(backoff(3, base, max) <= Duration::from_millis(400));
            assert!(backoff(30, base, max) <= max);
            assert!(backoff(u32::MAX, base, max) <= max);
        }
        // Jittered: not always the ceiling.
        let samples: std::collections::BTreeSet<Duration> =
            (0..50).map(|_| backoff(5, base, max)).collect();
        assert!(samples.len() > 1);
    }
}
