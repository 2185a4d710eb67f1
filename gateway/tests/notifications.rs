//! Notifications end to end against moto_server (SNS and SQS on 127.0.0.1):
//! feedback routing, metadata propagation, an AWS outage, a `kill -9` of the
//! gateway, refused grants, dead letters and operator retries, admin counters.
//!
//! Each test starts its own moto_server on a free port so it can stop and
//! restart it. The binary is `$MOTO_SERVER`, else `<repo>/.venv/bin/moto_server`
//! (what `scripts/test.sh` installs), else `/work/.venv-probe/bin/moto_server`.
//! Without one the moto tests are skipped with a notice, unless
//! `REQUIRE_MOTO=1` (CI), which makes that a failure. Credentials are static
//! dummies in `[notify.aws]`, so nothing reads the environment's AWS settings.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use common::{Backend, GatewayProcess, TestGateway, free_port, hook, wait_port};
use gateway::config::{AwsConfig, HookConfig, NotifyConfig, NotifyTarget, TargetKind};
use reqwest::StatusCode;
use serde_json::{Value, json};

const REGION: &str = "us-east-1";
/// How long a delivery may take to show up.
const DELIVERY: Duration = Duration::from_secs(20);
/// How long we watch for an unexpected extra message.
const GRACE: Duration = Duration::from_millis(1_500);

/// A moto_server process we started (and stop on drop).
struct Moto {
    bin: PathBuf,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Moto {
    fn binary() -> Option<PathBuf> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let candidates = [
            std::env::var_os("MOTO_SERVER").map(PathBuf::from),
            Some(repo.join(".venv/bin/moto_server")),
            Some(PathBuf::from("/work/.venv-probe/bin/moto_server")),
        ];
        let found = candidates.into_iter().flatten().find(|p| p.is_file());
        if found.is_none() {
            assert!(
                std::env::var("REQUIRE_MOTO").as_deref() != Ok("1"),
                "REQUIRE_MOTO=1 but no moto_server was found (set MOTO_SERVER or run scripts/test.sh)"
            );
            eprintln!(
                "skipping: moto_server not found (set MOTO_SERVER, or run scripts/test.sh to create .venv)"
            );
        }
        found
    }

