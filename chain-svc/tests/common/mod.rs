//! Helpers shared by chain-svc's tests. Each test binary uses some of them.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};

use alloy::primitives::U256;
use alloy::providers::Provider;
use alloy::signers::local::PrivateKeySigner;

/// A fresh key funded through anvil's cheat RPC: no well-known key in the repository.
pub async fn funded_key(rpc_url: &str) -> PrivateKeySigner {
    medchain_shared::http::init_tls();
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

/// GET `url` with the internal token.
pub async fn get_with_token(url: &str, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(url)
        .header("x-internal-token", token)
        .send()
        .await
        .expect("get")
}

/// The per-patient listing of chain-svc at `base` (the patient id in the body).
pub async fn list_patient(base: &str, token: &str, patient: &str) -> serde_json::Value {
    reqwest::Client::new()
        .post(format!("{base}/v1/patients/records"))
        .header("x-internal-token", token)
        .json(&serde_json::json!({"patient_id": patient}))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json")
}

/// GET `url` with the internal token; the JSON body.
pub async fn get_json(url: &str, token: &str) -> serde_json::Value {
    get_with_token(url, token).await.json().await.expect("json")
}

/// chain-svc as a real process (embedded anvil) on `port`, its state in `data/state`, its log
/// appended to `data/chain-svc.log`.
pub fn start_chain_svc(data: &Path, port: u16, token: &str) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.join("chain-svc.log"))
        .expect("log");
    Command::new(env!("CARGO_BIN_EXE_chain-svc"))
        .env("CHAIN__STORAGE__DATA_DIR", data.join("state"))
        .env("CHAIN__SERVER__PORT", port.to_string())
        .env("CHAIN__SERVER__WORKERS", "2")
        .env("CHAIN__AUTH__INTERNAL_TOKEN", token)
        .env("CHAIN__CHAIN__POLL_INTERVAL_MS", "100")
        .env("CHAIN__TELEMETRY__FILTER", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start chain-svc")
}
