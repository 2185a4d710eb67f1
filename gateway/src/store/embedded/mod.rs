//! The embedded store: redb on local disk, zero setup.
//!
//! ## Layout of this module
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | the store, its writer thread (group commit), `mutate` (every write to a session) and the read helpers |
//! | `tables.rs` | the tables, the stored records, and the helpers used inside transactions |
//! | `sessions.rs` | the [`SessionData`](crate::store::SessionData) and [`AgentData`](crate::store::AgentData) methods |
//! | `events.rs` | the event log, the after-hook queue and the retention sweep |
//! | `outbox.rs` | the notification outbox |
//!
//! ## Schema (one redb file)
//! | table | key | value |
//! |---|---|---|
//! | `sessions` | `"<tenant>/<sid>"` | `SessionRecord` (JSON): header, metadata, agent summaries, event seq |
//! | `agents` | `(uid, agent_id)` | `AgentRecord` (JSON): the client's body and times |
//! | `messages` | `(uid, agent_id, message_id)` | [`Message`](crate::model::Message) (JSON; `message` kept as raw text) |
//! | `feedbacks` | `(uid, index)` | feedback object (JSON) |
//! | `events` | `("<tenant>/<sid>", seq)` | [`Event`](crate::model::Event) (JSON) |
//! | `events_by_ts` | `(ts, "<tenant>/<sid>", seq)` | — (index for the event window) |
//! | `hook_pending` | `(ts, "<tenant>/<sid>", seq)` | claim lease (Unix ms, 0 when unclaimed) of an event whose after-hooks are pending; claims take the oldest first |
//! | `hook_queue` | `("<tenant>/<sid>", seq)` | the same, as files written before `hook_pending` kept it; moved into `hook_pending` on open |
//! | `outbox` | notification id | [`OutboxItem`](crate::store::OutboxItem) (JSON) |
//! | `meta` | name | counter (next session uid) |
//!
//! `uid` is a per-incarnation number: deleting a session purges its children
//! in the same transaction and leaves a tombstone that keeps the event sequence,
//! so a re-created session continues its event ids instead of reusing them.
//!
//! ## Write path
//! All writes go to one writer thread that runs every queued job in a single
//! write transaction and commits once (fsync, `Durability::Immediate`): group
//! commit. A job checks everything before it writes, so a job that fails
//! leaves no trace; a storage error aborts the whole batch. A client is
//! answered only after the commit is durable. Reads run against MVCC
//! snapshots and never wait for the writer: point reads, and a message list's
//! first 64 KiB, on the calling thread (the hop costs more than they do);
//! scans and the rest of a long list on blocking threads.
//!
//! Every write to an existing session goes through one helper,
//! `EmbeddedStore::mutate`: it loads the live session inside the writer's
//! transaction, lets the method check its preconditions and write its child
//! rows, then records the event (bumping `seq`, stamping `updated_at`,
//! queueing after-hooks) and saves the header — so no method repeats that
//! sequence, and none can forget the event. `EmbeddedStore::mutate_steps`
//! does the same for the writes of one batch (`write_batch`) in one job, so a
//! Strands turn's message and agent state cost one commit, not two.

mod events;
mod outbox;
mod sessions;
mod tables;

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use async_trait::async_trait;
use redb::{Database, WriteTransaction};
use serde_json::Value;

use self::tables::{
    AGENTS, EVENTS, EVENTS_BY_TS, FEEDBACKS, HOOK_PENDING, MESSAGES, META, OUTBOX, SESSIONS,
    SessionRecord, internal, live_session, open_read, read_session, record_event,
};
use crate::model::{EventType, Tenant, now_ms};
use crate::store::{
    AfterHooked, Backend, Retention, SessionStore, StoreError, StoreResult, session_key,
};

/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 512;
type Completion = Box<dyn FnOnce(Option<StoreError>) + Send>;
type Job = Box<dyn FnOnce(&WriteTransaction) -> (bool, Completion) + Send>;

/// The embedded, durable store.
pub struct EmbeddedStore {
    db: Arc<Database>,
    retention: std::sync::RwLock<Arc<Retention>>,
    after_hooked: std::sync::atomic::AtomicU8,
    writer: Option<mpsc::Sender<Job>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    /// Bytes of stored messages one `list_messages` call reads at most (it
    /// returns the messages read so far once past it, at least one).
    max_read_bytes: usize,
    /// What the writer has done (see [`EmbeddedStore::commits`]).
    counts: Arc<WriterCounts>,
}

/// Counters of the writer thread.
#[derive(Default)]
struct WriterCounts {
    /// Jobs run.
    jobs: std::sync::atomic::AtomicU64,
    /// Write transactions committed.
    commits: std::sync::atomic::AtomicU64,
}

