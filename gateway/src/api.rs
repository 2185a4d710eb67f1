//! The bodies and parameters of the HTTP API, as the handlers send them and
//! the OpenAPI document ([`crate::openapi`]) describes them: one type per
//! shape, serialized by the handler and deriving its schema, so the document
//! cannot drift from the answers.
//!
//! Model types ([`crate::model`]) derive their own schemas; this module holds
//! the envelopes around them (lists, pages, batch results), the admin views,
//! the path parameters, and hand-written schemas for the free-form JSON
//! objects (agents, metadata, feedback) that the gateway keeps verbatim.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{Value, json};
use utoipa::openapi::schema::{
    AdditionalProperties, KnownFormat, ObjectBuilder, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{IntoParams, IntoResponses, PartialSchema, ToSchema};

use crate::config::{BreakerConfig, HookPhase, InstanceMode, OnError};
use crate::model::{EventType, JsonObject, Message, Session, format_ms};
use crate::store::OutboxState;

// ---------------------------------------------------------------------------
// Error answers shared by many routes (each `#[utoipa::path]` lists them by
// type; the body is the uniform error, `error::ErrorBody`).

/// 400 on a route whose only input is the session id in its path.
#[derive(IntoResponses)]
#[response(status = 400, description = "`invalid_session_id` or `invalid_path`")]
pub struct BadSessionPath;

/// 404 on a route under `/v1/sessions/{sid}`.
#[derive(IntoResponses)]
#[response(status = 404, description = "`not_found`: no such session")]
pub struct NoSuchSession;

/// 404 on a route under `/v1/sessions/{sid}/agents/{aid}`.
#[derive(IntoResponses)]
#[response(status = 404, description = "`not_found`: no such session or agent")]
pub struct NoSuchAgent;

/// 404 on a route under `…/messages/{mid}`.
#[derive(IntoResponses)]
#[response(
    status = 404,
    description = "`not_found`: no such session, agent or message"
)]
pub struct NoSuchMessage;

// ---------------------------------------------------------------------------
// Parameters.

/// Pattern of a dotted metadata path: non-empty segments not starting with `$`, no NUL.
pub const METADATA_PATH: &str = r"^[^.$\x00][^.\x00]*(\.[^.$\x00][^.\x00]*)*$";

/// Pattern of session and agent ids.
pub const ID_PATTERN: &str = r"^[A-Za-z0-9_:@-][A-Za-z0-9._:@-]{0,127}$";

/// Path parameters of a session's endpoints.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SessionPath {
    /// The session's id.
    #[param(value_type = SessionId)]
    pub sid: String,
}

/// Path parameters of an agent's endpoints.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AgentPath {
    /// The session's id.
    #[param(value_type = SessionId)]
    pub sid: String,
    /// The agent's id.
    #[param(value_type = AgentId)]
    pub aid: String,
}

/// Path parameters of one message's endpoints.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct MessagePath {
    /// The session's id.
    #[param(value_type = SessionId)]
    pub sid: String,
    /// The agent's id.
    #[param(value_type = AgentId)]
    pub aid: String,
    /// Message id: 0-based, sequential per agent.
    pub mid: u64,
}

/// `state` of `GET /v1/admin/outbox`.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum OutboxStateParam {
    /// Waiting for (re)delivery.
    Pending,
    /// Given up on; kept until retried.
    Dead,
}

/// Declares a schema written by hand (free-form objects, patterns).
macro_rules! manual_schema {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $schema:expr) => {
        $(#[$doc])*
        pub struct $ty;

        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                let schema: Schema = $schema.into();
                RefOr::T(schema)
            }
        }

        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

fn object() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::Object)
}

fn date_time() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
}

fn count() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(0))
}

fn free_form(b: ObjectBuilder) -> ObjectBuilder {
    b.additional_properties(Some(AdditionalProperties::FreeForm(true)))
}

manual_schema!(
    /// An agent id (the pattern of [`crate::model::validate_id`]).
    AgentId,
    "AgentId",
    ObjectBuilder::new().schema_type(Type::String).pattern(Some(ID_PATTERN)).description(Some(
        "Agent id: 1 to 128 characters from `[A-Za-z0-9._:@-]`, not starting with `.`"
    ))
);

manual_schema!(
    /// A session id (the pattern of [`crate::model::validate_id`]).
    SessionId,
    "SessionId",
    ObjectBuilder::new().schema_type(Type::String).pattern(Some(ID_PATTERN)).description(Some(
        "Session id: 1 to 128 characters from `[A-Za-z0-9._:@-]`, not starting with `.`"
    ))
);

