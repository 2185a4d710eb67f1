//! `gateway import`: brings sessions written by the Python
//! `mongodb-session-manager` library into the gateway's store.
//!
//! It reads the original's collection (one document per session), converts
//! each document ([`legacy`]) and writes it through the [`SessionStore`]
//! contract, exactly as the HTTP API would (same validation and limits), so the
//! result reads back through the API like any other session.
//!
//! **Idempotent and resumable.** Before writing a session the importer reads
//! what the gateway already holds for it:
//! - nothing: the session is imported;
//! - a prefix of the source (same type and metadata, agents with the same
//!   state, the first N messages and feedbacks identical): what is missing is
//!   added ("resumed"; this is what an interrupted run leaves) or, when nothing
//!   is missing, the session is "unchanged";
//! - anything else (other metadata, another agent state, a message with other
//!   content, more messages than the source): a **conflict**. The session is
//!   left untouched and reported, unless `--on-conflict replace` is given,
//!   which deletes the gateway's session and imports the source's.
//!
//! Hooks do not run: the data was accepted by the original library already,
//! and historical feedback must not fire notifications again. The change
//! events are recorded (SSE subscribers see them) without after-hook work.

pub mod legacy;
pub mod progress;
mod report;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use mongodb::bson::{Document, doc};
use serde::Serialize;

use self::legacy::{ConvertOptions, SessionPlan};
use self::progress::{Progress, ProgressMode};
pub use self::report::{
    Counts, NoteSummary, Outcome, Problem, Report, SessionCounts, Status, render,
};
use crate::config::Config;
use crate::model::{JsonObject, MessageRange, NewSession, Tenant};
use crate::store::{Appended, SessionStore, StoreError};

/// Arguments of `gateway import`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// MongoDB connection string of the original library's database.
    #[arg(long, env = "IMPORT_SOURCE_URI")]
    pub source_uri: String,
    /// Database the original library wrote to (its default is "database_name").
    #[arg(long, default_value = "database_name")]
    pub source_database: String,
    /// Collection the original library wrote to (its default is
    /// "collection_name"; `initialize_global_factory` used "virtualagent_sessions").
    #[arg(long, default_value = "collection_name")]
    pub source_collection: String,
    /// Tenant that receives the sessions.
    #[arg(long, default_value = Tenant::DEFAULT)]
    pub tenant: String,
    /// Import only this session (repeatable).
    #[arg(long = "session", value_name = "ID")]
    pub sessions: Vec<String>,
    /// What to do with a session that exists in the gateway with other content:
    /// leave it and report it (skip), or delete it and import the source's (replace).
    #[arg(long, value_enum, default_value = "skip")]
    pub on_conflict: OnConflict,
    /// Compare and report without writing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Sessions imported at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// Do not keep the original times in `_import` objects.
    #[arg(long)]
    pub no_provenance: bool,
    /// Progress on stderr: a bar on a terminal, periodic lines otherwise.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
    /// Print the final report as JSON (stdout) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What to do with a session whose gateway content differs from the source's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnConflict {
    /// Leave the gateway's session alone and report the conflict.
    Skip,
    /// Delete the gateway's session and import the source's.
    Replace,
}

/// What a session still needs, per the gateway's current state.
struct Todo {
    create_session: bool,
    /// Per plan agent: (already stored, messages already stored).
    agents: Vec<(bool, usize)>,
    feedbacks_done: usize,
}

impl Todo {
    fn fresh(plan: &SessionPlan) -> Self {
        Self {
            create_session: true,
            agents: vec![(false, 0); plan.agents.len()],
            feedbacks_done: 0,
        }
    }

    fn is_complete(&self, plan: &SessionPlan) -> bool {
        !self.create_session
            && self
                .agents
                .iter()
                .zip(&plan.agents)
                .all(|((exists, done), a)| *exists && *done == a.messages.len())
            && self.feedbacks_done == plan.feedbacks.len()
    }
}

