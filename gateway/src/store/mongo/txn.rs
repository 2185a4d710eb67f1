//! Transactions and errors: the per-write transaction with its retries, the
//! in-process turn-taking of a session's writers, and how driver errors map
//! onto [`StoreError`] (unreachable or timed out → `Unavailable`, 503).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use mongodb::ClientSession;
use mongodb::error::{
    Error as MongoError, ErrorKind, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT,
    WriteFailure,
};
use mongodb::options::{ReadPreference, SelectionCriteria};

use super::MongoStore;
use super::fast_path::{Fast, KnownSessions};
use crate::store::{StoreError, StoreResult};

/// Attempts of a whole transaction on transient errors (write conflicts with
/// another gateway writing the same session), and the time they may take.
const TXN_ATTEMPTS: u32 = 30;
const TXN_BUDGET: Duration = Duration::from_secs(5);
/// Extra attempts of a commit whose outcome is unknown.
const COMMIT_RETRIES: u32 = 5;

/// MongoDB error codes.
pub(super) const DUPLICATE_KEY: i32 = 11000;
pub(super) const PATH_NOT_VIABLE: i32 = 28;
/// Codes that mean "the deployment is not able to serve this right now".
const UNAVAILABLE_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    50,    // MaxTimeMSExpired
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    112,   // WriteConflict (after our retries)
    189,   // PrimarySteppedDown
    251,   // NoSuchTransaction
    262,   // ExceededTimeLimit
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

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

// ---- errors ----

pub(super) fn error_code(e: &MongoError) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        _ => None,
    }
}

pub(super) fn error_message(e: &MongoError) -> String {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => c.message.clone(),
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.message.clone(),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => w.message.clone(),
        other => other.to_string(),
    }
}

/// The server cannot be reached at all. The driver already waited up to the
/// server selection timeout, so retrying the transaction would only make a
/// client wait longer for the same 503.
pub(super) fn is_connectivity(e: &MongoError) -> bool {
    matches!(
        e.kind.as_ref(),
        ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::DnsResolve { .. }
            | ErrorKind::Shutdown
    )
}

pub(super) fn is_unavailable(e: &MongoError) -> bool {
    is_connectivity(e)
        || error_code(e).is_some_and(|c| UNAVAILABLE_CODES.contains(&c))
        || e.contains_label(TRANSIENT_TRANSACTION_ERROR)
        || e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
}

/// Maps a driver error: unreachable/timed out → `Unavailable`, anything else → `Internal`.
pub(super) fn mongo_err(ctx: &str, e: &MongoError) -> StoreError {
    let msg = format!("mongodb {ctx}: {}", error_message(e));
    if is_unavailable(e) {
        StoreError::Unavailable(msg)
    } else {
        StoreError::Internal(msg)
    }
}

pub(super) fn malformed(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("mongodb: malformed {what}: {e}"))
}

/// Why a transaction body stopped.
pub(super) enum TxErr {
    /// A contract error: abort and return it.
    Store(StoreError),
    /// A driver error: abort, and retry when transient.
    Mongo(MongoError),
    /// The snapshot was inconsistent with what the filter saw: abort and retry.
    Retry(String),
}

impl From<MongoError> for TxErr {
    fn from(e: MongoError) -> Self {
        Self::Mongo(e)
    }
}

impl From<StoreError> for TxErr {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// How a transaction body ended successfully.
pub(super) enum Step<T> {
    /// Commit the writes and return the value.
    Commit(T),
    /// Nothing to write (e.g. an idempotent retry): abort and return the value.
    Abort(T),
}

pub(super) type TxResult<T> = Result<Step<T>, TxErr>;

pub(super) async fn backoff(attempt: u32) {
    let cap = 2u64 << attempt.min(6);
    tokio::time::sleep(Duration::from_millis(rand::random_range(1..=cap))).await;
}

pub(super) async fn abort_quietly(s: &mut ClientSession) {
    let _ = s.abort_transaction().await;
}

pub(super) async fn commit_with_retry(s: &mut ClientSession) -> Result<(), MongoError> {
    let mut n = 0;
    loop {
        match s.commit_transaction().await {
            Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) && n < COMMIT_RETRIES => {
                n += 1;
                backoff(n).await;
            }
            other => return other,
        }
    }
}

