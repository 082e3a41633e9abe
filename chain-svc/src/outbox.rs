//! The durable outbox: every accepted record is committed to an embedded database (redb,
//! fsync on commit) before the caller hears `202`, and leaves the pending queue only when its
//! transaction is confirmed or the contract refuses it for good. Survives `kill -9`.
//!
//! After an I/O error (a full disk) redb refuses every later transaction ("Previous I/O
//! error"); the outbox then closes the database and opens it again (what it had committed is
//! intact: each commit is atomic), so that writes work again as soon as the disk does, without
//! a restart. Until a write succeeds again, [`Outbox::health`] reports the failure (`/readyz`).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};

use alloy::primitives::{B256, TxHash};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::chain::RecordInput;

/// A single row rewritten by [`Outbox::health`] to find out whether writes work again.
const PROBE: TableDefinition<u8, &[u8]> = TableDefinition::new("probe");
/// The probe's size: room for a few hundred records (an entry is under 1 KB), so that a probe
/// that fits only in the space a failed transaction left free does not call the disk writable.
const PROBE_BYTES: usize = 256 << 10;
/// prediction id → entry (JSON).
const RECORDS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("records");
/// (accepted at ms, prediction id) → () for every pending entry, oldest first.
const PENDING: TableDefinition<(u64, &[u8; 32]), ()> = TableDefinition::new("pending");
/// (block number, prediction id) → () for every confirmed entry: what the reconciliation walks,
/// newest block first.
const CONFIRMED: TableDefinition<(u64, &[u8; 32]), ()> = TableDefinition::new("confirmed");
/// (accepted at ms, prediction id) → () for every pending entry not yet in a batch.
const UNBATCHED: TableDefinition<(u64, &[u8; 32]), ()> = TableDefinition::new("unbatched");
/// batch number → batch (JSON): its members, nonce and every transaction sent for it.
const BATCHES: TableDefinition<u64, &[u8]> = TableDefinition::new("batches");
/// batch number → () for every batch not yet confirmed or rejected.
const OPEN: TableDefinition<u64, ()> = TableDefinition::new("open_batches");
/// prediction id → the entry of a record confirmed deeper than the finality depth, in a fixed
/// binary layout (see `Entry::compact`): a third of the JSON, out of the reconciliation's index.
const FINAL: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("final");
/// prediction id → the caller who made the prediction (the gateway's caller id), off chain
/// only: who may read the record later.
const CREATORS: TableDefinition<&[u8; 32], &str> = TableDefinition::new("creators");
/// (caller id, patient reference) → () for every patient a caller has recorded a prediction
/// for: the patients whose records that caller may read.
const CARE: TableDefinition<(&str, &[u8; 32]), ()> = TableDefinition::new("care");
/// Counters: the next batch number.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Where a record is (the shared contract type: a receipt carries it).
pub use medchain_core::contract::RecordStatus as Status;

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
    /// The hash of the block that holds it (absent in entries confirmed before it was kept).
    #[serde(default)]
    pub block_hash: Option<B256>,
    /// When it was marked confirmed, ms since the epoch (absent in older entries).
    #[serde(default)]
    pub confirmed_at_ms: Option<u64>,
    /// The batch it is in, for good: a record is only ever sent in that batch, whose id the
    /// contract refuses a second time, so it cannot be committed twice.
    #[serde(default)]
    pub batch: Option<u64>,
}

/// Where a batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    /// Formed; waiting for a nonce, or sent and waiting to be mined.
    Open,
    Confirmed,
    Rejected,
}

/// One transaction sent for a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentTx {
    pub hash: TxHash,
    pub nonce: u64,
    pub fees: crate::chain::Fees,
    pub sent_at_ms: u64,
}

/// A batch of records sent in one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub seq: u64,
    /// The id the contract gives it (the hash of its commitments).
    pub id: B256,
    /// Its records in the order sent.
    pub members: Vec<B256>,
    pub state: BatchState,
    pub created_at_ms: u64,
    /// The nonce its transactions use; None until assigned (stored before anything is sent).
    pub nonce: Option<u64>,
    pub gas: Option<u64>,
    /// Every transaction signed for it, oldest first (a replacement keeps the nonce; a batch
    /// whose nonce another transaction took gets a new one).
    pub sends: Vec<SentTx>,
    pub last_error: Option<String>,
}

