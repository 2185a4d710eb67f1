//! `gateway import`: sessions written by the real Python `mongodb-session-manager`
//! (the fixture in `../shared/fixtures/`) are loaded into the test MongoDB-wire
//! server with their original BSON types, imported by the real binary into a
//! fresh store (embedded and MongoDB), and checked through the HTTP API; a
//! second run changes nothing, a partial state is completed, a conflicting
//! session is left alone unless replacing is asked for.

mod common;

use std::path::{Path, PathBuf};

use ::mongodb::bson::{Bson, Document};
use common::{Backend, GatewayProcess, free_port, mongo_uri};
use serde_json::{Value, json};

const FIXTURE: &str = "original-library-sessions.jsonl";

/// The fixture lives outside the repository, in `shared/fixtures/` beside the
/// checkout (or beside one of its ancestors, for worktrees). Absent: a failure
/// under CI, a skip otherwise.
fn fixture() -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let found = repo
        .ancestors()
        .skip(1)
        .map(|d| d.join("shared/fixtures").join(FIXTURE))
        .find(|p| p.is_file());
    if found.is_none() {
        let msg = format!(
            "the fixture shared/fixtures/{FIXTURE} was not found beside the repository \
             ({}/../shared/fixtures) or any of its parents",
            repo.display()
        );
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("skipping: {msg}");
    }
    found
}

/// The fixture's documents, as canonical Extended JSON values.
fn fixture_docs(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Extended JSON as the API shows it: dates as RFC 3339 UTC with milliseconds,
/// `$numberInt`/`$numberLong` as integers, `$numberDouble` as floats.
fn plain(v: &Value) -> Value {
    match v {
        Value::Object(m) if m.len() == 1 => {
            let (k, inner) = m.iter().next().unwrap();
            match (k.as_str(), inner) {
                ("$numberInt" | "$numberLong", Value::String(s)) => {
                    json!(s.parse::<i64>().unwrap())
                }
                ("$numberDouble", Value::String(s)) => json!(s.parse::<f64>().unwrap()),
                ("$date", d) => {
                    let ms: i64 = d["$numberLong"].as_str().unwrap().parse().unwrap();
                    json!(gateway::model::format_ms(ms))
                }
                _ => json!({ k: plain(inner) }),
            }
        }
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), plain(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(plain).collect()),
        other => other.clone(),
    }
}

/// A source database holding the fixture, written with the BSON types the
/// original library used (Int32 ids and counters, doubles, dates).
async fn load_source(uri: &str, docs: &[Value]) -> (::mongodb::Client, String) {
    let client = ::mongodb::Client::with_uri_str(uri).await.unwrap();
    let db = format!("import_src_{}", uuid::Uuid::new_v4().simple());
    let coll = client.database(&db).collection::<Document>("sessions");
    let docs: Vec<Document> = docs
        .iter()
        .map(
            |v| match Bson::try_from(v.clone()).expect("canonical Extended JSON") {
                Bson::Document(d) => d,
                other => panic!("not a document: {other}"),
            },
        )
        .collect();
    coll.insert_many(&docs).await.unwrap();
    // What the server holds has the original's types, not JSON's.
    let chat = coll
        .find_one(::mongodb::bson::doc! { "_id": "legacy-chat-1" })
        .await
        .unwrap()
        .expect("legacy-chat-1 loaded");
    let msg = chat
        .get_document("agents")
        .and_then(|a| a.get_document("assistant"))
        .and_then(|a| a.get_array("messages"))
        .unwrap()[1]
        .as_document()
        .unwrap()
        .clone();
    assert!(matches!(msg.get("message_id"), Some(Bson::Int32(1))));
    assert!(matches!(msg.get("created_at"), Some(Bson::DateTime(_))));
    let cycle = msg
        .get_document("event_loop_metrics")
        .and_then(|m| m.get_document("cycle_metrics"))
        .unwrap();
    assert!(matches!(cycle.get("total_duration"), Some(Bson::Double(_))));
    assert!(matches!(cycle.get("cycle_count"), Some(Bson::Int32(1))));
    (client, db)
}

struct Setup {
    dir: tempfile::TempDir,
    config: String,
    source_uri: String,
    source_db: String,
    docs: Vec<Value>,
    source: ::mongodb::Client,
}

