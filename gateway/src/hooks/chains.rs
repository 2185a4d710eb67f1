//! Running the chains: before-hooks (may deny or rewrite), get-hooks (shape
//! metadata on its way out) and after-hooks (observe committed changes and
//! publish notifications).

use serde_json::Value;

use super::runtime::input::ChangeInput;
use super::runtime::{self, CallError, MessageTarget, Plugin, Verdict};
use super::{HookHost, Loaded, Notification, Outcome, Refusal, Subject};
use crate::config::{HookEvent, HookPhase};
use crate::metadata::{MetadataChange, Recorded};
use crate::model::{Event, EventType, JsonObject, Tenant, format_ms};

fn denied(p: &Plugin, reason: String) -> Refusal {
    Refusal::Denied {
        plugin: p.meta.name.clone(),
        reason,
    }
}

/// Applies a plugin's failure policy: fail closed refuses, fail open logs and goes on.
fn on_failure(p: &Plugin, e: &CallError) -> Outcome<()> {
    // A quarantine was logged once, when it began: not again for every call it skips.
    let quarantined = matches!(e, CallError::Quarantined(_));
    if p.fails_closed() {
        if let CallError::Quarantined(left) = e {
            return Err(Refusal::Skipped {
                plugin: p.meta.name.clone(),
                retry_in: *left,
            });
        }
        tracing::warn!(plugin = %p.meta.name, error = %e, "hook failed; failing closed");
        Err(Refusal::Failed {
            plugin: p.meta.name.clone(),
            cause: e.to_string(),
        })
    } else {
        if !quarantined {
            tracing::warn!(plugin = %p.meta.name, error = %e, "hook failed; failing open");
        }
        Ok(())
    }
}

fn session_ref(t: &Tenant, sid: &str, session_type: &str) -> Subject {
    Subject {
        tenant: t.as_str().to_owned(),
        session_id: sid.to_owned(),
        session_type: session_type.to_owned(),
    }
}

impl HookHost {
    /// Runs the before-chain of a metadata change; allows the change to store.
    ///
    /// # Errors
    /// The chain's [`Refusal`]: a deny, or a failing fail-closed plugin.
    pub async fn before_metadata(
        &self,
        loaded: &Loaded,
        subject: &Subject,
        change: MetadataChange,
    ) -> Outcome<MetadataChange> {
        let chain = loaded.chain(HookPhase::Before, metadata_event(&change));
        if chain.is_empty() {
            return Ok(change);
        }
        // Converted to WIT once for the whole chain, not once per plugin;
        // again only after a rewrite.
        let mut input = ChangeInput::new(subject.clone(), change);
        for p in &chain {
            match p.before_change(&input).await {
                Ok(Verdict::Allow) => {}
                Ok(Verdict::Deny(reason)) => return Err(denied(p, reason)),
                Ok(Verdict::Rewrite(c)) => input = ChangeInput::new(subject.clone(), c),
                Err(e) => on_failure(p, &e)?,
            }
        }
        Ok(input.into_change())
    }

    /// Runs the before-chain of a feedback; allows the feedback to store.
    ///
    /// # Errors
    /// As [`HookHost::before_metadata`].
    pub async fn before_feedback(
        &self,
        loaded: &Loaded,
        subject: &Subject,
        feedback: JsonObject,
    ) -> Outcome<JsonObject> {
        let chain = loaded.chain(HookPhase::Before, HookEvent::FeedbackAdd);
        let mut feedback = feedback;
        for p in &chain {
            let text = object_text(&feedback);
            match p.before_add(subject, text).await {
                Ok(Verdict::Allow) => {}
                Ok(Verdict::Deny(reason)) => return Err(denied(p, reason)),
                Ok(Verdict::Rewrite(fb)) => feedback = fb,
                Err(e) => on_failure(p, &e)?,
            }
        }
        Ok(feedback)
    }

    /// Runs the before-chain of a message's content (`message.append` when
    /// `target.update` is false, else `message.update`); allows the content
    /// to store. A rewrite must be JSON of at most `max_bytes`, or the call
    /// counts as failed.
    ///
    /// # Errors
    /// As [`HookHost::before_metadata`].
    pub async fn before_message(
        &self,
        loaded: &Loaded,
        subject: &Subject,
        target: &MessageTarget,
        content: Box<serde_json::value::RawValue>,
        max_bytes: usize,
    ) -> Outcome<Box<serde_json::value::RawValue>> {
        let event = if target.update {
            HookEvent::MessageUpdate
        } else {
            HookEvent::MessageAppend
        };
        let chain = loaded.chain(HookPhase::Before, event);
        let mut content = content;
        for p in &chain {
            match p
                .before_message(subject, target, content.get(), max_bytes)
                .await
            {
                Ok(Verdict::Allow) => {}
                Ok(Verdict::Deny(reason)) => return Err(denied(p, reason)),
                Ok(Verdict::Rewrite(c)) => content = c,
                Err(e) => on_failure(p, &e)?,
            }
        }
        Ok(content)
    }