impl Batch {
    /// The newest transaction sent at its current nonce.
    pub fn last_send(&self) -> Option<&SentTx> {
        self.sends
            .iter()
            .rev()
            .find(|t| Some(t.nonce) == self.nonce)
    }
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
            block_hash: None,
            confirmed_at_ms: None,
            batch: None,
        }
    }

    /// The fixed binary form of a final entry (`FINAL`): 265 bytes (its JSON: ~770).
    fn compact(&self) -> Vec<u8> {
        let r = &self.record;
        let mut out = Vec::with_capacity(COMPACT_LEN);
        for h in [
            r.prediction_id,
            r.patient_ref,
            r.model_id_hash,
            r.input_commitment,
        ] {
            out.extend_from_slice(h.as_slice());
        }
        out.extend_from_slice(&[r.disease, r.modality, r.label]);
        out.extend_from_slice(&r.probability_bps.to_be_bytes());
        out.extend_from_slice(self.salt.as_slice());
        out.extend_from_slice(&self.accepted_at_ms.to_be_bytes());
        out.extend_from_slice(&self.attempts.to_be_bytes());
        out.extend_from_slice(self.tx_hash.unwrap_or_default().as_slice());
        out.extend_from_slice(&self.block_number.unwrap_or_default().to_be_bytes());
        out.extend_from_slice(self.block_hash.unwrap_or_default().as_slice());
        out.extend_from_slice(&self.confirmed_at_ms.unwrap_or_default().to_be_bytes());
        out.extend_from_slice(&self.batch.map_or(u64::MAX, |b| b).to_be_bytes());
        out
    }

    fn from_compact(b: &[u8]) -> Result<Self, OutboxError> {
        if b.len() != COMPACT_LEN {
            return Err(OutboxError::Storage(format!(
                "a final entry of {} bytes (expected {COMPACT_LEN})",
                b.len()
            )));
        }
        let mut at = 0;
        let mut take = |n: usize| {
            let s = &b[at..at + n];
            at += n;
            s
        };
        let h = |s: &[u8]| B256::from_slice(s);
        let u64_of = |s: &[u8]| u64::from_be_bytes(s.try_into().unwrap_or_default());
        let (pid, pref, model, commit) = (h(take(32)), h(take(32)), h(take(32)), h(take(32)));
        let codes = take(3).to_vec();
        let bps = u16::from_be_bytes(take(2).try_into().unwrap_or_default());
        let salt = h(take(32));
        let accepted = u64_of(take(8));
        let attempts = u32::from_be_bytes(take(4).try_into().unwrap_or_default());
        let tx = h(take(32));
        let block = u64_of(take(8));
        let block_hash = h(take(32));
        let confirmed_at = u64_of(take(8));
        let batch = u64_of(take(8));
        Ok(Self {
            record: RecordInput {
                prediction_id: pid,
                patient_ref: pref,
                model_id_hash: model,
                input_commitment: commit,
                disease: codes[0],
                modality: codes[1],
                label: codes[2],
                probability_bps: bps,
            },
            salt,
            status: Status::Confirmed,
            accepted_at_ms: accepted,
            attempts,
            last_error: None,
            tx_hash: Some(tx),
            block_number: Some(block),
            block_hash: (block_hash != B256::ZERO).then_some(block_hash),
            confirmed_at_ms: (confirmed_at != 0).then_some(confirmed_at),
            batch: (batch != u64::MAX).then_some(batch),
        })
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
    /// Reading or writing the file failed (a full disk); the outbox reopens and retries.
    #[error("outbox cannot write its file: {0}")]
    Io(String),
}

fn storage(e: impl std::fmt::Display) -> OutboxError {
    OutboxError::Storage(e.to_string())
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_millis() as u64)
}

/// A redb error, I/O failures told apart.
fn db<E: Into<redb::Error>>(e: E) -> OutboxError {
    let e: redb::Error = e.into();
    match e {
        redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed => {
            OutboxError::Io(e.to_string())
        }
        other => OutboxError::Storage(other.to_string()),
    }
}

/// The outbox database.
#[derive(Debug)]
pub struct Outbox {
    path: PathBuf,
    /// None only between closing after an I/O error and a successful reopen.
    db: RwLock<Option<Database>>,
    /// The last I/O failure, until a write succeeds again.
    failure: Mutex<Option<String>>,
}

/// The length of `Entry::compact`.
const COMPACT_LEN: usize = 4 * 32 + 3 + 2 + 32 + 8 + 4 + 32 + 8 + 32 + 8 + 8;

/// The outbox's page cache.
const OUTBOX_CACHE_BYTES: usize = 4 << 20;

