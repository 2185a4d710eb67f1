//! Storage: one contract, two implementations.
//!
//! [`SessionStore`] is what the HTTP layer talks to, as `Arc<dyn SessionStore>`.
//! It is the sum of one trait per concern, each small enough to read at once:
//!
//! | trait | concern |
//! |---|---|
//! | [`Backend`] | name, health, whether other gateways share it, metrics (as numbers) |
//! | [`SessionData`] | sessions, their metadata and feedbacks |
//! | [`AgentData`] | agents and their messages |
//! | [`EventLog`] | the change-event log (SSE, other gateways) and the after-hook queue |
//! | [`OutboxQueue`] | notifications published by after-hooks, until delivered |
//! | [`RetentionPolicy`] | session and event lifetimes, and the sweep that applies them |
//!
//! Callers hold an `Arc<dyn SessionStore>` and call any method on it; code
//! that names the concern traits needs one `use crate::store::prelude::*`.
//! Every mutating method commits its change **and** the matching [`Event`] in one
//! atomic step (one redb write transaction; one MongoDB transaction), so the
//! change-event log that feeds after-hooks, notifications and the SSE stream can
//! never miss or invent a change. Both implementations run the same contract
//! suite in `tests/store_contract.rs`. Logic both backends share (paging
//! bounds, change → event type, message conflicts and gaps, event payloads)
//! lives in `common.rs`.
//!
//! - [`embedded`]: redb on local disk, group-committed and fsynced; the zero-setup default.
//! - [`mongo`]: the official driver with one pooled client; messages live in
//!   their own collection so a session has no size ceiling.

mod common;
pub mod embedded;
#[cfg(feature = "mongodb")]
pub mod mongo;
mod open;

pub(crate) use common::*;
pub use open::open;

use async_trait::async_trait;
use serde_json::Value;

use crate::metadata::MetadataChange;
use crate::model::{
    Agent, Event, Feedback, JsonObject, Message, MessageInput, MessagePatch, MessageRange,
    NewSession, Session, Tenant,
};

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The session, agent or message does not exist (for this tenant).
    #[error("{0}")]
    NotFound(String),
    /// The write conflicts with stored state.
    #[error("{message}")]
    Conflict {
        /// Machine-readable code.
        code: &'static str,
        /// What conflicted.
        message: String,
    },
    /// An `If-Match` precondition failed.
    #[error("version {expected} expected, {current} current")]
    VersionMismatch {
        /// The version the client named.
        expected: u64,
        /// The version stored.
        current: u64,
    },
    /// The change cannot be applied to what is stored (e.g. a metadata path through a scalar).
    #[error("{message}")]
    Invalid {
        /// Machine-readable code.
        code: &'static str,
        /// Why.
        message: String,
    },
    /// A write that expected the session to be of one type found it of
    /// another (it was deleted and re-created under the same id): nothing
    /// was written. Carries the stored type.
    #[error("the session is of type {0:?}, not the type the write expected")]
    OtherType(String),
    /// The backend cannot be reached or timed out; retrying later may work.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else (corruption, bugs).
    #[error("{0}")]
    Internal(String),
}

impl StoreError {
    pub(crate) fn session_not_found(sid: &str) -> Self {
        Self::NotFound(format!("session {sid:?} not found"))
    }
    pub(crate) fn agent_not_found(sid: &str, aid: &str) -> Self {
        Self::NotFound(format!("agent {aid:?} not found in session {sid:?}"))
    }
    pub(crate) fn message_not_found(aid: &str, mid: u64) -> Self {
        Self::NotFound(format!("message {mid} not found for agent {aid:?}"))
    }
}

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// Filters and keyset pagination for listing sessions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    /// Page size (already clamped by the caller).
    pub limit: usize,
    /// Return sessions whose id sorts after this (the previous page's `next_cursor`).
    pub after: Option<String>,
    /// Only sessions updated strictly after this time (Unix ms).
    pub updated_after: Option<i64>,
    /// Only sessions of this type.
    pub session_type: Option<String>,
    /// Only sessions whose metadata has each dotted path equal to the value.
    pub metadata: Vec<(String, Value)>,
}

/// One page of sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Sessions in ascending id order.
    pub sessions: Vec<Session>,
    /// Cursor for the next page, when there may be more.
    pub next_cursor: Option<String>,
}

/// Outcome of an append.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// A new message was stored.
    Created(Message),
    /// The same id and content were already stored (idempotent retry).
    Existing(Message),
}

