//! The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json`.
//!
//! It is generated from the code: each handler in [`crate::routes`] carries a
//! `#[utoipa::path]` attribute (method, path, parameters, body, responses and
//! their error codes), and the types the handlers answer with — the model
//! ([`crate::model`]), the API's envelopes and views ([`crate::api`]) and the
//! error body ([`crate::error::ErrorBody`]) — derive [`utoipa::ToSchema`].
//! This module only assembles the document and adds what every operation
//! shares (see [`Common`]):
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

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use serde_json::Value;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::link::Link;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Ref, RefOr, Required, Response, ResponseBuilder, Schema};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::api::{
    AgentId, BatchFailure, MetadataFilter, OutboxStateParam, ResetEvent, SessionId, StreamEvent,
};
use crate::error::ErrorBody;
use crate::model::EventType;

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
64 bits and other numbers must be finite 64-bit doubles of at most 17 significant digits (below 2.2250738585072014e-308: the double's shortest form) (400 `invalid_number`).",
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
    components(schemas(ErrorBody, BatchFailure, StreamEvent, ResetEvent, EventType, MetadataFilter, SessionId, AgentId, OutboxStateParam)),
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