impl Outbox {
    /// Opens (or creates) the outbox file, readable by its owner only.
    pub fn open(path: &Path) -> Result<Self, OutboxError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(storage)?;
        }
        let database = Self::create(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            db: RwLock::new(Some(database)),
            failure: Mutex::new(None),
        })
    }

    fn create(path: &Path) -> Result<Database, OutboxError> {
        // redb caches up to 1 GiB of pages by default, which it fills as the file grows (a
        // soak run saw chain-svc's RSS climb with every record); the outbox is written once
        // and read rarely, so a small cache does.
        let database = redb::Builder::new()
            .set_cache_size(OUTBOX_CACHE_BYTES)
            .create(path)
            .map_err(db)?;
        // Every record's salt is in it.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(storage)?;
        }
        let tx = database.begin_write().map_err(db)?;
        tx.open_table(RECORDS).map_err(db)?;
        tx.open_table(PENDING).map_err(db)?;
        tx.open_table(PROBE).map_err(db)?;
        tx.open_table(BATCHES).map_err(db)?;
        tx.open_table(OPEN).map_err(db)?;
        tx.open_table(FINAL).map_err(db)?;
        tx.open_table(META).map_err(db)?;
        tx.open_table(CREATORS).map_err(db)?;
        tx.open_table(CARE).map_err(db)?;
        {
            // Outboxes written before batches: their pending entries wait for one.
            let mut unbatched = tx.open_table(UNBATCHED).map_err(db)?;
            let open = tx.open_table(OPEN).map_err(db)?;
            if unbatched.is_empty().map_err(db)? && open.is_empty().map_err(db)? {
                let pending = tx.open_table(PENDING).map_err(db)?;
                let records = tx.open_table(RECORDS).map_err(db)?;
                for item in pending.iter().map_err(db)? {
                    let (key, _) = item.map_err(db)?;
                    let (at, id) = key.value();
                    if let Some(v) = records.get(id).map_err(db)? {
                        let e: Entry = serde_json::from_slice(v.value()).map_err(storage)?;
                        if e.batch.is_none() {
                            unbatched.insert((at, id), ()).map_err(db)?;
                        }
                    }
                }
            }
        }
        {
            // Outboxes written before the index: built once from the records.
            let mut confirmed = tx.open_table(CONFIRMED).map_err(db)?;
            if confirmed.is_empty().map_err(db)? {
                let records = tx.open_table(RECORDS).map_err(db)?;
                for item in records.iter().map_err(db)? {
                    let (key, value) = item.map_err(db)?;
                    let e: Entry = serde_json::from_slice(value.value()).map_err(storage)?;
                    if let (Status::Confirmed, Some(b)) = (e.status, e.block_number) {
                        confirmed.insert((b, key.value()), ()).map_err(db)?;
                    }
                }
            }
        }
        tx.commit().map_err(db)?;
        Ok(database)
    }

    /// Runs `f` on the database; after an I/O error remembers it and reopens the database.
    fn with<T>(
        &self,
        write: bool,
        f: impl FnOnce(&Database) -> Result<T, OutboxError>,
    ) -> Result<T, OutboxError> {
        let result = {
            let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
            match guard.as_ref() {
                Some(d) => f(d),
                None => Err(OutboxError::Io("closed after an I/O error".into())),
            }
        };
        match &result {
            Err(OutboxError::Io(reason)) => {
                metrics::counter!(medchain_core::metrics::name("outbox_io_errors_total"))
                    .increment(1);
                tracing::error!(error = %reason, "outbox I/O failure; reopening it");
                *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.clone());
                self.reopen();
            }
            Ok(_) if write => {
                *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = None;
            }
            _ => {}
        }
        result
    }

    fn reopen(&self) {
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        // Closed first: the file is locked while open.
        *guard = None;
        match Self::create(&self.path) {
            Ok(d) => *guard = Some(d),
            Err(e) => tracing::error!(error = %e, "outbox could not be reopened; will retry"),
        }
    }

    /// Whether the outbox can write: while an I/O failure is remembered, a small write is
    /// tried (and clears it when it succeeds).
    pub fn health(&self) -> Result<(), String> {
        let failed = self
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match failed {
            None => self
                .with(false, |d| d.begin_read().map(|_| ()).map_err(db))
                .map_err(|e| e.to_string()),
            Some(reason) => self
                .with(true, |d| {
                    let tx = d.begin_write().map_err(db)?;
                    {
                        let mut probe = tx.open_table(PROBE).map_err(db)?;
                        let now = now_ms();
                        // Different bytes each time: a new value is written, not an old kept.
                        let mut bytes = vec![0u8; PROBE_BYTES];
                        for (i, b) in bytes.iter_mut().enumerate() {
                            *b = (now as usize).wrapping_add(i) as u8;
                        }
                        probe.insert(0, bytes.as_slice()).map_err(db)?;
                    }
                    tx.commit().map_err(db)
                })
                .map_err(|e| format!("a write failed ({reason}) and still fails: {e}")),
        }
    }

    /// Accepts an entry durably. The same prediction with the same content is accepted again
    /// idempotently (the stored entry is returned); with other content it is a conflict.
    pub fn enqueue(&self, entry: Entry) -> Result<Entry, OutboxError> {
        self.enqueue_by(entry, None)
    }

    /// [`Outbox::enqueue`], remembering `creator` as the caller who made the prediction (in
    /// the same transaction; a repeat of a record already taken changes nothing).
    pub fn enqueue_by(&self, entry: Entry, creator: Option<&str>) -> Result<Entry, OutboxError> {
        self.with(true, |d| Self::enqueue_in(d, entry, creator))
    }

    fn enqueue_in(
        database: &Database,
        entry: Entry,
        creator: Option<&str>,
    ) -> Result<Entry, OutboxError> {
        let tx = database.begin_write().map_err(db)?;
        let stored = {
            let mut records = tx.open_table(RECORDS).map_err(db)?;
            let key = entry.id().0;
            let existing = match records.get(&key).map_err(db)? {
                Some(v) => Some(serde_json::from_slice::<Entry>(v.value()).map_err(storage)?),
                None => {
                    let finals = tx.open_table(FINAL).map_err(db)?;
                    let old = finals.get(&key).map_err(db)?;
                    old.map(|v| Entry::from_compact(v.value())).transpose()?
                }
            };
            match existing {
                Some(old) if old.record == entry.record => old,
                Some(_) => return Err(OutboxError::Conflict(entry.id())),
                None => {
                    let bytes = serde_json::to_vec(&entry).map_err(storage)?;
                    records.insert(&key, bytes.as_slice()).map_err(db)?;
                    let mut pending = tx.open_table(PENDING).map_err(db)?;
                    pending
                        .insert((entry.accepted_at_ms, &key), ())
                        .map_err(db)?;
                    let mut unbatched = tx.open_table(UNBATCHED).map_err(db)?;
                    unbatched
                        .insert((entry.accepted_at_ms, &key), ())
                        .map_err(db)?;
                    if let Some(who) = creator {
                        tx.open_table(CREATORS)
                            .map_err(db)?
                            .insert(&key, who)
                            .map_err(db)?;
                        tx.open_table(CARE)
                            .map_err(db)?
                            .insert((who, &entry.record.patient_ref.0), ())
                            .map_err(db)?;
                    }
                    entry
                }
            }
        };
        tx.commit().map_err(db)?;
        Ok(stored)
    }

    /// Whether `caller` made the prediction `id`, or has recorded one for the patient
    /// `patient_ref`: the records a clinician may read.
    pub fn may_read(
        &self,
        caller: &str,
        id: &B256,
        patient_ref: &B256,
    ) -> Result<bool, OutboxError> {
        self.with(false, |d| {
            let tx = d.begin_read().map_err(db)?;
            let creators = tx.open_table(CREATORS).map_err(db)?;
            let made = creators
                .get(&id.0)
                .map_err(db)?
                .is_some_and(|v| v.value() == caller);
            Ok(made || Self::cares_in(&tx, caller, patient_ref)?)
        })
    }

    /// Whether `caller` has recorded a prediction for the patient `patient_ref`.
    pub fn cares_for(&self, caller: &str, patient_ref: &B256) -> Result<bool, OutboxError> {
        self.with(false, |d| {
            let tx = d.begin_read().map_err(db)?;
            Self::cares_in(&tx, caller, patient_ref)
        })
    }

    fn cares_in(
        tx: &redb::ReadTransaction,
        caller: &str,
        patient_ref: &B256,
    ) -> Result<bool, OutboxError> {
        let care = tx.open_table(CARE).map_err(db)?;
        Ok(care.get((caller, &patient_ref.0)).map_err(db)?.is_some())
    }

    /// The caller who made the prediction `id`, if one was named.
    pub fn creator(&self, id: &B256) -> Result<Option<String>, OutboxError> {
        self.with(false, |d| {
            let tx = d.begin_read().map_err(db)?;
            let creators = tx.open_table(CREATORS).map_err(db)?;
            Ok(creators
                .get(&id.0)
                .map_err(db)?
                .map(|v| v.value().to_string()))
        })
    }

    /// The entry of a prediction id.
    pub fn get(&self, id: &B256) -> Result<Option<Entry>, OutboxError> {
        self.with(false, |d| {
            let tx = d.begin_read().map_err(db)?;
            let records = tx.open_table(RECORDS).map_err(db)?;
            if let Some(v) = records.get(&id.0).map_err(db)? {
                return serde_json::from_slice(v.value()).map(Some).map_err(storage);
            }
            let finals = tx.open_table(FINAL).map_err(db)?;
            let found = finals.get(&id.0).map_err(db)?;
            found.map(|v| Entry::from_compact(v.value())).transpose()
        })
    }

    /// Up to `limit` pending entries, oldest first.
    pub fn pending(&self, limit: usize) -> Result<Vec<Entry>, OutboxError> {
        self.with(false, |d| {
            let tx = d.begin_read().map_err(db)?;
            let pending = tx.open_table(PENDING).map_err(db)?;
            let records = tx.open_table(RECORDS).map_err(db)?;
            let mut out = Vec::new();
            for item in pending.iter().map_err(db)?.take(limit) {
                let (key, _) = item.map_err(db)?;
                let (_, id) = key.value();
                if let Some(v) = records.get(id).map_err(db)? {
                    out.push(serde_json::from_slice(v.value()).map_err(storage)?);
                }
            }
            Ok(out)
        })
    }

    /// The pending entries of one patient reference.
    pub fn pending_of(&self, patient_ref: &B256) -> Result<Vec<Entry>, OutboxError> {
        let mut out = self.pending(usize::MAX)?;
        out.retain(|e| e.record.patient_ref == *patient_ref);
        Ok(out)
    }

    /// How many are pending, and since when the oldest waits.
    pub fn pending_stats(&self) -> Result<(u64, Option<u64>), OutboxError> {
        self.queue_stats(PENDING)
    }

    /// How many entries a (accepted at, id) queue holds, and the oldest one's time.
    fn queue_stats(
        &self,
        queue: TableDefinition<(u64, &[u8; 32]), ()>,
    ) -> Result<(u64, Option<u64>), OutboxError> {
        self.with(false, |d| {
            let tx = d.begin_read().map_err(db)?;
            let t = tx.open_table(queue).map_err(db)?;
            let oldest = t.first().map_err(db)?.map(|(k, _)| k.value().0);
            Ok((t.len().map_err(db)?, oldest))
        })
    }

    /// Rewrites an entry through `f`; removes it from the queue when it stops being pending.
    fn update(&self, id: &B256, f: impl FnOnce(&mut Entry)) -> Result<Entry, OutboxError> {
        self.with(true, |d| Self::update_in(d, id, f))
    }

    fn update_in(
        database: &Database,
        id: &B256,
        f: impl FnOnce(&mut Entry),
    ) -> Result<Entry, OutboxError> {
        let tx = database.begin_write().map_err(db)?;
        let entry = Tables::open(&tx)?.update(id, f)?;
        tx.commit().map_err(db)?;
        Ok(entry)
    }

    /// Takes up to `max` of the oldest records waiting for a batch into a new batch, for good.
    pub fn form_batch(&self, max: usize) -> Result<Option<Batch>, OutboxError> {
        self.with(true, |d| {
            let tx = d.begin_write().map_err(db)?;
            let batch = {
                let mut t = Tables::open(&tx)?;
                let mut meta = tx.open_table(META).map_err(db)?;
                let mut keys = Vec::new();
                for item in t.unbatched.iter().map_err(db)?.take(max) {
                    let (key, _) = item.map_err(db)?;
                    let (at, id) = key.value();
                    keys.push((at, *id));
                }
                if keys.is_empty() {
                    return Ok(None);
                }
                let seq = meta.get("next_batch").map_err(db)?.map_or(1, |v| v.value());
                meta.insert("next_batch", seq + 1).map_err(db)?;
                let mut members = Vec::with_capacity(keys.len());
                let mut items = Vec::with_capacity(keys.len());
                for (at, id) in &keys {
                    t.unbatched.remove((*at, id)).map_err(db)?;
                    let e = t.update(&B256::from(*id), |e| e.batch = Some(seq))?;
                    items.push(e.record.commitment());
                    members.push(e.id());
                }
                let batch = Batch {
                    seq,
                    id: crate::chain::batch_id(&items),
                    members,
                    state: BatchState::Open,
                    created_at_ms: now_ms(),
                    nonce: None,
                    gas: None,
                    sends: Vec::new(),
                    last_error: None,
                };
                t.put_batch(&batch)?;
                batch
            };
            tx.commit().map_err(db)?;
            Ok(Some(batch))
        })
    }

    /// How many records wait for a batch, and since when the oldest (ms).
    pub fn unbatched_stats(&self) -> Result<(u64, Option<u64>), OutboxError> {
        self.queue_stats(UNBATCHED)
    }

    /// The batches not yet confirmed or rejected, oldest first.
    pub fn open_batches(&self) -> Result<Vec<Batch>, OutboxError> {
        self.with(false, |d| {
            let tx = d.begin_read().map_err(db)?;
            let open = tx.open_table(OPEN).map_err(db)?;
            let batches = tx.open_table(BATCHES).map_err(db)?;
            let mut out = Vec::new();
            for item in open.iter().map_err(db)? {
                let (seq, _) = item.map_err(db)?;
                if let Some(v) = batches.get(seq.value()).map_err(db)? {
                    out.push(serde_json::from_slice(v.value()).map_err(storage)?);
                }
            }
            Ok(out)
        })
    }

    /// A batch by number (None once compacted away).
    pub fn batch(&self, seq: u64) -> Result<Option<Batch>, OutboxError> {
        self.with(false, |d| {
            let tx = d.begin_read().map_err(db)?;
            let batches = tx.open_table(BATCHES).map_err(db)?;
            let found = batches.get(seq).map_err(db)?;
            found
                .map(|v| serde_json::from_slice(v.value()))
                .transpose()
                .map_err(storage)
        })
    }

    /// Stores an open batch's nonce, gas, sends and last error (before the transaction it
    /// describes leaves: after a crash every hash that may be on chain is known).
    pub fn save_batch(&self, batch: &Batch) -> Result<(), OutboxError> {
        self.with(true, |d| {
            let tx = d.begin_write().map_err(db)?;
            Tables::open(&tx)?.put_batch(batch)?;
            tx.commit().map_err(db)
        })
    }

    /// The batch is on chain: it and every record in it confirmed, in one transaction. Returns
    /// the batch and when each of its records was accepted (ms).
    pub fn confirm_batch(
        &self,
        seq: u64,
        mined: &crate::chain::Mined,
    ) -> Result<(Batch, Vec<u64>), OutboxError> {
        let at = now_ms();
        self.settle(seq, BatchState::Confirmed, None, |e| {
            e.status = Status::Confirmed;
            e.tx_hash = Some(mined.tx_hash);
            e.block_number = Some(mined.block_number);
            e.block_hash = mined.block_hash;
            e.confirmed_at_ms = Some(at);
            e.last_error = None;
        })
    }

    /// The contract refused the batch for good: it and its records rejected.
    pub fn reject_batch(&self, seq: u64, reason: &str) -> Result<Batch, OutboxError> {
        self.settle(seq, BatchState::Rejected, Some(reason), |e| {
            e.attempts += 1;
            e.status = Status::Rejected;
            e.last_error = Some(reason.to_string());
        })
        .map(|(b, _)| b)
    }

    /// A confirmed batch the chain no longer holds (a reset or a reorganisation dropped its
    /// block): open again with its records pending, to be sent again as the same batch (same
    /// id: should the old transaction come back after all, the resend is refused).
    pub fn reopen_batch(&self, seq: u64, why: &str) -> Result<Batch, OutboxError> {
        self.settle(seq, BatchState::Open, Some(why), |e| {
            e.status = Status::Pending;
            e.tx_hash = None;
            e.block_number = None;
            e.block_hash = None;
            e.confirmed_at_ms = None;
            e.last_error = Some(why.to_string());
        })
        .map(|(b, _)| b)
    }

    fn settle(
        &self,
        seq: u64,
        state: BatchState,
        error: Option<&str>,
        f: impl Fn(&mut Entry),
    ) -> Result<(Batch, Vec<u64>), OutboxError> {
        self.with(true, |d| {
            let tx = d.begin_write().map_err(db)?;
            let mut accepted = Vec::new();
            let batch = {
                let mut t = Tables::open(&tx)?;
                let mut batch = t
                    .get_batch(seq)?
                    .ok_or_else(|| OutboxError::Storage(format!("no batch {seq}")))?;
                for id in &batch.members {
                    accepted.push(t.update(id, &f)?.accepted_at_ms);
                }
                batch.state = state;
                batch.last_error = error.map(str::to_string);
                if state == BatchState::Open {
                    batch.nonce = None;
                }
                t.put_batch(&batch)?;
                batch
            };
            tx.commit().map_err(db)?;
            Ok((batch, accepted))
        })
    }

    /// Compacts the records confirmed in blocks below `final_below` (deeper than the chain's
    /// finality: no reorganisation reaches them): each leaves the reconciliation's index and
    /// is kept in its fixed binary form (salt and all: `verify` still works), and the batches
    /// that are wholly final are forgotten. Up to `max` records per call; returns how many.
    pub fn compact(&self, final_below: u64, max: usize) -> Result<usize, OutboxError> {
        self.with(true, |d| {
            let tx = d.begin_write().map_err(db)?;
            let n = {
                let mut confirmed = tx.open_table(CONFIRMED).map_err(db)?;
                let mut records = tx.open_table(RECORDS).map_err(db)?;
                let mut finals = tx.open_table(FINAL).map_err(db)?;
                let mut batches = tx.open_table(BATCHES).map_err(db)?;
                let mut keys = Vec::new();
                for item in confirmed
                    .range(..(final_below, &[0u8; 32]))
                    .map_err(db)?
                    .take(max)
                {
                    let (key, _) = item.map_err(db)?;
                    let (block, id) = key.value();
                    keys.push((block, *id));
                }
                for (block, id) in &keys {
                    confirmed.remove((*block, id)).map_err(db)?;
                    let entry = records.remove(id).map_err(db)?;
                    let Some(entry) = entry else { continue };
                    let e: Entry = serde_json::from_slice(entry.value()).map_err(storage)?;
                    drop(entry);
                    finals.insert(id, e.compact().as_slice()).map_err(db)?;
                    if let Some(seq) = e.batch {
                        batches.remove(seq).map_err(db)?;
                    }
                }
                keys.len()
            };
            tx.commit().map_err(db)?;
            Ok(n)
        })
    }

    /// How many records are kept in compacted form.
    pub fn final_count(&self) -> Result<u64, OutboxError> {
        self.with(false, |d| {
            let tx = d.begin_read().map_err(db)?;
            let t = tx.open_table(FINAL).map_err(db)?;
            t.len().map_err(db)
        })
    }

    /// One record on chain, in block `block` (of hash `block_hash`), outside any batch (the
    /// batch sender confirms whole batches: `confirm_batch`).
    #[cfg(test)]
    pub fn mark_confirmed(
        &self,
        id: &B256,
        tx: TxHash,
        block: u64,
        block_hash: Option<B256>,
    ) -> Result<Entry, OutboxError> {
        self.update(id, |e| {
            e.status = Status::Confirmed;
            e.tx_hash = Some(tx);
            e.block_number = Some(block);
            e.block_hash = block_hash;
            e.confirmed_at_ms = Some(now_ms());
            e.last_error = None;
        })
    }

    /// A confirmed record the chain no longer holds (a reset or reorganisation dropped its
    /// block): pending again, to be sent again.
    pub fn mark_lost(&self, id: &B256, why: &str) -> Result<Entry, OutboxError> {
        self.update(id, |e| {
            e.status = Status::Pending;
            e.tx_hash = None;
            e.block_number = None;
            e.block_hash = None;
            e.confirmed_at_ms = None;
            e.last_error = Some(why.to_string());
        })
    }

    /// Confirmed entries from the newest block down, in groups of one block: `(block, entries)`
    /// for up to `blocks` blocks at or below `below`.
    pub fn confirmed_blocks(
        &self,
        below: u64,
        blocks: usize,
    ) -> Result<Vec<(u64, Vec<Entry>)>, OutboxError> {
        self.with(false, |d| {
            let tx = d.begin_read().map_err(db)?;
            let confirmed = tx.open_table(CONFIRMED).map_err(db)?;
            let records = tx.open_table(RECORDS).map_err(db)?;
            let mut out: Vec<(u64, Vec<Entry>)> = Vec::new();
            let end = (below, &[0xFFu8; 32]);
            for item in confirmed.range(..=end).map_err(db)?.rev() {
                let (key, _) = item.map_err(db)?;
                let (block, id) = key.value();
                if out.last().is_none_or(|(b, _)| *b != block) {
                    if out.len() == blocks {
                        break;
                    }
                    out.push((block, Vec::new()));
                }
                if let Some(v) = records.get(id).map_err(db)? {
                    let e: Entry = serde_json::from_slice(v.value()).map_err(storage)?;
                    if let Some((_, group)) = out.last_mut() {
                        group.push(e);
                    }
                }
            }
            Ok(out)
        })
    }
}

