//! The typed contracts between services: what a disease service sends chain-svc to record a
//! prediction ([`RecordRequest`], `POST /v1/records`), what chain-svc answers ([`Receipt`], with
//! the record's [`RecordStatus`]), and the model reference a prediction and its record both
//! carry ([`ModelRef`]). The sender serialises these types and the receiver deserialises the same
//! ones, so the two sides cannot drift apart.

/// The Open Inference Protocol's binary tensor data extension: the length of the JSON at the
/// start of a request or response body whose binary tensors follow it. The gateway passes it
/// both ways; the disease services read and write it.
pub const INFERENCE_HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::domain::{Disease, Modality, PatientId};

/// The model that made a prediction: its card's id and version and its file's SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    pub id: String,
    pub version: String,
    pub sha256: String,
}

/// A SHA-256 digest on the wire: `0x` and 64 hex digits (the `0x` optional when read, either
/// case).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{}", hex::encode(self.0))
    }
}

impl std::str::FromStr for Digest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix("0x").unwrap_or(s);
        let mut out = [0u8; 32];
        hex::decode_to_slice(digits, &mut out)
            .map_err(|_| "expected 32 bytes as 64 hex digits (0x…)".to_string())?;
        Ok(Digest(out))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `POST /v1/records` on chain-svc: a prediction to record. The disease, the modality and the
/// patient id are checked as they are read (their types); chain-svc checks the rest (a UUID
/// id, a probability in [0, 1]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordRequest {
    pub prediction_id: String,
    pub disease: Disease,
    pub modality: Modality,
    pub model: ModelRef,
    /// The predicted class's index.
    pub label: u8,
    /// The predicted class's probability.
    pub probability: f64,
    #[serde(default)]
    pub patient_id: Option<PatientId>,
    /// SHA-256 of the canonical input (canonical JSON features, or the uploaded image bytes:
    /// [`crate::audit`]).
    pub input_digest: Digest,
    /// The signed-in caller who asked for the prediction (the gateway's caller id): who may
    /// read the record later. Kept in chain-svc's outbox, never on chain.
    #[serde(default)]
    pub created_by: Option<String>,
}

/// Where a record is: waiting in chain-svc's outbox, on chain, or refused by the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    Pending,
    Confirmed,
    /// The contract refused it (not a retryable condition); the record's `last_error` says why.
    Rejected,
}

/// chain-svc's answer to an accepted record (`202` on `POST /v1/records`; the same receipt
/// again for a repeat of the same request). With the salt and the fields, anyone can check the
/// chain's copy without chain-svc (the standalone verifier).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub prediction_id: String,
    pub status: RecordStatus,
    /// The keyed reference of the patient (never the patient id).
    pub patient_ref: Digest,
    /// SHA-256 over the model's id, version and file hash.
    pub model_id_hash: Digest,
    /// The salted commitment to the input's digest.
    pub input_commitment: Digest,
    pub disease: Disease,
    pub modality: Modality,
    pub label: u8,
    /// The probability in basis points (0 to 10000).
    pub probability_bps: u16,
    /// What the chain holds for the record (with its id and the patient reference): the hash
    /// of the fields above.
    pub record_hash: Digest,
    /// Keep it to verify later: without it (and without the service's copy) the commitment
    /// cannot be linked to the input.
    pub salt: Digest,
    /// The audit contract's address (`0x` and 40 hex digits).
    pub contract: String,
    pub chain_id: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_is_0x_and_64_hex_digits_both_ways() {
        let d: Digest = format!("0x{}", "aB".repeat(32)).parse().expect("digest");
        assert_eq!(d.0, [0xab; 32]);
        assert_eq!(d.to_string(), format!("0x{}", "ab".repeat(32)));
        assert_eq!("ab".repeat(32).parse::<Digest>(), Ok(d));
        for bad in ["0x12", "", "0x", &format!("0x{}", "zz".repeat(32))] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
        let json = serde_json::to_value(d).expect("serialise");
        assert_eq!(
            serde_json::from_value::<Digest>(json).expect("read back"),
            d
        );
    }

    #[test]
    fn a_record_request_refuses_unknown_fields() {
        let mut v = serde_json::json!({
            "prediction_id": "6a1f6f2e-1c3d-4e5f-8a9b-0c1d2e3f4a5b", "disease": "diabetes",
            "modality": "tabular", "model": {"id": "m", "version": "1", "sha256": "00"},
            "label": 1, "probability": 0.7, "input_digest": format!("0x{}", "00".repeat(32)),
        });
        let r: RecordRequest = serde_json::from_value(v.clone()).expect("minimal request");
        assert_eq!(r.patient_id, None);
        assert_eq!(
            serde_json::to_value(&r).expect("serialise")["input_digest"],
            v["input_digest"]
        );
        v["extra"] = 1.into();
        assert!(serde_json::from_value::<RecordRequest>(v).is_err());
    }

    #[test]
    fn a_receipt_reads_back_what_it_wrote() {
        let d = |b: u8| Digest([b; 32]);
        let r = Receipt {
            prediction_id: "6a1f6f2e-1c3d-4e5f-8a9b-0c1d2e3f4a5b".into(),
            status: RecordStatus::Pending,
            patient_ref: d(1),
            model_id_hash: d(2),
            input_commitment: d(3),
            disease: Disease::Heart,
            modality: Modality::Image,
            label: 2,
            probability_bps: 7312,
            record_hash: d(4),
            salt: d(5),
            contract: format!("0x{}", "ab".repeat(20)),
            chain_id: 31337,
        };
        let v = serde_json::to_value(&r).expect("serialise");
        assert_eq!(v["status"], "pending");
        assert_eq!(v["salt"], format!("0x{}", "05".repeat(32)));
        assert_eq!(serde_json::from_value::<Receipt>(v).expect("read back"), r);
    }
}