manual_schema!(
    /// `metadata.<path>=<value>` filters of `GET /v1/sessions`, as one
    /// exploded form-style object parameter.
    MetadataFilter,
    "MetadataFilter",
    object()
        .description(Some(
            "Free-form query parameters `metadata.<path>=<value>`: each property name is `metadata.` followed by a \
             dotted path (segments non-empty, not starting with `$`); each value is matched as a JSON scalar when \
             it parses as one (`5`, `true`, `null`, `\"5\"`), otherwise as a string."
        ))
        .property_names(Some(
            ObjectBuilder::new().schema_type(Type::String).pattern(Some(r"^metadata\.[^.$\x00][^.\x00]*(\.[^.$\x00][^.\x00]*)*$"))
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(ObjectBuilder::new().schema_type(Type::String).into()))))
        .examples([json!({ "metadata.status": "active", "metadata.profile.tier": "gold" })])
);

// ---------------------------------------------------------------------------
// Envelopes around model types.

/// A page of `GET /v1/sessions`.
#[derive(Serialize, ToSchema)]
pub struct SessionList {
    /// The sessions, ordered by id.
    pub sessions: Vec<Session>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// The answer of `POST /v1/sessions/batch-get`.
#[derive(Serialize, ToSchema)]
pub struct BatchGetResult {
    /// The sessions found.
    pub sessions: Vec<Session>,
    /// The requested ids that do not exist.
    pub missing: Vec<String>,
}

/// One result of `POST /v1/sessions/{sid}/batch`.
#[derive(Serialize, ToSchema)]
pub struct BatchWriteItem {
    /// The status the operation's own endpoint would have answered (200 or 201).
    pub status: u16,
    /// The body it would have answered: the message or the agent.
    #[schema(value_type = Object)]
    pub body: Value,
}

/// The error answer of `POST /v1/sessions/{sid}/batch` when an operation
/// failed after others were checked: the uniform error, which operation
/// failed, and the results of those written before it.
#[derive(Serialize, ToSchema)]
pub struct BatchFailure {
    /// The failed operation's error, as its own endpoint would have answered.
    #[schema(value_type = crate::error::ErrorDetail)]
    pub error: Value,
    /// Index (0-based) of the operation that failed; none after it ran.
    pub failed_op: usize,
    /// The results of the operations before it, which stay written.
    pub results: Vec<BatchWriteItem>,
}

/// The answer of `POST /v1/sessions/{sid}/batch`.
#[derive(Serialize, ToSchema)]
pub struct BatchWriteResult {
    /// One result per operation, in order.
    pub results: Vec<BatchWriteItem>,
}

/// The answer of `POST /v1/sessions`: the session as get-hooks show it, and
/// `metadata_withheld` when a get-hook failed after the session was stored.
#[derive(Serialize, ToSchema)]
pub struct CreatedSession {
    /// The client's id for the session.
    pub session_id: String,
    /// Kind of session.
    pub session_type: String,
    /// When the session was created.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When anything in the session last changed.
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// The metadata after get-hooks; `{}` when `metadata_withheld` is present.
    #[schema(value_type = Object)]
    pub metadata: JsonObject,
    /// Ids of the agents in the session.
    pub agents: Vec<String>,
    /// Present only when the metadata is withheld (a display failure after
    /// the commit, not a failed write).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_withheld: Option<Withheld>,
}

impl CreatedSession {
    /// `session` as shown, with why its metadata was withheld, if it was.
    pub fn new(session: Session, metadata_withheld: Option<Withheld>) -> Self {
        Self {
            session_id: session.session_id,
            session_type: session.session_type,
            created_at: session.created_at,
            updated_at: session.updated_at,
            metadata: session.metadata,
            agents: session.agents,
            metadata_withheld,
        }
    }
}

/// Why metadata was withheld from an answer or an SSE event: a get-hook
/// failed after the change was committed.
#[derive(Serialize, ToSchema)]
pub struct Withheld {
    /// The error a read would have answered, e.g. `hook_failed`.
    pub code: String,
    /// What failed (names the plugin).
    pub message: String,
}

manual_schema!(
    /// An agent as the API shows it: the client's fields plus the server's.
    AgentView,
    "Agent",
    free_form(object())
        .description(Some(
            "The agent's fields as the client sent them (e.g. `state`, `conversation_manager_state`, \
             `internal_state`, extras) plus the server-owned ones."
        ))
        .property("agent_id", ObjectBuilder::new().schema_type(Type::String).description(Some("The agent's id")))
        .property("created_at", date_time().description(Some("When the agent was first stored")))
        .property("updated_at", date_time().description(Some("When the agent was last written")))
        .property("version", count().description(Some("Bumped on every write; the `ETag` and `If-Match` value")))
        .property("message_count", count().description(Some("Number of messages, which is also the next message id")))
        .required("agent_id")
        .required("created_at")
        .required("updated_at")
        .required("version")
        .required("message_count")
);

manual_schema!(
    /// The body of `PUT …/agents/{aid}`.
    AgentBody,
    "AgentBody",
    free_form(object())
        .description(Some(
            "The agent's JSON object (Strands `SessionAgent`), kept verbatim; extra fields are allowed. The \
             server-owned `created_at`, `updated_at`, `version` and `message_count` are ignored; `agent_id`, when \
             given, must equal the path's. Nesting is limited by `limits.max_json_depth`."
        ))
        .property("agent_id", ObjectBuilder::new().schema_type(Type::String).description(Some("Must equal the path's `aid`")))
        .property("state", free_form(object()).description(Some("The agent's state (free-form)")))
        .property("conversation_manager_state", free_form(object()).description(Some("Conversation manager state (free-form)")))
        .property("internal_state", free_form(object()).description(Some("Internal state (free-form)")))
        .examples([json!({ "state": {}, "conversation_manager_state": {} })])
);

/// The answer of `GET /v1/sessions/{sid}/agents`.
#[derive(Serialize, ToSchema)]
pub struct AgentList {
    /// The session's agents.
    #[schema(value_type = Vec<AgentView>)]
    pub agents: Vec<Value>,
}

/// The answer of `GET …/messages`.
///
/// Schema only: the handler writes the page as it reads it, within the byte
/// budget, without building it in memory; `tests/openapi.rs` checks the two
/// agree.
#[derive(ToSchema)]
pub struct MessageList {
    /// The messages, ascending by id: at most `server.max_page_size`, and cut
    /// short (at least one) where they would exceed `server.max_response_bytes`.
    pub messages: Vec<Message>,
    /// The agent's message count.
    pub total: u64,
    /// The `offset` that continues after the last message returned; null
    /// when no message follows it.
    #[schema(required = true)]
    pub next_offset: Option<u64>,
    /// True when the page holds fewer messages than asked for (by `limit` or
    /// `latest`) because of the page size or the byte budget: continue at
    /// `next_offset`.
    pub truncated: bool,
}

manual_schema!(
    /// A session's metadata.
    Metadata,
    "Metadata",
    free_form(object()).description(Some("The session's metadata: a free-form JSON object"))
);

manual_schema!(
    /// The body of `PATCH /v1/sessions/{sid}/metadata`.
    MetadataPatch,
    "MetadataPatch",
    free_form(object())
        .description(Some(
            "Dotted paths to values: `{\"status\":\"active\",\"profile.tier\":\"gold\"}` sets `status` and \
             `profile.tier`, creating intermediate objects. Paths have non-empty segments not starting with `$`; \
             nested object keys contain no `.`, leading `$` or NUL. At most `server.max_patch_keys` (default 100) \
             keys and `limits.max_metadata_bytes` of JSON."
        ))
        .min_properties(Some(1))
        .property_names(Some(ObjectBuilder::new().schema_type(Type::String).pattern(Some(METADATA_PATH))))
        .examples([json!({ "status": "active", "profile.tier": "gold" })])
);

fn rating() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .enum_values(Some([json!("up"), json!("down"), Value::Null]))
        .description(Some("`\"up\"`, `\"down\"` or null"))
}

