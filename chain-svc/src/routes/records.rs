//! The record routes: `POST /v1/records` (accept into the outbox, 202), `GET /v1/records/{id}`
//! (outbox status and the chain's copy), `POST /v1/patients/records` (the patient id in the
//! body, never in a URL that proxies and platforms log) and
//! `POST /v1/records/{id}/verify` (does the original input match the commitment on chain?).

use std::sync::Arc;
use std::time::Duration;

use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use alloy::primitives::{Address, B256};
use futures_util::StreamExt;
use medchain_core::error::{ApiError, ApiResult};
use medchain_core::request::ValidJson;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use medchain_core::auth::{self, Calling, Peer};
use medchain_core::contract::Digest as WireDigest;
use medchain_core::domain::{Disease, Modality, PatientId};

use crate::chain::{AuditChain, ChainError, CommittedLog, RecordInput};
use crate::outbox::{Entry, Outbox, OutboxError, Status, now_ms};
use crate::privacy::{self, PatientKey};

use super::views::{
    ChainRecord, Checks, Deployment, HeldRecord, Listed, Listing, OnChain, Source, Verification,
    b256_to_id,
};

/// How many new records chain-svc takes: each one costs gas on a public chain and waits in the
/// outbox, so that no caller can drain the signer's funds or fill the disk.
pub struct RecordLimits {
    all: governor::DefaultDirectRateLimiter,
    per_source: governor::DefaultKeyedRateLimiter<u8>,
    per_minute: u32,
    per_source_per_minute: u32,
    max_pending: u64,
    /// Verifications with the stored salt, per caller (auditors).
    stored_salt: governor::DefaultKeyedRateLimiter<String>,
    stored_salt_per_minute: u32,
}

impl std::fmt::Debug for RecordLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordLimits")
            .field("per_minute", &self.per_minute)
            .field("per_source_per_minute", &self.per_source_per_minute)
            .field("max_pending", &self.max_pending)
            .field("stored_salt_per_minute", &self.stored_salt_per_minute)
            .finish()
    }
}