/// Runs `gateway import` with the gateway configuration at `config_path`;
/// prints the report and returns the process exit code (0: everything
/// imported or already there; 2: some sessions conflicted or failed; 130:
/// interrupted).
///
/// # Errors
/// When the configuration, the store or the source cannot be opened.
pub async fn run(config_path: &Path, args: ImportArgs) -> anyhow::Result<i32> {
    crate::auth::validate_tenant(&args.tenant).map_err(anyhow::Error::msg)?;
    let config = Config::load(config_path)?;
    let target = &config.storage.mongodb;
    if config.storage.kind == crate::config::StorageType::Mongodb
        && target.uri.trim_end_matches('/') == args.source_uri.trim_end_matches('/')
        && target.database == args.source_database
    {
        anyhow::bail!(
            "--source-database {:?} is the gateway's own database on the same server; \
             the gateway's collections (sessions, agents, messages, …) would mix with the \
             original's: import into another storage.mongodb.database",
            args.source_database
        );
    }
    let store = crate::store::open(&config).await.with_context(|| {
        if config.storage.kind == crate::config::StorageType::Embedded {
            "opening the gateway's store (the embedded store has a single writer: \
             stop the gateway using it first)"
        } else {
            "opening the gateway's store"
        }
    })?;
    store.set_retention(config.retention.policy().map_err(anyhow::Error::msg)?);

    let mut opts = mongodb::options::ClientOptions::parse(&args.source_uri)
        .await
        .context("parsing --source-uri")?;
    opts.app_name
        .get_or_insert_with(|| "session-gateway-import".into());
    opts.server_selection_timeout
        .get_or_insert(Duration::from_secs(10));
    let client = mongodb::Client::with_options(opts).context("connecting to the source")?;
    let coll = client
        .database(&args.source_database)
        .collection::<Document>(&args.source_collection);

    let filter = if args.sessions.is_empty() {
        doc! {}
    } else {
        doc! { "$or": [
            { "_id": { "$in": &args.sessions } },
            { "session_id": { "$in": &args.sessions } },
        ] }
    };
    // The whole collection: the metadata count (no scan) is enough for progress.
    let total = if args.sessions.is_empty() {
        coll.estimated_document_count().await
    } else {
        coll.count_documents(filter.clone()).await
    };
    let total = total.with_context(|| {
        format!(
            "counting sessions in {}.{} at {}",
            args.source_database,
            args.source_collection,
            crate::config::redact_uri(&args.source_uri)
        )
    })?;
    if total == 0 {
        eprintln!(
            "import: no session documents in {}.{}; the original library's defaults are \
             database \"database_name\" and collection \"collection_name\" \
             (see --source-database and --source-collection)",
            args.source_database, args.source_collection
        );
    }

    let mut report = Report {
        source: serde_json::json!({
            "uri": crate::config::redact_uri(&args.source_uri),
            "database": args.source_database,
            "collection": args.source_collection,
        }),
        target: serde_json::json!({ "store": store.name(), "tenant": args.tenant }),
        dry_run: args.dry_run,
        interrupted: false,
        error: None,
        sessions: SessionCounts::default(),
        agents: Counts::default(),
        messages: Counts::default(),
        feedbacks: Counts::default(),
        conflicts: Vec::new(),
        failures: Vec::new(),
        notes: Vec::new(),
    };
    let mut notes: BTreeMap<&'static str, NoteSummary> = BTreeMap::new();

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "\nimport: interrupted; finishing the sessions in progress \
                     (Ctrl-C again to quit now; re-run to continue)"
                );
                stop.store(true, Ordering::SeqCst);
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        });
    }

    let progress = Progress::start(args.progress, total);
    let counters = progress.counters.clone();
    let convert_opts = ConvertOptions::new(&config.server, &config.limits, !args.no_provenance);
    let run = RunOptions {
        counters: counters.clone(),
        tenant: Tenant(args.tenant.clone()),
        on_conflict: args.on_conflict,
        dry_run: args.dry_run,
    };
    let cursor = coll
        .find(filter)
        .sort(doc! { "_id": 1 })
        .batch_size(16)
        .await
        .context("reading the source collection")?;
    let stop_reading = stop.clone();
    let outcomes = cursor
        .take_while(move |_| {
            let go = !stop_reading.load(Ordering::SeqCst);
            async move { go }
        })
        .map(|doc| {
            let (store, run, convert_opts) = (store.clone(), &run, &convert_opts);
            async move {
                let doc = doc.map_err(|e| e.to_string())?;
                Ok::<_, String>(match legacy::convert(&doc, convert_opts) {
                    Ok(plan) => import_session(&*store, run, plan).await,
                    Err(reason) => Outcome {
                        session_id: legacy::doc_label(&doc),
                        status: Status::Failed(reason),
                        agents: Counts::default(),
                        messages: Counts::default(),
                        feedbacks: Counts::default(),
                        notes: Vec::new(),
                    },
                })
            }
        })
        .buffer_unordered(usize::from(args.concurrency));
    let mut outcomes = std::pin::pin!(outcomes);

    while let Some(next) = outcomes.next().await {
        let o = match next {
            Ok(o) => o,
            Err(e) => {
                report.error = Some(format!("reading the source failed: {e}"));
                report.interrupted = true;
                break;
            }
        };
        counters.sessions.fetch_add(1, Ordering::Relaxed);
        report.sessions.seen += 1;
        report.agents.add(o.agents);
        report.messages.add(o.messages);
        report.feedbacks.add(o.feedbacks);
        for (kind, text) in o.notes {
            let n = notes.entry(kind).or_insert_with(|| NoteSummary {
                kind: kind.to_owned(),
                count: 0,
                example: format!("{}: {text}", o.session_id),
                sessions: Vec::new(),
            });
            n.count += 1;
            if n.sessions.len() < 5 && !n.sessions.contains(&o.session_id) {
                n.sessions.push(o.session_id.clone());
            }
        }
        let s = &mut report.sessions;
        match o.status {
            Status::Imported => s.imported += 1,
            Status::Resumed => s.resumed += 1,
            Status::Unchanged => s.unchanged += 1,
            Status::Replaced => s.replaced += 1,
            Status::Conflict(reason) => {
                s.conflicting += 1;
                counters.conflicts.fetch_add(1, Ordering::Relaxed);
                report.conflicts.push(Problem {
                    session_id: o.session_id,
                    reason,
                });
            }
            Status::Failed(reason) => {
                s.failed += 1;
                counters.failed.fetch_add(1, Ordering::Relaxed);
                report.failures.push(Problem {
                    session_id: o.session_id,
                    reason,
                });
            }
        }
    }
    progress.finish().await;
    if stop.load(Ordering::SeqCst) {
        report.interrupted = true;
    }
    report.notes = notes.into_values().collect();
    report
        .conflicts
        .sort_by(|a, b| a.session_id.cmp(&b.session_id));
    report
        .failures
        .sort_by(|a, b| a.session_id.cmp(&b.session_id));

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(if report.error.is_some() {
        1
    } else if stop.load(Ordering::SeqCst) {
        130
    } else if report.sessions.conflicting > 0 || report.sessions.failed > 0 {
        2
    } else {
        0
    })
}

