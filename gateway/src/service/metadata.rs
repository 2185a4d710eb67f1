//! Metadata: read (through get-hooks), patch with dotted keys and delete keys
//! (through before-hooks).

use serde_json::Value;

use super::{Service, Shown, check_sid, writer};
use crate::auth::Caller;
use crate::config::HookPhase;
use crate::error::{AppError, AppResult};
use crate::hooks::metadata_event;
use crate::metadata::MetadataChange;
use crate::model::JsonObject;

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

impl Service {
    /// A session's metadata as get-hooks show it.
    ///
    /// # Errors
    /// 400 for a bad id, 404 when missing, 503 when a get-hook fails.
    pub async fn get_metadata(&self, caller: &Caller, sid: &str) -> AppResult<JsonObject> {
        Ok(self.get_session(caller, sid).await?.metadata)
    }

    /// Applies a patch body (an object of dotted keys to values) through the
    /// before-hooks; the result is the whole metadata after the change, as
    /// get-hooks show it (withheld, never an error, once committed).
    ///
    /// # Errors
    /// 403, 400 (`invalid_body`, `invalid_metadata_key`, `invalid_session_id`),
    /// 404, 422 (`too_many_keys`, `too_deep`, `too_large`,
    /// `metadata_path_conflict`, `denied_by_hook`), 503 `hook_failed`.
    pub async fn patch_metadata(
        &self,
        caller: &Caller,
        sid: &str,
        body: Value,
    ) -> AppResult<Shown<JsonObject>> {
        writer(caller)?;
        check_sid(sid)?;
        let Value::Object(body) = body else {
            return Err(AppError::bad_request(
                "invalid_body",
                "metadata patch must be a JSON object of dotted keys to values",
            ));
        };
        let max_keys = self.config.server.max_patch_keys;
        if body.len() > max_keys {
            return Err(AppError::unprocessable(
                "too_many_keys",
                format!("at most {max_keys} keys per patch"),
            ));
        }
        let limits = &self.config.limits;
        crate::limits::check_json(
            "metadata patch",
            &Value::Object(body.clone()),
            limits,
            Some(limits.max_metadata_bytes),
        )?;
        let change = MetadataChange::Update(body.into_iter().collect());
        self.change_metadata(caller, sid, change).await
    }

    /// Removes the comma-separated dotted paths `keys` (required; missing
    /// paths are ignored), through the before-hooks; answers as
    /// [`Service::patch_metadata`].
    ///
    /// # Errors
    /// As [`Service::patch_metadata`].
    pub async fn delete_metadata(
        &self,
        caller: &Caller,
        sid: &str,
        keys: Option<&str>,
    ) -> AppResult<Shown<JsonObject>> {
        writer(caller)?;
        check_sid(sid)?;
        let keys = keys.ok_or_else(|| {
            AppError::bad_request(
                "invalid_query",
                "keys is required, e.g. ?keys=status,profile.tier",
            )
        })?;
        let change = MetadataChange::Delete(keys.split(',').map(str::to_owned).collect());
        self.change_metadata(caller, sid, change).await
    }

    async fn change_metadata(
        &self,
        caller: &Caller,
        sid: &str,
        change: MetadataChange,
    ) -> AppResult<Shown<JsonObject>> {
        change.validate().map_err(bad_key)?;
        let t = &caller.tenant;
        let loaded = self.shape.snapshot();
        // A before-hook gets the session's type (its session-ref) without a
        // read when this gateway knows it; the write checks it. The get-chain
        // that shows the result takes the type from the write.
        let result = if loaded.runs(HookPhase::Before, metadata_event(&change)) {
            let (hooks, store, loaded) = (&self.hooks, &self.store, &loaded);
            self.hooked_write(
                t,
                sid,
                |s| {
                    let change = change.clone();
                    async move { hooks.before_metadata(loaded, &s, change).await }
                },
                |hooked, ty| async move {
                    let ty = Some(ty.as_str());
                    store.change_metadata_of_type(t, sid, ty, &hooked).await
                },
            )
            .await?
        } else {
            self.store.change_metadata(t, sid, &change).await?
        };
        self.committed.session(t, sid);
        // Committed: a failing get-hook withholds the metadata, it does not fail the write.
        Ok(self
            .shape
            .committed_metadata(&loaded, t, sid, &result.session_type, result.metadata)
            .await)
    }
}
