//! `[notify]`: delivery of the notifications after-hooks publish to SNS/SQS.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::HookConfig;

/// `[notify]`: delivery of the notifications after-hooks `publish`, from the
/// durable outbox to Amazon SNS topics and SQS queues (see [`crate::outbox`]).
///
/// Plugins publish to logical target names; `[notify.targets.<name>]` maps
/// each name to a topic or queue. With no targets the dispatcher is not
/// started and published notifications stay pending in the outbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Most deliveries in flight at once.
    pub concurrency: usize,
    /// Attempts before a notification is dead-lettered (kept in the store
    /// until an operator retries it).
    pub max_attempts: u32,
    /// Base of the exponential backoff between attempts: attempt `n` waits a
    /// random time in `[0, min(backoff_max_ms, backoff_base_ms * 2^(n-1))]`
    /// ("full jitter").
    pub backoff_base_ms: u64,
    /// Ceiling of the backoff.
    pub backoff_max_ms: u64,
    /// Budget of one delivery attempt (connect, send, answer).
    pub send_timeout_ms: u64,
    /// How long a claimed notification stays leased to this gateway; must
    /// exceed `send_timeout_ms` so that no other gateway claims it mid-send.
    pub lease_ms: u64,
    /// How often the dispatcher looks for due notifications when nothing
    /// wakes it and the store cannot tell when the next is due (MongoDB,
    /// which other gateways write too). On the embedded store it sleeps
    /// until the next item is due instead.
    pub poll_interval_ms: u64,
    /// How to reach AWS.
    pub aws: AwsConfig,
    /// Logical target name -> SNS topic or SQS queue.
    pub targets: BTreeMap<String, NotifyTarget>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            concurrency: 8,
            max_attempts: 10,
            backoff_base_ms: 500,
            backoff_max_ms: 300_000,
            send_timeout_ms: 10_000,
            lease_ms: 60_000,
            poll_interval_ms: 500,
            aws: AwsConfig::default(),
            targets: BTreeMap::new(),
        }
    }
}

/// `[notify.aws]`: region, endpoint and (for tests only) static credentials.
/// Anything not set here comes from the standard AWS chain (environment,
/// shared config/credentials files, web identity, ECS/EC2 instance roles).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    /// Region, e.g. `"eu-west-1"`; otherwise `AWS_REGION` or the profile's.
    pub region: Option<String>,
    /// Endpoint for both SNS and SQS, e.g. `"http://127.0.0.1:5000"` for
    /// moto or LocalStack; otherwise the regional AWS endpoints.
    pub endpoint_url: Option<String>,
    /// Static access key id. Intended for local emulators and tests only;
    /// in production leave it out and use the standard credential chain.
    pub access_key_id: Option<String>,
    /// Static secret key (with `access_key_id`).
    pub secret_access_key: Option<String>,
    /// Optional session token (with the static keys).
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AwsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsConfig")
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "***"),
            )
            .field("session_token", &self.session_token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// What kind of destination a notification target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// An SNS topic (`topic_arn`).
    Sns,
    /// An SQS queue (`queue_url`).
    Sqs,
}

/// `[notify.targets.<name>]`: `kind = "sns"` with `topic_arn`, or
/// `kind = "sqs"` with `queue_url`. A name ending in `.fifo` selects FIFO
/// semantics (deduplication id and message group).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyTarget {
    /// `"sns"` or `"sqs"`.
    pub kind: TargetKind,
    /// The topic (SNS targets).
    #[serde(default)]
    pub topic_arn: Option<String>,
    /// The queue (SQS targets).
    #[serde(default)]
    pub queue_url: Option<String>,
}

impl NotifyTarget {
    /// The topic ARN or queue URL (validated to be present for the kind).
    pub fn address(&self) -> &str {
        match self.kind {
            TargetKind::Sns => self.topic_arn.as_deref().unwrap_or_default(),
            TargetKind::Sqs => self.queue_url.as_deref().unwrap_or_default(),
        }
    }

    /// Whether the topic or queue is FIFO (its name ends with `.fifo`).
    pub fn is_fifo(&self) -> bool {
        self.address().ends_with(".fifo")
    }

