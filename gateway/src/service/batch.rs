//! Several writes to one session in one request: what a Strands agent does at
//! the end of a turn (append the assistant message, then store the agent).

use serde::Deserialize;
use serde_json::Value;

use super::{Service, check_aid, check_sid, writer};
use crate::api::BatchWriteItem;
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::model::{JsonObject, MessageInput, MessagePatch};
use crate::store::{Appended, BatchOutcome, BatchWrite, BatchWritten};

/// Most operations in one batch.
pub const MAX_BATCH_OPS: usize = 16;

/// What an operation does.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = BatchOpKind)]
pub enum OpKind {
    /// `POST …/agents/{agent_id}/messages` with `message`.
    AppendMessage,
    /// `PUT …/agents/{agent_id}` with `agent` (and `if_match`).
    PutAgent,
    /// `PATCH …/agents/{agent_id}/messages/{message_id}` with `patch`.
    PatchMessage,
}

/// One write of a batch.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BatchOp)]
pub struct Op {
    /// What to do.
    pub op: OpKind,
    /// The agent written to.
    #[schema(value_type = crate::api::SessionId)]
    pub agent_id: String,
    /// `append_message`: the message, as for `POST …/messages`.
    #[serde(default)]
    pub message: Option<MessageInput>,
    /// `put_agent`: the agent object, as for `PUT …/agents/{aid}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub agent: Option<Value>,
    /// `put_agent`: write only if the agent's version is this one (as `If-Match`).
    #[serde(default)]
    pub if_match: Option<u64>,
    /// `patch_message`: the message's id.
    #[serde(default)]
    pub message_id: Option<u64>,
    /// `patch_message`: the fields to change, as for `PATCH …/messages/{mid}`.
    #[serde(default)]
    pub patch: Option<MessagePatch>,
}

/// Why a batch did not run to its end.
pub enum BatchError {
    /// Refused before anything ran (nothing written).
    Invalid(AppError),
    /// Operation `failed_op` failed with `error`; the ones before it were
    /// written (`results`), the ones after it were not run.
    Stopped {
        /// Why the operation failed.
        error: AppError,
        /// Its index (0-based).
        failed_op: usize,
        /// The results of the operations written before it.
        results: Vec<BatchWriteItem>,
    },
}

impl From<AppError> for BatchError {
    fn from(e: AppError) -> Self {
        Self::Invalid(e)
    }
}

/// An operation checked and ready to run.
enum Ready {
    Append(String, MessageInput),
    Put(String, JsonObject, Option<u64>),
    Patch(String, u64, MessagePatch),
}

fn bad(i: usize, message: impl std::fmt::Display) -> AppError {
    AppError::bad_request("invalid_body", format!("ops[{i}]: {message}"))
}

impl Service {
    /// Runs the operations of a batch in order, each exactly as its own
    /// endpoint would (same checks, same hooks, same answers): every one is
    /// checked before any runs; the first that fails stops the batch. The
    /// before-hooks of the operations run first, in order, and the writes
    /// they let through then go to the store together
    /// ([`AgentData::write_batch`](crate::store::AgentData::write_batch)),
    /// which may commit them at once. The result holds each operation's
    /// status and answer body.
    ///
    /// # Errors
    /// [`BatchError::Invalid`] when the batch was refused before anything
    /// ran; [`BatchError::Stopped`] when an operation failed.
    pub async fn batch(
        &self,
        caller: &Caller,
        sid: &str,
        ops: Vec<Op>,
    ) -> Result<Vec<BatchWriteItem>, BatchError> {
        writer(caller)?;
        check_sid(sid)?;
        if ops.is_empty() || ops.len() > MAX_BATCH_OPS {
            return Err(AppError::unprocessable(
                "too_many_ops",
                format!("a batch has 1 to {MAX_BATCH_OPS} ops"),
            )
            .into());
        }
        let mut ready = Vec::with_capacity(ops.len());
        for (i, op) in ops.into_iter().enumerate() {
            ready.push(self.check_op(i, op)?);
        }
        // The hooks of each write, in order, up to the first that refuses;
        // then the writes before it, together.
        let mut writes = Vec::with_capacity(ready.len());
        let mut refused = None;
        for (i, op) in ready.into_iter().enumerate() {
            match self.hooked(caller, sid, op).await {
                Ok(w) => writes.push(w),
                Err(e) => {
                    refused = Some((e, i));
                    break;
                }
            }
        }
        let outcome = if writes.is_empty() {
            // The first op's hooks refused it: nothing to write.
            BatchOutcome::default()
        } else {
            self.store.write_batch(&caller.tenant, sid, writes).await
        };
        let mut results = Vec::with_capacity(outcome.done.len());
        let mut wrote = false;
        for w in outcome.done {
            let (status, created, body) = answer(w)?;
            wrote |= created;
            results.push(BatchWriteItem { status, body });
        }
        // One notification for all the writes, also when the batch stopped.
        if wrote {
            self.committed.session(&caller.tenant, sid);
        }
        let stopped = match outcome.failed {
            Some(e) => Some((AppError::from(e), results.len())),
            None => refused,
        };
        match stopped {
            None => Ok(results),
            Some((error, failed_op)) => Err(BatchError::Stopped {
                error,
                failed_op,
                results,
            }),
        }
    }