impl RecordLimits {
    /// `per_minute` new records from all sources, `per_source_per_minute` from one (a minute's
    /// worth may come at once, then one every minute / n); at most `max_pending` waiting.
    /// `stored_salt_per_minute`: verifications one caller may make with the service's copy of
    /// the salt.
    pub fn new(
        per_minute: u32,
        per_source_per_minute: u32,
        max_pending: u64,
        stored_salt_per_minute: u32,
    ) -> Self {
        let quota = |n: u32| {
            let n = std::num::NonZeroU32::new(n.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
            governor::Quota::per_minute(n)
        };
        Self {
            all: governor::RateLimiter::direct(quota(per_minute)),
            per_source: governor::RateLimiter::keyed(quota(per_source_per_minute)),
            per_minute,
            per_source_per_minute,
            max_pending,
            stored_salt: governor::RateLimiter::keyed(quota(stored_salt_per_minute)),
            stored_salt_per_minute,
        }
    }

    /// One verification with the stored salt for `caller`, or the 429 to answer.
    fn stored_salt(&self, caller: &str) -> Result<(), ApiError> {
        use governor::clock::{Clock, DefaultClock};
        self.stored_salt
            .check_key(&caller.to_string())
            .map_err(|nu| {
                let retry_after = nu.wait_time_from(DefaultClock::default().now()).as_secs() + 1;
                ApiError::RateLimited {
                    detail: format!(
                        "{} verifications a minute with the stored salt per caller; retry in \
                         {retry_after} s",
                        self.stored_salt_per_minute
                    ),
                    retry_after,
                }
            })
    }

    /// Takes one new record from `source` (the disease code: the service that records it), or
    /// says why not.
    fn admit(&self, source: u8, pending: u64) -> Result<(), AcceptError> {
        use governor::clock::{Clock, DefaultClock};
        if pending >= self.max_pending {
            return Err(AcceptError::Backlog(pending));
        }
        let wait = |nu: governor::NotUntil<governor::clock::QuantaInstant>| {
            nu.wait_time_from(DefaultClock::default().now()).as_secs() + 1
        };
        if let Err(nu) = self.per_source.check_key(&source) {
            return Err(AcceptError::Limited {
                what: format!(
                    "{} records a minute from {}",
                    self.per_source_per_minute,
                    Disease::from_code(source).map_or("an unknown source", Disease::as_str)
                ),
                retry_after: wait(nu),
            });
        }
        if let Err(nu) = self.all.check() {
            return Err(AcceptError::Limited {
                what: format!("{} records a minute in all", self.per_minute),
                retry_after: wait(nu),
            });
        }
        Ok(())
    }
}

/// Why a new record was not accepted.
#[derive(Debug)]
enum AcceptError {
    Outbox(OutboxError),
    Limited { what: String, retry_after: u64 },
    Backlog(u64),
}

impl From<OutboxError> for AcceptError {
    fn from(e: OutboxError) -> Self {
        Self::Outbox(e)
    }
}

impl From<AcceptError> for ApiError {
    fn from(e: AcceptError) -> Self {
        match e {
            AcceptError::Outbox(e) => outbox_error(e),
            AcceptError::Limited { what, retry_after } => {
                metrics::counter!(medchain_core::metrics::name("records_refused_total"), "why" => "rate")
                    .increment(1);
                ApiError::RateLimited {
                    detail: format!(
                        "too many new records: this service takes {what}; retry in {retry_after} s"
                    ),
                    retry_after,
                }
            }
            AcceptError::Backlog(n) => {
                metrics::counter!(medchain_core::metrics::name("records_refused_total"), "why" => "backlog")
                    .increment(1);
                ApiError::Unavailable {
                    detail: format!(
                        "{n} records are waiting to be sent to the chain, the most this service \
                         holds; the record was not accepted, retry later"
                    ),
                    retry_after: Some(30),
                }
            }
        }
    }
}

/// What the record routes share.
#[derive(Debug)]
pub struct RecordsState {
    pub limits: RecordLimits,
    pub outbox: Arc<Outbox>,
    pub patient_key: PatientKey,
    pub wake: Arc<Notify>,
    pub contract: Address,
    pub chain_id: u64,
    pub chain: AuditChain,
    /// Largest image accepted by verify (hashed as it streams, never held whole).
    pub verify_max_bytes: usize,
    /// How long a read may wait for the chain node.
    pub read_timeout: Duration,
}

impl RecordsState {
    /// The contract every answer names.
    fn deployment(&self) -> Deployment {
        Deployment {
            contract: self.contract,
            chain_id: self.chain_id,
        }
    }
}

/// Who reads a record, as the gateway named them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reader {
    /// Open development mode (a loopback listener with no credentials) and no caller named:
    /// the operator at the machine, who sees everything.
    Operator,
    /// Reads and verifies any record; may verify with the stored salt.
    Auditor(String),
    /// Reads the records they created and those of patients they recorded a prediction for.
    Clinician(String),
}

impl Reader {
    /// The reader of a request: the caller the gateway named, or the operator in open mode.
    pub fn of(req: &HttpRequest) -> ApiResult<Self> {
        match auth::named_caller(req, "records are read")? {
            None => Ok(Self::Operator),
            Some((id, role)) => match role.as_str() {
                "auditor" => Ok(Self::Auditor(id)),
                "clinician" => Ok(Self::Clinician(id)),
                other => Err(ApiError::Forbidden(format!(
                    "the {other} role reads no records"
                ))),
            },
        }
    }

    /// Whether this reader may see the record `id` of the patient `patient_ref`.
    async fn may_read(&self, state: &RecordsState, id: B256, patient_ref: B256) -> ApiResult<bool> {
        match self {
            Self::Operator | Self::Auditor(_) => Ok(true),
            Self::Clinician(c) => {
                let c = c.clone();
                with_outbox(state, move |o| o.may_read(&c, &id, &patient_ref)).await
            }
        }
    }
}

/// What a reader who may not see a record hears: exactly what a record that does not exist
/// says, so that trying ids tells nothing.
fn no_record(id: &str) -> ApiError {
    ApiError::NotFound(format!("no record for prediction {id}"))
}

/// The model that made the prediction, and a prediction to record: the types the disease
/// services send (one definition for both sides); the receipt they get back.
pub use medchain_core::contract::{ModelRef, Receipt, RecordRequest as NewRecord};

