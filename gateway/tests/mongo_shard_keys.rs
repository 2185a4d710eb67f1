//! Every MongoDB write names its shard key.
//!
//! The store is built in-process with the driver's command monitoring; every
//! kind of write runs, on both write paths (the group commit's `bulkWrite`
//! and the per-write transaction), and every `update`, `delete`,
//! `findAndModify` filter, every inserted document and every `bulkWrite`
//! model must name the session key of its collection by equality: `_id` =
//! `"<tenant>/<sid>"` for `sessions`, `key` = `"<tenant>/<sid>"` for
//! `agents`, `messages`, `feedbacks`, `events` and `purges`, and `_id` for
//! `outbox` (an item is keyed by its own id). With each collection sharded
//! on that field, each such write goes to one shard. Needs `MONGODB_URI`
//! (skipped without it unless `REQUIRE_MONGODB=1`).
#![allow(missing_docs)]

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway::config::MongoConfig;
use gateway::metadata::MetadataChange;
use gateway::model::{EventType, MessageInput, MessagePatch, NewSession, Tenant};
use gateway::store::mongo::MongoStore;
use gateway::store::prelude::*;
use gateway::store::{AfterHooked, SweepReport};
use mongodb::bson::{Bson, Document, doc};
use mongodb::event::EventHandler;
use mongodb::event::command::CommandEvent;
use serde_json::{Value, json};

/// The write commands seen: (command name, command document).
type Seen = Arc<Mutex<Vec<(String, Document)>>>;

const WRITES: &[&str] = &["insert", "update", "delete", "findAndModify", "bulkWrite"];

fn mongo_config() -> Option<MongoConfig> {
    let uri = common::mongo_uri()?;
    Some(MongoConfig {
        uri,
        database: format!("shard_keys_{}", uuid::Uuid::new_v4().simple()),
        server_selection_timeout_ms: 5_000,
        ..MongoConfig::default()
    })
}

async fn drop_database(cfg: &MongoConfig) {
    if let Ok(client) = mongodb::Client::with_uri_str(&cfg.uri).await {
        let _ = client.database(&cfg.database).drop().await;
    }
}

/// Connects with command monitoring recording this database's writes.
async fn connect(cfg: &MongoConfig, write_path: &str, seen: &Seen) -> MongoStore {
    let cfg = MongoConfig {
        write_path: write_path.into(),
        ..cfg.clone()
    };
    let (db, seen) = (cfg.database.clone(), seen.clone());
    let handler = EventHandler::callback(move |ev: CommandEvent| {
        // `bulkWrite` runs on `admin`, naming each collection in `nsInfo`.
        if let CommandEvent::Started(s) = ev
            && (s.db == db || s.command_name == "bulkWrite")
            && WRITES.contains(&s.command_name.as_str())
        {
            seen.lock().unwrap().push((s.command_name, s.command));
        }
    });
    MongoStore::connect_observed(&cfg, Some(handler))
        .await
        .expect("connect")
}

/// The shard-key field of a collection holding session data.
fn key_field(coll: &str) -> Option<&'static str> {
    match coll {
        "sessions" | "outbox" => Some("_id"),
        "agents" | "messages" | "feedbacks" | "events" | "purges" => Some("key"),
        _ => None,
    }
}

/// Whether `d` names the key of `coll` by equality (a session key holds `/`).
fn names_key(coll: &str, d: &Document) -> bool {
    let Some(field) = key_field(coll) else {
        return true;
    };
    match d.get(field) {
        Some(Bson::String(s)) => coll == "outbox" || s.contains('/'),
        _ => false,
    }
}

