//! Logic both backends share, so each rule is written once: paging bounds,
//! the byte budget of a message read,
//! change → event type, message conflicts and gaps, and the payloads of the
//! events a change records.

use serde_json::Value;

use super::{AgentData, Appended, BatchOutcome, BatchWrite, BatchWritten, StoreError, StoreResult};
use crate::metadata::MetadataChange;
use crate::model::{Agent, EventType, JsonObject, Message, MessageInput, MessageRange, format_ms};

pub(crate) fn message_conflict(mid: u64) -> StoreError {
    StoreError::Conflict {
        code: "message_conflict",
        message: format!("message {mid} already exists with different content"),
    }
}

pub(crate) fn message_gap(mid: u64, next: u64) -> StoreError {
    StoreError::Conflict {
        code: "message_id_gap",
        message: format!("message_id {mid} is ahead of the next id {next}; ids are sequential"),
    }
}

/// Payload of `message.appended` / `message.updated` events.
///
/// Only ids: the log never holds message content, so a redaction (an update
/// of `message`/`redact_message`) leaves no copy of the original text behind
/// for the event window. SSE readers get the message as it is stored now (see
/// [`crate::stream::enrich`]).
pub(crate) fn message_event_payload(aid: &str, msg: &Message) -> Value {
    serde_json::json!({
        "agent_id": aid,
        "message_id": msg.message_id,
    })
}

/// Default bytes of stored messages one `list_messages` call reads (8 MiB,
/// the default `server.max_response_bytes`); each store's
/// `with_max_read_bytes` sets it.
pub(crate) const DEFAULT_MAX_READ_BYTES: usize = 8 << 20;

/// The byte budget of one `list_messages` call: messages are taken while the
/// stored bytes read stay within it, and the first always (a message larger
/// than the budget still makes progress); the rest of the range is left to
/// the caller.
pub(crate) struct ReadBudget {
    max: usize,
    used: usize,
    taken: bool,
}

impl ReadBudget {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            used: 0,
            taken: false,
        }
    }

    /// Whether a stored message of `size` bytes is read; counts it if so.
    pub(crate) fn take(&mut self, size: usize) -> bool {
        let used = self.used.saturating_add(size);
        if self.taken && used > self.max {
            return false;
        }
        (self.used, self.taken) = (used, true);
        true
    }
}

/// The ids `from..to` a message range selects of an agent with `total` messages.
pub(crate) fn message_bounds(range: MessageRange, total: u64) -> (u64, u64) {
    match range {
        MessageRange::Page { limit, offset } => {
            (offset.min(total), offset.saturating_add(limit).min(total))
        }
        MessageRange::Latest(n) => (total.saturating_sub(n), total),
    }
}

/// The event type of a metadata change.
pub(crate) fn metadata_event_type(change: &MetadataChange) -> EventType {
    match change {
        MetadataChange::Update(_) => EventType::MetadataUpdated,
        MetadataChange::Delete(_) => EventType::MetadataDeleted,
    }
}

/// The key of a session: `"<tenant>/<sid>"`. Ids cannot contain `/`, so the
/// keys of one tenant sort together (`"<tenant>/"` ≤ key < `"<tenant>0"`).
/// It is also the shard key of every MongoDB collection that holds session
/// data.
pub(crate) fn session_key(tenant: &str, sid: &str) -> String {
    format!("{tenant}/{sid}")
}

/// The bounds `[start, end)` of a tenant's keys from the cursor `after`.
pub(crate) fn tenant_key_range(tenant: &str, after: Option<&str>) -> (String, String) {
    let prefix = format!("{tenant}/");
    let start = after.map_or_else(|| prefix.clone(), |a| format!("{prefix}{a}"));
    // '0' sorts right after '/'.
    (start, format!("{tenant}0"))
}

pub(crate) fn session_exists(sid: &str) -> StoreError {
    StoreError::Conflict {
        code: "session_exists",
        message: format!("session {sid:?} already exists"),
    }
}

pub(crate) fn metadata_conflict(message: String) -> StoreError {
    StoreError::Invalid {
        code: "metadata_path_conflict",
        message,
    }
}

pub(crate) fn outbox_not_found(id: &str) -> StoreError {
    StoreError::NotFound(format!("outbox item {id:?} not found"))
}

/// The message an append stores as id `next`.
pub(crate) fn new_message(input: &MessageInput, next: u64, now: i64) -> Message {
    Message {
        message_id: next,
        message: input.message.clone(),
        redact_message: input
            .redact_message
            .clone()
            .filter(|r| r.get().trim() != "null"),
        event_loop_metrics: input.event_loop_metrics.clone().filter(|v| !v.is_null()),
        created_at: format_ms(now),
        updated_at: format_ms(now),
    }
}

