//! The notification outbox: items keyed by their id, written with the
//! completion of their event (`events.rs`), claimed with a lease. The
//! pending ones are also indexed by when they are due ([`OUTBOX_DUE`]), so a
//! claim reads the items it takes, not the whole outbox.

use async_trait::async_trait;
use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};

use super::EmbeddedStore;
use super::tables::{META, OUTBOX, OUTBOX_DUE, from_json, internal, open_read, to_json};
use crate::store::{NextDue, OutboxItem, OutboxQueue, OutboxState, StoreResult, outbox_not_found};

/// The `META` key recording that [`OUTBOX_DUE`] was built (files written
/// before it existed get it on their next open).
const DUE_INDEXED: &str = "outbox_due_indexed";

/// Stores `item`, replacing `old` (the item stored under its id, if any),
/// and keeps the due index in step.
pub(super) fn put_item(
    txn: &WriteTransaction,
    item: &OutboxItem,
    old: Option<&OutboxItem>,
) -> StoreResult<()> {
    let mut due = txn.open_table(OUTBOX_DUE).map_err(internal)?;
    if let Some(o) = old.filter(|o| o.state == OutboxState::Pending) {
        due.remove((o.next_attempt_at, o.id.as_str()))
            .map_err(internal)?;
    }
    if item.state == OutboxState::Pending {
        due.insert((item.next_attempt_at, item.id.as_str()), ())
            .map_err(internal)?;
    }
    txn.open_table(OUTBOX)
        .map_err(internal)?
        .insert(item.id.as_str(), to_json(item)?.as_slice())
        .map_err(internal)?;
    Ok(())
}

/// The item stored under `id`, if any.
fn get_item(txn: &WriteTransaction, id: &str) -> StoreResult<Option<OutboxItem>> {
    txn.open_table(OUTBOX)
        .map_err(internal)?
        .get(id)
        .map_err(internal)?
        .map(|v| from_json::<OutboxItem>(v.value()))
        .transpose()
}

/// Builds the due index from the outbox, once per file (on open).
pub(super) fn index_outbox(txn: &WriteTransaction) -> StoreResult<()> {
    let mut meta = txn.open_table(META).map_err(internal)?;
    if meta.get(DUE_INDEXED).map_err(internal)?.is_some() {
        return Ok(());
    }
    let mut due = txn.open_table(OUTBOX_DUE).map_err(internal)?;
    for row in txn
        .open_table(OUTBOX)
        .map_err(internal)?
        .iter()
        .map_err(internal)?
    {
        let (_, v) = row.map_err(internal)?;
        let item: OutboxItem = from_json(v.value())?;
        if item.state == OutboxState::Pending {
            due.insert((item.next_attempt_at, item.id.as_str()), ())
                .map_err(internal)?;
        }
    }
    meta.insert(DUE_INDEXED, 1).map_err(internal)?;
    Ok(())
}

impl EmbeddedStore {
    /// When the earliest pending item is due, from the index in a snapshot.
    async fn earliest_outbox_due(&self) -> StoreResult<Option<i64>> {
        self.read(|txn| {
            Ok(open_read(txn, OUTBOX_DUE)?
                .first()
                .map_err(internal)?
                .map(|(k, _)| k.value().0))
        })
        .await
    }
}

