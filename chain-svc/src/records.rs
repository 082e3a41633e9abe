//! `POST /v1/records` (accept into the outbox, 202) and `GET /v1/records/{id}`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{HttpResponse, web};
use alloy::primitives::{Address, B256};
use medchain_shared::error::{ApiError, ApiResult};
use medchain_shared::request::ValidJson;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::chain::RecordInput;
use crate::outbox::{Entry, Outbox, OutboxError, Status};
use crate::privacy::{self, PatientKey};

/// What the record routes share.
#[derive(Debug)]
pub struct RecordsState {
    pub outbox: Arc<Outbox>,
    pub patient_key: PatientKey,
    pub wake: Arc<Notify>,
    pub contract: Address,
    pub chain_id: u64,
}

/// The model that made the prediction.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    pub id: String,
    pub version: String,
    pub sha256: String,
}

/// A prediction to record (sent by a disease service).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRecord {
    pub prediction_id: String,
    pub disease: String,
    pub modality: String,
    pub model: ModelRef,
    pub label: u8,
    pub probability: f64,
    #[serde(default)]
    pub patient_id: Option<String>,
    /// SHA-256 of the canonical input (canonical JSON features, or the uploaded image bytes).
    pub input_digest: B256,
}

/// The receipt of an accepted record.
#[derive(Debug, Serialize)]
pub struct Receipt {
    pub prediction_id: String,
    pub status: Status,
    pub patient_ref: B256,
    pub model_id_hash: B256,
    pub input_commitment: B256,
    /// Keep it to verify later; without it (and without the service's copy) the commitment
    /// cannot be linked to the input.
    pub salt: B256,
    pub contract: Address,
    pub chain_id: u64,
}

/// A UUID prediction id as the contract's bytes32 (the 16 bytes, left-aligned).
pub fn id_to_b256(id: &str) -> Result<B256, ApiError> {
    let uuid = uuid::Uuid::parse_str(id)
        .map_err(|_| ApiError::invalid("prediction_id", "`prediction_id` must be a UUID"))?;
    let mut b = [0u8; 32];
    b[..16].copy_from_slice(uuid.as_bytes());
    Ok(B256::from(b))
}

fn b256_to_id(b: &B256) -> String {
    let mut u = [0u8; 16];
    u.copy_from_slice(&b.0[..16]);
    uuid::Uuid::from_bytes(u).to_string()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// SHA-256 over the model's identity (id, version and file hash).
pub fn model_id_hash(m: &ModelRef) -> B256 {
    let mut h = Sha256::new();
    for part in [&m.id, &m.version, &m.sha256] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    B256::from_slice(&h.finalize())
}

fn outbox_error(e: OutboxError) -> ApiError {
    match e {
        OutboxError::Conflict(_) => ApiError::Conflict(e.to_string()),
        OutboxError::NotFound(_) => ApiError::NotFound(e.to_string()),
        OutboxError::Storage(_) => ApiError::Internal(anyhow::anyhow!(e)),
    }
}

fn code(field: &str, value: &str, allowed: &[&str]) -> Result<u8, ApiError> {
    allowed
        .iter()
        .position(|a| *a == value)
        .map(|i| i as u8 + 1)
        .ok_or_else(|| {
            ApiError::invalid(
                field,
                format!("`{field}` must be one of {}", allowed.join(", ")),
            )
        })
}

/// `POST /v1/records`
pub async fn accept(
    state: web::Data<RecordsState>,
    body: ValidJson<NewRecord>,
) -> ApiResult<HttpResponse> {
    let r = body.0;
    let prediction_id = id_to_b256(&r.prediction_id)?;
    let disease = code("disease", &r.disease, &["diabetes", "heart"])?;
    let modality = code("modality", &r.modality, &["tabular", "image"])?;
    if !r.probability.is_finite() || !(0.0..=1.0).contains(&r.probability) {
        return Err(ApiError::invalid(
            "probability",
            "`probability` must be between 0 and 1",
        ));
    }
    let patient_id = r
        .patient_id
        .as_deref()
        .map(medchain_shared::request::check_patient_id)
        .transpose()?;
    let salt = privacy::new_salt().map_err(|e| ApiError::Internal(anyhow::anyhow!(e)))?;
    let record = RecordInput {
        prediction_id,
        patient_ref: state.patient_key.patient_ref(patient_id.as_deref()),
        model_id_hash: model_id_hash(&r.model),
        input_commitment: privacy::commitment(&salt, &r.input_digest),
        disease,
        modality,
        label: r.label,
        probability_bps: (r.probability * 10_000.0).round() as u16,
    };
    let outbox = state.outbox.clone();
    let digest = r.input_digest;
    // Idempotent: a retry of the same request (same fields, same input) gets the stored
    // record back; its salt is the first request's, so compare through the commitment.
    let stored = web::block(move || -> Result<Entry, OutboxError> {
        let same = |old: &Entry| {
            let mut again = record.clone();
            again.input_commitment = privacy::commitment(&old.salt, &digest);
            old.record == again
        };
        if let Some(old) = outbox.get(&record.prediction_id)? {
            return if same(&old) {
                Ok(old)
            } else {
                Err(OutboxError::Conflict(old.id()))
            };
        }
        match outbox.enqueue(Entry::new(&record, salt, now_ms())) {
            // Lost a race with an identical request: that one's record stands.
            Err(OutboxError::Conflict(id)) => match outbox.get(&id)? {
                Some(old) if same(&old) => Ok(old),
                _ => Err(OutboxError::Conflict(id)),
            },
            other => other,
        }
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("outbox task: {e}")))?
    .map_err(outbox_error)?;
    state.wake.notify_one();
    Ok(HttpResponse::Accepted().json(Receipt {
        prediction_id: b256_to_id(&stored.id()),
        status: stored.status,
        patient_ref: stored.record.patient_ref,
        model_id_hash: stored.record.model_id_hash,
        input_commitment: stored.record.input_commitment,
        salt: stored.salt,
        contract: state.contract,
        chain_id: state.chain_id,
    }))
}

/// `GET /v1/records/{id}`
pub async fn get(state: web::Data<RecordsState>, id: web::Path<String>) -> ApiResult<HttpResponse> {
    let key = id_to_b256(&id)?;
    let outbox = state.outbox.clone();
    let entry = web::block(move || outbox.get(&key))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("outbox task: {e}")))?
        .map_err(outbox_error)?
        .ok_or_else(|| ApiError::NotFound(format!("no record for prediction {id}")))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "prediction_id": b256_to_id(&entry.id()),
        "status": entry.status,
        "attempts": entry.attempts,
        "last_error": entry.last_error,
        "tx_hash": entry.tx_hash,
        "block_number": entry.block_number,
        "patient_ref": entry.record.patient_ref,
        "model_id_hash": entry.record.model_id_hash,
        "input_commitment": entry.record.input_commitment,
        "label": entry.record.label,
        "probability_bps": entry.record.probability_bps,
        "contract": state.contract,
        "chain_id": state.chain_id,
    })))
}