fn comment() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .description(Some("Free text"))
}

manual_schema!(
    /// The body of `POST /v1/sessions/{sid}/feedbacks`.
    FeedbackInput,
    "FeedbackInput",
    free_form(object())
        .description(Some(
            "A feedback: `rating`, an optional `comment` and any extra fields (nested keys contain no `.`, leading \
             `$` or NUL); a given `created_at` is replaced by the server's."
        ))
        .property("rating", rating())
        .property("comment", comment())
        .examples([json!({ "rating": "up", "comment": "helpful" })])
);

manual_schema!(
    /// A stored feedback.
    Feedback,
    "Feedback",
    free_form(object())
        .description(Some("A stored feedback: the fields sent (after before-hooks) plus `created_at`"))
        .property("rating", rating())
        .property("comment", comment())
        .property("created_at", date_time().description(Some("When the feedback was stored")))
        .required("created_at")
);

/// The answer of `GET /v1/sessions/{sid}/feedbacks`.
#[derive(Serialize, ToSchema)]
pub struct FeedbackList {
    /// The feedbacks, oldest first.
    #[schema(value_type = Vec<Feedback>)]
    pub feedbacks: Vec<JsonObject>,
}

// ---------------------------------------------------------------------------
// Server-Sent Events.

/// `data` of an SSE event: one committed change.
#[derive(Serialize, ToSchema)]
pub struct StreamEvent<'a> {
    /// Per-session sequence number (also the SSE `id`).
    pub seq: u64,
    /// What happened (also the SSE `event`).
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When it was committed.
    #[schema(format = DateTime)]
    pub ts: String,
    /// The session.
    pub session_id: &'a str,
    /// Details of the change; the shape depends on `type`. Metadata in it
    /// (`session.created`: `metadata`; `metadata.*`: `change`, `changed`,
    /// `values`) is shaped by get-hooks as a read would be; when a get-hook
    /// fails it is emptied and `metadata_withheld` (`{"code","message"}`) says so.
    #[schema(value_type = Value)]
    pub payload: &'a Value,
}