    fn validate(&self, name: &str) -> Result<(), String> {
        let (needed, other, other_kind) = match self.kind {
            TargetKind::Sns => ("topic_arn", &self.queue_url, "queue_url"),
            TargetKind::Sqs => ("queue_url", &self.topic_arn, "topic_arn"),
        };
        let kind = match self.kind {
            TargetKind::Sns => "sns",
            TargetKind::Sqs => "sqs",
        };
        if other.is_some() {
            return Err(format!(
                "notify.targets.{name}: {other_kind} is not a key of kind = {kind:?} (it needs {needed})"
            ));
        }
        let address = match self.kind {
            TargetKind::Sns => &self.topic_arn,
            TargetKind::Sqs => &self.queue_url,
        };
        let Some(address) = address.as_deref().filter(|a| !a.is_empty()) else {
            return Err(format!(
                "notify.targets.{name}: kind = {kind:?} needs {needed}"
            ));
        };
        let ok = match self.kind {
            // arn:partition:sns:region:account:topic
            TargetKind::Sns => {
                let parts: Vec<&str> = address.split(':').collect();
                parts.len() == 6 && parts[0] == "arn" && parts[2] == "sns" && !parts[5].is_empty()
            }
            TargetKind::Sqs => {
                (address.starts_with("https://") || address.starts_with("http://"))
                    && address
                        .trim_end_matches('/')
                        .rsplit('/')
                        .next()
                        .is_some_and(|q| !q.is_empty() && !q.contains(':'))
            }
        };
        if !ok {
            let form = match self.kind {
                TargetKind::Sns => "arn:aws:sns:<region>:<account>:<topic>",
                TargetKind::Sqs => "https://sqs.<region>.amazonaws.com/<account>/<queue>",
            };
            return Err(format!(
                "notify.targets.{name}: {needed} {address:?} is not of the form {form}"
            ));
        }
        Ok(())
    }
}