/// A UUID prediction id as the contract's bytes32 (the 16 bytes, left-aligned).
pub fn id_to_b256(id: &str) -> Result<B256, ApiError> {
    let uuid = uuid::Uuid::parse_str(id)
        .map_err(|_| ApiError::invalid("prediction_id", "`prediction_id` must be a UUID"))?;
    let mut b = [0u8; 32];
    b[..16].copy_from_slice(uuid.as_bytes());
    Ok(B256::from(b))
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
        // A full disk: nothing was accepted; the outbox reopens and the caller may retry.
        OutboxError::Io(_) => ApiError::Unavailable {
            detail: format!("{e}; the record was not accepted, retry later"),
            retry_after: Some(5),
        },
    }
}

/// The receipt of `stored`, an accepted record.
fn receipt(state: &RecordsState, stored: &Entry) -> ApiResult<Receipt> {
    // Written from a request's typed values; anything else in the outbox is a bug.
    let unknown = |what: &str, code: u8| {
        ApiError::Internal(anyhow::anyhow!("the stored record has {what} code {code}"))
    };
    let digest = |b: B256| WireDigest(b.0);
    let r = &stored.record;
    Ok(Receipt {
        prediction_id: b256_to_id(&stored.id()),
        status: stored.status,
        patient_ref: digest(r.patient_ref),
        model_id_hash: digest(r.model_id_hash),
        input_commitment: digest(r.input_commitment),
        disease: Disease::from_code(r.disease).ok_or_else(|| unknown("disease", r.disease))?,
        modality: Modality::from_code(r.modality).ok_or_else(|| unknown("modality", r.modality))?,
        label: r.label,
        probability_bps: r.probability_bps,
        record_hash: digest(r.record_hash()),
        salt: digest(stored.salt),
        contract: format!("0x{}", alloy::hex::encode(state.contract)),
        chain_id: state.chain_id,
    })
}

/// Each disease service writes its own disease's records only: a compromised heart-svc
/// cannot put words in diabetes-svc's mouth.
fn check_writer(req: &HttpRequest, disease: Disease) -> ApiResult<()> {
    if let Some(Calling::Peer(writer)) = auth::calling(req) {
        let own = match writer {
            Peer::Diabetes => Some(Disease::Diabetes),
            Peer::Heart => Some(Disease::Heart),
            _ => None,
        };
        if own != Some(disease) {
            return Err(ApiError::Forbidden(format!(
                "the {writer} credential may not record {disease} predictions"
            )));
        }
    }
    Ok(())
}

/// Puts a new record in the outbox, within the limits. Idempotent: a retry of the same request
/// (same fields, same input) gets the stored record back; its salt is the first request's, so
/// the two compare through the commitment. Only a new record counts against the limits.
async fn store(
    state: &web::Data<RecordsState>,
    record: RecordInput,
    salt: B256,
    digest: B256,
    created_by: Option<String>,
) -> ApiResult<Entry> {
    let limits_state = state.clone();
    with_outbox(state, move |outbox| -> Result<Entry, AcceptError> {
        let same = |old: &Entry| {
            let mut again = record.clone();
            again.input_commitment = privacy::commitment(&old.salt, &digest);
            old.record == again
        };
        if let Some(old) = outbox.get(&record.prediction_id)? {
            return if same(&old) {
                Ok(old)
            } else {
                Err(OutboxError::Conflict(old.id()).into())
            };
        }
        let (pending, _) = outbox.pending_stats()?;
        limits_state.limits.admit(record.disease, pending)?;
        match outbox.enqueue_by(Entry::new(&record, salt, now_ms()), created_by.as_deref()) {
            // Lost a race with an identical request: that one's record stands.
            Err(OutboxError::Conflict(id)) => match outbox.get(&id)? {
                Some(old) if same(&old) => Ok(old),
                _ => Err(OutboxError::Conflict(id).into()),
            },
            other => Ok(other?),
        }
    })
    .await
}

