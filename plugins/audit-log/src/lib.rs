//! `audit-log`: an example plugin that exports both hook interfaces and writes
//! one structured `info` line through the host's `log` for every committed
//! metadata change and every stored feedback.
//!
//! Fields of a metadata line: `tenant`, `session_id`, `session_type`,
//! `action` (`update` or `delete`), `paths` (the paths whose value actually
//! changed, comma-separated), `event_id`, `timestamp`. Of a feedback line:
//! `tenant`, `session_id`, `session_type`, `action` (`feedback`), `rating`
//! (`up`, `down` or `none`), `has_comment`, `event_id`, `timestamp`.
//!
//! After-hooks are delivered at least once, so the same `event_id` can appear
//! twice in the log after a redelivery. Before-hooks allow everything and
//! `on-get` returns the metadata unchanged. No configuration.

use exports::gateway::hooks::{feedback_hook, metadata_hook};
use gateway::hooks::host;
use gateway::hooks::types::{CommitInfo, Field, Json, MetadataChange, SessionRef};

wit_bindgen::generate!({
    path: "../../wit/hooks@0.1.0",
    world: "plugin",
});

fn field(key: &str, value: impl Into<String>) -> Field {
    Field {
        key: key.to_owned(),
        value: value.into(),
    }
}

fn session_fields(session: &SessionRef) -> Vec<Field> {
    vec![
        field("tenant", session.tenant.as_str()),
        field("session_id", session.session_id.as_str()),
        field("session_type", session.session_type.as_str()),
    ]
}

/// The fields of the audit line for a committed metadata change.
fn metadata_fields(
    session: &SessionRef,
    change: &MetadataChange,
    changed: &[String],
    info: &CommitInfo,
) -> Vec<Field> {
    let action = match change {
        MetadataChange::Update(_) => "update",
        MetadataChange::Delete(_) => "delete",
    };
    let mut fields = session_fields(session);
    fields.extend([
        field("action", action),
        field("paths", changed.join(",")),
        field("event_id", info.event_id.to_string()),
        field("timestamp", info.timestamp.as_str()),
    ]);
    fields
}

/// The fields of the audit line for a stored feedback (JSON object text).
fn feedback_fields(session: &SessionRef, feedback: &str, info: &CommitInfo) -> Vec<Field> {
    let feedback: serde_json::Value = serde_json::from_str(feedback).unwrap_or_default();
    let rating = feedback
        .get("rating")
        .and_then(|r| r.as_str())
        .unwrap_or("none");
    let has_comment = feedback
        .get("comment")
        .and_then(|c| c.as_str())
        .is_some_and(|c| !c.is_empty());
    let mut fields = session_fields(session);
    fields.extend([
        field("action", "feedback"),
        field("rating", rating),
        field("has_comment", has_comment.to_string()),
        field("event_id", info.event_id.to_string()),
        field("timestamp", info.timestamp.as_str()),
    ]);
    fields
}

struct AuditLog;

impl metadata_hook::Guest for AuditLog {
    fn before_change(
        _session: SessionRef,
        _change: MetadataChange,
    ) -> metadata_hook::MetadataVerdict {
        metadata_hook::MetadataVerdict::Allow
    }

    fn after_change(
        session: SessionRef,
        change: MetadataChange,
        changed: Vec<String>,
        _values: Json,
        info: CommitInfo,
    ) {
        let fields = metadata_fields(&session, &change, &changed, &info);
        host::log(host::Level::Info, "metadata changed", &fields);
    }

    fn on_get(_session: SessionRef, metadata: Json) -> Json {
        metadata
    }
}

impl feedback_hook::Guest for AuditLog {
    fn before_add(_session: SessionRef, _feedback: Json) -> feedback_hook::FeedbackVerdict {
        feedback_hook::FeedbackVerdict::Allow
    }

    fn after_add(session: SessionRef, feedback: Json, info: CommitInfo) {
        let fields = feedback_fields(&session, &feedback, &info);
        host::log(host::Level::Info, "feedback added", &fields);
    }
}

export!(AuditLog);

#[cfg(test)]
mod tests {
    use super::*;
    use gateway::hooks::types::Assignment;

    fn session() -> SessionRef {
        SessionRef {
            tenant: "acme".into(),
            session_id: "s1".into(),
            session_type: "chat".into(),
        }
    }

    fn info() -> CommitInfo {
        CommitInfo {
            event_id: 42,
            timestamp: "2025-01-31T12:00:00Z".into(),
        }
    }

    fn pairs(fields: &[Field]) -> Vec<(&str, &str)> {
        fields
            .iter()
            .map(|f| (f.key.as_str(), f.value.as_str()))
            .collect()
    }

    #[test]
    fn metadata_line() {
        let change = MetadataChange::Update(vec![Assignment {
            path: "status".into(),
            value: "\"open\"".into(),
        }]);
        let fields = metadata_fields(
            &session(),
            &change,
            &["status".into(), "a.b".into()],
            &info(),
        );
        assert_eq!(
            pairs(&fields),
            [
                ("tenant", "acme"),
                ("session_id", "s1"),
                ("session_type", "chat"),
                ("action", "update"),
                ("paths", "status,a.b"),
                ("event_id", "42"),
                ("timestamp", "2025-01-31T12:00:00Z"),
            ]
        );
        let fields = metadata_fields(
            &session(),
            &MetadataChange::Delete(vec!["x".into()]),
            &[],
            &info(),
        );
        assert_eq!(pairs(&fields)[3..5], [("action", "delete"), ("paths", "")]);
    }

    #[test]
    fn feedback_line() {
        let fields = feedback_fields(&session(), r#"{"rating":"down","comment":"meh"}"#, &info());
        assert_eq!(
            pairs(&fields)[3..],
            [
                ("action", "feedback"),
                ("rating", "down"),
                ("has_comment", "true"),
                ("event_id", "42"),
                ("timestamp", "2025-01-31T12:00:00Z"),
            ]
        );
        let fields = feedback_fields(&session(), r#"{"rating":null}"#, &info());
        assert_eq!(
            pairs(&fields)[4..6],
            [("rating", "none"), ("has_comment", "false")]
        );
    }
}
