//! End to end: diabetes-svc records predictions on a real chain-svc (with its embedded anvil),
//! and the original inputs verify against the chain while changed ones do not.

use std::time::Duration;

use medchain_chain_svc::Settings as ChainSettings;
use medchain_core::auth::{CALLER_HEADER, CALLER_ROLE_HEADER};
use medchain_diabetes_svc::SPEC;
use medchain_tests::{Peer, TestApp, credential, models_dir, secure, spawn_disease};
use serde_json::{Value, json};

async fn chain_svc(data: &std::path::Path, tweak: impl FnOnce(&mut ChainSettings)) -> String {
    medchain_tests::spawn_chain(data, tweak).await.0
}

/// A real chain-svc (its data in the returned directory) and a secured diabetes-svc that records
/// on it, waiting `timeout_ms` for chain-svc; returns the directory, chain-svc's address and the
/// service.
async fn audited(timeout_ms: u64) -> (tempfile::TempDir, String, TestApp) {
    let data = tempfile::tempdir().expect("tempdir");
    let base = chain_svc(data.path(), |_| {}).await;
    let chain_url = base.clone();
    let app = spawn_disease(SPEC, move |s| {
        secure(&mut s.auth, Peer::Diabetes);
        s.chain.url = chain_url;
        s.chain.timeout_ms = timeout_ms;
    })
    .await;
    (data, base, app)
}

fn features() -> Value {
    json!({
        "pregnancies": 2, "glucose": 120, "blood_pressure": 70, "skin_thickness": null,
        "insulin": 80, "bmi": 28.4, "diabetes_pedigree_function": 0.35, "age": 41
    })
}

/// The input digest the audit trail holds for `features()`.
fn features_digest() -> String {
    let canonical = medchain_core::audit::canonical_features(features().as_object().expect("obj"))
        .expect("canonical");
    format!("0x{}", to_hex(&medchain_core::audit::sha256(&canonical)))
}

async fn chain(
    app: &TestApp,
    base: &str,
    path: &str,
    body: Option<reqwest::RequestBuilder>,
) -> Value {
    let rb = body.unwrap_or_else(|| app.client.get(format!("{base}{path}")));
    // Read as the gateway does, on behalf of an auditor.
    let res = rb
        .header("x-internal-token", credential(Peer::Gateway, Peer::Chain))
        .header(CALLER_HEADER, "e2e-auditor")
        .header(CALLER_ROLE_HEADER, "auditor")
        .send()
        .await
        .expect("chain-svc");
    res.json().await.expect("json")
}

