//! Messages: append (idempotent on retry), list (page or latest N), read,
//! replace, patch; the message hooks.

use serde_json::Value;
use serde_json::value::RawValue;

use super::{Service, check_ids, writer};
use crate::auth::Caller;
use crate::config::{HookEvent, HookPhase};
use crate::error::{AppError, AppResult};
use crate::hooks::runtime::MessageTarget;
use crate::model::{Message, MessageInput, MessagePatch, MessageRange};
use crate::store::Appended;

/// What a list request asked for.
#[derive(Debug, Clone, Copy)]
pub enum Wanted {
    /// `limit` (None: the page size) messages from `offset`.
    Page {
        /// Page size; `None` for the largest.
        limit: Option<u64>,
        /// Id of the first message.
        offset: u64,
    },
    /// The last `n` messages.
    Latest(u64),
}

impl Service {
    /// Checks each stored part of a message against
    /// `server.max_message_bytes`, so one stored message is at most three
    /// times that (which bounds what a list read holds per message).
    /// [`Service::check_size`] over a whole message (`POST`, `PUT`).
    fn check_input_size(&self, input: &MessageInput) -> AppResult<()> {
        self.check_size(
            Some(&input.message),
            input.redact_message.as_deref(),
            input.event_loop_metrics.as_ref(),
        )
    }

    fn check_size(
        &self,
        message: Option<&RawValue>,
        redact: Option<&RawValue>,
        metrics: Option<&Value>,
    ) -> AppResult<()> {
        let max = self.config.server.max_message_bytes;
        let too_large = |what: &str| {
            Err(AppError::unprocessable(
                "message_too_large",
                format!("{what} may be at most {max} bytes"),
            ))
        };
        if message.is_some_and(|m| m.get().len() > max) {
            return too_large("a message");
        }
        if redact.is_some_and(|r| r.get().len() > max) {
            return too_large("redact_message");
        }
        if metrics.is_some_and(|m| serde_json::to_vec(m).map_or(usize::MAX, |b| b.len()) > max) {
            return too_large("event_loop_metrics");
        }
        Ok(())
    }

    /// Appends a message through the `message.append` hooks. The result is
    /// the message and whether it was written (`false`: an identical retry,
    /// the message already stored).
    ///
    /// # Errors
    /// 403, 400 (bad ids), 404, 409 (`message_conflict`, `message_id_gap`),
    /// 422 (`message_too_large`, `denied_by_hook`), 503 `hook_failed`.
    pub async fn append_message(
        &self,
        caller: &Caller,
        sid: &str,
        aid: &str,
        input: MessageInput,
    ) -> AppResult<(Message, bool)> {
        writer(caller)?;
        check_ids(sid, aid)?;
        self.check_input_size(&input)?;
        let written = self.append_unnotified(caller, sid, aid, input).await?;
        if written.1 {
            self.committed.session(&caller.tenant, sid);
        }
        Ok(written)
    }

    /// [`Service::append_message`] after its checks, without the commit
    /// notification.
    async fn append_unnotified(
        &self,
        caller: &Caller,
        sid: &str,
        aid: &str,
        input: MessageInput,
    ) -> AppResult<(Message, bool)> {
        let input = self.append_hooked(caller, sid, aid, input).await?;
        Ok(
            match self
                .store
                .append_message(&caller.tenant, sid, aid, input)
                .await?
            {
                Appended::Created(m) => (m, true),
                Appended::Existing(m) => (m, false),
            },
        )
    }

    /// A checked append's message as the `message.append` hooks leave it
    /// (a batch is no way around the masker or the guardrail).
    pub(super) async fn append_hooked(
        &self,
        caller: &Caller,
        sid: &str,
        aid: &str,
        mut input: MessageInput,
    ) -> AppResult<MessageInput> {
        input.message = self
            .message_hooks(caller, sid, aid, input.message_id, false, input.message)
            .await?;
        Ok(input)
    }

