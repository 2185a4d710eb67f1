//! What `gateway import` reports: counts per kind of record, the outcome of
//! each session, and the report as text (JSON with `--json`).

use serde::Serialize;

use serde_json::Value;

/// Imported, already present, or not written, per kind of record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Written by this run (or, with `--dry-run`, that would be).
    pub imported: u64,
    /// Already in the gateway with the same content.
    pub unchanged: u64,
    /// Not written: their session conflicts or failed.
    pub skipped: u64,
}

impl Counts {
    pub(super) fn add(&mut self, o: Counts) {
        self.imported += o.imported;
        self.unchanged += o.unchanged;
        self.skipped += o.skipped;
    }
}

/// Outcomes by session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SessionCounts {
    /// Documents read from the source.
    pub seen: u64,
    /// Created in the gateway by this run.
    pub imported: u64,
    /// Present partially (an interrupted run): completed.
    pub resumed: u64,
    /// Present with the same content: nothing written.
    pub unchanged: u64,
    /// Conflicting, deleted and imported again (`--on-conflict replace`).
    pub replaced: u64,
    /// Conflicting and left alone.
    pub conflicting: u64,
    /// Could not be imported (see `failures`).
    pub failed: u64,
}

/// A session that conflicted or failed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The session.
    pub session_id: String,
    /// Why.
    pub reason: String,
}

/// Changes made on the way (dropped placeholders, fields…), grouped by kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NoteSummary {
    /// Kind, e.g. `metadata_placeholder`.
    pub kind: String,
    /// How many times it happened.
    pub count: u64,
    /// One example.
    pub example: String,
    /// Up to five sessions it happened in.
    pub sessions: Vec<String>,
}

/// The final report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where sessions were read from (password redacted).
    pub source: Value,
    /// Store and tenant written to.
    pub target: Value,
    /// Nothing was written.
    pub dry_run: bool,
    /// Stopped early (Ctrl-C or a source error); re-run to continue.
    pub interrupted: bool,
    /// A fatal error reading the source, if any.
    pub error: Option<String>,
    /// By session.
    pub sessions: SessionCounts,
    /// Agents.
    pub agents: Counts,
    /// Messages (with ids, redactions and event-loop metrics).
    pub messages: Counts,
    /// Feedbacks.
    pub feedbacks: Counts,
    /// Sessions left alone because the gateway holds other content.
    pub conflicts: Vec<Problem>,
    /// Sessions that could not be imported.
    pub failures: Vec<Problem>,
    /// What was changed on the way.
    pub notes: Vec<NoteSummary>,
}

/// How one session went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Created by this run.
    Imported,
    /// Completed from a partial state.
    Resumed,
    /// Nothing to write.
    Unchanged,
    /// Deleted and imported again.
    Replaced,
    /// Left alone: the gateway holds other content.
    Conflict(String),
    /// Could not be imported.
    Failed(String),
}

/// The outcome of one session.
#[derive(Debug)]
pub struct Outcome {
    /// The session.
    pub session_id: String,
    /// How it went.
    pub status: Status,
    /// Agents.
    pub agents: Counts,
    /// Messages.
    pub messages: Counts,
    /// Feedbacks.
    pub feedbacks: Counts,
    /// Conversion notes.
    pub notes: Vec<(&'static str, String)>,
}

/// The report as text.
pub fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let verb = if r.dry_run {
        "would import"
    } else {
        "imported"
    };
    let _ = writeln!(
        s,
        "{} {}.{} ({}) into the {} store, tenant {}{}",
        if r.dry_run { "Dry run of" } else { "Import of" },
        r.source["database"].as_str().unwrap_or(""),
        r.source["collection"].as_str().unwrap_or(""),
        r.source["uri"].as_str().unwrap_or(""),
        r.target["store"].as_str().unwrap_or(""),
        r.target["tenant"],
        if r.interrupted {
            " — INTERRUPTED, re-run to continue"
        } else {
            ""
        },
    );
    let c = &r.sessions;
    let _ = writeln!(
        s,
        "  sessions:  {} read: {} {verb}, {} resumed, {} unchanged, {} replaced, {} conflicting, {} failed",
        c.seen, c.imported, c.resumed, c.unchanged, c.replaced, c.conflicting, c.failed
    );
    for (name, n) in [
        ("agents", r.agents),
        ("messages", r.messages),
        ("feedbacks", r.feedbacks),
    ] {
        let _ = writeln!(
            s,
            "  {:<10} {} {verb}, {} unchanged, {} skipped",
            format!("{name}:"),
            n.imported,
            n.unchanged,
            n.skipped
        );
    }
    if let Some(e) = &r.error {
        let _ = writeln!(s, "error: {e}");
    }
    const SHOWN: usize = 50;
    for (title, list) in [
        (
            "conflicts (left untouched; --on-conflict replace overwrites them)",
            &r.conflicts,
        ),
        ("failures", &r.failures),
    ] {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(s, "{title}:");
        for p in list.iter().take(SHOWN) {
            let _ = writeln!(s, "  {}: {}", p.session_id, p.reason);
        }
        if list.len() > SHOWN {
            let _ = writeln!(s, "  … and {} more (see --json)", list.len() - SHOWN);
        }
    }
    if !r.notes.is_empty() {
        let _ = writeln!(s, "notes:");
        for n in &r.notes {
            let _ = writeln!(s, "  {} ×{}: e.g. {}", n.kind, n.count, n.example);
        }
    }
    s
}