    /// Checks one operation the way its own endpoint would, before anything runs.
    fn check_op(&self, i: usize, op: Op) -> AppResult<Ready> {
        check_aid(&op.agent_id)?;
        let max_msg = self.config.server.max_message_bytes;
        let too_large = || {
            AppError::unprocessable(
                "message_too_large",
                format!("ops[{i}]: a message may be at most {max_msg} bytes"),
            )
        };
        let given = |name: &str, present: bool, wanted: bool| {
            if present != wanted {
                let verb = if wanted { "needs" } else { "does not take" };
                Err(bad(i, format!("this op {verb} `{name}`")))
            } else {
                Ok(())
            }
        };
        let kind = op.op;
        given(
            "message",
            op.message.is_some(),
            kind == OpKind::AppendMessage,
        )?;
        given("agent", op.agent.is_some(), kind == OpKind::PutAgent)?;
        given("patch", op.patch.is_some(), kind == OpKind::PatchMessage)?;
        given(
            "message_id",
            op.message_id.is_some(),
            kind == OpKind::PatchMessage,
        )?;
        if op.if_match.is_some() && kind != OpKind::PutAgent {
            return Err(bad(i, "only put_agent takes `if_match`"));
        }
        match kind {
            OpKind::AppendMessage => {
                let input = op.message.expect("checked above");
                if input.message.get().len() > max_msg {
                    return Err(too_large());
                }
                Ok(Ready::Append(op.agent_id, input))
            }
            OpKind::PutAgent => {
                let body = super::agents::agent_body(
                    &self.config,
                    &op.agent_id,
                    op.agent.expect("checked above"),
                    || bad(i, "an agent must be a JSON object"),
                    |given| format!("ops[{i}]: agent.agent_id {given} does not match agent_id"),
                )?;
                Ok(Ready::Put(op.agent_id, body, op.if_match))
            }
            OpKind::PatchMessage => {
                let patch = op.patch.expect("checked above");
                if patch.is_empty() {
                    return Err(bad(
                        i,
                        "nothing to change: give message, redact_message or event_loop_metrics",
                    ));
                }
                if let Some(m) = &patch.message
                    && m.get().len() > max_msg
                {
                    return Err(too_large());
                }
                Ok(Ready::Patch(
                    op.agent_id,
                    op.message_id.expect("checked above"),
                    patch,
                ))
            }
        }
    }

    /// One checked operation as its endpoint's hooks leave it, ready to write.
    async fn hooked(&self, caller: &Caller, sid: &str, op: Ready) -> AppResult<BatchWrite> {
        Ok(match op {
            Ready::Append(aid, input) => {
                let input = self.append_hooked(caller, sid, &aid, input).await?;
                BatchWrite::Append { aid, input }
            }
            Ready::Put(aid, body, if_match) => BatchWrite::PutAgent {
                aid,
                body,
                if_match,
            },
            Ready::Patch(aid, mid, patch) => {
                let patch = self.update_hooked(caller, sid, &aid, mid, patch).await?;
                BatchWrite::UpdateMessage { aid, mid, patch }
            }
        })
    }
}

/// A written operation's status, whether it wrote, and its answer body.
fn answer(w: BatchWritten) -> AppResult<(u16, bool, Value)> {
    Ok(match w {
        BatchWritten::Appended(Appended::Created(m)) => (201, true, to_value(&m)?),
        BatchWritten::Appended(Appended::Existing(m)) => (200, false, to_value(&m)?),
        BatchWritten::Agent(agent, created) => {
            (if created { 201 } else { 200 }, true, agent.to_json())
        }
        BatchWritten::Message(m) => (200, true, to_value(&m)?),
    })
}

fn to_value<T: serde::Serialize>(v: &T) -> AppResult<Value> {
    serde_json::to_value(v).map_err(|e| AppError::Internal(format!("serializing a result: {e}")))
}
