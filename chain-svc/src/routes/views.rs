//! What the record routes answer, typed: one struct per shape, built from the outbox's entry
//! and the chain's commitment, so that each field is named once. (`Receipt`, what a write
//! answers, is the shared contract type in `medchain_core::contract`.)

use alloy::primitives::{Address, B256, TxHash};
use medchain_core::domain::{Disease, Modality};
use serde::Serialize;
use serde_json::{Value, json};

use crate::chain::{CommittedLog, RecordInput};
use crate::outbox::{Batch, Entry, Status};

/// The name of a code on chain (the code itself if it has none).
fn name_of<T: Serialize>(from_code: fn(u8) -> Option<T>, code: u8) -> Value {
    from_code(code).map_or(json!(code), |v| json!(v))
}

/// A UUID as it is written in answers, from the contract's bytes32 (the 16 bytes, left-aligned).
pub fn b256_to_id(b: &B256) -> String {
    let mut u = [0u8; 16];
    u.copy_from_slice(&b.0[..16]);
    uuid::Uuid::from_bytes(u).to_string()
}

/// The fields behind a record's hash, held off chain in the outbox.
#[derive(Debug, Serialize)]
pub struct Fields {
    pub model_id_hash: B256,
    pub input_commitment: B256,
    pub disease: Value,
    pub modality: Value,
    pub label: u8,
    pub probability_bps: u16,
}

impl Fields {
    pub fn of(r: &RecordInput) -> Self {
        Self {
            model_id_hash: r.model_id_hash,
            input_commitment: r.input_commitment,
            disease: name_of(Disease::from_code, r.disease),
            modality: name_of(Modality::from_code, r.modality),
            label: r.label,
            probability_bps: r.probability_bps,
        }
    }
}

/// The chain's commitment to a record.
#[derive(Debug, Serialize)]
pub struct OnChain {
    pub patient_ref: B256,
    pub record_hash: B256,
    pub tx_hash: Option<TxHash>,
    pub block_number: Option<u64>,
}

impl OnChain {
    pub fn of(l: &CommittedLog) -> Self {
        Self {
            patient_ref: l.patient_ref,
            record_hash: l.record_hash,
            tx_hash: l.tx_hash,
            block_number: l.block_number,
        }
    }
}

/// Where the answer comes from.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// This instance's outbox, compared with the chain.
    Outbox,
    /// The chain alone (another instance recorded it, or this one lost its disk).
    Chain,
}

/// The contract every answer names.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Deployment {
    pub contract: Address,
    pub chain_id: u64,
}

/// The batch a record was sent in.
#[derive(Debug, Serialize)]
pub struct BatchView {
    pub seq: u64,
    pub records: Option<usize>,
    pub nonce: Option<u64>,
    pub batch_id: Option<B256>,
}

/// `GET /v1/records/{id}` of a record this instance holds.
#[derive(Debug, Serialize)]
pub struct HeldRecord {
    pub prediction_id: String,
    pub status: Status,
    pub source: Source,
    /// Transactions sent for its batch (replacements and resends included).
    pub attempts: usize,
    pub last_error: Option<String>,
    pub accepted_at_unix_ms: u64,
    pub confirmed_at_unix_ms: Option<u64>,
    pub batch: Option<BatchView>,
    pub tx_hash: Option<TxHash>,
    pub block_number: Option<u64>,
    pub patient_ref: B256,
    #[serde(flatten)]
    pub fields: Fields,
    pub record_hash: B256,
    pub on_chain: Option<OnChain>,
    pub matches_chain: Option<bool>,
    pub commitments_on_chain: Option<usize>,
    pub chain_error: Option<String>,
    #[serde(flatten)]
    pub deployment: Deployment,
}

