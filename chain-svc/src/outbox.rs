//! The durable outbox: every accepted record is committed to an embedded database (redb,
//! fsync on commit) before the caller hears `202`, and leaves the pending queue only when its
//! transaction is confirmed or the contract refuses it for good. Survives `kill -9`.

use std::path::Path;

use alloy::primitives::{B256, TxHash};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::chain::RecordInput;

/// prediction id → entry (JSON).
const RECORDS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("records");
/// (accepted at ms, prediction id) → () for every pending entry, oldest first.
const PENDING: TableDefinition<(u64, &[u8; 32]), ()> = TableDefinition::new("pending");

/// Where a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Confirmed,
    /// The contract refused it (not a retryable condition); `last_error` says why.
    Rejected,
}

/// One outbox entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// What goes on chain.
    #[serde(flatten)]
    pub record: RecordInput,
    /// Kept off chain; returned in the receipt; deleting it makes the commitment unlinkable.
    pub salt: B256,
    pub status: Status,
    pub accepted_at_ms: u64,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub tx_hash: Option<TxHash>,
    pub block_number: Option<u64>,
}

impl Entry {
    /// A new pending entry.
    pub fn new(r: &RecordInput, salt: B256, now_ms: u64) -> Self {
        Self {
            record: r.clone(),
            salt,
            status: Status::Pending,
            accepted_at_ms: now_ms,
            attempts: 0,
            last_error: None,
            tx_hash: None,
            block_number: None,
        }
    }

    /// The prediction id (the key).
    pub fn id(&self) -> B256 {
        self.record.prediction_id
    }
}

/// Outbox failures.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("prediction {0} was already accepted with different content")]
    Conflict(B256),
    #[error("prediction {0} is not in the outbox")]
    NotFound(B256),
    #[error("outbox storage: {0}")]
    Storage(String),
}

fn storage(e: impl std::fmt::Display) -> OutboxError {
    OutboxError::Storage(e.to_string())
}

/// The outbox database.
#[derive(Debug)]
pub struct Outbox {
    db: Database,
}

/// The outbox's page cache.
const OUTBOX_CACHE_BYTES: usize = 4 << 20;

