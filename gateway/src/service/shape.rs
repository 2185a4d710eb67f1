//! Every way stored metadata leaves the gateway goes through the get-hooks,
//! here.
//!
//! A get-hook (`phase = "get"`, event `metadata.get`, e.g. the
//! `metadata-redactor` plugin) shapes metadata on its way out. Every exit
//! calls one function, [`Shaper::metadata`] (the get-chain of the request's
//! plugin snapshot); the exits differ only in what they do when it fails:
//!
//! | exit | how it is shaped |
//! |---|---|
//! | `GET /v1/sessions/{sid}`, `GET …/metadata`, `GET /v1/sessions`, `POST /v1/sessions/batch-get` | [`Shaper::read`]: a failing fail-closed hook fails the read (503, nothing written) |
//! | `metadata.<path>=<value>` filters of `GET /v1/sessions` | evaluated on the shaped metadata, never on what is stored ([`Shaper::list`]) |
//! | answers of writes (`POST /v1/sessions`, `PATCH`/`DELETE …/metadata`) | [`Shaper::committed_session`], [`Shaper::committed_metadata`]: shaped after the commit; a failing hook is a *display* failure: the success status stays, the metadata is withheld ([`Withheld`]) |
//! | SSE `session.created`, `metadata.updated`, `metadata.deleted` (live and replayed) | [`Shaper::event`] before the event is sent |
//! | admin outbox payloads | withheld from tenant admins while a get-hook is loaded ([`Shaper::shows_payloads`]) |
//!
//! After-hooks (and so what they publish to SNS/SQS) see the change as
//! stored: routing and auditing need the real values, and their targets are
//! the operator's. Which fields a plugin publishes is its config's business.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::hooks::{HookHost, Loaded, Outcome, Refusal};
use crate::metadata;
use crate::model::{Event, EventType, JsonObject, Session, Tenant};
use crate::store::{ListQuery, Page, SessionStore, StoreError};

/// Sessions read from the store per round while a metadata filter is
/// evaluated on shaped metadata.
const SCAN_BATCH: usize = 100;

/// Why metadata was not shown: the get-chain failed after the change was
/// committed (a display failure, not a write failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withheld {
    /// The error code the read would have answered, e.g. `hook_failed`.
    pub code: &'static str,
    /// What failed, e.g. `"redactor: call timed out after 20 ms"`.
    pub message: String,
}

impl Withheld {
    fn from_error(e: &AppError) -> Self {
        Self {
            code: e.code(),
            message: e.to_string(),
        }
    }

    fn from_refusal(r: &Refusal) -> Self {
        Self::from_error(&AppError::from(r.clone()))
    }

    /// `{"code","message"}`, the `metadata_withheld` field of answers and events.
    pub fn to_json(&self) -> Value {
        json!({ "code": self.code, "message": self.message })
    }
}

/// What the answer of a committed write shows: the value as get-hooks show
/// it, or, when they failed, an empty one and why ([`Withheld`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Shown<T> {
    /// The shaped value (its metadata `{}` when withheld).
    pub value: T,
    /// Set when the get-chain failed after the commit.
    pub withheld: Option<Withheld>,
}

/// Shapes stored metadata with the get-hooks on every way out.
pub struct Shaper {
    store: Arc<dyn SessionStore>,
    hooks: Arc<HookHost>,
}

impl Shaper {
    /// A shaper running `hooks`' get-chain; `store` gives a metadata event
    /// the session's current metadata as context.
    pub fn new(store: Arc<dyn SessionStore>, hooks: Arc<HookHost>) -> Self {
        Self { store, hooks }
    }

    /// The plugin set a request uses from start to end.
    pub fn snapshot(&self) -> Arc<Loaded> {
        self.hooks.snapshot()
    }

    /// Whether a caller is shown notification payloads (the admin outbox
    /// views): an operator always; a tenant admin only while no get-hook
    /// shapes metadata, because after-hooks publish from the change as
    /// stored, so a payload may hold values a get-hook (e.g. a redactor)
    /// hides from the session API.
    pub fn shows_payloads(&self, caller: &Caller) -> bool {
        caller.is_operator() || !self.snapshot().shapes_metadata()
    }

    /// The one shaping step: `md` of session `sid` through the get-chain of
    /// `loaded`.
    ///
    /// # Errors
    /// The chain's [`Refusal`] (a failing fail-closed plugin).
    pub async fn metadata(
        &self,
        loaded: &Loaded,
        t: &Tenant,
        sid: &str,
        session_type: &str,
        md: JsonObject,
    ) -> Outcome<JsonObject> {
        self.hooks
            .show_metadata_in(loaded, t, sid, session_type, md)
            .await
    }