async fn confirmed(app: &TestApp, base: &str, id: &str) -> Value {
    for _ in 0..200 {
        let rec = chain(app, base, &format!("/v1/records/{id}"), None).await;
        if rec["status"] == "confirmed" {
            return rec;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id} was not confirmed");
}

#[tokio::test]
async fn predictions_with_a_patient_are_recorded_and_verify_against_the_chain() {
    let (_data, base, app) = audited(2000).await;

    // Tabular: recorded, then confirmed on chain with the prediction's result.
    let mut body = features();
    body["patient_id"] = json!("MRN-E2E-1");
    let p = app.post_json_ok("/v1/predict/tabular", &body).await;
    let id = p["prediction_id"].as_str().expect("id").to_string();
    assert_eq!(p["audit"]["status"], "pending", "{p}");
    assert_eq!(p["audit"]["prediction_id"], id.as_str());
    let digest = features_digest();
    assert_eq!(p["audit"]["input_digest"], digest.as_str());
    let rec = confirmed(&app, &base, &id).await;
    // The chain holds the hash of the record's fields; the fields match the prediction.
    assert_eq!(rec["matches_chain"], true, "{rec}");
    assert_eq!(rec["on_chain"]["record_hash"], p["audit"]["record_hash"]);
    assert_eq!(rec["label"], p["result"]["class_index"]);
    let bps = (p["result"]["probability"].as_f64().expect("p") * 1e4).round() as u64;
    assert_eq!(rec["probability_bps"], bps);
    assert_eq!(
        (&rec["disease"], &rec["modality"]),
        (&json!("diabetes"), &json!("tabular"))
    );

    // Verify: the original features pass (as the clinician would paste them), a change fails.
    let verify = |id: &str| app.client.post(format!("{base}/v1/records/{id}/verify"));
    let ok = chain(
        &app,
        &base,
        "",
        Some(verify(&id).json(
            &json!({"features": features(), "salt": p["audit"]["salt"], "patient_id": "MRN-E2E-1"}),
        )),
    )
    .await;
    assert_eq!(ok["verified"], true, "{ok}");
    let mut changed = features();
    changed["glucose"] = json!(121);
    let bad = chain(
        &app,
        &base,
        "",
        Some(verify(&id).json(&json!({"features": changed, "salt": p["audit"]["salt"]}))),
    )
    .await;
    assert_eq!(bad["verified"], false, "{bad}");

    // Image: the uploaded bytes are the input; they verify, one changed byte does not.
    let image = std::fs::read(models_dir().join("examples/retina/0-no_dr-1.jpg")).expect("example");
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(image.clone()).file_name("eye.jpg"),
        )
        .text("patient_id", "MRN-E2E-1");
    let res = app.post_form("/v1/predict/retina", form).await;
    assert_eq!(res.status(), 200);
    let q: Value = res.json().await.expect("json");
    let img_id = q["prediction_id"].as_str().expect("id").to_string();
    assert_eq!(q["audit"]["status"], "pending", "{q}");
    confirmed(&app, &base, &img_id).await;
    let ok = chain(
        &app,
        &base,
        "",
        Some(
            app.client
                .post(format!(
                    "{base}/v1/records/{img_id}/verify?salt={}",
                    q["audit"]["salt"].as_str().expect("salt")
                ))
                .header("content-type", "image/jpeg")
                .body(image.clone()),
        ),
    )
    .await;
    assert_eq!(ok["verified"], true, "{ok}");
    let mut tampered = image;
    let last = tampered.len() - 3;
    tampered[last] ^= 0x40;
    let bad = chain(
        &app,
        &base,
        "",
        Some(
            app.client
                .post(format!(
                    "{base}/v1/records/{img_id}/verify?salt={}",
                    q["audit"]["salt"].as_str().expect("salt")
                ))
                .header("content-type", "image/jpeg")
                .body(tampered),
        ),
    )
    .await;
    assert_eq!(bad["verified"], false);

    // Without a patient id nothing is recorded; the patient's list holds exactly the two.
    let anonymous = app.post_json_ok("/v1/predict/tabular", &features()).await;
    assert!(anonymous["audit"].is_null());
    let listed = chain(
        &app,
        &base,
        "",
        Some(
            app.client
                .post(format!("{base}/v1/patients/records"))
                .json(&json!({"patient_id": "MRN-E2E-1"})),
        ),
    )
    .await;
    let ids: Vec<&str> = listed["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["prediction_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, [id.as_str(), img_id.as_str()]);
}