/// `POST /v1/records`
pub async fn accept(
    req: HttpRequest,
    state: web::Data<RecordsState>,
    body: ValidJson<NewRecord>,
) -> ApiResult<HttpResponse> {
    let r = body.0;
    let prediction_id = id_to_b256(&r.prediction_id)?;
    check_writer(&req, r.disease)?;
    let created_by = r
        .created_by
        .filter(|c| !c.is_empty())
        .map(|c| {
            if auth::is_caller_id(&c) {
                Ok(c)
            } else {
                Err(ApiError::invalid(
                    "created_by",
                    "`created_by` must be a caller id: printable ASCII, at most 160 characters",
                ))
            }
        })
        .transpose()?;
    if !r.probability.is_finite() || !(0.0..=1.0).contains(&r.probability) {
        return Err(ApiError::invalid(
            "probability",
            "`probability` must be between 0 and 1",
        ));
    }
    let salt = privacy::new_salt().map_err(|e| ApiError::Internal(anyhow::anyhow!(e)))?;
    let record = RecordInput {
        prediction_id,
        patient_ref: state.patient_key.patient_ref(r.patient_id.as_ref()),
        model_id_hash: model_id_hash(&r.model),
        input_commitment: privacy::commitment(&salt, &B256::from(r.input_digest.0)),
        disease: r.disease.code(),
        modality: r.modality.code(),
        label: r.label,
        probability_bps: (r.probability * 10_000.0).round() as u16,
    };
    let digest = B256::from(r.input_digest.0);
    let stored = store(&state, record, salt, digest, created_by).await?;
    state.wake.notify_one();
    metrics::counter!(medchain_core::metrics::name("records_accepted_total")).increment(1);
    Ok(HttpResponse::Accepted().json(receipt(&state, &stored)?))
}

/// The first commitment the chain holds for an id (a later one — another recorder, or another
/// outbox that took the same id — does not replace it), and how many there are.
fn first_commitment(logs: &[CommittedLog]) -> Option<&CommittedLog> {
    logs.first()
}

/// Runs a chain call under the read timeout: a node that does not answer in time is a 503;
/// the call's own error is the caller's to map.
pub(crate) async fn within_read_timeout<T>(
    state: &RecordsState,
    f: impl Future<Output = Result<T, ChainError>>,
) -> ApiResult<Result<T, ChainError>> {
    tokio::time::timeout(state.read_timeout, f)
        .await
        .map_err(|_| {
            ApiError::unavailable(
                format!(
                    "the chain node did not answer within {} ms",
                    state.read_timeout.as_millis()
                ),
                Some(5),
            )
        })
}

/// Runs a chain read under the read timeout; a node that is down or slow is a 503.
async fn read_chain<T>(
    state: &RecordsState,
    f: impl Future<Output = Result<T, ChainError>>,
) -> ApiResult<T> {
    within_read_timeout(state, f)
        .await?
        .map_err(|e| ApiError::unavailable(format!("cannot read the chain: {e}"), Some(5)))
}

/// Runs an outbox operation on the blocking pool (redb reads and fsyncs block).
async fn with_outbox<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    state: &RecordsState,
    f: impl FnOnce(&Outbox) -> Result<T, E> + Send + 'static,
) -> ApiResult<T> {
    let outbox = state.outbox.clone();
    web::block(move || f(&outbox))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("outbox task: {e}")))?
        .map_err(Into::into)
}

impl From<OutboxError> for ApiError {
    fn from(e: OutboxError) -> Self {
        outbox_error(e)
    }
}

async fn outbox_get(state: &RecordsState, key: B256) -> ApiResult<Option<Entry>> {
    with_outbox(state, move |o| o.get(&key)).await
}

/// `GET /v1/records/{id}`: the outbox's view (status, attempts, transaction) and the chain's
/// copy, compared. A record this instance never saw (another instance, or a host that lost
/// its disk) is answered from the chain alone.
pub async fn get(
    req: HttpRequest,
    state: web::Data<RecordsState>,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let reader = Reader::of(&req)?;
    let key = id_to_b256(&id)?;
    let entry = outbox_get(&state, key).await?;
    if let Some(e) = &entry
        && !reader.may_read(&state, key, e.record.patient_ref).await?
    {
        return Err(no_record(&id));
    }
    let chain = read_chain(&state, state.chain.commitments(key)).await;
    let Some(entry) = entry else {
        let logs = chain?;
        return match first_commitment(&logs) {
            Some(l) if !reader.may_read(&state, key, l.patient_ref).await? => Err(no_record(&id)),
            Some(l) => Ok(HttpResponse::Ok().json(ChainRecord {
                prediction_id: b256_to_id(&key),
                status: Status::Confirmed,
                source: Source::Chain,
                on_chain: OnChain::of(l),
                commitments_on_chain: logs.len(),
                deployment: state.deployment(),
            })),
            None => Err(no_record(&id)),
        };
    };
    let batch = match entry.batch {
        Some(seq) => with_outbox(&state, move |o| o.batch(seq)).await?,
        None => None,
    };
    let chain = match &chain {
        Ok(logs) => Ok(logs.as_slice()),
        Err(e) => Err(e.to_string()),
    };
    Ok(HttpResponse::Ok().json(HeldRecord::new(
        &entry,
        batch.as_ref(),
        chain,
        state.deployment(),
    )))
}