/// `data` of an SSE `event: reset`: events were skipped.
#[derive(Serialize, ToSchema)]
pub struct ResetEvent {
    /// Why (which events expired or do not exist).
    pub reason: String,
    /// The stream goes on after this event id.
    pub resume_after: u64,
}

// ---------------------------------------------------------------------------
// Probes.

/// The answer of `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `"ok"`.
    #[schema(value_type = String, pattern = "^ok$")]
    pub status: &'static str,
}

/// The answer of `GET /readyz`.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// Always `"ready"`.
    #[schema(value_type = String, pattern = "^ready$")]
    pub status: &'static str,
    /// Which store answered: `embedded` or `mongodb`.
    #[schema(value_type = String)]
    pub store: &'static str,
}

// ---------------------------------------------------------------------------
// Admin.

/// One loaded plugin. The call statistics are process-wide, so they are
/// shown to operator keys only; an `admin` answer leaves them out.
#[derive(Serialize, ToSchema)]
pub struct PluginInfo {
    /// The hook's name in `gateway.toml`.
    pub name: String,
    /// Path of the `.wasm` file.
    pub wasm: String,
    /// sha256 (hex) of the loaded file.
    pub sha256: String,
    /// Events the hook subscribes to (`metadata.update`, `metadata.delete`,
    /// `metadata.get`, `feedback.add`, `message.append`, `message.update`).
    pub events: Vec<String>,
    /// When it runs.
    pub phase: HookPhase,
    /// Instance mode.
    pub instance: InstanceMode,
    /// Failure policy.
    pub on_error: OnError,
    /// The WIT interfaces the component exports.
    pub exports: Vec<&'static str>,
    /// The WIT package the component is served as, e.g. `gateway:hooks@0.1.0`.
    pub wit: String,
    /// When this version was loaded.
    #[schema(format = DateTime)]
    pub loaded_at: String,
    /// Calls so far (operator keys only, like the other counters).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub calls: Option<u64>,
    /// Failed calls so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub errors: Option<u64>,
    /// Fresh instances calls have taken so far (`per-call`: one per call).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub instantiations: Option<u64>,
    /// `publish` calls refused (target not granted).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub publish_refused: Option<u64>,
    /// Average call latency, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub latency_us_avg: Option<u64>,
    /// Longest call latency, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub latency_us_max: Option<u64>,
    /// Per-tenant quarantine after repeated failures.
    pub breaker: BreakerInfo,
    /// Why the last reload of this plugin failed (the previous version serves), or null.
    #[schema(required = true)]
    pub last_error: Option<String>,
}

/// A plugin's breaker: its settings and what it has done.
#[derive(Serialize, ToSchema)]
pub struct BreakerInfo {
    /// The `breaker` settings in force.
    pub config: BreakerConfig,
    /// Times the plugin was quarantined for a tenant (operator keys only,
    /// like the other counters).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub trips: Option<u64>,
    /// Calls skipped (given the `on_error` outcome) during quarantines.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub skipped_calls: Option<u64>,
    /// Calls of suspect tenants, run on the low-priority thread.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub isolated_calls: Option<u64>,
    /// Calls of suspect tenants run inline because the low-priority thread was busy.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub isolated_inline_calls: Option<u64>,
    /// Tenants for whom the plugin is quarantined now (for an `admin` key,
    /// at most its own).
    pub quarantined_tenants: Vec<String>,
}

