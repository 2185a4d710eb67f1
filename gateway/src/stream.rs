//! Live session events for SSE subscribers, fed from the durable event log.
//!
//! One [`Feed`] per session that has subscribers, shared by all of them: after
//! a local commit the feed reads the new events from the store once and
//! broadcasts them, so a thousand subscribers of one session cost one read per
//! change, and an idle subscriber costs no store traffic at all. When the store
//! is shared with other gateways (MongoDB), one poller per gateway reads the
//! events committed since its last look, across all sessions, in one query per
//! tick, and hands them to the feeds that have subscribers.
//!
//! Ordering and gap-freedom come from the per-session sequence numbers: a feed
//! only ever broadcasts `last_seq + 1, +2, …` read from the store, and a
//! subscriber backfills from the store before it follows the feed, dropping
//! anything at or below what it already sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use crate::model::{Event, EventType, Tenant, now_ms};
use crate::store::{SessionStore, StoreResult};

/// Shapes an event's metadata before it is sent to subscribers (the
/// get-hooks, implemented by `service::Shaper`), so every exit of stored
/// metadata is shaped the same way.
#[async_trait::async_trait]
pub trait ShapeEvent: Send + Sync {
    /// Shapes `ev` in place.
    async fn shape(&self, ev: &mut Event);
}

/// Events broadcast to a feed's subscribers before a slow one is told it lagged
/// (it then re-reads from the store, so nothing is lost). The ring is
/// allocated up front for every followed session (~32 B a slot): at 256 it
/// was a third of an SSE stream's memory (BENCHMARKS.md §Memory (P7)), while
/// a subscriber rarely falls more than a few events behind.
pub const FEED_CAPACITY: usize = 32;
/// Events read from the store per round.
const READ_BATCH: usize = 256;

/// A session's live feed.
pub struct Feed {
    tenant: Tenant,
    session_id: String,
    tx: broadcast::Sender<Arc<Event>>,
    /// Highest sequence broadcast so far; guarded by the async lock so only one
    /// task reads the store for this feed at a time.
    last_seq: tokio::sync::Mutex<u64>,
}

impl Feed {
    /// A receiver of events broadcast from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Reads events after the last broadcast one and broadcasts them, with
    /// their metadata shaped by the get-hooks once for every subscriber.
    async fn pump(&self, store: &dyn SessionStore, shape: &dyn ShapeEvent) -> StoreResult<()> {
        let mut last = self.last_seq.lock().await;
        loop {
            let events = store
                .events_after(&self.tenant, &self.session_id, *last, READ_BATCH)
                .await?;
            let n = events.len();
            for mut ev in events {
                *last = ev.seq;
                enrich(store, &mut ev).await;
                shape.shape(&mut ev).await;
                let _ = self.tx.send(Arc::new(ev));
            }
            if n < READ_BATCH {
                return Ok(());
            }
        }
    }
}

/// Adds the message as stored now to a `message.*` event's payload (the log
/// itself keeps only ids, so redactions are honoured). A message that no
/// longer exists (its session was deleted since) is left out.
pub async fn enrich(store: &dyn SessionStore, ev: &mut Event) {
    if !matches!(
        ev.kind,
        EventType::MessageAppended | EventType::MessageUpdated
    ) {
        return;
    }
    let (Some(aid), Some(mid)) = (
        ev.payload
            .get("agent_id")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        ev.payload
            .get("message_id")
            .and_then(serde_json::Value::as_u64),
    ) else {
        return;
    };
    let t = Tenant(ev.tenant.clone());
    if let Ok(m) = store.get_message(&t, &ev.session_id, &aid, mid).await
        && let (Ok(v), Some(obj)) = (serde_json::to_value(&m), ev.payload.as_object_mut())
    {
        for key in ["message", "redact_message", "event_loop_metrics"] {
            obj.insert(key.to_owned(), v.get(key).cloned().unwrap_or_default());
        }
    }
}

/// All live feeds of this gateway.
pub struct EventHub {
    store: Arc<dyn SessionStore>,
    shape: Arc<dyn ShapeEvent>,
    feeds: Mutex<HashMap<String, Arc<Feed>>>,
    /// Set at shutdown: every SSE stream ends.
    closing: watch::Sender<bool>,
}

fn key(t: &Tenant, sid: &str) -> String {
    format!("{}/{sid}", t.as_str())
}