/// The body of a per-patient listing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientQuery {
    pub patient_id: PatientId,
}

/// `POST /v1/patients/records` `{"patient_id": …}`: every record of the patient on chain (found
/// by the keyed reference, oldest first) and those still waiting in the outbox. A POST so that
/// the patient id travels in the body: URLs end up in proxy and platform access logs.
pub async fn by_patient(
    req: HttpRequest,
    state: web::Data<RecordsState>,
    body: ValidJson<PatientQuery>,
) -> ApiResult<HttpResponse> {
    let reader = Reader::of(&req)?;
    let patient_ref = state.patient_key.patient_ref(Some(&body.0.patient_id));
    // A clinician lists the patients they recorded a prediction for; any other patient looks
    // exactly like one nobody has records of. Not even the patient's reference is given: with
    // it, the public chain would tell when that patient's records were written.
    if let Reader::Clinician(c) = &reader {
        let c = c.clone();
        if !with_outbox(&state, move |o| o.cares_for(&c, &patient_ref)).await? {
            return Ok(HttpResponse::Ok().json(listing(&state, None, Vec::new())));
        }
    }
    let logs = read_chain(&state, state.chain.records_of(patient_ref)).await?;
    // The fields behind each hash are off chain: from this service's outbox, each checked
    // against the chain's hash; a record another instance wrote shows its hash only.
    let ids: Vec<B256> = logs.iter().map(|l| l.prediction_id).collect();
    let held = with_outbox(&state, move |o| {
        ids.iter()
            .map(|id| o.get(id))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    let mut counts = std::collections::HashMap::<B256, usize>::new();
    for l in &logs {
        *counts.entry(l.prediction_id).or_default() += 1;
    }
    let mut seen = std::collections::HashSet::new();
    let mut records = Vec::new();
    for (l, entry) in logs.iter().zip(held) {
        if !seen.insert(l.prediction_id) {
            continue; // a later commitment to the same id does not replace the first
        }
        let commitments = counts.get(&l.prediction_id).copied().unwrap_or(1);
        records.push(Listed::on_chain(l, commitments, entry.as_ref()));
    }
    let waiting = with_outbox(&state, move |o| o.pending_of(&patient_ref)).await?;
    for e in waiting.iter().filter(|e| !seen.contains(&e.id())) {
        records.push(Listed::waiting(e));
    }
    Ok(HttpResponse::Ok().json(listing(&state, Some(patient_ref), records)))
}

fn listing(state: &RecordsState, patient_ref: Option<B256>, records: Vec<Listed>) -> Listing {
    Listing {
        patient_ref,
        count: records.len(),
        records,
        deployment: state.deployment(),
    }
}

/// The JSON form of a verify request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyJson {
    /// The tabular features exactly as sent for the prediction (order and integer spelling
    /// do not matter; see the canonical encoding).
    #[serde(default)]
    pub features: Option<Map<String, Value>>,
    /// Or the input's SHA-256 directly (e.g. of an image hashed elsewhere).
    #[serde(default)]
    pub input_digest: Option<B256>,
    /// The salt from the receipt (required, but for an auditor: see `verify`).
    #[serde(default)]
    pub salt: Option<B256>,
    /// Also check that the record belongs to this patient.
    #[serde(default)]
    pub patient_id: Option<PatientId>,
}

/// Query of a verify request whose body is the image itself. No patient id here: URLs are
/// logged by proxies and platforms; to check the patient too, send JSON with the image's
/// `input_digest` and the `patient_id`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyQuery {
    #[serde(default)]
    pub salt: Option<String>,
}

fn is_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || m.ends_with("+json")
        })
}

