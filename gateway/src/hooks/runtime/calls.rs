//! One wrapper per hook function: takes the gateway's own types, runs the
//! call through `Plugin::call` and hands back the gateway's own types.
//! What differs between WIT versions is behind `version::Exports`.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::input::ChangeInput;
use super::pool::Plugin;
use super::{CallError, Commit, MessageTarget, Published, Verdict};
use crate::hooks::outcome::Subject;
use crate::metadata::{MetadataChange, Recorded};
use crate::model::JsonObject;

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
