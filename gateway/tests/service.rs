//! The service layer reads from the store only what a request needs: a
//! metadata write reads the session (for the hooks' `session-ref`) only
//! when a before-hook runs and the gateway does not know the session's type
//! yet; the write checks the type it was given, and a session re-created
//! with another type makes the hooks run again with it. The get-hooks that
//! show its result take the session type from the write itself.
//!
//! The service is driven directly, over a store that counts its session
//! reads. The same counting store shows that `/metrics` reads the queue
//! depths at most once a second, and how many after-hook completions the
//! event processor has in flight.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use common::Backend;
use gateway::auth::Caller;
use gateway::config::HookConfig;
use gateway::hooks::HookHost;
use gateway::metadata::MetadataChange;
use gateway::model::{
    Agent, Event, Feedback, JsonObject, Message, MessageInput, MessagePatch, MessageRange,
    NewSession, Session, Tenant,
};
use gateway::service::{Committed, Service, Shaper};
use gateway::store::{AfterHooked, HookBacklog, SweepReport};
use gateway::store::{
    AgentData, Appended, EventLog, ListQuery, MetadataResult, OutboxItem, OutboxQueue, OutboxState,
    Page, Retention, RetentionPolicy, SessionData, SessionStore, StoreError, StoreResult,
};
use gateway::stream::EventHub;
use serde_json::json;
use tokio::sync::Notify;

/// A store that counts `get_session` calls (and reads of its queue
/// depths) and otherwise does what the
/// store it wraps does.
struct Counting {
    inner: Arc<dyn SessionStore>,
    session_reads: AtomicUsize,
    /// Reads of the queue depths (`outbox_counts_of`, `hook_backlog`).
    queue_reads: AtomicUsize,
    /// When set: what `is_shared` answers, and each `complete_event` takes
    /// 50 ms more, counting how many are in flight at once.
    completions: Option<Completions>,
}

/// `complete_event` calls in flight, now and at most.
struct Completions {
    shared: bool,
    now: AtomicUsize,
    most: AtomicUsize,
}

impl Counting {
    fn reads(&self) -> usize {
        self.session_reads.load(Ordering::SeqCst)
    }