impl Drop for EmbeddedStore {
    /// Closes the writer's queue and waits for it to finish what was queued,
    /// so the database file is released when the store is dropped.
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the database file at `path`, creating its tables,
    /// with a page cache of at most `cache_mb` MiB.
    ///
    /// # Errors
    /// When the file cannot be opened or is not a redb database.
    pub fn open(path: &Path, cache_mb: usize) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| internal(format!("cannot create directory {}: {e}", dir.display())))?;
        }
        let db = Database::builder()
            .set_cache_size(cache_mb.saturating_mul(1 << 20))
            .create(path)
            .map_err(|e| internal(format!("cannot open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(internal)?;
        {
            txn.open_table(SESSIONS).map_err(internal)?;
            txn.open_table(AGENTS).map_err(internal)?;
            txn.open_table(MESSAGES).map_err(internal)?;
            txn.open_table(FEEDBACKS).map_err(internal)?;
            txn.open_table(EVENTS).map_err(internal)?;
            txn.open_table(EVENTS_BY_TS).map_err(internal)?;
            txn.open_table(HOOK_PENDING).map_err(internal)?;
            txn.open_table(OUTBOX).map_err(internal)?;
            txn.open_table(META).map_err(internal)?;
            outbox::index_outbox(&txn)?;
            events::migrate_hook_queue(&txn)?;
        }
        txn.commit().map_err(internal)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Job>();
        let wdb = db.clone();
        let counts = Arc::new(WriterCounts::default());
        let wcounts = counts.clone();
        let thread = std::thread::Builder::new()
            .name("embedded-writer".into())
            .spawn(move || writer_loop(&wdb, &rx, &wcounts))
            .map_err(internal)?;
        Ok(Self {
            db,
            retention: std::sync::RwLock::new(Arc::new(Retention::default())),
            after_hooked: std::sync::atomic::AtomicU8::new(0),
            writer: Some(tx),
            writer_thread: Some(thread),
            max_read_bytes: crate::store::DEFAULT_MAX_READ_BYTES,
            counts,
        })
    }

    /// Write transactions the writer has committed (each one an fsync), for
    /// tests and diagnostics.
    pub fn commits(&self) -> u64 {
        self.counts
            .commits
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bounds what one `list_messages` call reads: once the stored messages
    /// read add up to `bytes`, it returns those (a prefix of the range asked
    /// for, at least one message); the caller continues from the next id.
    #[must_use]
    pub fn with_max_read_bytes(mut self, bytes: usize) -> Self {
        self.max_read_bytes = bytes.max(1);
        self
    }

    fn after_hooked(&self) -> AfterHooked {
        AfterHooked(self.after_hooked.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn retention(&self) -> Arc<Retention> {
        self.retention.read().expect("retention lock").clone()
    }

    /// Runs `f` in the next group-committed write transaction and answers once
    /// the commit is durable. `f` must not write anything before it returns an
    /// error of its own; a `StoreError::Internal` aborts the whole batch.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    {
        let (otx, orx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |txn| {
            let res = f(txn);
            let taints = matches!(res, Err(StoreError::Internal(_)));
            let done: Completion = Box::new(move |commit_err| {
                let _ = otx.send(match commit_err {
                    Some(e) if res.is_ok() || !taints => Err(e),
                    _ => res,
                });
            });
            (taints, done)
        });
        self.writer
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("embedded store is closing".into()))?
            .send(job)
            .map_err(|_| StoreError::Unavailable("embedded writer stopped".into()))?;
        orx.await
            .map_err(|_| StoreError::Internal("embedded writer dropped a job".into()))?
    }

    /// Runs a read against a snapshot on a blocking thread.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&redb::ReadTransaction) -> StoreResult<T> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(internal)?;
            f(&txn)
        })
        .await
        .map_err(internal)?
    }

    /// Runs a point read (a key or two, bounded work) on the calling thread.
    /// The hop to the blocking pool that [`Self::read`] makes costs more
    /// (tens of µs on a small machine) than such a read, which the page cache
    /// serves; scans and anything sized by the caller go through `read`.
    fn read_now<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let txn = self.db.begin_read().map_err(internal)?;
        f(&txn)
    }

    /// The one way an existing session is changed. In the next group-committed
    /// transaction: loads the live session (else `NotFound`), runs `f` — which
    /// checks the preconditions, writes the child rows and edits the header —
    /// and, when it reports a change, records its event and saves the header.
    async fn mutate<T, F>(&self, t: &Tenant, sid: &str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction, &mut SessionRecord, i64) -> StoreResult<Change<T>>
            + Send
            + 'static,
    {
        let (mut done, failed) = self.mutate_steps(t, sid, vec![Box::new(f)]).await;
        match (failed, done.pop()) {
            (Some(e), _) => Err(e),
            (None, Some(value)) => Ok(value),
            (None, None) => Err(internal("a write step answered nothing")),
        }
    }

    /// [`Self::mutate`] for several changes of one session in one job (one
    /// commit): each step runs on the session as the steps before it left it
    /// and records its own event. The first step that fails stops them; the
    /// ones before it are committed (a failing step writes nothing). Answers
    /// the values of the steps done and the error of the one that failed.
    async fn mutate_steps<T: Send + 'static>(
        &self,
        t: &Tenant,
        sid: &str,
        steps: Vec<MutateStep<T>>,
    ) -> (Vec<T>, Option<StoreError>) {
        if steps.is_empty() {
            return (Vec::new(), None);
        }
        let hooked = self.after_hooked();
        let ret = self.retention();
        let (t, sid) = (t.clone(), sid.to_owned());
        let res = self
            .write(move |txn| {
                let key = session_key(t.as_str(), &sid);
                let mut done = Vec::with_capacity(steps.len());
                let mut rec = match live_session(txn, &key, &sid, &ret) {
                    Ok(rec) => rec,
                    Err(e) => return Ok((done, Some(e))),
                };
                let now = now_ms();
                for step in steps {
                    match step(txn, &mut rec, now) {
                        Ok(Change::Event(kind, payload, value)) => {
                            record_event(txn, hooked, &t, &key, &mut rec, (kind, now, payload))?;
                            done.push(value);
                        }
                        Ok(Change::Unchanged(value)) => done.push(value),
                        // A storage error fails the whole job, as in `mutate`.
                        Err(e @ StoreError::Internal(_)) => return Err(e),
                        Err(e) => return Ok((done, Some(e))),
                    }
                }
                Ok((done, None))
            })
            .await;
        res.unwrap_or_else(|e| (Vec::new(), Some(e)))
    }

    /// Reads a live session (else `NotFound`) and runs `f` on it, on a
    /// blocking thread.
    async fn read_live<T, F>(&self, t: &Tenant, sid: &str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&redb::ReadTransaction, SessionRecord) -> StoreResult<T> + Send + 'static,
    {
        let ret = self.retention();
        let key = session_key(t.as_str(), sid);
        let sid = sid.to_owned();
        self.read(move |txn| {
            let rec = read_session(txn, &key, &ret)?
                .ok_or_else(|| StoreError::session_not_found(&sid))?;
            f(txn, rec)
        })
        .await
    }

    /// [`Self::read_live`] for a point read, on the calling thread.
    fn read_live_now<T>(
        &self,
        t: &Tenant,
        sid: &str,
        f: impl FnOnce(&redb::ReadTransaction, SessionRecord) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let ret = self.retention();
        let key = session_key(t.as_str(), sid);
        self.read_now(|txn| {
            let rec =
                read_session(txn, &key, &ret)?.ok_or_else(|| StoreError::session_not_found(sid))?;
            f(txn, rec)
        })
    }
}