/// The tables an entry's indexes live in, open in one write transaction.
struct Tables<'t> {
    records: redb::Table<'t, &'static [u8; 32], &'static [u8]>,
    pending: redb::Table<'t, (u64, &'static [u8; 32]), ()>,
    confirmed: redb::Table<'t, (u64, &'static [u8; 32]), ()>,
    unbatched: redb::Table<'t, (u64, &'static [u8; 32]), ()>,
    batches: redb::Table<'t, u64, &'static [u8]>,
    open: redb::Table<'t, u64, ()>,
}

impl<'t> Tables<'t> {
    fn open(tx: &'t redb::WriteTransaction) -> Result<Self, OutboxError> {
        Ok(Self {
            records: tx.open_table(RECORDS).map_err(db)?,
            pending: tx.open_table(PENDING).map_err(db)?,
            confirmed: tx.open_table(CONFIRMED).map_err(db)?,
            unbatched: tx.open_table(UNBATCHED).map_err(db)?,
            batches: tx.open_table(BATCHES).map_err(db)?,
            open: tx.open_table(OPEN).map_err(db)?,
        })
    }

    /// Rewrites an entry through `f` and keeps its indexes in step with its status.
    fn update(&mut self, id: &B256, f: impl FnOnce(&mut Entry)) -> Result<Entry, OutboxError> {
        let mut entry: Entry = match self.records.get(&id.0).map_err(db)? {
            Some(v) => serde_json::from_slice(v.value()).map_err(storage)?,
            None => return Err(OutboxError::NotFound(*id)),
        };
        let before = (entry.status, entry.block_number);
        f(&mut entry);
        let bytes = serde_json::to_vec(&entry).map_err(storage)?;
        self.records.insert(&id.0, bytes.as_slice()).map_err(db)?;
        let key = (entry.accepted_at_ms, &id.0);
        if entry.status == Status::Pending {
            self.pending.insert(key, ()).map_err(db)?;
            if entry.batch.is_none() {
                self.unbatched.insert(key, ()).map_err(db)?;
            }
        } else {
            self.pending.remove(key).map_err(db)?;
            self.unbatched.remove(key).map_err(db)?;
        }
        if let (Status::Confirmed, Some(b)) = before {
            self.confirmed.remove((b, &id.0)).map_err(db)?;
        }
        if let (Status::Confirmed, Some(b)) = (entry.status, entry.block_number) {
            self.confirmed.insert((b, &id.0), ()).map_err(db)?;
        }
        Ok(entry)
    }