/// SHA-256 of a streamed body, refusing more than `max` bytes.
async fn hash_stream(mut payload: web::Payload, max: usize) -> ApiResult<(B256, usize)> {
    let mut h = Sha256::new();
    let mut n = 0usize;
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        n += chunk.len();
        if n > max {
            return Err(ApiError::TooLarge {
                detail: format!("the image is larger than {max} bytes"),
                field: Some("image".into()),
            });
        }
        h.update(&chunk);
    }
    if n == 0 {
        return Err(ApiError::invalid(
            "image",
            "the body is empty: send the original image bytes, or JSON with `features` or \
             `input_digest`",
        ));
    }
    Ok((B256::from_slice(&h.finalize()), n))
}

/// `POST /v1/records/{id}/verify`: recomputes the commitment from the original input and the
/// salt, and compares it with the chain's copy (not the outbox's: the chain is the witness).
/// JSON body `{features | input_digest, salt?, patient_id?}`, or the original image as the raw
/// body (any non-JSON content type) with `?salt=` and `?patient_id=` in the query.
pub async fn verify(
    req: HttpRequest,
    state: web::Data<RecordsState>,
    id: web::Path<String>,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let reader = Reader::of(&req)?;
    let key = id_to_b256(&id)?;
    let claim = if is_json(&req) {
        let body = ValidJson::<VerifyJson>::from_request(&req, &mut payload.into_inner())
            .await?
            .0;
        Claim::of_json(body)?
    } else {
        Claim::of_image(&req, payload, state.verify_max_bytes).await?
    };
    let patient_ref = claim
        .patient_id
        .map(|p| state.patient_key.patient_ref(Some(&p)));
    let entry = outbox_get(&state, key).await?;
    let logs = read_chain(&state, state.chain.commitments(key)).await?;
    let owner = entry
        .as_ref()
        .map(|e| e.record.patient_ref)
        .or_else(|| first_commitment(&logs).map(|l| l.patient_ref));
    if let Some(owner) = owner
        && !reader.may_read(&state, key, owner).await?
    {
        return Err(no_record(&id));
    }
    let salt_source = if claim.salt.is_some() {
        "receipt"
    } else {
        "stored"
    };
    let salt = salt_to_use(&state, &reader, key, claim.salt)?;
    let Some(on_chain) = first_commitment(&logs) else {
        return Err(not_on_chain(&id, entry));
    };
    // The chain holds the hash of the record's fields; they are in the outbox (and in the
    // receipt, for the standalone verifier).
    let Some(entry) = entry else {
        return Err(ApiError::invalid(
            "prediction_id",
            "the record is on chain but this service does not hold its fields (another \
             instance recorded it): check it with the standalone verifier and its receipt",
        ));
    };
    let salt = salt.unwrap_or(entry.salt);
    let mut claimed = entry.record.clone();
    claimed.input_commitment = privacy::commitment(&salt, &claim.digest);
    let input_matches = claimed.record_hash() == on_chain.record_hash;
    let record_matches = entry.record.record_hash() == on_chain.record_hash;
    let patient_matches = patient_ref.map(|r| r == on_chain.patient_ref);
    let verified = input_matches && patient_matches.unwrap_or(true);
    Ok(HttpResponse::Ok().json(Verification {
        prediction_id: b256_to_id(&key),
        verified,
        checks: Checks {
            input_commitment: input_matches,
            record: record_matches,
            patient: patient_matches,
        },
        input: claim.input,
        input_digest: claim.digest,
        salt: salt_source,
        on_chain: OnChain::of(on_chain),
        commitments_on_chain: logs.len(),
        deployment: state.deployment(),
    }))
}

/// What a verify request claims the record was made from.
struct Claim {
    /// The SHA-256 of the input: computed here from the features or the image, or given.
    digest: B256,
    /// The receipt's salt; `None` asks for the stored one.
    salt: Option<B256>,
    patient_id: Option<PatientId>,
    /// How the input came: `features`, `input_digest` or `image`.
    input: &'static str,
}