impl Outbox {
    /// Opens (or creates) the outbox file.
    pub fn open(path: &Path) -> Result<Self, OutboxError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(storage)?;
        }
        // redb caches up to 1 GiB of pages by default, which it fills as the file grows (a
        // soak run saw chain-svc's RSS climb with every record); the outbox is written once
        // and read rarely, so a small cache does.
        let db = redb::Builder::new()
            .set_cache_size(OUTBOX_CACHE_BYTES)
            .create(path)
            .map_err(storage)?;
        let tx = db.begin_write().map_err(storage)?;
        tx.open_table(RECORDS).map_err(storage)?;
        tx.open_table(PENDING).map_err(storage)?;
        tx.commit().map_err(storage)?;
        Ok(Self { db })
    }

    /// Accepts an entry durably. The same prediction with the same content is accepted again
    /// idempotently (the stored entry is returned); with other content it is a conflict.
    pub fn enqueue(&self, entry: Entry) -> Result<Entry, OutboxError> {
        let tx = self.db.begin_write().map_err(storage)?;
        let stored = {
            let mut records = tx.open_table(RECORDS).map_err(storage)?;
            let key = entry.id().0;
            let existing = records
                .get(&key)
                .map_err(storage)?
                .map(|v| serde_json::from_slice::<Entry>(v.value()))
                .transpose()
                .map_err(storage)?;
            match existing {
                Some(old) if old.record == entry.record => old,
                Some(_) => return Err(OutboxError::Conflict(entry.id())),
                None => {
                    let bytes = serde_json::to_vec(&entry).map_err(storage)?;
                    records.insert(&key, bytes.as_slice()).map_err(storage)?;
                    let mut pending = tx.open_table(PENDING).map_err(storage)?;
                    pending
                        .insert((entry.accepted_at_ms, &key), ())
                        .map_err(storage)?;
                    entry
                }
            }
        };
        tx.commit().map_err(storage)?;
        Ok(stored)
    }

    /// The entry of a prediction id.
    pub fn get(&self, id: &B256) -> Result<Option<Entry>, OutboxError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let records = tx.open_table(RECORDS).map_err(storage)?;
        records
            .get(&id.0)
            .map_err(storage)?
            .map(|v| serde_json::from_slice(v.value()))
            .transpose()
            .map_err(storage)
    }

    /// Up to `limit` pending entries, oldest first.
    pub fn pending(&self, limit: usize) -> Result<Vec<Entry>, OutboxError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let pending = tx.open_table(PENDING).map_err(storage)?;
        let records = tx.open_table(RECORDS).map_err(storage)?;
        let mut out = Vec::new();
        for item in pending.iter().map_err(storage)?.take(limit) {
            let (key, _) = item.map_err(storage)?;
            let (_, id) = key.value();
            if let Some(v) = records.get(id).map_err(storage)? {
                out.push(serde_json::from_slice(v.value()).map_err(storage)?);
            }
        }
        Ok(out)
    }

    /// The pending entries of one patient reference.
    pub fn pending_of(&self, patient_ref: &B256) -> Result<Vec<Entry>, OutboxError> {
        let mut out = self.pending(usize::MAX)?;
        out.retain(|e| e.record.patient_ref == *patient_ref);
        Ok(out)
    }

    /// How many are pending, and since when the oldest waits.
    pub fn pending_stats(&self) -> Result<(u64, Option<u64>), OutboxError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let pending = tx.open_table(PENDING).map_err(storage)?;
        let oldest = pending.first().map_err(storage)?.map(|(k, _)| k.value().0);
        Ok((pending.len().map_err(storage)?, oldest))
    }

    /// Rewrites an entry through `f`; removes it from the queue when it stops being pending.
    fn update(&self, id: &B256, f: impl FnOnce(&mut Entry)) -> Result<Entry, OutboxError> {
        let tx = self.db.begin_write().map_err(storage)?;
        let entry = {
            let mut records = tx.open_table(RECORDS).map_err(storage)?;
            let mut entry: Entry = match records.get(&id.0).map_err(storage)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(storage)?,
                None => return Err(OutboxError::NotFound(*id)),
            };
            f(&mut entry);
            let bytes = serde_json::to_vec(&entry).map_err(storage)?;
            records.insert(&id.0, bytes.as_slice()).map_err(storage)?;
            if entry.status != Status::Pending {
                let mut pending = tx.open_table(PENDING).map_err(storage)?;
                pending
                    .remove((entry.accepted_at_ms, &id.0))
                    .map_err(storage)?;
            }
            entry
        };
        tx.commit().map_err(storage)?;
        Ok(entry)
    }

    /// The record is on chain.
    pub fn mark_confirmed(&self, id: &B256, tx: TxHash, block: u64) -> Result<Entry, OutboxError> {
        self.update(id, |e| {
            e.status = Status::Confirmed;
            e.tx_hash = Some(tx);
            e.block_number = Some(block);
            e.last_error = None;
        })
    }

    /// A send failed in a way that may pass later; the entry stays pending.
    pub fn mark_attempt_failed(&self, id: &B256, error: &str) -> Result<Entry, OutboxError> {
        self.update(id, |e| {
            e.attempts += 1;
            e.last_error = Some(error.to_string());
        })
    }

    /// The contract refused the record for good.
    pub fn mark_rejected(&self, id: &B256, reason: &str) -> Result<Entry, OutboxError> {
        self.update(id, |e| {
            e.attempts += 1;
            e.status = Status::Rejected;
            e.last_error = Some(reason.to_string());
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8, at: u64) -> Entry {
        let r = RecordInput {
            prediction_id: B256::repeat_byte(n),
            patient_ref: B256::ZERO,
            model_id_hash: B256::repeat_byte(0xBB),
            input_commitment: B256::repeat_byte(0xCC),
            disease: 1,
            modality: 1,
            label: 0,
            probability_bps: 1234,
        };
        Entry::new(&r, B256::repeat_byte(0x5A), at)
    }

    #[test]
    fn accepts_durably_in_order_and_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.redb");
        {
            let o = Outbox::open(&path).expect("open");
            o.enqueue(entry(2, 20)).expect("enqueue");
            o.enqueue(entry(1, 10)).expect("enqueue");
            o.enqueue(entry(3, 30)).expect("enqueue");
            assert_eq!(o.pending_stats().expect("stats"), (3, Some(10)));
        }
        let o = Outbox::open(&path).expect("reopen");
        let ids: Vec<u8> = o
            .pending(10)
            .expect("pending")
            .iter()
            .map(|e| e.id().0[0])
            .collect();
        assert_eq!(ids, [1, 2, 3]);
        let done = o
            .mark_confirmed(&B256::repeat_byte(1), TxHash::repeat_byte(9), 7)
            .expect("confirm");
        assert_eq!(done.status, Status::Confirmed);
        assert_eq!(o.pending_stats().expect("stats"), (2, Some(20)));
        let failed = o
            .mark_attempt_failed(&B256::repeat_byte(2), "node down")
            .expect("attempt");
        assert_eq!((failed.status, failed.attempts), (Status::Pending, 1));
        o.mark_rejected(&B256::repeat_byte(3), "duplicate")
            .expect("reject");
        assert_eq!(o.pending(10).expect("pending").len(), 1);
        assert_eq!(
            o.get(&B256::repeat_byte(1))
                .expect("get")
                .expect("present")
                .block_number,
            Some(7)
        );
    }

    #[test]
    fn the_same_prediction_is_accepted_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = Outbox::open(&dir.path().join("o.redb")).expect("open");
        let first = o.enqueue(entry(1, 10)).expect("enqueue");
        // A retry of the same request (later clock, same content) returns the stored entry.
        let again = o.enqueue(entry(1, 99)).expect("idempotent");
        assert_eq!(again, first);
        assert_eq!(o.pending_stats().expect("stats").0, 1);
        let mut other = entry(1, 10);
        other.record.label = 1;
        assert!(matches!(o.enqueue(other), Err(OutboxError::Conflict(_))));
        assert!(matches!(
            o.mark_confirmed(&B256::repeat_byte(8), TxHash::ZERO, 1),
            Err(OutboxError::NotFound(_))
        ));
    }
}
