//! chain-svc over HTTP with its embedded anvil: accept → pending → confirmed, idempotent
//! accept, conflicts, validation, the internal token, and nothing identifying in the calldata.

use std::time::Duration;

use alloy::primitives::TxHash;
use alloy::providers::{Provider, ProviderBuilder};
use medchain_chain_svc::{Running, Settings, build};
use serde_json::{Value, json};

const TOKEN: &str = "chain-test-token-0123456789";

async fn spawn(data: &std::path::Path) -> (String, String) {
    medchain_shared::telemetry::init_for_tests();
    let mut s = Settings::load().expect("defaults");
    s.server.port = 0;
    s.server.workers = 1;
    s.storage.data_dir = data.to_str().expect("utf-8").into();
    s.chain.poll_interval_ms = 100;
    s.auth.internal_token = Some(TOKEN.to_string().into());
    let running: Running = build(s).await.expect("chain-svc starts");
    let base = format!("http://127.0.0.1:{}", running.port());
    let rpc = running.rpc_url.clone();
    tokio::spawn(running.run_until_stopped());
    (base, rpc)
}

fn body(id: &str) -> Value {
    json!({
        "prediction_id": id,
        "disease": "diabetes",
        "modality": "tabular",
        "model": {"id": "diabetes-tabular-xgb", "version": "1.0.0", "sha256": "2489"},
        "label": 1,
        "probability": 0.7730,
        "patient_id": "MRN-0042",
        "input_digest": format!("0x{}", "ab".repeat(32)),
    })
}

async fn post(base: &str, v: &Value, token: Option<&str>) -> reqwest::Response {
    let mut rb = reqwest::Client::new()
        .post(format!("{base}/v1/records"))
        .json(v);
    if let Some(t) = token {
        rb = rb.header("x-internal-token", t);
    }
    rb.send().await.expect("post")
}

async fn get(base: &str, id: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}/v1/records/{id}"))
        .header("x-internal-token", TOKEN)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn records_are_accepted_confirmed_and_carry_no_patient_data() {
    let data = tempfile::tempdir().expect("tempdir");
    let (base, rpc) = spawn(data.path()).await;
    let id = "0b9c6f9e-8a35-4f8e-9d59-1f7c3a2b4c5d";

    let res = post(&base, &body(id), Some(TOKEN)).await;
    assert_eq!(res.status(), 202);
    let receipt: Value = res.json().await.expect("receipt");
    assert_eq!(receipt["status"], "pending");
    assert_eq!(receipt["prediction_id"], id);
    let salt = receipt["salt"].clone();

    let mut rec = Value::Null;
    for _ in 0..200 {
        rec = get(&base, id).await;
        if rec["status"] == "confirmed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rec["status"], "confirmed", "{rec}");
    assert!(rec["block_number"].as_u64().is_some_and(|b| b > 0));

    // The same request again: the same record, not a second one.
    let again: Value = post(&base, &body(id), Some(TOKEN))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(again["salt"], salt);
    assert_eq!(again["status"], "confirmed");
    // Same id, other content: a conflict.
    let mut changed = body(id);
    changed["label"] = json!(0);
    assert_eq!(post(&base, &changed, Some(TOKEN)).await.status(), 409);

    // The transaction's calldata: selector + 8 words, none of them the patient id or a value.
    let tx_hash: TxHash = rec["tx_hash"]
        .as_str()
        .expect("tx hash")
        .parse()
        .expect("hash");
    let provider = ProviderBuilder::new().connect_http(rpc.parse().expect("url"));
    let tx = provider
        .get_transaction_by_hash(tx_hash)
        .await
        .expect("rpc")
        .expect("tx");
    let input = alloy::consensus::Transaction::input(&tx).to_vec();
    assert_eq!(input.len(), 4 + 8 * 32);
    let hay = alloy::primitives::hex::encode(&input);
    for needle in [
        alloy::primitives::hex::encode("MRN-0042"),
        alloy::primitives::hex::encode("0042"),
        alloy::primitives::hex::encode("diabetes"),
        "ab".repeat(32), // the input digest itself is not on chain, only its salted hash
    ] {
        assert!(!hay.contains(&needle), "calldata contains {needle}");
    }
}

#[tokio::test]
async fn bad_requests_are_refused() {
    let data = tempfile::tempdir().expect("tempdir");
    let (base, _) = spawn(data.path()).await;
    let id = "6a1f6f2e-1c3d-4e5f-8a9b-0c1d2e3f4a5b";
    assert_eq!(post(&base, &body(id), None).await.status(), 401);
    for (field, value) in [
        ("prediction_id", json!("not-a-uuid")),
        ("disease", json!("lungs")),
        ("modality", json!("audio")),
        ("probability", json!(1.5)),
        ("patient_id", json!("")),
        ("input_digest", json!("0x12")),
        ("extra", json!(1)),
    ] {
        let mut b = body(id);
        b[field] = value;
        let res = post(&base, &b, Some(TOKEN)).await;
        assert_eq!(res.status(), 422, "{field}");
        let p: Value = res.json().await.expect("problem");
        assert_eq!(p["field"], field, "{p}");
    }
    let missing = reqwest::Client::new()
        .get(format!("{base}/v1/records/{id}"))
        .header("x-internal-token", TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), 404);
}