    /// Replaces a message (`PUT`): `message` and `redact_message` are
    /// replaced, `event_loop_metrics` only when given.
    ///
    /// # Errors
    /// 403, 400, 404, 422 (`message_id_mismatch`, `message_too_large`,
    /// `denied_by_hook`), 503 `hook_failed`.
    pub async fn replace_message(
        &self,
        caller: &Caller,
        sid: &str,
        aid: &str,
        mid: u64,
        input: MessageInput,
    ) -> AppResult<Message> {
        writer(caller)?;
        check_ids(sid, aid)?;
        self.check_input_size(&input)?;
        if input.message_id.is_some_and(|id| id != mid) {
            return Err(AppError::unprocessable(
                "message_id_mismatch",
                format!("body message_id does not match the path's {mid}"),
            ));
        }
        let patch = MessagePatch {
            message: Some(input.message),
            redact_message: Some(input.redact_message),
            event_loop_metrics: input.event_loop_metrics.map(Some),
        };
        self.update_message(caller, sid, aid, mid, patch).await
    }

    /// Changes the fields of a message a patch gives (`PATCH`).
    ///
    /// # Errors
    /// 403, 400 (`invalid_body`: nothing to change; bad ids), 404, 422
    /// (`message_too_large`, `denied_by_hook`), 503 `hook_failed`.
    pub async fn patch_message(
        &self,
        caller: &Caller,
        sid: &str,
        aid: &str,
        mid: u64,
        patch: MessagePatch,
    ) -> AppResult<Message> {
        writer(caller)?;
        check_ids(sid, aid)?;
        if patch.is_empty() {
            return Err(AppError::bad_request(
                "invalid_body",
                "nothing to change: give message, redact_message or event_loop_metrics",
            ));
        }
        self.check_size(
            patch.message.as_deref(),
            patch.redact_message.as_ref().and_then(|r| r.as_deref()),
            patch.event_loop_metrics.as_ref().and_then(|m| m.as_ref()),
        )?;
        self.update_message(caller, sid, aid, mid, patch).await
    }

    async fn update_message(
        &self,
        caller: &Caller,
        sid: &str,
        aid: &str,
        mid: u64,
        patch: MessagePatch,
    ) -> AppResult<Message> {
        let m = self.update_unnotified(caller, sid, aid, mid, patch).await?;
        self.committed.session(&caller.tenant, sid);
        Ok(m)
    }

    /// A checked message update through the `message.update` hooks, without
    /// the commit notification.
    async fn update_unnotified(
        &self,
        caller: &Caller,
        sid: &str,
        aid: &str,
        mid: u64,
        patch: MessagePatch,
    ) -> AppResult<Message> {
        let patch = self.update_hooked(caller, sid, aid, mid, patch).await?;
        Ok(self
            .store
            .update_message(&caller.tenant, sid, aid, mid, patch)
            .await?)
    }

    /// A checked patch as the `message.update` hooks leave it (a patch
    /// without content runs none).
    pub(super) async fn update_hooked(
        &self,
        caller: &Caller,
        sid: &str,
        aid: &str,
        mid: u64,
        mut patch: MessagePatch,
    ) -> AppResult<MessagePatch> {
        if let Some(content) = patch.message.take() {
            patch.message = Some(
                self.message_hooks(caller, sid, aid, Some(mid), true, content)
                    .await?,
            );
        }
        Ok(patch)
    }

