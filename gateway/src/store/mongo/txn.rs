//! Transactions: the per-write transaction with its retries, the
//! in-process turn-taking of a session's writers (on
//! [`SessionLocks`](super::client::SessionLocks)), and
//! [`MongoStore::mutate`], the entry of every write, which tries the fast
//! path first.

use std::future::Future;
use std::time::Duration;

use mongodb::ClientSession;
use mongodb::error::{Error as MongoError, TRANSIENT_TRANSACTION_ERROR};
use mongodb::options::{ReadPreference, SelectionCriteria};

use super::client::MongoStore;
use super::error::{backoff, commit_with_retry, error_message, is_connectivity, mongo_err};
use super::known::KnownSessions;
use crate::store::{StoreError, StoreResult};

/// Attempts of a whole transaction on transient errors (write conflicts with
/// another gateway writing the same session), and the time they may take.
const TXN_ATTEMPTS: u32 = 30;
const TXN_BUDGET: Duration = Duration::from_secs(5);

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

/// The result of a fast write, or the need for the per-write transaction.
pub(super) enum Fast<T> {
    Done(StoreResult<T>),
    Fallback,
}

pub(super) async fn abort_quietly(s: &mut ClientSession) {
    let _ = s.abort_transaction().await;
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
