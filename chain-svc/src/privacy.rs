//! What goes on chain instead of patient data: a keyed hash of the patient id, and a salted
//! commitment to the input. Nothing here is reversible without the server secret or the salt.
//!
//! * `patient_ref = HMAC-SHA256(secret, "medchain/patient/v1" ‖ patient_id)`: the same patient
//!   maps to the same reference (lookups work), but a reader of the chain cannot test guesses
//!   without the secret.
//! * `input_digest = SHA-256(canonical input)`: canonical JSON for tabular features (keys in the
//!   model card's order, numbers as JSON numbers, missing as null, no spaces), the uploaded bytes
//!   for images. The disease service computes it, so images never travel to chain-svc.
//! * `commitment = SHA-256("medchain/input/v1" ‖ salt ‖ input_digest)` with a random 32-byte
//!   salt per record, kept off chain (outbox + receipt). Eight tabular features have so little
//!   entropy that an unsalted hash could be brute-forced; deleting the salt makes the record's
//!   commitment unlinkable to any input (erasure on request).

use alloy::primitives::B256;
use hmac::{Hmac, Mac};
use medchain_core::domain::PatientId;
use secrecy::{ExposeSecret, SecretSlice};
use sha2::{Digest, Sha256};

const PATIENT_DOMAIN: &[u8] = b"medchain/patient/v1";
const INPUT_DOMAIN: &[u8] = b"medchain/input/v1";

/// The server secret patient references are keyed with: the HMAC, keyed once at start-up, so
/// the request path has nothing left that can fail.
#[derive(Clone)]
pub struct PatientKey(Hmac<Sha256>);

impl std::fmt::Debug for PatientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PatientKey([REDACTED])")
    }
}

impl PatientKey {
    /// At least 32 bytes of secret.
    pub fn new(secret: Vec<u8>) -> Result<Self, String> {
        let secret = SecretSlice::from(secret);
        if secret.expose_secret().len() < 32 {
            return Err("the patient HMAC key must be at least 32 bytes".into());
        }
        Hmac::<Sha256>::new_from_slice(secret.expose_secret())
            .map(Self)
            .map_err(|e| format!("unusable patient HMAC key: {e}"))
    }

    /// The on-chain reference of `patient_id` (zero when there is none).
    pub fn patient_ref(&self, patient_id: Option<&PatientId>) -> B256 {
        let Some(id) = patient_id else {
            return B256::ZERO;
        };
        let mut mac = self.0.clone();
        mac.update(PATIENT_DOMAIN);
        mac.update(id.as_str().as_bytes());
        B256::from_slice(&mac.finalize().into_bytes())
    }
}

/// SHA-256 of the canonical input bytes.
pub fn input_digest(canonical: &[u8]) -> B256 {
    B256::from_slice(&Sha256::digest(canonical))
}

/// The salted commitment put on chain.
pub fn commitment(salt: &B256, input_digest: &B256) -> B256 {
    let mut h = Sha256::new();
    h.update(INPUT_DOMAIN);
    h.update(salt.as_slice());
    h.update(input_digest.as_slice());
    B256::from_slice(&h.finalize())
}

/// A fresh random salt from the operating system's CSPRNG.
pub fn new_salt() -> Result<B256, String> {
    let mut salt = [0u8; 32];
    getrandom::fill(&mut salt).map_err(|e| format!("no randomness for a salt: {e}"))?;
    Ok(B256::from(salt))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(s: &str) -> PatientId {
        PatientId::parse(s).expect("a valid id")
    }

    fn key(b: u8) -> PatientKey {
        PatientKey::new(vec![b; 32]).expect("key")
    }

    #[test]
    fn patient_refs_are_stable_keyed_and_opaque() {
        let k = key(7);
        let a = k.patient_ref(Some(&pid("MRN-0042")));
        assert_eq!(a, k.patient_ref(Some(&pid("MRN-0042"))));
        assert_ne!(a, k.patient_ref(Some(&pid("MRN-0043"))));
        assert_ne!(
            a,
            key(8).patient_ref(Some(&pid("MRN-0042"))),
            "the secret matters"
        );
        assert_ne!(a, input_digest(b"MRN-0042"), "not a plain hash");
        assert_eq!(k.patient_ref(None), B256::ZERO);
        assert!(PatientKey::new(vec![1; 31]).is_err());
    }

    #[test]
    fn commitments_need_the_salt_and_the_exact_input() {
        let d = input_digest(br#"{"age":50,"glucose":148}"#);
        let s1 = new_salt().expect("salt");
        let s2 = new_salt().expect("salt");
        assert_ne!(s1, s2);
        let c = commitment(&s1, &d);
        assert_eq!(c, commitment(&s1, &d));
        assert_ne!(c, commitment(&s2, &d), "another salt, another commitment");
        assert_ne!(
            c,
            commitment(&s1, &input_digest(br#"{"age":51,"glucose":148}"#))
        );
        // Known-answer: SHA-256 of the empty input.
        assert_eq!(
            input_digest(b"").to_string(),
            "0xe3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn the_key_does_not_show_in_debug_output() {
        let k = PatientKey::new(b"a-very-secret-patient-key-0123456789".to_vec()).expect("key");
        assert!(!format!("{k:?}").contains("a-very-secret"));
    }
}
