//! The storage contract, run against every store.
//!
//! Each case is an async function taking `Arc<dyn SessionStore>`; the
//! `contract!` macro turns it into one `#[tokio::test]` per store:
//! `embedded::<case>` (redb in a temporary directory) and `mongo::<case>`
//! (a fresh database on `MONGODB_URI`, dropped afterwards). Without
//! `MONGODB_URI` the MongoDB tests print a notice and pass, unless
//! `REQUIRE_MONGODB=1`, which makes them fail.
#![allow(missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gateway::config::MongoConfig;
use gateway::metadata::MetadataChange;
use gateway::model::{
    EventType, JsonObject, MessageInput, MessagePatch, MessageRange, NewSession, Session, Tenant,
    now_ms, parse_rfc3339_ms,
};
use gateway::store::embedded::EmbeddedStore;
use gateway::store::mongo::MongoStore;
use gateway::store::{
    Appended, BatchWrite, BatchWritten, HookBacklog, ListQuery, NextDue, OutboxItem, OutboxState,
    Retention, SessionStore, StoreError,
};
use redb::ReadableTable;
use serde_json::{Value, json};

/// Every event type an after-hook can observe.
const ALL_HOOKED: gateway::store::AfterHooked = gateway::store::AfterHooked(0b111);

type Store = Arc<dyn SessionStore>;

// ---- harness ----

