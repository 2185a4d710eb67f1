//! Compiling components, through an on-disk cache of compiled artifacts.
//!
//! Artifacts are cached under the wasm's sha256 and the engine's compatibility
//! hash, with a checksum sidecar; only files the gateway wrote itself are ever
//! deserialized.

use std::hash::{Hash, Hasher};
use std::path::Path;

use anyhow::Context;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::engine::Runtime;

impl Runtime {
    fn cache_key(&self, sha: &str) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!("{sha}-{:016x}", h.finish())
    }

    /// Compiles a component, through the on-disk artifact cache.
    ///
    /// # Errors
    /// When the bytes are not a valid component for this engine.
    pub fn compile(&self, bytes: &[u8], sha: &str) -> anyhow::Result<Component> {
        self.components
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = self.cache_key(sha);
        let art = self.cache_dir.join(format!("{key}.cwasm"));
        let sum = self.cache_dir.join(format!("{key}.sha256"));
        if let Some(c) = self.load_cached(&art, &sum) {
            return Ok(c);
        }
        let compiled = self.engine.precompile_component(bytes)?;
        if let Err(e) = write_artifact(&self.cache_dir, &art, &sum, &compiled) {
            tracing::warn!(error = %e, dir = %self.cache_dir.display(), "cannot cache compiled plugin");
        }
        // Deserializing what we just produced in memory is as safe as compiling.
        self.deserialize(&compiled)
    }

    #[allow(unsafe_code)]
    fn deserialize(&self, compiled: &[u8]) -> anyhow::Result<Component> {
        // SAFETY: `compiled` was produced by `precompile_component` on this
        // very engine a moment ago, never read from outside the process.
        unsafe { Component::deserialize(&self.engine, compiled) }.map_err(anyhow::Error::from)
    }

    #[allow(unsafe_code)]
    fn load_cached(&self, art: &Path, sum: &Path) -> Option<Component> {
        let expected = std::fs::read_to_string(sum).ok()?;
        let bytes = std::fs::read(art).ok()?;
        if hex::encode(Sha256::digest(&bytes)) != expected.trim() {
            tracing::warn!(file = %art.display(), "cached plugin artifact fails its checksum; recompiling");
            return None;
        }
        // SAFETY: the artifact lives in the gateway's private cache directory,
        // was written by `write_artifact` from `precompile_component` output of
        // an engine with the same compatibility hash (part of the file name),
        // and its checksum matches the sidecar written with it.
        unsafe { Component::deserialize(&self.engine, &bytes) }.ok()
    }
}

fn write_artifact(dir: &Path, art: &Path, sum: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = art.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::write(sum, hex::encode(Sha256::digest(bytes)))?;
    std::fs::rename(tmp, art)
}

/// Reads a wasm file and returns its bytes and sha256 (hex).
///
/// # Errors
/// When the file cannot be read.
pub fn read_wasm(path: &Path) -> anyhow::Result<(Vec<u8>, String)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let sha = hex::encode(Sha256::digest(&bytes));
    Ok((bytes, sha))
}