async fn setup(backend: Backend) -> Option<Setup> {
    let path = fixture()?;
    let source_uri = mongo_uri()?;
    let docs = fixture_docs(&path);
    assert_eq!(docs.len(), 3, "the fixture holds three sessions");
    let (source, source_db) = load_source(&source_uri, &docs).await;
    let dir = tempfile::tempdir().unwrap();
    let storage = match backend {
        Backend::Embedded => {
            "[storage]\ntype = \"embedded\"\n[storage.embedded]\npath = \"data/gateway.redb\"\n"
                .to_owned()
        }
        Backend::Mongo => format!(
            "[storage]\ntype = \"mongodb\"\n[storage.mongodb]\nuri = {source_uri:?}\ndatabase = \"gw_import_{}\"\nserver_selection_timeout_ms = 3000\n",
            uuid::Uuid::new_v4().simple()
        ),
    };
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\nshutdown_grace_ms = 1000\n[plugins]\nwatch = false\n{storage}",
        free_port()
    );
    std::fs::write(dir.path().join("gateway.toml"), &config).unwrap();
    Some(Setup {
        dir,
        config,
        source_uri,
        source_db,
        docs,
        source,
    })
}

impl Setup {
    /// Runs `gateway import` (JSON report, progress lines); returns the exit
    /// code, the report and stderr.
    fn import(&self, extra: &[&str]) -> (i32, Value, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("--config")
            .arg(self.dir.path().join("gateway.toml"))
            .args(["import", "--source-uri", &self.source_uri])
            .args(["--source-database", &self.source_db])
            .args(["--source-collection", "sessions", "--json"])
            .args(["--progress", "lines"])
            .args(extra)
            .env_remove("MONGODB_URI")
            .env_remove("IMPORT_SOURCE_URI")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("the gateway binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "the report is not JSON ({e}):\nstdout: {}\nstderr: {stderr}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        (out.status.code().unwrap_or(-1), report, stderr)
    }

    async fn gateway(&self) -> Api {
        let p = GatewayProcess::start(self.dir.path(), &self.config, "warn").await;
        Api {
            base: p.base.clone(),
            client: reqwest::Client::new(),
            _process: p,
        }
    }

    async fn drop_source(self) {
        let _ = self.source.database(&self.source_db).drop().await;
    }
}

struct Api {
    base: String,
    client: reqwest::Client,
    _process: GatewayProcess,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (status, v)
    }

    async fn get(&self, path: &str) -> Value {
        let (s, v) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }

    /// Everything the API shows of the imported sessions, times and versions included.
    async fn snapshot(&self, docs: &[Value]) -> Value {
        let mut out = serde_json::Map::new();
        for d in docs {
            let sid = d["session_id"].as_str().unwrap();
            let session = self.get(&format!("/v1/sessions/{sid}")).await;
            let agents = self.get(&format!("/v1/sessions/{sid}/agents")).await;
            let mut messages = serde_json::Map::new();
            for a in session["agents"].as_array().unwrap() {
                let aid = a.as_str().unwrap();
                let m = self
                    .get(&format!(
                        "/v1/sessions/{sid}/agents/{aid}/messages?limit=1000"
                    ))
                    .await;
                messages.insert(aid.to_owned(), m);
            }
            let feedbacks = self.get(&format!("/v1/sessions/{sid}/feedbacks")).await;
            out.insert(
                sid.to_owned(),
                json!({ "session": session, "agents": agents, "messages": messages, "feedbacks": feedbacks }),
            );
        }
        Value::Object(out)
    }
}