async fn run_embedded<F, Fut>(case: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Store =
        Arc::new(EmbeddedStore::open(&dir.path().join("data/db.redb"), 64).expect("open redb"));
    // As a gateway with after-hooks on every hookable event type.
    store.set_after_hooked(ALL_HOOKED);
    let res = tokio::spawn(case(store)).await;
    drop(dir);
    if let Err(e) = res {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// A config for a fresh database, or `None` to skip.
fn mongo_config() -> Option<MongoConfig> {
    Some(MongoConfig {
        uri: common::mongo_uri()?,
        database: format!("contract_{}", uuid::Uuid::new_v4().simple()),
        server_selection_timeout_ms: 5_000,
        ..MongoConfig::default()
    })
}

async fn drop_database(cfg: &MongoConfig) {
    if let Ok(client) = mongodb::Client::with_uri_str(&cfg.uri).await {
        let _ = client.database(&cfg.database).drop().await;
    }
}

async fn run_mongo<F, Fut>(case: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(cfg) = mongo_config() else { return };
    let store: Store = Arc::new(MongoStore::connect(&cfg).await.expect("connect to MongoDB"));
    store.set_after_hooked(ALL_HOOKED);
    let res = tokio::spawn(case(store)).await;
    drop_database(&cfg).await;
    if let Err(e) = res {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// One `list_messages` call stops at the store's read budget: a prefix of
/// the range (at least one message, even one larger than the budget), and
/// reading on from the next id gets the rest once, in order.
async fn reads_stop_at_the_byte_budget(store: Store) {
    let t = tenant("t");
    create(&store, &t, "s").await;
    agent(&store, &t, "s", "a").await;
    for i in 0..6 {
        let pad = "x".repeat(if i == 3 { 2_500 } else { 300 });
        let input = msg(None, &format!(r#"{{"i":{i},"pad":"{pad}"}}"#));
        created(store.append_message(&t, "s", "a", input).await.unwrap());
    }
    let (mut ids, mut calls, mut offset) = (Vec::new(), 0, 0);
    while offset < 6 {
        let range = MessageRange::Page { limit: 100, offset };
        let (page, total) = store.list_messages(&t, "s", "a", range).await.unwrap();
        assert_eq!(total, 6);
        assert!(!page.is_empty(), "no progress at offset {offset}");
        let bytes: usize = page.iter().map(|m| m.message.get().len()).sum();
        assert!(
            page.len() == 1 || bytes <= 1_000,
            "{} messages, {bytes} bytes in one read",
            page.len()
        );
        ids.extend(page.iter().map(|m| m.message_id));
        offset = ids.last().unwrap() + 1;
        calls += 1;
    }
    assert_eq!(ids, (0..6).collect::<Vec<_>>());
    assert!(calls >= 3, "{calls} reads: the budget did not cut");
}

async fn assert_nothing_to_claim(store: &Store) {
    let outbox = store.claim_outbox(now_ms(), 5_000, 10).await.unwrap();
    let events = store
        .claim_pending_events(now_ms(), 5_000, 10)
        .await
        .unwrap();
    assert!(
        outbox.is_empty() && events.is_empty(),
        "claimed {outbox:?} {events:?}"
    );
}

/// The after-hook processor and the outbox dispatcher poll while idle: on
/// the embedded store a poll with nothing to claim commits nothing (each
/// commit is an fsync), and one with something due still claims it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_idle_polls_commit_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let embedded =
        Arc::new(EmbeddedStore::open(&dir.path().join("db.redb"), 64).expect("open redb"));
    let store: Store = embedded.clone();
    store.set_after_hooked(ALL_HOOKED);
    let before = embedded.commits();
    for _ in 0..5 {
        assert_nothing_to_claim(&store).await;
    }
    assert_eq!(embedded.commits(), before, "idle polls committed");

    // Something due: claimed, with its lease committed.
    let t = tenant("t");
    create(&store, &t, "s").await;
    store
        .change_metadata(
            &t,
            "s",
            &MetadataChange::Update(vec![("k".into(), json!(1))]),
        )
        .await
        .unwrap();
    let claimed = store
        .claim_pending_events(now_ms(), 5_000, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "the metadata.updated event");
    store
        .complete_event(
            "t",
            "s",
            claimed[0].seq,
            vec![outbox_item("n1", 1_000, "a")],
        )
        .await
        .unwrap();
    let before = embedded.commits();
    let items = store.claim_outbox(now_ms(), 5_000, 10).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(embedded.commits(), before + 1, "a claim commits its lease");
    // Leased: not due again, and no commit to find that out.
    assert_nothing_to_claim(&store).await;
    assert_eq!(embedded.commits(), before + 1);
}

/// On the embedded store the retention sweep finds what to remove in a
/// snapshot: a sweep with nothing to remove commits nothing (no writer turn,
/// no fsync); one with an expired session commits once and expires it; and
/// with a `now` at which everything is expired it still expires only what the
/// policy names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_sweep_with_nothing_to_remove_commits_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let embedded =
        Arc::new(EmbeddedStore::open(&dir.path().join("db.redb"), 64).expect("open redb"));
    let store: Store = embedded.clone();
    let t = tenant("t");
    create(&store, &t, "keep").await;
    store
        .create_session(&t, new_session(Some("tmp"), Some("ephemeral"), json!({})))
        .await
        .unwrap();
    store.set_retention(Retention {
        sessions: BTreeMap::from([("ephemeral".to_owned(), 60_000)]),
        default_session_ms: None,
        events_ms: Some(3_600_000),
    });
    let before = embedded.commits();
    for _ in 0..3 {
        let r = store.sweep_expired(now_ms(), 10).await.unwrap();
        assert_eq!((r.sessions, r.events), (0, 0));
    }
    assert_eq!(
        embedded.commits(),
        before,
        "a sweep with nothing to do committed"
    );
    // Two minutes on: "tmp" is past its retention, "keep" has none.
    let r = store.sweep_expired(now_ms() + 120_000, 10).await.unwrap();
    assert_eq!(r.sessions, 1);
    assert_eq!(embedded.commits(), before + 1, "one commit for the sweep");
    assert_not_found(store.get_session(&t, "tmp").await);
    store
        .get_session(&t, "keep")
        .await
        .expect("no retention for AGENT");
}

/// On the embedded store a batch of writes is one commit (one fsync), also
/// when a write in it fails: the writes before it are in that commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_batch_is_one_commit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let embedded =
        Arc::new(EmbeddedStore::open(&dir.path().join("db.redb"), 64).expect("open redb"));
    let store: Store = embedded.clone();
    let t = tenant("t");
    create(&store, &t, "s").await;
    agent(&store, &t, "s", "a").await;
    let before = embedded.commits();
    let out = store
        .write_batch(
            &t,
            "s",
            vec![
                append_op("a", None, "1"),
                put_op("a", json!({}), None),
                append_op("a", None, "2"),
            ],
        )
        .await;
    assert!(out.failed.is_none(), "{:?}", out.failed);
    assert_eq!(embedded.commits(), before + 1);
    let out = store
        .write_batch(
            &t,
            "s",
            vec![append_op("a", None, "3"), put_op("a", json!({}), Some(1))],
        )
        .await;
    assert_eq!(out.done.len(), 1);
    assert!(matches!(
        out.failed,
        Some(StoreError::VersionMismatch { .. })
    ));
    assert_eq!(embedded.commits(), before + 2);
    let (_, total) = store
        .list_messages(&t, "s", "a", MessageRange::Latest(1))
        .await
        .unwrap();
    assert_eq!(total, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_reads_stop_at_the_byte_budget() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Store = Arc::new(
        EmbeddedStore::open(&dir.path().join("db.redb"), 64)
            .expect("open redb")
            .with_max_read_bytes(1_000),
    );
    reads_stop_at_the_byte_budget(store).await;
}

/// A list larger than what the embedded store reads on the request's thread
/// (64 KiB) goes on in the blocking pool from the row it stopped at: no row
/// is lost or repeated at the hand-over, and the byte budget still counts
/// the rows of both parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_long_lists_continue_where_the_inline_part_stopped() {
    const FIRST_100: MessageRange = MessageRange::Page {
        limit: 100,
        offset: 0,
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db.redb");
    let t = tenant("t");
    let text = "x".repeat(3_000);
    {
        let s: Store = Arc::new(EmbeddedStore::open(&path, 64).expect("open redb"));
        create(&s, &t, "s").await;
        agent(&s, &t, "s", "a").await;
        for i in 0..60 {
            created(
                s.append_message(
                    &t,
                    "s",
                    "a",
                    msg(None, &format!(r#"{{"i":{i},"t":"{text}"}}"#)),
                )
                .await
                .unwrap(),
            );
        }
        let (all, total) = s.list_messages(&t, "s", "a", FIRST_100).await.unwrap();
        assert_eq!(total, 60);
        let ids: Vec<u64> = all.iter().map(|m| m.message_id).collect();
        assert_eq!(ids, (0..60).collect::<Vec<_>>(), "about 180 KB in one list");
        assert!(all[59].message.get().contains(r#""i":59"#));
        // One message larger than the inline part: all of it is read after
        // the hand-over.
        let big = "y".repeat(100_000);
        created(
            s.append_message(&t, "s", "a", msg(None, &format!(r#"{{"t":"{big}"}}"#)))
                .await
                .unwrap(),
        );
        let (last, _) = s
            .list_messages(&t, "s", "a", MessageRange::Latest(1))
            .await
            .unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].message_id, 60);
        assert!(last[0].message.get().contains(&big));
    }
    // A budget of 100 KB ends the read of the first 60 in its second part.
    let s: Store = Arc::new(
        EmbeddedStore::open(&path, 64)
            .expect("reopen")
            .with_max_read_bytes(100_000),
    );
    let (part, _) = s.list_messages(&t, "s", "a", FIRST_100).await.unwrap();
    let ids: Vec<u64> = part.iter().map(|m| m.message_id).collect();
    assert!(
        (22..40).contains(&ids.len()),
        "100 KB of 3 KB messages past the 64 KiB read inline: {ids:?}"
    );
    assert_eq!(ids, (0..ids.len() as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_reads_stop_at_the_byte_budget() {
    let Some(cfg) = mongo_config() else { return };
    let store: Store = Arc::new(
        MongoStore::connect(&cfg)
            .await
            .expect("connect")
            .with_max_read_bytes(1_000),
    );
    let res = tokio::spawn(reads_stop_at_the_byte_budget(store)).await;
    drop_database(&cfg).await;
    if let Err(e) = res {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Two gateways on one database (two clients, no shared in-process state):
/// their transactions conflict on the session document and are retried, so
/// message ids stay distinct and contiguous and no event is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongo_two_gateways_append_concurrently() {
    let Some(cfg) = mongo_config() else { return };
    let g1: Store = Arc::new(MongoStore::connect(&cfg).await.expect("connect"));
    let g2: Store = Arc::new(MongoStore::connect(&cfg).await.expect("connect"));
    let res = tokio::spawn(async move {
        let t = tenant("t");
        create(&g1, &t, "s").await;
        agent(&g2, &t, "s", "a").await;
        let mut tasks = Vec::new();
        for (w, store) in [&g1, &g2, &g1, &g2].into_iter().enumerate() {
            let (store, t) = (store.clone(), t.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    let input = msg(None, &format!(r#"{{"w":{w},"i":{i}}}"#));
                    created(
                        store
                            .append_message(&t, "s", "a", input)
                            .await
                            .expect("append"),
                    );
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let (msgs, total) = g1
            .list_messages(
                &t,
                "s",
                "a",
                MessageRange::Page {
                    limit: 1000,
                    offset: 0,
                },
            )
            .await
            .unwrap();
        assert_eq!(total, 100);
        assert_eq!(
            msgs.iter().map(|m| m.message_id).collect::<Vec<_>>(),
            (0..100).collect::<Vec<u64>>()
        );
        let events = g2.events_after(&t, "s", 0, 1000).await.unwrap();
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=102).collect::<Vec<u64>>()
        );
    })
    .await;
    drop_database(&cfg).await;
    if let Err(e) = res {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test]
async fn mongo_unreachable_is_unavailable() {
    let cfg = MongoConfig {
        uri: "mongodb://127.0.0.1:1/?directConnection=true".into(),
        server_selection_timeout_ms: 300,
        connect_timeout_ms: 300,
        ..MongoConfig::default()
    };
    match MongoStore::connect(&cfg).await {
        Err(StoreError::Unavailable(_)) => {}
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(_) => panic!("connected to a closed port"),
    }
}

/// Deleted sessions' children are purged in the background, and purges a
/// crash left behind are finished by the next `connect`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_purges_deleted_children() {
    use mongodb::bson::{Document, doc};
    let Some(cfg) = mongo_config() else { return };
    let client = mongodb::Client::with_uri_str(&cfg.uri).await.unwrap();
    let db = client.database(&cfg.database);
    let res = tokio::spawn({
        let cfg = cfg.clone();
        async move {
            let s: Store = Arc::new(MongoStore::connect(&cfg).await.expect("connect"));
            let t = tenant("t");
            create(&s, &t, "s").await;
            agent(&s, &t, "s", "a").await;
            for _ in 0..3 {
                created(
                    s.append_message(&t, "s", "a", msg(None, "{}"))
                        .await
                        .unwrap(),
                );
            }
            s.add_feedback(&t, "s", obj(json!({}))).await.unwrap();
            let session = db
                .collection::<Document>("sessions")
                .find_one(doc! { "_id": "t/s" })
                .await
                .unwrap()
                .unwrap();
            let uid = session.get_i64("uid").unwrap();
            let children = || async {
                let mut n = 0;
                for coll in ["agents", "messages", "feedbacks"] {
                    n += db
                        .collection::<Document>(coll)
                        .count_documents(doc! { "uid": uid })
                        .await
                        .unwrap();
                }
                n
            };
            assert_eq!(children().await, 5);
            s.delete_session(&t, "s").await.unwrap();
            let purges = db.collection::<Document>("purges");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while children().await > 0 || purges.count_documents(doc! {}).await.unwrap() > 0 {
                assert!(std::time::Instant::now() < deadline, "children not purged");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }

            // A purge recorded by a delete whose process died before purging.
            let orphan = 42i64;
            purges
                .insert_one(doc! { "_id": orphan, "key": "t/gone" })
                .await
                .unwrap();
            db.collection::<Document>("messages")
                .insert_one(
                    doc! { "key": "t/gone", "uid": orphan, "agent_id": "a", "message_id": 0i64, "doc": "{}" },
                )
                .await
                .unwrap();
            let _restarted = MongoStore::connect(&cfg).await.expect("reconnect");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while purges.count_documents(doc! {}).await.unwrap() > 0
                || db
                    .collection::<Document>("messages")
                    .count_documents(doc! { "uid": orphan })
                    .await
                    .unwrap()
                    > 0
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "leftover purge not swept"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
    .await;
    drop_database(&cfg).await;
    if let Err(e) = res {
        std::panic::resume_unwind(e.into_panic());
    }
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::run_embedded(super::$case).await;
                }
            )*
        }
        mod mongo {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::run_mongo(super::$case).await;
                }
            )*
        }
    };
}

contract!(
    ping_and_name,
    create_generated_and_explicit_ids,
    create_existing_is_conflict,
    recreate_after_delete_continues_seq,
    get_and_batch_get,
    list_paginates_with_cursor,
    list_filters,
    tenants_are_isolated,
    delete_removes_everything,
    put_agent_versions_and_if_match,
    append_assigns_sequential_ids,
    append_retry_conflict_and_gap,
    message_round_trips_byte_for_byte,
    list_messages_ranges,
    get_and_update_messages,
    concurrent_appends_get_contiguous_ids,
    write_batch_runs_in_order_and_stops_at_a_failure,
    metadata_set_unset_and_changed,
    metadata_path_conflicts,
    metadata_numbers_round_trip,
    feedbacks_in_order,
    events_after_resumes_exactly,
    events_since_and_latest_seq,
    claim_and_complete_events,
    claims_take_the_oldest_first,
    hook_backlog_counts_the_queue,
    outbox_lifecycle,
    retention_hides_and_sweeps,
);

// ---- helpers ----

fn tenant(name: &str) -> Tenant {
    Tenant(name.to_owned())
}

fn new_session(sid: Option<&str>, session_type: Option<&str>, metadata: Value) -> NewSession {
    serde_json::from_value(json!({
        "session_id": sid,
        "session_type": session_type,
        "metadata": metadata,
    }))
    .expect("new session")
}

async fn create(s: &Store, t: &Tenant, sid: &str) -> Session {
    s.create_session(t, new_session(Some(sid), None, json!({})))
        .await
        .expect("create session")
}

fn obj(v: Value) -> JsonObject {
    v.as_object().expect("an object").clone()
}

fn input(text: &str) -> MessageInput {
    serde_json::from_str(text).expect("message input")
}

fn msg(id: Option<u64>, message: &str) -> MessageInput {
    let id = id.map_or_else(|| "null".to_owned(), |i| i.to_string());
    input(&format!(r#"{{"message_id":{id},"message":{message}}}"#))
}

fn patch(text: &str) -> MessagePatch {
    serde_json::from_str(text).expect("message patch")
}

async fn agent(s: &Store, t: &Tenant, sid: &str, aid: &str) {
    s.put_agent(t, sid, aid, obj(json!({"state": {}})), None)
        .await
        .expect("put agent");
}

fn created(a: Appended) -> gateway::model::Message {
    match a {
        Appended::Created(m) => m,
        Appended::Existing(m) => panic!("expected Created, got Existing({})", m.message_id),
    }
}

fn ids(sessions: &[Session]) -> Vec<&str> {
    sessions.iter().map(|s| s.session_id.as_str()).collect()
}

#[track_caller]
fn assert_not_found<T: std::fmt::Debug>(r: Result<T, StoreError>) {
    match r {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[track_caller]
fn assert_conflict<T: std::fmt::Debug>(r: Result<T, StoreError>, want: &str) {
    match r {
        Err(StoreError::Conflict { code, .. }) if code == want => {}
        other => panic!("expected Conflict({want}), got {other:?}"),
    }
}

#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(r: Result<T, StoreError>, want: &str) -> String {
    match r {
        Err(StoreError::Invalid { code, message }) if code == want => message,
        other => panic!("expected Invalid({want}), got {other:?}"),
    }
}

async fn seq(s: &Store, t: &Tenant, sid: &str) -> u64 {
    s.latest_event_seq(t, sid).await.expect("latest seq")
}

fn outbox_item(id: &str, created_at: i64, payload: &str) -> OutboxItem {
    OutboxItem {
        id: id.to_owned(),
        target: "orders".into(),
        payload: payload.to_owned(),
        plugin: "notify".into(),
        tenant: "t".into(),
        session_id: "s".into(),
        created_at,
        attempts: 0,
        next_attempt_at: created_at,
        state: OutboxState::Pending,
        last_error: None,
    }
}

/// Asserts what a store tells of when its queue is next due: a store that
/// only this process writes (embedded) must know exactly; one that other
/// gateways write too (MongoDB) says it cannot tell, so its pollers poll.
fn assert_due(s: &Store, got: NextDue, expected: NextDue, what: &str) {
    let expected = if s.is_shared() {
        NextDue::Unknown
    } else {
        expected
    };
    assert_eq!(got, expected, "{what}");
}

// ---- cases ----

async fn ping_and_name(s: Store) {
    s.ping().await.expect("ping");
    match s.name() {
        "embedded" => assert!(!s.is_shared()),
        "mongodb" => assert!(s.is_shared()),
        other => panic!("unknown store {other}"),
    }
}

async fn create_generated_and_explicit_ids(s: Store) {
    let t = tenant("t");
    let generated = s
        .create_session(&t, new_session(None, None, json!({})))
        .await
        .unwrap();
    assert!(
        uuid::Uuid::parse_str(&generated.session_id).is_ok(),
        "{}",
        generated.session_id
    );
    assert_eq!(generated.session_type, "AGENT");
    assert!(generated.metadata.is_empty());
    assert!(generated.agents.is_empty());
    assert_eq!(generated.created_at, generated.updated_at);
    assert!(parse_rfc3339_ms(&generated.created_at).is_some());
    assert_eq!(
        s.get_session(&t, &generated.session_id).await.unwrap(),
        generated
    );

    let meta = json!({"team": "red", "nested": {"list": [1, 2.5, "x", null, true]}, "n": -3});
    let explicit = s
        .create_session(&t, new_session(Some("chat-1"), Some("CHAT"), meta.clone()))
        .await
        .unwrap();
    assert_eq!(explicit.session_id, "chat-1");
    assert_eq!(explicit.session_type, "CHAT");
    assert_eq!(Value::Object(explicit.metadata.clone()), meta);
    let got = s.get_session(&t, "chat-1").await.unwrap();
    assert_eq!(got, explicit);
    let keys: Vec<&String> = got.metadata.keys().collect();
    assert_eq!(keys, ["team", "nested", "n"], "metadata key order is kept");

    let events = s.events_after(&t, "chat-1", 0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].seq, 1);
    assert_eq!(events[0].kind, EventType::SessionCreated);
    assert_eq!(events[0].session_type, "CHAT");
    assert_eq!(
        events[0].payload,
        json!({"session_type": "CHAT", "metadata": meta})
    );
}

async fn create_existing_is_conflict(s: Store) {
    let t = tenant("t");
    s.create_session(&t, new_session(Some("dup"), None, json!({"v": 1})))
        .await
        .unwrap();
    let again = s
        .create_session(&t, new_session(Some("dup"), Some("OTHER"), json!({"v": 2})))
        .await;
    assert_conflict(again, "session_exists");
    let got = s.get_session(&t, "dup").await.unwrap();
    assert_eq!(got.session_type, "AGENT");
    assert_eq!(Value::Object(got.metadata), json!({"v": 1}));
    assert_eq!(
        seq(&s, &t, "dup").await,
        1,
        "a refused create writes no event"
    );
}

async fn recreate_after_delete_continues_seq(s: Store) {
    let t = tenant("t");
    create(&s, &t, "s").await;
    agent(&s, &t, "s", "a").await;
    created(
        s.append_message(&t, "s", "a", msg(None, r#"{"x":1}"#))
            .await
            .unwrap(),
    );
    s.add_feedback(&t, "s", obj(json!({"rating": "up"})))
        .await
        .unwrap();
    assert_eq!(seq(&s, &t, "s").await, 4);

    s.delete_session(&t, "s").await.unwrap();
    assert_eq!(
        seq(&s, &t, "s").await,
        5,
        "a deleted session keeps its sequence"
    );
    assert_not_found(s.get_session(&t, "s").await);

    let again = s
        .create_session(
            &t,
            new_session(Some("s"), Some("CHAT"), json!({"fresh": true})),
        )
        .await
        .unwrap();
    assert_eq!(again.session_type, "CHAT");
    assert!(again.agents.is_empty());
    assert_eq!(Value::Object(again.metadata), json!({"fresh": true}));
    let events = s.events_after(&t, "s", 0, 100).await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    assert_eq!(events[4].kind, EventType::SessionDeleted);
    assert_eq!(events[4].payload, json!({}));
    assert_eq!(events[5].kind, EventType::SessionCreated);
    assert_eq!(events[5].session_type, "CHAT");

    // Nothing of the old incarnation is visible.
    assert_not_found(s.get_agent(&t, "s", "a").await);
    assert!(s.list_agents(&t, "s").await.unwrap().is_empty());
    assert_not_found(
        s.list_messages(&t, "s", "a", MessageRange::Latest(10))
            .await,
    );
    assert!(s.list_feedbacks(&t, "s").await.unwrap().is_empty());
    let (a, was_created) = s
        .put_agent(&t, "s", "a", obj(json!({})), None)
        .await
        .unwrap();
    assert!(was_created);
    assert_eq!((a.version, a.message_count), (1, 0));
    let (msgs, total) = s
        .list_messages(&t, "s", "a", MessageRange::Latest(10))
        .await
        .unwrap();
    assert!(msgs.is_empty());
    assert_eq!(total, 0);
}

async fn get_and_batch_get(s: Store) {
    let t = tenant("t");
    for sid in ["a", "b", "c"] {
        create(&s, &t, sid).await;
    }
    s.delete_session(&t, "b").await.unwrap();
    assert_not_found(s.get_session(&t, "missing").await);
    assert_not_found(s.get_session(&t, "b").await);

    let ids_in: Vec<String> = ["c", "missing", "a", "b"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let got = s.batch_get_sessions(&t, &ids_in).await.unwrap();
    assert_eq!(
        ids(&got),
        ["c", "a"],
        "input order, missing and deleted skipped"
    );
    assert_eq!(got[1], s.get_session(&t, "a").await.unwrap());
    assert!(s.batch_get_sessions(&t, &[]).await.unwrap().is_empty());

    for aid in ["z", "a.b", "m"] {
        agent(&s, &t, "a", aid).await;
    }
    let a = s.get_session(&t, "a").await.unwrap();
    assert_eq!(a.agents, ["a.b", "m", "z"], "agent ids sorted, dots intact");
    let batch = s.batch_get_sessions(&t, &["a".to_owned()]).await.unwrap();
    assert_eq!(batch, [a]);
}

async fn list_paginates_with_cursor(s: Store) {
    let t = tenant("t");
    for i in [4, 1, 7, 3, 2, 6, 5, 8] {
        create(&s, &t, &format!("s{i:02}")).await;
    }
    s.delete_session(&t, "s08").await.unwrap();
    let mut q = ListQuery {
        limit: 3,
        ..ListQuery::default()
    };
    let p1 = s.list_sessions(&t, &q).await.unwrap();
    assert_eq!(ids(&p1.sessions), ["s01", "s02", "s03"]);
    assert_eq!(p1.next_cursor.as_deref(), Some("s03"));
    q.after = p1.next_cursor;
    let p2 = s.list_sessions(&t, &q).await.unwrap();
    assert_eq!(ids(&p2.sessions), ["s04", "s05", "s06"]);
    assert_eq!(p2.next_cursor.as_deref(), Some("s06"));
    q.after = p2.next_cursor;
    let p3 = s.list_sessions(&t, &q).await.unwrap();
    assert_eq!(ids(&p3.sessions), ["s07"]);
    assert_eq!(p3.next_cursor, None);

    let all = s
        .list_sessions(
            &t,
            &ListQuery {
                limit: 7,
                ..ListQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(all.sessions.len(), 7);
    assert_eq!(all.next_cursor, None, "exactly a full page: no cursor");
    assert_eq!(all.sessions[0], s.get_session(&t, "s01").await.unwrap());
    let after_last = ListQuery {
        limit: 3,
        after: Some("s07".into()),
        ..ListQuery::default()
    };
    assert!(
        s.list_sessions(&t, &after_last)
            .await
            .unwrap()
            .sessions
            .is_empty()
    );
}

async fn list_filters(s: Store) {
    let t = tenant("t");
    let mk = |sid: &'static str, ty: &'static str, meta: Value| {
        let s = s.clone();
        let t = t.clone();
        async move {
            s.create_session(&t, new_session(Some(sid), Some(ty), meta))
                .await
                .unwrap();
        }
    };
    mk(
        "a",
        "AGENT",
        json!({"team": "red", "profile": {"tier": "gold", "seats": 3}, "n": 1, "tags": ["x", "y"]}),
    )
    .await;
    mk(
        "b",
        "CHAT",
        json!({"team": "blue", "profile": {"seats": 3, "tier": "gold"}, "n": 1.0}),
    )
    .await;
    mk(
        "c",
        "AGENT",
        json!({"team": "red", "profile": "gold", "flag": null}),
    )
    .await;

    let list = |q: ListQuery| {
        let s = s.clone();
        let t = t.clone();
        async move {
            ids(&s.list_sessions(&t, &q).await.unwrap().sessions)
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
        }
    };
    let meta = |pairs: Vec<(&str, Value)>| ListQuery {
        limit: 10,
        metadata: pairs.into_iter().map(|(p, v)| (p.to_owned(), v)).collect(),
        ..ListQuery::default()
    };
    let by_type = ListQuery {
        limit: 10,
        session_type: Some("CHAT".into()),
        ..ListQuery::default()
    };
    assert_eq!(list(by_type).await, ["b"]);
    assert_eq!(list(meta(vec![("team", json!("red"))])).await, ["a", "c"]);
    assert_eq!(
        list(meta(vec![("profile.tier", json!("gold"))])).await,
        ["a", "b"]
    );
    assert_eq!(
        list(meta(vec![
            ("team", json!("red")),
            ("profile.tier", json!("gold"))
        ]))
        .await,
        ["a"]
    );
    // JSON equality: an object matches whatever its key order, 1 is not 1.0,
    // an array is not one of its elements, null is not missing.
    assert_eq!(
        list(meta(vec![("profile", json!({"tier": "gold", "seats": 3}))])).await,
        ["a", "b"]
    );
    assert_eq!(list(meta(vec![("n", json!(1))])).await, ["a"]);
    assert_eq!(list(meta(vec![("n", json!(1.0))])).await, ["b"]);
    assert!(list(meta(vec![("tags", json!("x"))])).await.is_empty());
    assert_eq!(list(meta(vec![("tags", json!(["x", "y"]))])).await, ["a"]);
    assert_eq!(list(meta(vec![("flag", Value::Null)])).await, ["c"]);
    assert!(list(meta(vec![("team", json!("green"))])).await.is_empty());

    // A metadata filter still pages correctly when it skips sessions.
    let paged = ListQuery {
        limit: 1,
        metadata: vec![("team".into(), json!("red"))],
        ..ListQuery::default()
    };
    let p1 = s.list_sessions(&t, &paged).await.unwrap();
    assert_eq!(ids(&p1.sessions), ["a"]);
    assert_eq!(p1.next_cursor.as_deref(), Some("a"));
    let p2 = s
        .list_sessions(
            &t,
            &ListQuery {
                after: p1.next_cursor,
                ..paged
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&p2.sessions), ["c"]);
    assert_eq!(p2.next_cursor, None);

    // updated_after: only sessions changed strictly after the instant.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let t0 = now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    agent(&s, &t, "c", "bot").await;
    let recent = ListQuery {
        limit: 10,
        updated_after: Some(t0),
        ..ListQuery::default()
    };
    assert_eq!(list(recent).await, ["c"]);
    let everything = ListQuery {
        limit: 10,
        updated_after: Some(0),
        ..ListQuery::default()
    };
    assert_eq!(list(everything).await, ["a", "b", "c"]);
}

async fn tenants_are_isolated(s: Store) {
    // "acme-x" sorts before "acme/", "acme0" right after the "acme/" range.
    let tenants = ["acme", "acme-x", "acme0", "beta"];
    for name in tenants {
        s.create_session(
            &tenant(name),
            new_session(Some("s1"), None, json!({"owner": name})),
        )
        .await
        .unwrap();
    }
    let acme = tenant("acme");
    create(&s, &acme, "only-acme").await;
    agent(&s, &acme, "s1", "a").await;

    for name in tenants {
        let t = tenant(name);
        let got = s.get_session(&t, "s1").await.unwrap();
        assert_eq!(Value::Object(got.metadata), json!({"owner": name}));
        let page = s
            .list_sessions(
                &t,
                &ListQuery {
                    limit: 10,
                    ..ListQuery::default()
                },
            )
            .await
            .unwrap();
        let want: &[&str] = if name == "acme" {
            &["only-acme", "s1"]
        } else {
            &["s1"]
        };
        assert_eq!(ids(&page.sessions), want, "tenant {name}");
        for sess in &page.sessions {
            assert!(sess.metadata.get("owner").is_none_or(|o| o == name));
        }
        let evs = s.events_after(&t, "s1", 0, 10).await.unwrap();
        assert!(evs.iter().all(|e| e.tenant == name));
    }
    let beta = tenant("beta");
    assert_not_found(s.get_session(&beta, "only-acme").await);
    assert_not_found(s.get_agent(&beta, "s1", "a").await);
    let batch = s
        .batch_get_sessions(&beta, &["only-acme".into(), "s1".into()])
        .await
        .unwrap();
    assert_eq!(ids(&batch), ["s1"]);
    assert_eq!(batch[0].metadata["owner"], "beta");

    s.delete_session(&acme, "s1").await.unwrap();
    assert_not_found(s.get_session(&acme, "s1").await);
    for name in ["acme-x", "acme0", "beta"] {
        assert!(
            s.get_session(&tenant(name), "s1").await.is_ok(),
            "tenant {name}"
        );
    }
    assert_not_found(s.delete_session(&beta, "only-acme").await);
    assert!(s.get_session(&acme, "only-acme").await.is_ok());
}

async fn delete_removes_everything(s: Store) {
    let t = tenant("t");
    create(&s, &t, "s").await;
    agent(&s, &t, "s", "a").await;
    for i in 0..3 {
        created(
            s.append_message(&t, "s", "a", msg(None, &format!(r#"{{"i":{i}}}"#)))
                .await
                .unwrap(),
        );
    }
    s.add_feedback(&t, "s", obj(json!({"rating": "down"})))
        .await
        .unwrap();
    s.change_metadata(
        &t,
        "s",
        &MetadataChange::Update(vec![("k".into(), json!(1))]),
    )
    .await
    .unwrap();
    s.delete_session(&t, "s").await.unwrap();
    let after = seq(&s, &t, "s").await;

    assert_not_found(s.delete_session(&t, "s").await);
    assert_not_found(s.get_session(&t, "s").await);
    assert_not_found(s.get_metadata(&t, "s").await);
    assert_not_found(s.list_agents(&t, "s").await);
    assert_not_found(s.get_agent(&t, "s", "a").await);
    assert_not_found(s.list_messages(&t, "s", "a", MessageRange::Latest(5)).await);
    assert_not_found(s.get_message(&t, "s", "a", 0).await);
    assert_not_found(s.list_feedbacks(&t, "s").await);
    assert_not_found(s.put_agent(&t, "s", "a", obj(json!({})), None).await);
    assert_not_found(s.append_message(&t, "s", "a", msg(Some(3), "{}")).await);
    assert_not_found(
        s.update_message(&t, "s", "a", 0, patch(r#"{"message":{}}"#))
            .await,
    );
    assert_not_found(
        s.change_metadata(&t, "s", &MetadataChange::Delete(vec!["k".into()]))
            .await,
    );
    assert_not_found(s.add_feedback(&t, "s", obj(json!({}))).await);
    assert_eq!(
        seq(&s, &t, "s").await,
        after,
        "failed writes record no event"
    );
    let listed = s
        .list_sessions(
            &t,
            &ListQuery {
                limit: 10,
                ..ListQuery::default()
            },
        )
        .await
        .unwrap();
    assert!(listed.sessions.is_empty());

    // A new incarnation starts empty.
    create(&s, &t, "s").await;
    assert!(s.get_metadata(&t, "s").await.unwrap().is_empty());
    assert!(s.list_agents(&t, "s").await.unwrap().is_empty());
    assert!(s.list_feedbacks(&t, "s").await.unwrap().is_empty());
    agent(&s, &t, "s", "a").await;
    let (msgs, total) = s
        .list_messages(
            &t,
            "s",
            "a",
            MessageRange::Page {
                limit: 10,
                offset: 0,
            },
        )
        .await
        .unwrap();
    assert!(msgs.is_empty());
    assert_eq!(total, 0);
    assert_not_found(s.get_message(&t, "s", "a", 0).await);
}

async fn put_agent_versions_and_if_match(s: Store) {
    let t = tenant("t");
    assert_not_found(s.put_agent(&t, "nope", "a", obj(json!({})), None).await);
    create(&s, &t, "s").await;

    let body1 = obj(
        json!({"state": {"a": 1}, "conversation_manager_state": {"x": [1, 2]}, "extra": "yes"}),
    );
    let (a1, was_created) = s
        .put_agent(&t, "s", "a", body1.clone(), None)
        .await
        .unwrap();
    assert!(was_created);
    assert_eq!(a1.agent_id, "a");
    assert_eq!(a1.body, body1);
    assert_eq!((a1.version, a1.message_count), (1, 0));
    assert_eq!(a1.created_at, a1.updated_at);
    assert_eq!(s.get_agent(&t, "s", "a").await.unwrap(), a1);

    tokio::time::sleep(Duration::from_millis(3)).await;
    let body2 = obj(json!({"state": {"b": 2}}));
    let (a2, was_created) = s
        .put_agent(&t, "s", "a", body2.clone(), None)
        .await
        .unwrap();
    assert!(!was_created);
    assert_eq!(a2.version, 2);
    assert_eq!(a2.body, body2, "the body is replaced, not merged");
    assert_eq!(a2.created_at, a1.created_at);
    assert!(a2.updated_at > a1.updated_at);
    assert_eq!(s.get_agent(&t, "s", "a").await.unwrap(), a2);

    let (a3, _) = s
        .put_agent(&t, "s", "a", body1.clone(), Some(2))
        .await
        .unwrap();
    assert_eq!(a3.version, 3);
    let before = seq(&s, &t, "s").await;
    match s.put_agent(&t, "s", "a", body2.clone(), Some(2)).await {
        Err(StoreError::VersionMismatch {
            expected: 2,
            current: 3,
        }) => {}
        other => panic!("expected VersionMismatch 2/3, got {other:?}"),
    }
    match s.put_agent(&t, "s", "a", body2.clone(), Some(0)).await {
        Err(StoreError::VersionMismatch {
            expected: 0,
            current: 3,
        }) => {}
        other => panic!("expected VersionMismatch 0/3, got {other:?}"),
    }
    match s.put_agent(&t, "s", "new", body2.clone(), Some(5)).await {
        Err(StoreError::VersionMismatch {
            expected: 5,
            current: 0,
        }) => {}
        other => panic!("expected VersionMismatch 5/0, got {other:?}"),
    }
    assert_eq!(
        seq(&s, &t, "s").await,
        before,
        "a failed precondition writes nothing"
    );
    assert_eq!(s.get_agent(&t, "s", "a").await.unwrap().version, 3);
    assert_not_found(s.get_agent(&t, "s", "new").await);

    let (n, was_created) = s
        .put_agent(&t, "s", "new", body2.clone(), Some(0))
        .await
        .unwrap();
    assert!(was_created);
    assert_eq!(n.version, 1);

    // Dotted ids are fine; the agent list is sorted and carries counts.
    agent(&s, &t, "s", "v1.2").await;
    created(
        s.append_message(&t, "s", "v1.2", msg(None, "{}"))
            .await
            .unwrap(),
    );
    created(
        s.append_message(&t, "s", "v1.2", msg(None, "{}"))
            .await
            .unwrap(),
    );
    let list = s.list_agents(&t, "s").await.unwrap();
    let summary: Vec<(&str, u64, u64)> = list
        .iter()
        .map(|a| (a.agent_id.as_str(), a.version, a.message_count))
        .collect();
    assert_eq!(summary, [("a", 3, 0), ("new", 1, 0), ("v1.2", 1, 2)]);
    let (v, _) = s
        .put_agent(&t, "s", "v1.2", obj(json!({})), Some(1))
        .await
        .unwrap();
    assert_eq!(
        (v.version, v.message_count),
        (2, 2),
        "a put keeps the message count"
    );
    assert_not_found(s.get_agent(&t, "s", "v1").await);

    let events = s.events_after(&t, "s", 1, 3).await.unwrap();
    assert_eq!(events[0].kind, EventType::AgentUpdated);
    assert_eq!(
        events[0].payload,
        json!({"agent_id": "a", "version": 1, "created": true})
    );
    assert_eq!(
        events[1].payload,
        json!({"agent_id": "a", "version": 2, "created": false})
    );
}

async fn append_assigns_sequential_ids(s: Store) {
    let t = tenant("t");
    assert_not_found(s.append_message(&t, "nope", "a", msg(None, "{}")).await);
    create(&s, &t, "s").await;
    assert_not_found(s.append_message(&t, "s", "a", msg(None, "{}")).await);
    assert_not_found(s.append_message(&t, "s", "a", msg(Some(0), "{}")).await);
    agent(&s, &t, "s", "a").await;
    agent(&s, &t, "s", "b").await;

    let m0 = created(
        s.append_message(&t, "s", "a", msg(None, r#"{"n":0}"#))
            .await
            .unwrap(),
    );
    assert_eq!(m0.message_id, 0);
    assert_eq!(m0.created_at, m0.updated_at);
    let m1 = created(
        s.append_message(&t, "s", "a", msg(Some(1), r#"{"n":1}"#))
            .await
            .unwrap(),
    );
    assert_eq!(m1.message_id, 1);
    let m2 = created(
        s.append_message(&t, "s", "a", msg(None, r#"{"n":2}"#))
            .await
            .unwrap(),
    );
    assert_eq!(m2.message_id, 2);
    let m3 = created(
        s.append_message(&t, "s", "a", msg(Some(3), r#"{"n":3}"#))
            .await
            .unwrap(),
    );
    assert_eq!(m3.message_id, 3);
    // Each agent has its own sequence.
    let b0 = created(
        s.append_message(&t, "s", "b", msg(Some(0), r#"{"b":0}"#))
            .await
            .unwrap(),
    );
    assert_eq!(b0.message_id, 0);
    assert_eq!(s.get_agent(&t, "s", "a").await.unwrap().message_count, 4);
    assert_eq!(s.get_agent(&t, "s", "b").await.unwrap().message_count, 1);
    assert_eq!(
        s.get_agent(&t, "s", "a").await.unwrap().version,
        1,
        "appends keep the version"
    );

    let events = s.events_after(&t, "s", 3, 1).await.unwrap();
    assert_eq!(events[0].kind, EventType::MessageAppended);
    assert_eq!(events[0].payload, json!({"agent_id": "a", "message_id": 0}));
}

async fn append_retry_conflict_and_gap(s: Store) {
    let t = tenant("t");
    create(&s, &t, "s").await;
    agent(&s, &t, "s", "a").await;
    let first = input(
        r#"{"message_id":0,"message":{"role":"user","content":[{"text":"hi"}]},"redact_message":null,"event_loop_metrics":{"latencyMs":12}}"#,
    );
    let stored = created(s.append_message(&t, "s", "a", first).await.unwrap());
    let before = seq(&s, &t, "s").await;

    // The same content, differently spaced, with ignored timestamps: a retry.
    let retry = input(
        r#"{"message_id":0,"message":{ "role": "user", "content": [ {"text": "hi"} ] },"event_loop_metrics":{"latencyMs":12},"created_at":"2020-01-01T00:00:00Z"}"#,
    );
    match s.append_message(&t, "s", "a", retry).await.unwrap() {
        Appended::Existing(m) => {
            assert_eq!(m, stored);
            assert_eq!(
                m.message.get(),
                stored.message.get(),
                "the stored bytes are returned"
            );
            assert_eq!(m.created_at, stored.created_at);
        }
        Appended::Created(m) => panic!("a retry created message {}", m.message_id),
    }
    assert_eq!(seq(&s, &t, "s").await, before, "a retry writes nothing");
    assert_eq!(s.get_agent(&t, "s", "a").await.unwrap().message_count, 1);

    let other = input(r#"{"message_id":0,"message":{"role":"user","content":[{"text":"bye"}]}}"#);
    assert_conflict(
        s.append_message(&t, "s", "a", other).await,
        "message_conflict",
    );
    let other_metrics = input(
        r#"{"message_id":0,"message":{"role":"user","content":[{"text":"hi"}]},"event_loop_metrics":{"latencyMs":13}}"#,
    );
    assert_conflict(
        s.append_message(&t, "s", "a", other_metrics).await,
        "message_conflict",
    );
    assert_conflict(
        s.append_message(&t, "s", "a", msg(Some(2), "{}")).await,
        "message_id_gap",
    );
    assert_conflict(
        s.append_message(&t, "s", "a", msg(Some(99), "{}")).await,
        "message_id_gap",
    );
    assert_eq!(
        seq(&s, &t, "s").await,
        before,
        "refused appends write nothing"
    );
    assert_eq!(s.get_agent(&t, "s", "a").await.unwrap().message_count, 1);

    // The next id still works after all that.
    let next = created(
        s.append_message(&t, "s", "a", msg(Some(1), "{}"))
            .await
            .unwrap(),
    );
    assert_eq!(next.message_id, 1);
}

async fn message_round_trips_byte_for_byte(s: Store) {
    let t = tenant("t");
    create(&s, &t, "s").await;
    agent(&s, &t, "s", "a").await;
    let message = "{ \"role\" :\"assistant\" ,\n\t\"content\":[ {\"text\":\"h\u{e9}llo \\u00e9 \u{2014} \u{1F600} \\\"q\\\" \\n\"} ],\
                   \"n\": 1.0, \"big\": 12345678901234567890, \"neg\": -0.0, \"exp\": 1E+2,\
                   \"deep\": {\"z\": 1, \"a\": [ ] , \"m\": {}} }";
    let redact = "[ \"redacted\" ,  1.50 ]";
    let text = format!(
        r#"{{"message_id":0,"message":{message},"redact_message":{redact},"event_loop_metrics":{{"latencyMs":1.5,"inputTokens":12345678901234567890}}}}"#
    );
    let m = created(s.append_message(&t, "s", "a", input(&text)).await.unwrap());
    assert_eq!(m.message.get(), message);
    assert_eq!(m.redact_message.as_ref().unwrap().get(), redact);

    let got = s.get_message(&t, "s", "a", 0).await.unwrap();
    assert_eq!(got.message.get(), message);
    assert_eq!(got.redact_message.as_ref().unwrap().get(), redact);
    assert_eq!(
        got.event_loop_metrics,
        Some(json!({"latencyMs": 1.5, "inputTokens": 12345678901234567890u64}))
    );
    assert_eq!(got.created_at, m.created_at);
    let (listed, _) = s
        .list_messages(&t, "s", "a", MessageRange::Latest(1))
        .await
        .unwrap();
    assert_eq!(listed[0].message.get(), message);
    // An exact re-send is an idempotent retry.
    assert!(matches!(
        s.append_message(&t, "s", "a", input(&text)).await.unwrap(),
        Appended::Existing(_)
    ));
    // A null redaction is stored as absent.
    let plain = created(
        s.append_message(
            &t,
            "s",
            "a",
            input(r#"{"message":"just text","redact_message":null,"event_loop_metrics":null}"#),
        )
        .await
        .unwrap(),
    );
    let plain = s.get_message(&t, "s", "a", plain.message_id).await.unwrap();
    assert_eq!(plain.message.get(), r#""just text""#);
    assert!(plain.redact_message.is_none());
    assert!(plain.event_loop_metrics.is_none());
}

async fn list_messages_ranges(s: Store) {
    let t = tenant("t");
    create(&s, &t, "s").await;
    assert_not_found(s.list_messages(&t, "s", "a", MessageRange::Latest(3)).await);
    assert_not_found(
        s.list_messages(&t, "nope", "a", MessageRange::Latest(3))
            .await,
    );
    agent(&s, &t, "s", "a").await;
    agent(&s, &t, "s", "other").await;
    for i in 0..10 {
        created(
            s.append_message(&t, "s", "a", msg(None, &format!(r#"{{"i":{i}}}"#)))
                .await
                .unwrap(),
        );
    }
    created(
        s.append_message(&t, "s", "other", msg(None, "{}"))
            .await
            .unwrap(),
    );

    let range = |r: MessageRange| {
        let s = s.clone();
        let t = t.clone();
        async move {
            let (msgs, total) = s.list_messages(&t, "s", "a", r).await.unwrap();
            for m in &msgs {
                assert_eq!(m.message.get(), format!(r#"{{"i":{}}}"#, m.message_id));
            }
            (
                msgs.iter().map(|m| m.message_id).collect::<Vec<u64>>(),
                total,
            )
        }
    };
    let page = |limit, offset| MessageRange::Page { limit, offset };
    assert_eq!(range(page(3, 0)).await, (vec![0, 1, 2], 10));
    assert_eq!(range(page(3, 4)).await, (vec![4, 5, 6], 10));
    assert_eq!(range(page(3, 8)).await, (vec![8, 9], 10));
    assert_eq!(range(page(3, 10)).await, (vec![], 10));
    assert_eq!(range(page(3, 50)).await, (vec![], 10));
    assert_eq!(range(page(0, 0)).await, (vec![], 10));
    assert_eq!(range(page(100, 0)).await, ((0..10).collect(), 10));
    assert_eq!(range(page(u64::MAX, 9)).await, (vec![9], 10));
    assert_eq!(range(MessageRange::Latest(3)).await, (vec![7, 8, 9], 10));
    assert_eq!(range(MessageRange::Latest(1)).await, (vec![9], 10));
    assert_eq!(range(MessageRange::Latest(0)).await, (vec![], 10));
    assert_eq!(
        range(MessageRange::Latest(50)).await,
        ((0..10).collect(), 10)
    );
    let (_, other_total) = s
        .list_messages(&t, "s", "other", MessageRange::Latest(5))
        .await
        .unwrap();
    assert_eq!(other_total, 1);
}

async fn get_and_update_messages(s: Store) {
    let t = tenant("t");
    create(&s, &t, "s").await;
    agent(&s, &t, "s", "a").await;
    let m0 = created(
        s.append_message(
            &t,
            "s",
            "a",
            input(r#"{"message":{"v":0},"redact_message":{"v":"***"},"event_loop_metrics":{"latencyMs":5}}"#),
        )
        .await
        .unwrap(),
    );
    assert_eq!(s.get_message(&t, "s", "a", 0).await.unwrap(), m0);
    assert_not_found(s.get_message(&t, "s", "a", 1).await);
    assert_not_found(s.get_message(&t, "s", "b", 0).await);
    assert_not_found(s.get_message(&t, "nope", "a", 0).await);

    tokio::time::sleep(Duration::from_millis(3)).await;
    let before = seq(&s, &t, "s").await;
    let p1 = s
        .update_message(&t, "s", "a", 0, patch(r#"{"message":{ "v" : 1 }}"#))
        .await
        .unwrap();
    assert_eq!(p1.message.get(), r#"{ "v" : 1 }"#);
    assert_eq!(
        p1.redact_message.as_ref().unwrap().get(),
        r#"{"v":"***"}"#,
        "untouched fields stay"
    );
    assert_eq!(p1.event_loop_metrics, Some(json!({"latencyMs": 5})));
    assert_eq!(p1.created_at, m0.created_at);
    assert!(parse_rfc3339_ms(&p1.updated_at) > parse_rfc3339_ms(&m0.updated_at));
    assert_eq!(seq(&s, &t, "s").await, before + 1);
    let ev = s.events_after(&t, "s", before, 1).await.unwrap();
    assert_eq!(ev[0].kind, EventType::MessageUpdated);
    // The log keeps ids only, never message text (redactions must not leave copies).
    assert_eq!(ev[0].payload, json!({"agent_id": "a", "message_id": 0}));

    let p2 = s
        .update_message(
            &t,
            "s",
            "a",
            0,
            patch(r#"{"redact_message":null,"event_loop_metrics":{"latencyMs":9}}"#),
        )
        .await
        .unwrap();
    assert!(p2.redact_message.is_none());
    assert_eq!(p2.event_loop_metrics, Some(json!({"latencyMs": 9})));
    assert_eq!(p2.message.get(), r#"{ "v" : 1 }"#);
    let full = s
        .update_message(
            &t,
            "s",
            "a",
            0,
            patch(r#"{"message":[2],"redact_message":"r","event_loop_metrics":null}"#),
        )
        .await
        .unwrap();
    assert_eq!(full.message.get(), "[2]");
    assert_eq!(full.redact_message.as_ref().unwrap().get(), r#""r""#);
    assert!(full.event_loop_metrics.is_none());
    assert_eq!(s.get_message(&t, "s", "a", 0).await.unwrap(), full);
    assert_eq!(s.get_agent(&t, "s", "a").await.unwrap().message_count, 1);

    let before = seq(&s, &t, "s").await;
    assert_not_found(
        s.update_message(&t, "s", "a", 1, patch(r#"{"message":1}"#))
            .await,
    );
    assert_not_found(
        s.update_message(&t, "s", "b", 0, patch(r#"{"message":1}"#))
            .await,
    );
    assert_not_found(
        s.update_message(&t, "nope", "a", 0, patch(r#"{"message":1}"#))
            .await,
    );
    assert_eq!(
        seq(&s, &t, "s").await,
        before,
        "failed updates write nothing"
    );
    assert_eq!(s.get_message(&t, "s", "a", 0).await.unwrap(), full);
}

async fn concurrent_appends_get_contiguous_ids(s: Store) {
    let t = tenant("t");
    create(&s, &t, "s").await;
    agent(&s, &t, "s", "a").await;
    let mut tasks = Vec::new();
    for w in 0..2u64 {
        let s = s.clone();
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..50u64 {
                let m = created(
                    s.append_message(&t, "s", "a", msg(None, &format!(r#"{{"w":{w},"i":{i}}}"#)))
                        .await
                        .expect("concurrent append"),
                );
                got.push(m.message_id);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let got = task.await.unwrap();
        assert!(
            got.windows(2).all(|p| p[0] < p[1]),
            "each writer sees increasing ids"
        );
        all.extend(got);
    }
    all.sort_unstable();
    assert_eq!(all, (0..100).collect::<Vec<u64>>());
    assert_eq!(s.get_agent(&t, "s", "a").await.unwrap().message_count, 100);
    let (msgs, total) = s
        .list_messages(
            &t,
            "s",
            "a",
            MessageRange::Page {
                limit: 1000,
                offset: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(total, 100);
    assert_eq!(
        msgs.iter().map(|m| m.message_id).collect::<Vec<_>>(),
        (0..100).collect::<Vec<u64>>()
    );
    // Per writer, message order follows append order.
    for w in 0..2 {
        let is: Vec<i64> = msgs
            .iter()
            .map(|m| serde_json::from_str::<Value>(m.message.get()).unwrap())
            .filter(|v| v["w"] == w)
            .map(|v| v["i"].as_i64().unwrap())
            .collect();
        assert_eq!(is, (0..50).collect::<Vec<i64>>());
    }
    assert_eq!(seq(&s, &t, "s").await, 102, "one event per append");
    let events = s.events_after(&t, "s", 0, 1000).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=102).collect::<Vec<u64>>()
    );
}

async fn metadata_set_unset_and_changed(s: Store) {
    let t = tenant("t");
    assert_not_found(
        s.change_metadata(
            &t,
            "nope",
            &MetadataChange::Update(vec![("a".into(), json!(1))]),
        )
        .await,
    );
    assert_not_found(s.get_metadata(&t, "nope").await);
    s.create_session(
        &t,
        new_session(Some("s"), None, json!({"status": "new", "keep": 1})),
    )
    .await
    .unwrap();

    let change = MetadataChange::Update(vec![
        ("status".into(), json!("active")),
        ("profile.tier".into(), json!("gold")),
        ("keep".into(), json!(1)),
    ]);
    let r = s.change_metadata(&t, "s", &change).await.unwrap();
    let want = json!({"status": "active", "keep": 1, "profile": {"tier": "gold"}});
    assert_eq!(Value::Object(r.metadata.clone()), want);
    assert_eq!(r.changed, ["status", "profile.tier"]);
    assert_eq!(r.seq, 2);
    // The write says which session type it wrote to (the get-hooks that show
    // the result need it), default or given.
    assert_eq!(r.session_type, "AGENT");
    s.create_session(&t, new_session(Some("typed"), Some("CHAT"), json!({})))
        .await
        .unwrap();
    let typed = s.change_metadata(&t, "typed", &change).await.unwrap();
    assert_eq!(typed.session_type, "CHAT");
    let stored = s.get_metadata(&t, "s").await.unwrap();
    assert_eq!(stored, r.metadata);
    assert_eq!(
        stored.keys().collect::<Vec<_>>(),
        ["status", "keep", "profile"]
    );
    assert_eq!(s.get_session(&t, "s").await.unwrap().metadata, r.metadata);
    let ev = s.events_after(&t, "s", 1, 1).await.unwrap();
    assert_eq!(ev[0].kind, EventType::MetadataUpdated);
    assert_eq!(ev[0].seq, 2);
    assert_eq!(
        ev[0].payload,
        json!({
            "action": "update",
            "change": {"status": "active", "profile.tier": "gold", "keep": 1},
            "changed": ["status", "profile.tier"],
            "values": {"status": "active", "profile.tier": "gold"},
        })
    );

    // Nested creation under an existing object keeps its siblings.
    let r = s
        .change_metadata(
            &t,
            "s",
            &MetadataChange::Update(vec![(
                "profile.limits.max".into(),
                json!({"n": [1, {"x": null}]}),
            )]),
        )
        .await
        .unwrap();
    assert_eq!(
        Value::Object(r.metadata),
        json!({"status": "active", "keep": 1, "profile": {"tier": "gold", "limits": {"max": {"n": [1, {"x": null}]}}}})
    );
    assert_eq!(r.changed, ["profile.limits.max"]);

    // Setting the same value changes nothing but is still recorded.
    let r = s
        .change_metadata(
            &t,
            "s",
            &MetadataChange::Update(vec![("keep".into(), json!(1))]),
        )
        .await
        .unwrap();
    assert!(r.changed.is_empty());
    assert_eq!(r.seq, 4);

    let del = MetadataChange::Delete(vec![
        "profile.tier".into(),
        "missing".into(),
        "keep.x".into(),
    ]);
    let r = s.change_metadata(&t, "s", &del).await.unwrap();
    assert_eq!(r.changed, ["profile.tier"]);
    assert_eq!(
        Value::Object(r.metadata.clone()),
        json!({"status": "active", "keep": 1, "profile": {"limits": {"max": {"n": [1, {"x": null}]}}}})
    );
    assert_eq!(s.get_metadata(&t, "s").await.unwrap(), r.metadata);
    let ev = s.events_after(&t, "s", 4, 1).await.unwrap();
    assert_eq!(ev[0].kind, EventType::MetadataDeleted);
    assert_eq!(
        ev[0].payload,
        json!({
            "action": "delete",
            "change": ["profile.tier", "missing", "keep.x"],
            "changed": ["profile.tier"],
            "values": {"profile.tier": null},
        })
    );
    let r = s
        .change_metadata(
            &t,
            "s",
            &MetadataChange::Delete(vec!["profile".into(), "status".into()]),
        )
        .await
        .unwrap();
    assert_eq!(Value::Object(r.metadata), json!({"keep": 1}));
    assert!(
        s.get_session(&t, "s").await.unwrap().updated_at
            >= s.get_session(&t, "s").await.unwrap().created_at
    );
}

async fn metadata_path_conflicts(s: Store) {
    let t = tenant("t");
    s.create_session(
        &t,
        new_session(
            Some("s"),
            None,
            json!({"status": "x", "tags": ["a"], "o": {"n": 1}}),
        ),
    )
    .await
    .unwrap();
    let before = seq(&s, &t, "s").await;
    let msg = assert_invalid(
        s.change_metadata(
            &t,
            "s",
            &MetadataChange::Update(vec![("status.x".into(), json!(1))]),
        )
        .await,
        "metadata_path_conflict",
    );
    assert_eq!(msg, r#"cannot set "status.x": "status" is not an object"#);
    let msg = assert_invalid(
        s.change_metadata(
            &t,
            "s",
            &MetadataChange::Update(vec![
                ("ok".into(), json!(1)),
                ("o.n.deeper".into(), json!(2)),
            ]),
        )
        .await,
        "metadata_path_conflict",
    );
    assert_eq!(msg, r#"cannot set "o.n.deeper": "o.n" is not an object"#);
    let msg = assert_invalid(
        s.change_metadata(
            &t,
            "s",
            &MetadataChange::Update(vec![("tags.0".into(), json!("b"))]),
        )
        .await,
        "metadata_path_conflict",
    );
    assert_eq!(msg, r#"cannot set "tags.0": "tags" is not an object"#);
    assert_eq!(
        seq(&s, &t, "s").await,
        before,
        "a refused change writes nothing"
    );
    assert_eq!(
        Value::Object(s.get_metadata(&t, "s").await.unwrap()),
        json!({"status": "x", "tags": ["a"], "o": {"n": 1}})
    );
    // Removing through a scalar or an array is not an error: there is nothing
    // to remove (array elements are not addressable).
    s.change_metadata(
        &t,
        "s",
        &MetadataChange::Update(vec![("list".into(), json!([{"x": 1}, 2]))]),
    )
    .await
    .unwrap();
    let r = s
        .change_metadata(
            &t,
            "s",
            &MetadataChange::Delete(vec!["status.x".into(), "tags.0".into(), "list.0.x".into()]),
        )
        .await
        .unwrap();
    assert!(r.changed.is_empty());
    let want = json!({"status": "x", "tags": ["a"], "o": {"n": 1}, "list": [{"x": 1}, 2]});
    assert_eq!(Value::Object(r.metadata), want);
    assert_eq!(Value::Object(s.get_metadata(&t, "s").await.unwrap()), want);
}

async fn metadata_numbers_round_trip(s: Store) {
    let t = tenant("t");
    let meta = json!({
        "int": 42, "neg": -7, "float": 1.5, "whole_float": 1.0, "big": 12345678901234567890u64,
        "min": i64::MIN, "str": "1", "bool": false, "null": null, "arr": [1, 1.0, "1"],
    });
    s.create_session(&t, new_session(Some("s"), None, meta.clone()))
        .await
        .unwrap();
    let got = s.get_metadata(&t, "s").await.unwrap();
    assert_eq!(Value::Object(got.clone()), meta);
    assert_eq!(
        serde_json::to_string(&got).unwrap(),
        serde_json::to_string(&meta).unwrap(),
        "numbers keep their JSON form"
    );
    let r = s
        .change_metadata(
            &t,
            "s",
            &MetadataChange::Update(vec![("big".into(), json!(u64::MAX))]),
        )
        .await
        .unwrap();
    assert_eq!(r.changed, ["big"]);
    assert_eq!(
        s.get_metadata(&t, "s").await.unwrap()["big"],
        json!(u64::MAX)
    );
    let q = ListQuery {
        limit: 10,
        metadata: vec![
            ("big".into(), json!(u64::MAX)),
            ("whole_float".into(), json!(1.0)),
        ],
        ..ListQuery::default()
    };
    assert_eq!(ids(&s.list_sessions(&t, &q).await.unwrap().sessions), ["s"]);
}

async fn feedbacks_in_order(s: Store) {
    let t = tenant("t");
    assert_not_found(
        s.add_feedback(&t, "nope", obj(json!({"rating": "up"})))
            .await,
    );
    assert_not_found(s.list_feedbacks(&t, "nope").await);
    create(&s, &t, "s").await;
    assert!(s.list_feedbacks(&t, "s").await.unwrap().is_empty());
    let bodies = [
        json!({"rating": "up", "comment": "first"}),
        json!({"rating": "down"}),
        json!({"rating": null, "extra": {"k": [1, 2]}, "comment": "third"}),
    ];
    let mut added = Vec::new();
    for b in &bodies {
        let f = s.add_feedback(&t, "s", obj(b.clone())).await.unwrap();
        let stamp = f.body["created_at"].as_str().expect("created_at stamped");
        assert!(parse_rfc3339_ms(stamp).is_some());
        let mut without = f.body.clone();
        without.shift_remove("created_at");
        assert_eq!(Value::Object(without), *b);
        assert_eq!(
            f.body.keys().next_back().map(String::as_str),
            Some("created_at")
        );
        added.push(f);
    }
    let listed = s.list_feedbacks(&t, "s").await.unwrap();
    assert_eq!(listed, added);
    let ev = s.events_after(&t, "s", 1, 10).await.unwrap();
    assert_eq!(ev.len(), 3);
    assert!(ev.iter().all(|e| e.kind == EventType::FeedbackAdded));
    assert_eq!(ev[0].payload, json!({"feedback": added[0].body}));
    // Feedbacks count stays per incarnation.
    s.delete_session(&t, "s").await.unwrap();
    create(&s, &t, "s").await;
    assert!(s.list_feedbacks(&t, "s").await.unwrap().is_empty());
    let f = s
        .add_feedback(&t, "s", obj(json!({"rating": "up"})))
        .await
        .unwrap();
    assert_eq!(s.list_feedbacks(&t, "s").await.unwrap(), [f]);
}

fn append_op(aid: &str, id: Option<u64>, message: &str) -> BatchWrite {
    BatchWrite::Append {
        aid: aid.to_owned(),
        input: msg(id, message),
    }
}

fn put_op(aid: &str, body: Value, if_match: Option<u64>) -> BatchWrite {
    BatchWrite::PutAgent {
        aid: aid.to_owned(),
        body: obj(body),
        if_match,
    }
}

/// `(message_id, appended)` of an append's answer, `(version, created,
/// message_count)` of a put's.
fn batch_answers(done: &[BatchWritten]) -> Vec<(u64, bool, u64)> {
    done.iter()
        .map(|w| match w {
            BatchWritten::Appended(Appended::Created(m)) => (m.message_id, true, 0),
            BatchWritten::Appended(Appended::Existing(m)) => (m.message_id, false, 0),
            BatchWritten::Agent(a, created) => (a.version, *created, a.message_count),
            BatchWritten::Message(m) => (m.message_id, false, 1),
        })
        .collect()
}

async fn event_kinds(s: &Store, t: &Tenant, sid: &str) -> Vec<(u64, EventType)> {
    s.events_after(t, sid, 0, 1000)
        .await
        .expect("events")
        .into_iter()
        .map(|e| (e.seq, e.kind))
        .collect()
}

/// Several writes of one session in one call (`POST …/batch`): each answers
/// as its own method would, in order, with one event each; a write that
/// fails stops the batch with the writes before it done and the ones after
/// it not run. On MongoDB the first batch is one job of the group commit.
async fn write_batch_runs_in_order_and_stops_at_a_failure(s: Store) {
    use EventType::{AgentUpdated, MessageAppended, MessageUpdated, SessionCreated};
    let t = tenant("t");
    create(&s, &t, "b").await;
    agent(&s, &t, "b", "a").await;
    let out = s
        .write_batch(
            &t,
            "b",
            vec![
                append_op("a", None, r#""hi""#),
                put_op("a", json!({"state": {"n": 1}}), Some(1)),
                put_op("new", json!({}), None),
                append_op("new", Some(0), r#""first""#),
                append_op("a", None, r#""again""#),
            ],
        )
        .await;
    assert!(out.failed.is_none(), "{:?}", out.failed);
    assert_eq!(
        batch_answers(&out.done),
        [
            (0, true, 0),
            (2, false, 1),
            (1, true, 0),
            (0, true, 0),
            (1, true, 0)
        ]
    );
    let a = s.get_agent(&t, "b", "a").await.unwrap();
    assert_eq!((a.version, a.message_count), (2, 2));
    assert_eq!(a.body["state"]["n"], 1);
    let new = s.get_agent(&t, "b", "new").await.unwrap();
    assert_eq!((new.version, new.message_count), (1, 1));
    let (msgs, total) = s
        .list_messages(&t, "b", "a", MessageRange::Latest(10))
        .await
        .unwrap();
    assert_eq!(total, 2);
    let texts: Vec<&str> = msgs.iter().map(|m| m.message.get()).collect();
    assert_eq!(texts, [r#""hi""#, r#""again""#]);
    let mut want = vec![
        (1, SessionCreated),
        (2, AgentUpdated),
        (3, MessageAppended),
        (4, AgentUpdated),
        (5, AgentUpdated),
        (6, MessageAppended),
        (7, MessageAppended),
    ];
    assert_eq!(event_kinds(&s, &t, "b").await, want);

    // A stale If-Match stops the batch after the append before it.
    let out = s
        .write_batch(
            &t,
            "b",
            vec![
                append_op("a", None, r#""x""#),
                put_op("a", json!({}), Some(1)),
                append_op("a", None, r#""never""#),
            ],
        )
        .await;
    assert_eq!(batch_answers(&out.done), [(2, true, 0)]);
    assert!(
        matches!(
            out.failed,
            Some(StoreError::VersionMismatch {
                expected: 1,
                current: 2
            })
        ),
        "{:?}",
        out.failed
    );
    let a = s.get_agent(&t, "b", "a").await.unwrap();
    assert_eq!((a.version, a.message_count), (2, 3));
    want.push((8, MessageAppended));
    assert_eq!(event_kinds(&s, &t, "b").await, want);

    // A retried append (same id and content) answers the stored message and
    // records nothing; an update of a message goes with the others.
    let out = s
        .write_batch(
            &t,
            "b",
            vec![
                append_op("a", Some(2), r#""x""#),
                BatchWrite::UpdateMessage {
                    aid: "a".into(),
                    mid: 0,
                    patch: patch(r#"{"message":"edited"}"#),
                },
                put_op("a", json!({}), Some(2)),
            ],
        )
        .await;
    assert!(out.failed.is_none(), "{:?}", out.failed);
    assert_eq!(
        batch_answers(&out.done),
        [(2, false, 0), (0, false, 1), (3, false, 3)]
    );
    let m = s.get_message(&t, "b", "a", 0).await.unwrap();
    assert_eq!(m.message.get(), r#""edited""#);
    want.extend([(9, MessageUpdated), (10, AgentUpdated)]);
    assert_eq!(event_kinds(&s, &t, "b").await, want);

    // Nothing is written to a session that does not exist.
    let out = s
        .write_batch(
            &t,
            "nope",
            vec![put_op("a", json!({}), None), append_op("a", None, "1")],
        )
        .await;
    assert!(out.done.is_empty());
    assert!(
        matches!(out.failed, Some(StoreError::NotFound(_))),
        "{:?}",
        out.failed
    );
    assert!(s.events_after(&t, "nope", 0, 10).await.unwrap().is_empty());
}

async fn events_after_resumes_exactly(s: Store) {
    let t = tenant("t");
    assert!(s.events_after(&t, "nope", 0, 10).await.unwrap().is_empty());
    s.create_session(&t, new_session(Some("s"), Some("CHAT"), json!({})))
        .await
        .unwrap();
    agent(&s, &t, "s", "a").await;
    created(
        s.append_message(&t, "s", "a", msg(None, "{}"))
            .await
            .unwrap(),
    );
    s.update_message(&t, "s", "a", 0, patch(r#"{"message":[]}"#))
        .await
        .unwrap();
    s.change_metadata(
        &t,
        "s",
        &MetadataChange::Update(vec![("k".into(), json!(1))]),
    )
    .await
    .unwrap();
    s.change_metadata(&t, "s", &MetadataChange::Delete(vec!["k".into()]))
        .await
        .unwrap();
    s.add_feedback(&t, "s", obj(json!({"rating": "up"})))
        .await
        .unwrap();
    agent(&s, &t, "s", "a").await;
    create(&s, &t, "other").await;

    let all = s.events_after(&t, "s", 0, 100).await.unwrap();
    let kinds: Vec<EventType> = all.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventType::SessionCreated,
            EventType::AgentUpdated,
            EventType::MessageAppended,
            EventType::MessageUpdated,
            EventType::MetadataUpdated,
            EventType::MetadataDeleted,
            EventType::FeedbackAdded,
            EventType::AgentUpdated,
        ]
    );
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<u64>>()
    );
    for e in &all {
        assert_eq!(
            (
                e.tenant.as_str(),
                e.session_id.as_str(),
                e.session_type.as_str()
            ),
            ("t", "s", "CHAT")
        );
    }
    assert!(all.windows(2).all(|p| p[0].ts <= p[1].ts));
    let updated_at = parse_rfc3339_ms(&s.get_session(&t, "s").await.unwrap().updated_at).unwrap();
    assert_eq!(all[7].ts, updated_at, "the event time is the change's time");

    assert_eq!(s.events_after(&t, "s", 3, 100).await.unwrap(), all[3..]);
    assert_eq!(s.events_after(&t, "s", 3, 2).await.unwrap(), all[3..5]);
    assert!(s.events_after(&t, "s", 8, 100).await.unwrap().is_empty());
    assert!(s.events_after(&t, "s", 0, 0).await.unwrap().is_empty());
    assert!(
        s.events_after(&t, "s", u64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.events_after(&t, "other", 0, 10).await.unwrap().len(), 1);
}

async fn events_since_and_latest_seq(s: Store) {
    let (a, b) = (tenant("a"), tenant("b"));
    assert_eq!(seq(&s, &a, "s").await, 0);
    let t0 = now_ms();
    create(&s, &a, "s").await;
    tokio::time::sleep(Duration::from_millis(3)).await;
    create(&s, &b, "s").await;
    tokio::time::sleep(Duration::from_millis(3)).await;
    agent(&s, &a, "s", "x").await;
    assert_eq!(seq(&s, &a, "s").await, 2);
    assert_eq!(seq(&s, &b, "s").await, 1);

    let since = s.events_since(t0, 100).await.unwrap();
    let got: Vec<(&str, u64)> = since.iter().map(|e| (e.tenant.as_str(), e.seq)).collect();
    assert_eq!(got, [("a", 1), ("b", 1), ("a", 2)]);
    assert_eq!(s.events_since(t0, 2).await.unwrap(), since[..2]);
    assert_eq!(
        s.events_since(since[1].ts, 100).await.unwrap(),
        since[1..],
        "since is inclusive"
    );
    assert!(
        s.events_since(now_ms() + 60_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.events_since(t0, 0).await.unwrap().is_empty());
}

/// Queues one hooked event on each of `sids`, in that order, a few
/// milliseconds apart (so each has its own commit time).
async fn queue_in_order(s: &Store, t: &Tenant, sids: &[&str]) {
    for sid in sids {
        create(s, t, sid).await;
    }
    for sid in sids {
        s.change_metadata(
            t,
            sid,
            &MetadataChange::Update(vec![("k".into(), json!(sid))]),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

/// Claims `n` events one at a time and answers their sessions.
async fn claim_one_by_one(s: &Store, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    for _ in 0..n {
        let claimed = s.claim_pending_events(now_ms(), 60_000, 1).await.unwrap();
        assert_eq!(claimed.len(), 1, "after {got:?}");
        got.push(claimed[0].session_id.clone());
    }
    got
}

/// Claims take the oldest pending event first, whatever the session ids:
/// in an order by session, the sessions that sort last would wait for as
/// long as hooks are behind on the ones before them.
async fn claims_take_the_oldest_first(s: Store) {
    let t = tenant("t");
    queue_in_order(&s, &t, &["z", "a", "m"]).await;
    assert_eq!(claim_one_by_one(&s, 3).await, ["z", "a", "m"]);
    for sid in ["z", "a", "m"] {
        s.complete_event("t", sid, 2, Vec::new()).await.unwrap();
    }
    assert!(
        s.claim_pending_events(now_ms() + 120_000, 60_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "completed events were claimed again"
    );
    let due = s.next_event_due().await.unwrap();
    assert_due(&s, due, NextDue::Nothing, "every event completed");
}

/// The backlog `/metrics` shows: how many events wait for their after-hooks
/// (claimed ones included, as their hooks have not completed) and the commit
/// time of the oldest; nothing once they are completed.
async fn hook_backlog_counts_the_queue(s: Store) {
    let t = tenant("t");
    assert_eq!(
        s.hook_backlog().await.unwrap(),
        HookBacklog::default(),
        "an empty store"
    );
    queue_in_order(&s, &t, &["z", "a", "m"]).await;
    let ts = |sid: &'static str| {
        let s = s.clone();
        let t = t.clone();
        async move { s.events_after(&t, sid, 1, 1).await.unwrap()[0].ts }
    };
    let (z, a) = (ts("z").await, ts("a").await);
    assert!(z < a, "z's event was committed first");
    let backlog = |pending, oldest_ts| HookBacklog { pending, oldest_ts };
    assert_eq!(s.hook_backlog().await.unwrap(), backlog(3, Some(z)));
    assert_eq!(claim_one_by_one(&s, 2).await, ["z", "a"]);
    assert_eq!(
        s.hook_backlog().await.unwrap(),
        backlog(3, Some(z)),
        "claimed events still wait for their hooks"
    );
    s.complete_event("t", "z", 2, Vec::new()).await.unwrap();
    assert_eq!(s.hook_backlog().await.unwrap(), backlog(2, Some(a)));
    for sid in ["a", "m"] {
        s.complete_event("t", sid, 2, Vec::new()).await.unwrap();
    }
    assert_eq!(s.hook_backlog().await.unwrap(), HookBacklog::default());
}

/// A file written before the embedded store kept its after-hook events by
/// time held them in `hook_queue`, keyed by session: on open they move over
/// and are claimed oldest first, and a lease held when the process stopped
/// is released. A queued row whose event is gone is not moved, or is dropped
/// by the claim that finds it: it would be leased again for ever, and would
/// show as the oldest event in `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_queue_of_an_older_file_is_claimed_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db.redb");
    let open = || {
        let s: Store = Arc::new(EmbeddedStore::open(&path, 64).expect("open redb"));
        s.set_after_hooked(ALL_HOOKED);
        s
    };
    let t = tenant("t");
    let s = open();
    queue_in_order(&s, &t, &["z", "a", "m"]).await;
    drop(s);
    // Rewrite the queue as an older binary kept it.
    {
        let db = redb::Database::open(&path).expect("open the file");
        let txn = db.begin_write().unwrap();
        {
            let pending_def: redb::TableDefinition<(i64, &str, u64), i64> =
                redb::TableDefinition::new("hook_pending");
            let queue_def: redb::TableDefinition<(&str, u64), i64> =
                redb::TableDefinition::new("hook_queue");
            let mut pending = txn.open_table(pending_def).unwrap();
            let mut queue = txn.open_table(queue_def).unwrap();
            let rows: Vec<(String, u64)> = pending
                .iter()
                .unwrap()
                .map(|r| {
                    let (k, _) = r.unwrap();
                    let (_, key, seq) = k.value();
                    (key.to_owned(), seq)
                })
                .collect();
            assert_eq!(rows.len(), 3, "{rows:?}");
            for (key, seq) in &rows {
                queue.insert((key.as_str(), *seq), 0).unwrap();
            }
            pending.retain(|_, _| false).unwrap();
            // Rows whose event does not exist (nothing the store writes
            // leaves one): one in the old table, one in the new, sorting
            // before every real event.
            queue.insert(("t/gone", 7), 0).unwrap();
            pending.insert((1, "t/ghost", 1), 0).unwrap();
        }
        txn.commit().unwrap();
    }
    let s = open();
    let z_ts = s.events_after(&t, "z", 1, 1).await.unwrap()[0].ts;
    assert_eq!(
        s.hook_backlog().await.unwrap(),
        HookBacklog {
            pending: 4,
            oldest_ts: Some(1)
        },
        "the old table's row without an event is not moved; the new table's is kept until a claim finds it"
    );
    assert_eq!(claim_one_by_one(&s, 3).await, ["z", "a", "m"]);
    assert_eq!(
        s.hook_backlog().await.unwrap(),
        HookBacklog {
            pending: 3,
            oldest_ts: Some(z_ts)
        },
        "the claim that found the row without an event dropped it"
    );
    drop(s);
    let s = open();
    assert_eq!(
        claim_one_by_one(&s, 3).await,
        ["z", "a", "m"],
        "leases released on open"
    );
    for sid in ["z", "a", "m"] {
        s.complete_event("t", sid, 2, Vec::new()).await.unwrap();
    }
    assert_eq!(s.next_event_due().await.unwrap(), NextDue::Nothing);
}

async fn claim_and_complete_events(s: Store) {
    let t = tenant("t");
    create(&s, &t, "s").await; // 1, not hooked
    agent(&s, &t, "s", "a").await; // 2, not hooked
    s.change_metadata(
        &t,
        "s",
        &MetadataChange::Update(vec![("k".into(), json!(1))]),
    )
    .await
    .unwrap(); // 3
    created(
        s.append_message(&t, "s", "a", msg(None, "{}"))
            .await
            .unwrap(),
    ); // 4, not hooked
    s.add_feedback(&t, "s", obj(json!({"rating": "up"})))
        .await
        .unwrap(); // 5
    s.change_metadata(&t, "s", &MetadataChange::Delete(vec!["k".into()]))
        .await
        .unwrap(); // 6

    let due = s.next_event_due().await.unwrap();
    assert_due(&s, due, NextDue::At(0), "queued events are due at once");
    let now = now_ms();
    let claimed = s.claim_pending_events(now, 10_000, 10).await.unwrap();
    let due = s.next_event_due().await.unwrap();
    assert_due(
        &s,
        due,
        NextDue::At(now + 10_000),
        "due when the lease ends",
    );
    let seqs: Vec<u64> = claimed.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        [3, 5, 6],
        "only hooked kinds are queued, oldest first"
    );
    assert_eq!(
        claimed,
        s.events_after(&t, "s", 0, 10)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| [3, 5, 6].contains(&e.seq))
            .collect::<Vec<_>>()
    );
    assert!(
        s.claim_pending_events(now, 10_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "leased"
    );
    assert!(
        s.claim_pending_events(now + 9_999, 10_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "still leased"
    );
    let again = s
        .claim_pending_events(now + 10_000, 10_000, 2)
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [3, 5],
        "an expired lease is claimable"
    );
    let rest = s
        .claim_pending_events(now + 10_000, 10_000, 10)
        .await
        .unwrap();
    assert_eq!(rest.iter().map(|e| e.seq).collect::<Vec<_>>(), [6]);

    s.complete_event(
        "t",
        "s",
        3,
        vec![outbox_item("n1", 1, "p1"), outbox_item("n2", 2, "p2")],
    )
    .await
    .unwrap();
    let later = s
        .claim_pending_events(now + 100_000, 10_000, 10)
        .await
        .unwrap();
    assert_eq!(
        later.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [5, 6],
        "completed events leave the queue"
    );
    // An item whose id exists is skipped; the others are queued.
    s.complete_event(
        "t",
        "s",
        5,
        vec![outbox_item("n1", 5, "changed"), outbox_item("n3", 3, "p3")],
    )
    .await
    .unwrap();
    s.complete_event("t", "s", 6, Vec::new()).await.unwrap();
    // Completing again (a re-run) is harmless.
    s.complete_event("t", "s", 6, vec![outbox_item("n3", 3, "p3")])
        .await
        .unwrap();
    assert!(
        s.claim_pending_events(now + 1_000_000, 10_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let items = s.list_outbox(None, 10).await.unwrap();
    let got: Vec<(&str, &str)> = items
        .iter()
        .map(|i| (i.id.as_str(), i.payload.as_str()))
        .collect();
    assert_eq!(got, [("n1", "p1"), ("n2", "p2"), ("n3", "p3")]);
    assert_eq!(items[0], outbox_item("n1", 1, "p1"), "stored as given");
    assert_eq!(s.outbox_counts().await.unwrap(), (3, 0));
    let due = s.next_event_due().await.unwrap();
    assert_due(&s, due, NextDue::Nothing, "every event completed");

    // New hooked events are queued after completion of older ones.
    s.add_feedback(&t, "s", obj(json!({}))).await.unwrap();
    let fresh = s.claim_pending_events(now_ms(), 1_000, 10).await.unwrap();
    assert_eq!(fresh.iter().map(|e| e.seq).collect::<Vec<_>>(), [7]);
}

async fn outbox_lifecycle(s: Store) {
    assert_eq!(s.outbox_counts().await.unwrap(), (0, 0));
    let due = s.next_outbox_due().await.unwrap();
    assert_due(&s, due, NextDue::Nothing, "an empty outbox");
    assert!(s.list_outbox(None, 10).await.unwrap().is_empty());
    s.complete_event(
        "t",
        "s",
        1,
        vec![
            outbox_item("n2", 2_000, "b"),
            outbox_item("n1", 1_000, "a"),
            outbox_item("n3", 3_000, "c"),
        ],
    )
    .await
    .unwrap();
    let due = s.next_outbox_due().await.unwrap();
    assert_due(&s, due, NextDue::At(1_000), "the earliest next attempt");
    let order = |items: &[OutboxItem]| items.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        order(&s.list_outbox(None, 10).await.unwrap()),
        ["n1", "n2", "n3"]
    );
    assert_eq!(order(&s.list_outbox(None, 2).await.unwrap()), ["n1", "n2"]);
    assert!(s.list_outbox(None, 0).await.unwrap().is_empty());
    assert_eq!(s.outbox_counts().await.unwrap(), (3, 0));

    // Claims lease: the same item is not handed out twice within the lease.
    let now = 10_000;
    let c1 = s.claim_outbox(now, 5_000, 2).await.unwrap();
    assert_eq!(order(&c1), ["n1", "n2"]);
    assert_eq!(
        c1[0],
        outbox_item("n1", 1_000, "a"),
        "returned as it was before the lease"
    );
    assert_eq!(
        order(&s.claim_outbox(now, 5_000, 10).await.unwrap()),
        ["n3"]
    );
    assert!(
        s.claim_outbox(now + 4_999, 5_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let leased = s.list_outbox(Some(OutboxState::Pending), 10).await.unwrap();
    assert!(leased.iter().all(|i| i.next_attempt_at == now + 5_000));
    let c2 = s.claim_outbox(now + 5_000, 5_000, 10).await.unwrap();
    assert_eq!(order(&c2), ["n1", "n2", "n3"]);
    assert!(c2.iter().all(|i| i.next_attempt_at == now + 5_000));
    // Nothing due before its time.
    assert!(s.claim_outbox(0, 5_000, 10).await.unwrap().is_empty());

    s.outbox_failed("n1", 1, 50_000, "boom", false)
        .await
        .unwrap();
    let n1 = s
        .list_outbox(Some(OutboxState::Pending), 10)
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.id == "n1")
        .unwrap();
    assert_eq!(
        (
            n1.attempts,
            n1.next_attempt_at,
            n1.last_error.as_deref(),
            n1.state
        ),
        (1, 50_000, Some("boom"), OutboxState::Pending)
    );
    s.outbox_failed("n2", 5, 0, "gave up", true).await.unwrap();
    assert_eq!(s.outbox_counts().await.unwrap(), (2, 1));
    let dead = s.list_outbox(Some(OutboxState::Dead), 10).await.unwrap();
    assert_eq!(order(&dead), ["n2"]);
    assert_eq!(
        (dead[0].attempts, dead[0].last_error.as_deref()),
        (5, Some("gave up"))
    );
    // Dead items are never claimed; n1 waits for its next attempt.
    assert_eq!(
        order(&s.claim_outbox(40_000, 5_000, 10).await.unwrap()),
        ["n3"]
    );
    let due = s.next_outbox_due().await.unwrap();
    assert_due(&s, due, NextDue::At(45_000), "n3's lease; dead n2 never");
    // Due order: n3 (lease ran out at 45 000), then n1 (50 000).
    assert_eq!(
        order(&s.claim_outbox(60_000, 100_000, 10).await.unwrap()),
        ["n3", "n1"]
    );

    let retried = s.retry_outbox("n2", 70_000).await.unwrap();
    assert_eq!(
        (retried.state, retried.attempts, retried.next_attempt_at),
        (OutboxState::Pending, 0, 70_000)
    );
    assert_eq!(retried.payload, "b");
    assert_eq!(s.outbox_counts().await.unwrap(), (3, 0));
    assert_eq!(
        order(&s.claim_outbox(70_000, 5_000, 10).await.unwrap()),
        ["n2"]
    );
    assert_not_found(s.retry_outbox("missing", 1).await);

    s.outbox_delivered("n3").await.unwrap();
    s.outbox_delivered("n3").await.unwrap();
    s.outbox_delivered("missing").await.unwrap();
    s.outbox_failed("missing", 1, 1, "x", true).await.unwrap();
    assert_eq!(order(&s.list_outbox(None, 10).await.unwrap()), ["n1", "n2"]);
    assert_eq!(s.outbox_counts().await.unwrap(), (2, 0));
    let due = s.next_outbox_due().await.unwrap();
    assert_due(&s, due, NextDue::At(75_000), "n2's lease, before n1's");
}

async fn retention_hides_and_sweeps(s: Store) {
    let t = tenant("t");
    create(&s, &t, "keep").await;
    s.create_session(&t, new_session(Some("tmp"), Some("ephemeral"), json!({})))
        .await
        .unwrap();
    agent(&s, &t, "tmp", "a").await;
    // Long enough that the checks made within the lifetime cannot race it
    // on a loaded machine; reads use the wall clock, so we poll for expiry.
    let ttl = 3_000;
    s.set_retention(Retention {
        sessions: BTreeMap::from([("ephemeral".to_owned(), ttl)]),
        default_session_ms: None,
        events_ms: None,
    });
    assert!(
        s.get_session(&t, "tmp").await.is_ok(),
        "within its lifetime"
    );
    assert_eq!(s.sweep_expired(now_ms(), 10).await.unwrap().sessions, 0);
    wait_missing(&s, &t, "tmp").await;

    // Expired reads as missing everywhere, before any sweep.
    assert_not_found(s.get_session(&t, "tmp").await);
    assert_not_found(s.get_agent(&t, "tmp", "a").await);
    assert_not_found(s.put_agent(&t, "tmp", "a", obj(json!({})), None).await);
    let listed = s
        .list_sessions(
            &t,
            &ListQuery {
                limit: 10,
                ..ListQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&listed.sessions), ["keep"]);
    let batch = s
        .batch_get_sessions(&t, &["tmp".into(), "keep".into()])
        .await
        .unwrap();
    assert_eq!(ids(&batch), ["keep"]);

    let before = seq(&s, &t, "tmp").await;
    let report = s.sweep_expired(now_ms(), 10).await.unwrap();
    assert_eq!((report.sessions, report.events), (1, 0));
    assert_eq!(seq(&s, &t, "tmp").await, before + 1);
    let ev = s.events_after(&t, "tmp", before, 10).await.unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].kind, EventType::SessionDeleted);
    assert_eq!(ev[0].payload, json!({"reason": "expired"}));
    assert_eq!(s.sweep_expired(now_ms(), 10).await.unwrap().sessions, 0);
    assert!(s.get_session(&t, "keep").await.is_ok());

    // A default lifetime covers unlisted types.
    s.set_retention(Retention {
        sessions: BTreeMap::from([("AGENT".to_owned(), 3_600_000)]),
        default_session_ms: Some(1),
        events_ms: None,
    });
    s.create_session(&t, new_session(Some("other"), Some("OTHER"), json!({})))
        .await
        .unwrap();
    wait_missing(&s, &t, "other").await;
    assert!(
        s.get_session(&t, "keep").await.is_ok(),
        "its own type's lifetime applies"
    );

    // The event window drops old events (and the tombstones whose events are gone).
    s.set_retention(Retention {
        events_ms: Some(100),
        ..Retention::default()
    });
    // An event whose after-hooks have not run yet goes with the window too.
    s.change_metadata(
        &t,
        "keep",
        &MetadataChange::Update(vec![("k".into(), json!(1))]),
    )
    .await
    .unwrap();
    // The sweep is given a "now" well past the window instead of sleeping.
    let later = now_ms() + 10_000;
    let total: usize = {
        let mut n = 0;
        for sid in ["keep", "tmp", "other"] {
            n += s.events_after(&t, sid, 0, 1000).await.unwrap().len();
        }
        n
    };
    let report = s.sweep_expired(later, 10).await.unwrap();
    assert_eq!(report.sessions, 0);
    assert_eq!(report.events, total as u64);
    for sid in ["keep", "tmp", "other"] {
        assert!(s.events_after(&t, sid, 0, 1000).await.unwrap().is_empty());
    }
    assert!(s.get_session(&t, "keep").await.is_ok());
    assert_eq!(
        seq(&s, &t, "keep").await,
        2,
        "a live session keeps its sequence"
    );
    assert!(
        s.claim_pending_events(later, 60_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "a swept event's after-hooks were claimed"
    );
    let due = s.next_event_due().await.unwrap();
    assert_due(
        &s,
        due,
        NextDue::Nothing,
        "a swept event is no longer queued",
    );
    // Not asserted: what `latest_event_seq` says for "tmp" now that its
    // tombstone has left the window. Event ids must never be reused (a client
    // may still hold one as Last-Event-ID), so it should stay at the
    // tombstone's id; today both stores drop the tombstone with its last
    // event and a re-created "tmp" would start again at 1 (see README, Event
    // stream). The store needs a per-session sequence that outlives the
    // window before this can be asserted.
}

/// Polls until `sid` reads as missing (it expires by the wall clock).
async fn wait_missing(s: &Store, t: &Tenant, sid: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while s.get_session(t, sid).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "{sid} did not expire within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The key patterns of the indexes on `sessions`, e.g. `"deleted,updated_at"`.
async fn session_index_keys(cfg: &MongoConfig) -> Vec<String> {
    use futures::TryStreamExt;
    let client = mongodb::Client::with_uri_str(&cfg.uri).await.unwrap();
    client
        .database(&cfg.database)
        .collection::<mongodb::bson::Document>("sessions")
        .list_indexes()
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.keys.keys().cloned().collect::<Vec<_>>().join(","))
        .collect()
}

/// Every write changes a session's `updated_at`, so no index on it is
/// created that the configuration does not call for: by default only the
/// partial index of tombstones (the event sweep's); the retention sweep's
/// `(session_type, updated_at)` once retention has sessions to expire;
/// `updated_at` with `index_updated_at`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_session_indexes_follow_the_configuration() {
    let Some(cfg) = mongo_config() else {
        return;
    };
    let store: Store = Arc::new(MongoStore::connect(&cfg).await.expect("connect"));
    let mut names = session_index_keys(&cfg).await;
    names.sort();
    assert_eq!(names, ["_id", "deleted,updated_at"], "by default");

    // Events only: the event sweep needs no index on live sessions.
    store.set_retention(Retention {
        events_ms: Some(1_000),
        ..Retention::default()
    });
    store.sweep_expired(now_ms(), 10).await.unwrap();
    let mut names = session_index_keys(&cfg).await;
    names.sort();
    assert_eq!(names, ["_id", "deleted,updated_at"], "with an event window");

    store.set_retention(Retention {
        sessions: BTreeMap::from([("ephemeral".to_owned(), 60_000)]),
        ..Retention::default()
    });
    store.sweep_expired(now_ms(), 10).await.unwrap();
    let names = session_index_keys(&cfg).await;
    assert!(
        names.iter().any(|k| k == "session_type,updated_at"),
        "the first sweep with sessions to expire makes the retention index: {names:?}"
    );
    drop(store);
    drop_database(&cfg).await;

    let mut cfg = cfg;
    cfg.index_updated_at = true;
    let store: Store = Arc::new(MongoStore::connect(&cfg).await.expect("connect"));
    let names = session_index_keys(&cfg).await;
    drop_database(&cfg).await;
    assert!(
        names.iter().any(|k| k == "updated_at"),
        "index_updated_at = true: {names:?}"
    );
    drop(store);
}

/// `metadata_index_fields` creates one index per field on `metadata.<field>`
/// at start-up (and listing by such a field works).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_metadata_index_fields_create_indexes() {
    let Some(mut cfg) = mongo_config() else {
        return;
    };
    cfg.metadata_index_fields = vec!["status".into(), "profile.tier".into()];
    let store: Store = Arc::new(MongoStore::connect(&cfg).await.expect("connect"));
    let names = session_index_keys(&cfg).await;
    drop_database(&cfg).await;
    for field in ["metadata.status", "metadata.profile.tier"] {
        assert!(
            names.iter().any(|k| k == field),
            "no index on {field}: {names:?}"
        );
    }
    drop(store);
}
