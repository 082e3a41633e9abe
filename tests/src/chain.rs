//! chain-svc as its callers reach it in tests: the test credentials, records as a disease
//! service sends them, requests as the gateway sends them for each role, and chain-svc as a
//! process of its own. [`crate::spawn_chain`] starts it in the test's process.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use alloy::primitives::U256;
use alloy::providers::Provider;
use alloy::signers::local::PrivateKeySigner;
use medchain_core::auth::{CALLER_HEADER, CALLER_ROLE_HEADER, Peer};
use medchain_core::settings::AuthSettings;

/// A fresh key funded through anvil's cheat RPC: no well-known key in the repository.
pub async fn funded_key(rpc_url: &str) -> PrivateKeySigner {
    medchain_core::http::init_tls();
    let signer = PrivateKeySigner::random();
    let provider =
        alloy::providers::ProviderBuilder::new().connect_http(rpc_url.parse().expect("url"));
    let _: () = provider
        .raw_request(
            "anvil_setBalance".into(),
            (signer.address(), U256::from(10u128.pow(20))),
        )
        .await
        .expect("fund");
    signer
}

/// A record as a disease service sends it: prediction `id` for `patient`, the `n`-th of a
/// stream (its label and input digest vary with `n`).
pub fn record(id: &str, patient: &str, n: usize) -> serde_json::Value {
    serde_json::json!({
        "prediction_id": id,
        "disease": "heart",
        "modality": "tabular",
        "model": {"id": "heart-tabular-xgb", "version": "1.0.0", "sha256": "00"},
        "label": (n % 2),
        "probability": 0.5,
        "patient_id": patient,
        "input_digest": format!("0x{:064x}", n + 1),
    })
}

/// What `from` presents to chain-svc in tests ([`crate::credential`]).
pub fn credential(from: Peer) -> String {
    crate::credential(from, Peer::Chain)
}

/// The chain-svc credentials of tests: the gateway's, the disease services' and the monitor's.
pub fn secure(auth: &mut AuthSettings) {
    crate::secure(auth, Peer::Chain);
}

/// `rb` as the gateway sends it on behalf of an auditor (who reads every record).
pub fn as_auditor(rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    rb.header("x-internal-token", credential(Peer::Gateway))
        .header(CALLER_HEADER, "test-auditor")
        .header(CALLER_ROLE_HEADER, "auditor")
}

/// `rb` as the gateway sends it on behalf of the clinician `id`.
pub fn as_clinician(rb: reqwest::RequestBuilder, id: &str) -> reqwest::RequestBuilder {
    rb.header("x-internal-token", credential(Peer::Gateway))
        .header(CALLER_HEADER, id)
        .header(CALLER_ROLE_HEADER, "clinician")
}

/// `rb` as the service of `disease` sends a record.
pub fn as_writer(rb: reqwest::RequestBuilder, disease: &str) -> reqwest::RequestBuilder {
    let from = if disease == "heart" {
        Peer::Heart
    } else {
        Peer::Diabetes
    };
    rb.header("x-internal-token", credential(from))
}

/// GET `url` as an auditor.
pub async fn get_as_auditor(url: &str) -> reqwest::Response {
    as_auditor(reqwest::Client::new().get(url))
        .send()
        .await
        .expect("get")
}

/// chain-svc's `/metrics` text, read with the monitor's credential.
pub async fn get_metrics(base: &str) -> String {
    reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .header("x-internal-token", credential(Peer::Monitor))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text")
}

/// The per-patient listing of chain-svc at `base` (the patient id in the body), as an auditor.
pub async fn list_patient(base: &str, patient: &str) -> serde_json::Value {
    as_auditor(reqwest::Client::new().post(format!("{base}/v1/patients/records")))
        .json(&serde_json::json!({"patient_id": patient}))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json")
}

/// Polls the record of prediction `id` at chain-svc `base` (as an auditor) until it is
/// confirmed and matches the chain, for at most `secs` seconds; asserts that it is, and that
/// the chain holds it exactly once; the record.
pub async fn confirmed_once(base: &str, id: &str, secs: u64) -> serde_json::Value {
    let url = format!("{base}/v1/records/{id}");
    let mut rec = serde_json::Value::Null;
    for _ in 0..secs * 20 {
        rec = get_json(&url).await;
        if rec["status"] == "confirmed" && rec["matches_chain"] == true {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(rec["status"], "confirmed", "record {id}: {rec}");
    assert_eq!(rec["matches_chain"], true, "record {id}: {rec}");
    assert_eq!(rec["commitments_on_chain"], 1, "record {id}: {rec}");
    rec
}

/// GET `url` as an auditor; the JSON body.
pub async fn get_json(url: &str) -> serde_json::Value {
    get_as_auditor(url).await.json().await.expect("json")
}

/// chain-svc as a real process (the binary `bin`, embedded anvil) on `port`, its state in
/// `data/state`, its log appended to `data/chain-svc.log`.
pub fn start_chain_svc(bin: &Path, data: &Path, port: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.join("chain-svc.log"))
        .expect("log");
    Command::new(bin)
        .env("CHAIN__STORAGE__DATA_DIR", data.join("state"))
        .env("CHAIN__SERVER__PORT", port.to_string())
        .env("CHAIN__SERVER__WORKERS", "2")
        .envs(
            [Peer::Gateway, Peer::Diabetes, Peer::Heart, Peer::Monitor].map(|p| {
                (
                    format!("CHAIN__AUTH__ACCEPT__{}", p.as_str().to_ascii_uppercase()),
                    credential(p),
                )
            }),
        )
        .env("CHAIN__CHAIN__POLL_INTERVAL_MS", "100")
        .env("CHAIN__TELEMETRY__FILTER", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start chain-svc")
}