struct RunOptions {
    counters: Arc<progress::Counters>,
    tenant: Tenant,
    on_conflict: OnConflict,
    dry_run: bool,
}

/// Imports (or resumes, or checks) one converted session.
async fn import_session(
    store: &dyn SessionStore,
    run: &RunOptions,
    mut plan: SessionPlan,
) -> Outcome {
    let mut out = Outcome {
        session_id: plan.session_id.clone(),
        status: Status::Unchanged,
        agents: Counts::default(),
        messages: Counts::default(),
        feedbacks: Counts::default(),
        notes: std::mem::take(&mut plan.notes),
    };
    let totals = (
        plan.agents.len() as u64,
        plan.agents
            .iter()
            .map(|a| a.messages.len() as u64)
            .sum::<u64>(),
        plan.feedbacks.len() as u64,
    );
    let finish = |mut out: Outcome, status: Status| {
        out.agents.skipped = totals.0 - out.agents.imported - out.agents.unchanged;
        out.messages.skipped = totals.1 - out.messages.imported - out.messages.unchanged;
        out.feedbacks.skipped = totals.2 - out.feedbacks.imported - out.feedbacks.unchanged;
        out.status = status;
        out
    };

    let mut replaced = false;
    let todo = match inspect(store, &run.tenant, &plan).await {
        Ok(Ok(todo)) => todo,
        Ok(Err(conflict)) if run.on_conflict == OnConflict::Skip => {
            return finish(out, Status::Conflict(conflict));
        }
        Ok(Err(_)) => {
            if !run.dry_run
                && let Err(e) = store.delete_session(&run.tenant, &plan.session_id).await
            {
                return finish(out, Status::Failed(format!("deleting to replace: {e}")));
            }
            replaced = true;
            Todo::fresh(&plan)
        }
        Err(e) => return finish(out, Status::Failed(format!("reading the gateway: {e}"))),
    };
    for ((exists, done), _) in todo.agents.iter().zip(&plan.agents) {
        out.agents.unchanged += u64::from(*exists);
        out.messages.unchanged += *done as u64;
    }
    out.feedbacks.unchanged += todo.feedbacks_done as u64;
    if todo.is_complete(&plan) {
        return finish(out, Status::Unchanged);
    }
    let status = if replaced {
        Status::Replaced
    } else if todo.create_session {
        Status::Imported
    } else {
        Status::Resumed
    };
    if run.dry_run {
        out.agents.imported = totals.0 - out.agents.unchanged;
        out.messages.imported = totals.1 - out.messages.unchanged;
        out.feedbacks.imported = totals.2 - out.feedbacks.unchanged;
        return finish(out, status);
    }
    match write(store, run, &plan, &todo, &mut out).await {
        Ok(()) => finish(out, status),
        Err(e) => finish(out, Status::Failed(format!("writing: {e}"))),
    }
}