impl Claim {
    /// A JSON body: the original `features` or their `input_digest`, with the salt and the
    /// patient id.
    fn of_json(body: VerifyJson) -> ApiResult<Self> {
        let (digest, input) = match (&body.features, body.input_digest) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "input_digest",
                    "send either `features` or `input_digest`, not both",
                ));
            }
            (Some(f), None) => {
                let bytes = medchain_core::audit::canonical_features(f).map_err(|k| {
                    ApiError::invalid(
                        format!("features.{k}"),
                        format!("feature `{k}` must be a finite number or null"),
                    )
                })?;
                (privacy::input_digest(&bytes), "features")
            }
            (None, Some(d)) => (d, "input_digest"),
            (None, None) => {
                return Err(ApiError::invalid(
                    "features",
                    "send the original `features` (or `input_digest`, or the image as the body)",
                ));
            }
        };
        Ok(Self {
            digest,
            salt: body.salt,
            patient_id: body.patient_id,
            input,
        })
    }

    /// The image as the body, hashed as it streams in, the salt in the query (a patient id may
    /// not travel in a URL).
    async fn of_image(
        req: &HttpRequest,
        payload: web::Payload,
        max_bytes: usize,
    ) -> ApiResult<Self> {
        if req
            .query_string()
            .split('&')
            .any(|kv| kv.starts_with("patient_id="))
        {
            return Err(ApiError::invalid(
                "patient_id",
                "a patient id may not travel in a URL (they are logged): send JSON \
                 {\"input_digest\": SHA-256 of the image, \"salt\", \"patient_id\"} instead",
            ));
        }
        let q = web::Query::<VerifyQuery>::from_query(req.query_string())
            .map_err(|e| ApiError::invalid("query", format!("bad query string: {e}")))?
            .into_inner();
        let salt = q
            .salt
            .map(|s| {
                s.parse::<B256>()
                    .map_err(|_| ApiError::invalid("salt", "`salt` must be 32 bytes of hex"))
            })
            .transpose()?;
        let (digest, _) = hash_stream(payload, max_bytes).await?;
        Ok(Self {
            digest,
            salt,
            patient_id: None,
            input: "image",
        })
    }
}

/// The salt a verification uses: the receipt's, or (`None`) the stored one — which only an
/// auditor (each use logged and limited) or the operator may use.
///
/// Without the receipt's salt, verify would be an oracle: anyone could test guesses about a
/// patient's input against the service's own copy of the salt (the review: glucose 140 /
/// 148 / 150 answered false / true / false, no key and no salt).
fn salt_to_use(
    state: &RecordsState,
    reader: &Reader,
    key: B256,
    salt: Option<B256>,
) -> ApiResult<Option<B256>> {
    match (salt, reader) {
        (Some(s), _) => Ok(Some(s)),
        (None, Reader::Auditor(who)) => {
            state.limits.stored_salt(who)?;
            metrics::counter!(medchain_core::metrics::name("stored_salt_uses_total")).increment(1);
            tracing::info!(target: "medchain::access", caller = %who, prediction = %b256_to_id(&key), "verify with the stored salt");
            Ok(None)
        }
        (None, Reader::Operator) => Ok(None),
        (None, Reader::Clinician(_)) => Err(ApiError::invalid(
            "salt",
            "send the `salt` from the record's receipt: the service does not check guesses \
             with its own copy (only an auditor may, and each use is logged)",
        )),
    }
}

/// Why a record with no commitment on chain cannot be verified: pending, failed, or unknown.
fn not_on_chain(id: &str, entry: Option<Entry>) -> ApiError {
    match entry {
        Some(e) if e.status == Status::Pending => ApiError::Conflict(format!(
            "prediction {id} is accepted but not on chain yet (pending); verify once it is \
             confirmed"
        )),
        Some(e) => ApiError::Conflict(format!(
            "prediction {id} is not on chain: {}",
            e.last_error.unwrap_or_else(|| "rejected".into())
        )),
        None => no_record(id),
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn a_minutes_worth_at_once_then_refused() {
        let l = RecordLimits::new(4, 3, 100, 2);
        let got: Vec<bool> = (0..4).map(|_| l.admit(1, 0).is_ok()).collect();
        assert_eq!(got, [true, true, true, false]);
        let salt: Vec<bool> = (0..3).map(|_| l.stored_salt("audit-1").is_ok()).collect();
        assert_eq!(salt, [true, true, false], "per caller");
        assert!(
            l.stored_salt("audit-2").is_ok(),
            "another caller has their own"
        );
    }
}
