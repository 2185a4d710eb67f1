//! Agents: create/replace with optimistic concurrency, read, list.

use serde_json::Value;

use super::{Service, check_ids, check_sid, writer};
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::model::{AGENT_SERVER_FIELDS, Agent, JsonObject};
use crate::store::StoreError;

/// A write precondition (from `If-Match` / `If-None-Match`, or a batch op's
/// `if_match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// No precondition.
    None,
    /// The stored version must be this one (0: the agent must not exist).
    Version(u64),
    /// `If-Match: *`: the agent must exist, whatever its version (RFC 9110).
    Exists,
}

/// Attempts of an `If-Match: *` write: each reads the current version and
/// writes only while it is still current, so a concurrent writer makes it
/// try again rather than overwrite a version it did not see.
const IF_MATCH_ANY_ATTEMPTS: usize = 16;

/// Checks an agent body for agent `aid` and drops the server-owned fields.
/// `what` names it in messages (`"body"`, or `"ops[3]: agent"` in a batch);
/// `not_object` is the error for a body that is not an object.
pub(super) fn agent_body(
    config: &crate::config::Config,
    aid: &str,
    body: Value,
    not_object: impl FnOnce() -> AppError,
    mismatch: impl FnOnce(&Value) -> String,
) -> AppResult<JsonObject> {
    crate::limits::check_json("agent", &body, &config.limits, None)?;
    let Value::Object(mut body) = body else {
        return Err(not_object());
    };
    if let Some(given) = body.get("agent_id")
        && given.as_str() != Some(aid)
    {
        return Err(AppError::unprocessable(
            "agent_id_mismatch",
            mismatch(given),
        ));
    }
    body.retain(|k, _| !AGENT_SERVER_FIELDS.contains(&k.as_str()));
    Ok(body)
}

impl Service {
    /// Creates or replaces an agent under `pre`; the result is the agent
    /// stored and whether it was created.
    ///
    /// # Errors
    /// 403, 400 (`invalid_body`, bad ids), 404 (no session), 412
    /// `version_mismatch`, 422 (`agent_id_mismatch`, `too_deep`).
    pub async fn put_agent(
        &self,
        caller: &Caller,
        sid: &str,
        aid: &str,
        body: Value,
        pre: Precondition,
    ) -> AppResult<(Agent, bool)> {
        writer(caller)?;
        check_ids(sid, aid)?;
        let body = agent_body(
            &self.config,
            aid,
            body,
            || AppError::bad_request("invalid_body", "an agent must be a JSON object"),
            |given| format!("body agent_id {given} does not match the path's {aid:?}"),
        )?;
        let t = &caller.tenant;
        let written = match pre {
            Precondition::None => self.store.put_agent(t, sid, aid, body, None).await?,
            Precondition::Version(v) => self.store.put_agent(t, sid, aid, body, Some(v)).await?,
            Precondition::Exists => self.put_existing(caller, sid, aid, body).await?,
        };
        self.committed.session(t, sid);
        Ok(written)
    }

    /// `If-Match: *`: replaces the agent only if it exists (412 otherwise).
    async fn put_existing(
        &self,
        caller: &Caller,
        sid: &str,
        aid: &str,
        body: JsonObject,
    ) -> AppResult<(Agent, bool)> {
        let t = &caller.tenant;
        let mut last = None;
        for _ in 0..IF_MATCH_ANY_ATTEMPTS {
            let current = match self.store.get_agent(t, sid, aid).await {
                Ok(a) => a.version,
                Err(StoreError::NotFound(_)) => {
                    // 404 when the session is missing, 412 when only the agent is.
                    self.store.get_session(t, sid).await?;
                    return Err(AppError::PreconditionFailed(format!(
                        "If-Match: * but agent {aid:?} does not exist"
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            match self
                .store
                .put_agent(t, sid, aid, body.clone(), Some(current))
                .await
            {
                Err(e @ StoreError::VersionMismatch { .. }) => last = Some(e),
                other => return Ok(other?),
            }
        }
        Err(last
            .map(AppError::from)
            .unwrap_or_else(|| AppError::Internal("If-Match: * made no attempt".into())))
    }

    /// An agent.
    ///
    /// # Errors
    /// 400 for bad ids, 404 when missing.
    pub async fn get_agent(&self, caller: &Caller, sid: &str, aid: &str) -> AppResult<Agent> {
        check_ids(sid, aid)?;
        Ok(self.store.get_agent(&caller.tenant, sid, aid).await?)
    }

    /// Every agent of a session.
    ///
    /// # Errors
    /// 400 for a bad id, 404 when the session is missing.
    pub async fn list_agents(&self, caller: &Caller, sid: &str) -> AppResult<Vec<Agent>> {
        check_sid(sid)?;
        Ok(self.store.list_agents(&caller.tenant, sid).await?)
    }
}
