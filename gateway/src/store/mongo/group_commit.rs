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
//!
//! The `bulkWrite` asks for a summary only (counts, no result per model):
//! every update model touches one document unless a guard failed, so
//! matched + upserted = update models proves every guard held. A guard
//! usually fails with an error beside it (another gateway's write took the
//! `seq` the job's event names: a duplicate key). When it fails alone (the
//! session expired, or the event window swept its events), only the sum
//! falling short shows it: the transaction is aborted and the batch sent
//! again with per-model results, which name the stale jobs.
//!
//! ## When a batch leaves
//! A transaction costs the server much the same for one job as for four
//! (BENCHMARKS.md, "Which write design is left to try"), so under load
//! fewer, fuller batches leave more of the server's CPU for writes; at low
//! load, waiting for a batch to fill only adds latency. So a batch leaves at
//! once, with whatever is queued, unless the writer is loaded — a batch is
//! already committing and the jobs in flight and queued number at least
//! [`Policy::wait_from`]. Then it waits until it holds [`Policy::min_batch`]
//! jobs or the load falls below that, whichever comes first: a job never
//! waits for more than the commits already in flight. Up to [`IN_FLIGHT`]
//! batches commit at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use mongodb::Client;
use mongodb::error::{ErrorKind, TRANSIENT_TRANSACTION_ERROR};
use mongodb::options::{ReadPreference, SelectionCriteria, WriteModel};
use mongodb::results::{SummaryBulkWriteResult, VerboseBulkWriteResult};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

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

/// When a batch leaves (see the module docs).
#[derive(Debug, Clone, Copy)]
struct Policy {
    /// Jobs a batch waits for while the writer is loaded.
    min_batch: usize,
    /// Jobs in flight and queued from which the writer counts as loaded.
    wait_from: usize,
}

