//! Recording predictions: a disease service sends every prediction that carries a patient id
//! to chain-svc (its own credential, short timeout) and returns chain-svc's receipt in its answer.
//! When chain-svc cannot be reached the prediction is still answered, with the audit marked
//! `unrecorded` and the reason, and a metric counts it. A record chain-svc may have taken after
//! the timeout is never called unrecorded: the same request is sent once more (chain-svc takes
//! a record once and answers a repeat with the stored receipt), and if that times out too the
//! audit says `unknown`. Images never travel: only the SHA-256
//! of the uploaded bytes (or of the canonical features, see `medchain_core::audit`).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

use crate::prediction::{Audit, NotRecorded, Prediction};
use medchain_core::contract::{Digest, Receipt, RecordRequest};
use medchain_core::domain::PatientId;

/// Where chain-svc is and how long a record may take.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainClientSettings {
    /// chain-svc's base URL; empty = predictions are not recorded (audit says why).
    pub url: String,
    pub timeout_ms: u64,
}

/// The client a disease service records through.
#[derive(Debug, Clone)]
pub struct AuditClient {
    http: reqwest::Client,
    records_url: Option<String>,
    token: Option<SecretString>,
}

impl AuditClient {
    /// A client for `settings`, presenting `token` (`auth.send.chain`) to chain-svc.
    pub fn new(settings: &ChainClientSettings, token: Option<SecretString>) -> Self {
        let timeout = Duration::from_millis(settings.timeout_ms.max(1));
        let http = medchain_core::http::client_builder(timeout)
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        let url = settings.url.trim().trim_end_matches('/');
        // `host:port` (Render's `fromService … property: hostport`) means plain http.
        let scheme = if url.contains("://") { "" } else { "http://" };
        Self {
            http,
            records_url: (!url.is_empty()).then(|| format!("{scheme}{url}/v1/records")),
            token,
        }
    }

    /// Records `p` for the patient, given the patient id and the input's digest (no patient,
    /// no record: returns `None`). `created_by` is the signed-in caller the gateway named: it
    /// decides who may read the record later, and stays off chain.
    pub async fn record(
        &self,
        p: &Prediction,
        patient: Option<(PatientId, [u8; 32])>,
        request_id: Option<String>,
        created_by: Option<String>,
    ) -> Option<Audit> {
        let (patient_id, input_digest) = patient?;
        let input_digest = Digest(input_digest);
        let Some(url) = &self.records_url else {
            return Some(unrecorded(
                "not_configured",
                "no chain service is configured (chain.url)",
                input_digest,
            ));
        };
        let Ok(label) = u8::try_from(p.result.class_index) else {
            return Some(unrecorded(
                "bad_request",
                "the predicted class does not fit a record's label (0-255)",
                input_digest,
            ));
        };
        let body = RecordRequest {
            prediction_id: p.prediction_id.clone(),
            disease: p.disease,
            modality: p.modality,
            model: p.model.clone(),
            label,
            probability: p.result.probability,
            patient_id: Some(patient_id),
            input_digest,
            created_by,
        };
        let sent = match self.send(url, &body, request_id.as_deref()).await {
            // It may have arrived and been taken after we stopped waiting (the review: the
            // prediction said `unrecorded`, chain-svc had the record). The same request again
            // finds out: chain-svc answers a repeat with the stored receipt.
            Err(e) if e.is_timeout() => {
                metrics::counter!(medchain_core::metrics::name("audit_retries_total")).increment(1);
                self.send(url, &body, request_id.as_deref()).await
            }
            other => other,
        };
        let outcome = match sent {
            Ok(res) => read_answer(res, input_digest).await,
            Err(e) if e.is_timeout() => {
                tracing::warn!(prediction = %p.prediction_id, "chain-svc did not answer twice; the record may or may not be taken");
                metrics::counter!(medchain_core::metrics::name("audit_unknown_total")).increment(1);
                return Some(Audit::NotRecorded {
                    status: NotRecorded::Unknown,
                    reason: format!(
                        "chain-svc did not answer in time, twice ({e}); it may have taken the \
                         record: look it up by prediction id"
                    ),
                    prediction_id: Some(p.prediction_id.clone()),
                    input_digest,
                });
            }
            Err(e) => Err(("unreachable", format!("chain-svc is unreachable: {e}"))),
        };
        Some(outcome.unwrap_or_else(|(kind, reason)| {
            tracing::warn!(prediction = %p.prediction_id, kind, %reason, "prediction not recorded");
            unrecorded(kind, &reason, input_digest)
        }))
    }

    /// One record request to chain-svc, with this service's credential and the request id.
    async fn send(
        &self,
        url: &str,
        body: &RecordRequest,
        request_id: Option<&str>,
    ) -> reqwest::Result<reqwest::Response> {
        let mut req = self.http.post(url).json(body);
        if let Some(t) = &self.token {
            req = req.header(
                medchain_core::auth::INTERNAL_TOKEN_HEADER,
                t.expose_secret(),
            );
        }
        if let Some(id) = request_id {
            req = req.header(medchain_core::request::REQUEST_ID_HEADER, id);
        }
        req.send().await
    }
}

/// What chain-svc's answer means: 202 with the receipt, or why the record was not taken.
async fn read_answer(
    res: reqwest::Response,
    input_digest: Digest,
) -> Result<Audit, (&'static str, String)> {
    let status = res.status();
    if status == reqwest::StatusCode::ACCEPTED {
        return match res.json::<Receipt>().await {
            Ok(receipt) => Ok(Audit::Recorded {
                receipt: Box::new(receipt),
                input_digest,
            }),
            Err(e) => Err(("bad_answer", format!("chain-svc answered unreadably: {e}"))),
        };
    }
    let detail = res
        .json::<Value>()
        .await
        .ok()
        .and_then(|v| v["detail"].as_str().map(str::to_string))
        .unwrap_or_default();
    Err(("refused", format!("chain-svc answered {status}: {detail}")))
}

fn unrecorded(kind: &'static str, reason: &str, input_digest: Digest) -> Audit {
    metrics::counter!(medchain_core::metrics::name("audit_unrecorded_total"), "reason" => kind)
        .increment(1);
    Audit::NotRecorded {
        status: NotRecorded::Unrecorded,
        reason: reason.to_string(),
        prediction_id: None,
        input_digest,
    }
}
