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
//! ([`crate::hooks::display::redact_event`]).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use futures::Stream;
use tokio::sync::broadcast;

use super::check_sid;
use crate::AppState;
use crate::api::{ResetEvent, StreamEvent};
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::extract::{Path, Query};
use crate::hooks::HookHost;
use crate::model::{Event, EventType, Tenant, format_ms};
use crate::store::SessionStore;
use crate::stream::EventHub;

/// Event stream routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/sessions/{sid}/events", get(events))
}

/// Events read from the store per backfill round.
const BACKFILL: usize = 256;

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

/// Releases the session's feed when the last subscriber goes away.
struct Subscription {
    hub: Arc<EventHub>,
    tenant: Tenant,
    sid: String,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.release(&self.tenant, &self.sid);
    }
}

struct StreamState {
    store: Arc<dyn SessionStore>,
    hooks: Arc<HookHost>,
    rx: broadcast::Receiver<Arc<Event>>,
    last_sent: u64,
    backfilling: bool,
    pending: VecDeque<SseEvent>,
    queued: VecDeque<Event>,
    done: bool,
    sub: Subscription,
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
        (status = 404, description = "`not_found`: no such session"),
    )
)]
async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(sid): Path<String>,
    headers: HeaderMap,
    q: Query,
) -> AppResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    check_sid(&sid)?;
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
    // 404 for a missing session (or another tenant's).
    state.store.get_session(&caller.tenant, &sid).await?;
    let feed = state.hub.feed(&caller.tenant, &sid).await?;
    let rx = feed.subscribe();
    let latest = state.store.latest_event_seq(&caller.tenant, &sid).await?;
    let mut pending = VecDeque::new();
    let last_sent = match resume {
        None => latest,
        Some(after) if after > latest => {
            pending.push_back(reset(
                format!("event {after} does not exist; the latest is {latest}"),
                latest,
            ));
            latest
        }
        Some(after) => {
            let first = state
                .store
                .events_after(&caller.tenant, &sid, after, 1)
                .await?;
            match first.first() {
                Some(ev) if ev.seq > after + 1 => {
                    pending.push_back(reset(
                        format!("events {} to {} have expired", after + 1, ev.seq - 1),
                        ev.seq - 1,
                    ));
                    ev.seq - 1
                }
                Some(_) => after,
                // Nothing after it is kept although it is not the latest: all expired.
                None if after < latest => {
                    pending.push_back(reset(format!("events after {after} have expired"), latest));
                    latest
                }
                None => after,
            }
        }
    };
    let st = StreamState {
        store: state.store.clone(),
        hooks: state.hooks.clone(),
        rx,
        last_sent,
        backfilling: resume.is_some(),
        pending,
        queued: VecDeque::new(),
        done: false,
        sub: Subscription {
            hub: state.hub.clone(),
            tenant: caller.tenant.clone(),
            sid,
        },
    };
    let stream = futures::stream::unfold(st, |mut st| async move {
        let ev = next(&mut st).await?;
        Some((Ok(ev), st))
    });
    // At shutdown the stream ends (the client resumes with Last-Event-ID).
    let stream = futures::StreamExt::take_until(stream, state.hub.closed());
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

/// The next SSE event, or `None` when the stream ends.
async fn next(st: &mut StreamState) -> Option<SseEvent> {
    loop {
        if let Some(e) = st.pending.pop_front() {
            return Some(e);
        }
        if st.done {
            return None;
        }
        if let Some(ev) = st.queued.pop_front() {
            if ev.seq <= st.last_sent {
                continue;
            }
            if ev.seq != st.last_sent + 1 {
                // Something between was not seen live: read it from the log.
                st.queued.clear();
                st.backfilling = true;
                continue;
            }
            st.last_sent = ev.seq;
            st.done = ev.kind == EventType::SessionDeleted;
            return Some(to_sse(&ev));
        }
        if st.backfilling {
            let (t, sid) = (st.sub.tenant.clone(), st.sub.sid.clone());
            match st
                .store
                .events_after(&t, &sid, st.last_sent, BACKFILL)
                .await
            {
                Ok(evs) => {
                    st.backfilling = evs.len() == BACKFILL;
                    for mut ev in evs {
                        crate::stream::enrich(&*st.store, &mut ev).await;
                        // Replayed events are shaped like live ones (the
                        // feed shapes those before broadcasting them).
                        crate::hooks::display::redact_event(&st.hooks, &mut ev).await;
                        st.queued.push_back(ev);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, session_id = %sid, "event stream ends: cannot read the event log");
                    return None;
                }
            }
            continue;
        }
        match st.rx.recv().await {
            Ok(ev) => st.queued.push_back((*ev).clone()),
            Err(broadcast::error::RecvError::Lagged(_)) => st.backfilling = true,
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}
