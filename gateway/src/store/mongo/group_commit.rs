//! The group-commit writer: one task per gateway that commits the concurrent
//! writes of many sessions in **one transaction of two commands** — a single
//! multi-namespace `bulkWrite` (MongoDB 8.0+) holding every write's models,
//! then `commitTransaction`.
//!
//! A [`Job`] is one session's change, built by the fast path
//! ([`super::fast_path`]) from what this gateway knows of the session: its
//! first model is the *guard* — the conditional update of the session document
//! whose filter names the `seq` this gateway last saw (or, for a new session,
//! the insert of its document). The rest are the child document and the
//! change event. When a guard matches nothing (another gateway wrote the
//! session, or it expired) or one of the job's models fails (a duplicate key),
//! the transaction is aborted, that job is answered [`Outcome::Stale`] — its
//! caller re-reads and runs the per-write transaction alone — and the others
//! are committed without it. A batch holds at most one job per session: the
//! caller holds the session's in-process lock until its job is answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use mongodb::Client;
use mongodb::error::{ErrorKind, TRANSIENT_TRANSACTION_ERROR};
use mongodb::options::{ReadPreference, SelectionCriteria, WriteModel};
use mongodb::results::VerboseBulkWriteResult;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::error::{backoff, commit_with_retry, is_connectivity, mongo_err};
use crate::store::{GroupCommitMetrics, StoreError};

/// Most jobs in one transaction (the driver splits a bulk write larger than
/// the server's batch and message limits into several commands by itself).
const MAX_JOBS: usize = 256;
/// Batches committing at once. Their jobs are of distinct sessions (a session
/// has at most one job outstanding: its caller holds the session's lock until
/// the job is answered), so concurrent batches never write the same document
/// and never conflict; a second batch in flight keeps the server busy while
/// the first one's commit round trip is on the wire.
const IN_FLIGHT: usize = 4;
/// Attempts of one batch on transient errors, and the time they may take.
const ATTEMPTS: u32 = 10;
const BUDGET: Duration = Duration::from_secs(5);

/// How a job's guard is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Guard {
    /// The first model is an update that must match exactly one document.
    Update,
    /// The first model is an insert (it fails on a duplicate key).
    Insert,
}

/// One session's change for the group commit.
pub(super) struct Job {
    pub guard: Guard,
    pub models: Vec<WriteModel>,
    pub reply: oneshot::Sender<Outcome>,
}

/// What became of a job.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Committed (majority-acknowledged, with the client's write concern).
    Committed,
    /// Not written: what the job was built from is not what is stored (or a
    /// model was refused). The caller takes the per-write transaction path.
    Stale,
    /// Not known to be written: the deployment failed (the caller answers
    /// this error; an idempotent retry by the client is safe).
    Failed(StoreError),
}

/// What the writer has done (counters).
#[derive(Default)]
struct Counters {
    jobs: AtomicU64,
    transactions: AtomicU64,
    stale: AtomicU64,
}

/// Handle of the writer task.
#[derive(Clone)]
pub(super) struct GroupCommit {
    tx: mpsc::Sender<Job>,
    counters: Arc<Counters>,
}

impl GroupCommit {
    /// Starts the writer task on `client`.
    pub fn start(client: Client) -> Self {
        let (tx, rx) = mpsc::channel(4 * MAX_JOBS);
        let counters = Arc::new(Counters::default());
        tokio::spawn(run(client, rx, counters.clone()));
        Self { tx, counters }
    }

    /// The writer's counters.
    pub fn metrics(&self) -> GroupCommitMetrics {
        let c = &self.counters;
        GroupCommitMetrics {
            jobs: c.jobs.load(Relaxed),
            transactions: c.transactions.load(Relaxed),
            stale: c.stale.load(Relaxed),
        }
    }

    /// Commits `models` (guard first) with other sessions' concurrent writes.
    pub async fn submit(&self, guard: Guard, models: Vec<WriteModel>) -> Outcome {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            guard,
            models,
            reply,
        };
        if self.tx.send(job).await.is_err() {
            return Outcome::Stale;
        }
        rx.await.unwrap_or(Outcome::Stale)
    }
}

async fn run(client: Client, mut rx: mpsc::Receiver<Job>, counters: Arc<Counters>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // Wait for a free slot before collecting: while every slot commits,
        // the next batch keeps growing in the channel.
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_JOBS {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (client, counters) = (client.clone(), counters.clone());
        tokio::spawn(async move {
            commit(&client, batch, &counters).await;
            drop(slot);
        });
    }
}