    /// A session as a read shows it. A failing fail-closed get-hook fails the
    /// read (503: nothing was written, a retry is safe).
    ///
    /// # Errors
    /// 503 `hook_failed`.
    pub async fn read(&self, loaded: &Loaded, t: &Tenant, mut s: Session) -> AppResult<Session> {
        let md = std::mem::take(&mut s.metadata);
        s.metadata = self
            .metadata(loaded, t, &s.session_id, &s.session_type, md)
            .await?;
        Ok(s)
    }

    /// Metadata of a committed write as its answer shows it. Never an error:
    /// a failing fail-closed get-hook withholds the metadata (empty object and
    /// a [`Withheld`]) instead of turning the committed write into a 503.
    pub async fn committed_metadata(
        &self,
        loaded: &Loaded,
        t: &Tenant,
        sid: &str,
        session_type: &str,
        md: JsonObject,
    ) -> Shown<JsonObject> {
        match self.metadata(loaded, t, sid, session_type, md).await {
            Ok(md) => Shown {
                value: md,
                withheld: None,
            },
            Err(e) => Shown {
                value: JsonObject::new(),
                withheld: Some(Withheld::from_refusal(&e)),
            },
        }
    }

    /// [`Shaper::committed_metadata`] over a just-created session.
    pub async fn committed_session(
        &self,
        loaded: &Loaded,
        t: &Tenant,
        mut session: Session,
    ) -> Shown<Session> {
        let md = std::mem::take(&mut session.metadata);
        let (sid, ty) = (session.session_id.clone(), session.session_type.clone());
        let shown = self.committed_metadata(loaded, t, &sid, &ty, md).await;
        session.metadata = shown.value;
        Shown {
            value: session,
            withheld: shown.withheld,
        }
    }

    /// Lists sessions with their metadata as get-hooks show it.
    ///
    /// Without a get-hook, or without metadata filters, this is the store's
    /// page with each session shaped. With both, the filters match what the
    /// caller can read: the store lists without the metadata filters, each
    /// session is shaped, and the filters are applied to the shaped metadata,
    /// so a filter on a masked or hidden field cannot confirm a guess of the
    /// stored value. At most `scan_budget` sessions are examined per request;
    /// a page may then hold fewer than `limit` sessions (even none) with a
    /// non-null `next_cursor` to go on from.
    ///
    /// # Errors
    /// A store error, or 503 `hook_failed` when a fail-closed get-hook fails.
    pub async fn list(&self, t: &Tenant, mut q: ListQuery, scan_budget: usize) -> AppResult<Page> {
        let store = &*self.store;
        let loaded = self.snapshot();
        if q.metadata.is_empty() || !loaded.shapes_metadata() {
            let page = store.list_sessions(t, &q).await?;
            let mut sessions = Vec::with_capacity(page.sessions.len());
            for s in page.sessions {
                sessions.push(self.read(&loaded, t, s).await?);
            }
            return Ok(Page {
                sessions,
                next_cursor: page.next_cursor,
            });
        }
        let filters = std::mem::take(&mut q.metadata);
        let want = q.limit;
        let budget = scan_budget.max(want);
        let mut out = Vec::new();
        let mut scanned = 0usize;
        loop {
            let batch = SCAN_BATCH.max(want).min(budget - scanned).max(1);
            let page = store
                .list_sessions(
                    t,
                    &ListQuery {
                        limit: batch,
                        ..q.clone()
                    },
                )
                .await?;
            let n = page.sessions.len();
            for (i, s) in page.sessions.into_iter().enumerate() {
                scanned += 1;
                let id = s.session_id.clone();
                let s = self.read(&loaded, t, s).await?;
                if filters
                    .iter()
                    .all(|(p, v)| metadata::get_path(&s.metadata, p) == Some(v))
                {
                    out.push(s);
                    if out.len() == want {
                        let more = i + 1 < n || page.next_cursor.is_some();
                        return Ok(Page {
                            sessions: out,
                            next_cursor: more.then_some(id),
                        });
                    }
                }
            }
            match page.next_cursor {
                None => {
                    return Ok(Page {
                        sessions: out,
                        next_cursor: None,
                    });
                }
                Some(c) if scanned >= budget => {
                    return Ok(Page {
                        sessions: out,
                        next_cursor: Some(c),
                    });
                }
                Some(c) => q.after = Some(c),
            }
        }
    }