/// Compares the gateway's state with the plan: what is left to write, or why
/// the two conflict.
async fn inspect(
    store: &dyn SessionStore,
    t: &Tenant,
    plan: &SessionPlan,
) -> Result<Result<Todo, String>, StoreError> {
    let sid = &plan.session_id;
    let session = match store.get_session(t, sid).await {
        Ok(s) => s,
        Err(StoreError::NotFound(_)) => return Ok(Ok(Todo::fresh(plan))),
        Err(e) => return Err(e),
    };
    if session.session_type != plan.session_type {
        return Ok(Err(format!(
            "session_type is {:?} in the gateway, {:?} in the source",
            session.session_type, plan.session_type
        )));
    }
    if let Some(diff) = first_difference(&session.metadata, &plan.metadata) {
        return Ok(Err(format!("metadata differs: {diff}")));
    }
    if let Some(extra) = session
        .agents
        .iter()
        .find(|a| !plan.agents.iter().any(|p| &&p.id == a))
    {
        return Ok(Err(format!(
            "the gateway has agent {extra:?}, which the source does not"
        )));
    }
    let mut agents = Vec::with_capacity(plan.agents.len());
    for a in &plan.agents {
        if !session.agents.contains(&a.id) {
            agents.push((false, 0));
            continue;
        }
        let stored = store.get_agent(t, sid, &a.id).await?;
        if let Some(diff) = first_difference(&stored.body, &a.body) {
            return Ok(Err(format!("agent {:?} differs: {diff}", a.id)));
        }
        let count = stored.message_count as usize;
        if count > a.messages.len() {
            return Ok(Err(format!(
                "agent {:?} has {count} messages in the gateway, {} in the source",
                a.id,
                a.messages.len()
            )));
        }
        const PAGE: usize = 500;
        let mut offset = 0;
        while offset < count {
            let (page, _) = store
                .list_messages(
                    t,
                    sid,
                    &a.id,
                    MessageRange::Page {
                        limit: PAGE as u64,
                        offset: offset as u64,
                    },
                )
                .await?;
            if page.is_empty() {
                break;
            }
            for m in &page {
                let Some(p) = a.messages.get(m.message_id as usize) else {
                    return Ok(Err(format!(
                        "agent {:?} has message {} in the gateway only",
                        a.id, m.message_id
                    )));
                };
                if !p.input().same_content(m) {
                    return Ok(Err(format!(
                        "agent {:?}: message {} has other content in the gateway",
                        a.id, m.message_id
                    )));
                }
            }
            offset += page.len();
        }
        agents.push((true, count));
    }
    let stored = store.list_feedbacks(t, sid).await?;
    if stored.len() > plan.feedbacks.len() {
        return Ok(Err(format!(
            "{} feedbacks in the gateway, {} in the source",
            stored.len(),
            plan.feedbacks.len()
        )));
    }
    for (i, (s, p)) in stored.iter().zip(&plan.feedbacks).enumerate() {
        let mut body = s.body.clone();
        body.shift_remove("created_at");
        if let Some(diff) = first_difference(&body, p) {
            return Ok(Err(format!("feedback {i} differs: {diff}")));
        }
    }
    Ok(Ok(Todo {
        create_session: false,
        agents,
        feedbacks_done: stored.len(),
    }))
}

/// Writes what `todo` says is missing, counting as it goes.
async fn write(
    store: &dyn SessionStore,
    run: &RunOptions,
    plan: &SessionPlan,
    todo: &Todo,
    out: &mut Outcome,
) -> Result<(), StoreError> {
    let (t, sid) = (&run.tenant, &plan.session_id);
    if todo.create_session {
        store
            .create_session(
                t,
                NewSession {
                    session_id: Some(sid.clone()),
                    session_type: Some(plan.session_type.clone()),
                    metadata: Some(plan.metadata.clone()),
                },
            )
            .await?;
    }
    for (a, (exists, done)) in plan.agents.iter().zip(&todo.agents) {
        if !exists {
            // Create-only: a concurrent writer's agent is never overwritten.
            store
                .put_agent(t, sid, &a.id, a.body.clone(), Some(0))
                .await?;
            out.agents.imported += 1;
        }
        for m in &a.messages[*done..] {
            match store.append_message(t, sid, &a.id, m.input()).await? {
                Appended::Created(_) => {
                    out.messages.imported += 1;
                    run.counters.messages.fetch_add(1, Ordering::Relaxed);
                }
                Appended::Existing(_) => out.messages.unchanged += 1,
            }
        }
    }
    for f in &plan.feedbacks[todo.feedbacks_done..] {
        store.add_feedback(t, sid, f.clone()).await?;
        out.feedbacks.imported += 1;
    }
    Ok(())
}

/// The first key whose value differs between two objects, described.
fn first_difference(stored: &JsonObject, wanted: &JsonObject) -> Option<String> {
    for (k, v) in wanted {
        match stored.get(k) {
            None => return Some(format!("{k:?} is missing in the gateway")),
            Some(s) if s != v => return Some(format!("{k:?} has another value in the gateway")),
            Some(_) => {}
        }
    }
    stored
        .keys()
        .find(|k| !wanted.contains_key(*k))
        .map(|k| format!("{k:?} is only in the gateway"))
}
