//! Sessions: create, read, list (filtered, keyset-paginated), batch-get, delete.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::Value;

use crate::AppState;
use crate::api::{BatchGetResult, SessionList};
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::extract::{Json, OptionalJson, Path, Query};
use crate::model::{NewSession, Session, parse_rfc3339_ms};
use crate::service::check_sid;
use crate::store::ListQuery;

/// Session routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/sessions", post(create).get(list))
        .route("/v1/sessions/batch-get", post(batch_get))
        .route("/v1/sessions/{sid}", get(read).delete(delete))
}

/// Default page size of `GET /v1/sessions`.
const DEFAULT_LIMIT: usize = 50;

/// Body of `POST /v1/sessions`: a [`NewSession`], or a Strands `Session.to_dict()`
/// (`session_id`, `session_type`, `created_at`, `updated_at`). Other unknown
/// fields are still refused (400 `invalid_json`), so a misspelt field is not
/// silently dropped.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewSession)]
struct CreateSession {
    /// Id to use; generated (UUID v4) when absent.
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9_:@-][A-Za-z0-9._:@-]{0,127}$")]
    session_id: Option<String>,
    /// Kind of session; defaults to `"AGENT"`.
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    session_type: Option<String>,
    /// Initial metadata: a free-form object whose top-level keys are plain
    /// field names (no `.`, no leading `$`, no NUL).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<crate::model::JsonObject>,
    /// Accepted and ignored (Strands' `Session.to_dict()` sends it): the
    /// gateway stamps its own times.
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    #[allow(dead_code)]
    created_at: Option<Value>,
    /// Accepted and ignored, like `created_at`.
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    #[allow(dead_code)]
    updated_at: Option<Value>,
}

impl CreateSession {
    fn into_new(self) -> NewSession {
        NewSession {
            session_id: self.session_id,
            session_type: self.session_type,
            metadata: self.metadata,
        }
    }
}

/// Create a session
///
/// An empty body creates a session with a generated id (UUID v4), `session_type`
/// `"AGENT"` and empty metadata. The answer is the session as get-hooks show it.
/// Once the session is stored the answer is 201 whatever happens: if a
/// fail-closed get-hook fails while showing it, the metadata is withheld
/// (`metadata: {}`, a `metadata_withheld` object and the `Metadata-Withheld`
/// header) rather than answering an error for a committed write.
#[utoipa::path(
    post,
    path = "/v1/sessions",
    operation_id = "create_session",
    tag = "sessions",
    request_body(content = Option<CreateSession>, description = "The new session; an empty body means all defaults. Strands' `Session.to_dict()` is accepted as is: its `created_at` and `updated_at` are ignored (the gateway stamps its own times)."),
    responses(
        (status = 201, description = "The session was created. With the `Metadata-Withheld` header the metadata is withheld (`{}`) because a get-hook failed: the session is stored all the same (a retry answers 409)",
            body = crate::api::CreatedSession,
            headers(("Metadata-Withheld" = String, description = "Present only when a get-hook failed after the commit: the error code (`hook_failed`); the body's `metadata` is then `{}` and `metadata_withheld` says why"))),
        (status = 400, description = "`invalid_json`, `invalid_session_id` or `invalid_metadata_key`"),
        (status = 409, description = "`session_exists`: a session with this id exists"),
        (status = 422, description = "`invalid_session_type`, `too_deep` or `too_large` (metadata)"),
    )
)]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    OptionalJson(new): OptionalJson<CreateSession>,
) -> AppResult<impl IntoResponse> {
    // An empty body means "all defaults".
    let new = new.map_or(
        NewSession {
            session_id: None,
            session_type: None,
            metadata: None,
        },
        CreateSession::into_new,
    );
    let shown = state.service.create_session(&caller, new).await?;
    Ok(super::answer::session_response(StatusCode::CREATED, shown))
}

/// Get a session
///
/// The session with its metadata (after get-hooks) and the ids of its agents.
#[utoipa::path(
    get,
    path = "/v1/sessions/{sid}",
    operation_id = "get_session",
    tag = "sessions",
    params(crate::api::SessionPath),
    responses(
        (status = 200, description = "The session", body = Session),
        crate::api::BadSessionPath,
        crate::api::NoSuchSession,
    )
)]
async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path(sid): Path<String>,
) -> AppResult<axum::Json<Session>> {
    Ok(axum::Json(state.service.get_session(&caller, &sid).await?))
}