    /// Shapes an event's metadata the way a read of the session would, before
    /// it is sent to an SSE subscriber (live or replayed).
    ///
    /// - `session.created`: `payload.metadata` through the get-chain.
    /// - `metadata.updated` / `metadata.deleted`: the get-chain runs over the
    ///   session's metadata as stored now with the event's paths set to their
    ///   values (`null` for deleted paths), so a hook that decides from
    ///   context sees it; each path of `change`, `changed` and `values` then
    ///   takes its shaped value (deleted paths stay `null`), and paths the
    ///   hook removes are left out of all three.
    ///
    /// When the chain fails (fail closed) or the metadata cannot be put
    /// together, the metadata parts are removed (`metadata` → `{}`; `change`,
    /// `changed`, `values` emptied) and `metadata_withheld: {"code","message"}`
    /// is added.
    pub async fn event(&self, ev: &mut Event) {
        let loaded = self.snapshot();
        if !loaded.shapes_metadata() {
            return;
        }
        let t = Tenant(ev.tenant.clone());
        match ev.kind {
            EventType::SessionCreated => {
                let md = match ev.payload.get("metadata") {
                    Some(Value::Object(m)) => m.clone(),
                    _ => JsonObject::new(),
                };
                let shown = self
                    .metadata(&loaded, &t, &ev.session_id, &ev.session_type, md)
                    .await;
                let Some(obj) = ev.payload.as_object_mut() else {
                    return;
                };
                match shown {
                    Ok(md) => {
                        obj.insert("metadata".into(), Value::Object(md));
                    }
                    Err(e) => {
                        obj.insert("metadata".into(), json!({}));
                        obj.insert(
                            "metadata_withheld".into(),
                            Withheld::from_refusal(&e).to_json(),
                        );
                    }
                }
            }
            EventType::MetadataUpdated | EventType::MetadataDeleted => {
                let outcome = self.shape_change(&loaded, &t, ev).await;
                let Some(obj) = ev.payload.as_object_mut() else {
                    return;
                };
                match outcome {
                    Ok((change, changed, values)) => {
                        obj.insert("change".into(), change);
                        obj.insert("changed".into(), Value::from(changed));
                        obj.insert("values".into(), Value::Object(values));
                    }
                    Err(w) => {
                        let empty_change = if ev.kind == EventType::MetadataDeleted {
                            json!([])
                        } else {
                            json!({})
                        };
                        obj.insert("change".into(), empty_change);
                        obj.insert("changed".into(), json!([]));
                        obj.insert("values".into(), json!({}));
                        obj.insert("metadata_withheld".into(), w.to_json());
                    }
                }
            }
            _ => {}
        }
    }

    /// The shaped `(change, changed, values)` of a metadata event.
    async fn shape_change(
        &self,
        loaded: &Loaded,
        t: &Tenant,
        ev: &Event,
    ) -> Result<(Value, Vec<String>, JsonObject), Withheld> {
        let deleted = ev.kind == EventType::MetadataDeleted;
        // The paths the event names, with their new values.
        let assignments: Vec<(String, Value)> = match ev.payload.get("change") {
            Some(Value::Object(m)) if !deleted => {
                m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
            }
            Some(Value::Array(keys)) if deleted => keys
                .iter()
                .filter_map(|k| k.as_str().map(|k| (k.to_owned(), Value::Null)))
                .collect(),
            _ => Vec::new(),
        };
        let changed: Vec<String> = ev
            .payload
            .get("changed")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let mut md = match self.store.get_metadata(t, &ev.session_id).await {
            Ok(md) => md,
            // Deleted since: nothing to give context.
            Err(StoreError::NotFound(_)) => JsonObject::new(),
            Err(e) => {
                let e = AppError::from(e);
                return Err(Withheld::from_error(&e));
            }
        };
        for (p, v) in &assignments {
            if let Err(m) = metadata::apply_set(&mut md, p, v.clone()) {
                return Err(Withheld {
                    code: "metadata_path_conflict",
                    message: format!("the event no longer fits the stored metadata: {m}"),
                });
            }
        }
        let shown = self
            .metadata(loaded, t, &ev.session_id, &ev.session_type, md)
            .await
            .map_err(|e| Withheld::from_refusal(&e))?;
        let visible = |p: &str| metadata::get_path(&shown, p);
        let change = if deleted {
            Value::from(
                assignments
                    .iter()
                    .filter(|(p, _)| visible(p).is_some())
                    .map(|(p, _)| p.clone())
                    .collect::<Vec<_>>(),
            )
        } else {
            Value::Object(
                assignments
                    .iter()
                    .filter_map(|(p, _)| visible(p).map(|v| (p.clone(), v.clone())))
                    .collect(),
            )
        };
        let changed: Vec<String> = changed
            .into_iter()
            .filter(|p| visible(p).is_some())
            .collect();
        let values: JsonObject = changed
            .iter()
            .map(|p| {
                let v = if deleted {
                    Value::Null
                } else {
                    visible(p).cloned().unwrap_or(Value::Null)
                };
                (p.clone(), v)
            })
            .collect();
        Ok((change, changed, values))
    }
}

/// The SSE feeds shape their events with the same [`Shaper`].
#[async_trait::async_trait]
impl crate::stream::ShapeEvent for Shaper {
    async fn shape(&self, ev: &mut Event) {
        self.event(ev).await;
    }
}
