//! Delivery through the AWS SDK: SNS `Publish` and SQS `SendMessage` (the
//! `aws` feature).

use std::time::Duration;

use async_trait::async_trait;

use super::{ID_ATTRIBUTE, Transport};
use crate::config::{AwsConfig, NotifyConfig, NotifyTarget, TargetKind};
use crate::store::OutboxItem;

/// Loads the AWS SDK configuration for `[notify.aws]`: explicit settings
/// first, the standard AWS chain for the rest. SDK-level retries are off (the
/// dispatcher retries with its own backoff and counts each attempt) and every
/// call is bounded by `timeout`.
///
/// # Errors
/// When no region is configured or found in the environment.
pub async fn sdk_config(
    aws: &AwsConfig,
    timeout: Duration,
) -> anyhow::Result<aws_config::SdkConfig> {
    use aws_config::{BehaviorVersion, Region, retry::RetryConfig, timeout::TimeoutConfig};
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};

    // rustls with ring: the crypto the rest of the binary already links.
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(timeout.min(Duration::from_secs(3)))
                .operation_timeout(timeout)
                .build(),
        );
    if let Some(region) = &aws.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &aws.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let (Some(id), Some(secret)) = (&aws.access_key_id, &aws.secret_access_key) {
        let creds = aws_sdk_sqs::config::Credentials::new(
            id,
            secret,
            aws.session_token.clone(),
            None,
            "gateway.toml",
        );
        loader = loader.credentials_provider(creds);
    }
    let sdk = loader.load().await;
    if sdk.region().is_none() {
        anyhow::bail!("no AWS region: set notify.aws.region or AWS_REGION");
    }
    Ok(sdk)
}

/// Delivers through the AWS SDK: SNS `Publish` and SQS `SendMessage`.
pub struct AwsTransport {
    sns: aws_sdk_sns::Client,
    sqs: aws_sdk_sqs::Client,
}

impl AwsTransport {
    /// Builds the SNS and SQS clients for `[notify.aws]`.
    ///
    /// # Errors
    /// As [`sdk_config`].
    pub async fn new(cfg: &NotifyConfig) -> anyhow::Result<Self> {
        let sdk = sdk_config(&cfg.aws, Duration::from_millis(cfg.send_timeout_ms)).await?;
        Ok(Self {
            sns: aws_sdk_sns::Client::new(&sdk),
            sqs: aws_sdk_sqs::Client::new(&sdk),
        })
    }
}

/// Renders an SDK error with its service code and message when there is one.
fn describe<E, R>(e: &aws_sdk_sqs::error::SdkError<E, R>) -> String
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_sqs::error::SdkError;
    match e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            match (err.code(), err.message()) {
                (Some(code), Some(msg)) => format!("{code}: {msg}"),
                (Some(code), None) => code.to_owned(),
                _ => aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
            }
        }
        other => aws_sdk_sqs::error::DisplayErrorContext(other).to_string(),
    }
}

#[async_trait]
impl Transport for AwsTransport {
    async fn send(&self, target: &NotifyTarget, item: &OutboxItem) -> Result<(), String> {
        let fifo = target.is_fifo();
        match target.kind {
            TargetKind::Sns => {
                let attr = aws_sdk_sns::types::MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(&item.id)
                    .build()
                    .map_err(|e| e.to_string())?;
                let mut req = self
                    .sns
                    .publish()
                    .topic_arn(target.address())
                    .message(&item.payload)
                    .message_attributes(ID_ATTRIBUTE, attr);
                if fifo {
                    req = req
                        .message_deduplication_id(&item.id)
                        .message_group_id(&item.session_id);
                }
                req.send()
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("SNS publish to {}: {}", target.address(), describe(&e)))
            }
            TargetKind::Sqs => {
                let attr = aws_sdk_sqs::types::MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(&item.id)
                    .build()
                    .map_err(|e| e.to_string())?;
                let mut req = self
                    .sqs
                    .send_message()
                    .queue_url(target.address())
                    .message_body(&item.payload)
                    .message_attributes(ID_ATTRIBUTE, attr);
                if fifo {
                    req = req
                        .message_deduplication_id(&item.id)
                        .message_group_id(&item.session_id);
                }
                req.send()
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("SQS send to {}: {}", target.address(), describe(&e)))
            }
        }
    }
}
