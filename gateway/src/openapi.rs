//! The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json`.
//!
//! It is generated from the code: each handler in [`crate::routes`] carries a
//! `#[utoipa::path]` attribute (method, path, parameters, body, responses and
//! their error codes), the model types derive [`utoipa::ToSchema`], and this
//! module adds the shapes that exist only as JSON built in handlers, plus what
//! every operation shares (see [`Common`]):
//!
//! - every 4xx/5xx response carries the uniform error body
//!   `{"error":{"code","message"}}` ([`ErrorBody`]);
//! - the guard's answers (401, 403, 413, 429, 503 with `Retry-After`, 500) are
//!   shared responses under `components/responses`;
//! - `X-Request-Id` is accepted on every request and returned on every response;
//! - every endpoint but the public ones (`/healthz`, `/readyz`, `/metrics`,
//!   `/openapi.json`) takes `Authorization: Bearer <key>`.
//!
//! `gateway/tests/openapi.rs` checks that every `.route(...)` in
//! `routes/*.rs` is documented and nothing else is.

use std::borrow::Cow;
use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::link::Link;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{
    AdditionalProperties, KnownFormat, ObjectBuilder, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Ref, RefOr, Required, Response, ResponseBuilder, Schema};
use utoipa::{IntoParams, Modify, OpenApi, PartialSchema, ToSchema};

use crate::model::{EventType, Message, Session};

/// The document's root: every operation and the schemas they use.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Session Gateway",
        description = "Durable sessions for AI agents: sessions, per-agent state, messages, metadata, \
feedback and per-message metrics, with metadata and feedback hooks as sandboxed WebAssembly components.\n\n\
Every error is `{\"error\":{\"code\":\"snake_case_code\",\"message\":\"human text\"}}` with the matching \
status; a failed request writes nothing. Bodies are JSON (the `Content-Type` is not checked). Ids are 1 to \
128 characters from `[A-Za-z0-9._:@-]`, not starting with `.`.\n\n\
Every JSON body passes one rule before it is parsed or stored: objects/arrays nested at most \
`limits.max_json_depth` (32) levels inside the body's object (422 `too_deep`); no key twice in one object \
(400 `duplicate_key`); outside `message` and `redact_message` (kept as the exact text sent), integers within \
64 bits and other numbers must be finite 64-bit doubles of at most 17 significant digits (400 `invalid_number`).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        crate::routes::sessions::create,
        crate::routes::sessions::list,
        crate::routes::sessions::batch_get,
        crate::routes::sessions::read,
        crate::routes::sessions::delete,
        crate::routes::batch::batch,
        crate::routes::agents::list,
        crate::routes::agents::read,
        crate::routes::agents::put,
        crate::routes::messages::list,
        crate::routes::messages::append,
        crate::routes::messages::read,
        crate::routes::messages::replace,
        crate::routes::messages::patch,
        crate::routes::metadata::read,
        crate::routes::metadata::patch,
        crate::routes::metadata::delete,
        crate::routes::feedbacks::list,
        crate::routes::feedbacks::add,
        crate::routes::events::events,
        crate::routes::health::healthz,
        crate::routes::health::readyz,
        crate::routes::health::metrics,
        serve,
        crate::routes::admin::plugins,
        crate::routes::admin::reload,
        crate::routes::admin::outbox,
        crate::routes::admin::retry,
    ),
    components(schemas(ErrorBody, StreamEvent, ResetEvent, EventType, MetadataFilter, SessionId, OutboxStateParam)),
    modifiers(&Common),
    tags(
        (name = "sessions", description = "Create, read, list, batch-get and delete sessions"),
        (name = "agents", description = "Per-agent state with optimistic concurrency (`If-Match` / `ETag`)"),
        (name = "messages", description = "Append-only, idempotent message log per agent"),
        (name = "metadata", description = "Dotted-path metadata, through before- and get-hooks"),
        (name = "feedbacks", description = "Feedback records, through before-hooks"),
        (name = "events", description = "Live change feed (Server-Sent Events)"),
        (name = "health", description = "Probes, metrics and this document (no API key needed)"),
        (name = "admin", description = "Plugins and the notification outbox (admin role)"),
    )
)]
pub struct ApiDoc;

