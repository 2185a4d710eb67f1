//! Feedbacks: add (through before-hooks) and list.

use serde_json::Value;

use super::{Service, check_sid, writer};
use crate::auth::Caller;
use crate::config::{HookEvent, HookPhase};
use crate::error::{AppError, AppResult};
use crate::model::{JsonObject, validate_feedback};

impl Service {
    /// Adds a feedback (a JSON object; `created_at` is stamped here) through
    /// the before-hooks; the result is the stored feedback.
    ///
    /// # Errors
    /// 403, 400 (`invalid_body`, `invalid_session_id`), 404, 422
    /// (`invalid_rating`, `invalid_feedback`, `too_deep`, `too_large`,
    /// `denied_by_hook`), 503 `hook_failed`.
    pub async fn add_feedback(
        &self,
        caller: &Caller,
        sid: &str,
        body: Value,
    ) -> AppResult<JsonObject> {
        writer(caller)?;
        check_sid(sid)?;
        let Value::Object(mut body) = body else {
            return Err(AppError::bad_request(
                "invalid_body",
                "a feedback must be a JSON object",
            ));
        };
        body.shift_remove("created_at");
        validate_feedback(&body).map_err(|m| AppError::unprocessable("invalid_rating", m))?;
        let limits = &self.config.limits;
        crate::limits::check_json(
            "feedback",
            &Value::Object(body.clone()),
            limits,
            Some(limits.max_metadata_bytes),
        )?;
        crate::metadata::validate_value(&Value::Object(body.clone()))
            .map_err(|m| AppError::unprocessable("invalid_feedback", m))?;
        let t = &caller.tenant;
        let loaded = self.hooks.snapshot();
        // Before-hooks get the session's type as a metadata write's do.
        let fb = if loaded.runs(HookPhase::Before, HookEvent::FeedbackAdd) {
            let (hooks, store, loaded) = (&self.hooks, &self.store, &loaded);
            self.hooked_write(
                t,
                sid,
                |s| {
                    let body = body.clone();
                    async move { hooks.before_feedback(loaded, &s, body).await }
                },
                |hooked, ty| async move {
                    let ty = Some(ty.as_str());
                    store.add_feedback_of_type(t, sid, ty, hooked).await
                },
            )
            .await?
        } else {
            self.store.add_feedback(t, sid, body).await?
        };
        self.committed.session(t, sid);
        Ok(fb.body)
    }

    /// A session's feedbacks, oldest first.
    ///
    /// # Errors
    /// 400 for a bad id, 404 when missing.
    pub async fn list_feedbacks(&self, caller: &Caller, sid: &str) -> AppResult<Vec<JsonObject>> {
        check_sid(sid)?;
        let fbs = self.store.list_feedbacks(&caller.tenant, sid).await?;
        Ok(fbs.into_iter().map(|f| f.body).collect())
    }
}
