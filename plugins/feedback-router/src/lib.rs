//! `feedback-router`: an example feedback plugin that publishes every stored
//! feedback to a notification target chosen by its rating.
//!
//! Configuration (the plugin's `config` table in gateway.toml; these are the
//! defaults, and a partial `targets` table overrides only the ratings it
//! names):
//!
//! ```json
//! { "targets": { "up": "good", "down": "bad", "none": "neutral" } }
//! ```
//!
//! `none` is used when the feedback has no rating (`null` or absent). A rating
//! mapped to `null` is not published. Each target must also be granted to the
//! plugin in gateway.toml, or `publish` fails with `not-granted`.
//!
//! The payload published by `after-add`:
//!
//! ```json
//! { "session_id": "...", "tenant": "...", "feedback": { ...as stored... },
//!   "timestamp": "<commit time, RFC 3339>", "event_id": 7 }
//! ```
//!
//! A failed `publish` is logged as a warning. `before-add` allows everything.

mod route;

use std::sync::OnceLock;

use exports::gateway::hooks::feedback_hook::{
    CommitInfo, FeedbackVerdict, Guest, Json, SessionRef,
};
use gateway::hooks::host::{self, Field, Level, PublishError};
use route::Routes;

wit_bindgen::generate!({
    path: "../../wit/hooks@0.1.0",
    world: "feedback-plugin",
});

fn routes() -> &'static Result<Routes, String> {
    static ROUTES: OnceLock<Result<Routes, String>> = OnceLock::new();
    ROUTES.get_or_init(|| Routes::from_config(&host::config()))
}

fn field(key: &str, value: impl Into<String>) -> Field {
    Field {
        key: key.to_owned(),
        value: value.into(),
    }
}

fn describe(error: PublishError) -> &'static str {
    match error {
        PublishError::NotGranted => "not-granted",
        PublishError::InvalidPayload => "invalid-payload",
        PublishError::Unavailable => "unavailable",
    }
}

struct FeedbackRouter;

impl Guest for FeedbackRouter {
    fn before_add(_session: SessionRef, _feedback: Json) -> FeedbackVerdict {
        FeedbackVerdict::Allow
    }

    fn after_add(session: SessionRef, feedback: Json, info: CommitInfo) {
        let routes = match routes() {
            Ok(routes) => routes,
            Err(e) => {
                host::log(Level::Error, &format!("invalid config: {e}"), &[]);
                return;
            }
        };
        let event_id = info.event_id.to_string();
        let route = match routes.route(
            &session.tenant,
            &session.session_id,
            &feedback,
            &info.timestamp,
            info.event_id,
        ) {
            Ok(Some(route)) => route,
            Ok(None) => return,
            Err(e) => {
                host::log(
                    Level::Warn,
                    &format!("feedback not routed: {e}"),
                    &[
                        field("session_id", session.session_id),
                        field("event_id", event_id),
                    ],
                );
                return;
            }
        };
        match host::publish(&route.target, &route.payload) {
            Ok(id) => host::log(
                Level::Debug,
                "feedback published",
                &[
                    field("target", route.target),
                    field("notification_id", id),
                    field("event_id", event_id),
                ],
            ),
            Err(e) => host::log(
                Level::Warn,
                &format!("publishing feedback failed: {}", describe(e)),
                &[
                    field("target", route.target),
                    field("error", describe(e)),
                    field("session_id", session.session_id),
                    field("event_id", event_id),
                ],
            ),
        }
    }
}

export!(FeedbackRouter);
