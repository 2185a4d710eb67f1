//! Agents: create/replace with optimistic concurrency (`If-Match` / `ETag`), read, list.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;

use crate::AppState;
use crate::api::AgentList;
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::extract::{Json, Path};
use crate::model::Agent;
use crate::service::agents::Precondition;

/// Agent routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/sessions/{sid}/agents", get(list))
        .route("/v1/sessions/{sid}/agents/{aid}", get(read).put(put))
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a valid header value")
}

fn with_etag(status: StatusCode, agent: &Agent) -> Response {
    let mut resp = (status, axum::Json(agent.to_json())).into_response();
    resp.headers_mut().insert(header::ETAG, etag(agent.version));
    resp
}

/// Parses `If-Match: "3"` (also `3` and `W/"3"`) and `If-Match: *` (the
/// agent exists, any version). Also accepts `If-None-Match: *` (create
/// only): the version of an agent that does not exist is 0, so it is the
/// same as `If-Match: "0"`.
fn if_match(headers: &HeaderMap) -> AppResult<Precondition> {
    if let Some(v) = headers.get(header::IF_NONE_MATCH) {
        if v.to_str().ok().map(str::trim) == Some("*") {
            return Ok(Precondition::Version(0));
        }
        return Err(AppError::bad_request(
            "invalid_if_none_match",
            "only If-None-Match: * (create only) is supported",
        ));
    }
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(Precondition::None);
    };
    if v.to_str().ok().map(str::trim) == Some("*") {
        return Ok(Precondition::Exists);
    }
    let bad = || {
        AppError::bad_request(
            "invalid_if_match",
            "If-Match must be an agent version as returned in ETag, e.g. \"3\"",
        )
    };
    let s = v.to_str().map_err(|_| bad())?.trim();
    let s = s.strip_prefix("W/").unwrap_or(s);
    let s = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s);
    s.parse::<u64>()
        .map(Precondition::Version)
        .map_err(|_| bad())
}

/// Create or replace an agent
///
/// The body is the agent's JSON object (Strands `SessionAgent`: `state`,
/// `conversation_manager_state`, `internal_state`, any extra fields, kept
/// verbatim); the server-owned fields `agent_id`, `created_at`, `updated_at`,
/// `version` and `message_count` are ignored, except that a body `agent_id`
/// must equal the path's. With `If-Match` the write succeeds only while the
/// stored version is the one named; with `If-None-Match: *` only when the
/// agent does not exist yet.
#[utoipa::path(
    put,
    path = "/v1/sessions/{sid}/agents/{aid}",
    operation_id = "put_agent",
    tag = "agents",
    params(
        crate::api::AgentPath,
        ("If-Match" = Option<String>, Header, pattern = r#"^((W/)?("[0-9]+"|[0-9]+)|\*)$"#, description = "Write only if the agent's current version is this one: an `ETag` value such as `\"3\"` (also `3` or `W/\"3\"`); `*`: only if the agent exists, whatever its version"),
        ("If-None-Match" = Option<String>, Header, pattern = r"^\*$", description = "`*`: create only, fail with 412 if the agent exists (the same as `If-Match: \"0\"`); takes precedence over `If-Match`"),
    ),
    request_body = crate::api::AgentBody,
    responses(
        (status = 201, description = "The agent was created", body = crate::api::AgentView,
            headers(("ETag" = String, description = "The agent's new version, quoted, e.g. `\"1\"`"))),
        (status = 200, description = "The agent was replaced", body = crate::api::AgentView,
            headers(("ETag" = String, description = "The agent's new version, quoted, e.g. `\"2\"`"))),
        (status = 400, description = "`invalid_json`, `invalid_body` (not an object), `invalid_if_match`, `invalid_if_none_match`, `invalid_session_id` or `invalid_agent_id`"),
        crate::api::NoSuchSession,
        (status = 412, description = "`version_mismatch`: `If-Match` names a version that is not current, `If-Match: *` and the agent does not exist, or `If-None-Match: *` and the agent exists"),
        (status = 422, description = "`agent_id_mismatch` or `too_deep`"),
    )
)]
async fn put(
    State(state): State<AppState>,
    caller: Caller,
    Path((sid, aid)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> AppResult<Response> {
    let pre = if_match(&headers)?;
    let (agent, created) = state
        .service
        .put_agent(&caller, &sid, &aid, body, pre)
        .await?;
    Ok(with_etag(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &agent,
    ))
}

/// Get an agent
#[utoipa::path(
    get,
    path = "/v1/sessions/{sid}/agents/{aid}",
    operation_id = "get_agent",
    tag = "agents",
    params(crate::api::AgentPath),
    responses(
        (status = 200, description = "The agent", body = crate::api::AgentView,
            headers(("ETag" = String, description = "The agent's version, quoted; send it back as `If-Match`"))),
        (status = 400, description = "`invalid_session_id`, `invalid_agent_id` or `invalid_path`"),
        crate::api::NoSuchAgent,
    )
)]
async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path((sid, aid)): Path<(String, String)>,
) -> AppResult<Response> {
    let agent = state.service.get_agent(&caller, &sid, &aid).await?;
    Ok(with_etag(StatusCode::OK, &agent))
}

/// List a session's agents
#[utoipa::path(
    get,
    path = "/v1/sessions/{sid}/agents",
    operation_id = "list_agents",
    tag = "agents",
    params(crate::api::SessionPath),
    responses(
        (status = 200, description = "Every agent of the session", body = AgentList),
        crate::api::BadSessionPath,
        crate::api::NoSuchSession,
    )
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(sid): Path<String>,
) -> AppResult<axum::Json<AgentList>> {
    let agents = state.service.list_agents(&caller, &sid).await?;
    Ok(axum::Json(AgentList {
        agents: agents.iter().map(Agent::to_json).collect(),
    }))
}
