//! The MongoDB write paths: the group commit (one `bulkWrite` transaction for
//! the concurrent writes of many sessions, built from per-session state the
//! gateway keeps) and the one-transaction-per-write path of servers before
//! 8.0, alone and side by side on one database, as two gateways would be.
//! The group-commit gateways are asked for by name (`"group_commit"`), so
//! `MONGODB_WRITE_PATH=transaction`, which re-runs the other suites on the
//! per-write path, does not turn these into per-write tests. Needs a server
//! with `bulkWrite` at `MONGODB_URI` (skipped without it unless
//! `REQUIRE_MONGODB=1`).
#![allow(missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gateway::config::MongoConfig;
use gateway::metadata::MetadataChange;
use gateway::model::{MessageInput, MessageRange, NewSession, Tenant};
use gateway::store::mongo::MongoStore;
use gateway::store::{
    Appended, BatchWrite, BatchWritten, GroupCommitMetrics, Retention, SessionStore, StoreError,
};
use serde_json::{Value, json};

type Store = Arc<dyn SessionStore>;

fn mongo_config(write_path: &str) -> Option<MongoConfig> {
    let uri = common::mongo_uri()?;
    Some(MongoConfig {
        uri,
        database: format!("write_path_{}", uuid::Uuid::new_v4().simple()),
        server_selection_timeout_ms: 5_000,
        write_path: write_path.into(),
        ..MongoConfig::default()
    })
}

async fn connect(cfg: &MongoConfig, write_path: &str) -> Store {
    let cfg = MongoConfig {
        write_path: write_path.into(),
        ..cfg.clone()
    };
    Arc::new(MongoStore::connect(&cfg).await.expect("connect"))
}

async fn drop_database(cfg: &MongoConfig) {
    if let Ok(client) = mongodb::Client::with_uri_str(&cfg.uri).await {
        let _ = client.database(&cfg.database).drop().await;
    }
}

/// Runs `case` on a fresh database, dropping it afterwards even on failure.
async fn with_db<F, Fut>(case: F)
where
    F: FnOnce(MongoConfig) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Some(cfg) = mongo_config("auto") else {
        return;
    };
    let res = tokio::spawn(case(cfg.clone())).await;
    drop_database(&cfg).await;
    if let Err(e) = res {
        std::panic::resume_unwind(e.into_panic());
    }
}

fn t() -> Tenant {
    Tenant("t".into())
}

fn obj(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().expect("object").clone()
}