    /// Starts moto on a free port; `None` (after a notice) when moto is not installed.
    async fn start() -> Option<Self> {
        let bin = Self::binary()?;
        let port = free_port();
        let log = std::env::temp_dir().join(format!("moto-{port}-{}.log", std::process::id()));
        let mut moto = Self {
            bin,
            port,
            log,
            child: None,
        };
        moto.restart().await;
        Some(moto)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its state is in memory: everything is gone).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts the server on the same port.
    async fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = std::fs::File::create(&self.log).unwrap();
            let mut child = Command::new(&self.bin)
                .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
            let up = wait_port(self.port, Duration::from_secs(30)).await;
            if up && child.try_wait().unwrap().is_none() {
                self.child = Some(child);
                return;
            }
            // The port may still be held by the previous process for a moment.
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            assert!(
                Instant::now() < deadline,
                "moto_server did not start on {}:\n{log}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A TCP relay in front of moto that can refuse connections, so a test decides
/// when the gateway may reach AWS again (e.g. only after topics, queues and
/// subscriptions are recreated, since a publish to a topic without its
/// subscription would be accepted and lost).
struct Gate {
    port: u16,
    open: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    async fn new(upstream: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let is_open = open.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !is_open.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is closed at once
                }
                tokio::spawn(async move {
                    if let Ok(mut up) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                    }
                });
            }
        });
        Self { port, open, task }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn aws_settings(endpoint: &str) -> AwsConfig {
    AwsConfig {
        region: Some(REGION.into()),
        endpoint_url: Some(endpoint.into()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        session_token: None,
    }
}

/// Test-side SNS/SQS clients talking to moto directly.
struct Aws {
    sns: aws_sdk_sns::Client,
    sqs: aws_sdk_sqs::Client,
    /// The gateway whose outbox a failed receive shows (see [`Aws::explain_with`]).
    gateway: std::sync::Mutex<Option<String>>,
}

/// A message as a consumer sees it: the plugin's payload and the notification id.
#[derive(Debug)]
struct Received {
    payload: Value,
    id: String,
    group: Option<String>,
    /// FIFO queues only: the message deduplication id.
    dedup: Option<String>,
}

impl Aws {
    async fn new(moto: &Moto) -> Self {
        let sdk =
            gateway::outbox::sdk_config(&aws_settings(&moto.endpoint()), Duration::from_secs(10))
                .await
                .unwrap();
        Self {
            sns: aws_sdk_sns::Client::new(&sdk),
            sqs: aws_sdk_sqs::Client::new(&sdk),
            gateway: std::sync::Mutex::new(None),
        }
    }

    /// From now on, a receive that times out also shows the outbox of the
    /// gateway at `base` (`GET /v1/admin/outbox`): whether the notification
    /// is pending or backed off (attempts, `last_error`), dead, or not queued
    /// at all (its event's after-hooks have not completed).
    fn explain_with(&self, base: &str) {
        *self.gateway.lock().unwrap() = Some(base.to_owned());
    }

    async fn gateway_outbox(&self) -> String {
        let Some(base) = self.gateway.lock().unwrap().clone() else {
            return "(no gateway to ask)".into();
        };
        let r = async {
            let text = reqwest::get(format!("{base}/v1/admin/outbox"))
                .await?
                .text()
                .await?;
            Ok::<_, reqwest::Error>(
                serde_json::from_str::<Value>(&text).map_or(text, |v| format!("{v:#}")),
            )
        };
        r.await
            .unwrap_or_else(|e| format!("GET {base}/v1/admin/outbox failed: {e}"))
    }

    /// Creates a queue (FIFO when the name ends in `.fifo`); returns (url, arn).
    async fn queue(&self, name: &str) -> (String, String) {
        let mut req = self.sqs.create_queue().queue_name(name);
        if name.ends_with(".fifo") {
            req = req.attributes(QueueAttributeName::FifoQueue, "true");
        }
        let url = req.send().await.unwrap().queue_url.unwrap();
        let attrs = self
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap();
        let arn = attrs.attributes.unwrap()[&QueueAttributeName::QueueArn].clone();
        (url, arn)
    }

    /// Creates topic `name` and a queue `<name>-sink` subscribed to it; returns (topic arn, sink url).
    async fn topic_with_sink(&self, name: &str) -> (String, String) {
        let (url, queue_arn) = self.queue(&format!("{name}-sink")).await;
        let topic = self
            .sns
            .create_topic()
            .name(name)
            .send()
            .await
            .unwrap()
            .topic_arn
            .unwrap();
        self.sns
            .subscribe()
            .topic_arn(&topic)
            .protocol("sqs")
            .endpoint(queue_arn)
            .send()
            .await
            .unwrap();
        (topic, url)
    }

    async fn receive_once(&self, url: &str) -> Vec<Received> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId,
            )
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::MessageDeduplicationId,
            )
            .wait_time_seconds(0)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "receive from {url}: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(&e)
                )
            });
        let mut got = Vec::new();
        for m in out.messages.unwrap_or_default() {
            let body: Value = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
            let attr = |name| m.attributes.as_ref().and_then(|a| a.get(&name).cloned());
            let group = attr(aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId);
            let dedup =
                attr(aws_sdk_sqs::types::MessageSystemAttributeName::MessageDeduplicationId);
            let r = if body["Type"] == "Notification" {
                // Delivered through an SNS subscription: the SNS envelope.
                Received {
                    payload: serde_json::from_str(body["Message"].as_str().unwrap()).unwrap(),
                    id: body["MessageAttributes"]["notification_id"]["Value"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    group,
                    dedup,
                }
            } else {
                let id = m
                    .message_attributes
                    .as_ref()
                    .and_then(|a| a.get("notification_id"))
                    .and_then(|v| v.string_value.clone())
                    .unwrap_or_default();
                Received {
                    payload: body,
                    id,
                    group,
                    dedup,
                }
            };
            self.sqs
                .delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle.unwrap())
                .send()
                .await
                .unwrap();
            got.push(r);
        }
        got
    }

    /// Receives until `expected` messages arrived (or the deadline). Whether
    /// an extra copy follows is checked once per test, by [`Aws::assert_quiet`].
    async fn receive(&self, url: &str, expected: usize) -> Vec<Received> {
        self.receive_within(url, expected, DELIVERY).await
    }

    async fn receive_within(&self, url: &str, expected: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < expected && Instant::now() < deadline {
            got.extend(self.receive_once(url).await);
            if got.len() < expected {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if got.len() != expected {
            panic!(
                "{} of {expected} messages arrived in {url} within {within:?}: {got:#?}\n\
                 the gateway's outbox then: {}",
                got.len(),
                self.gateway_outbox().await
            );
        }
        got
    }

    /// Watches every queue in `urls` for `GRACE` (once, at the end of a
    /// test): nothing more may arrive — no duplicate, nothing refused.
    async fn assert_quiet(&self, urls: &[&str]) {
        let grace = Instant::now() + GRACE;
        loop {
            for url in urls {
                let extra = self.receive_once(url).await;
                assert!(extra.is_empty(), "unexpected messages in {url}: {extra:#?}");
            }
            if Instant::now() >= grace {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `[notify]` for tests: fast polling and backoff, `targets` as (name, kind, address).
fn notify(endpoint: &str, targets: &[(&str, TargetKind, &str)]) -> NotifyConfig {
    let targets: BTreeMap<String, NotifyTarget> = targets
        .iter()
        .map(|(name, kind, addr)| {
            let t = match kind {
                TargetKind::Sns => NotifyTarget {
                    kind: *kind,
                    topic_arn: Some((*addr).into()),
                    queue_url: None,
                },
                TargetKind::Sqs => NotifyTarget {
                    kind: *kind,
                    topic_arn: None,
                    queue_url: Some((*addr).into()),
                },
            };
            ((*name).to_owned(), t)
        })
        .collect();
    NotifyConfig {
        concurrency: 4,
        max_attempts: 1_000,
        backoff_base_ms: 50,
        backoff_max_ms: 400,
        send_timeout_ms: 3_000,
        lease_ms: 10_000,
        poll_interval_ms: 100,
        aws: aws_settings(endpoint),
        targets,
    }
}

/// A gateway on `b`; `None` (after a notice) when that store is unavailable.
async fn gateway(b: Backend, hooks: Vec<HookConfig>, notify: NotifyConfig) -> Option<TestGateway> {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(b, &dir)?;
    cfg.hooks = hooks;
    cfg.notify = notify;
    let mut gw = TestGateway::start(cfg).await;
    gw.dir = Some(dir);
    Some(gw)
}

/// Starts moto, or returns from the test (after a notice) when it or the
/// store is unavailable.
macro_rules! moto_or_skip {
    ($b:expr) => {{
        if $b == Backend::Mongo && common::mongo_uri().is_none() {
            return;
        }
        match Moto::start().await {
            Some(m) => m,
            None => return,
        }
    }};
}

fn router(grants: &[&str]) -> HookConfig {
    hook(
        "router",
        "feedback_router",
        "after",
        &["feedback.add"],
        &format!("grants = {{ publish = {grants:?} }}"),
    )
}

fn propagator(name: &str, fields: &[&str], target: &str) -> HookConfig {
    hook(
        name,
        "metadata_propagator",
        "after",
        &["metadata.update", "metadata.delete"],
        &format!(
            "grants = {{ publish = [{target:?}] }}\nconfig = {{ fields = {fields:?}, target = {target:?} }}"
        ),
    )
}

async fn outbox(gw: &TestGateway) -> Value {
    let (s, v) = gw.get("/v1/admin/outbox").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

/// Polls `GET /v1/admin/outbox` until `done` holds.
async fn wait_outbox(gw: &TestGateway, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DELIVERY;
    loop {
        let v = outbox(gw).await;
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `GET {base}/v1/admin/outbox` of a gateway process until `done`
/// holds; past `deadline` it fails with `what` and the outbox.
async fn wait_outbox_at(
    c: &reqwest::Client,
    base: &str,
    deadline: Instant,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let v: Value = c
            .get(format!("{base}/v1/admin/outbox"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}. Outbox: {v:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until plugin `name` ran `calls` times (so its events were processed).
async fn wait_calls(gw: &TestGateway, name: &str, calls: u64) -> Value {
    let deadline = Instant::now() + DELIVERY;
    loop {
        let (_, v) = gw.get("/v1/admin/plugins").await;
        let p = v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or(Value::Null);
        if p["calls"].as_u64() >= Some(calls) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "plugin {name} did not reach {calls} calls: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_id(r: &Received) {
    assert!(
        r.id.len() == 32 && r.id.bytes().all(|b| b.is_ascii_hexdigit()),
        "notification_id {:?}",
        r.id
    );
}

/// 1. Feedback goes to the topic of its rating, exactly once each.
async fn feedback_is_routed_by_rating(b: Backend) {
    let moto = moto_or_skip!(b);
    let aws = Aws::new(&moto).await;
    let mut sinks = BTreeMap::new();
    let mut targets = Vec::new();
    for name in ["good", "bad", "neutral"] {
        let (arn, sink) = aws.topic_with_sink(name).await;
        sinks.insert(name, sink);
        targets.push((name, arn));
    }
    let targets: Vec<(&str, TargetKind, &str)> = targets
        .iter()
        .map(|(n, a)| (*n, TargetKind::Sns, a.as_str()))
        .collect();
    let gw = gateway(
        b,
        vec![router(&["good", "bad", "neutral"])],
        notify(&moto.endpoint(), &targets),
    )
    .await
    .expect("the store is available");
    aws.explain_with(&gw.base);
    gw.session("s1").await;
    for body in [
        json!({"rating": "up", "comment": "nice"}),
        json!({"rating": "down"}),
        json!({"rating": null}),
    ] {
        let (s, v) = gw.post("/v1/sessions/s1/feedbacks", body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let mut ids = std::collections::BTreeSet::new();
    for (name, rating) in [
        ("good", json!("up")),
        ("bad", json!("down")),
        ("neutral", Value::Null),
    ] {
        let got = aws.receive(&sinks[name], 1).await;
        let p = &got[0].payload;
        assert_eq!(p["session_id"], "s1", "{p}");
        assert_eq!(p["tenant"], "default", "{p}");
        assert_eq!(p["feedback"]["rating"], rating, "{p}");
        assert!(
            p["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{p}"
        );
        assert_id(&got[0]);
        ids.insert(got[0].id.clone());
    }
    assert_eq!(ids.len(), 3, "distinct notification ids");
    let v = wait_outbox(&gw, "three deliveries", |v| v["delivered"] == 3).await;
    assert_eq!(
        (v["pending"].as_u64(), v["dead"].as_u64()),
        (Some(0), Some(0)),
        "{v}"
    );
    assert_eq!(v["dispatcher_running"], true);
    aws.assert_quiet(&[&sinks["good"], &sinks["bad"], &sinks["neutral"]])
        .await;
    gw.stop().await;
}

/// 2. Metadata changes propagate only listed fields that changed; FIFO
///    queues get a deduplication id and the session as message group.
async fn metadata_changes_propagate_listed_fields_only(b: Backend) {
    let moto = moto_or_skip!(b);
    let aws = Aws::new(&moto).await;
    let (ui, _) = aws.queue("ui").await;
    let (fifo, _) = aws.queue("ui-status.fifo").await;
    let gw = gateway(
        b,
        vec![
            propagator("propagate", &["status", "priority"], "ui"),
            propagator("propagate-fifo", &["status"], "ui-fifo"),
        ],
        notify(
            &moto.endpoint(),
            &[
                ("ui", TargetKind::Sqs, &ui),
                ("ui-fifo", TargetKind::Sqs, &fifo),
            ],
        ),
    )
    .await
    .expect("the store is available");
    aws.explain_with(&gw.base);
    gw.post(
        "/v1/sessions",
        json!({"session_id": "s2", "metadata": {"status": "new", "notes": "a"}}),
    )
    .await;
    let patch = |body: Value| {
        let gw = &gw;
        async move {
            let (s, v) = gw.patch("/v1/sessions/s2/metadata", body).await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }
    };
    patch(json!({"status": "active", "notes": "b", "profile.tier": "gold"})).await; // status only
    patch(json!({"notes": "c"})).await; // nothing listed
    patch(json!({"status": "active"})).await; // listed, but unchanged
    patch(json!({"priority": 2, "notes": "d"})).await; // priority only
    let (s, v) = gw
        .delete("/v1/sessions/s2/metadata?keys=status,notes")
        .await;
    assert_eq!(s, StatusCode::OK, "{v}"); // status removed
    wait_calls(&gw, "propagate", 5).await;
    wait_calls(&gw, "propagate-fifo", 5).await;

    let mut got = aws.receive(&ui, 3).await;
    got.sort_by_key(|r| r.payload["event_id"].as_u64());
    let fields: Vec<(&Value, &Value)> = got
        .iter()
        .map(|r| (&r.payload["action"], &r.payload["fields"]))
        .collect();
    assert_eq!(
        fields,
        [
            (&json!("update"), &json!({"status": "active"})),
            (&json!("update"), &json!({"priority": 2})),
            (&json!("delete"), &json!({"status": null})),
        ]
    );
    for r in &got {
        assert_eq!(r.payload["session_id"], "s2");
        assert_id(r);
    }

    let got = aws.receive(&fifo, 2).await;
    assert_eq!(got[0].payload["fields"], json!({"status": "active"}));
    assert_eq!(got[1].payload["fields"], json!({"status": null}));
    for r in &got {
        assert_id(r);
        assert_eq!(
            r.group.as_deref(),
            Some("s2"),
            "message group is the session"
        );
        assert_eq!(
            r.dedup.as_deref(),
            Some(r.id.as_str()),
            "the deduplication id is the notification id"
        );
    }
    let v = wait_outbox(&gw, "five deliveries", |v| v["delivered"] == 5).await;
    assert_eq!(v["pending"], 0, "{v}");
    aws.assert_quiet(&[&ui, &fifo]).await;
    gw.stop().await;
}

/// 3. With AWS down, writes still succeed at once; once it is back (moto
///    restarted on the same port, resources recreated) everything arrives once.
async fn outage_delays_but_does_not_lose_or_block(b: Backend) {
    let mut moto = moto_or_skip!(b);
    let aws = Aws::new(&moto).await;
    let (good, sink) = aws.topic_with_sink("good").await;
    let (ui, _) = aws.queue("ui").await;
    let gate = Gate::new(moto.port).await;
    let gw = gateway(
        b,
        vec![
            router(&["good"]),
            propagator("propagate", &["status"], "ui"),
        ],
        notify(
            &gate.endpoint(),
            &[
                ("good", TargetKind::Sns, &good),
                ("ui", TargetKind::Sqs, &ui),
            ],
        ),
    )
    .await
    .expect("the store is available");
    aws.explain_with(&gw.base);
    gw.session("s3").await;

    moto.stop();
    let started = Instant::now();
    let (s, v) = gw
        .post("/v1/sessions/s3/feedbacks", json!({"rating": "up"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = gw
        .patch("/v1/sessions/s3/metadata", json!({"status": "open"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Not a latency assertion: a request that waited for delivery would
    // wait until AWS is back (max_attempts is 1000), i.e. past any bound.
    let writes = started.elapsed();
    assert!(
        writes < Duration::from_secs(15),
        "writes took {writes:?} with AWS down: do they wait for delivery?"
    );

    // Attempts fail and are rescheduled; nothing is dead-lettered.
    let v = wait_outbox(&gw, "failed attempts", |v| v["retried"].as_u64() >= Some(4)).await;
    assert_eq!(
        (
            v["pending"].as_u64(),
            v["dead"].as_u64(),
            v["delivered"].as_u64()
        ),
        (Some(2), Some(0), Some(0)),
        "{v}"
    );
    let errors: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["last_error"].as_str())
        .collect();
    assert_eq!(errors.len(), 2, "{v}");

    // Back up: recreate everything before the gateway may reach it again.
    gate.set_open(false);
    moto.restart().await;
    let aws = Aws::new(&moto).await;
    assert_eq!(
        aws.topic_with_sink("good").await,
        (good, sink.clone()),
        "moto ARNs/URLs are deterministic"
    );
    assert_eq!(aws.queue("ui").await.0, ui);
    aws.explain_with(&gw.base);
    gate.set_open(true);

    let got = aws.receive(&sink, 1).await;
    assert_eq!(got[0].payload["feedback"]["rating"], "up");
    let got = aws.receive(&ui, 1).await;
    assert_eq!(got[0].payload["fields"], json!({"status": "open"}));
    let v = wait_outbox(&gw, "both delivered", |v| v["delivered"] == 2).await;
    assert_eq!(v["pending"], 0, "{v}");
    aws.assert_quiet(&[&sink, &ui]).await;
    gw.stop().await;
}

/// `[notify]` timings of [`binary_config`].
const BIN_BACKOFF_MAX_MS: u64 = 200;
const BIN_SEND_TIMEOUT_MS: u64 = 2_000;
const BIN_LEASE_MS: u64 = 5_000;

fn binary_config(
    port: u16,
    storage: &str,
    endpoint: &str,
    targets: &[(&str, &str)],
    ui: &str,
) -> String {
    let mut t = String::new();
    for (name, arn) in targets {
        t.push_str(&format!(
            "[notify.targets.{name}]\nkind = \"sns\"\ntopic_arn = {arn:?}\n"
        ));
    }
    let wasm = |n: &str| common::plugin(n).display().to_string();
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
shutdown_grace_ms = 1000
{storage}
[plugins]
cache_dir = "data/cache"
watch = false
[notify]
backoff_base_ms = 50
backoff_max_ms = {BIN_BACKOFF_MAX_MS}
max_attempts = 1000
send_timeout_ms = {BIN_SEND_TIMEOUT_MS}
lease_ms = {BIN_LEASE_MS}
poll_interval_ms = 100
[notify.aws]
region = "{REGION}"
endpoint_url = "{endpoint}"
access_key_id = "testing"
secret_access_key = "testing"
{t}[notify.targets.ui]
kind = "sqs"
queue_url = "{ui}"

[[hooks]]
name = "router"
wasm = {router:?}
phase = "after"
events = ["feedback.add"]
grants = {{ publish = ["good", "bad", "neutral"] }}
timeout_ms = 10000

[[hooks]]
name = "propagate"
wasm = {prop:?}
phase = "after"
events = ["metadata.update", "metadata.delete"]
grants = {{ publish = ["ui"] }}
config = {{ fields = ["status"], target = "ui" }}
timeout_ms = 10000
"#,
        router = wasm("feedback_router"),
        prop = wasm("metadata_propagator"),
    )
}

/// 4. `kill -9` right after acknowledged writes: after a restart every
///    notification is delivered, once.
async fn sigkill_after_ack_loses_nothing(b: Backend) {
    let moto = moto_or_skip!(b);
    let aws = Aws::new(&moto).await;
    let mut sinks = BTreeMap::new();
    let mut arns = Vec::new();
    for name in ["good", "bad", "neutral"] {
        let (arn, sink) = aws.topic_with_sink(name).await;
        sinks.insert(name, sink);
        arns.push((name, arn));
    }
    let (ui, _) = aws.queue("ui").await;
    let targets: Vec<(&str, &str)> = arns.iter().map(|(n, a)| (*n, a.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Both runs use the same store (the same MongoDB database).
    let storage = common::storage_toml(b, "data/gateway.redb").expect("the store is available");

    // First run: AWS unreachable (nothing listens there), so nothing can be
    // delivered before the kill.
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let mut gw = GatewayProcess::start(
        dir.path(),
        &binary_config(port, &storage, &unreachable, &targets, &ui),
        "info,gateway=debug",
    )
    .await;
    let c = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", gw.base);
    let r = c
        .post(url("/v1/sessions"))
        .json(&json!({"session_id": "s4"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    for rating in [json!("up"), json!("down"), Value::Null] {
        let r = c
            .post(url("/v1/sessions/s4/feedbacks"))
            .json(&json!({"rating": rating}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let r = c
        .patch(url("/v1/sessions/s4/metadata"))
        .json(&json!({"status": "closed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    gw.kill();
    for sink in sinks.values() {
        assert!(
            aws.receive_once(sink).await.is_empty(),
            "delivered before the kill"
        );
    }

    // Second run, same data, AWS reachable. All leases below were taken
    // before the kill, so they bound the wait from this start: an event the
    // killed process had claimed but not completed is re-run once its claim
    // lease (`events::LEASE_MS`) expires; a notification it had claimed is
    // due once its outbox lease expires, and one that failed (AWS was
    // unreachable) once its backoff (at most `backoff_max_ms`) has passed;
    // an attempt then takes at most `send_timeout_ms`. On top: DELIVERY, for
    // the hooks, moto and this machine's load.
    let mut gw = GatewayProcess::start(
        dir.path(),
        &binary_config(port, &storage, &moto.endpoint(), &targets, &ui),
        "info,gateway=debug",
    )
    .await;
    aws.explain_with(&gw.base);
    let event_lease = gateway::events::LEASE_MS.unsigned_abs();
    let due = event_lease.max(BIN_LEASE_MS.max(BIN_BACKOFF_MAX_MS));
    let within = Duration::from_millis(due + BIN_SEND_TIMEOUT_MS) + DELIVERY;
    for (name, rating) in [
        ("good", json!("up")),
        ("bad", json!("down")),
        ("neutral", Value::Null),
    ] {
        let got = aws.receive_within(&sinks[name], 1, within).await;
        assert_eq!(got[0].payload["feedback"]["rating"], rating);
        assert_eq!(got[0].payload["session_id"], "s4");
    }
    let got = aws.receive_within(&ui, 1, within).await;
    assert_eq!(got[0].payload["fields"], json!({"status": "closed"}));
    wait_outbox_at(
        &c,
        &gw.base,
        Instant::now() + DELIVERY,
        "outbox not drained",
        |v| v["pending"] == 0,
    )
    .await;
    // Once each: no second copy of anything.
    aws.assert_quiet(&[&sinks["good"], &sinks["bad"], &sinks["neutral"], &ui])
        .await;
    gw.kill();
}

/// A TCP relay in front of MongoDB that passes everything on until the
/// gateway sends the update completing an event (`$set: {hooks_pending:
/// false}`), passes that message on too, and then freezes every connection:
/// nothing more reaches the server, so a `kill -9` lands exactly after that
/// statement (inside `complete_event`).
struct FreezeAfterComplete {
    port: u16,
    tripped: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezeAfterComplete {
    /// The BSON of `$set: {hooks_pending: false}`: the `$set` document (21
    /// bytes) holding one boolean `hooks_pending` that is false.
    const COMPLETE: &[u8] = b"\x03$set\x00\x15\x00\x00\x00\x08hooks_pending\x00\x00\x00";

    async fn new(upstream: (String, u16)) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tripped = Arc::new(AtomicBool::new(false));
        let flag = tripped.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flag = flag.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut c_read, mut c_write) = client.into_split();
                    let (mut u_read, mut u_write) = up.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut u_read, &mut c_write).await;
                    });
                    // Client to server, one wire-protocol message at a time
                    // (each starts with its length, little-endian i32).
                    loop {
                        let mut len = [0u8; 4];
                        if c_read.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let n = usize::try_from(i32::from_le_bytes(len)).unwrap_or(0);
                        let mut msg = len.to_vec();
                        msg.resize(n.max(4), 0);
                        if c_read.read_exact(&mut msg[4..]).await.is_err() {
                            return;
                        }
                        if flag.load(Ordering::SeqCst) {
                            // Frozen: hold the connection, send nothing on.
                            std::future::pending::<()>().await;
                        }
                        if u_write.write_all(&msg).await.is_err() {
                            return;
                        }
                        if msg
                            .windows(Self::COMPLETE.len())
                            .any(|w| w == Self::COMPLETE)
                        {
                            flag.store(true, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        Self {
            port,
            tripped,
            task,
        }
    }

    fn tripped(&self) -> bool {
        self.tripped.load(Ordering::SeqCst)
    }
}

impl Drop for FreezeAfterComplete {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Regression: a gateway killed inside `complete_event` (after its statements
/// reached MongoDB, before anything else did) must not leave the event locked
/// on the server. When `complete_event` was a multi-document transaction, the
/// killed gateway's open transaction held the event document until the
/// server's transaction lifetime (60 s, and on a lazily reaping server until
/// some other transaction came along) ended it; the restarted gateway's claim
/// of the event blocked on it, and with it every after-hook of every session.
/// Now the event's notification is queued within the claim lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_kill_inside_complete_event_does_not_stall_after_hooks() {
    let Some(uri) = common::mongo_uri() else {
        return;
    };
    let hostport = uri
        .strip_prefix("mongodb://")
        .and_then(|rest| rest.split(['/', '?']).next())
        .filter(|hp| !hp.contains(['@', ',']))
        .and_then(|hp| hp.rsplit_once(':'))
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .unwrap_or_else(|| {
            panic!("this test relays MongoDB traffic: MONGODB_URI must be mongodb://host:port, not {uri}")
        });
    let relay = FreezeAfterComplete::new(hostport).await;
    let database = format!("gw_test_{}", uuid::Uuid::new_v4().simple());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = |uri: &str| {
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"
[storage]
type = "mongodb"
[storage.mongodb]
uri = {uri:?}
database = {database:?}
server_selection_timeout_ms = 3000
[plugins]
cache_dir = "data/cache"
watch = false

[[hooks]]
name = "router"
wasm = {router:?}
phase = "after"
events = ["feedback.add"]
grants = {{ publish = ["good", "bad", "neutral"] }}
timeout_ms = 10000
"#,
            router = common::plugin("feedback_router").display().to_string(),
        )
    };

    // First run, through the relay: the write is acknowledged, its after-hook
    // runs, and the gateway is killed once the completion reached the server.
    let relayed = format!("mongodb://127.0.0.1:{}/?directConnection=true", relay.port);
    let mut gw = GatewayProcess::start(dir.path(), &config(&relayed), "info,gateway=debug").await;
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{}/v1/sessions", gw.base))
        .json(&json!({"session_id": "k1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = c
        .post(format!("{}/v1/sessions/k1/feedbacks", gw.base))
        .json(&json!({"rating": "up"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let deadline = Instant::now() + DELIVERY;
    while !relay.tripped() {
        assert!(
            Instant::now() < deadline,
            "the gateway never completed the feedback event:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.kill();

    // Second run, straight to MongoDB. The event was claimed before the kill,
    // so its lease bounds how long it may wait for a re-run.
    let mut gw = GatewayProcess::start(dir.path(), &config(&uri), "info,gateway=debug").await;
    let lease = Duration::from_millis(gateway::events::LEASE_MS.unsigned_abs());
    let what = format!(
        "the feedback's notification was not queued within the event lease \
         ({lease:?}) + {DELIVERY:?} after the restart: the event is still locked or pending"
    );
    let v = wait_outbox_at(
        &c,
        &gw.base,
        Instant::now() + lease + DELIVERY,
        &what,
        |v| v["pending"] == 1,
    )
    .await;
    assert_eq!(v["items"][0]["target"], "good", "{v:#}");
    // After-hooks keep running for new writes.
    let r = c
        .post(format!("{}/v1/sessions/k1/feedbacks", gw.base))
        .json(&json!({"rating": "down"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let what = "a new write's after-hook did not queue its notification";
    wait_outbox_at(&c, &gw.base, Instant::now() + DELIVERY, what, |v| {
        v["pending"] == 2
    })
    .await;
    gw.kill();
}

/// 5. and 6. An ungranted target is refused and queues nothing; a target
///    that always fails, or is not configured, is dead-lettered after
///    `max_attempts`; an operator retry delivers it once the queue exists;
///    admin shows depth and counters throughout.
async fn refusals_dead_letters_and_retry(b: Backend) {
    let moto = moto_or_skip!(b);
    let aws = Aws::new(&moto).await;
    let (good, sink) = aws.topic_with_sink("good").await;
    let (bad, bad_sink) = aws.topic_with_sink("bad").await;
    // A queue URL of the right shape whose queue does not exist (yet).
    let missing = format!("{}/123456789012/ui-missing", moto.endpoint());
    let mut cfg = notify(
        &moto.endpoint(),
        &[
            ("good", TargetKind::Sns, &good),
            ("bad", TargetKind::Sns, &bad),
            ("ui", TargetKind::Sqs, &missing),
        ],
    );
    cfg.max_attempts = 3;
    cfg.backoff_base_ms = 20;
    cfg.backoff_max_ms = 100;
    let gw = gateway(
        b,
        vec![
            // "bad" is configured but not granted to the router.
            router(&["good"]),
            propagator("propagate", &["status"], "ui"),
            // Granted, but (as after a config change) not configured.
            propagator("orphan", &["priority"], "orphan"),
        ],
        cfg,
    )
    .await
    .expect("the store is available");
    aws.explain_with(&gw.base);
    gw.session("s5").await;
    gw.post("/v1/sessions/s5/feedbacks", json!({"rating": "up"}))
        .await;
    gw.post("/v1/sessions/s5/feedbacks", json!({"rating": "down"}))
        .await;
    gw.patch(
        "/v1/sessions/s5/metadata",
        json!({"status": "open", "priority": 1}),
    )
    .await;

    let router = wait_calls(&gw, "router", 2).await;
    assert_eq!(router["publish_refused"], 1, "{router}");
    aws.receive(&sink, 1).await;

    // The counts and the item list are two reads: wait until both show the
    // two dead letters (a poll can fall between them as the last one dies).
    let v = wait_outbox(&gw, "two dead letters", |v| {
        let dead_items = v["items"].as_array().map_or(0, |items| {
            items.iter().filter(|i| i["state"] == "dead").count()
        });
        v["dead"] == 2 && dead_items == 2
    })
    .await;
    assert_eq!(v["pending"], 0, "{v}");
    assert_eq!(
        (
            v["delivered"].as_u64(),
            v["retried"].as_u64(),
            v["dead_lettered"].as_u64()
        ),
        (Some(1), Some(4), Some(2)),
        "{v}"
    );
    let items = v["items"].as_array().unwrap();
    assert!(
        items.iter().all(|i| i["target"] != "bad"),
        "nothing queued for the ungranted target: {v:#}"
    );
    let ui = items.iter().find(|i| i["target"] == "ui").expect("ui item");
    assert_eq!(
        (&ui["state"], &ui["attempts"]),
        (&json!("dead"), &json!(3)),
        "{ui}"
    );
    let err = ui["last_error"].as_str().unwrap();
    assert!(
        err.contains("ui-missing")
            && (err.contains("NonExistentQueue") || err.contains("QueueDoesNotExist")),
        "{err}"
    );
    let orphan = items
        .iter()
        .find(|i| i["target"] == "orphan")
        .expect("orphan item");
    assert_eq!(
        orphan["last_error"], "target \"orphan\" is not configured in [notify.targets]",
        "{orphan}"
    );
    assert_eq!(orphan["attempts"], 3);
    let (_, dead) = gw.get("/v1/admin/outbox?state=dead").await;
    assert_eq!(dead["items"].as_array().unwrap().len(), 2, "{dead}");

    // The operator creates the queue and re-queues the dead letter.
    let (url, _) = aws.queue("ui-missing").await;
    assert_eq!(url, missing);
    let id = ui["id"].as_str().unwrap();
    let (s, item) = gw
        .post(&format!("/v1/admin/outbox/{id}/retry"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{item}");
    assert_eq!(
        (&item["state"], &item["attempts"]),
        (&json!("pending"), &json!(0)),
        "{item}"
    );
    let got = aws.receive(&url, 1).await;
    assert_eq!(got[0].id, id, "the notification id survives the retry");
    assert_eq!(got[0].payload["fields"], json!({"status": "open"}));
    let v = wait_outbox(&gw, "retried item delivered", |v| v["delivered"] == 2).await;
    assert_eq!(
        (
            v["pending"].as_u64(),
            v["dead"].as_u64(),
            v["dead_lettered"].as_u64()
        ),
        (Some(0), Some(1), Some(2)),
        "{v}"
    );
    let (s, _) = gw.post("/v1/admin/outbox/nope/retry", json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Nothing reached the ungranted target, nothing arrived twice.
    aws.assert_quiet(&[&sink, &bad_sink, &url]).await;
    gw.stop().await;
}

/// 6. Without `[notify.targets]` the dispatcher does not run: notifications
///    stay pending and admin shows the depth (no AWS needed).
async fn without_targets_notifications_stay_pending(b: Backend) {
    let Some(gw) = gateway(b, vec![router(&["good", "bad"])], NotifyConfig::default()).await else {
        return;
    };
    gw.session("s6").await;
    gw.post("/v1/sessions/s6/feedbacks", json!({"rating": "up"}))
        .await;
    gw.post("/v1/sessions/s6/feedbacks", json!({"rating": "down"}))
        .await;
    let v = wait_outbox(&gw, "two pending", |v| v["pending"] == 2).await;
    assert_eq!(v["dispatcher_running"], false, "{v}");
    let v = outbox(&gw).await;
    assert_eq!(
        (
            v["pending"].as_u64(),
            v["dead"].as_u64(),
            v["delivered"].as_u64(),
            v["retried"].as_u64(),
            v["dead_lettered"].as_u64()
        ),
        (Some(2), Some(0), Some(0), Some(0), Some(0)),
        "{v}"
    );
    assert!(
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["attempts"] == 0 && i["state"] == "pending"),
        "{v}"
    );
    // The `state` and `limit` filters.
    let items = |path: &'static str| {
        let gw = &gw;
        async move {
            let (s, v) = gw.get(path).await;
            assert_eq!(s, StatusCode::OK, "{path}: {v}");
            v["items"].as_array().unwrap().len()
        }
    };
    assert_eq!(items("/v1/admin/outbox?state=pending").await, 2);
    assert_eq!(items("/v1/admin/outbox?state=dead").await, 0);
    assert_eq!(items("/v1/admin/outbox?state=pending&limit=1").await, 1);
    assert_eq!(items("/v1/admin/outbox?limit=1").await, 1);
    for bad in ["?state=gone", "?limit=x", "?status=pending"] {
        let (s, v) = gw.get(&format!("/v1/admin/outbox{bad}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        common::assert_error(&v, "invalid_query");
    }
    gw.stop().await;
}

on_both_stores!(
    feedback_is_routed_by_rating,
    metadata_changes_propagate_listed_fields_only,
    outage_delays_but_does_not_lose_or_block,
    sigkill_after_ack_loses_nothing,
    refusals_dead_letters_and_retry,
    without_targets_notifications_stay_pending
);