    /// Runs the get-chain of the plugin set `loaded` (a request's snapshot)
    /// over metadata about to be shown.
    ///
    /// # Errors
    /// 503 `hook_failed` for a failing fail-closed plugin.
    pub async fn show_metadata_in(
        &self,
        loaded: &Loaded,
        t: &Tenant,
        sid: &str,
        session_type: &str,
        metadata: JsonObject,
    ) -> Outcome<JsonObject> {
        let chain = loaded.chain(HookPhase::Get, HookEvent::MetadataGet);
        if chain.is_empty() {
            return Ok(metadata);
        }
        let sref = session_ref(t, sid, session_type);
        let mut metadata = metadata;
        for p in &chain {
            let text = object_text(&metadata);
            match p.on_get(&sref, text).await {
                Ok(m) => metadata = m,
                Err(e) => on_failure(p, &e)?,
            }
        }
        Ok(metadata)
    }

    /// Runs the after-chain for one committed event and returns the
    /// notifications its plugins published. A failing after-hook is counted
    /// and logged; it does not stop the others.
    pub async fn after_event(&self, ev: &Event) -> Vec<Notification> {
        let Some(event) = HookEvent::of(ev.kind) else {
            return Vec::new();
        };
        let chain = self.snapshot().chain(HookPhase::After, event);
        if chain.is_empty() {
            return Vec::new();
        }
        // The change as the store recorded it; an event that does not read
        // back is an error, never an empty change.
        let recorded = match ev.kind {
            EventType::MetadataUpdated | EventType::MetadataDeleted => {
                Recorded::from_event_payload(ev.kind == EventType::MetadataDeleted, &ev.payload)
                    .map(AfterInput::Metadata)
            }
            EventType::FeedbackAdded => match ev.payload.get("feedback") {
                Some(fb @ Value::Object(_)) => Ok(AfterInput::Feedback(fb.to_string())),
                _ => Err("feedback event payload has no feedback object".to_owned()),
            },
            _ => Err(format!("no after-hooks on {} events", ev.kind.as_str())),
        };
        let input = match recorded {
            Ok(input) => input,
            Err(why) => {
                tracing::error!(seq = ev.seq, session_id = %ev.session_id, kind = ev.kind.as_str(), error = %why, "after-hooks not run: the event does not read back");
                return Vec::new();
            }
        };
        let subject = Subject {
            tenant: ev.tenant.clone(),
            session_id: ev.session_id.clone(),
            session_type: ev.session_type.clone(),
        };
        let info = runtime::Commit {
            event_id: ev.seq,
            timestamp: format_ms(ev.ts),
        };
        let key = format!("{}/{}/{}", ev.tenant, ev.session_id, ev.seq);
        let mut out = Vec::new();
        for p in &chain {
            let result = match &input {
                AfterInput::Metadata(r) => {
                    p.after_change(&subject, r, info.clone(), key.clone()).await
                }
                AfterInput::Feedback(fb) => {
                    p.after_add(&subject, fb, info.clone(), key.clone()).await
                }
            };
            match result {
                Ok(published) => {
                    out.extend(published.into_iter().map(|n| Notification {
                        plugin: p.meta.name.clone(),
                        id: n.id,
                        target: n.target,
                        payload: n.payload,
                    }));
                }
                // Logged once, when the quarantine began.
                Err(CallError::Quarantined(_)) => {
                    tracing::debug!(plugin = %p.meta.name, seq = ev.seq, session_id = %ev.session_id, "after-hook skipped: quarantined for this tenant")
                }
                Err(e) => {
                    tracing::warn!(plugin = %p.meta.name, seq = ev.seq, session_id = %ev.session_id, error = %e, "after-hook failed")
                }
            }
        }
        out
    }
}

/// What an after-chain receives, read once from the event.
enum AfterInput {
    Metadata(Recorded),
    Feedback(String),
}

/// A JSON object's text, as `Value::Object(o).to_string()` writes it,
/// without copying the object first.
fn object_text(o: &JsonObject) -> String {
    serde_json::to_string(o).expect("a JSON object serialises")
}

/// The hook event of a metadata change.
pub fn metadata_event(change: &MetadataChange) -> HookEvent {
    match change {
        MetadataChange::Update(_) => HookEvent::MetadataUpdate,
        MetadataChange::Delete(_) => HookEvent::MetadataDelete,
    }
}
