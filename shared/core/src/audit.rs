//! The audit input encoding shared by the disease services (which compute the digest of every
//! recorded prediction's input) and chain-svc (which recomputes it to verify a record).
//!
//! Canonical JSON for tabular features, version 1: one JSON object, keys sorted by their UTF-8
//! bytes, features that are null or absent left out, every value written as a JSON float in
//! its shortest round-trip form (`148` and `148.0` both become `148.0`), no whitespace. Images
//! are not re-encoded: their digest is SHA-256 of the uploaded bytes.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The canonical bytes of a tabular input; `Err` names the first field that is not a number
/// (or null).
pub fn canonical_features(features: &Map<String, Value>) -> Result<Vec<u8>, String> {
    let mut entries: Vec<(&String, f64)> = Vec::with_capacity(features.len());
    for (k, v) in features {
        match v {
            Value::Null => {}
            Value::Number(n) => match n.as_f64().filter(|x| x.is_finite()) {
                Some(x) => entries.push((k, x)),
                None => return Err(k.clone()),
            },
            _ => return Err(k.clone()),
        }
    }
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out = Vec::with_capacity(24 * entries.len() + 2);
    out.push(b'{');
    for (i, (k, x)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing a string key or a finite f64 to a Vec cannot fail.
        serde_json::to_writer(&mut out, k).map_err(|_| k.clone())?;
        out.push(b':');
        serde_json::to_writer(&mut out, &x).map_err(|_| k.clone())?;
    }
    out.push(b'}');
    Ok(out)
}

/// SHA-256 of `bytes`, as raw bytes.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(v: Value) -> String {
        let Value::Object(m) = v else {
            panic!("object")
        };
        String::from_utf8(canonical_features(&m).expect("canonical")).expect("utf-8")
    }

    #[test]
    fn one_encoding_per_input() {
        assert_eq!(
            canon(json!({"glucose": 148, "age": 50.0, "insulin": null})),
            r#"{"age":50.0,"glucose":148.0}"#
        );
        assert_eq!(
            canon(json!({"age": 50, "glucose": 148.0})),
            canon(json!({"glucose": 148, "age": 50, "insulin": null})),
            "order, integer spelling and nulls do not matter"
        );
        assert_ne!(
            canon(json!({"age": 50, "glucose": 148})),
            canon(json!({"age": 50, "glucose": 149}))
        );
        assert_eq!(
            canon(json!({"bmi": 33.6, "dpf": 0.627})),
            r#"{"bmi":33.6,"dpf":0.627}"#
        );
        assert_eq!(canon(json!({})), "{}");
    }

    /// The number forms the standalone verifier (chain-svc/verifier, Python) writes too.
    #[test]
    fn numbers_are_written_shortest_with_an_unpadded_exponent() {
        assert_eq!(
            canon(
                json!({"a": 148, "b": 33.6, "c": 1e-7, "d": 1e16, "e": 0.0001, "f": -2.5,
                         "g": 1.5e-300, "h": 2e21})
            ),
            r#"{"a":148.0,"b":33.6,"c":1e-7,"d":1e+16,"e":0.0001,"f":-2.5,"g":1.5e-300,"h":2e+21}"#
        );
    }

    #[test]
    fn non_numbers_are_named() {
        let Value::Object(m) = json!({"age": "50"}) else {
            panic!("object")
        };
        assert_eq!(canonical_features(&m), Err("age".to_string()));
    }

    #[test]
    fn digest_known_answer() {
        assert_eq!(
            hex_of(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn hex_of(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