/// One write of [`AgentData::write_batch`]: what the method of the same
/// name would write.
#[derive(Debug, Clone)]
pub enum BatchWrite {
    /// [`AgentData::append_message`].
    Append {
        /// The agent.
        aid: String,
        /// The message.
        input: MessageInput,
    },
    /// [`AgentData::put_agent`].
    PutAgent {
        /// The agent.
        aid: String,
        /// Its object.
        body: JsonObject,
        /// The version it must have (`If-Match`).
        if_match: Option<u64>,
    },
    /// [`AgentData::update_message`].
    UpdateMessage {
        /// The agent.
        aid: String,
        /// The message's id.
        mid: u64,
        /// The fields to change.
        patch: MessagePatch,
    },
}

/// What one write of a batch answered.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchWritten {
    /// Of [`BatchWrite::Append`].
    Appended(Appended),
    /// Of [`BatchWrite::PutAgent`]: the agent and whether it was created.
    Agent(Agent, bool),
    /// Of [`BatchWrite::UpdateMessage`].
    Message(Message),
}

/// How [`AgentData::write_batch`] ended: the answers of the writes done, in
/// order, and the error of the first that failed (the writes after it were
/// not run).
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// The answers of the writes done.
    pub done: Vec<BatchWritten>,
    /// Why the write after them failed, if one did.
    pub failed: Option<StoreError>,
}

/// Outcome of a metadata change.
#[derive(Debug, Clone, PartialEq)]
pub struct MetadataResult {
    /// Metadata after the change.
    pub metadata: JsonObject,
    /// Paths whose value actually changed.
    pub changed: Vec<String>,
    /// Sequence number of the recorded event.
    pub seq: u64,
    /// The session's type, as stored with the session the change was
    /// written to (so showing the result through get-hooks needs no read).
    pub session_type: String,
}

/// Delivery state of an outbox item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxState {
    /// Waiting for (re)delivery at `next_attempt_at`.
    Pending,
    /// Gave up after the configured attempts; kept until retried by an operator.
    Dead,
}

/// A notification a plugin published, persisted until delivered.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OutboxItem {
    /// Stable id, derived from the event and the publish call, so a re-run of
    /// the same hook for the same event never queues a second copy. Also sent
    /// as the message's dedup id.
    pub id: String,
    /// Logical target name (mapped to SNS/SQS in `gateway.toml`).
    pub target: String,
    /// The JSON payload text.
    pub payload: String,
    /// Plugin that published it.
    pub plugin: String,
    /// Tenant of the session the event came from.
    pub tenant: String,
    /// Session the event came from.
    pub session_id: String,
    /// When it was queued (Unix ms).
    pub created_at: i64,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Earliest time of the next attempt (Unix ms); also a claim lease.
    pub next_attempt_at: i64,
    /// Pending or dead.
    pub state: OutboxState,
    /// The last delivery error, if any.
    pub last_error: Option<String>,
}

pub use crate::config::Retention;

/// Which event types have after-hooks configured, as a bit set: only those
/// events are queued for the after-hook processor, so a gateway without
/// after-hooks pays nothing for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AfterHooked(pub u8);

impl AfterHooked {
    fn bit(kind: crate::model::EventType) -> u8 {
        use crate::model::EventType as E;
        match kind {
            E::MetadataUpdated => 1,
            E::MetadataDeleted => 2,
            E::FeedbackAdded => 4,
            _ => 0,
        }
    }

    /// Adds an event type.
    pub fn with(self, kind: crate::model::EventType) -> Self {
        Self(self.0 | Self::bit(kind))
    }

    /// Whether events of this type go to the after-hook queue.
    pub fn contains(self, kind: crate::model::EventType) -> bool {
        self.0 & Self::bit(kind) != 0
    }
}

/// What one retention sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SweepReport {
    /// Expired sessions deleted (each with a `session.deleted` event).
    pub sessions: u64,
    /// Change events past the event window deleted.
    pub events: u64,
}

/// Everything a caller of the store needs in scope: the contract, its
/// concern traits and the types their methods take and return.
pub mod prelude {
    pub use super::{
        AgentData, Appended, Backend, EventLog, ListQuery, MetadataResult, NextDue, OutboxItem,
        OutboxQueue, OutboxState, Page, Retention, RetentionPolicy, SessionData, SessionStore,
        StoreError, StoreMetrics, StoreResult,
    };
}

/// The storage contract every backend honours: every concern trait below.
///
/// All methods are scoped to a tenant: a session of another tenant is
/// indistinguishable from a missing one. Every mutating method is atomic: on
/// error nothing was written. Object-safe: used as `Arc<dyn SessionStore>`.
pub trait SessionStore:
    Send + Sync + 'static + Backend + SessionData + AgentData + EventLog + OutboxQueue + RetentionPolicy
{
}

