//! `GET /v1/sessions/{sid}/events`: Server-Sent Events, one per committed change.
//!
//! Each event has `id: <seq>` (per session, strictly increasing), `event:
//! <type>` and a JSON `data` line. Reconnecting with `Last-Event-ID` (or
//! `?after=<seq>`) resumes exactly after that event from the durable log; if
//! events after it have expired, a `reset` event says so and the stream goes
//! on from the oldest event still kept. Without either, the stream starts
//! with the next change. Comment heartbeats keep proxies from closing idle
//! streams. The stream ends after `session.deleted`, and at shutdown (the
//! client resumes with `Last-Event-ID`). Metadata in events, live or
//! replayed, is shaped by the get-hooks like a read
//! ([`crate::service::Shaper::event`]). The stream itself is
//! [`crate::service::Service::subscribe`]; this handler parses the resume
//! point and writes each item as an SSE event.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use futures::{Stream, StreamExt};

use crate::AppState;
use crate::api::{ResetEvent, StreamEvent};
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::extract::{Path, Query};
use crate::model::{Event, format_ms};
use crate::service::events::StreamItem;

/// Event stream routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/sessions/{sid}/events", get(events))
}

fn to_sse(ev: &Event) -> SseEvent {
    let data = StreamEvent {
        seq: ev.seq,
        kind: ev.kind,
        ts: format_ms(ev.ts),
        session_id: &ev.session_id,
        payload: &ev.payload,
    };
    SseEvent::default()
        .id(ev.seq.to_string())
        .event(ev.kind.as_str())
        .json_data(data)
        .expect("an event serializes")
}

/// Stream a session's changes
///
/// Server-Sent Events, one per committed change: `id: <seq>` (per session,
/// strictly increasing), `event: <type>` (see `EventType`) and a `data:` line
/// holding a `StreamEvent` JSON object. Reconnecting with `Last-Event-ID` (or
/// `?after=<seq>`) resumes right after that event from the durable log; when
/// events after it have expired, an `event: reset` with a `ResetEvent` says so
/// and the stream goes on from the oldest event kept. Without either, the
/// stream starts with the next change. `: heartbeat` comments keep idle
/// connections open. The stream ends after `session.deleted`.
#[utoipa::path(
    get,
    path = "/v1/sessions/{sid}/events",
    operation_id = "stream_events",
    tag = "events",
    params(
        crate::api::SessionPath,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event id (takes precedence over `after`)"),
        ("after" = Option<u64>, Query, description = "Resume after this event id (for clients that cannot set headers)"),
    ),
    responses(
        (status = 200, description = "An endless `text/event-stream`; each `data` is a `StreamEvent` (or a `ResetEvent` for `event: reset`)",
            content_type = "text/event-stream", body = String),
        (status = 400, description = "`invalid_last_event_id`, `invalid_query` or `invalid_session_id`"),
        crate::api::NoSuchSession,
    )
)]
async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(sid): Path<String>,
    headers: HeaderMap,
    q: Query,
) -> AppResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    q.only(&["after"])?;
    let bad = || {
        AppError::bad_request(
            "invalid_last_event_id",
            "Last-Event-ID must be an event id (a non-negative integer)",
        )
    };
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(bad)?,
        ),
        None => q.get_u64("after")?,
    };
    let items = state.service.subscribe(&caller, &sid, resume).await?;
    let stream = items.map(|item| {
        Ok(match item {
            StreamItem::Event(ev) => to_sse(&ev),
            StreamItem::Reset {
                reason,
                resume_after,
            } => reset(reason, resume_after),
        })
    });
    let interval = Duration::from_millis(state.config.server.sse_heartbeat_ms);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(interval).text("heartbeat")))
}

fn reset(reason: String, resume_after: u64) -> SseEvent {
    SseEvent::default()
        .event("reset")
        .json_data(ResetEvent {
            reason,
            resume_after,
        })
        .expect("a reset serializes")
}