fn msg(id: Option<u64>, body: &str) -> MessageInput {
    let id = id.map_or_else(|| "null".to_owned(), |i| i.to_string());
    serde_json::from_str(&format!(r#"{{"message_id":{id},"message":{body}}}"#)).expect("input")
}

async fn create(s: &Store, sid: &str) {
    let new: NewSession = serde_json::from_value(json!({ "session_id": sid })).unwrap();
    s.create_session(&t(), new).await.expect("create");
}

async fn all_ids(s: &Store, sid: &str, aid: &str) -> (Vec<u64>, u64) {
    let (msgs, total) = s
        .list_messages(
            &t(),
            sid,
            aid,
            MessageRange::Page {
                limit: 10_000,
                offset: 0,
            },
        )
        .await
        .expect("list");
    (msgs.iter().map(|m| m.message_id).collect(), total)
}

async fn event_seqs(s: &Store, sid: &str) -> Vec<u64> {
    s.events_after(&t(), sid, 0, 10_000)
        .await
        .expect("events")
        .iter()
        .map(|e| e.seq)
        .collect()
}

/// Two gateways on one database — one group-committing, one writing a
/// transaction per write — append to one agent concurrently: every id is
/// used once, densely, and every append has exactly one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_and_per_write_gateways_append_to_one_agent() {
    with_db(|cfg| async move {
        let g1 = connect(&cfg, "group_commit").await;
        let g2 = connect(&cfg, "transaction").await;
        let g3 = connect(&cfg, "group_commit").await;
        create(&g1, "s").await;
        g2.put_agent(&t(), "s", "a", obj(json!({})), None)
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for (w, store) in [&g1, &g2, &g3, &g1, &g3].into_iter().enumerate() {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..20 {
                    let input = msg(None, &format!(r#"{{"w":{w},"i":{i}}}"#));
                    match store.append_message(&t(), "s", "a", input).await {
                        Ok(Appended::Created(_)) => {}
                        other => panic!("append: {other:?}"),
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let (ids, total) = all_ids(&g3, "s", "a").await;
        assert_eq!(total, 100);
        assert_eq!(ids, (0..100).collect::<Vec<u64>>());
        assert_eq!(event_seqs(&g2, "s").await, (1..=102).collect::<Vec<u64>>());
        // Explicit ids across gateways: the next one is accepted wherever it
        // is sent, a repeat is an idempotent retry, a skip is a gap.
        let a = g1.append_message(&t(), "s", "a", msg(Some(100), "1")).await;
        assert!(matches!(a, Ok(Appended::Created(_))), "{a:?}");
        let a = g3.append_message(&t(), "s", "a", msg(Some(100), "1")).await;
        assert!(matches!(a, Ok(Appended::Existing(_))), "{a:?}");
        let a = g3.append_message(&t(), "s", "a", msg(Some(101), "2")).await;
        assert!(matches!(a, Ok(Appended::Created(_))), "{a:?}");
        let a = g1.append_message(&t(), "s", "a", msg(Some(101), "3")).await;
        assert!(
            matches!(
                a,
                Err(StoreError::Conflict {
                    code: "message_conflict",
                    ..
                })
            ),
            "{a:?}"
        );
        let a = g1.append_message(&t(), "s", "a", msg(Some(103), "3")).await;
        assert!(
            matches!(
                a,
                Err(StoreError::Conflict {
                    code: "message_id_gap",
                    ..
                })
            ),
            "{a:?}"
        );
        assert_eq!(event_seqs(&g1, "s").await, (1..=104).collect::<Vec<u64>>());
    })
    .await;
}

/// What a gateway keeps of a session goes stale when another gateway writes
/// it; the next write notices (its filter names the old `seq`) and answers
/// from the stored state: metadata, `If-Match` and feedbacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_state_is_checked_against_other_gateways_writes() {
    with_db(|cfg| async move {
        let g1 = connect(&cfg, "group_commit").await;
        let g2 = connect(&cfg, "group_commit").await;
        create(&g1, "s").await;
        let set = |k: &str, v: i64| MetadataChange::Update(vec![(k.to_owned(), json!(v))]);
        let r = g1.change_metadata(&t(), "s", &set("x", 1)).await.unwrap();
        assert_eq!(r.seq, 2);
        let r = g2.change_metadata(&t(), "s", &set("y", 2)).await.unwrap();
        assert_eq!(r.seq, 3);
        let r = g1.change_metadata(&t(), "s", &set("z", 3)).await.unwrap();
        assert_eq!(r.seq, 4);
        assert_eq!(
            Value::Object(r.metadata),
            json!({ "x": 1, "y": 2, "z": 3 }),
            "built on the other gateway's change"
        );
        assert_eq!(r.changed, vec!["z".to_owned()]);
        let del = MetadataChange::Delete(vec!["y".into()]);
        let r = g2.change_metadata(&t(), "s", &del).await.unwrap();
        assert_eq!(Value::Object(r.metadata), json!({ "x": 1, "z": 3 }));
        let r = g1.change_metadata(&t(), "s", &set("x", 1)).await.unwrap();
        assert!(r.changed.is_empty(), "x was already 1");
        assert_eq!(Value::Object(r.metadata), json!({ "x": 1, "z": 3 }));

        // Agent versions.
        let (a, created) = g1
            .put_agent(&t(), "s", "a", obj(json!({"v": 1})), Some(0))
            .await
            .unwrap();
        assert_eq!((a.version, created), (1, true));
        let (a, _) = g2
            .put_agent(&t(), "s", "a", obj(json!({"v": 2})), Some(1))
            .await
            .unwrap();
        assert_eq!(a.version, 2);
        let stale = g1
            .put_agent(&t(), "s", "a", obj(json!({"v": 3})), Some(1))
            .await;
        assert_eq!(
            stale.unwrap_err(),
            StoreError::VersionMismatch {
                expected: 1,
                current: 2
            }
        );
        let (a, created) = g1
            .put_agent(&t(), "s", "a", obj(json!({"v": 3})), Some(2))
            .await
            .unwrap();
        assert_eq!((a.version, created), (3, false));
        let again = g2
            .put_agent(&t(), "s", "a", obj(json!({"v": 4})), Some(0))
            .await;
        assert!(
            matches!(again, Err(StoreError::VersionMismatch { .. })),
            "{again:?}"
        );
        let stored = g2.get_agent(&t(), "s", "a").await.unwrap();
        assert_eq!(Value::Object(stored.body), json!({"v": 3}));
        assert_eq!(stored.created_at, a.created_at);

        // Feedbacks, alternating.
        for (i, g) in [&g1, &g2, &g1, &g2].into_iter().enumerate() {
            g.add_feedback(&t(), "s", obj(json!({ "i": i })))
                .await
                .unwrap();
        }
        let fb = g1.list_feedbacks(&t(), "s").await.unwrap();
        let order: Vec<Value> = fb.iter().map(|f| f.body["i"].clone()).collect();
        assert_eq!(order, vec![json!(0), json!(1), json!(2), json!(3)]);

        // A session deleted and re-created elsewhere is not written through
        // what was kept of its first incarnation.
        g2.delete_session(&t(), "s").await.unwrap();
        let gone = g1.add_feedback(&t(), "s", obj(json!({}))).await;
        assert!(matches!(gone, Err(StoreError::NotFound(_))), "{gone:?}");
        create(&g2, "s").await;
        let missing = g1.append_message(&t(), "s", "a", msg(None, "1")).await;
        assert!(
            matches!(missing, Err(StoreError::NotFound(_))),
            "{missing:?}"
        );
        let seqs = event_seqs(&g1, "s").await;
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<u64>>());
    })
    .await;
}

/// Many sessions written at once are committed together; a refused write in
/// the same batch (a session id that exists) fails alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sessions_are_committed_together_and_fail_alone() {
    with_db(|cfg| async move {
        let g = connect(&cfg, "group_commit").await;
        create(&g, "taken").await;
        let mut tasks = Vec::new();
        for w in 0..48 {
            let g = g.clone();
            tasks.push(tokio::spawn(async move {
                let sid = if w % 8 == 0 {
                    "taken".to_owned()
                } else {
                    format!("s{w}")
                };
                let new: NewSession = serde_json::from_value(json!({ "session_id": sid })).unwrap();
                match g.create_session(&t(), new).await {
                    Err(StoreError::Conflict { code, .. }) => {
                        assert_eq!(code, "session_exists");
                        return;
                    }
                    Err(e) => panic!("create {sid}: {e:?}"),
                    Ok(_) => {}
                }
                g.put_agent(&t(), &sid, "a", obj(json!({})), None)
                    .await
                    .unwrap();
                for i in 0..5 {
                    g.append_message(&t(), &sid, "a", msg(Some(i), "{}"))
                        .await
                        .unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        for w in (0..48).filter(|w| w % 8 != 0) {
            let sid = format!("s{w}");
            assert_eq!(all_ids(&g, &sid, "a").await, ((0..5).collect(), 5));
            assert_eq!(event_seqs(&g, &sid).await, (1..=7).collect::<Vec<u64>>());
        }
        assert_eq!(event_seqs(&g, "taken").await, vec![1]);
    })
    .await;
}

fn group_commit(s: &Store) -> GroupCommitMetrics {
    s.metrics()
        .group_commit
        .expect("a group-commit gateway reports its counters")
}

/// What the Strands client sends at the end of a turn: the assistant's
/// message, then the agent's state.
fn turn(aid: &str, text: &str) -> Vec<BatchWrite> {
    vec![
        BatchWrite::Append {
            aid: aid.to_owned(),
            input: msg(None, &json!(text).to_string()),
        },
        BatchWrite::PutAgent {
            aid: aid.to_owned(),
            body: obj(json!({ "last": text })),
            if_match: None,
        },
    ]
}

/// A batch of one session's writes is **one** job of the group commit (one
/// guard, one transaction), also when its state was read first; when
/// another gateway wrote the session in between, the job is sent back and
/// the writes are made one by one, with the same answers. Batches from two
/// group-commit gateways and single appends from a per-write gateway, all
/// on one agent at once: every message id is used once, densely, every
/// write has exactly one event, and the agent has one version per put.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_are_one_job_and_stay_dense_across_gateways() {
    with_db(|cfg| async move {
        let g1 = connect(&cfg, "group_commit").await;
        let g2 = connect(&cfg, "group_commit").await;
        let g3 = connect(&cfg, "transaction").await;
        create(&g1, "s").await;
        g1.put_agent(&t(), "s", "a", obj(json!({})), None)
            .await
            .unwrap();
        g2.append_message(&t(), "s", "a", msg(None, "0"))
            .await
            .unwrap();

        // g1 knows the session at seq 2 (its put); g2 wrote since.
        let before = group_commit(&g1);
        let out = g1.write_batch(&t(), "s", turn("a", "1")).await;
        assert!(out.failed.is_none(), "{:?}", out.failed);
        let after = group_commit(&g1);
        assert_eq!(after.stale - before.stale, 1, "built on a stale seq");
        assert_eq!(after.jobs - before.jobs, 2, "then one by one");
        match &out.done[..] {
            [
                BatchWritten::Appended(Appended::Created(m)),
                BatchWritten::Agent(a, false),
            ] => assert_eq!((m.message_id, a.version, a.message_count), (1, 2, 2)),
            other => panic!("{other:?}"),
        }

        // Now g1 knows the session: the next turn is one job in one
        // transaction, with two events.
        let before = group_commit(&g1);
        let out = g1.write_batch(&t(), "s", turn("a", "2")).await;
        assert!(out.failed.is_none(), "{:?}", out.failed);
        let after = group_commit(&g1);
        assert_eq!(
            (
                after.jobs - before.jobs,
                after.transactions - before.transactions,
                after.stale - before.stale
            ),
            (1, 1, 0),
            "two writes, one job"
        );
        assert_eq!(event_seqs(&g1, "s").await, (1..=7).collect::<Vec<u64>>());

        // Concurrent turns through both group-commit gateways, and single
        // appends through the per-write one.
        let mut tasks = Vec::new();
        for (w, store) in [&g1, &g2, &g1, &g2].into_iter().enumerate() {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..10 {
                    let out = store
                        .write_batch(&t(), "s", turn("a", &format!("{w}.{i}")))
                        .await;
                    assert!(out.failed.is_none(), "batch {w}.{i}: {:?}", out.failed);
                    assert_eq!(out.done.len(), 2);
                }
            }));
        }
        let single = g3.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let input = msg(None, &format!("\"single {i}\""));
                match single.append_message(&t(), "s", "a", input).await {
                    Ok(Appended::Created(_)) => {}
                    other => panic!("append: {other:?}"),
                }
            }
        }));
        for task in tasks {
            task.await.unwrap();
        }
        // 1 + 2 + 40 turns' messages + 10 single appends; 1 + 2 + 40 puts.
        let (ids, total) = all_ids(&g3, "s", "a").await;
        assert_eq!(total, 53);
        assert_eq!(ids, (0..53).collect::<Vec<u64>>());
        let a = g2.get_agent(&t(), "s", "a").await.unwrap();
        assert_eq!((a.version, a.message_count), (43, 53));
        let seqs = event_seqs(&g3, "s").await;
        assert_eq!(seqs, (1..=3 + 4 + 80 + 10).collect::<Vec<u64>>());

        // A gateway that did not create the agent (a restart, another
        // gateway) reads the session once and puts the agent on the fast
        // path too: the session keeps the agent's creation time.
        let g4 = connect(&cfg, "group_commit").await;
        let before = group_commit(&g4);
        let out = g4.write_batch(&t(), "s", turn("a", "late")).await;
        assert!(out.failed.is_none(), "{:?}", out.failed);
        let after = group_commit(&g4);
        assert_eq!(
            (after.jobs - before.jobs, after.stale - before.stale),
            (1, 0)
        );
        match &out.done[..] {
            [_, BatchWritten::Agent(agent, false)] => {
                assert_eq!(agent.created_at, a.created_at);
                assert_eq!(agent.version, 44);
            }
            other => panic!("{other:?}"),
        }
    })
    .await;
}