    fn queue_reads(&self) -> usize {
        self.queue_reads.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl gateway::store::Backend for Counting {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
    fn is_shared(&self) -> bool {
        self.completions
            .as_ref()
            .map_or_else(|| self.inner.is_shared(), |c| c.shared)
    }
}

#[async_trait]
impl SessionData for Counting {
    async fn create_session(&self, t: &Tenant, new: NewSession) -> StoreResult<Session> {
        self.inner.create_session(t, new).await
    }
    async fn get_session(&self, t: &Tenant, sid: &str) -> StoreResult<Session> {
        self.session_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get_session(t, sid).await
    }
    async fn batch_get_sessions(&self, t: &Tenant, ids: &[String]) -> StoreResult<Vec<Session>> {
        self.inner.batch_get_sessions(t, ids).await
    }
    async fn list_sessions(&self, t: &Tenant, q: &ListQuery) -> StoreResult<Page> {
        self.inner.list_sessions(t, q).await
    }
    async fn delete_session(&self, t: &Tenant, sid: &str) -> StoreResult<()> {
        self.inner.delete_session(t, sid).await
    }
    async fn get_metadata(&self, t: &Tenant, sid: &str) -> StoreResult<JsonObject> {
        self.inner.get_metadata(t, sid).await
    }
    async fn change_metadata_of_type(
        &self,
        t: &Tenant,
        sid: &str,
        session_type: Option<&str>,
        change: &MetadataChange,
    ) -> StoreResult<MetadataResult> {
        self.inner
            .change_metadata_of_type(t, sid, session_type, change)
            .await
    }
    async fn add_feedback_of_type(
        &self,
        t: &Tenant,
        sid: &str,
        session_type: Option<&str>,
        body: JsonObject,
    ) -> StoreResult<Feedback> {
        self.inner
            .add_feedback_of_type(t, sid, session_type, body)
            .await
    }
    async fn list_feedbacks(&self, t: &Tenant, sid: &str) -> StoreResult<Vec<Feedback>> {
        self.inner.list_feedbacks(t, sid).await
    }
}

#[async_trait]
impl AgentData for Counting {
    async fn put_agent(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        body: JsonObject,
        if_match: Option<u64>,
    ) -> StoreResult<(Agent, bool)> {
        self.inner.put_agent(t, sid, aid, body, if_match).await
    }
    async fn get_agent(&self, t: &Tenant, sid: &str, aid: &str) -> StoreResult<Agent> {
        self.inner.get_agent(t, sid, aid).await
    }
    async fn list_agents(&self, t: &Tenant, sid: &str) -> StoreResult<Vec<Agent>> {
        self.inner.list_agents(t, sid).await
    }
    async fn append_message(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        input: MessageInput,
    ) -> StoreResult<Appended> {
        self.inner.append_message(t, sid, aid, input).await
    }
    async fn list_messages(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        range: MessageRange,
    ) -> StoreResult<(Vec<Message>, u64)> {
        self.inner.list_messages(t, sid, aid, range).await
    }
    async fn get_message(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        mid: u64,
    ) -> StoreResult<Message> {
        self.inner.get_message(t, sid, aid, mid).await
    }
    async fn update_message(
        &self,
        t: &Tenant,
        sid: &str,
        aid: &str,
        mid: u64,
        patch: MessagePatch,
    ) -> StoreResult<Message> {
        self.inner.update_message(t, sid, aid, mid, patch).await
    }
}

#[async_trait]
impl EventLog for Counting {
    fn set_after_hooked(&self, kinds: AfterHooked) {
        self.inner.set_after_hooked(kinds);
    }
    async fn latest_event_seq(&self, t: &Tenant, sid: &str) -> StoreResult<u64> {
        self.inner.latest_event_seq(t, sid).await
    }
    async fn events_since(&self, since: i64, limit: usize) -> StoreResult<Vec<Event>> {
        self.inner.events_since(since, limit).await
    }
    async fn events_after(
        &self,
        t: &Tenant,
        sid: &str,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<Event>> {
        self.inner.events_after(t, sid, after, limit).await
    }
    async fn claim_pending_events(
        &self,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<Event>> {
        self.inner.claim_pending_events(now, lease_ms, limit).await
    }
    async fn complete_event(
        &self,
        tenant: &str,
        session_id: &str,
        seq: u64,
        outbox: Vec<OutboxItem>,
    ) -> StoreResult<()> {
        if let Some(c) = &self.completions {
            let now = c.now.fetch_add(1, Ordering::SeqCst) + 1;
            c.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            c.now.fetch_sub(1, Ordering::SeqCst);
        }
        self.inner
            .complete_event(tenant, session_id, seq, outbox)
            .await
    }
    async fn hook_backlog(&self) -> StoreResult<HookBacklog> {
        self.queue_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.hook_backlog().await
    }
}

#[async_trait]
impl OutboxQueue for Counting {
    async fn claim_outbox(
        &self,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<OutboxItem>> {
        self.inner.claim_outbox(now, lease_ms, limit).await
    }
    async fn outbox_delivered(&self, id: &str) -> StoreResult<()> {
        self.inner.outbox_delivered(id).await
    }
    async fn outbox_failed(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_at: i64,
        error: &str,
        dead: bool,
    ) -> StoreResult<()> {
        self.inner
            .outbox_failed(id, attempts, next_attempt_at, error, dead)
            .await
    }
    async fn list_outbox_of(
        &self,
        tenant: Option<&str>,
        state: Option<OutboxState>,
        limit: usize,
    ) -> StoreResult<Vec<OutboxItem>> {
        self.inner.list_outbox_of(tenant, state, limit).await
    }
    async fn retry_outbox_of(
        &self,
        tenant: Option<&str>,
        id: &str,
        now: i64,
    ) -> StoreResult<OutboxItem> {
        self.inner.retry_outbox_of(tenant, id, now).await
    }
    async fn outbox_counts_of(&self, tenant: Option<&str>) -> StoreResult<(u64, u64)> {
        self.queue_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.outbox_counts_of(tenant).await
    }
}

#[async_trait]
impl RetentionPolicy for Counting {
    fn set_retention(&self, retention: Retention) {
        self.inner.set_retention(retention);
    }
    async fn sweep_expired(&self, now: i64, limit: usize) -> StoreResult<SweepReport> {
        self.inner.sweep_expired(now, limit).await
    }
}

impl SessionStore for Counting {}

/// A service with `hooks` over a counting embedded (or MongoDB) store.
async fn service(
    backend: Backend,
    dir: &tempfile::TempDir,
    hooks: Vec<HookConfig>,
) -> Option<(Service, Arc<Counting>)> {
    let (svc, counting, _) = parts(backend, dir, hooks).await?;
    Some((svc, counting))
}

/// [`service`], with the hook host and the event hub it was built with.
async fn parts(
    backend: Backend,
    dir: &tempfile::TempDir,
    hooks: Vec<HookConfig>,
) -> Option<(Service, Arc<Counting>, (Arc<HookHost>, Arc<EventHub>))> {
    let mut cfg = common::config(backend, dir)?;
    cfg.hooks = hooks;
    let counting = Arc::new(Counting {
        inner: gateway::open_store(&cfg).await.expect("store"),
        session_reads: AtomicUsize::new(0),
        queue_reads: AtomicUsize::new(0),
        completions: None,
    });
    let store: Arc<dyn SessionStore> = counting.clone();
    let hooks = Arc::new(
        HookHost::start(&cfg, None, store.clone())
            .await
            .expect("hooks"),
    );
    let shaper = Arc::new(Shaper::new(store.clone(), hooks.clone()));
    let hub = Arc::new(EventHub::new(store.clone(), shaper.clone()));
    let committed = Committed::new(hooks.clone(), Arc::new(Notify::new()), hub.clone());
    let svc = Service::new(
        store,
        hooks.clone(),
        Arc::new(cfg),
        committed,
        shaper,
        hub.clone(),
    );
    Some((svc, counting, (hooks, hub)))
}

fn redactor() -> HookConfig {
    common::hook(
        "redactor",
        "metadata_redactor",
        "get",
        &["metadata.get"],
        "config = { mask = [\"api_key\"], hide = [] }",
    )
}

fn allow() -> HookConfig {
    common::hook(
        "allow",
        "fixture_allow",
        "before",
        &["metadata.update", "metadata.delete"],
        "",
    )
}

fn session_type_probe() -> HookConfig {
    common::hook(
        "seen",
        "fixture_session_type",
        "before",
        &["metadata.update", "feedback.add"],
        "",
    )
}

fn new_session(sid: &str, session_type: &str) -> NewSession {
    serde_json::from_value(json!({
        "session_id": sid, "session_type": session_type, "metadata": {"api_key": "sk-1"}
    }))
    .unwrap()
}

async fn metadata_writes_read_the_session_only_for_before_hooks(b: Backend) {
    // (hooks, session reads by the first metadata write to a session this
    // gateway did not create)
    let cases: [(&str, Vec<HookConfig>, usize); 4] = [
        ("no hooks", vec![], 0),
        ("a get-hook", vec![redactor()], 0),
        ("a before-hook", vec![allow()], 1),
        ("a before- and a get-hook", vec![allow(), redactor()], 1),
    ];
    for (label, hooks, first) in cases {
        let dir = tempfile::tempdir().unwrap();
        let Some((svc, store)) = service(b, &dir, hooks).await else {
            return;
        };
        let caller = Caller::anonymous();
        // Created through the service, which notes its type: no write reads it.
        svc.create_session(&caller, new_session("s", "CHAT"))
            .await
            .unwrap();
        // Created past the service (as by another gateway): the first
        // hooked write reads its type once, the next ones do not.
        store
            .inner
            .create_session(&caller.tenant, new_session("other", "CHAT"))
            .await
            .unwrap();
        for (sid, reads) in [("s", 0), ("other", first), ("other", 0)] {
            let before = store.reads();
            let patched = svc
                .patch_metadata(&caller, sid, json!({"api_key": "sk-2", "status": "on"}))
                .await
                .unwrap();
            let deleted = svc
                .delete_metadata(&caller, sid, Some("status"))
                .await
                .unwrap();
            assert_eq!(
                store.reads() - before,
                reads,
                "{label}, {sid}: session reads for a PATCH and a DELETE"
            );
            // The answers are shaped all the same (the redactor masks api_key).
            let masked = if label.contains("get-hook") {
                "***"
            } else {
                "sk-2"
            };
            assert_eq!(patched.withheld, None, "{label}");
            assert_eq!(patched.value["api_key"], masked, "{label}");
            assert_eq!(deleted.value["api_key"], masked, "{label}");
            assert!(deleted.value.get("status").is_none(), "{label}");
        }
    }
}

/// A session deleted and re-created under the same id with another type
/// past this gateway (as by another one) between two hooked writes: the
/// second write's plugins are given the new type, and it reads nothing to
/// learn it (the write that found the other type said which).
async fn hooks_see_the_type_of_a_session_re_created_elsewhere(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((svc, store)) = service(b, &dir, vec![session_type_probe()]).await else {
        return;
    };
    let caller = Caller::anonymous();
    let t = &caller.tenant;
    svc.create_session(&caller, new_session("s", "CHAT"))
        .await
        .unwrap();
    let before = store.reads();
    let patched = svc
        .patch_metadata(&caller, "s", json!({"n": 1}))
        .await
        .unwrap();
    assert_eq!(patched.value["seen_type"], "CHAT");
    let fb = svc
        .add_feedback(&caller, "s", json!({"rating": "up"}))
        .await
        .unwrap();
    assert_eq!(fb["seen_type"], "CHAT");

    for (round, ty) in ["VOICE", "CHAT", "TASK"].into_iter().enumerate() {
        store.inner.delete_session(t, "s").await.unwrap();
        store
            .inner
            .create_session(t, new_session("s", ty))
            .await
            .unwrap();
        let patched = svc
            .patch_metadata(&caller, "s", json!({"n": round}))
            .await
            .unwrap();
        assert_eq!(
            patched.value["seen_type"], ty,
            "metadata after re-creating as {ty}"
        );
        assert_eq!(patched.value["n"], round);
        let stored = store.inner.get_metadata(t, "s").await.unwrap();
        assert_eq!(stored["seen_type"], ty);

        store.inner.delete_session(t, "s").await.unwrap();
        store
            .inner
            .create_session(t, new_session("s", &format!("{ty}2")))
            .await
            .unwrap();
        let fb = svc
            .add_feedback(&caller, "s", json!({"rating": "up"}))
            .await
            .unwrap();
        assert_eq!(
            fb["seen_type"],
            format!("{ty}2"),
            "feedback after re-creating"
        );
        let stored = store.inner.list_feedbacks(t, "s").await.unwrap();
        assert_eq!(stored.len(), 1, "the first try wrote nothing");
        assert_eq!(stored[0].body["seen_type"], format!("{ty}2"));
    }
    assert_eq!(
        store.reads(),
        before,
        "no session read on any of these writes"
    );
}

/// A before-hook refusing a write to a session this gateway knows but
/// which was deleted elsewhere: the answer is 404, as without hooks (the
/// refusal was given with a remembered type, which a read then checks).
async fn a_refusal_for_a_session_deleted_elsewhere_is_a_404(b: Backend) {
    let deny = common::hook("deny", "fixture_deny", "before", &["metadata.update"], "");
    let dir = tempfile::tempdir().unwrap();
    let Some((svc, store)) = service(b, &dir, vec![deny]).await else {
        return;
    };
    let caller = Caller::anonymous();
    svc.create_session(&caller, new_session("s", "CHAT"))
        .await
        .unwrap();
    let e = svc
        .patch_metadata(&caller, "s", json!({"n": 1}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "denied_by_hook", "{e:?}");
    store
        .inner
        .delete_session(&caller.tenant, "s")
        .await
        .unwrap();
    let e = svc
        .patch_metadata(&caller, "s", json!({"n": 1}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "not_found", "{e:?}");
}

/// The store's typed writes: of the expected type they write as the untyped
/// ones; of another type they write nothing and name the stored type; a
/// missing session is `NotFound`.
async fn typed_writes_check_the_session_type(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((_svc, store)) = service(b, &dir, vec![]).await else {
        return;
    };
    let store = &store.inner;
    let t = &Tenant::default_tenant();
    store
        .create_session(t, new_session("s", "CHAT"))
        .await
        .unwrap();
    let set = |v: i64| MetadataChange::Update(vec![("n".to_owned(), json!(v))]);
    for _ in 0..2 {
        // Twice: the MongoDB store's fast path knows the session the second time.
        let e = store
            .change_metadata_of_type(t, "s", Some("VOICE"), &set(1))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::OtherType(ty) if ty == "CHAT"),
            "{e:?}"
        );
        let e = store
            .add_feedback_of_type(t, "s", Some("VOICE"), JsonObject::new())
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::OtherType(ty) if ty == "CHAT"),
            "{e:?}"
        );
        store
            .change_metadata_of_type(t, "s", Some("CHAT"), &set(2))
            .await
            .unwrap();
    }
    assert_eq!(store.get_metadata(t, "s").await.unwrap()["n"], 2);
    assert!(store.list_feedbacks(t, "s").await.unwrap().is_empty());
    store
        .add_feedback_of_type(t, "s", Some("CHAT"), JsonObject::new())
        .await
        .unwrap();
    assert_eq!(store.list_feedbacks(t, "s").await.unwrap().len(), 1);
    store.delete_session(t, "s").await.unwrap();
    let e = store
        .change_metadata_of_type(t, "s", Some("CHAT"), &set(3))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    let e = store
        .add_feedback_of_type(t, "s", Some("CHAT"), JsonObject::new())
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
}

on_both_stores!(
    metadata_writes_read_the_session_only_for_before_hooks,
    hooks_see_the_type_of_a_session_re_created_elsewhere,
    a_refusal_for_a_session_deleted_elsewhere_is_a_404,
    typed_writes_check_the_session_type,
);

/// `/metrics` is open to anyone and exempt from the request limits, and the
/// queue depths it shows are store queries whose work can grow with a
/// backlog: however often it is scraped, it reads them at most once per
/// `QUEUE_DEPTHS_MAX_AGE`, and reads them again once they are older.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scrapes_read_the_queue_depths_at_most_once_per_max_age() {
    use gateway::observe::{Metrics, QUEUE_DEPTHS_MAX_AGE};
    let dir = tempfile::tempdir().unwrap();
    let (_, counting, (hooks, hub)) = parts(Backend::Embedded, &dir, Vec::new()).await.unwrap();
    let store: Arc<dyn SessionStore> = counting.clone();
    let metrics = Metrics::new(hooks, hub);
    let started = std::time::Instant::now();
    for _ in 0..50 {
        let text = metrics.render(store.as_ref()).await;
        assert!(
            text.contains("gateway_after_hook_events_pending 0"),
            "{text}"
        );
    }
    let secs = started.elapsed().as_secs_f64();
    let reads = counting.queue_reads();
    // Two queries per refresh; a slow machine may pass the max age.
    let refreshes = 1 + (secs / QUEUE_DEPTHS_MAX_AGE.as_secs_f64()) as usize;
    assert!(
        (2..=2 * refreshes).contains(&reads),
        "50 scrapes in {secs:.2} s read the queue depths {reads} times (at most {} allowed)",
        2 * refreshes
    );
    tokio::time::sleep(QUEUE_DEPTHS_MAX_AGE + std::time::Duration::from_millis(50)).await;
    let before = counting.queue_reads();
    metrics.render(store.as_ref()).await;
    assert_eq!(
        counting.queue_reads(),
        before + 2,
        "depths older than the max age are read again"
    );
}

/// The event processor sends a round's completions without waiting for each
/// (on the embedded store they then share commits), but on a store shared
/// over the network (MongoDB) at most 16 at once, so a backlog does not take
/// a pooled connection per claimed event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_processor_bounds_completions_in_flight_on_a_shared_store() {
    for shared in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = common::config(Backend::Embedded, &dir).unwrap();
        let store = Arc::new(Counting {
            inner: gateway::open_store(&cfg).await.expect("store"),
            session_reads: AtomicUsize::new(0),
            queue_reads: AtomicUsize::new(0),
            completions: Some(Completions {
                shared,
                now: AtomicUsize::new(0),
                most: AtomicUsize::new(0),
            }),
        });
        let dyn_store: Arc<dyn SessionStore> = store.clone();
        let hooks = Arc::new(
            HookHost::start(&cfg, None, dyn_store.clone())
                .await
                .unwrap(),
        );
        dyn_store.set_after_hooked(AfterHooked(0b111));
        let t = Tenant("t".into());
        dyn_store
            .create_session(&t, new_session("s", "chat"))
            .await
            .unwrap();
        for i in 0..64 {
            let change = MetadataChange::Update(vec![("n".into(), json!(i))]);
            dyn_store.change_metadata(&t, "s", &change).await.unwrap();
        }
        assert_eq!(dyn_store.hook_backlog().await.unwrap().pending, 64);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(gateway::events::process(
            dyn_store.clone(),
            hooks,
            Arc::new(Notify::new()),
            Arc::new(Notify::new()),
            stop_rx,
        ));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while dyn_store.hook_backlog().await.unwrap().pending > 0 {
            assert!(std::time::Instant::now() < deadline, "not drained in 30 s");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        stop.send(true).unwrap();
        task.await.unwrap();
        let most = store
            .completions
            .as_ref()
            .unwrap()
            .most
            .load(Ordering::SeqCst);
        if shared {
            assert!(
                (2..=16).contains(&most),
                "shared store: {most} completions in flight at most (want 2..=16)"
            );
        } else {
            // All 64 are sent within the 50 ms the first one takes, unless
            // the processor is held off the CPU that long.
            assert!(
                most > 16,
                "embedded store: only {most} completions in flight at most (want > 16)"
            );
        }
    }
}
