//! The whole system as processes (the test build's binaries), every service logging at trace
//! level, every dependency's logs included: after predictions with a patient id (tabular and
//! image), a per-patient listing, a record read and a verification, a request with a wrong
//! service credential and one with a wrong client API key, no log line holds a secret (the nine
//! service credentials, client API key, chain signer key, patient-reference key) or the
//! patient id; and a prediction's access line names its model, prediction id and inference
//! time.

use std::time::Duration;

use medchain_tests::system::{Cgroups, System, debug_bin_dir};
use serde_json::{Value, json};

const PATIENT: &str = "PATIENT-Hannelore-Musterfrau-1957";

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("randomness");
    hex::encode(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_and_no_patient_id_reaches_any_log() {
    let bin = debug_bin_dir();
    for name in medchain_tests::system::NAMES {
        assert!(
            bin.join(name).is_file(),
            "{} is missing: `cargo test --workspace` (or `cargo build --bins`) builds it",
            bin.join(name).display()
        );
    }
    let logs = tempfile::tempdir().expect("tempdir");
    let api_key = format!("mk_{}", random_hex(16));
    let key_entry = medchain_tests::key_entry("secrets-test", "clinician", &api_key);
    let trace = "trace";
    let sys = System::start(
        &bin,
        logs.path(),
        Cgroups::None,
        &[
            ("GATEWAY__TELEMETRY__FILTER", trace),
            ("DIABETES__TELEMETRY__FILTER", trace),
            ("HEART__TELEMETRY__FILTER", trace),
            ("CHAIN__TELEMETRY__FILTER", trace),
            ("GATEWAY__CLIENTS__KEYS", &key_entry),
        ],
    )
    .await
    .expect("the system starts");
    let gw = format!("{}/api/v1", sys.get("gateway").url());
    let client = reqwest::Client::new();

    // A tabular prediction and an image prediction, both recorded.
    let mut body = medchain_tests::sample_record("diabetes");
    body["patient_id"] = json!(PATIENT);
    let res = client
        .post(format!("{gw}/diabetes/predict/tabular"))
        .header("x-api-key", &api_key)
        .json(&body)
        .send()
        .await
        .expect("tabular");
    assert_eq!(res.status(), 200);
    let tabular: Value = res.json().await.expect("json");
    let id = tabular["prediction_id"].as_str().expect("id").to_string();
    assert!(
        tabular["audit"]["salt"].is_string(),
        "the prediction should be recorded: {tabular}"
    );

    let ecg = std::fs::read(
        medchain_tests::models_dir().join("examples/ecg/2-myocardial_infarction-0.jpg"),
    )
    .expect("example");
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(ecg)
                .file_name("ecg.jpg")
                .mime_str("image/jpeg")
                .expect("mime"),
        )
        .text("patient_id", PATIENT);
    let res = client
        .post(format!("{gw}/heart/predict/ecg"))
        .header("x-api-key", &api_key)
        .multipart(form)
        .send()
        .await
        .expect("image");
    assert_eq!(res.status(), 200);

    // The record, once on chain; the patient's list (the id in the URL); a verification.
    let mut record = Value::Null;
    for _ in 0..200 {
        record = client
            .get(format!("{gw}/records/{id}"))
            .header("x-api-key", &api_key)
            .send()
            .await
            .expect("record")
            .json()
            .await
            .expect("json");
        if record["status"] == "confirmed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(record["status"], "confirmed", "{record}");
    let res = client
        .post(format!("{gw}/patients/records"))
        .header("x-api-key", &api_key)
        .json(&json!({"patient_id": PATIENT}))
        .send()
        .await
        .expect("by patient");
    let status = res.status();
    assert_eq!(status, 200, "{}", res.text().await.unwrap_or_default());
    let mut features = body.clone();
    features
        .as_object_mut()
        .expect("object")
        .remove("patient_id");
    let verify =
        json!({"features": features, "salt": tabular["audit"]["salt"], "patient_id": PATIENT});
    let res = client
        .post(format!("{gw}/records/{id}/verify"))
        .header("x-api-key", &api_key)
        .json(&verify)
        .send()
        .await
        .expect("verify");
    assert_eq!(res.status(), 200);
    let verdict: Value = res.json().await.expect("json");
    assert!(verdict.to_string().contains("true"), "{verdict}");

    // Refused callers: a wrong service credential straight to a service, a wrong client key.
    let res = client
        .post(format!(
            "{}/v1/predict/tabular",
            sys.get("diabetes-svc").url()
        ))
        .header("x-internal-token", "not-the-token")
        .json(&body)
        .send()
        .await
        .expect("direct");
    assert_eq!(res.status(), 401);
    let res = client
        .post(format!("{gw}/diabetes/predict/tabular"))
        .header("x-api-key", "not-the-key")
        .json(&body)
        .send()
        .await
        .expect("bad key");
    assert_eq!(res.status(), 401);

    let chain_data = sys.data_dir().join("chain");
    let signer = std::fs::read_to_string(chain_data.join("dev-signer.key")).expect("signer key");
    let patient_key =
        std::fs::read_to_string(chain_data.join("dev-patient.key")).expect("patient key");
    let credentials: Vec<String> = sys.credentials().map(str::to_string).collect();
    assert_eq!(credentials.len(), 9, "five pairs and the monitor's four");
    drop(sys); // stops every process, so the logs are complete

    let mut all = String::new();
    for entry in std::fs::read_dir(logs.path()).expect("logs") {
        let path = entry.expect("entry").path();
        all.push_str(&std::fs::read_to_string(&path).expect("log"));
    }
    // The logs are real trace-level logs of everything above, or this test proves nothing.
    assert!(all.contains("TRACE"), "no trace-level line was logged");
    assert!(
        all.lines().count() > 200,
        "{} log lines",
        all.lines().count()
    );
    assert!(
        all.matches("served").count() >= 8,
        "every request should have its access line"
    );
    // A prediction's access line says which model answered, how fast, and which prediction it
    // was (the request span's fields), so a slow or wrong answer can be traced to its record.
    let model = tabular["model"]["id"].as_str().expect("model id");
    let served = all
        .lines()
        .find(|l| l.contains("served") && l.contains(&id))
        .unwrap_or_else(|| panic!("no access line names prediction {id}"));
    assert!(served.contains(model), "{served}");
    assert!(served.contains("inference_ms"), "{served}");
    let signer = signer.trim().trim_start_matches("0x");
    let mut secrets = vec![
        ("client API key", api_key.as_str()),
        ("chain signer key", signer),
        ("patient-reference key", patient_key.trim()),
        ("patient id", PATIENT),
    ];
    secrets.extend(
        credentials
            .iter()
            .map(|c| ("service credential", c.as_str())),
    );
    for (what, value) in secrets {
        assert!(value.len() >= 16, "{what} too short to search for");
        if let Some(line) = all.lines().find(|l| l.contains(value)) {
            panic!("the {what} appears in a log line: {line}");
        }
    }
}
