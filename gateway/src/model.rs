//! The data model shared by the HTTP API and every store.
//!
//! Field names follow Strands Agents' `Session`, `SessionAgent` and
//! `SessionMessage` so an adapter can pass them through unchanged. Timestamps are
//! kept as Unix milliseconds internally and rendered as RFC 3339 UTC with
//! millisecond precision, identically on every store.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A JSON object with its key order preserved.
pub type JsonObject = Map<String, Value>;

/// The tenant every request belongs to. With auth disabled it is [`Tenant::DEFAULT`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tenant(pub String);

impl Tenant {
    /// Name of the tenant used when authentication is off.
    pub const DEFAULT: &'static str = "default";

    /// The tenant used when authentication is off.
    pub fn default_tenant() -> Self {
        Self(Self::DEFAULT.to_owned())
    }

    /// The tenant's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Renders Unix milliseconds as RFC 3339 UTC, e.g. `2026-01-02T03:04:05.678Z`.
pub fn format_ms(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Parses an RFC 3339 timestamp into Unix milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Longest identifier accepted for sessions and agents.
pub const MAX_ID_LEN: usize = 128;

/// Checks a session or agent id: 1–128 characters from `[A-Za-z0-9._:@-]`,
/// not starting with `.`. Ids appear in URLs and (for agents) in MongoDB field
/// names, so the alphabet is deliberately small.
pub fn validate_id(kind: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!("{kind} must be 1 to {MAX_ID_LEN} characters"));
    }
    if id.starts_with('.') {
        return Err(format!("{kind} must not start with '.'"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-')))
    {
        return Err(format!(
            "{kind} contains {c:?}; allowed are letters, digits and . _ : @ -"
        ));
    }
    Ok(())
}

/// A session as returned by `GET /v1/sessions/{sid}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Session {
    /// The client's id for the session.
    pub session_id: String,
    /// Free-form kind of session; `"AGENT"` unless the client says otherwise.
    pub session_type: String,
    /// When the session was created (RFC 3339 UTC).
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When anything in the session last changed (RFC 3339 UTC).
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// Client-owned metadata object (free-form; as shown after get-hooks).
    #[schema(value_type = Object)]
    pub metadata: JsonObject,
    /// Ids of the agents in the session, sorted.
    pub agents: Vec<String>,
}

/// What `POST /v1/sessions` asks for.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    /// Id to use; generated (UUID v4) when absent.
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9_:@-][A-Za-z0-9._:@-]{0,127}$")]
    pub session_id: Option<String>,
    /// Kind of session; defaults to `"AGENT"`.
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub session_type: Option<String>,
    /// Initial metadata: a free-form object whose top-level keys are plain
    /// field names (no `.`, no leading `$`, no NUL).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<JsonObject>,
}

/// Default `session_type`.
pub const DEFAULT_SESSION_TYPE: &str = "AGENT";

/// An agent's stored state. The client's fields are kept verbatim in `body`;
/// the server owns `agent_id`, `created_at`, `updated_at` and `version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    /// The agent's id within its session.
    pub agent_id: String,
    /// Every field the client sent (state, conversation_manager_state, internal_state, extras).
    pub body: JsonObject,
    /// When the agent was first stored (Unix ms).
    pub created_at: i64,
    /// When the agent was last written (Unix ms).
    pub updated_at: i64,
    /// Bumped on every write; `If-Match` compares against it.
    pub version: u64,
    /// Number of messages the agent has, which is also the next message id.
    pub message_count: u64,
}

impl Agent {
    /// The agent as the API shows it: the client's fields plus the server's.
    pub fn to_json(&self) -> Value {
        let mut out = self.body.clone();
        out.insert("agent_id".into(), Value::String(self.agent_id.clone()));
        out.insert("created_at".into(), format_ms(self.created_at).into());
        out.insert("updated_at".into(), format_ms(self.updated_at).into());
        out.insert("version".into(), self.version.into());
        out.insert("message_count".into(), self.message_count.into());
        Value::Object(out)
    }
}