/// Paths served without an API key (kept in step with `limits::is_public`;
/// the test checks both agree).
pub const PUBLIC_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics", "/openapi.json"];

/// The document, as served.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    fix_link_keys(&mut doc);
    doc
}

/// The document as JSON text, built once.
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        serde_json::to_string_pretty(&document()).expect("the OpenAPI document serializes")
    })
}

/// utoipa 5.5 serializes a Link Object's fields in snake_case
/// (`operation_id`); OpenAPI spells them `operationId`, `operationRef` and
/// `requestBody`.
fn fix_link_keys(doc: &mut Value) {
    let responses = doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("responses").and_then(Value::as_object_mut))
        .flat_map(|rs| rs.values_mut());
    for response in responses {
        let Some(links) = response.get_mut("links").and_then(Value::as_object_mut) else {
            continue;
        };
        for link in links.values_mut().filter_map(Value::as_object_mut) {
            for (snake, camel) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(v) = link.remove(snake) {
                    link.insert(camel.to_owned(), v);
                }
            }
        }
    }
}

/// This document
///
/// The OpenAPI 3.1 document of this API. Needs no API key.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "health",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
pub async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json())
}

// ---------------------------------------------------------------------------
// What every operation shares.

/// Adds what every operation shares: the error body on error responses, the
/// guard's responses, `X-Request-Id`, and the bearer security scheme.
pub struct Common;

/// `components/responses` names of the shared responses.
const SHARED: &[(&str, &str)] = &[
    ("401", "Unauthorized"),
    ("403", "Forbidden"),
    ("413", "PayloadTooLarge"),
    ("429", "TooManyRequests"),
    ("500", "Internal"),
    ("503", "Unavailable"),
];

fn string_schema() -> Schema {
    ObjectBuilder::new().schema_type(Type::String).into()
}

fn request_id_header() -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(string_schema())
        .description(Some(
            "The request's id: the one sent, or a generated one; also in the logs",
        ))
        .build()
}

fn retry_after_header() -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0)),
        )
        .description(Some("Seconds before a retry may succeed"))
        .build()
}

fn error_response(description: &str, retry_after: bool) -> Response {
    let mut r = ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(ErrorBody::schema_ref()))
                .build(),
        )
        .header("X-Request-Id", request_id_header());
    if retry_after {
        r = r.header("Retry-After", retry_after_header());
    }
    r.build()
}

impl ErrorBody {
    fn schema_ref() -> RefOr<Schema> {
        RefOr::Ref(Ref::from_schema_name(ErrorBody::name()))
    }
}