#[async_trait]
impl OutboxQueue for EmbeddedStore {
    async fn claim_outbox(
        &self,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<OutboxItem>> {
        // Looked up in a snapshot first, so that a poll with nothing due
        // takes no writer turn (a commit, with its fsync).
        if self.earliest_outbox_due().await?.is_none_or(|at| at > now) {
            return Ok(Vec::new());
        }
        self.write(move |txn| {
            let due: Vec<(i64, String)> = txn
                .open_table(OUTBOX_DUE)
                .map_err(internal)?
                .range(..(now.saturating_add(1), ""))
                .map_err(internal)?
                .take(limit)
                .map(|row| row.map(|(k, _)| (k.value().0, k.value().1.to_owned())))
                .collect::<Result<_, _>>()
                .map_err(internal)?;
            let mut claimed = Vec::with_capacity(due.len());
            for (at, id) in due {
                let item = get_item(txn, &id)?
                    .filter(|i| i.state == OutboxState::Pending && i.next_attempt_at == at);
                let Some(item) = item else {
                    // An entry out of step with its item would be due for
                    // ever (a poller spinning on it): drop it.
                    txn.open_table(OUTBOX_DUE)
                        .map_err(internal)?
                        .remove((at, id.as_str()))
                        .map_err(internal)?;
                    continue;
                };
                let mut leased = item.clone();
                leased.next_attempt_at = now + lease_ms;
                put_item(txn, &leased, Some(&item))?;
                claimed.push(item);
            }
            Ok(claimed)
        })
        .await
    }

    async fn next_outbox_due(&self) -> StoreResult<NextDue> {
        // Only this process writes the file (redb locks it).
        let due = self.earliest_outbox_due().await?;
        Ok(due.map_or(NextDue::Nothing, NextDue::At))
    }

    async fn outbox_delivered(&self, id: &str) -> StoreResult<()> {
        let id = id.to_owned();
        self.write(move |txn| {
            let Some(item) = get_item(txn, &id)? else {
                return Ok(());
            };
            if item.state == OutboxState::Pending {
                txn.open_table(OUTBOX_DUE)
                    .map_err(internal)?
                    .remove((item.next_attempt_at, item.id.as_str()))
                    .map_err(internal)?;
            }
            txn.open_table(OUTBOX)
                .map_err(internal)?
                .remove(id.as_str())
                .map_err(internal)?;
            Ok(())
        })
        .await
    }

    async fn outbox_failed(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_at: i64,
        error: &str,
        dead: bool,
    ) -> StoreResult<()> {
        let id = id.to_owned();
        let error = error.to_owned();
        self.write(move |txn| {
            let Some(old) = get_item(txn, &id)? else {
                return Ok(());
            };
            let mut item = old.clone();
            item.attempts = attempts;
            item.next_attempt_at = next_attempt_at;
            item.last_error = Some(error);
            if dead {
                item.state = OutboxState::Dead;
            }
            put_item(txn, &item, Some(&old))
        })
        .await
    }

    async fn list_outbox_of(
        &self,
        tenant: Option<&str>,
        state: Option<OutboxState>,
        limit: usize,
    ) -> StoreResult<Vec<OutboxItem>> {
        let tenant = tenant.map(str::to_owned);
        self.read(move |txn| {
            let table = open_read(txn, OUTBOX)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(internal)? {
                let (_, v) = row.map_err(internal)?;
                let item: OutboxItem = from_json(v.value())?;
                if state.is_none_or(|s| s == item.state)
                    && tenant.as_ref().is_none_or(|t| *t == item.tenant)
                {
                    out.push(item);
                }
            }
            out.sort_by_key(|i| i.created_at);
            out.truncate(limit);
            Ok(out)
        })
        .await
    }

    async fn retry_outbox_of(
        &self,
        tenant: Option<&str>,
        id: &str,
        now: i64,
    ) -> StoreResult<OutboxItem> {
        let id = id.to_owned();
        let tenant = tenant.map(str::to_owned);
        self.write(move |txn| {
            let old = get_item(txn, &id)?
                .filter(|i: &OutboxItem| tenant.as_ref().is_none_or(|t| *t == i.tenant))
                .ok_or_else(|| outbox_not_found(&id))?;
            let mut item = old.clone();
            item.state = OutboxState::Pending;
            item.attempts = 0;
            item.next_attempt_at = now;
            put_item(txn, &item, Some(&old))?;
            Ok(item)
        })
        .await
    }

    /// Of all tenants (what `/metrics` shows at every scrape): two stored
    /// B-tree lengths, as `OUTBOX_DUE` holds exactly the pending items; the
    /// scan below decoded every item, which a backlog made slower with
    /// each scrape. Of one tenant: a scan.
    async fn outbox_counts_of(&self, tenant: Option<&str>) -> StoreResult<(u64, u64)> {
        let Some(tenant) = tenant.map(str::to_owned) else {
            return self.read_now(|txn| {
                let all = open_read(txn, OUTBOX)?.len().map_err(internal)?;
                let pending = open_read(txn, OUTBOX_DUE)?.len().map_err(internal)?;
                Ok((pending, all.saturating_sub(pending)))
            });
        };
        self.read(move |txn| {
            let table = open_read(txn, OUTBOX)?;
            let (mut pending, mut dead) = (0, 0);
            if table.len().map_err(internal)? == 0 {
                return Ok((0, 0));
            }
            for row in table.iter().map_err(internal)? {
                let (_, v) = row.map_err(internal)?;
                let item = from_json::<OutboxItem>(v.value())?;
                if item.tenant != tenant {
                    continue;
                }
                match item.state {
                    OutboxState::Pending => pending += 1,
                    OutboxState::Dead => dead += 1,
                }
            }
            Ok((pending, dead))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EventLog, SessionStore};

    fn item(id: &str, next_attempt_at: i64) -> OutboxItem {
        OutboxItem {
            id: id.into(),
            target: "q".into(),
            payload: "{}".into(),
            plugin: "p".into(),
            tenant: "t".into(),
            session_id: "s".into(),
            created_at: 0,
            attempts: 0,
            next_attempt_at,
            state: OutboxState::Pending,
            last_error: None,
        }
    }

    /// An index entry with no pending item behind it (it cannot be written
    /// through the store; a bug or a hand-edited file could leave one) is
    /// dropped by the claim that finds it, not due for ever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stray_index_entry_is_dropped_by_the_claim_that_finds_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("db.redb"), 16).unwrap();
        store
            .complete_event("t", "s", 1, vec![item("real", 5)])
            .await
            .unwrap();
        {
            let txn = store.db.begin_write().unwrap();
            let mut due = txn.open_table(OUTBOX_DUE).unwrap();
            due.insert((1, "ghost"), ()).unwrap();
            due.insert((2, "real"), ()).unwrap();
            drop(due);
            txn.commit().unwrap();
        }
        let claimed = store.claim_outbox(10, 1_000, 10).await.unwrap();
        assert_eq!(
            claimed.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            ["real"]
        );
        assert_eq!(store.next_outbox_due().await.unwrap(), NextDue::At(1_010));
    }

    /// A file written before the due index existed (its outbox, no index, no
    /// marker) gets the index on open: its pending items are claimed when
    /// due, its dead ones never.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outbox_written_before_the_index_is_indexed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        {
            let store = EmbeddedStore::open(&path, 16).unwrap();
            let items = vec![item("a", 3_000), item("b", 1_000), item("c", 2_000)];
            store.complete_event("t", "s", 1, items).await.unwrap();
            store
                .outbox_failed("c", 1, 0, "gave up", true)
                .await
                .unwrap();
        }
        {
            // As the previous version left it.
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.delete_table(OUTBOX_DUE).unwrap();
            txn.open_table(META).unwrap().remove(DUE_INDEXED).unwrap();
            txn.commit().unwrap();
        }
        let store: std::sync::Arc<dyn SessionStore> =
            std::sync::Arc::new(EmbeddedStore::open(&path, 16).unwrap());
        assert_eq!(store.next_outbox_due().await.unwrap(), NextDue::At(1_000));
        assert!(store.claim_outbox(999, 10, 10).await.unwrap().is_empty());
        let ids = |items: Vec<OutboxItem>| items.into_iter().map(|i| i.id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.claim_outbox(5_000, 10, 10).await.unwrap()),
            ["b", "a"]
        );
        assert_eq!(store.next_outbox_due().await.unwrap(), NextDue::At(5_010));
        store.outbox_delivered("a").await.unwrap();
        store.outbox_delivered("b").await.unwrap();
        assert_eq!(store.next_outbox_due().await.unwrap(), NextDue::Nothing);
        assert_eq!(store.outbox_counts().await.unwrap(), (0, 1), "c is dead");
    }
}
