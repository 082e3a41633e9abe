//! Helpers shared by chain-svc's tests. Each test binary uses some of them.
#![allow(dead_code)]

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

/// What `from` presents to chain-svc in these tests.
pub fn credential(from: Peer) -> String {
    format!("chain-test-{from}-to-chain-credential")
}

/// The chain-svc credentials of these tests: the gateway's, the disease services' and the
/// monitor's.
pub fn secure(auth: &mut AuthSettings) {
    for p in [Peer::Gateway, Peer::Diabetes, Peer::Heart, Peer::Monitor] {
        auth.accept.set(p, credential(p));
    }
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

/// GET `url` as an auditor; the JSON body.
pub async fn get_json(url: &str) -> serde_json::Value {
    get_as_auditor(url).await.json().await.expect("json")
}

/// chain-svc as a real process (embedded anvil) on `port`, its state in `data/state`, its log
/// appended to `data/chain-svc.log`.
pub fn start_chain_svc(data: &Path, port: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.join("chain-svc.log"))
        .expect("log");
    Command::new(env!("CARGO_BIN_EXE_chain-svc"))
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