/// A V2 inference with a `patient_id` parameter is recorded like a JSON-API prediction: the
/// same input digest for the same features (sent as an FP32 tensor, binary, with a missing
/// value as NaN), confirmed on chain, the original features and the original image verify;
/// the receipt and the demo notice are in the response's parameters.
#[tokio::test]
async fn open_inference_protocol_predictions_with_a_patient_are_recorded_too() {
    let (_data, base, app) = audited(2000).await;
    let card = medchain_serving::card::ModelCard::from_file(
        &models_dir().join("diabetes/tabular.card.json"),
    )
    .expect("card");
    let row: Vec<u8> = card
        .features
        .iter()
        .map(|f| features()[&f.name].as_f64().unwrap_or(f64::NAN) as f32)
        .flat_map(f32::to_le_bytes)
        .collect();
    let post = |path: &str, doc: Value, blob: Vec<u8>| {
        let json = serde_json::to_vec(&doc).expect("json");
        let header = json.len().to_string();
        app.client
            .post(format!("{}{path}", app.address))
            .header(
                "x-internal-token",
                credential(Peer::Gateway, Peer::Diabetes),
            )
            .header("inference-header-content-length", header)
            .body([json, blob].concat())
    };
    let doc = json!({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
        "parameters": {"binary_data_size": row.len()}}], "parameters": {"patient_id": "MRN-V2-1"}});
    let res = post("/v2/models/diabetes-tabular/infer", doc, row)
        .send()
        .await
        .expect("infer");
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.expect("json");
    let params = &v["parameters"];
    assert_eq!(params["audit_status"], "pending", "{v}");
    assert!(params["notice"].as_str().is_some_and(|n| !n.is_empty()));
    let id = params["prediction_id"]
        .as_str()
        .expect("prediction id")
        .to_string();
    let digest = features_digest();
    assert_eq!(
        params["audit_input_digest"],
        digest.as_str(),
        "the JSON API's digest"
    );
    assert_eq!(confirmed(&app, &base, &id).await["matches_chain"], true);
    let verify = app.client.post(format!("{base}/v1/records/{id}/verify")).json(
        &json!({"features": features(), "salt": params["audit_salt"], "patient_id": "MRN-V2-1"}),
    );
    let ok = chain(&app, &base, "", Some(verify)).await;
    assert_eq!(ok["verified"], true, "{ok}");

    // An image file as BYTES: the uploaded bytes are the recorded input, and they verify.
    let image = std::fs::read(models_dir().join("examples/retina/0-no_dr-1.jpg")).expect("example");
    let blob = [(image.len() as u32).to_le_bytes().to_vec(), image.clone()].concat();
    let doc = json!({"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
        "parameters": {"binary_data_size": blob.len()}}], "parameters": {"patient_id": "MRN-V2-1"}});
    let res = post("/v2/models/diabetes-retina/infer", doc, blob)
        .send()
        .await
        .expect("infer");
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.expect("json");
    let img_id = v["parameters"]["prediction_id"]
        .as_str()
        .expect("id")
        .to_string();
    confirmed(&app, &base, &img_id).await;
    let salt = v["parameters"]["audit_salt"].as_str().expect("salt");
    let verify = app
        .client
        .post(format!("{base}/v1/records/{img_id}/verify?salt={salt}"))
        .header("content-type", "image/jpeg")
        .body(image);
    let ok = chain(&app, &base, "", Some(verify)).await;
    assert_eq!(ok["verified"], true, "{ok}");
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A chain-svc stand-in on loopback that takes a record at once but answers only after
/// `delay` (a slow disk, a busy instance), and answers a repeat of a record it holds after
/// `repeat_delay` with the stored receipt, as chain-svc does (a receipt of the shared type).
async fn slow_recorder(delay: Duration, repeat_delay: Duration) -> String {
    use actix_web::{HttpResponse, web};
    use medchain_core::contract::{Digest, Receipt, RecordStatus};
    use medchain_core::domain::{Disease, Modality};
    use std::sync::{Arc, Mutex};
    let held: Arc<Mutex<Vec<String>>> = Arc::default();
    medchain_tests::stub::StubServer::new()
        .serve(move |cfg| {
            let held = held.clone();
            cfg.route(
                "/v1/records",
                web::post().to(move |body: web::Json<Value>| {
                    let held = held.clone();
                    async move {
                        let id = body["prediction_id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string();
                        // Taken at once (committed), answered late.
                        let seen = {
                            let mut h = held.lock().expect("lock");
                            let seen = h.contains(&id);
                            h.push(id.clone());
                            seen
                        };
                        tokio::time::sleep(if seen { repeat_delay } else { delay }).await;
                        // chain-svc's receipt, as the contract type has it (the disease service
                        // reads nothing else).
                        let d = |b: u8| Digest([b; 32]);
                        HttpResponse::Accepted().json(Receipt {
                            prediction_id: id,
                            status: RecordStatus::Pending,
                            patient_ref: d(1),
                            model_id_hash: d(2),
                            input_commitment: d(3),
                            disease: Disease::Diabetes,
                            modality: Modality::Tabular,
                            label: 0,
                            probability_bps: 7038,
                            record_hash: d(4),
                            salt: d(0x5a),
                            contract: format!("0x{}", "00".repeat(20)),
                            chain_id: 31337,
                        })
                    }
                }),
            );
        })
        .expect("chain-svc stand-in")
}

/// The review: a prediction said `unrecorded` when chain-svc had accepted the record after the
/// client's timeout. Now the timed-out record is sent once more and the late acceptance is
/// found; when the second attempt times out as well, the audit says `unknown`, not
/// `unrecorded`.
#[tokio::test]
async fn a_record_taken_after_the_timeout_is_not_reported_unrecorded() {
    let late = slow_recorder(Duration::from_millis(1500), Duration::ZERO).await;
    let app = spawn_disease(SPEC, move |s| {
        secure(&mut s.auth, Peer::Diabetes);
        s.chain.url = late;
        s.chain.timeout_ms = 500;
    })
    .await;
    let mut body = features();
    body["patient_id"] = json!("MRN-LATE-1");
    let p = app.post_json_ok("/v1/predict/tabular", &body).await;
    assert_eq!(p["audit"]["status"], "pending", "{p}");
    assert_eq!(p["audit"]["prediction_id"], p["prediction_id"]);

    let silent = slow_recorder(Duration::from_secs(30), Duration::from_secs(30)).await;
    let app = spawn_disease(SPEC, move |s| {
        secure(&mut s.auth, Peer::Diabetes);
        s.chain.url = silent;
        s.chain.timeout_ms = 300;
    })
    .await;
    let p = app.post_json_ok("/v1/predict/tabular", &body).await;
    assert_eq!(p["audit"]["status"], "unknown", "{p}");
    assert!(
        p["audit"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("may have taken")),
        "{p}"
    );
}

/// The whole path of issue 18 with real services: a clinician's prediction through the gateway
/// is recorded as theirs (the gateway names the caller, diabetes-svc passes it on, chain-svc
/// keeps it off chain); the listing and the record are theirs and their patients', an auditor
/// sees everything and may verify with the stored salt, and a client cannot name itself
/// someone else.
#[tokio::test]
async fn each_caller_reads_what_concerns_them_through_the_gateway() {
    use medchain_tests::{key_entry, signed_in_client};
    let (_data, base, svc) = audited(5000).await;
    let mut g = medchain_tests::gateway_settings(&svc.address, &base);
    g.clients.keys = vec![
        key_entry("dr-a", "clinician", "mk_dr_a_key_0123456789abcdef"),
        key_entry("dr-b", "clinician", "mk_dr_b_key_0123456789abcdef"),
        key_entry("audit-1", "auditor", "mk_audit_key_0123456789abcdef"),
    ];
    let api = format!("{}/api/v1", medchain_tests::spawn_gateway(g));
    let (a, b, auditor) = (
        signed_in_client("mk_dr_a_key_0123456789abcdef"),
        signed_in_client("mk_dr_b_key_0123456789abcdef"),
        signed_in_client("mk_audit_key_0123456789abcdef"),
    );
    let call = |rb: reqwest::RequestBuilder| async move {
        let res = rb.send().await.expect("gateway");
        let status = res.status().as_u16();
        (status, res.json::<Value>().await.unwrap_or(Value::Null))
    };
    let list = |c: &reqwest::Client, patient: &str| {
        c.post(format!("{api}/patients/records"))
            .json(&json!({"patient_id": patient}))
    };
    let ids = |v: &Value| -> Vec<String> {
        v["records"]
            .as_array()
            .map(|r| r.iter().map(|x| x["prediction_id"].to_string()).collect())
            .unwrap_or_default()
    };

    let mut body = features();
    body["patient_id"] = json!("MRN-GW-1");
    let (status, p) = call(
        a.post(format!("{api}/diabetes/predict/tabular"))
            .json(&body),
    )
    .await;
    assert_eq!(
        (status, &p["audit"]["status"]),
        (200, &json!("pending")),
        "{p}"
    );
    let id = p["prediction_id"].as_str().expect("id").to_string();

    // A client that names itself the auditor is still dr-b: the gateway's word replaces it.
    let spoofed = b
        .post(format!("{api}/patients/records"))
        .header("x-medchain-caller", "audit-1")
        .header("x-medchain-caller-role", "auditor")
        .json(&json!({"patient_id": "MRN-GW-1"}));
    let (status, v) = call(spoofed).await;
    assert_eq!((status, &v["count"]), (200, &json!(0)), "{v}");
    let (_, v) = call(list(&a, "MRN-GW-1")).await;
    assert_eq!(ids(&v), [format!("\"{id}\"")], "{v}");
    let (_, v) = call(list(&auditor, "MRN-GW-1")).await;
    assert_eq!(ids(&v).len(), 1, "{v}");
    let (status, _) = call(b.get(format!("{api}/records/{id}"))).await;
    assert_eq!(status, 404);
    let (status, _) = call(a.get(format!("{api}/records/{id}"))).await;
    assert_eq!(status, 200);

    // Verify without the salt: the clinician must bring it; the auditor may use the stored one.
    let mut rec = Value::Null;
    for _ in 0..200 {
        rec = call(auditor.get(format!("{api}/records/{id}"))).await.1;
        if rec["status"] == "confirmed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rec["status"], "confirmed", "{rec}");
    let verify = |c: &reqwest::Client| {
        c.post(format!("{api}/records/{id}/verify"))
            .json(&json!({"features": features()}))
    };
    let (status, v) = call(verify(&a)).await;
    assert_eq!((status, &v["field"]), (422, &json!("salt")), "{v}");
    let (status, v) = call(verify(&auditor)).await;
    assert_eq!(
        (status, &v["verified"], &v["salt"]),
        (200, &json!(true), &json!("stored")),
        "{v}"
    );

    // dr-b predicts for the same patient: the patient's history is now theirs to read too.
    let (status, _) = call(
        b.post(format!("{api}/diabetes/predict/tabular"))
            .json(&body),
    )
    .await;
    assert_eq!(status, 200);
    let (_, v) = call(list(&b, "MRN-GW-1")).await;
    assert_eq!(ids(&v).len(), 2, "{v}");
    let (status, _) = call(b.get(format!("{api}/records/{id}"))).await;
    assert_eq!(status, 200);
}