/// A guard that matches nothing while the rest of its job would apply shows
/// only in the bulk write's counts (the write asks for a summary, not a
/// result per model). Here the session expired under retention: no other
/// write took the `seq` the job's event names, and the agent document the
/// job upserts exists, so nothing in the job fails. The batch is sent again
/// for per-model results, the job is answered by the per-write path (the
/// session is missing), and nothing of it is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_that_fails_alone_is_found_by_the_counts() {
    with_db(|cfg| async move {
        let g = connect(&cfg, "group_commit").await;
        let new: NewSession =
            serde_json::from_value(json!({ "session_id": "s", "session_type": "ephemeral" }))
                .unwrap();
        g.create_session(&t(), new).await.expect("create");
        g.put_agent(&t(), "s", "a", obj(json!({ "v": 1 })), None)
            .await
            .unwrap();
        let seqs = event_seqs(&g, "s").await;
        assert_eq!(seqs, [1, 2]);

        // Expired 1 ms after its last write (reads use the wall clock).
        g.set_retention(Retention {
            sessions: BTreeMap::from([("ephemeral".to_owned(), 1)]),
            default_session_ms: None,
            events_ms: None,
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            matches!(g.get_session(&t(), "s").await, Err(StoreError::NotFound(_))),
            "expired"
        );

        let before = group_commit(&g);
        let r = g
            .put_agent(&t(), "s", "a", obj(json!({ "v": 2 })), None)
            .await;
        assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
        let after = group_commit(&g);
        assert_eq!(
            (
                after.recounts - before.recounts,
                after.stale - before.stale,
                after.jobs - before.jobs,
            ),
            (1, 1, 0),
            "(batches sent again for per-model results, jobs sent back, jobs committed)"
        );

        // Nothing of the job was written.
        g.set_retention(Retention::default());
        let a = g.get_agent(&t(), "s", "a").await.unwrap();
        assert_eq!((Value::Object(a.body), a.version), (json!({ "v": 1 }), 1));
        assert_eq!(event_seqs(&g, "s").await, seqs);
    })
    .await;
}

/// `write_path` accepts "auto", "group_commit" and "transaction" only.
#[tokio::test]
async fn write_path_setting_is_checked() {
    let Some(cfg) = mongo_config("sometimes") else {
        return;
    };
    match MongoStore::connect(&cfg).await {
        Err(StoreError::Internal(m)) => assert!(m.contains("write_path"), "{m}"),
        Err(e) => panic!("expected Internal, got {e:?}"),
        Ok(_) => panic!("accepted write_path = \"sometimes\""),
    }
    drop_database(&cfg).await;
}