    /// Runs the `message.append` (or, with `update`, `message.update`)
    /// before-chain over a message's content; returns the content to store.
    /// Reads the session (for the hooks' `session-ref`) only when such a
    /// hook is loaded.
    async fn message_hooks(
        &self,
        caller: &Caller,
        sid: &str,
        aid: &str,
        mid: Option<u64>,
        update: bool,
        content: Box<RawValue>,
    ) -> AppResult<Box<RawValue>> {
        let loaded = self.hooks.snapshot();
        let event = if update {
            HookEvent::MessageUpdate
        } else {
            HookEvent::MessageAppend
        };
        if !loaded.runs(HookPhase::Before, event) {
            return Ok(content);
        }
        let subject = self.subject(&caller.tenant, sid, true).await?;
        let target = MessageTarget {
            update,
            agent_id: aid.to_owned(),
            message_id: mid,
        };
        let max = self.config.server.max_message_bytes;
        Ok(self
            .hooks
            .before_message(&loaded, &subject, &target, content, max)
            .await?)
    }

    /// A message.
    ///
    /// # Errors
    /// 400 for bad ids, 404 when missing.
    pub async fn get_message(
        &self,
        caller: &Caller,
        sid: &str,
        aid: &str,
        mid: u64,
    ) -> AppResult<Message> {
        check_ids(sid, aid)?;
        Ok(self
            .store
            .get_message(&caller.tenant, sid, aid, mid)
            .await?)
    }

    /// Reads a page of messages within the page size and the byte budget,
    /// serialized as a `MessageList` JSON body: messages are written out as
    /// they are read (their text kept as stored, never parsed into a JSON
    /// tree), so a request holds at most one store read plus the budget.
    ///
    /// # Errors
    /// 400 for bad ids, 404 when the session or agent is missing.
    pub async fn list_messages(
        &self,
        caller: &Caller,
        sid: &str,
        aid: &str,
        wanted: Wanted,
    ) -> AppResult<Vec<u8>> {
        check_ids(sid, aid)?;
        let store = &self.store;
        let cap = self.config.server.max_page_size as u64;
        let budget = self.config.server.max_response_bytes;
        let t = &caller.tenant;
        // A first read, when the request is answered by one `Latest` read.
        let mut first = None;
        let (start, want) = match wanted {
            Wanted::Page { limit, offset } => (offset, limit.unwrap_or(cap)),
            Wanted::Latest(n) if n <= cap => {
                let (msgs, total) = store
                    .list_messages(t, sid, aid, MessageRange::Latest(n))
                    .await?;
                first = Some((msgs, total));
                (total.saturating_sub(n), n)
            }
            Wanted::Latest(n) => {
                let (_, total) = store
                    .list_messages(
                        t,
                        sid,
                        aid,
                        MessageRange::Page {
                            limit: 0,
                            offset: 0,
                        },
                    )
                    .await?;
                (total.saturating_sub(n), n)
            }
        };
        let end = start.saturating_add(want.min(cap));
        let mut out = Vec::with_capacity(4096);
        out.extend_from_slice(b"{\"messages\":[");
        let mut next = start;
        let mut total: u64;
        let mut count = 0u64;
        let mut one = Vec::new();
        'read: loop {
            let (msgs, t_now) = match first.take() {
                Some(read) => read,
                None => {
                    let limit = end - next;
                    store
                        .list_messages(
                            t,
                            sid,
                            aid,
                            MessageRange::Page {
                                limit,
                                offset: next,
                            },
                        )
                        .await?
                }
            };
            total = t_now;
            if msgs.is_empty() {
                break;
            }
            for m in msgs {
                one.clear();
                serde_json::to_writer(&mut one, &m).map_err(|e| {
                    AppError::Internal(format!("message {} does not serialize: {e}", m.message_id))
                })?;
                if count > 0 && out.len() + one.len() + 1 > budget {
                    break 'read;
                }
                if count > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&one);
                count += 1;
                next = m.message_id + 1;
            }
            if next >= end.min(total) {
                break;
            }
        }
        let next_offset = if count > 0 && next < total {
            next.to_string()
        } else {
            "null".to_owned()
        };
        let truncated = next < start.saturating_add(want).min(total);
        out.extend_from_slice(
            format!(
                "],\"total\":{total},\"next_offset\":{next_offset},\"truncated\":{truncated}}}"
            )
            .as_bytes(),
        );
        Ok(out)
    }
}