/// Drops what the fast path knows of a session when dropped.
struct Forget<'a>(&'a KnownSessions, &'a str);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

impl MongoStore {
    /// Runs `body` in a transaction: commits on `Step::Commit`, aborts on
    /// anything else; retries the whole transaction on transient errors and
    /// the commit on an unknown commit result. With a session key, writers of
    /// that session in this process take turns, so they do not abort each
    /// other's transactions (write conflicts remain possible, and are retried,
    /// between gateways).
    pub(super) async fn transaction<T, F, Fut>(
        &self,
        op: &'static str,
        session_key: Option<&str>,
        mut body: F,
    ) -> StoreResult<T>
    where
        F: FnMut(ClientSession) -> Fut,
        Fut: Future<Output = (ClientSession, TxResult<T>)>,
    {
        let _turn = match session_key {
            Some(key) => Some(self.locks.lock(key).await),
            None => None,
        };
        // Whatever this transaction does, the fast path re-reads the session.
        let _forget = session_key.map(|key| Forget(&self.known, key));
        let mut s = self
            .client
            .start_session()
            .await
            .map_err(|e| mongo_err(op, &e))?;
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            s.start_transaction()
                .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
                .await
                .map_err(|e| mongo_err(op, &e))?;
            let (back, res) = body(s).await;
            s = back;
            let why = match res {
                Ok(Step::Commit(v)) => match commit_with_retry(&mut s).await {
                    Ok(()) => return Ok(v),
                    Err(e)
                        if e.contains_label(TRANSIENT_TRANSACTION_ERROR)
                            && !is_connectivity(&e) =>
                    {
                        abort_quietly(&mut s).await;
                        error_message(&e)
                    }
                    Err(e) => return Err(mongo_err(op, &e)),
                },
                Ok(Step::Abort(v)) => {
                    abort_quietly(&mut s).await;
                    return Ok(v);
                }
                Err(TxErr::Store(e)) => {
                    abort_quietly(&mut s).await;
                    return Err(e);
                }
                Err(TxErr::Retry(why)) => {
                    abort_quietly(&mut s).await;
                    why
                }
                Err(TxErr::Mongo(e)) => {
                    abort_quietly(&mut s).await;
                    if !e.contains_label(TRANSIENT_TRANSACTION_ERROR) || is_connectivity(&e) {
                        return Err(mongo_err(op, &e));
                    }
                    error_message(&e)
                }
            };
            if attempt >= TXN_ATTEMPTS || started.elapsed() >= TXN_BUDGET {
                return Err(StoreError::Unavailable(format!(
                    "mongodb {op}: transaction not committed after {attempt} attempts: {why}"
                )));
            }
            tracing::debug!(op, attempt, reason = %why, "retrying transaction");
            backoff(attempt).await;
        }
    }

    /// The one way a session is changed: on the group-commit path, `fast`
    /// (built from what this gateway knows of the session) runs first while
    /// holding the session's write turn; when it cannot decide, or on
    /// servers without `bulkWrite`, `tx` runs as the session's own
    /// transaction, which reads the stored state and answers authoritatively.
    pub(super) async fn mutate<T, FF, FFut, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        fast: FF,
        tx: F,
    ) -> StoreResult<T>
    where
        FF: FnOnce() -> FFut,
        FFut: Future<Output = Fast<T>>,
        F: FnMut(ClientSession) -> Fut,
        Fut: Future<Output = (ClientSession, TxResult<T>)>,
    {
        if self.writer.is_some() {
            let _turn = self.locks.lock(key).await;
            if let Fast::Done(r) = fast().await {
                return r;
            }
        }
        self.transaction(op, Some(key), tx).await
    }
}
