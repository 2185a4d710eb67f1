//! The store's state: the [`MongoStore`] struct — the pooled client, the
//! collections, the retention in force, the per-session write locks, the
//! pool statistics, the group commit and what the fast path knows — and the
//! accessors every part of the store uses. Its methods live in the files of
//! their concern (see the module docs); connecting is in `mod.rs`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};

use mongodb::bson::{Document, doc};
use mongodb::{Client, Collection, Database};

use super::codec::add_live;
use super::group_commit::GroupCommit;
use super::known::KnownSessions;
use crate::store::{AfterHooked, PoolMetrics, Retention};

/// The collections, cheap to clone (each is an `Arc`).
#[derive(Clone)]
pub(super) struct Colls {
    pub(super) sessions: Collection<Document>,
    pub(super) agents: Collection<Document>,
    pub(super) messages: Collection<Document>,
    pub(super) feedbacks: Collection<Document>,
    pub(super) events: Collection<Document>,
    pub(super) outbox: Collection<Document>,
    pub(super) purges: Collection<Document>,
    pub(super) meta: Collection<Document>,
}

/// The MongoDB store.
pub struct MongoStore {
    pub(super) client: Client,
    pub(super) db: Database,
    pub(super) c: Colls,
    pub(super) retention: RwLock<Arc<Retention>>,
    pub(super) locks: SessionLocks,
    pub(super) pool: Arc<PoolStats>,
    pub(super) after_hooked: std::sync::atomic::AtomicU8,
    /// The group commit of the fast path; `None` on servers before 8.0 (or
    /// `write_path = "transaction"`): every write is its own transaction.
    pub(super) writer: Option<GroupCommit>,
    /// What the fast path knows of sessions this gateway wrote.
    pub(super) known: KnownSessions,
    /// Set once the retention sweep's index exists (see `indexes.rs`).
    pub(super) retention_index: tokio::sync::OnceCell<()>,
    /// See [`MongoStore::with_max_read_bytes`].
    pub(super) max_read_bytes: usize,
}

/// Connection-pool gauges and counters, kept from the driver's CMAP events.
#[derive(Default)]
pub(super) struct PoolStats {
    created: std::sync::atomic::AtomicU64,
    closed: std::sync::atomic::AtomicU64,
    checked_out: std::sync::atomic::AtomicU64,
    checked_in: std::sync::atomic::AtomicU64,
    checkout_failed: std::sync::atomic::AtomicU64,
    cleared: std::sync::atomic::AtomicU64,
}

impl PoolStats {
    pub(super) fn observe(&self, ev: mongodb::event::cmap::CmapEvent) {
        use mongodb::event::cmap::CmapEvent as E;
        use std::sync::atomic::Ordering::Relaxed;
        let counter = match ev {
            E::ConnectionCreated(_) => &self.created,
            E::ConnectionClosed(_) => &self.closed,
            E::ConnectionCheckedOut(_) => &self.checked_out,
            E::ConnectionCheckedIn(_) => &self.checked_in,
            E::ConnectionCheckoutFailed(_) => &self.checkout_failed,
            E::PoolCleared(_) => &self.cleared,
            _ => return,
        };
        counter.fetch_add(1, Relaxed);
    }

    pub(super) fn snapshot(&self) -> PoolMetrics {
        use std::sync::atomic::Ordering::Relaxed;
        let (created, closed) = (self.created.load(Relaxed), self.closed.load(Relaxed));
        let (out, back) = (
            self.checked_out.load(Relaxed),
            self.checked_in.load(Relaxed),
        );
        let open = created.saturating_sub(closed);
        let in_use = out.saturating_sub(back);
        PoolMetrics {
            in_use,
            idle: open.saturating_sub(in_use),
            checkout_failures: self.checkout_failed.load(Relaxed),
            pool_cleared: self.cleared.load(Relaxed),
        }
    }
}

/// One async mutex per session key being written in this process.
#[derive(Default)]
pub(super) struct SessionLocks {
    /// Locks by key (dropped ones pruned when the map doubles) and the
    /// size at which to prune next.
    inner: std::sync::Mutex<(LockMap, usize)>,
}

type LockMap = HashMap<String, Weak<tokio::sync::Mutex<()>>>;

impl SessionLocks {
    pub(super) async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut guard = self
                .inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (map, prune_at) = &mut *guard;
            if let Some(m) = map.get(key).and_then(Weak::upgrade) {
                m
            } else {
                if map.len() >= (*prune_at).max(1024) {
                    map.retain(|_, w| w.strong_count() > 0);
                    *prune_at = map.len() * 2;
                }
                let m = Arc::new(tokio::sync::Mutex::new(()));
                map.insert(key.to_owned(), Arc::downgrade(&m));
                m
            }
        };
        m.lock_owned().await
    }
}

impl MongoStore {
    /// The store on `database` of `client`, with nothing known of any
    /// session yet and every write its own transaction (`writer: None`).
    pub(super) fn new(client: Client, database: &str, pool: Arc<PoolStats>) -> Self {
        let db = client.database(database);
        let c = Colls {
            sessions: db.collection("sessions"),
            agents: db.collection("agents"),
            messages: db.collection("messages"),
            feedbacks: db.collection("feedbacks"),
            events: db.collection("events"),
            outbox: db.collection("outbox"),
            purges: db.collection("purges"),
            meta: db.collection("meta"),
        };
        Self {
            client,
            db,
            c,
            retention: RwLock::new(Arc::new(Retention::default())),
            locks: SessionLocks::default(),
            pool,
            after_hooked: std::sync::atomic::AtomicU8::new(0),
            writer: None,
            known: KnownSessions::default(),
            retention_index: tokio::sync::OnceCell::new(),
            max_read_bytes: crate::store::DEFAULT_MAX_READ_BYTES,
        }
    }

    /// Bounds what one `list_messages` call reads: once the stored messages
    /// read add up to `bytes`, it returns those (a prefix of the range asked
    /// for, at least one message); the caller continues from the next id.
    #[must_use]
    pub fn with_max_read_bytes(mut self, bytes: usize) -> Self {
        self.max_read_bytes = bytes.max(1);
        self
    }

    pub(super) fn after_hooked(&self) -> AfterHooked {
        AfterHooked(self.after_hooked.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub(super) fn retention(&self) -> Arc<Retention> {
        self.retention
            .read()
            .map_or_else(|p| p.into_inner().clone(), |r| r.clone())
    }

    /// Filter of a live session: not a tombstone and not past its retention.
    pub(super) fn live(&self, key: &str) -> Document {
        let mut f = doc! { "_id": key };
        add_live(&mut f, &self.retention());
        f
    }
}
