//! Sessions: create, read, list, batch-get, delete.

use serde_json::Value;

use super::{Service, Shown, check_sid, writer};
use crate::api::BatchGetResult;
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::model::{NewSession, Session};
use crate::store::{ListQuery, Page};

/// Longest `session_type`.
const MAX_TYPE_LEN: usize = 64;

impl Service {
    /// Creates a session. Once it is stored the result is `Ok` whatever
    /// happens: a failing get-hook withholds the metadata of the answer.
    ///
    /// # Errors
    /// 403 for a reader; 400/422 for a bad id, type or metadata; 409
    /// `session_exists`; a store error.
    pub async fn create_session(
        &self,
        caller: &Caller,
        new: NewSession,
    ) -> AppResult<Shown<Session>> {
        writer(caller)?;
        if let Some(sid) = &new.session_id {
            check_sid(sid)?;
        }
        if let Some(t) = &new.session_type
            && (t.is_empty()
                || t.len() > MAX_TYPE_LEN
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        {
            return Err(AppError::unprocessable(
                "invalid_session_type",
                format!("session_type must be 1 to {MAX_TYPE_LEN} characters from [A-Za-z0-9_-]"),
            ));
        }
        if let Some(md) = &new.metadata {
            super::metadata::check_initial(md)?;
            let limits = &self.config.limits;
            crate::limits::check_json(
                "metadata",
                &Value::Object(md.clone()),
                limits,
                Some(limits.max_metadata_bytes),
            )?;
        }
        let loaded = self.shape.snapshot();
        let session = self.store.create_session(&caller.tenant, new).await?;
        let (t, sid) = (&caller.tenant, &session.session_id);
        self.created(&loaded, t, sid, &session.session_type);
        self.committed.session(&caller.tenant, &session.session_id);
        // Committed: from here on nothing turns the answer into an error.
        Ok(self
            .shape
            .committed_session(&loaded, &caller.tenant, session)
            .await)
    }

    /// A session as get-hooks show it.
    ///
    /// # Errors
    /// 400 for a bad id, 404 when missing, 503 when a get-hook fails.
    pub async fn get_session(&self, caller: &Caller, sid: &str) -> AppResult<Session> {
        check_sid(sid)?;
        let session = self.store.get_session(&caller.tenant, sid).await?;
        self.shape
            .read(&self.shape.snapshot(), &caller.tenant, session)
            .await
    }

    /// Deletes a session with everything in it.
    ///
    /// # Errors
    /// 403 for a reader, 400 for a bad id, 404 when missing.
    pub async fn delete_session(&self, caller: &Caller, sid: &str) -> AppResult<()> {
        writer(caller)?;
        check_sid(sid)?;
        self.store.delete_session(&caller.tenant, sid).await?;
        self.deleted(&caller.tenant, sid);
        self.committed.session(&caller.tenant, sid);
        Ok(())
    }

    /// One page of sessions, as get-hooks show them; metadata filters match
    /// the shaped metadata ([`super::Shaper::list`]). The query is checked
    /// by the caller (limit clamped to [`Service::max_page_size`], cursor
    /// and metadata paths valid).
    ///
    /// # Errors
    /// A store error; 503 when a get-hook fails.
    pub async fn list_sessions(&self, caller: &Caller, q: ListQuery) -> AppResult<Page> {
        let budget = self.config.server.max_page_size;
        self.shape.list(&caller.tenant, q, budget).await
    }

    /// The largest page `GET /v1/sessions` answers.
    pub fn max_page_size(&self) -> usize {
        self.config.server.max_page_size
    }

    /// The named sessions (each id once, in the order first given) as
    /// get-hooks show them, and the ids that do not exist.
    ///
    /// # Errors
    /// 422 `too_many_ids`, 400 for a bad id, a store error, 503 when a
    /// get-hook fails.
    pub async fn batch_get_sessions(
        &self,
        caller: &Caller,
        ids: Vec<String>,
    ) -> AppResult<BatchGetResult> {
        let max = self.config.server.max_batch_ids;
        if ids.len() > max {
            return Err(AppError::unprocessable(
                "too_many_ids",
                format!("at most {max} ids per batch-get"),
            ));
        }
        for id in &ids {
            check_sid(id)?;
        }
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        let ids: Vec<String> = ids
            .into_iter()
            .filter(|id| seen.insert(id.clone()))
            .collect();
        let found = self.store.batch_get_sessions(&caller.tenant, &ids).await?;
        let missing: Vec<String> = ids
            .iter()
            .filter(|id| !found.iter().any(|s| &&s.session_id == id))
            .cloned()
            .collect();
        let loaded = self.shape.snapshot();
        let mut sessions = Vec::with_capacity(found.len());
        for s in found {
            sessions.push(self.shape.read(&loaded, &caller.tenant, s).await?);
        }
        Ok(BatchGetResult { sessions, missing })
    }
}