/// Delete a session
///
/// Deletes the session with its agents, messages, metadata and feedbacks.
#[utoipa::path(
    delete,
    path = "/v1/sessions/{sid}",
    operation_id = "delete_session",
    tag = "sessions",
    params(crate::api::SessionPath),
    responses(
        (status = 204, description = "The session was deleted"),
        crate::api::BadSessionPath,
        crate::api::NoSuchSession,
    )
)]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(sid): Path<String>,
) -> AppResult<StatusCode> {
    state.service.delete_session(&caller, &sid).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List sessions
///
/// Sessions ordered by id, keyset-paginated: pass the answer's `next_cursor` as
/// `cursor` for the next page (`null` on the last page). Filters combine with
/// AND. Metadata filters are query parameters named `metadata.<path>` (a
/// dotted path into the metadata, e.g. `metadata.profile.tier=gold`); the
/// value is parsed as a JSON scalar when it is one (`5`, `true`, `null`,
/// `"5"`), otherwise matched as a string. Filters match the metadata as
/// get-hooks show it (a masked field matches only its mask, a hidden one
/// nothing); with a get-hook loaded, at most `server.max_page_size` sessions
/// are examined per request, so a page may be short (even empty) while
/// `next_cursor` is not null: keep following it.
#[utoipa::path(
    get,
    path = "/v1/sessions",
    operation_id = "list_sessions",
    tag = "sessions",
    params(
        ("limit" = Option<u64>, Query, description = "Page size: default 50 (also for 0); a value above `server.max_page_size` (default 1000) is clamped to it"),
        ("cursor" = Option<String>, Query, pattern = r"^[A-Za-z0-9_:@-][A-Za-z0-9._:@-]{0,127}$",
            description = "Start after this session id: the `next_cursor` of the previous page"),
        ("updated_after" = Option<String>, Query, format = DateTime, description = "Only sessions changed after this RFC 3339 time"),
        ("session_type" = Option<String>, Query, description = "Only sessions of this type"),
        ("metadata" = Option<crate::api::MetadataFilter>, Query, style = Form, explode,
            description = "Metadata filters: free-form query parameters named `metadata.<path>` (one per filter), e.g. `metadata.status=active&metadata.profile.tier=gold`"),
    ),
    responses(
        (status = 200, description = "One page of sessions", body = SessionList),
        (status = 400, description = "`invalid_query`: unknown or repeated parameter, bad limit, cursor, time or metadata path"),
    )
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    q: Query,
) -> AppResult<axum::Json<SessionList>> {
    q.only(&[
        "limit",
        "cursor",
        "updated_after",
        "session_type",
        "metadata.",
    ])?;
    // The same rule as for messages: no limit or 0 is the default page, and
    // a limit above `server.max_page_size` is clamped (continue with
    // `next_cursor`).
    let max = state.service.max_page_size();
    let limit = match q.get_u64("limit")? {
        None | Some(0) => DEFAULT_LIMIT.min(max),
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX).min(max),
    };
    let after = q.get("cursor")?.map(str::to_owned);
    if let Some(c) = &after {
        check_sid(c).map_err(|_| {
            AppError::bad_request(
                "invalid_query",
                "cursor is not a value returned as next_cursor",
            )
        })?;
    }
    let updated_after = q
        .get("updated_after")?
        .map(|v| {
            parse_rfc3339_ms(v).ok_or_else(|| {
                AppError::bad_request(
                    "invalid_query",
                    format!("updated_after must be an RFC 3339 timestamp, got {v:?}"),
                )
            })
        })
        .transpose()?;
    let mut metadata = Vec::new();
    for (k, v) in &q.0 {
        if let Some(path) = k.strip_prefix("metadata.") {
            crate::metadata::validate_path(path)
                .map_err(|m| AppError::bad_request("invalid_query", m))?;
            metadata.push((path.to_owned(), filter_value(v)));
        }
    }
    let query = ListQuery {
        limit,
        after,
        updated_after,
        session_type: q.get("session_type")?.map(str::to_owned),
        metadata,
    };
    // Metadata filters match the metadata as get-hooks show it.
    let page = state.service.list_sessions(&caller, query).await?;
    Ok(axum::Json(SessionList {
        sessions: page.sessions,
        next_cursor: page.next_cursor,
    }))
}

/// A metadata filter value: JSON when it parses as a JSON scalar (`5`, `true`,
/// `null`, `"5"`), otherwise the text itself as a string.
fn filter_value(raw: &str) -> Value {
    match serde_json::from_str::<Value>(raw) {
        Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::Null | Value::String(_))) => v,
        _ => Value::String(raw.to_owned()),
    }
}

/// Body of `POST /v1/sessions/batch-get`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BatchGetRequest)]
struct BatchGet {
    /// Session ids to read (at most `server.max_batch_ids`, default 100); a
    /// repeated id is read and answered once.
    #[schema(value_type = Vec<crate::api::SessionId>)]
    ids: Vec<String>,
}

impl crate::extract::JsonBody for BatchGet {}
impl crate::extract::JsonBody for CreateSession {}

/// Get many sessions
///
/// Reads the named sessions in one store round trip; ids that do not exist
/// (or belong to another tenant) are listed in `missing`. A repeated id is
/// answered once.
#[utoipa::path(
    post,
    path = "/v1/sessions/batch-get",
    operation_id = "batch_get_sessions",
    tag = "sessions",
    request_body = BatchGet,
    responses(
        (status = 200, description = "The sessions found and the ids missing", body = BatchGetResult),
        (status = 400, description = "`invalid_json` or `invalid_session_id`"),
        (status = 422, description = "`too_many_ids`"),
    )
)]
async fn batch_get(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<BatchGet>,
) -> AppResult<axum::Json<BatchGetResult>> {
    Ok(axum::Json(
        state.service.batch_get_sessions(&caller, body.ids).await?,
    ))
}