/// One step of [`EmbeddedStore::mutate_steps`].
type MutateStep<T> =
    Box<dyn FnOnce(&WriteTransaction, &mut SessionRecord, i64) -> StoreResult<Change<T>> + Send>;

/// What a write to one session did (see [`EmbeddedStore::mutate`]).
enum Change<T> {
    /// Record an event of this type and payload; answer the value.
    Event(EventType, Value, T),
    /// Nothing was written (an idempotent retry); answer the value.
    Unchanged(T),
}

impl<T> Change<T> {
    /// The same change answering `f(value)`.
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Change<U> {
        match self {
            Self::Event(kind, payload, value) => Change::Event(kind, payload, f(value)),
            Self::Unchanged(value) => Change::Unchanged(f(value)),
        }
    }
}

fn writer_loop(db: &Database, rx: &mpsc::Receiver<Job>, counts: &WriterCounts) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let txn = match db.begin_write() {
            Ok(t) => t,
            Err(e) => {
                // Dropping the jobs unanswered makes each caller see an error.
                tracing::error!(error = %e, jobs = jobs.len(), "cannot begin write transaction");
                continue;
            }
        };
        let mut tainted = false;
        let mut done = Vec::with_capacity(jobs.len());
        for job in jobs {
            let (taints, completion) = job(&txn);
            tainted |= taints;
            done.push(completion);
        }
        // Jobs queued while these ran join the same commit (it has not
        // started, so nobody waits longer): fewer commits per write. Not
        // into a batch that will abort.
        while !tainted && done.len() < MAX_BATCH {
            let Ok(job) = rx.try_recv() else { break };
            let (taints, completion) = job(&txn);
            tainted |= taints;
            done.push(completion);
        }
        let outcome = if tainted {
            let _ = txn.abort();
            Some(StoreError::Internal(
                "write batch aborted by a storage error".into(),
            ))
        } else {
            counts
                .commits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            txn.commit().err().map(internal)
        };
        counts
            .jobs
            .fetch_add(done.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for d in done {
            d(outcome.clone());
        }
    }
}

#[async_trait]
impl Backend for EmbeddedStore {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|txn| {
            open_read(txn, META)?;
            Ok(())
        })
        .await
    }

    /// One process owns the redb file (it is locked), so nobody else writes.
    fn is_shared(&self) -> bool {
        false
    }

    fn metrics(&self) -> crate::store::StoreMetrics {
        use std::sync::atomic::Ordering::Relaxed;
        crate::store::StoreMetrics {
            embedded_writer: Some(crate::store::EmbeddedWriterMetrics {
                jobs: self.counts.jobs.load(Relaxed),
                commits: self.counts.commits.load(Relaxed),
            }),
            ..Default::default()
        }
    }
}

impl SessionStore for EmbeddedStore {}
