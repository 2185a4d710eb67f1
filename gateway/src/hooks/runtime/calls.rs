//! One wrapper per hook function: takes the gateway's own types, runs the
//! call through `Plugin::call` and hands back the gateway's own types.
//! What differs between WIT versions is behind `version::Exports`.

use std::sync::{Arc, OnceLock};

use serde_json::value::RawValue;

use super::pool::Plugin;
use super::{CallError, Commit, MessageTarget, Published, Verdict};
use crate::hooks::outcome::Subject;
use crate::hooks::{v0_1_0, v0_2_0};
use crate::metadata::{MetadataChange, Recorded};
use crate::model::JsonObject;

/// What every plugin of a before-change chain is given: the subject and the
/// change, converted to each WIT version's form at most once, when a plugin
/// of that version first needs it. The plugins of a chain share it until
/// one of them rewrites the change; a rewrite starts a new one.
pub struct ChangeInput {
    pub(crate) subject: Subject,
    pub(crate) change: MetadataChange,
    pub(crate) v0_1: OnceLock<(v0_1_0::SessionRef, v0_1_0::WitChange)>,
    pub(crate) v0_2: OnceLock<(v0_2_0::SessionRef, v0_2_0::WitChange)>,
}

impl ChangeInput {
    /// The input of a chain about `change` to `subject`'s session.
    pub fn new(subject: Subject, change: MetadataChange) -> Arc<Self> {
        Arc::new(Self {
            subject,
            change,
            v0_1: OnceLock::new(),
            v0_2: OnceLock::new(),
        })
    }

    /// The change, taken back at the end of the chain (cloned only when a
    /// call that outlived its caller still holds it).
    pub fn into_change(self: Arc<Self>) -> MetadataChange {
        Arc::try_unwrap(self).map_or_else(|shared| shared.change.clone(), |input| input.change)
    }
}

impl Plugin {
    /// `metadata-hook.before-change`.
    ///
    /// # Errors
    /// When the call fails or answers an invalid rewrite.
    pub async fn before_change(
        self: &Arc<Self>,
        input: &Arc<ChangeInput>,
    ) -> Result<Verdict<MetadataChange>, CallError> {
        let shared = input.clone();
        self.call(&input.subject.tenant, None, move |w| {
            Box::pin(async move { w.exports.before_change(&mut w.store, &shared).await })
        })
        .await
        .map(|(v, _)| v)
    }

    /// `metadata-hook.after-change`; returns what it published.
    ///
    /// # Errors
    /// When the call fails.
    pub async fn after_change(
        self: &Arc<Self>,
        session: &Subject,
        recorded: &Recorded,
        info: Commit,
        publish_key: String,
    ) -> Result<Vec<Published>, CallError> {
        let (s, recorded) = (session.clone(), recorded.clone());
        self.call(&session.tenant, Some(publish_key), move |w| {
            Box::pin(async move {
                w.exports
                    .after_change(&mut w.store, &s, &recorded, &info)
                    .await
            })
        })
        .await
        .map(|((), p)| p)
    }

    /// `metadata-hook.on-get`.
    ///
    /// # Errors
    /// When the call fails or answers something that is not a JSON object.
    pub async fn on_get(
        self: &Arc<Self>,
        session: &Subject,
        metadata: String,
    ) -> Result<JsonObject, CallError> {
        let s = session.clone();
        self.call(&session.tenant, None, move |w| {
            Box::pin(async move { w.exports.on_get(&mut w.store, &s, &metadata).await })
        })
        .await
        .map(|(v, _)| v)
    }

    /// `feedback-hook.before-add`.
    ///
    /// # Errors
    /// When the call fails or answers an invalid rewrite.
    pub async fn before_add(
        self: &Arc<Self>,
        session: &Subject,
        feedback: String,
    ) -> Result<Verdict<JsonObject>, CallError> {
        let s = session.clone();
        self.call(&session.tenant, None, move |w| {
            Box::pin(async move { w.exports.before_add(&mut w.store, &s, &feedback).await })
        })
        .await
        .map(|(v, _)| v)
    }

    /// `feedback-hook.after-add`; returns what it published.
    ///
    /// # Errors
    /// When the call fails.
    pub async fn after_add(
        self: &Arc<Self>,
        session: &Subject,
        feedback: &str,
        info: Commit,
        publish_key: String,
    ) -> Result<Vec<Published>, CallError> {
        let (s, feedback) = (session.clone(), feedback.to_owned());
        self.call(&session.tenant, Some(publish_key), move |w| {
            Box::pin(async move {
                w.exports
                    .after_add(&mut w.store, &s, &feedback, &info)
                    .await
            })
        })
        .await
        .map(|((), p)| p)
    }

    /// `message-hook.before-append` / `before-update` (WIT 0.2.0 and later).
    ///
    /// # Errors
    /// When the call fails, the plugin has no message hook, or it answers a
    /// rewrite that is not JSON or is over `max_bytes`.
    pub async fn before_message(
        self: &Arc<Self>,
        session: &Subject,
        target: &MessageTarget,
        content: &str,
        max_bytes: usize,
    ) -> Result<Verdict<Box<RawValue>>, CallError> {
        let (s, target, content) = (session.clone(), target.clone(), content.to_owned());
        self.call(&session.tenant, None, move |w| {
            Box::pin(async move {
                w.exports
                    .before_message(&mut w.store, &s, &target, &content, max_bytes)
                    .await
            })
        })
        .await
        .map(|(v, _)| v)
    }
}