/// The outcome of a (re)load.
#[derive(Serialize, ToSchema)]
pub struct ReloadReport {
    /// When it ran (RFC 3339; empty before the first reload).
    pub at: String,
    /// Plugins (re)compiled and now live.
    pub loaded: Vec<String>,
    /// Plugins whose file and config did not change.
    pub unchanged: Vec<String>,
    /// Plugins that failed, as `[name, reason]` pairs; their previous version keeps serving.
    #[schema(value_type = Vec<Vec<String>>)]
    pub failed: Vec<(String, String)>,
    /// Plugins removed from the config.
    pub removed: Vec<String>,
    /// Why the config file failed to load (then nothing changed), or null.
    #[schema(required = true)]
    pub config_error: Option<String>,
}

impl From<crate::hooks::ReloadReport> for ReloadReport {
    fn from(r: crate::hooks::ReloadReport) -> Self {
        let crate::hooks::ReloadReport {
            at,
            loaded,
            unchanged,
            failed,
            removed,
            config_error,
        } = r;
        Self {
            at,
            loaded,
            unchanged,
            failed,
            removed,
            config_error,
        }
    }
}

/// The answer of `GET /v1/admin/plugins`.
#[derive(Serialize, ToSchema)]
pub struct PluginList {
    /// Loaded plugins.
    pub plugins: Vec<PluginInfo>,
    /// The last (re)load.
    pub last_reload: ReloadReport,
}

/// The answer of `POST /v1/admin/reload`.
#[derive(Serialize, ToSchema)]
pub struct ReloadResult {
    /// What the reload did.
    pub reload: ReloadReport,
}

/// A notification published by a hook.
#[derive(Serialize, ToSchema)]
pub struct OutboxItem {
    /// Stable id (also the message's dedup id).
    pub id: String,
    /// Logical target name.
    pub target: String,
    /// Plugin that published it.
    pub plugin: String,
    /// Tenant of the session the event came from.
    pub tenant: String,
    /// Session the event came from.
    pub session_id: String,
    /// Delivery state.
    #[schema(value_type = OutboxStateParam)]
    pub state: OutboxState,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// When it was queued.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Earliest time of the next attempt.
    #[schema(format = DateTime)]
    pub next_attempt_at: String,
    /// The last delivery error, or null.
    #[schema(required = true)]
    pub last_error: Option<String>,
    /// The published JSON payload; null when withheld.
    #[schema(value_type = Value)]
    pub payload: Value,
    /// True when `payload` is withheld: for admin (not operator) keys while
    /// a get-hook shapes metadata, since after-hooks publish from the change
    /// as stored.
    pub payload_withheld: bool,
}

impl OutboxItem {
    /// The item as the admin API shows it; `show_payload` false replaces the
    /// payload with null and sets `payload_withheld`.
    pub fn view(i: crate::store::OutboxItem, show_payload: bool) -> Self {
        let payload = if show_payload {
            serde_json::from_str::<Value>(&i.payload).unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        Self {
            id: i.id,
            target: i.target,
            plugin: i.plugin,
            tenant: i.tenant,
            session_id: i.session_id,
            state: i.state,
            attempts: i.attempts,
            created_at: format_ms(i.created_at),
            next_attempt_at: format_ms(i.next_attempt_at),
            last_error: i.last_error,
            payload,
            payload_withheld: !show_payload,
        }
    }
}

/// The answer of `GET /v1/admin/outbox`.
#[derive(Serialize, ToSchema)]
pub struct OutboxList {
    /// Items, oldest first.
    pub items: Vec<OutboxItem>,
    /// Items pending in total (of the caller's tenant, for an admin key).
    pub pending: u64,
    /// Dead items in total (of the caller's tenant, for an admin key).
    pub dead: u64,
    /// Delivered since start (operator keys only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub delivered: Option<u64>,
    /// Retries since start (operator keys only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub retried: Option<u64>,
    /// Items given up on since start (operator keys only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub dead_lettered: Option<u64>,
    /// Whether the dispatcher runs (operator keys only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub dispatcher_running: Option<bool>,
}

/// How a store error answers over HTTP (here, above both the store and the
/// error type, so neither knows the other).
impl From<crate::store::StoreError> for crate::error::AppError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            StoreError::NotFound(what) => Self::NotFound(what),
            StoreError::Conflict { code, message } => Self::Conflict { code, message },
            StoreError::VersionMismatch { expected, current } => Self::PreconditionFailed(format!(
                "If-Match version {expected} does not match current version {current}"
            )),
            StoreError::Invalid { code, message } => Self::Unprocessable { code, message },
            StoreError::Unavailable(message) => Self::Unavailable {
                code: "store_unavailable",
                message,
                retry_after: Some(1),
            },
            StoreError::OtherType(_) => Self::Conflict {
                code: "session_replaced",
                message: "the session was deleted and re-created while the request ran; retry"
                    .into(),
            },
            StoreError::Internal(message) => Self::Internal(message),
        }
    }
}
