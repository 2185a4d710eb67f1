//! Metadata: read (through get-hooks), patch with dotted keys and delete keys
//! (through before-hooks).

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use serde_json::Value;

use super::check_sid;
use crate::AppState;
use crate::auth::Caller;
use crate::config::HookPhase;
use crate::error::{AppError, AppResult};
use crate::extract::{Json, Path, Query};
use crate::hooks::metadata_event;
use crate::metadata::MetadataChange;
use crate::model::JsonObject;

/// Metadata routes.
pub fn router() -> Router<AppState> {
    Router::new().route(
        "/v1/sessions/{sid}/metadata",
        get(read).patch(patch).delete(delete),
    )
}

fn bad_key(m: String) -> AppError {
    AppError::bad_request("invalid_metadata_key", m)
}

/// Checks metadata given at session creation: top-level keys are plain field
/// names (no dots), values as for a patch.
pub(crate) fn check_initial(md: &JsonObject) -> AppResult<()> {
    for (k, v) in md {
        if k.contains('.') {
            return Err(bad_key(format!(
                "key {k:?} must not contain '.' at creation; use PATCH with dotted keys"
            )));
        }
        crate::metadata::validate_path(k).map_err(bad_key)?;
        crate::metadata::validate_value(v).map_err(|e| bad_key(format!("value for {k:?}: {e}")))?;
    }
    Ok(())
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
        (status = 400, description = "`invalid_session_id` or `invalid_path`"),
        (status = 404, description = "`not_found`: no such session"),
    )
)]
async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path(sid): Path<String>,
) -> AppResult<axum::Json<JsonObject>> {
    check_sid(&sid)?;
    let session = state.store.get_session(&caller.tenant, &sid).await?;
    let session = state.hooks.redact_session(&caller.tenant, session).await?;
    Ok(axum::Json(session.metadata))
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
        (status = 404, description = "`not_found`: no such session"),
        (status = 422, description = "`metadata_path_conflict`, `denied_by_hook`, `too_many_keys`, `too_deep` or `too_large`"),
    )
)]
async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Path(sid): Path<String>,
    Json(body): Json<Value>,
) -> AppResult<Response> {
    caller.require_write()?;
    check_sid(&sid)?;
    let Value::Object(body) = body else {
        return Err(AppError::bad_request(
            "invalid_body",
            "metadata patch must be a JSON object of dotted keys to values",
        ));
    };
    let max_keys = state.config.server.max_patch_keys;
    if body.len() > max_keys {
        return Err(AppError::unprocessable(
            "too_many_keys",
            format!("at most {max_keys} keys per patch"),
        ));
    }
    let limits = &state.config.limits;
    crate::limits::check_json(
        "metadata patch",
        &Value::Object(body.clone()),
        limits,
        Some(limits.max_metadata_bytes),
    )?;
    let change = MetadataChange::Update(body.into_iter().collect());
    apply(state, caller, sid, change).await
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
        (status = 404, description = "`not_found`: no such session"),
        (status = 422, description = "`denied_by_hook` or `metadata_path_conflict`"),
    )
)]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(sid): Path<String>,
    q: Query,
) -> AppResult<Response> {
    caller.require_write()?;
    check_sid(&sid)?;
    q.only(&["keys"])?;
    let keys = q.get("keys")?.ok_or_else(|| {
        AppError::bad_request(
            "invalid_query",
            "keys is required, e.g. ?keys=status,profile.tier",
        )
    })?;
    let change = MetadataChange::Delete(keys.split(',').map(str::to_owned).collect());
    apply(state, caller, sid, change).await
}

async fn apply(
    state: AppState,
    caller: Caller,
    sid: String,
    change: MetadataChange,
) -> AppResult<Response> {
    change.validate().map_err(bad_key)?;
    let loaded = state.hooks.snapshot();
    // One session read (only when a hook runs) serves the before-chain and,
    // after the write, the get-chain that shows the result.
    let shapes = loaded.shapes_metadata();
    let hooked = shapes || loaded.runs(HookPhase::Before, metadata_event(&change));
    let subject = state.hooks.subject(&caller.tenant, &sid, hooked).await?;
    let change = state
        .hooks
        .before_metadata(&loaded, &subject, change)
        .await?;
    let session_type = shapes.then_some(subject.session_type);
    let result = state
        .store
        .change_metadata(&caller.tenant, &sid, &change)
        .await?;
    state.committed(&caller.tenant, &sid);
    // Committed: a failing get-hook withholds the metadata, it does not fail the write.
    let (shown, withheld) = state
        .hooks
        .display_metadata(
            &loaded,
            &caller.tenant,
            &sid,
            session_type.as_deref(),
            result.metadata,
        )
        .await;
    Ok(crate::hooks::display::metadata_response(
        shown,
        withheld.as_ref(),
    ))
}
