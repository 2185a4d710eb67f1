//! Opening the store `[storage]` names.

use std::sync::Arc;

use anyhow::Context as _;

use super::SessionStore;
use super::embedded::EmbeddedStore;
#[cfg(feature = "mongodb")]
use super::mongo::MongoStore;
#[cfg(feature = "mongodb")]
use crate::config::redact_uri;
use crate::config::{Config, StorageType};

/// Opens the store the config names.
///
/// # Errors
/// When the store cannot be opened or reached.
pub async fn open(config: &Config) -> anyhow::Result<Arc<dyn SessionStore>> {
    Ok(match config.storage.kind {
        StorageType::Embedded => {
            let path = &config.storage.embedded.path;
            tracing::info!(path = %path.display(), "opening embedded store");
            Arc::new(
                EmbeddedStore::open(path, config.storage.embedded.cache_mb)
                    .with_context(|| format!("opening {}", path.display()))?
                    .with_max_read_bytes(config.server.max_response_bytes),
            )
        }
        #[cfg(not(feature = "mongodb"))]
        StorageType::Mongodb => anyhow::bail!(
            "storage.type = \"mongodb\" needs the `mongodb` feature, which this binary was built without; \
             build the whole gateway with `cargo build --release` (scripts/run.sh does so when the config asks for MongoDB)"
        ),
        #[cfg(feature = "mongodb")]
        StorageType::Mongodb => {
            let m = &config.storage.mongodb;
            tracing::info!(uri = %redact_uri(&m.uri), database = %m.database, "connecting to MongoDB");
            Arc::new(
                MongoStore::connect(m)
                    .await
                    .context("connecting to MongoDB")?
                    .with_max_read_bytes(config.server.max_response_bytes),
            )
        }
    })
}