/// Which job each model belongs to, and where each job's guard is.
fn flatten(batch: &[Job]) -> (Vec<WriteModel>, Vec<usize>, Vec<usize>) {
    let mut models = Vec::new();
    let mut owner = Vec::new();
    let mut guards = Vec::with_capacity(batch.len());
    for (j, job) in batch.iter().enumerate() {
        guards.push(models.len());
        for m in &job.models {
            models.push(m.clone());
            owner.push(j);
        }
    }
    (models, owner, guards)
}

/// Jobs whose guard did not hold in an applied bulk write.
fn stale_jobs(batch: &[Job], guards: &[usize], r: &VerboseBulkWriteResult) -> Vec<usize> {
    (0..batch.len())
        .filter(|&j| match batch[j].guard {
            Guard::Update => r
                .update_results
                .get(&guards[j])
                .is_none_or(|u| u.matched_count != 1),
            Guard::Insert => !r.insert_results.contains_key(&guards[j]),
        })
        .collect()
}

/// Answers the jobs at `idx` (ascending) with `outcome()` and removes them.
fn answer(batch: &mut Vec<Job>, idx: &[usize], outcome: impl Fn() -> Outcome) {
    for &j in idx.iter().rev() {
        let job = batch.remove(j);
        let _ = job.reply.send(outcome());
    }
}

fn answer_all(batch: Vec<Job>, outcome: impl Fn() -> Outcome) {
    for job in batch {
        let _ = job.reply.send(outcome());
    }
}

async fn commit(client: &Client, mut batch: Vec<Job>, counters: &Counters) {
    let started = std::time::Instant::now();
    let mut attempt = 0;
    while !batch.is_empty() {
        attempt += 1;
        let mut s = match client.start_session().await {
            Ok(s) => s,
            Err(e) => {
                let err = mongo_err("group commit", &e);
                return answer_all(batch, || Outcome::Failed(err.clone()));
            }
        };
        if let Err(e) = s
            .start_transaction()
            .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
            .await
        {
            let err = mongo_err("group commit", &e);
            return answer_all(batch, || Outcome::Failed(err.clone()));
        }
        let (models, owner, guards) = flatten(&batch);
        let res = client
            .bulk_write(models)
            .ordered(true)
            .verbose_results()
            .session(&mut s)
            .await;
        let transient = match res {
            Ok(r) => {
                let stale = stale_jobs(&batch, &guards, &r);
                if !stale.is_empty() {
                    let _ = s.abort_transaction().await;
                    counters.stale.fetch_add(stale.len() as u64, Relaxed);
                    answer(&mut batch, &stale, || Outcome::Stale);
                    continue;
                }
                match commit_with_retry(&mut s).await {
                    Ok(()) => {
                        counters.transactions.fetch_add(1, Relaxed);
                        counters.jobs.fetch_add(batch.len() as u64, Relaxed);
                        return answer_all(batch, || Outcome::Committed);
                    }
                    Err(e)
                        if e.contains_label(TRANSIENT_TRANSACTION_ERROR)
                            && !is_connectivity(&e) =>
                    {
                        let _ = s.abort_transaction().await;
                        e
                    }
                    Err(e) => {
                        let err = mongo_err("group commit", &e);
                        return answer_all(batch, || Outcome::Failed(err.clone()));
                    }
                }
            }
            Err(e) => {
                let _ = s.abort_transaction().await;
                if let ErrorKind::BulkWrite(bw) = e.kind.as_ref()
                    && let Some(&first) = bw.write_errors.keys().min()
                {
                    // A refused model (e.g. a duplicate key): its job goes
                    // the per-write way, which reports why; retry the rest.
                    let j = owner[first];
                    counters.stale.fetch_add(1, Relaxed);
                    answer(&mut batch, &[j], || Outcome::Stale);
                    continue;
                }
                if is_connectivity(&e) || !e.contains_label(TRANSIENT_TRANSACTION_ERROR) {
                    let err = mongo_err("group commit", &e);
                    if matches!(err, StoreError::Unavailable(_)) {
                        return answer_all(batch, || Outcome::Failed(err.clone()));
                    }
                    // Not a deployment failure: each job alone says what it is.
                    tracing::debug!(error = %err, "group commit refused; writing one by one");
                    return answer_all(batch, || Outcome::Stale);
                }
                e
            }
        };
        if attempt >= ATTEMPTS || started.elapsed() >= BUDGET {
            tracing::debug!(error = %transient, "group commit: transient errors; writing one by one");
            return answer_all(batch, || Outcome::Stale);
        }
        backoff(attempt).await;
    }
}
