//! A session's event stream: one item per committed change, resumable.
//!
//! Resuming after an event (`Last-Event-ID` or `?after=`) replays from the
//! durable log exactly after it; if events after it have expired, a
//! [`StreamItem::Reset`] says so and the stream goes on from the oldest event
//! still kept. Without it, the stream starts with the next change. It then
//! follows the session's live feed ([`crate::stream::EventHub`]), falling
//! back to the log whenever it lags or sees a gap. It ends after
//! `session.deleted`, and at shutdown. Metadata in events, live or
//! replayed, is shaped like a read ([`super::Shaper::event`]).

use std::collections::VecDeque;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::broadcast;

use super::{Service, Shaper, check_sid};
use crate::auth::Caller;
use crate::error::AppResult;
use crate::model::{Event, EventType, Tenant};
use crate::store::SessionStore;
use crate::stream::EventHub;

/// Events read from the store per backfill round.
const BACKFILL: usize = 256;

/// One item of a session's event stream.
#[derive(Debug, Clone)]
pub enum StreamItem {
    /// A committed change, shaped by the get-hooks.
    Event(Event),
    /// Events between the resume point and `resume_after` cannot be sent.
    Reset {
        /// Why, for a human.
        reason: String,
        /// The stream goes on after this event id.
        resume_after: u64,
    },
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
    shape: Arc<Shaper>,
    rx: broadcast::Receiver<Arc<Event>>,
    last_sent: u64,
    backfilling: bool,
    pending: VecDeque<StreamItem>,
    queued: VecDeque<Event>,
    done: bool,
    sub: Subscription,
}

impl Service {
    /// Subscribes to a session's events, resuming after event `resume` when
    /// given. The stream ends after `session.deleted` and at shutdown.
    ///
    /// # Errors
    /// 400 for a bad id, 404 when the session is missing, a store error.
    pub async fn subscribe(
        &self,
        caller: &Caller,
        sid: &str,
        resume: Option<u64>,
    ) -> AppResult<impl Stream<Item = StreamItem> + Send + use<>> {
        check_sid(sid)?;
        let t = &caller.tenant;
        // 404 for a missing session (or another tenant's).
        self.store.get_session(t, sid).await?;
        let feed = self.hub.feed(t, sid).await?;
        let rx = feed.subscribe();
        let latest = self.store.latest_event_seq(t, sid).await?;
        let mut pending = VecDeque::new();
        let reset = |reason: String, resume_after: u64| StreamItem::Reset {
            reason,
            resume_after,
        };
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
                let first = self.store.events_after(t, sid, after, 1).await?;
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
                        pending
                            .push_back(reset(format!("events after {after} have expired"), latest));
                        latest
                    }
                    None => after,
                }
            }
        };
        let st = StreamState {
            store: self.store.clone(),
            shape: self.shape.clone(),
            rx,
            last_sent,
            backfilling: resume.is_some(),
            pending,
            queued: VecDeque::new(),
            done: false,
            sub: Subscription {
                hub: self.hub.clone(),
                tenant: t.clone(),
                sid: sid.to_owned(),
            },
        };
        let stream = futures::stream::unfold(st, |mut st| async move {
            let item = next(&mut st).await?;
            Some((item, st))
        });
        // At shutdown the stream ends (the client resumes with Last-Event-ID).
        Ok(futures::StreamExt::take_until(stream, self.hub.closed()))
    }
}

/// The next item, or `None` when the stream ends.
async fn next(st: &mut StreamState) -> Option<StreamItem> {
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
            return Some(StreamItem::Event(ev));
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
                        st.shape.event(&mut ev).await;
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