/// Connection-pool figures of a backend that has a pool (MongoDB).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolMetrics {
    /// Connections checked out.
    pub in_use: u64,
    /// Open connections not checked out.
    pub idle: u64,
    /// Connection checkouts that failed (counter).
    pub checkout_failures: u64,
    /// Times the pool was cleared because the server went away (counter).
    pub pool_cleared: u64,
}

/// A backend's own metrics, as numbers (`/metrics` renders them: see
/// `observe.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreMetrics {
    /// The driver's connection pool, when the backend has one.
    pub pool: Option<PoolMetrics>,
    /// The MongoDB group commit, when it runs.
    pub group_commit: Option<GroupCommitMetrics>,
    /// The embedded store's writer.
    pub embedded_writer: Option<EmbeddedWriterMetrics>,
}

/// Counters of the embedded store's writer thread (group commit).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedWriterMetrics {
    /// Jobs run (one per write, batch of one session's writes, claim or
    /// completion).
    pub jobs: u64,
    /// Write transactions committed, each one fsync; `jobs / commits` is how
    /// many jobs share one.
    pub commits: u64,
}

/// The after-hook queue at one moment: what `/metrics` shows of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookBacklog {
    /// Events whose after-hooks have not completed (claimed ones included).
    pub pending: u64,
    /// The commit time (Unix ms) of the oldest of them.
    pub oldest_ts: Option<i64>,
}

/// Counters of the MongoDB group commit (`mongo::group_commit`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitMetrics {
    /// Jobs committed (one per write, or per batch of one session's writes).
    pub jobs: u64,
    /// Transactions committed (each holds one or more jobs).
    pub transactions: u64,
    /// Jobs sent back to the per-write transaction (their session had
    /// changed, or one of their writes was refused).
    pub stale: u64,
    /// Batches sent again for per-model results, because their summary
    /// showed a guard that matched nothing.
    pub recounts: u64,
}

/// When a queue of the store (after-hook events, outbox) next has something
/// to claim, as far as this process can tell: its pollers sleep until then
/// instead of waking on a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextDue {
    /// Other processes write this store too (MongoDB with several
    /// gateways), so items can appear at any time: poll.
    Unknown,
    /// Nothing is queued. Only a write of this process can queue something,
    /// and it wakes the poller.
    Nothing,
    /// The earliest queued item becomes claimable at this time (Unix ms): a
    /// retry's backoff or a claim's lease ends then. At or before now: at once.
    At(i64),
}

impl NextDue {
    /// How long a poller that found nothing to claim at `now` (Unix ms)
    /// sleeps unless woken: `poll` when the store cannot tell, for ever when
    /// nothing is queued, else until the earliest item is due.
    pub fn wait(self, now: i64, poll: std::time::Duration) -> Option<std::time::Duration> {
        match self {
            Self::Unknown => Some(poll),
            Self::Nothing => None,
            // A claim takes what is due at or before its `now`: one more ms.
            Self::At(at) => Some(std::time::Duration::from_millis(
                u64::try_from(at.saturating_sub(now))
                    .unwrap_or(0)
                    .saturating_add(1),
            )),
        }
    }
}

/// Sleeps for `wait`, or for ever when it is `None` (see [`NextDue::wait`]).
pub async fn sleep_or_forever(wait: Option<std::time::Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// What the backend is: its name, health and metrics.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Human-readable backend name, for logs and `/readyz`.
    fn name(&self) -> &'static str;

    /// Checks the backend answers.
    async fn ping(&self) -> StoreResult<()>;

    /// Whether other gateways may write to this store too (then SSE feeds
    /// must poll for their events; see [`crate::stream`]).
    fn is_shared(&self) -> bool;

    /// Backend-specific metrics (e.g. the MongoDB connection pool); empty
    /// when the backend has none.
    fn metrics(&self) -> StoreMetrics {
        StoreMetrics::default()
    }
}

/// Sessions, their metadata and their feedbacks.
#[async_trait]
pub trait SessionData: Send + Sync {
    /// Creates a session. `Conflict(session_exists)` when the id is taken.
    async fn create_session(&self, t: &Tenant, new: NewSession) -> StoreResult<Session>;

    /// Reads a session header with its agent ids.
    async fn get_session(&self, t: &Tenant, sid: &str) -> StoreResult<Session>;

    /// Reads many sessions in one round trip; missing ids are skipped.
    async fn batch_get_sessions(&self, t: &Tenant, ids: &[String]) -> StoreResult<Vec<Session>>;