impl EventHub {
    /// A hub over `store`; events are shaped by `shape` (the get-hooks)
    /// before they are broadcast.
    pub fn new(store: Arc<dyn SessionStore>, shape: Arc<dyn ShapeEvent>) -> Self {
        Self {
            store,
            shape,
            feeds: Mutex::new(HashMap::new()),
            closing: watch::Sender::new(false),
        }
    }

    /// Ends every SSE stream (at shutdown): each ends after the event it is
    /// sending, and its client resumes elsewhere (or after the restart) with
    /// `Last-Event-ID`, losing nothing.
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves when [`EventHub::close_streams`] is called (at once if it was).
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + use<> {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// The feed of a session, created (starting after its latest event) when
    /// it has none yet.
    ///
    /// # Errors
    /// When the store cannot tell the session's latest event.
    pub async fn feed(&self, t: &Tenant, sid: &str) -> StoreResult<Arc<Feed>> {
        let k = key(t, sid);
        if let Some(f) = self.feeds.lock().expect("feeds lock").get(&k) {
            return Ok(f.clone());
        }
        let latest = self.store.latest_event_seq(t, sid).await?;
        let mut feeds = self.feeds.lock().expect("feeds lock");
        let feed = feeds.entry(k).or_insert_with(|| {
            Arc::new(Feed {
                tenant: t.clone(),
                session_id: sid.to_owned(),
                tx: broadcast::channel(FEED_CAPACITY).0,
                last_seq: tokio::sync::Mutex::new(latest),
            })
        });
        Ok(feed.clone())
    }

    /// Drops a feed nobody follows any more.
    pub fn release(&self, t: &Tenant, sid: &str) {
        let mut feeds = self.feeds.lock().expect("feeds lock");
        let k = key(t, sid);
        if feeds.get(&k).is_some_and(|f| f.tx.receiver_count() == 0) {
            feeds.remove(&k);
        }
    }

    /// Number of sessions with live feeds.
    pub fn feeds(&self) -> usize {
        self.feeds.lock().expect("feeds lock").len()
    }

    /// Tells every live feed to read new events: after changes committed
    /// outside a request (the retention sweep's deletions), which name no
    /// session. One store read per followed session.
    pub fn committed_anywhere(self: &Arc<Self>) {
        let feeds: Vec<Arc<Feed>> = self
            .feeds
            .lock()
            .expect("feeds lock")
            .values()
            .cloned()
            .collect();
        for feed in feeds {
            self.committed(&feed.tenant, &feed.session_id);
        }
    }

    /// Tells the hub a change was committed in a session: if anyone follows
    /// it, its feed reads and broadcasts the new events (off the caller's path).
    pub fn committed(self: &Arc<Self>, t: &Tenant, sid: &str) {
        let feed = self
            .feeds
            .lock()
            .expect("feeds lock")
            .get(&key(t, sid))
            .cloned();
        if let Some(feed) = feed {
            let store = self.store.clone();
            let shape = self.shape.clone();
            tokio::spawn(async move {
                if let Err(e) = feed.pump(&*store, &*shape).await {
                    tracing::warn!(error = %e, session_id = %feed.session_id, "cannot read new events for subscribers");
                }
            });
        }
    }

    /// For stores shared by several gateways: every `interval`, one query for
    /// the events committed anywhere since the last look (with a margin for
    /// clock skew between gateways), then the feeds concerned catch up.
    pub async fn poll_shared(self: Arc<Self>, interval: Duration, mut stop: watch::Receiver<bool>) {
        const SKEW_MS: i64 = 5_000;
        let mut since = now_ms() - SKEW_MS;
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = stop.changed() => return,
            }
            if self.feeds() == 0 {
                since = now_ms() - SKEW_MS;
                continue;
            }
            let started = now_ms();
            match self.store.events_since(since, 10_000).await {
                Ok(events) => {
                    let mut touched: Vec<(Tenant, String)> = events
                        .into_iter()
                        .map(|e| (Tenant(e.tenant), e.session_id))
                        .collect();
                    touched.sort();
                    touched.dedup();
                    for (t, sid) in touched {
                        self.committed(&t, &sid);
                    }
                    since = started - SKEW_MS;
                }
                Err(e) => tracing::warn!(error = %e, "event poll failed; retrying"),
            }
        }
    }
}
