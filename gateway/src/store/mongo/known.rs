//! What the fast write path knows of sessions: [`Known`] is a session's
//! state as of its `seq` (uid, type, agents' versions and message counts,
//! feedback count, metadata), kept per session key in [`KnownSessions`] after
//! this gateway writes the session (or read once, one `find`). The fast path
//! (`fast_path.rs`) builds writes from it; any write that takes the per-write
//! transaction drops the entry (`txn.rs`).

use std::collections::HashMap;
use std::sync::Mutex;

use mongodb::bson::Document;

use super::codec::{
    agent_created_at, agent_summary, dec, doc_to_obj, get_str, int, seq_of, uid_of,
};
use crate::model::JsonObject;
use crate::store::StoreResult;

/// Sessions whose state is kept, at most (past it the cache starts over).
const MAX_KNOWN: usize = 4096;
/// Metadata larger than this (JSON bytes) is not kept: its changes take the
/// per-write transaction.
const MAX_KNOWN_METADATA: usize = 8 * 1024;

/// One agent as of the session's `seq`.
#[derive(Debug, Clone, Copy)]
pub(super) struct KnownAgent {
    /// Version (`If-Match`).
    pub v: u64,
    /// Message count = the next message id.
    pub n: u64,
    /// Creation time: when this gateway created the agent, or the session
    /// document's copy of it (`agents.<id>.c`; absent for agents written
    /// before the copy was kept, whose puts take the per-write transaction,
    /// which adds it).
    pub created_at: Option<i64>,
}

/// A session's state as of `seq`.
#[derive(Debug, Clone)]
pub(super) struct Known {
    pub uid: i64,
    pub seq: u64,
    pub session_type: String,
    pub agents: HashMap<String, KnownAgent>,
    pub feedbacks: i64,
    /// `None` when too large to keep.
    pub metadata: Option<JsonObject>,
}

pub(super) fn small(m: &JsonObject) -> bool {
    serde_json::to_vec(m).is_ok_and(|v| v.len() <= MAX_KNOWN_METADATA)
}

impl Known {
    pub(super) fn from_doc(d: &Document) -> StoreResult<Self> {
        let mut agents = HashMap::new();
        if let Ok(a) = d.get_document("agents") {
            for (field, _) in a {
                if let Some((v, n)) = agent_summary(d, field) {
                    let aid = dec(field);
                    agents.insert(
                        aid,
                        KnownAgent {
                            v,
                            n,
                            created_at: agent_created_at(d, field),
                        },
                    );
                }
            }
        }
        let metadata = d
            .get_document("metadata")
            .map(doc_to_obj)
            .unwrap_or_default();
        Ok(Self {
            uid: uid_of(d)?,
            seq: seq_of(d)?,
            session_type: get_str(d, "session_type", "session document")?.to_owned(),
            agents,
            feedbacks: int(d.get("feedbacks")).unwrap_or(0),
            metadata: small(&metadata).then_some(metadata),
        })
    }
}

/// What this gateway knows, by session key.
#[derive(Default)]
pub(super) struct KnownSessions {
    map: Mutex<HashMap<String, Known>>,
}

impl KnownSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the entry out (the caller holds the session's write turn).
    pub(super) fn take(&self, key: &str) -> Option<Known> {
        self.lock().remove(key)
    }

    pub(super) fn put(&self, key: String, k: Known) {
        let mut map = self.lock();
        if map.len() >= MAX_KNOWN && !map.contains_key(&key) {
            map.clear();
        }
        map.insert(key, k);
    }

    /// Drops what is known of a session (after a write that did not go
    /// through the fast path).
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}