impl NotifyConfig {
    /// Checks `[notify]`, and that every hook's publish grant names a
    /// configured target (only when targets are configured at all, so a
    /// config without `[notify]` still loads and notifications stay pending).
    ///
    /// # Errors
    /// A message naming the offending setting.
    pub fn validate(&self, hooks: &[HookConfig]) -> Result<(), String> {
        let invalid = |m: String| Err(m);
        let n = self;
        if n.concurrency == 0 || n.max_attempts == 0 {
            return invalid("notify.concurrency and notify.max_attempts must be at least 1".into());
        }
        if n.backoff_base_ms == 0 || n.backoff_max_ms < n.backoff_base_ms {
            return invalid(
                "notify.backoff_base_ms must be positive and at most notify.backoff_max_ms".into(),
            );
        }
        if n.send_timeout_ms == 0 || n.poll_interval_ms == 0 {
            return invalid(
                "notify.send_timeout_ms and notify.poll_interval_ms must be positive".into(),
            );
        }
        if n.lease_ms <= n.send_timeout_ms {
            return invalid(format!(
                "notify.lease_ms ({}) must exceed notify.send_timeout_ms ({}), or a slow send could be claimed twice",
                n.lease_ms, n.send_timeout_ms
            ));
        }
        let aws = &n.aws;
        if aws.access_key_id.is_some() != aws.secret_access_key.is_some() {
            return invalid("notify.aws: access_key_id and secret_access_key go together".into());
        }
        if aws.session_token.is_some() && aws.access_key_id.is_none() {
            return invalid(
                "notify.aws: session_token needs access_key_id and secret_access_key".into(),
            );
        }
        if aws.region.as_deref() == Some("") {
            return invalid("notify.aws.region must not be empty".into());
        }
        if let Some(url) = &aws.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return invalid(format!(
                "notify.aws.endpoint_url {url:?} must start with http:// or https://"
            ));
        }
        for (name, target) in &n.targets {
            target.validate(name)?;
        }
        if n.targets.is_empty() {
            return Ok(());
        }
        for h in hooks {
            for g in &h.grants.publish {
                if !n.targets.contains_key(g) {
                    let known: Vec<&str> = n.targets.keys().map(String::as_str).collect();
                    return invalid(format!(
                        "hooks.{}: grants.publish names target {g:?}, which is not configured in [notify.targets] (configured: {})",
                        h.name,
                        known.join(", ")
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const TARGETS: &str = r#"
[notify.aws]
region = "us-east-1"
[notify.targets.good]
kind = "sns"
topic_arn = "arn:aws:sns:us-east-1:123456789012:good"
[notify.targets.ui]
kind = "sqs"
queue_url = "https://sqs.us-east-1.amazonaws.com/123456789012/ui.fifo"
"#;

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_and_targets() {
        let cfg = Config::parse("").unwrap();
        assert!(cfg.notify.targets.is_empty());
        assert_eq!(cfg.notify.max_attempts, 10);
        let cfg = Config::parse(TARGETS).unwrap();
        let good = &cfg.notify.targets["good"];
        assert_eq!(
            (good.kind, good.address(), good.is_fifo()),
            (
                TargetKind::Sns,
                "arn:aws:sns:us-east-1:123456789012:good",
                false
            )
        );
        let ui = &cfg.notify.targets["ui"];
        assert_eq!(ui.kind, TargetKind::Sqs);
        assert!(ui.is_fifo());
    }

    #[test]
    fn targets_need_the_keys_of_their_kind() {
        let e = err("[notify.targets.good]\nkind = \"sns\"\n");
        assert!(
            e.contains("notify.targets.good: kind = \"sns\" needs topic_arn"),
            "{e}"
        );
        let e = err("[notify.targets.ui]\nkind = \"sqs\"\ntopic_arn = \"arn:aws:sns:r:1:t\"\n");
        assert!(
            e.contains("notify.targets.ui: topic_arn is not a key of kind = \"sqs\""),
            "{e}"
        );
        let e = err("[notify.targets.ui]\nkind = \"sqs\"\nqueue_url = \"ui\"\n");
        assert!(
            e.contains("notify.targets.ui: queue_url \"ui\" is not of the form"),
            "{e}"
        );
        let e = err("[notify.targets.good]\nkind = \"sns\"\ntopic_arn = \"good\"\n");
        assert!(
            e.contains("notify.targets.good: topic_arn \"good\" is not of the form"),
            "{e}"
        );
        let e = err("[notify.targets.x]\nkind = \"sms\"\n");
        assert!(e.contains("sms"), "{e}");
        let e = err("[notify.targets.x]\nkind = \"sqs\"\nqueue = \"x\"\n");
        assert!(e.contains("queue"), "{e}");
    }

    #[test]
    fn grants_must_name_configured_targets() {
        let hook = "[[hooks]]\nname = \"router\"\nwasm = \"r.wasm\"\nphase = \"after\"\nevents = [\"feedback.add\"]\ngrants = { publish = [\"good\", \"neutral\"] }\n";
        // Without targets the grants are not checked: notifications stay pending.
        Config::parse(hook).unwrap();
        let e = err(&format!("{TARGETS}\n{hook}"));
        assert!(
            e.contains("hooks.router: grants.publish names target \"neutral\""),
            "{e}"
        );
        assert!(e.contains("configured: good, ui"), "{e}");
    }

    #[test]
    fn delivery_settings_are_checked() {
        assert!(err("[notify]\nconcurrency = 0\n").contains("notify.concurrency"));
        assert!(
            err("[notify]\nbackoff_base_ms = 10\nbackoff_max_ms = 5\n").contains("backoff_base_ms")
        );
        assert!(err("[notify]\nlease_ms = 1000\nsend_timeout_ms = 1000\n").contains("lease_ms"));
        assert!(err("[notify.aws]\naccess_key_id = \"a\"\n").contains("go together"));
        assert!(err("[notify.aws]\nendpoint_url = \"127.0.0.1:5000\"\n").contains("endpoint_url"));
        assert!(err("[notify]\nbatch = 1\n").contains("batch"));
    }

    /// The commented-out targets and hooks of the shipped gateway.toml are
    /// consistent: enabled together, they load.
    #[test]
    fn shipped_notify_examples_load_when_enabled() {
        let mut on = false;
        let mut text = String::new();
        for line in include_str!("../../../gateway.toml").lines() {
            if line == "# [notify.targets.good]" {
                on = true;
            } else if line.trim().is_empty() {
                on = false;
            }
            let line = if on {
                line.strip_prefix("# ")
                    .or_else(|| line.strip_prefix('#'))
                    .unwrap_or(line)
            } else {
                line
            };
            if line.starts_with("# Notification examples") {
                on = true;
            }
            text.push_str(line);
            text.push('\n');
        }
        let cfg = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(cfg.notify.targets.len(), 4);
        assert!(cfg.hooks.iter().any(|h| h.name == "route-feedback"));
        assert!(cfg.hooks.iter().any(|h| h.name == "propagate-metadata"));
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let cfg = Config::parse(
            "[notify.aws]\naccess_key_id = \"AKID\"\nsecret_access_key = \"s3cret\"\n",
        )
        .unwrap();
        let s = format!("{:?}", cfg.notify.aws);
        assert!(s.contains("AKID") && !s.contains("s3cret"), "{s}");
    }
}