/// Measured on the harness's MongoDB mix and Strands script (BENCHMARKS.md,
/// "Fuller group-commit batches under load"): it cuts the commands per
/// write by 24 % at 16 concurrent sessions and 17 % at 32; 4 concurrent
/// sessions never reach `wait_from`, so they are not serialised behind one
/// commit (waiting for 4 jobs whenever a batch commits halved their
/// throughput).
const POLICY: Policy = Policy {
    min_batch: 4,
    wait_from: 8,
};
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
    recounts: AtomicU64,
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
        let shared = counters.clone();
        tokio::spawn(run(rx, POLICY, move |batch| {
            let (client, counters) = (client.clone(), shared.clone());
            async move { commit(&client, batch, &counters).await }
        }));
        Self { tx, counters }
    }

    /// The writer's counters.
    pub fn metrics(&self) -> GroupCommitMetrics {
        let c = &self.counters;
        GroupCommitMetrics {
            jobs: c.jobs.load(Relaxed),
            transactions: c.transactions.load(Relaxed),
            stale: c.stale.load(Relaxed),
            recounts: c.recounts.load(Relaxed),
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

/// The writer loop: collects batches from `rx` by `policy` and hands each
/// to `commit`.
async fn run<F, Fut>(mut rx: mpsc::Receiver<Job>, policy: Policy, commit: F)
where
    F: Fn(Vec<Job>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let in_flight = Arc::new(InFlight::default());
    loop {
        // Wait for a free slot before collecting: while every slot commits,
        // the next batch keeps growing in the channel.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let batch = fill(&mut rx, first, policy, &in_flight).await;
        let jobs = batch.len();
        in_flight.jobs.fetch_add(jobs, Relaxed);
        let (done, in_flight) = (commit(batch), in_flight.clone());
        tokio::spawn(async move {
            done.await;
            in_flight.jobs.fetch_sub(jobs, Relaxed);
            in_flight.ended.notify_waiters();
            drop(slot);
        });
    }
}

/// The jobs of the batches committing (a batch holds at least one, so none
/// means no batch commits), and a wake-up when a batch ends.
#[derive(Default)]
struct InFlight {
    jobs: AtomicUsize,
    ended: Notify,
}

/// The batch that starts with `first`: every job already queued, and while
/// the writer is loaded, the jobs that arrive until the batch holds
/// `policy.min_batch` or the load falls (see the module docs).
async fn fill(
    rx: &mut mpsc::Receiver<Job>,
    first: Job,
    policy: Policy,
    in_flight: &InFlight,
) -> Vec<Job> {
    let mut batch = vec![first];
    loop {
        while batch.len() < MAX_JOBS {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if batch.len() >= policy.min_batch {
            return batch;
        }
        // Registered before the count is read, so an end in between wakes it.
        let ended = in_flight.ended.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        let committing = in_flight.jobs.load(Relaxed);
        let loaded = committing > 0 && committing + batch.len() >= policy.wait_from;
        if !loaded {
            return batch;
        }
        tokio::select! {
            job = rx.recv() => match job {
                Some(job) => batch.push(job),
                None => return batch,
            },
            () = &mut ended => {}
        }
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

/// What an applied bulk write says of its jobs' guards.
enum Applied {
    /// Every guard held.
    Held,
    /// These jobs' guards did not hold.
    Stale(Vec<usize>),
    /// Some guard did not hold; the summary does not say which.
    Unknown,
}

/// Reads the guards from a summary: every update model — a job's guard, or
/// an upsert, which matches or inserts — touches exactly one document unless
/// a guard matched nothing (a failed insert is a write error, not a count).
fn held(r: &SummaryBulkWriteResult, updates: usize) -> Applied {
    let touched = r.matched_count.saturating_add(r.upserted_count);
    if usize::try_from(touched).is_ok_and(|t| t == updates) {
        Applied::Held
    } else {
        Applied::Unknown
    }
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
    // Per-model results cost the server ~6 % more CPU per write and the
    // gateway a map per batch (BENCHMARKS.md, "Summary results for the
    // group commit's `bulkWrite`"), so a batch asks for them only once its
    // summary showed a guard failing.
    let mut verbose = false;
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
        let updates = models
            .iter()
            .filter(|m| matches!(m, WriteModel::UpdateOne(_)))
            .count();
        let bulk = client.bulk_write(models).ordered(true);
        let res = if verbose {
            bulk.verbose_results()
                .session(&mut s)
                .await
                .map(|r| Applied::Stale(stale_jobs(&batch, &guards, &r)))
        } else {
            bulk.session(&mut s).await.map(|r| held(&r, updates))
        };
        let transient = match res {
            Ok(applied) => {
                let stale = match applied {
                    Applied::Held => Vec::new(),
                    Applied::Stale(stale) => stale,
                    Applied::Unknown => {
                        // Some guard matched nothing and nothing else
                        // failed (see the module docs); the summary does
                        // not say which. Run the batch again with
                        // per-model results.
                        let _ = s.abort_transaction().await;
                        counters.recounts.fetch_add(1, Relaxed);
                        verbose = true;
                        continue;
                    }
                };
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    use tokio::sync::{mpsc, oneshot};
    use tokio::time::timeout;

    use mongodb::results::SummaryBulkWriteResult;

    use super::{
        Applied, Guard, IN_FLIGHT, InFlight, Job, Outcome, POLICY, Policy, answer_all, fill, held,
        run,
    };

    type Replies = oneshot::Receiver<Outcome>;
    type Started = mpsc::UnboundedReceiver<(usize, oneshot::Sender<()>)>;

    fn job() -> (Job, Replies) {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            guard: Guard::Update,
            models: Vec::new(),
            reply,
        };
        (job, rx)
    }

    /// A writer whose commits report their batch's size and hold until
    /// released.
    fn writer(policy: Policy) -> (mpsc::Sender<Job>, Started) {
        let (tx, rx) = mpsc::channel(64);
        let (started_tx, started) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, policy, move |batch: Vec<Job>| {
            let started_tx = started_tx.clone();
            async move {
                let (release, released) = oneshot::channel();
                let _ = started_tx.send((batch.len(), release));
                let _ = released.await;
                answer_all(batch, || Outcome::Committed);
            }
        }));
        (tx, started)
    }

    async fn next(started: &mut Started) -> (usize, oneshot::Sender<()>) {
        timeout(Duration::from_secs(10), started.recv())
            .await
            .expect("a batch should have left within 10 s")
            .expect("the writer ended")
    }

    /// Nothing leaves within 200 ms (a batch that leaves early is seen here
    /// on any machine; a correct writer never sends one, so load cannot make
    /// this fail).
    async fn none_leaves(started: &mut Started, why: &str) {
        if let Ok(Some((n, _))) = timeout(Duration::from_millis(200), started.recv()).await {
            panic!("a batch of {n} left: {why}");
        }
    }

    /// `fill` on a writer whose in-flight state the test sets: the length
    /// of the batch it returns, once it returns.
    fn fill_with(
        in_flight: &Arc<InFlight>,
        policy: Policy,
    ) -> (mpsc::Sender<Job>, oneshot::Receiver<usize>, Vec<Replies>) {
        let (tx, mut rx) = mpsc::channel(64);
        let (first, reply) = job();
        let (len_tx, len) = oneshot::channel();
        let in_flight = in_flight.clone();
        tokio::spawn(async move {
            let batch = fill(&mut rx, first, policy, &in_flight).await;
            let _ = len_tx.send(batch.len());
        });
        (tx, len, vec![reply])
    }

    async fn pending(len: &mut oneshot::Receiver<usize>, why: &str) {
        if let Ok(n) = timeout(Duration::from_millis(200), &mut *len).await {
            panic!("a batch of {n:?} left: {why}");
        }
    }

    async fn left(len: oneshot::Receiver<usize>) -> usize {
        timeout(Duration::from_secs(10), len)
            .await
            .expect("the batch should have left within 10 s")
            .expect("fill ended without a batch")
    }

    fn set(in_flight: &InFlight, jobs: usize) {
        in_flight.jobs.store(jobs, Relaxed);
        in_flight.ended.notify_waiters();
    }

    const TEST: Policy = Policy {
        min_batch: 4,
        wait_from: 8,
    };

    #[tokio::test]
    async fn a_batch_leaves_at_once_unless_the_writer_is_loaded() {
        // Nothing in flight (also where one job alone reaches `wait_from`),
        // or fewer jobs than `wait_from`: at once, with whatever is queued.
        let eager = Policy {
            min_batch: 4,
            wait_from: 1,
        };
        for (policy, jobs) in [(TEST, 0), (eager, 0), (TEST, 6)] {
            let in_flight = Arc::new(InFlight::default());
            set(&in_flight, jobs);
            let (_tx, len, _r) = fill_with(&in_flight, policy);
            assert_eq!(left(len).await, 1, "{policy:?}, {jobs} jobs in flight");
        }
    }

    #[tokio::test]
    async fn a_loaded_writer_waits_for_min_batch_jobs() {
        let in_flight = Arc::new(InFlight::default());
        set(&in_flight, 7);
        let (tx, mut len, mut replies) = fill_with(&in_flight, TEST);
        pending(&mut len, "1 job, 7 in flight").await;
        for _ in 0..2 {
            let (j, r) = job();
            tx.send(j).await.unwrap();
            replies.push(r);
        }
        pending(&mut len, "3 jobs, 7 in flight").await;
        let (j, _r) = job();
        tx.send(j).await.unwrap();
        assert_eq!(left(len).await, 4);
    }

    #[tokio::test]
    async fn a_waiting_batch_leaves_when_the_load_falls() {
        // Fewer jobs in flight than `wait_from`, and then none.
        for jobs in [5, 0] {
            let in_flight = Arc::new(InFlight::default());
            set(&in_flight, 7);
            let (_tx, mut len, _r) = fill_with(&in_flight, TEST);
            pending(&mut len, "1 job, 7 in flight").await;
            set(&in_flight, jobs);
            assert_eq!(left(len).await, 1, "{jobs} jobs in flight");
        }
    }

    /// The writer end to end, with the shipped policy: a few concurrent
    /// writers are not serialised behind one commit; many are batched.
    #[tokio::test]
    async fn the_writer_batches_only_under_load() {
        assert_eq!((POLICY.min_batch, POLICY.wait_from, IN_FLIGHT), (4, 8, 4));
        let (tx, mut started) = writer(POLICY);
        let mut replies = Vec::new();
        let mut send = async |n: usize| {
            for _ in 0..n {
                let (j, rx) = job();
                tx.send(j).await.unwrap();
                replies.push(rx);
            }
        };
        // Light load: each job leaves while the others commit, until every
        // slot commits.
        let mut held = Vec::new();
        for i in 0..IN_FLIGHT {
            send(1).await;
            let (n, release) = next(&mut started).await;
            assert_eq!(n, 1, "job {i}");
            held.push(release);
        }
        // Jobs queued meanwhile leave together when a slot frees.
        send(6).await;
        none_leaves(&mut started, "every slot commits").await;
        held.remove(0).send(()).unwrap();
        let (n, release) = next(&mut started).await;
        assert_eq!(n, 6);
        held.push(release);
        // A slot free, 2 + 6 jobs in flight: loaded, so the next batch
        // waits for 4.
        held.remove(0).send(()).unwrap();
        send(1).await;
        none_leaves(&mut started, "1 job on a loaded writer").await;
        send(3).await;
        let (n, release) = next(&mut started).await;
        assert_eq!(n, 4);
        held.push(release);
        for release in held {
            release.send(()).unwrap();
        }
        for rx in replies {
            assert!(matches!(rx.await, Ok(Outcome::Committed)));
        }
    }

    /// A summary says every guard held only when each update model touched
    /// one document: a guard that matched nothing leaves the sum short, and
    /// the batch is then run again with per-model results.
    #[test]
    fn a_summary_holds_only_when_every_update_touched_a_document() {
        let mut r = SummaryBulkWriteResult::default();
        // Two guards matched, one agent upsert inserted.
        r.matched_count = 2;
        r.upserted_count = 1;
        r.inserted_count = 4;
        assert!(matches!(held(&r, 3), Applied::Held));
        // A third guard matched nothing.
        assert!(matches!(held(&r, 4), Applied::Unknown));
        // An upsert that matched counts once, as a match.
        r.matched_count = 3;
        r.upserted_count = 0;
        assert!(matches!(held(&r, 3), Applied::Held));
    }
}