/// What an append with a client-chosen id finds against the agent's next id.
pub(crate) enum AppendAt {
    /// The next id (or none given): store a new message.
    Next,
    /// An id already stored: an idempotent retry if the content is the same.
    Stored(u64),
}

/// Checks an append's id against the next one; a gap is refused.
pub(crate) fn append_at(input: &MessageInput, next: u64) -> StoreResult<AppendAt> {
    match input.message_id {
        Some(mid) if mid < next => Ok(AppendAt::Stored(mid)),
        Some(mid) if mid > next => Err(message_gap(mid, next)),
        _ => Ok(AppendAt::Next),
    }
}

/// The answer to an append of an id already stored.
pub(crate) fn append_retry(input: &MessageInput, stored: Message) -> StoreResult<Appended> {
    if input.same_content(&stored) {
        Ok(Appended::Existing(stored))
    } else {
        Err(message_conflict(stored.message_id))
    }
}

/// Payload of `session.created`.
pub(crate) fn created_payload(session_type: &str, metadata: &JsonObject) -> Value {
    serde_json::json!({ "session_type": session_type, "metadata": metadata })
}

/// Payload of `agent.updated`.
pub(crate) fn agent_payload(aid: &str, version: u64, created: bool) -> Value {
    serde_json::json!({ "agent_id": aid, "version": version, "created": created })
}

/// A feedback as stored (stamped `created_at`) and the payload of its event.
pub(crate) fn stamped_feedback(body: &JsonObject, now: i64) -> (JsonObject, Value) {
    let mut body = body.clone();
    body.insert("created_at".into(), format_ms(now).into());
    let payload = serde_json::json!({ "feedback": body });
    (body, payload)
}

/// Payload of `session.deleted` by a retention sweep (an API delete has `{}`).
pub(crate) fn expired_payload() -> Value {
    serde_json::json!({ "reason": "expired" })
}

/// Applies a metadata change to `before`: the result, the event type and
/// the event payload.
pub(crate) fn apply_metadata(
    before: &JsonObject,
    change: &MetadataChange,
) -> StoreResult<(crate::metadata::Applied, EventType, Value)> {
    let applied = crate::metadata::apply(before, change).map_err(metadata_conflict)?;
    let payload = crate::metadata::event_payload(change, &applied);
    Ok((applied, metadata_event_type(change), payload))
}

/// The answer to `PUT agent`: the agent as stored and whether it was
/// created (its first version).
pub(crate) fn put_agent_answer(
    aid: &str,
    body: JsonObject,
    created_at: i64,
    now: i64,
    (version, message_count): (u64, u64),
) -> (Agent, bool) {
    let agent = Agent {
        agent_id: aid.to_owned(),
        body,
        created_at,
        updated_at: now,
        version,
        message_count,
    };
    (agent, version == 1)
}

/// The answer to creating a session at `now`.
#[cfg(feature = "mongodb")]
pub(crate) fn created_session(
    sid: &str,
    session_type: &str,
    metadata: &JsonObject,
    now: i64,
) -> crate::model::Session {
    crate::model::Session {
        session_id: sid.to_owned(),
        session_type: session_type.to_owned(),
        created_at: format_ms(now),
        updated_at: format_ms(now),
        metadata: metadata.clone(),
        agents: Vec::new(),
    }
}

/// [`AgentData::write_batch`] one write at a time, each through its own method.
pub(crate) async fn write_one_by_one<S: AgentData + ?Sized>(
    store: &S,
    t: &crate::model::Tenant,
    sid: &str,
    writes: Vec<BatchWrite>,
) -> BatchOutcome {
    let mut out = BatchOutcome::default();
    for w in writes {
        let r = match w {
            BatchWrite::Append { aid, input } => store
                .append_message(t, sid, &aid, input)
                .await
                .map(BatchWritten::Appended),
            BatchWrite::PutAgent {
                aid,
                body,
                if_match,
            } => store
                .put_agent(t, sid, &aid, body, if_match)
                .await
                .map(|(a, created)| BatchWritten::Agent(a, created)),
            BatchWrite::UpdateMessage { aid, mid, patch } => store
                .update_message(t, sid, &aid, mid, patch)
                .await
                .map(BatchWritten::Message),
        };
        match r {
            Ok(w) => out.done.push(w),
            Err(e) => {
                out.failed = Some(e);
                break;
            }
        }
    }
    out
}
