//! Driver errors: how they map onto [`StoreError`] (unreachable or timed out
//! → `Unavailable`, 503; anything else → `Internal`), which of them are worth
//! a retry, and the retry helpers both write paths share (the back-off, the
//! commit of a transaction whose outcome is unknown).

use std::time::Duration;

use mongodb::ClientSession;
use mongodb::error::{
    Error as MongoError, ErrorKind, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT,
    WriteFailure,
};

use crate::store::StoreError;

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

// ---- retries ----

pub(super) async fn backoff(attempt: u32) {
    let cap = 2u64 << attempt.min(6);
    tokio::time::sleep(Duration::from_millis(rand::random_range(1..=cap))).await;
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