    fn get_batch(&self, seq: u64) -> Result<Option<Batch>, OutboxError> {
        let found = self.batches.get(seq).map_err(db)?;
        found
            .map(|v| serde_json::from_slice(v.value()))
            .transpose()
            .map_err(storage)
    }

    fn put_batch(&mut self, b: &Batch) -> Result<(), OutboxError> {
        let bytes = serde_json::to_vec(b).map_err(storage)?;
        self.batches.insert(b.seq, bytes.as_slice()).map_err(db)?;
        if b.state == BatchState::Open {
            self.open.insert(b.seq, ()).map_err(db)?;
        } else {
            self.open.remove(b.seq).map_err(db)?;
        }
        Ok(())
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
            .mark_confirmed(&B256::repeat_byte(1), TxHash::repeat_byte(9), 7, None)
            .expect("confirm");
        assert_eq!(done.status, Status::Confirmed);
        assert_eq!(o.pending_stats().expect("stats"), (2, Some(20)));
        let b = o.form_batch(1).expect("form").expect("batch");
        assert_eq!(b.members, [B256::repeat_byte(2)]);
        let rejected = o.reject_batch(b.seq, "not a recorder").expect("reject");
        assert_eq!(rejected.state, BatchState::Rejected);
        let e = o.get(&B256::repeat_byte(2)).expect("get").expect("present");
        assert_eq!((e.status, e.attempts), (Status::Rejected, 1));
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
    fn confirmed_records_are_walked_newest_block_first_and_can_be_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("o.redb");
        let o = Outbox::open(&path).expect("open");
        for (n, block) in [(1u8, 5u64), (2, 7), (3, 7), (4, 9)] {
            o.enqueue(entry(n, u64::from(n))).expect("enqueue");
            o.mark_confirmed(&B256::repeat_byte(n), TxHash::repeat_byte(n), block, None)
                .expect("confirm");
        }
        let blocks = |o: &Outbox, below| -> Vec<(u64, usize)> {
            o.confirmed_blocks(below, 2)
                .expect("walk")
                .iter()
                .map(|(b, e)| (*b, e.len()))
                .collect()
        };
        assert_eq!(blocks(&o, u64::MAX), [(9, 1), (7, 2)]);
        assert_eq!(blocks(&o, 6), [(5, 1)]);
        let lost = o.mark_lost(&B256::repeat_byte(4), "reset").expect("lost");
        assert_eq!((lost.status, lost.block_number), (Status::Pending, None));
        assert_eq!(o.pending(10).expect("pending").len(), 1);
        assert_eq!(blocks(&o, u64::MAX), [(7, 2), (5, 1)]);
        // Reopened, the index is as it was.
        drop(o);
        let o = Outbox::open(&path).expect("reopen");
        assert_eq!(blocks(&o, u64::MAX), [(7, 2), (5, 1)]);
    }