    /// Lists sessions in ascending id order with filters.
    async fn list_sessions(&self, t: &Tenant, q: &ListQuery) -> StoreResult<Page>;

    /// Deletes a session with its agents, messages and feedbacks.
    async fn delete_session(&self, t: &Tenant, sid: &str) -> StoreResult<()>;

    /// Reads a session's metadata.
    async fn get_metadata(&self, t: &Tenant, sid: &str) -> StoreResult<JsonObject>;

    /// Applies a validated metadata change.
    async fn change_metadata(
        &self,
        t: &Tenant,
        sid: &str,
        change: &MetadataChange,
    ) -> StoreResult<MetadataResult> {
        self.change_metadata_of_type(t, sid, None, change).await
    }

    /// Adds a validated feedback; the store stamps `created_at`.
    async fn add_feedback(&self, t: &Tenant, sid: &str, body: JsonObject) -> StoreResult<Feedback> {
        self.add_feedback_of_type(t, sid, None, body).await
    }

    /// [`Self::change_metadata`]; with `Some(session_type)` (the type the
    /// before-hooks were given) only when the session is of that type,
    /// checked in the write itself: otherwise it writes nothing and answers
    /// [`StoreError::OtherType`].
    async fn change_metadata_of_type(
        &self,
        t: &Tenant,
        sid: &str,
        session_type: Option<&str>,
        change: &MetadataChange,
    ) -> StoreResult<MetadataResult>;

    /// [`Self::add_feedback`], with the type check of
    /// [`Self::change_metadata_of_type`].
    async fn add_feedback_of_type(
        &self,
        t: &Tenant,
        sid: &str,
        session_type: Option<&str>,
        body: JsonObject,
    ) -> StoreResult<Feedback>;

    /// Lists a session's feedbacks in the order they were added.
    async fn list_feedbacks(&self, t: &Tenant, sid: &str) -> StoreResult<Vec<Feedback>>;
}

/// Agents and their messages.
#[async_trait]
pub trait AgentData: Send + Sync {
    /// Creates or replaces an agent. `if_match` must equal the stored version.
    /// Returns the agent and whether it was created.
    async fn put_agent(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        body: JsonObject,
        if_match: Option<u64>,
    ) -> StoreResult<(Agent, bool)>;

    /// Reads one agent.
    async fn get_agent(&self, t: &Tenant, sid: &str, aid: &str) -> StoreResult<Agent>;

    /// Reads every agent of a session, sorted by id.
    async fn list_agents(&self, t: &Tenant, sid: &str) -> StoreResult<Vec<Agent>>;

    /// Appends a message. Without an id the next one is assigned atomically;
    /// with one, it must be the next id, or an existing id with the same content.
    async fn append_message(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        input: MessageInput,
    ) -> StoreResult<Appended>;

    /// Lists messages ascending by id, with the agent's total message count.
    /// Each store bounds the bytes one call reads (`with_max_read_bytes`): it
    /// may return a prefix of the range, at least one message when the range
    /// holds any, and the caller continues from the next id.
    async fn list_messages(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        range: MessageRange,
    ) -> StoreResult<(Vec<Message>, u64)>;

    /// Reads one message.
    async fn get_message(&self, t: &Tenant, sid: &str, aid: &str, mid: u64)
    -> StoreResult<Message>;

    /// Patches (or, with every field set, replaces) one message.
    async fn update_message(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        mid: u64,
        patch: MessagePatch,
    ) -> StoreResult<Message>;

    /// Runs several writes of one session in order, each with the answer its
    /// own method would give, and stops at the first that fails. Each write
    /// still records its own event. A backend may commit them together (the
    /// MongoDB fast path commits them as one job of its group commit, in one
    /// transaction); otherwise they are written one by one.
    async fn write_batch(&self, t: &Tenant, sid: &str, writes: Vec<BatchWrite>) -> BatchOutcome {
        write_one_by_one(self, t, sid, writes).await
    }
}