/// Checks, through the HTTP API, that every session, agent, message, metadata
/// value and feedback of the source arrived.
async fn check_everything_arrived(api: &Api, docs: &[Value]) {
    let list = api.get("/v1/sessions?limit=100").await;
    let listed: Vec<&str> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap())
        .collect();
    for d in docs {
        let d = plain(d);
        let sid = d["session_id"].as_str().unwrap();
        assert!(listed.contains(&sid), "{sid} not listed: {listed:?}");
        let session = api.get(&format!("/v1/sessions/{sid}")).await;
        assert_eq!(session["session_type"], d["session_type"], "{sid}");
        let mut agent_ids: Vec<&String> = d["agents"].as_object().unwrap().keys().collect();
        agent_ids.sort();
        assert_eq!(session["agents"], json!(agent_ids), "{sid}");

        // Metadata: every value the library stored, except its empty
        // dotted-key placeholders; application_name and provenance added.
        let md = &api.get(&format!("/v1/sessions/{sid}/metadata")).await;
        for (k, v) in d["metadata"].as_object().unwrap() {
            if k.contains('.') {
                assert_eq!(v, "", "{sid}: only empty placeholders are dotted");
                assert!(md.get(k).is_none(), "{sid}: placeholder {k} kept: {md}");
            } else {
                assert_eq!(&md[k], v, "{sid}: metadata {k}");
            }
        }
        match d["application_name"].as_str() {
            Some(app) => assert_eq!(md["application_name"], app, "{sid}"),
            None => assert!(md.get("application_name").is_none(), "{sid}: {md}"),
        }
        assert_eq!(md["_import"]["source"], "mongodb-session-manager");
        assert_eq!(md["_import"]["created_at"], d["created_at"], "{sid}");
        assert_eq!(md["_import"]["updated_at"], d["updated_at"], "{sid}");
        // Guardrail events where the Python adapter's manager keeps them.
        let guardrails = d["guardrail_events"].as_array().unwrap();
        if guardrails.is_empty() {
            assert!(md.get("guardrail_events").is_none(), "{sid}: {md}");
        } else {
            let got = md["guardrail_events"].as_object().unwrap();
            assert_eq!(got.len(), guardrails.len(), "{sid}: {md}");
            for g in guardrails {
                let key = format!("{}#{}", g["agent_id"].as_str().unwrap(), g["message_id"]);
                assert_eq!(got[&key], *g, "{sid}");
            }
        }

        for (aid, a) in d["agents"].as_object().unwrap() {
            let agent = api.get(&format!("/v1/sessions/{sid}/agents/{aid}")).await;
            let data = a["agent_data"].as_object().unwrap();
            for (k, v) in data {
                if ["agent_id", "created_at", "updated_at"].contains(&k.as_str()) {
                    continue;
                }
                assert_eq!(&agent[k], v, "{sid}/{aid}: {k}");
            }
            assert_eq!(agent["agent_id"], aid.as_str());
            assert_eq!(
                agent["_import"]["created_at"], a["created_at"],
                "{sid}/{aid}"
            );
            assert_eq!(
                agent["_import"]["updated_at"], a["updated_at"],
                "{sid}/{aid}"
            );
            let src = a["messages"].as_array().unwrap();
            assert_eq!(agent["message_count"], src.len(), "{sid}/{aid}");
            let got = api
                .get(&format!(
                    "/v1/sessions/{sid}/agents/{aid}/messages?limit=1000"
                ))
                .await;
            assert_eq!(got["total"], src.len(), "{sid}/{aid}");
            let got = got["messages"].as_array().unwrap();
            assert_eq!(got.len(), src.len(), "{sid}/{aid}");
            for (g, s) in got.iter().zip(src) {
                let at = format!("{sid}/{aid}/{}", s["message_id"]);
                assert_eq!(g["message_id"], s["message_id"], "{at}");
                assert_eq!(g["message"], s["message"], "{at}");
                assert_eq!(g["redact_message"], s["redact_message"], "{at}");
                assert_eq!(
                    g["event_loop_metrics"],
                    s.get("event_loop_metrics").cloned().unwrap_or(Value::Null),
                    "{at}"
                );
            }
        }
        // Ints stayed ints and doubles doubles.
        if sid == "legacy-chat-1" {
            let m = api
                .get(&format!("/v1/sessions/{sid}/agents/assistant/messages/5"))
                .await;
            assert_eq!(m["redact_message"]["content"][0]["text"], "[REDACTED]");
            let metrics = &m["event_loop_metrics"];
            assert!(
                metrics["accumulated_metrics"]["latencyMs"].is_u64(),
                "{metrics}"
            );
            assert!(
                metrics["cycle_metrics"]["total_duration"].is_f64(),
                "{metrics}"
            );
            let agent = api
                .get(&format!("/v1/sessions/{sid}/agents/assistant"))
                .await;
            assert_eq!(agent["state"]["visits"], 3);
            assert_eq!(agent["system_prompt"], "You are a support bot.");
        }

        let fbs = api.get(&format!("/v1/sessions/{sid}/feedbacks")).await;
        let fbs = fbs["feedbacks"].as_array().unwrap();
        let src = d["feedbacks"].as_array().unwrap();
        assert_eq!(fbs.len(), src.len(), "{sid}");
        for (g, s) in fbs.iter().zip(src) {
            assert_eq!(g["rating"], s["rating"], "{sid}");
            assert_eq!(g["comment"], s["comment"], "{sid}");
            assert_eq!(g["_import"]["created_at"], s["created_at"], "{sid}");
        }
    }
}

fn total_messages(docs: &[Value]) -> u64 {
    docs.iter()
        .flat_map(|d| d["agents"].as_object().unwrap().values())
        .map(|a| a["messages"].as_array().unwrap().len() as u64)
        .sum()
}

