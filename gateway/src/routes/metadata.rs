//! Metadata: read (through get-hooks), patch with dotted keys and delete keys
//! (through before-hooks).

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use serde_json::Value;

use crate::AppState;
use crate::auth::Caller;
use crate::error::AppResult;
use crate::extract::{Json, Path, Query};
use crate::model::JsonObject;

/// Metadata routes.
pub fn router() -> Router<AppState> {
    Router::new().route(
        "/v1/sessions/{sid}/metadata",
        get(read).patch(patch).delete(delete),
    )
}

/// Get a session's metadata
///
/// The metadata object as get-hooks show it (e.g. with secrets masked).
#[utoipa::path(
    get,
    path = "/v1/sessions/{sid}/metadata",
    operation_id = "get_metadata",
    tag = "metadata",
    params(crate::api::SessionPath),
    responses(
        (status = 200, description = "The metadata", body = crate::api::Metadata),
        crate::api::BadSessionPath,
        crate::api::NoSuchSession,
    )
)]
async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path(sid): Path<String>,
) -> AppResult<axum::Json<JsonObject>> {
    Ok(axum::Json(state.service.get_metadata(&caller, &sid).await?))
}

/// Patch a session's metadata
///
/// Each key is a dotted path (`profile.tier` sets a nested field, creating
/// intermediate objects); each value replaces what is there. Before-hooks may
/// deny or rewrite the change; nothing is written when any part fails. Once
/// the change is stored the answer is 200 whatever happens: if a fail-closed
/// get-hook fails while showing the result, the body is `{}` with the
/// `Metadata-Withheld` header (a retry of the same patch is harmless).
#[utoipa::path(
    patch,
    path = "/v1/sessions/{sid}/metadata",
    operation_id = "patch_metadata",
    tag = "metadata",
    params(crate::api::SessionPath),
    request_body = crate::api::MetadataPatch,
    responses(
        (status = 200, description = "The full metadata after the change (after get-hooks). With the `Metadata-Withheld` header the change is stored but a get-hook failed while showing the result, so the body is `{}`",
            body = crate::api::Metadata,
            headers(("Metadata-Withheld" = String, description = "Present only when a get-hook failed after the commit: the error code (`hook_failed`); the body is then `{}`, not the metadata"))),
        (status = 400, description = "`invalid_json`, `invalid_body` (not an object), `invalid_metadata_key` or `invalid_session_id`"),
        crate::api::NoSuchSession,
        (status = 422, description = "`metadata_path_conflict`, `denied_by_hook`, `too_many_keys`, `too_deep` or `too_large`"),
    )
)]
async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Path(sid): Path<String>,
    Json(body): Json<Value>,
) -> AppResult<Response> {
    let shown = state.service.patch_metadata(&caller, &sid, body).await?;
    Ok(super::answer::metadata_response(shown))
}

/// Delete metadata keys
///
/// Removes the listed dotted paths (missing ones are ignored). Before-hooks
/// may deny the change.
#[utoipa::path(
    delete,
    path = "/v1/sessions/{sid}/metadata",
    operation_id = "delete_metadata",
    tag = "metadata",
    params(
        crate::api::SessionPath,
        ("keys" = String, Query, pattern = r"^[^.,$\x00][^.,\x00]*(\.[^.,$\x00][^.,\x00]*)*(,[^.,$\x00][^.,\x00]*(\.[^.,$\x00][^.,\x00]*)*)*$",
            description = "Comma-separated dotted paths to remove, e.g. `status,profile.tier` (segments non-empty, not starting with `$`)"),
    ),
    responses(
        (status = 200, description = "The full metadata after the change (after get-hooks). With the `Metadata-Withheld` header the change is stored but a get-hook failed while showing the result, so the body is `{}`",
            body = crate::api::Metadata,
            headers(("Metadata-Withheld" = String, description = "Present only when a get-hook failed after the commit: the error code (`hook_failed`); the body is then `{}`, not the metadata"))),
        (status = 400, description = "`invalid_query` (`keys` missing, repeated or unknown parameter), `invalid_metadata_key` or `invalid_session_id`"),
        crate::api::NoSuchSession,
        (status = 422, description = "`denied_by_hook` or `metadata_path_conflict`"),
    )
)]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(sid): Path<String>,
    q: Query,
) -> AppResult<Response> {
    q.only(&["keys"])?;
    let keys = q.get("keys")?;
    let shown = state.service.delete_metadata(&caller, &sid, keys).await?;
    Ok(super::answer::metadata_response(shown))
}