    #[test]
    fn batches_settle_their_records_together_and_final_records_are_compacted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = Outbox::open(&dir.path().join("o.redb")).expect("open");
        for n in 1..=5u8 {
            o.enqueue(entry(n, u64::from(n))).expect("enqueue");
        }
        let b = o.form_batch(3).expect("form").expect("batch");
        assert_eq!(b.members.len(), 3);
        assert_eq!(o.unbatched_stats().expect("stats").0, 2);
        assert_eq!(
            o.pending_stats().expect("stats").0,
            5,
            "batched is still pending"
        );
        let items: Vec<_> = b
            .members
            .iter()
            .map(|id| {
                o.get(id)
                    .expect("get")
                    .expect("present")
                    .record
                    .commitment()
            })
            .collect();
        assert_eq!(b.id, crate::chain::batch_id(&items));
        let mined = crate::chain::Mined {
            tx_hash: TxHash::repeat_byte(7),
            block_number: 10,
            block_hash: Some(B256::repeat_byte(0x10)),
        };
        o.confirm_batch(b.seq, &mined).expect("confirm");
        assert_eq!(o.pending_stats().expect("stats").0, 2);
        assert!(o.open_batches().expect("open").is_empty());
        // Lost with its block: the whole batch open again, the same members.
        let again = o.reopen_batch(b.seq, "reset").expect("reopen");
        assert_eq!(
            (again.members.clone(), again.nonce),
            (b.members.clone(), None)
        );
        assert_eq!(o.pending_stats().expect("stats").0, 5);
        assert_eq!(
            o.unbatched_stats().expect("stats").0,
            2,
            "not batched again"
        );
        o.confirm_batch(b.seq, &mined).expect("confirm");

        // Final: compacted, still found with everything verify needs.
        let before = o.get(&b.members[0]).expect("get").expect("present");
        let json_len = serde_json::to_vec(&before).expect("json").len();
        assert!(before.compact().len() * 5 < json_len * 2, "{json_len}");
        assert_eq!(
            o.compact(10, 100).expect("compact"),
            0,
            "block 10 is not below 10"
        );
        assert_eq!(o.compact(11, 100).expect("compact"), 3);
        assert_eq!(o.final_count().expect("count"), 3);
        let after = o.get(&b.members[0]).expect("get").expect("present");
        assert_eq!(after, before);
        assert!(o.confirmed_blocks(u64::MAX, 10).expect("walk").is_empty());
        assert!(o.batch(b.seq).expect("batch").is_none());
        // A compacted prediction is still taken once.
        assert_eq!(o.enqueue(entry(1, 99)).expect("idempotent"), before);
        let mut other = entry(1, 10);
        other.record.label = 1;
        assert!(matches!(o.enqueue(other), Err(OutboxError::Conflict(_))));
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
            o.mark_confirmed(&B256::repeat_byte(8), TxHash::ZERO, 1, None),
            Err(OutboxError::NotFound(_))
        ));
    }
}