async fn imports_everything_then_changes_nothing(backend: Backend) {
    let Some(s) = setup(backend).await else {
        return;
    };
    let messages = total_messages(&s.docs);
    assert_eq!(messages, 70);

    let (code, r, stderr) = s.import(&[]);
    assert_eq!(code, 0, "{r:#}\n{stderr}");
    assert_eq!(
        r["sessions"],
        json!({"seen": 3, "imported": 3, "resumed": 0, "unchanged": 0, "replaced": 0, "conflicting": 0, "failed": 0}),
        "{r:#}"
    );
    assert_eq!(
        r["agents"],
        json!({"imported": 4, "unchanged": 0, "skipped": 0})
    );
    assert_eq!(
        r["messages"],
        json!({"imported": messages, "unchanged": 0, "skipped": 0})
    );
    assert_eq!(
        r["feedbacks"],
        json!({"imported": 3, "unchanged": 0, "skipped": 0})
    );
    let kinds: Vec<&str> = r["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"metadata_placeholder"), "{kinds:?}");
    assert!(kinds.contains(&"viewer_password"), "{kinds:?}");
    assert!(
        stderr.contains("import: 3/3 sessions"),
        "progress lines on stderr: {stderr}"
    );

    let api = s.gateway().await;
    check_everything_arrived(&api, &s.docs).await;
    let before = api.snapshot(&s.docs).await;
    drop(api);

    // A second run finds everything in place and writes nothing.
    let (code, r, stderr) = s.import(&[]);
    assert_eq!(code, 0, "{r:#}\n{stderr}");
    assert_eq!(
        r["sessions"],
        json!({"seen": 3, "imported": 0, "resumed": 0, "unchanged": 3, "replaced": 0, "conflicting": 0, "failed": 0}),
        "{r:#}"
    );
    assert_eq!(
        r["messages"],
        json!({"imported": 0, "unchanged": messages, "skipped": 0})
    );
    assert_eq!(
        r["feedbacks"],
        json!({"imported": 0, "unchanged": 3, "skipped": 0})
    );
    let api = s.gateway().await;
    let after = api.snapshot(&s.docs).await;
    assert_eq!(before, after, "a second import changed something");
    drop(api);
    s.drop_source().await;
}

async fn resumes_a_partial_import_and_leaves_conflicts_alone(backend: Backend) {
    let Some(s) = setup(backend).await else {
        return;
    };
    let (code, r, _) = s.import(&["--session", "legacy-chat-1"]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["sessions"]["imported"], 1, "{r:#}");

    // What an interrupted run leaves: legacy-long-3 created, its agent stored,
    // 25 of its 60 messages appended (written here through the API, the way
    // the importer writes them).
    let full = {
        let (code, r, _) = s.import(&["--session", "legacy-long-3"]);
        assert_eq!(code, 0, "{r:#}");
        let api = s.gateway().await;
        let snap = api.snapshot(&s.docs[2..]).await;
        let (st, v) = api
            .call(reqwest::Method::DELETE, "/v1/sessions/legacy-long-3", None)
            .await;
        assert_eq!(st, 204, "{v}");
        let snap = &snap["legacy-long-3"];
        let (st, v) = api
            .call(
                reqwest::Method::POST,
                "/v1/sessions",
                Some(json!({
                    "session_id": "legacy-long-3",
                    "session_type": snap["session"]["session_type"],
                    "metadata": snap["session"]["metadata"],
                })),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        let mut agent = snap["agents"]["agents"][0].clone();
        for k in ["created_at", "updated_at", "version", "message_count"] {
            agent.as_object_mut().unwrap().remove(k);
        }
        let (st, v) = api
            .call(
                reqwest::Method::PUT,
                "/v1/sessions/legacy-long-3/agents/assistant",
                Some(agent),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        for m in snap["messages"]["assistant"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .take(25)
        {
            let body = json!({
                "message_id": m["message_id"],
                "message": m["message"],
                "redact_message": m["redact_message"],
                "event_loop_metrics": m["event_loop_metrics"],
            });
            let (st, v) = api
                .call(
                    reqwest::Method::POST,
                    "/v1/sessions/legacy-long-3/agents/assistant/messages",
                    Some(body),
                )
                .await;
            assert_eq!(st, 201, "{v}");
        }
        snap.clone()
    };

    // The next run completes legacy-long-3, imports legacy-multi-2, keeps legacy-chat-1.
    let (code, r, stderr) = s.import(&[]);
    assert_eq!(code, 0, "{r:#}\n{stderr}");
    assert_eq!(
        r["sessions"],
        json!({"seen": 3, "imported": 1, "resumed": 1, "unchanged": 1, "replaced": 0, "conflicting": 0, "failed": 0}),
        "{r:#}"
    );
    assert_eq!(r["messages"]["imported"], 35 + 4, "{r:#}");
    assert_eq!(r["messages"]["unchanged"], 25 + 6, "{r:#}");
    let api = s.gateway().await;
    check_everything_arrived(&api, &s.docs).await;
    let resumed = api.snapshot(&s.docs[2..]).await;
    let strip = |v: &Value| {
        let mut ms = v["messages"]["assistant"]["messages"].clone();
        for m in ms.as_array_mut().unwrap() {
            let m = m.as_object_mut().unwrap();
            m.remove("created_at");
            m.remove("updated_at");
        }
        ms
    };
    assert_eq!(strip(&resumed["legacy-long-3"]), strip(&full));

    // A session changed in the gateway since: reported, left untouched.
    let (st, v) = api
        .call(
            reqwest::Method::PATCH,
            "/v1/sessions/legacy-chat-1/metadata",
            Some(json!({"status": "reopened"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    drop(api);
    let (code, r, _) = s.import(&[]);
    assert_eq!(code, 2, "conflicts make the exit code 2: {r:#}");
    assert_eq!(r["sessions"]["conflicting"], 1, "{r:#}");
    assert_eq!(r["sessions"]["unchanged"], 2, "{r:#}");
    assert_eq!(r["conflicts"][0]["session_id"], "legacy-chat-1");
    assert!(
        r["conflicts"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("status"),
        "{r:#}"
    );
    assert_eq!(r["messages"]["skipped"], 6, "{r:#}");
    let api = s.gateway().await;
    let md = api.get("/v1/sessions/legacy-chat-1/metadata").await;
    assert_eq!(
        md["status"], "reopened",
        "a conflicting session is not overwritten"
    );
    drop(api);

    // Dry run: reports, writes nothing.
    let (code, r, _) = s.import(&["--on-conflict", "replace", "--dry-run"]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["sessions"]["replaced"], 1, "{r:#}");
    let api = s.gateway().await;
    let md = api.get("/v1/sessions/legacy-chat-1/metadata").await;
    assert_eq!(md["status"], "reopened", "--dry-run wrote something");
    drop(api);

    // Asked to, the source's version replaces it.
    let (code, r, _) = s.import(&["--on-conflict", "replace"]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["sessions"]["replaced"], 1, "{r:#}");
    let (code, r, _) = s.import(&[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["sessions"]["unchanged"], 3, "{r:#}");
    let api = s.gateway().await;
    check_everything_arrived(&api, &s.docs).await;
    drop(api);

    // Documents the gateway cannot hold as they are fail with a reason; the
    // others are unaffected.
    let coll = s
        .source
        .database(&s.source_db)
        .collection::<Document>("sessions");
    coll.insert_many([
        ::mongodb::bson::doc! { "_id": "has space", "session_type": "AGENT" },
        ::mongodb::bson::doc! { "_id": "legacy-gap", "agents": { "a": {
            "agent_data": { "agent_id": "a", "state": {} },
            "messages": [ { "message_id": 1_i32, "message": { "role": "user" } } ],
        } } },
    ])
    .await
    .unwrap();
    let (code, r, _) = s.import(&[]);
    assert_eq!(code, 2, "failures make the exit code 2: {r:#}");
    assert_eq!(
        r["sessions"],
        json!({"seen": 5, "imported": 0, "resumed": 0, "unchanged": 3, "replaced": 0, "conflicting": 0, "failed": 2}),
        "{r:#}"
    );
    let failures = r["failures"].as_array().unwrap();
    assert_eq!(failures[0]["session_id"], "has space", "{r:#}");
    assert!(
        failures[0]["reason"]
            .as_str()
            .unwrap()
            .contains("session_id"),
        "{r:#}"
    );
    assert_eq!(failures[1]["session_id"], "legacy-gap", "{r:#}");
    assert!(
        failures[1]["reason"]
            .as_str()
            .unwrap()
            .contains("id 0 is missing"),
        "{r:#}"
    );
    let api = s.gateway().await;
    let (st, _) = api
        .call(reqwest::Method::GET, "/v1/sessions/legacy-gap", None)
        .await;
    assert_eq!(st, 404, "a failed session leaves nothing behind");
    drop(api);
    s.drop_source().await;
}

on_both_stores!(
    imports_everything_then_changes_nothing,
    resumes_a_partial_import_and_leaves_conflicts_alone,
);