/// Every (kind, collection) seen, and the writes whose filter or document
/// lacks the key.
fn check(seen: &Seen) -> (BTreeSet<String>, Vec<String>) {
    let mut kinds = BTreeSet::new();
    let mut bad = Vec::new();
    let mut look = |kind: &str, coll: &str, d: Option<&Document>| {
        kinds.insert(format!("{kind} {coll}"));
        if !d.is_some_and(|d| names_key(coll, d)) {
            bad.push(format!("{kind} {coll}: {d:?}"));
        }
    };
    for (name, cmd) in seen.lock().unwrap().iter() {
        let coll = cmd.get_str(name).unwrap_or_default().to_owned();
        match name.as_str() {
            "insert" => {
                for d in cmd.get_array("documents").into_iter().flatten() {
                    look("insert", &coll, d.as_document());
                }
            }
            "update" | "delete" => {
                let list = if name == "update" {
                    "updates"
                } else {
                    "deletes"
                };
                for u in cmd.get_array(list).into_iter().flatten() {
                    let q = u.as_document().and_then(|u| u.get_document("q").ok());
                    look(name, &coll, q);
                }
            }
            "findAndModify" => look(name, &coll, cmd.get_document("query").ok()),
            "bulkWrite" => {
                let ns: Vec<String> = cmd
                    .get_array("nsInfo")
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_document()?.get_str("ns").ok())
                    .map(|ns| ns.split_once('.').map_or(ns, |(_, c)| c).to_owned())
                    .collect();
                for op in cmd.get_array("ops").into_iter().flatten() {
                    let Some(op) = op.as_document() else { continue };
                    let (kind, idx) = ["insert", "update", "delete"]
                        .iter()
                        .find_map(|k| Some((*k, op.get(*k)?)))
                        .unwrap_or(("?", &Bson::Null));
                    let idx = match idx {
                        Bson::Int32(i) => usize::try_from(*i).unwrap_or(0),
                        Bson::Int64(i) => usize::try_from(*i).unwrap_or(0),
                        _ => 0,
                    };
                    let coll = ns.get(idx).cloned().unwrap_or_default();
                    let d = if kind == "insert" {
                        op.get_document("document").ok()
                    } else {
                        op.get_document("filter").ok()
                    };
                    look(&format!("bulkWrite {kind}"), &coll, d);
                }
            }
            _ => {}
        }
    }
    (kinds, bad)
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

fn outbox_item(id: &str, sid: &str) -> OutboxItem {
    OutboxItem {
        id: id.into(),
        target: "topic".into(),
        payload: "{}".into(),
        plugin: "p".into(),
        tenant: "t".into(),
        session_id: sid.into(),
        created_at: 1,
        attempts: 0,
        next_attempt_at: 0,
        state: OutboxState::Pending,
        last_error: None,
    }
}