impl HeldRecord {
    /// `entry` with its batch, beside what the chain answered (`chain`: its commitments, or
    /// why it could not be read).
    pub fn new(
        entry: &Entry,
        batch: Option<&Batch>,
        chain: Result<&[CommittedLog], String>,
        deployment: Deployment,
    ) -> Self {
        let (on_chain, matches_chain, commitments_on_chain, chain_error) = match chain {
            Ok(logs) => match logs.first() {
                Some(l) => (
                    Some(OnChain::of(l)),
                    Some(l.record_hash == entry.record.record_hash()),
                    Some(logs.len()),
                    None,
                ),
                None => (None, None, Some(0), None),
            },
            Err(e) => (None, None, None, Some(e)),
        };
        Self {
            prediction_id: b256_to_id(&entry.id()),
            status: entry.status,
            source: Source::Outbox,
            attempts: batch.map_or(entry.attempts as usize, |b| b.sends.len()),
            last_error: entry
                .last_error
                .clone()
                .or_else(|| batch.and_then(|b| b.last_error.clone())),
            accepted_at_unix_ms: entry.accepted_at_ms,
            confirmed_at_unix_ms: entry.confirmed_at_ms,
            batch: entry.batch.map(|seq| BatchView {
                seq,
                records: batch.map(|b| b.members.len()),
                nonce: batch.and_then(|b| b.nonce),
                batch_id: batch.map(|b| b.id),
            }),
            tx_hash: entry.tx_hash,
            block_number: entry.block_number,
            patient_ref: entry.record.patient_ref,
            fields: Fields::of(&entry.record),
            record_hash: entry.record.record_hash(),
            on_chain,
            matches_chain,
            commitments_on_chain,
            chain_error,
            deployment,
        }
    }
}

/// `GET /v1/records/{id}` of a record known from the chain alone.
#[derive(Debug, Serialize)]
pub struct ChainRecord {
    pub prediction_id: String,
    pub status: Status,
    pub source: Source,
    pub on_chain: OnChain,
    pub commitments_on_chain: usize,
    #[serde(flatten)]
    pub deployment: Deployment,
}

/// What this instance holds of a record listed from the chain, checked against the chain.
#[derive(Debug, Serialize)]
pub struct HeldFields {
    pub matches_chain: bool,
    #[serde(flatten)]
    pub fields: Fields,
}

/// One record of a patient's listing.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Listed {
    /// On chain; its fields too when this instance holds them.
    OnChain {
        prediction_id: String,
        status: Status,
        tx_hash: Option<TxHash>,
        block_number: Option<u64>,
        record_hash: B256,
        commitments_on_chain: usize,
        #[serde(flatten)]
        held: Option<HeldFields>,
    },
    /// Still in the outbox.
    Waiting {
        prediction_id: String,
        status: Status,
        accepted_at_unix_ms: u64,
        #[serde(flatten)]
        fields: Fields,
        record_hash: B256,
    },
}

impl Listed {
    /// The chain's first commitment `l` to an id (`commitments` in all), with this instance's
    /// entry for it if it has one.
    pub fn on_chain(l: &CommittedLog, commitments: usize, entry: Option<&Entry>) -> Self {
        Self::OnChain {
            prediction_id: b256_to_id(&l.prediction_id),
            status: Status::Confirmed,
            tx_hash: l.tx_hash,
            block_number: l.block_number,
            record_hash: l.record_hash,
            commitments_on_chain: commitments,
            held: entry.map(|e| HeldFields {
                matches_chain: e.record.record_hash() == l.record_hash,
                fields: Fields::of(&e.record),
            }),
        }
    }

    /// An entry still waiting in the outbox.
    pub fn waiting(e: &Entry) -> Self {
        Self::Waiting {
            prediction_id: b256_to_id(&e.id()),
            status: e.status,
            accepted_at_unix_ms: e.accepted_at_ms,
            fields: Fields::of(&e.record),
            record_hash: e.record.record_hash(),
        }
    }
}

/// `POST /v1/patients/records`.
#[derive(Debug, Serialize)]
pub struct Listing {
    /// Withheld (null) from a clinician who recorded nothing for the patient.
    pub patient_ref: Option<B256>,
    pub count: usize,
    pub records: Vec<Listed>,
    #[serde(flatten)]
    pub deployment: Deployment,
}

/// Which checks of a verification passed.
#[derive(Debug, Serialize)]
pub struct Checks {
    pub input_commitment: bool,
    pub record: bool,
    /// Only when a patient id was given.
    pub patient: Option<bool>,
}

/// `POST /v1/records/{id}/verify`.
#[derive(Debug, Serialize)]
pub struct Verification {
    pub prediction_id: String,
    pub verified: bool,
    pub checks: Checks,
    /// What the input was given as: `features`, `input_digest` or `image`.
    pub input: &'static str,
    pub input_digest: B256,
    /// Whose salt: the `receipt`'s, or the `stored` copy (auditors only).
    pub salt: &'static str,
    pub on_chain: OnChain,
    pub commitments_on_chain: usize,
    #[serde(flatten)]
    pub deployment: Deployment,
}