/// The change-event log: one event per committed change, read by SSE feeds
/// and other gateways, and the queue of events whose after-hooks are pending.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Sets which event types are queued for after-hooks (changed on reload;
    /// events committed before keep the flag they were written with).
    fn set_after_hooked(&self, kinds: AfterHooked);

    /// Sequence number of the session's latest event (0 when it has none). A
    /// deleted session keeps its sequence, so ids never repeat.
    async fn latest_event_seq(&self, t: &Tenant, sid: &str) -> StoreResult<u64>;

    /// Events of every session committed at or after `since` (Unix ms), at most
    /// `limit`, oldest first. Used to follow other gateways' writes.
    async fn events_since(&self, since: i64, limit: usize) -> StoreResult<Vec<Event>>;

    /// Events of a session with `seq > after`, ascending, at most `limit`.
    async fn events_after(
        &self,
        t: &Tenant,
        sid: &str,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<Event>>;

    /// Claims up to `limit` events whose after-hooks have not completed and whose
    /// claim lease (if any) expired before `now`, oldest first, leasing them
    /// until `now + lease_ms` so concurrent gateways do not process them twice.
    async fn claim_pending_events(
        &self,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<Event>>;

    /// When [`EventLog::claim_pending_events`] next finds an event; the
    /// default, for a store other processes write too, is
    /// [`NextDue::Unknown`].
    async fn next_event_due(&self) -> StoreResult<NextDue> {
        Ok(NextDue::Unknown)
    }

    /// How many events wait for their after-hooks, and since when: a queue
    /// that grows, or an oldest event that ages, means the hooks are behind
    /// the writes.
    async fn hook_backlog(&self) -> StoreResult<HookBacklog>;

    /// Marks an event's after-hooks complete and, atomically with it, queues
    /// the notifications they published (items whose id exists are skipped).
    async fn complete_event(
        &self,
        tenant: &str,
        session_id: &str,
        seq: u64,
        outbox: Vec<OutboxItem>,
    ) -> StoreResult<()>;
}

/// Notifications published by after-hooks, kept until delivered.
#[async_trait]
pub trait OutboxQueue: Send + Sync {
    /// Claims up to `limit` pending outbox items due at `now`, leasing them
    /// (pushing `next_attempt_at` to `now + lease_ms`).
    async fn claim_outbox(
        &self,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<OutboxItem>>;

    /// When [`OutboxQueue::claim_outbox`] next finds an item; the default,
    /// for a store other processes write too, is [`NextDue::Unknown`].
    async fn next_outbox_due(&self) -> StoreResult<NextDue> {
        Ok(NextDue::Unknown)
    }

    /// Removes a delivered item.
    async fn outbox_delivered(&self, id: &str) -> StoreResult<()>;

    /// Records a failed attempt: stores `attempts`, `error`, and either the next
    /// attempt time or (when `dead`) the dead state.
    async fn outbox_failed(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_at: i64,
        error: &str,
        dead: bool,
    ) -> StoreResult<()>;

    /// Lists outbox items, optionally only those in `state`, oldest first.
    async fn list_outbox(
        &self,
        state: Option<OutboxState>,
        limit: usize,
    ) -> StoreResult<Vec<OutboxItem>> {
        self.list_outbox_of(None, state, limit).await
    }

    /// [`OutboxQueue::list_outbox`] limited to one tenant's items (`None`: all).
    async fn list_outbox_of(
        &self,
        tenant: Option<&str>,
        state: Option<OutboxState>,
        limit: usize,
    ) -> StoreResult<Vec<OutboxItem>>;

    /// Re-queues an item (dead or pending) for immediate delivery with its
    /// attempt count reset. `NotFound` when absent.
    async fn retry_outbox(&self, id: &str, now: i64) -> StoreResult<OutboxItem> {
        self.retry_outbox_of(None, id, now).await
    }

    /// [`OutboxQueue::retry_outbox`] of an item of `tenant` only (`None`:
    /// any); another tenant's item is `NotFound`, like a missing one.
    async fn retry_outbox_of(
        &self,
        tenant: Option<&str>,
        id: &str,
        now: i64,
    ) -> StoreResult<OutboxItem>;

    /// Number of (pending, dead) outbox items.
    async fn outbox_counts(&self) -> StoreResult<(u64, u64)> {
        self.outbox_counts_of(None).await
    }

    /// [`OutboxQueue::outbox_counts`] of one tenant's items (`None`: all).
    async fn outbox_counts_of(&self, tenant: Option<&str>) -> StoreResult<(u64, u64)>;
}

/// How long sessions and events live, and the sweep that enforces it.
#[async_trait]
pub trait RetentionPolicy: Send + Sync {
    /// Applies a retention policy: from now on, sessions past it read as
    /// missing everywhere, and [`RetentionPolicy::sweep_expired`] removes them.
    fn set_retention(&self, retention: Retention);

    /// Deletes up to `limit` expired sessions (with their children, recording
    /// `session.deleted` events) and the events past the event window.
    async fn sweep_expired(&self, now: i64, limit: usize) -> StoreResult<SweepReport>;
}