/// Every kind of write the store makes, on one gateway.
async fn every_write(s: &MongoStore, sid: &str) {
    let t = &t();
    s.set_after_hooked(
        AfterHooked::default()
            .with(EventType::MetadataUpdated)
            .with(EventType::FeedbackAdded),
    );
    let new: NewSession = serde_json::from_value(json!({
        "session_id": sid,
        "metadata": { "tags": ["a", "b"], "n": 1 },
    }))
    .unwrap();
    s.create_session(t, new).await.unwrap();
    s.put_agent(t, sid, "a", obj(json!({ "x": 1 })), None)
        .await
        .unwrap();
    s.put_agent(t, sid, "a", obj(json!({ "x": 2 })), Some(1))
        .await
        .unwrap();
    assert!(
        s.put_agent(t, sid, "a", obj(json!({})), Some(9))
            .await
            .is_err()
    );
    for text in ["{}", "[1]"] {
        s.append_message(t, sid, "a", msg(None, text))
            .await
            .unwrap();
    }
    // A retry (same content), a conflict and a gap: the per-write path decides.
    assert!(matches!(
        s.append_message(t, sid, "a", msg(Some(1), "[1]")).await,
        Ok(Appended::Existing(_))
    ));
    assert!(
        s.append_message(t, sid, "a", msg(Some(0), "[2]"))
            .await
            .is_err()
    );
    assert!(
        s.append_message(t, sid, "a", msg(Some(7), "{}"))
            .await
            .is_err()
    );
    let patch: MessagePatch = serde_json::from_str(r#"{"redact_message":"gone"}"#).expect("patch");
    s.update_message(t, sid, "a", 0, patch).await.unwrap();
    let set = MetadataChange::Update(vec![("k".into(), json!("v"))]);
    s.change_metadata(t, sid, &set).await.unwrap();
    // Through an array: the answer is stored with a second update.
    let unset = MetadataChange::Delete(vec!["tags.0".into()]);
    s.change_metadata(t, sid, &unset).await.unwrap();
    s.add_feedback(t, sid, obj(json!({ "rating": "up" })))
        .await
        .unwrap();
    // After-hooks: claim, complete with notifications; the outbox cycle.
    let now = gateway::model::now_ms();
    let claimed = s.claim_pending_events(now, 60_000, 10).await.unwrap();
    assert!(!claimed.is_empty());
    for (i, ev) in claimed.iter().enumerate() {
        let items = vec![outbox_item(&format!("{sid}-n{i}"), sid)];
        s.complete_event("t", sid, ev.seq, items).await.unwrap();
    }
    let due = s.claim_outbox(now, 60_000, 10).await.unwrap();
    assert!(!due.is_empty());
    s.outbox_failed(&due[0].id, 1, now, "boom", true)
        .await
        .unwrap();
    s.retry_outbox_of(Some("t"), &due[0].id, now).await.unwrap();
    for item in &due {
        s.outbox_delivered(&item.id).await.unwrap();
    }
    s.delete_session(t, sid).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_names_the_session_key() {
    let Some(cfg) = mongo_config() else { return };
    let res = tokio::spawn({
        let cfg = cfg.clone();
        async move {
            let seen: Seen = Arc::default();
            // The group commit where the server has it, and the per-write
            // transaction every server gets.
            let fast = connect(&cfg, "auto", &seen).await;
            let slow = connect(&cfg, "transaction", &seen).await;
            seen.lock().unwrap().clear();
            every_write(&fast, "s1").await;
            every_write(&slow, "s2").await;
            // Retention: an expired session swept (its own transaction and
            // purge), old events and tombstones removed per session.
            let t = &t();
            let new: NewSession = serde_json::from_value(json!({ "session_id": "old" })).unwrap();
            fast.create_session(t, new).await.unwrap();
            fast.set_retention(Retention {
                default_session_ms: Some(1),
                events_ms: Some(1),
                ..Retention::default()
            });
            let later = gateway::model::now_ms() + 60_000;
            let report: SweepReport = fast.sweep_expired(later, 100).await.unwrap();
            assert_eq!(report.sessions, 1, "{report:?}");
            assert!(report.events > 0, "{report:?}");
            // Purges run in the background: wait for them.
            let client = mongodb::Client::with_uri_str(&cfg.uri).await.unwrap();
            let purges = client
                .database(&cfg.database)
                .collection::<Document>("purges");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while purges.count_documents(doc! {}).await.unwrap() > 0 {
                assert!(std::time::Instant::now() < deadline, "purges not done");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let (kinds, bad) = check(&seen);
            assert!(
                bad.is_empty(),
                "writes without their shard key:\n{}",
                bad.join("\n")
            );
            // Not vacuous: each kind of write was seen and checked.
            let mut want = vec![
                "findAndModify sessions",
                "findAndModify agents",
                "insert messages",
                "insert feedbacks",
                "insert events",
                "insert purges",
                "update messages",
                "update sessions",
                "update events",
                "update outbox",
                "findAndModify events",
                "findAndModify outbox",
                "delete outbox",
                "delete agents",
                "delete messages",
                "delete feedbacks",
                "delete purges",
                "delete events",
                "delete sessions",
            ];
            // The group commit runs where the server has `bulkWrite` (8.0+,
            // wire version 25) unless the environment asks for the other path.
            let hello = client
                .database("admin")
                .run_command(doc! { "hello": 1 })
                .await
                .unwrap();
            let wire = match hello.get("maxWireVersion") {
                Some(Bson::Int32(v)) => i64::from(*v),
                Some(Bson::Int64(v)) => *v,
                _ => 0,
            };
            if wire >= 25 && std::env::var("MONGODB_WRITE_PATH").as_deref() != Ok("transaction") {
                want.extend([
                    "bulkWrite insert sessions",
                    "bulkWrite update sessions",
                    "bulkWrite update agents",
                    "bulkWrite insert messages",
                    "bulkWrite insert feedbacks",
                    "bulkWrite insert events",
                ]);
            }
            for w in want {
                assert!(kinds.contains(w), "{w:?} not seen; seen: {kinds:?}");
            }
        }
    })
    .await;
    drop_database(&cfg).await;
    if let Err(e) = res {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// A database written by the previous layout (children keyed by `uid`
/// alone, unique indexes on `(uid, …)`, no schema version) is migrated at
/// start-up: its sessions read and write as before, every child gains its
/// session key, the old unique indexes go, the version is recorded, and a
/// second start changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_1_database_is_migrated_at_start() {
    let Some(cfg) = mongo_config() else { return };
    let res = tokio::spawn({
        let cfg = cfg.clone();
        async move {
            let client = mongodb::Client::with_uri_str(&cfg.uri).await.unwrap();
            let db = client.database(&cfg.database);
            let coll = |n: &str| db.collection::<Document>(n);
            // What the previous version wrote for session t/s (uid 7) with
            // agent a (2 messages) and one feedback, plus a deleted
            // incarnation (uid 5) whose purge a crash interrupted.
            let now = mongodb::bson::DateTime::now();
            let ev = |seq: i64, kind: &str| {
                let doc = json!({
                    "tenant": "t", "session_id": "s", "session_type": "default",
                    "seq": seq, "type": kind, "ts": now.timestamp_millis(), "payload": {},
                });
                doc! {
                    "tenant": "t", "session_id": "s", "key": "t/s", "seq": seq,
                    "type": kind, "doc": doc.to_string(), "ts": now,
                    "hooks_pending": false, "lease_until": 0i64,
                }
            };
            coll("sessions")
                .insert_one(doc! {
                    "_id": "t/s", "tenant": "t", "session_id": "s",
                    "session_type": "default", "created_at": now, "updated_at": now,
                    "metadata": { "k": "v" }, "uid": 7i64, "seq": 5i64,
                    "agents": { "a": { "v": 1i64, "n": 2i64 } }, "feedbacks": 1i64,
                    "deleted": false,
                })
                .await
                .unwrap();
            coll("agents")
                .insert_one(doc! {
                    "uid": 7i64, "agent_id": "a", "body": r#"{"x":1}"#,
                    "created_at": now, "updated_at": now,
                })
                .await
                .unwrap();
            for (uid, mid) in [(7i64, 0i64), (7, 1), (5, 0)] {
                let m = json!({
                    "message_id": mid, "message": {"i": mid},
                    "created_at": "2026-01-01T00:00:00.000Z",
                    "updated_at": "2026-01-01T00:00:00.000Z",
                });
                coll("messages")
                    .insert_one(doc! {
                        "uid": uid, "agent_id": "a", "message_id": mid, "doc": m.to_string(),
                    })
                    .await
                    .unwrap();
            }
            coll("feedbacks")
                .insert_one(doc! { "uid": 7i64, "idx": 0i64, "body": r#"{"rating":"up"}"# })
                .await
                .unwrap();
            coll("purges")
                .insert_one(doc! { "_id": 5i64, "key": "t/s", "at": now })
                .await
                .unwrap();
            for seq in 1..=5 {
                coll("events")
                    .insert_one(ev(seq, "agent.updated"))
                    .await
                    .unwrap();
            }
            let unique = mongodb::options::IndexOptions::builder()
                .unique(true)
                .build();
            for (c, keys) in [
                ("agents", doc! { "uid": 1, "agent_id": 1 }),
                (
                    "messages",
                    doc! { "uid": 1, "agent_id": 1, "message_id": 1 },
                ),
                ("feedbacks", doc! { "uid": 1, "idx": 1 }),
            ] {
                let model = mongodb::IndexModel::builder()
                    .keys(keys)
                    .options(unique.clone())
                    .build();
                coll(c).create_index(model).await.unwrap();
            }

            let seen: Seen = Arc::default();
            let s = connect(&cfg, "auto", &seen).await;
            let t = &t();
            let session = s.get_session(t, "s").await.unwrap();
            assert_eq!(session.agents, vec!["a".to_owned()]);
            let agent = s.get_agent(t, "s", "a").await.unwrap();
            assert_eq!((agent.version, agent.message_count), (1, 2));
            assert_eq!(s.list_agents(t, "s").await.unwrap().len(), 1);
            let range = gateway::model::MessageRange::Latest(10);
            let (msgs, total) = s.list_messages(t, "s", "a", range).await.unwrap();
            assert_eq!((msgs.len(), total), (2, 2));
            assert_eq!(s.get_message(t, "s", "a", 1).await.unwrap().message_id, 1);
            assert_eq!(s.list_feedbacks(t, "s").await.unwrap().len(), 1);
            // Writes continue the old data: the next id, the next seq, and
            // a retry of an old message is recognised.
            let next = s
                .append_message(t, "s", "a", msg(None, "{}"))
                .await
                .unwrap();
            assert!(
                matches!(next, Appended::Created(ref m) if m.message_id == 2),
                "{next:?}"
            );
            let again = s
                .append_message(t, "s", "a", msg(Some(0), r#"{"i":0}"#))
                .await
                .unwrap();
            assert!(matches!(again, Appended::Existing(_)), "{again:?}");
            assert_eq!(s.latest_event_seq(t, "s").await.unwrap(), 6);
            // The layout: every child keyed, old indexes gone, version 2,
            // and the interrupted purge of uid 5 finished.
            for c in ["agents", "messages", "feedbacks"] {
                let unkeyed = coll(c)
                    .count_documents(doc! { "key": { "$exists": false } })
                    .await
                    .unwrap();
                assert_eq!(unkeyed, 0, "{c}");
                let names = coll(c).list_index_names().await.unwrap();
                assert!(
                    names.iter().all(|n| !n.starts_with("uid_1")),
                    "{c}: {names:?}"
                );
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while coll("messages")
                .count_documents(doc! { "uid": 5i64 })
                .await
                .unwrap()
                > 0
            {
                assert!(std::time::Instant::now() < deadline, "old purge not done");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let version = |d: Option<Document>| d.and_then(|d| d.get("version").cloned());
            let v = version(
                coll("meta")
                    .find_one(doc! { "_id": "schema" })
                    .await
                    .unwrap(),
            );
            assert!(matches!(v, Some(Bson::Int64(2) | Bson::Int32(2))), "{v:?}");
            // A second start finds version 2 and writes nothing to migrate.
            let again: Seen = Arc::default();
            let _s2 = connect(&cfg, "auto", &again).await;
            let migrating = again
                .lock()
                .unwrap()
                .iter()
                .filter(|(n, c)| n == "update" && c.get_str("update").is_ok_and(|c| c != "meta"))
                .count();
            assert_eq!(migrating, 0);
        }
    })
    .await;
    drop_database(&cfg).await;
    if let Err(e) = res {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// The claims read candidates across sessions and then take each by its key
/// with the claim's condition in the filter: two gateways claiming at once
/// never hold the same event or outbox item, and between them take all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_claim_each_item_once() {
    let Some(cfg) = mongo_config() else { return };
    let res = tokio::spawn({
        let cfg = cfg.clone();
        async move {
            let seen: Seen = Arc::default();
            let g1 = Arc::new(connect(&cfg, "auto", &seen).await);
            let g2 = Arc::new(connect(&cfg, "auto", &seen).await);
            let hooked = AfterHooked::default().with(EventType::MetadataUpdated);
            g1.set_after_hooked(hooked);
            let t = &t();
            for i in 0..6 {
                let sid = format!("s{i}");
                let new: NewSession = serde_json::from_value(json!({ "session_id": sid })).unwrap();
                g1.create_session(t, new).await.unwrap();
                for j in 0..5 {
                    let set = MetadataChange::Update(vec![("k".into(), json!(j))]);
                    g1.change_metadata(t, &sid, &set).await.unwrap();
                }
            }
            let now = gateway::model::now_ms();
            let claim_all = |g: Arc<MongoStore>| async move {
                let mut got = Vec::new();
                loop {
                    let evs = g.claim_pending_events(now, 60_000, 4).await.unwrap();
                    if evs.is_empty() {
                        return got;
                    }
                    got.extend(evs.into_iter().map(|e| (e.session_id, e.seq)));
                }
            };
            let (a, b) = tokio::join!(claim_all(g1.clone()), claim_all(g2.clone()));
            let mut all: Vec<_> = a.iter().chain(&b).cloned().collect();
            all.sort();
            let n = all.len();
            all.dedup();
            assert_eq!(n, all.len(), "an event was claimed twice");
            assert_eq!(n, 30);
            // The outbox: 30 items, claimed by both at once, each once.
            for (i, (sid, seq)) in all.iter().enumerate() {
                let items = vec![outbox_item(&format!("n{i}"), sid)];
                g1.complete_event("t", sid, *seq, items).await.unwrap();
            }
            let claim_out = |g: Arc<MongoStore>| async move {
                let mut got = Vec::new();
                loop {
                    let items = g.claim_outbox(now, 60_000, 4).await.unwrap();
                    if items.is_empty() {
                        return got;
                    }
                    got.extend(items.into_iter().map(|i| i.id));
                }
            };
            let (a, b) = tokio::join!(claim_out(g1.clone()), claim_out(g2.clone()));
            let mut ids: Vec<_> = a.iter().chain(&b).cloned().collect();
            ids.sort();
            let n = ids.len();
            ids.dedup();
            assert_eq!(n, ids.len(), "an outbox item was claimed twice");
            assert_eq!(n, 30);
        }
    })
    .await;
    drop_database(&cfg).await;
    if let Err(e) = res {
        std::panic::resume_unwind(e.into_panic());
    }
}