/// Fields of an agent body the server owns and strips from what clients send.
pub const AGENT_SERVER_FIELDS: &[&str] = &[
    "agent_id",
    "created_at",
    "updated_at",
    "version",
    "message_count",
];

/// A stored message. `message` and `redact_message` are kept as the exact JSON
/// text the client sent, so they round-trip byte for byte.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Message {
    /// 0-based, sequential per agent.
    pub message_id: u64,
    /// The message itself, opaque (e.g. `{"role":"user","content":[…]}`).
    #[schema(value_type = Value)]
    pub message: Box<RawValue>,
    /// A redacted replacement for `message`, or null (opaque JSON).
    #[schema(value_type = Value)]
    pub redact_message: Option<Box<RawValue>>,
    /// Per-message metrics (latencyMs, inputTokens, …), or null.
    #[schema(value_type = Value)]
    pub event_loop_metrics: Option<Value>,
    /// When the message was appended (RFC 3339 UTC).
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When the message was last changed (RFC 3339 UTC).
    #[schema(format = DateTime)]
    pub updated_at: String,
}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.message_id == other.message_id
            && self.message.get() == other.message.get()
            && self.redact_message.as_ref().map(|r| r.get())
                == other.redact_message.as_ref().map(|r| r.get())
            && self.event_loop_metrics == other.event_loop_metrics
    }
}

/// The content of a message a client appends or replaces.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageInput {
    /// Explicit id (Strands always sends one); assigned atomically when absent.
    /// On append it must be the agent's next id, or an existing id with the
    /// same content (an idempotent retry).
    #[serde(default)]
    pub message_id: Option<u64>,
    /// The message, opaque JSON (any value), stored as the exact text sent.
    #[schema(value_type = Value)]
    pub message: Box<RawValue>,
    /// Redacted replacement, or null (opaque JSON).
    #[serde(default)]
    #[schema(value_type = Value)]
    pub redact_message: Option<Box<RawValue>>,
    /// Per-message metrics (any JSON value), or null.
    #[serde(default)]
    #[schema(value_type = Value)]
    pub event_loop_metrics: Option<Value>,
    /// Accepted and ignored: the server stamps its own times.
    #[serde(default)]
    #[schema(value_type = Value)]
    pub created_at: Option<Value>,
    /// Accepted and ignored: the server stamps its own times.
    #[serde(default)]
    #[schema(value_type = Value)]
    pub updated_at: Option<Value>,
}

impl MessageInput {
    /// Whether this input carries the same content as a stored message, which
    /// makes a re-sent append an idempotent retry.
    pub fn same_content(&self, stored: &Message) -> bool {
        same_json(&self.message, &stored.message)
            && match (&self.redact_message, &stored.redact_message) {
                (None, None) => true,
                (Some(a), Some(b)) => same_json(a, b),
                (Some(a), None) | (None, Some(a)) => a.get().trim() == "null",
            }
            && self.event_loop_metrics.as_ref().filter(|v| !v.is_null())
                == stored.event_loop_metrics.as_ref().filter(|v| !v.is_null())
    }
}

/// Same text, or the same JSON value. Two texts that cannot be parsed into
/// a tree (deeper than the parser's recursion limit) are the same only when
/// their text is, so a failed parse never makes different messages equal.
fn same_json(a: &RawValue, b: &RawValue) -> bool {
    a.get() == b.get()
        || matches!(
            (
                serde_json::from_str::<Value>(a.get()),
                serde_json::from_str::<Value>(b.get()),
            ),
            (Ok(x), Ok(y)) if x == y
        )
}

/// A partial update of a message (`PATCH …/messages/{mid}`). At least one
/// field must be given.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessagePatch {
    /// New message content (opaque JSON; null is the same as absent).
    #[serde(default)]
    #[schema(schema_with = non_null_value)]
    pub message: Option<Box<RawValue>>,
    /// New redaction (opaque JSON; null clears it).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Value)]
    pub redact_message: Option<Option<Box<RawValue>>>,
    /// New metrics (any JSON value; null clears them).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Value)]
    pub event_loop_metrics: Option<Option<Value>>,
}

fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl MessagePatch {
    /// Applies the patch to a stored message, stamping `updated_at`.
    pub fn apply(&self, m: &mut Message, now: i64) {
        if let Some(msg) = &self.message {
            m.message = msg.clone();
        }
        if let Some(r) = &self.redact_message {
            m.redact_message = r.clone().filter(|v| v.get().trim() != "null");
        }
        if let Some(e) = &self.event_loop_metrics {
            m.event_loop_metrics = e.clone().filter(|v| !v.is_null());
        }
        m.updated_at = format_ms(now);
    }

    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.message.is_none() && self.redact_message.is_none() && self.event_loop_metrics.is_none()
    }
}

/// Which messages a list request wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageRange {
    /// Ascending by id from `offset`, at most `limit` (Strands `list_messages`).
    Page {
        /// Maximum number returned.
        limit: u64,
        /// Index of the first message.
        offset: u64,
    },
    /// The last `n` messages, ascending by id.
    Latest(u64),
}

/// A feedback record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    /// The feedback object: `rating`, optional `comment`, extra fields, `created_at`.
    pub body: JsonObject,
}

/// Checks a feedback object: `rating` must be `"up"`, `"down"` or null/absent,
/// `comment` a string when present.
pub fn validate_feedback(body: &JsonObject) -> Result<(), String> {
    match body.get("rating") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "up" || s == "down" => {}
        Some(other) => {
            return Err(format!(
                "rating must be \"up\", \"down\" or null, got {other}"
            ));
        }
    }
    match body.get("comment") {
        None | Some(Value::Null) | Some(Value::String(_)) => Ok(()),
        Some(_) => Err("comment must be a string".into()),
    }
}

/// The kinds of change the event log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum EventType {
    /// A session was created.
    #[serde(rename = "session.created")]
    SessionCreated,
    /// A session and everything in it was deleted.
    #[serde(rename = "session.deleted")]
    SessionDeleted,
    /// An agent was created or replaced.
    #[serde(rename = "agent.updated")]
    AgentUpdated,
    /// A message was appended.
    #[serde(rename = "message.appended")]
    MessageAppended,
    /// A message was replaced or patched.
    #[serde(rename = "message.updated")]
    MessageUpdated,
    /// Metadata paths were set.
    #[serde(rename = "metadata.updated")]
    MetadataUpdated,
    /// Metadata paths were removed.
    #[serde(rename = "metadata.deleted")]
    MetadataDeleted,
    /// A feedback was added.
    #[serde(rename = "feedback.added")]
    FeedbackAdded,
}

impl EventType {
    /// The wire name, e.g. `message.appended`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SessionCreated => "session.created",
            Self::SessionDeleted => "session.deleted",
            Self::AgentUpdated => "agent.updated",
            Self::MessageAppended => "message.appended",
            Self::MessageUpdated => "message.updated",
            Self::MetadataUpdated => "metadata.updated",
            Self::MetadataDeleted => "metadata.deleted",
            Self::FeedbackAdded => "feedback.added",
        }
    }
}

/// One committed change, recorded atomically with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Tenant of the session.
    pub tenant: String,
    /// Session the change happened in.
    pub session_id: String,
    /// Type of the session (hooks and retention use it).
    pub session_type: String,
    /// Per-session sequence number, starting at 1, strictly increasing.
    pub seq: u64,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When it was committed (Unix ms).
    pub ts: i64,
    /// Details of the change; shape depends on `kind`.
    pub payload: Value,
}

/// The schema of new message content: any JSON value but null.
fn non_null_value() -> utoipa::openapi::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([
            Type::Object,
            Type::Array,
            Type::String,
            Type::Number,
            Type::Boolean,
        ]))
        .description(Some(
            "New message content: any JSON value but null (opaque)",
        ))
        .into()
}