impl Modify for Common {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.security_schemes.insert(
            "bearer".into(),
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <key>` (scheme name case-insensitive) with a key configured in \
                         `[[auth.keys]]` (bound to a tenant and a role: `agent`, `reader`, `admin` — `/v1/admin/*` \
                         for its own tenant — or `operator` — `/v1/admin/*` across tenants). Required when \
                         `auth.mode = \"keys\"`; with `auth.mode = \"none\"` (local development) it is ignored \
                         and every request acts as operator of the default tenant. A 401 carries \
                         `WWW-Authenticate: Bearer realm=\"session-gateway\"` (plus `error=\"invalid_token\"` \
                         when the key sent is not valid).",
                    ))
                    .build(),
            ),
        );
        let shared = [
            ("Unauthorized", {
                let mut r = error_response("`unauthorized`: no valid API key", false);
                r.headers.insert(
                    "WWW-Authenticate".into(),
                    HeaderBuilder::new()
                        .schema(string_schema())
                        .description(Some(
                            "The challenge (RFC 6750): `Bearer realm=\"session-gateway\"`, plus \
                             `error=\"invalid_token\"` when the key sent is not valid",
                        ))
                        .build(),
                );
                r
            }),
            (
                "Forbidden",
                error_response(
                    "`forbidden`: the key's role may not do this (`reader` writes, non-admin on `/v1/admin`, non-operator on cross-tenant admin operations)",
                    false,
                ),
            ),
            (
                "PayloadTooLarge",
                error_response(
                    "`payload_too_large`: the body is over `server.max_body_bytes`",
                    false,
                ),
            ),
            (
                "TooManyRequests",
                error_response("`rate_limited`: the key's rate limit is exceeded", true),
            ),
            (
                "Internal",
                error_response(
                    "`internal`: an unexpected failure (the detail is logged, not sent)",
                    false,
                ),
            ),
            (
                "Unavailable",
                error_response(
                    "`overloaded`, `request_timeout`, `store_unavailable` (these three with `Retry-After`) or \
                     `hook_failed` (a fail-closed hook failed)",
                    true,
                ),
            ),
        ];
        for (name, r) in shared {
            components.responses.insert(name.into(), RefOr::T(r));
        }
        // A message patch must change something. (Set here: utoipa-gen 5.5
        // renders `#[schema(min_properties = ..)]` as `maxProperties`.)
        if let Some(RefOr::T(Schema::Object(patch))) = components.schemas.get_mut("MessagePatch") {
            patch.min_properties = Some(1);
        }

        for (path, item) in &mut doc.paths.paths {
            let public = PUBLIC_PATHS.contains(&path.as_str());
            let admin = path.starts_with("/v1/admin");
            let ops = [
                (&mut item.get, false),
                (&mut item.put, true),
                (&mut item.post, true),
                (&mut item.delete, true),
                (&mut item.patch, true),
            ];
            for (op, writes) in ops {
                if let Some(op) = op.as_mut() {
                    complete(op, public, admin || writes);
                }
            }
        }
        add_links(doc);
    }
}

/// An OpenAPI link: a value of `from`'s response (for each of `statuses`)
/// feeds the `params` of each of the `targets` operations.
struct LinkSpec {
    from: &'static str,
    statuses: &'static [&'static str],
    targets: &'static [&'static str],
    /// Parameter name and runtime expression.
    params: &'static [(&'static str, &'static str)],
}

/// The links: a created session, agent or message feeds the operations on it.
const LINKS: &[LinkSpec] = &[
    LinkSpec {
        from: "create_session",
        statuses: &["201"],
        targets: &[
            "get_session",
            "delete_session",
            "list_agents",
            "put_agent",
            "get_metadata",
            "patch_metadata",
            "delete_metadata",
            "add_feedback",
            "list_feedbacks",
            "stream_events",
        ],
        params: &[("sid", "$response.body#/session_id")],
    },
    LinkSpec {
        from: "put_agent",
        statuses: &["200", "201"],
        targets: &["get_agent", "list_messages", "append_message"],
        params: &[
            ("sid", "$request.path.sid"),
            ("aid", "$response.body#/agent_id"),
        ],
    },
    LinkSpec {
        from: "append_message",
        statuses: &["200", "201"],
        targets: &["get_message", "replace_message", "patch_message"],
        params: &[
            ("sid", "$request.path.sid"),
            ("aid", "$request.path.aid"),
            ("mid", "$response.body#/message_id"),
        ],
    },
];

fn add_links(doc: &mut utoipa::openapi::OpenApi) {
    for LinkSpec {
        from,
        statuses,
        targets,
        params,
    } in LINKS
    {
        let op = doc.paths.paths.values_mut().flat_map(|item| {
            [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
        });
        let Some(op) = op
            .into_iter()
            .find(|op| op.operation_id.as_deref() == Some(from))
        else {
            panic!("link source {from} is not an operation");
        };
        for status in *statuses {
            let Some(RefOr::T(resp)) = op.responses.responses.get_mut(*status) else {
                panic!("link source {from} has no inline {status} response");
            };
            for target in *targets {
                let link = params
                    .iter()
                    .fold(Link::builder().operation_id(*target), |l, (name, value)| {
                        l.parameter(*name, *value)
                    });
                resp.links.insert((*target).into(), RefOr::T(link.build()));
            }
        }
    }
}

/// Adds the shared parts to one operation.
fn complete(op: &mut Operation, public: bool, may_forbid: bool) {
    // An optional body (`Option<T>` in `request_body`) may be left empty; JSON
    // `null` is not accepted, so the schema is `T`, not `oneOf [null, T]`.
    if let Some(body) = op.request_body.as_mut()
        && body.required != Some(Required::True)
    {
        for content in body.content.values_mut() {
            if let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema
                && let [RefOr::T(Schema::Object(null)), inner] = one_of.items.as_slice()
                && null.schema_type == SchemaType::Type(Type::Null)
            {
                content.schema = Some(inner.clone());
            }
        }
    }
    // Error bodies and X-Request-Id on the operation's own responses.
    for (status, resp) in &mut op.responses.responses {
        if let RefOr::T(resp) = resp {
            if (status.starts_with('4') || status.starts_with('5')) && resp.content.is_empty() {
                resp.content.insert(
                    "application/json".into(),
                    ContentBuilder::new()
                        .schema(Some(ErrorBody::schema_ref()))
                        .build(),
                );
            }
            resp.headers
                .entry("X-Request-Id".into())
                .or_insert_with(request_id_header);
        }
    }
    // The guard's responses.
    for (status, name) in SHARED {
        let applies = match *status {
            "401" | "429" => !public,
            "403" => !public && may_forbid,
            "413" => op.request_body.is_some(),
            _ => true,
        };
        if applies {
            op.responses
                .responses
                .entry((*status).into())
                .or_insert_with(|| RefOr::Ref(Ref::from_response_name(*name)));
        }
    }
    // X-Request-Id on the request.
    op.parameters.get_or_insert_with(Vec::new).push(
        ParameterBuilder::new()
            .name("X-Request-Id")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some("A request id to use (1 to 128 visible ASCII characters); one is generated otherwise"))
            .schema(Some(string_schema()))
            .build(),
    );
    op.security = Some(if public {
        vec![SecurityRequirement::default()]
    } else {
        vec![SecurityRequirement::new("bearer", Vec::<String>::new())]
    });
}

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
    /// Session id: 1 to 128 characters from `[A-Za-z0-9._:@-]`, not starting with `.`.
    #[param(pattern = r"^[A-Za-z0-9_:@-][A-Za-z0-9._:@-]{0,127}$")]
    pub sid: String,
}

/// Path parameters of an agent's endpoints.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AgentPath {
    /// Session id: 1 to 128 characters from `[A-Za-z0-9._:@-]`, not starting with `.`.
    #[param(pattern = r"^[A-Za-z0-9_:@-][A-Za-z0-9._:@-]{0,127}$")]
    pub sid: String,
    /// Agent id: 1 to 128 characters from `[A-Za-z0-9._:@-]`, not starting with `.`.
    #[param(pattern = r"^[A-Za-z0-9_:@-][A-Za-z0-9._:@-]{0,127}$")]
    pub aid: String,
}

/// Path parameters of one message's endpoints.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct MessagePath {
    /// Session id: 1 to 128 characters from `[A-Za-z0-9._:@-]`, not starting with `.`.
    #[param(pattern = r"^[A-Za-z0-9_:@-][A-Za-z0-9._:@-]{0,127}$")]
    pub sid: String,
    /// Agent id: 1 to 128 characters from `[A-Za-z0-9._:@-]`, not starting with `.`.
    #[param(pattern = r"^[A-Za-z0-9_:@-][A-Za-z0-9._:@-]{0,127}$")]
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

/// Any JSON value but null.
pub fn non_null_value() -> Schema {
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

fn free_form(b: ObjectBuilder) -> ObjectBuilder {
    b.additional_properties(Some(AdditionalProperties::FreeForm(true)))
}

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
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(string_schema()))))
        .examples([json!({ "metadata.status": "active", "metadata.profile.tier": "gold" })])
);

// ---------------------------------------------------------------------------
// Bodies that handlers build as JSON.

/// The uniform error body of every failed request.
#[derive(ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable snake_case code, e.g. `not_found` or `denied_by_hook`.
    #[schema(example = "not_found")]
    pub code: String,
    /// What was wrong, for a human.
    pub message: String,
}

/// A page of `GET /v1/sessions`.
#[derive(ToSchema)]
pub struct SessionList {
    /// The sessions, ordered by id.
    pub sessions: Vec<Session>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// One result of `POST /v1/sessions/{sid}/batch`.
#[derive(ToSchema)]
pub struct BatchWriteItem {
    /// The status the operation's own endpoint would have answered (200 or 201).
    pub status: u16,
    /// The body it would have answered: the message or the agent.
    #[schema(value_type = Object)]
    pub body: serde_json::Value,
}

/// The answer of `POST /v1/sessions/{sid}/batch`.
#[derive(ToSchema)]
pub struct BatchWriteResult {
    /// One result per operation, in order.
    pub results: Vec<BatchWriteItem>,
}

/// The answer of `POST /v1/sessions`: the session as get-hooks show it, and
/// `metadata_withheld` when a get-hook failed after the session was stored.
#[derive(ToSchema)]
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
    pub metadata: Value,
    /// Ids of the agents in the session.
    pub agents: Vec<String>,
    /// Present only when the metadata is withheld (a display failure after
    /// the commit, not a failed write).
    pub metadata_withheld: Option<Withheld>,
}

/// Why metadata was withheld from an answer or an SSE event: a get-hook
/// failed after the change was committed.
#[derive(ToSchema)]
pub struct Withheld {
    /// The error a read would have answered, e.g. `hook_failed`.
    pub code: String,
    /// What failed (names the plugin).
    pub message: String,
}

/// The answer of `POST /v1/sessions/batch-get`.
#[derive(ToSchema)]
pub struct BatchGetResult {
    /// The sessions found.
    pub sessions: Vec<Session>,
    /// The requested ids that do not exist.
    pub missing: Vec<String>,
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
#[derive(ToSchema)]
pub struct AgentList {
    /// The session's agents.
    pub agents: Vec<AgentView>,
}

/// The answer of `GET …/messages`.
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
#[derive(ToSchema)]
pub struct FeedbackList {
    /// The feedbacks, oldest first.
    pub feedbacks: Vec<Feedback>,
}

/// `data` of an SSE event: one committed change.
#[derive(ToSchema)]
pub struct StreamEvent {
    /// Per-session sequence number (also the SSE `id`).
    pub seq: u64,
    /// What happened (also the SSE `event`).
    #[schema(rename = "type")]
    pub kind: EventType,
    /// When it was committed.
    #[schema(format = DateTime)]
    pub ts: String,
    /// The session.
    pub session_id: String,
    /// Details of the change; the shape depends on `type`. Metadata in it
    /// (`session.created`: `metadata`; `metadata.*`: `change`, `changed`,
    /// `values`) is shaped by get-hooks as a read would be; when a get-hook
    /// fails it is emptied and `metadata_withheld` (`{"code","message"}`) says so.
    #[schema(value_type = Value)]
    pub payload: Value,
}

/// `data` of an SSE `event: reset`: events were skipped.
#[derive(ToSchema)]
pub struct ResetEvent {
    /// Why (which events expired or do not exist).
    pub reason: String,
    /// The stream goes on after this event id.
    pub resume_after: u64,
}

/// The answer of `GET /healthz`.
#[derive(ToSchema)]
pub struct Health {
    /// Always `"ok"`.
    #[schema(value_type = String, pattern = "^ok$")]
    pub status: String,
}

/// The answer of `GET /readyz`.
#[derive(ToSchema)]
pub struct Ready {
    /// Always `"ready"`.
    #[schema(value_type = String, pattern = "^ready$")]
    pub status: String,
    /// Which store answered: `embedded` or `mongodb`.
    pub store: String,
}

/// A hook phase.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum Phase {
    /// On the request path, before the write.
    Before,
    /// After the commit, from the event log.
    After,
    /// On metadata reads.
    Get,
}

/// What a failing hook does.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum OnError {
    /// Fail closed (503 `hook_failed`).
    Deny,
    /// Fail open.
    Allow,
}

/// How a plugin's instances are kept.
#[derive(ToSchema)]
#[schema(rename_all = "kebab-case")]
pub enum Instance {
    /// Warm instances, reused.
    Reuse,
    /// A fresh instance per call.
    PerCall,
}

/// One loaded plugin.
#[derive(ToSchema)]
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
    pub phase: Phase,
    /// Instance mode.
    pub instance: Instance,
    /// Failure policy.
    pub on_error: OnError,
    /// The WIT interfaces the component exports.
    pub exports: Vec<String>,
    /// The WIT package the component is served as, e.g. `gateway:hooks@0.1.0`.
    pub wit: String,
    /// When this version was loaded.
    #[schema(format = DateTime)]
    pub loaded_at: String,
    /// Calls so far.
    pub calls: u64,
    /// Failed calls so far.
    pub errors: u64,
    /// Instances created so far.
    pub instantiations: u64,
    /// `publish` calls refused (target not granted).
    pub publish_refused: u64,
    /// Average call latency, µs.
    pub latency_us_avg: u64,
    /// Longest call latency, µs.
    pub latency_us_max: u64,
    /// Per-tenant quarantine after repeated failures.
    pub breaker: BreakerInfo,
    /// Why the last reload of this plugin failed (the previous version serves), or null.
    #[schema(required = true)]
    pub last_error: Option<String>,
}

/// A plugin's breaker: its settings and what it has done.
#[derive(ToSchema)]
pub struct BreakerInfo {
    /// The `breaker` settings in force.
    pub config: BreakerSettings,
    /// Times the plugin was quarantined for a tenant.
    pub trips: u64,
    /// Calls skipped (given the `on_error` outcome) during quarantines.
    pub skipped_calls: u64,
    /// Calls of suspect tenants, run on the low-priority thread.
    pub isolated_calls: u64,
    /// Tenants for whom the plugin is quarantined now.
    pub quarantined_tenants: Vec<String>,
}

/// `breaker` of a `[[hooks]]` entry.
#[derive(ToSchema)]
pub struct BreakerSettings {
    /// Failed calls in one window that trip the breaker; 0 means off.
    pub failures: u32,
    /// Least share of the window's calls that must have failed.
    pub failure_ratio: f64,
    /// Length of the counting window, ms.
    pub window_ms: u64,
    /// Quarantine length, ms.
    pub cooldown_ms: u64,
}

/// The outcome of a (re)load.
#[derive(ToSchema)]
pub struct ReloadReport {
    /// When it ran (RFC 3339; empty before the first reload).
    pub at: String,
    /// Plugins (re)compiled and now live.
    pub loaded: Vec<String>,
    /// Plugins whose file and config did not change.
    pub unchanged: Vec<String>,
    /// Plugins that failed, as `[name, reason]` pairs; their previous version keeps serving.
    pub failed: Vec<Vec<String>>,
    /// Plugins removed from the config.
    pub removed: Vec<String>,
    /// Why the config file failed to load (then nothing changed), or null.
    #[schema(required = true)]
    pub config_error: Option<String>,
}

/// The answer of `GET /v1/admin/plugins`.
#[derive(ToSchema)]
pub struct PluginList {
    /// Loaded plugins.
    pub plugins: Vec<PluginInfo>,
    /// The last (re)load.
    pub last_reload: ReloadReport,
}

/// The answer of `POST /v1/admin/reload`.
#[derive(ToSchema)]
pub struct ReloadResult {
    /// What the reload did.
    pub reload: ReloadReport,
}

/// A notification published by a hook.
#[derive(ToSchema)]
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
    pub state: OutboxStateParam,
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

/// The answer of `GET /v1/admin/outbox`.
#[derive(ToSchema)]
pub struct OutboxList {
    /// Items, oldest first.
    pub items: Vec<OutboxItem>,
    /// Items pending in total (of the caller's tenant, for an admin key).
    pub pending: u64,
    /// Dead items in total (of the caller's tenant, for an admin key).
    pub dead: u64,
    /// Delivered since start (operator keys only).
    pub delivered: Option<u64>,
    /// Retries since start (operator keys only).
    pub retried: Option<u64>,
    /// Items given up on since start (operator keys only).
    pub dead_lettered: Option<u64>,
    /// Whether the dispatcher runs (operator keys only).
    pub dispatcher_running: Option<bool>,
}
