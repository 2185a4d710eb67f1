//! The notification outbox: items keyed by their id, written with the
//! completion of their event (`events.rs`), claimed with a lease.

use async_trait::async_trait;
use redb::{ReadableTable, ReadableTableMetadata};

use super::EmbeddedStore;
use super::tables::{OUTBOX, from_json, internal, open_read, to_json};
use crate::store::{NextDue, OutboxItem, OutboxQueue, OutboxState, StoreResult, outbox_not_found};

#[async_trait]
impl OutboxQueue for EmbeddedStore {
    async fn claim_outbox(
        &self,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<OutboxItem>> {
        let due = self.earliest_due(OUTBOX, now, due_at).await?;
        if due.is_none_or(|at| at > now) {
            return Ok(Vec::new());
        }
        self.write(move |txn| {
            let mut table = txn.open_table(OUTBOX).map_err(internal)?;
            let mut due = Vec::new();
            for row in table.iter().map_err(internal)? {
                let (_, v) = row.map_err(internal)?;
                let item: OutboxItem = from_json(v.value())?;
                if is_due(&item, now) {
                    due.push(item);
                }
            }
            due.sort_by_key(|i| (i.next_attempt_at, i.created_at));
            due.truncate(limit);
            for item in &mut due {
                let mut leased = item.clone();
                leased.next_attempt_at = now + lease_ms;
                table
                    .insert(item.id.as_str(), to_json(&leased)?.as_slice())
                    .map_err(internal)?;
            }
            Ok(due)
        })
        .await
    }

    async fn next_outbox_due(&self) -> StoreResult<NextDue> {
        // Only this process writes the file (redb locks it).
        let due = self.earliest_due(OUTBOX, i64::MIN, due_at).await?;
        Ok(due.map_or(NextDue::Nothing, NextDue::At))
    }

    async fn outbox_delivered(&self, id: &str) -> StoreResult<()> {
        let id = id.to_owned();
        self.write(move |txn| {
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
            let mut table = txn.open_table(OUTBOX).map_err(internal)?;
            let Some(mut item) = table
                .get(id.as_str())
                .map_err(internal)?
                .map(|v| from_json::<OutboxItem>(v.value()))
                .transpose()?
            else {
                return Ok(());
            };
            item.attempts = attempts;
            item.next_attempt_at = next_attempt_at;
            item.last_error = Some(error);
            if dead {
                item.state = OutboxState::Dead;
            }
            table
                .insert(id.as_str(), to_json(&item)?.as_slice())
                .map_err(internal)?;
            Ok(())
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
            let mut table = txn.open_table(OUTBOX).map_err(internal)?;
            let mut item = table
                .get(id.as_str())
                .map_err(internal)?
                .map(|v| from_json::<OutboxItem>(v.value()))
                .transpose()?
                .filter(|i: &OutboxItem| tenant.as_ref().is_none_or(|t| *t == i.tenant))
                .ok_or_else(|| outbox_not_found(&id))?;
            item.state = OutboxState::Pending;
            item.attempts = 0;
            item.next_attempt_at = now;
            table
                .insert(id.as_str(), to_json(&item)?.as_slice())
                .map_err(internal)?;
            Ok(item)
        })
        .await
    }

    async fn outbox_counts_of(&self, tenant: Option<&str>) -> StoreResult<(u64, u64)> {
        let tenant = tenant.map(str::to_owned);
        self.read(move |txn| {
            let table = open_read(txn, OUTBOX)?;
            let (mut pending, mut dead) = (0, 0);
            if table.len().map_err(internal)? == 0 {
                return Ok((0, 0));
            }
            for row in table.iter().map_err(internal)? {
                let (_, v) = row.map_err(internal)?;
                let item = from_json::<OutboxItem>(v.value())?;
                if tenant.as_ref().is_some_and(|t| *t != item.tenant) {
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

/// When a stored item is to be claimed: a pending one at its next attempt,
/// a dead one never.
fn due_at(v: redb::AccessGuard<'_, &'static [u8]>) -> StoreResult<Option<i64>> {
    let item: OutboxItem = from_json(v.value())?;
    Ok((item.state == OutboxState::Pending).then_some(item.next_attempt_at))
}

/// Whether `item` is to be claimed at `now`: pending, its next attempt due.
fn is_due(item: &OutboxItem, now: i64) -> bool {
    item.state == OutboxState::Pending && item.next_attempt_at <= now
}
