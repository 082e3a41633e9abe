//! The Open Inference Protocol (KServe V2) routes on port 0 with the real models: metadata and
//! health, JSON and binary inferences (batch > 1) equal to the JSON API's answers, the image
//! model's tensor and `BYTES` inputs, every protocol error, and the repository extension's
//! interplay with the lazy load.

use std::sync::Arc;
use std::time::Duration;

use medchain_diabetes_svc::SPEC;
use medchain_serving::card::ModelCard;
use medchain_serving::model::LazyModel;
use medchain_tests::{
    Peer, TestApp, assert_protocol_error, credential, fixtures, models_dir, secure, spawn_disease,
};
use serde_json::{Value, json};

const TABULAR: &str = "/v2/models/diabetes-tabular";
const RETINA: &str = "/v2/models/diabetes-retina";

fn card(rel: &str) -> ModelCard {
    ModelCard::from_file(&models_dir().join(rel)).expect("card")
}

/// The diabetes fixtures' records as feature rows in the card's order (NaN: missing).
fn fixture_rows() -> Vec<(Vec<f64>, Vec<f64>, Value)> {
    let card = card("diabetes/tabular.card.json");
    fixtures()["tabular"]
        .as_array()
        .expect("tabular fixtures")
        .iter()
        .filter(|f| f["disease"] == "diabetes")
        .map(|f| {
            let row = card
                .features
                .iter()
                .map(|feat| f["input"][&feat.name].as_f64().unwrap_or(f64::NAN))
                .collect();
            let probs = f["probabilities"]
                .as_array()
                .expect("probabilities")
                .iter()
                .map(|p| p.as_f64().expect("p"))
                .collect();
            (row, probs, f["input"].clone())
        })
        .collect()
}

/// A V2 request body: one input, its data as JSON (NaN as the binary form's only carrier is
/// not JSON, so rows with a missing value go as binary data instead).
fn infer_json(name: &str, shape: &[usize], datatype: &str, data: Value) -> Value {
    json!({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]})
}

async fn post_v2(app: &TestApp, path: &str, doc: &Value, blobs: &[Vec<u8>]) -> reqwest::Response {
    let json = serde_json::to_vec(doc).expect("json");
    let mut rb = app
        .client
        .post(format!("{}{path}", app.address))
        .header("x-internal-token", app.token.clone().unwrap_or_default());
    if !blobs.is_empty() {
        rb = rb.header("inference-header-content-length", json.len().to_string());
    }
    let mut body = json;
    for b in blobs {
        body.extend_from_slice(b);
    }
    rb.body(body).send().await.expect("POST")
}

/// A response's JSON and each output's values (from `data` or from its binary data).
async fn outputs(res: reqwest::Response) -> (Value, Vec<(String, Vec<f64>)>) {
    assert_eq!(res.status(), 200, "{:?}", res.headers());
    let json_len = res
        .headers()
        .get("inference-header-content-length")
        .map(|v| v.to_str().expect("ascii").parse::<usize>().expect("length"));
    let body = res.bytes().await.expect("body");
    let json_len = json_len.unwrap_or(body.len());
    let doc: Value = serde_json::from_slice(&body[..json_len]).expect("response json");
    let mut at = json_len;
    let mut outs = Vec::new();
    for o in doc["outputs"].as_array().expect("outputs") {
        let values = match o["parameters"]["binary_data_size"].as_u64() {
            Some(n) => {
                let bytes = &body[at..at + n as usize];
                at += n as usize;
                match o["datatype"].as_str() {
                    Some("FP32") => bytes
                        .chunks(4)
                        .map(|c| f64::from(f32::from_le_bytes(c.try_into().expect("4"))))
                        .collect(),
                    Some("INT64") => bytes
                        .chunks(8)
                        .map(|c| i64::from_le_bytes(c.try_into().expect("8")) as f64)
                        .collect(),
                    other => panic!("datatype {other:?}"),
                }
            }
            None => o["data"]
                .as_array()
                .expect("data")
                .iter()
                .map(|x| x.as_f64().expect("number"))
                .collect(),
        };
        outs.push((o["name"].as_str().expect("name").to_string(), values));
    }
    assert_eq!(at, body.len(), "every binary byte belongs to an output");
    (doc, outs)
}

fn output<'a>(outs: &'a [(String, Vec<f64>)], name: &str) -> &'a [f64] {
    &outs.iter().find(|(n, _)| n == name).expect(name).1
}

fn f32_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect()
}

#[tokio::test]
async fn health_server_and_model_metadata_come_from_the_cards() {
    let mut app = spawn_disease(SPEC, |s| secure(&mut s.auth, Peer::Diabetes)).await;
    assert_eq!(app.get("/v2/health/live").await.status(), 200);
    assert_eq!(app.get("/v2/health/ready").await.status(), 200);
    let server: Value = app.get("/v2").await.json().await.expect("json");
    assert_eq!(server["name"], "diabetes-svc");
    for ext in ["binary_tensor_data", "model_repository"] {
        assert!(
            server["extensions"]
                .as_array()
                .expect("list")
                .contains(&json!(ext))
        );
    }
    let tab: Value = app.get(TABULAR).await.json().await.expect("json");
    assert_eq!(tab["platform"], "onnxruntime_onnx");
    assert_eq!(tab["versions"], json!(["1.0.0"]));
    assert_eq!(
        tab["inputs"],
        json!([{"name": "features", "datatype": "FP32", "shape": [-1, 8]}])
    );
    assert_eq!(
        tab["outputs"][0],
        json!({"name": "label", "datatype": "INT64", "shape": [-1]})
    );
    assert_eq!(
        tab["outputs"][1],
        json!({"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]})
    );
    let versioned: Value = app
        .get(&format!("{TABULAR}/versions/1.0.0"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(versioned, tab);
    let retina: Value = app.get(RETINA).await.json().await.expect("json");
    assert_eq!(retina["inputs"][0]["shape"], json!([-1, 3, 224, 224]));
    assert_eq!(
        retina["inputs"][1],
        json!({"name": "image_bytes", "datatype": "BYTES", "shape": [-1]})
    );
    // The model's own outputs (logits, and the class activation maps its card names for
    // explanations), then the derived probabilities.
    let names: Vec<&str> = retina["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| o["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["logits", "cam", "probabilities"]);
    assert_eq!(retina["outputs"][1]["shape"], json!([-1, 5, 7, 7]));
    let e = assert_protocol_error(app.get(&format!("{TABULAR}/versions/9.9.9")).await, 404).await;
    assert!(e.contains("9.9.9") && e.contains("1.0.0"), "{e}");
    let e = assert_protocol_error(app.get("/v2/models/heart-ecg").await, 404).await;
    assert!(e.contains("diabetes-tabular"), "{e}");
    // Server readiness is what /readyz checks: without the ONNX Runtime library, not ready.
    let lacking = spawn_disease(SPEC, |s| {
        s.runtime.library_path = "/nonexistent/libonnxruntime.so".into();
    })
    .await;
    assert_eq!(lacking.get("/v2/health/ready").await.status(), 503);
    assert_eq!(lacking.get("/v2/health/live").await.status(), 200);
    // Without the gateway's credential: refused like every other route.
    app.token = None;
    assert_eq!(app.get("/v2").await.status(), 401);
    app.token = Some(credential(Peer::Monitor, Peer::Diabetes));
    assert_eq!(app.get("/v2/models/diabetes-tabular").await.status(), 403);
}

#[tokio::test]
async fn tabular_inferences_equal_the_json_api_in_json_and_binary_and_in_batches() {
    let app = spawn_disease(SPEC, |_| {}).await;
    let rows = fixture_rows();
    assert!(rows.len() >= 3, "fixtures");
    // The JSON API's answers for the same records.
    let mut want = Vec::new();
    for (_, _, record) in &rows {
        let v = app.post_json_ok("/v1/predict/tabular", record).await;
        let p: Vec<f64> = v["result"]["probabilities"]
            .as_array()
            .expect("probs")
            .iter()
            .map(|c| c["probability"].as_f64().expect("p"))
            .collect();
        want.push(p);
    }
    let n = rows.len().min(8);
    let flat: Vec<f64> = rows[..n].iter().flat_map(|(r, _, _)| r.clone()).collect();
    // Binary input (it carries NaN, the missing value), JSON output, the id echoed.
    let mut doc = json!({"id": "req-7", "inputs": [{"name": "features", "shape": [n, 8],
        "datatype": "FP32", "parameters": {"binary_data_size": flat.len() * 4}}]});
    let (body, outs) =
        outputs(post_v2(&app, &format!("{TABULAR}/infer"), &doc, &[f32_bytes(&flat)]).await).await;
    assert_eq!(body["id"], "req-7");
    assert_eq!(body["model_name"], "diabetes-tabular");
    assert_eq!(body["model_version"], "1.0.0");
    assert_eq!(body["parameters"]["model_id"], "diabetes-tabular-xgb");
    assert!(
        body["parameters"]["notice"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert_eq!(body["parameters"]["demo"], false);
    let probs = output(&outs, "probabilities");
    assert_eq!(probs.len(), n * 2);
    for (i, w) in want[..n].iter().enumerate() {
        for (k, p) in w.iter().enumerate() {
            assert!(
                (probs[i * 2 + k] - p).abs() <= 1e-6,
                "row {i}: {} vs {p}",
                probs[i * 2 + k]
            );
        }
        let label = output(&outs, "label")[i] as usize;
        assert_eq!(label, usize::from(w[1] > w[0]), "row {i}");
    }
    // Binary output asked for, as tritonclient asks: the same values.
    doc["parameters"] = json!({"binary_data_output": true});
    let res = post_v2(&app, &format!("{TABULAR}/infer"), &doc, &[f32_bytes(&flat)]).await;
    assert_eq!(res.headers()["content-type"], "application/octet-stream");
    let (_, bin) = outputs(res).await;
    assert_eq!(output(&bin, "probabilities"), probs);
    // JSON input, nested rows, one output asked for: rows without a missing value.
    let full: Vec<&Vec<f64>> = rows
        .iter()
        .map(|r| &r.0)
        .filter(|r| r.iter().all(|x| x.is_finite()))
        .collect();
    if let Some(row) = full.first() {
        let doc = json!({"inputs": [{"name": "features", "shape": [2, 8], "datatype": "FP64",
            "data": [row, row]}], "outputs": [{"name": "probabilities"}]});
        let (body, outs) =
            outputs(post_v2(&app, &format!("{TABULAR}/versions/1.0.0/infer"), &doc, &[]).await)
                .await;
        assert_eq!(body["outputs"].as_array().expect("outputs").len(), 1);
        let p = output(&outs, "probabilities");
        assert_eq!(p[0..2], p[2..4], "the same row twice");
    }
}

#[tokio::test]
async fn image_files_and_preprocessed_tensors_equal_the_json_api() {
    let app = spawn_disease(SPEC, |_| {}).await;
    let fx = fixtures();
    let file = fx["image"]
        .as_array()
        .expect("image fixtures")
        .iter()
        .find(|f| {
            f["disease"] == "diabetes" && f["file"].as_str().is_some_and(|s| s.ends_with(".jpg"))
        })
        .expect("a retina JPEG fixture");
    let bytes = std::fs::read(
        models_dir()
            .join("examples")
            .join(file["file"].as_str().expect("file")),
    )
    .expect("image");
    let multipart: Value = app
        .post_image("/v1/predict/retina", bytes.clone(), "x.jpg")
        .await
        .json()
        .await
        .expect("json");
    let want: Vec<f64> = multipart["result"]["probabilities"]
        .as_array()
        .expect("probs")
        .iter()
        .map(|c| c["probability"].as_f64().expect("p"))
        .collect();
    // Two files in one BYTES input, binary: each element a 4-byte length and its bytes.
    let mut blob = Vec::new();
    for _ in 0..2 {
        blob.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        blob.extend_from_slice(&bytes);
    }
    let doc = json!({"inputs": [{"name": "image_bytes", "shape": [2], "datatype": "BYTES",
        "parameters": {"binary_data_size": blob.len()}}], "parameters": {"binary_data_output": true}});
    let (_, outs) = outputs(post_v2(&app, &format!("{RETINA}/infer"), &doc, &[blob]).await).await;
    let probs = output(&outs, "probabilities");
    assert_eq!(probs.len(), 10);
    for row in probs.chunks(5) {
        for (p, w) in row.iter().zip(&want) {
            assert!((p - w).abs() <= 1e-6, "{p} vs {w}");
        }
    }
    let logits = output(&outs, "logits");
    assert_eq!(logits.len(), 10);
    // The class activation maps, [2, 5, 7, 7]: each class's map averages to its logit.
    let cam = output(&outs, "cam");
    assert_eq!(cam.len(), 2 * 5 * 49);
    for (map, logit) in cam.chunks(49).zip(logits) {
        let mean = map.iter().sum::<f64>() / 49.0;
        assert!(
            (mean - logit).abs() <= 1e-4,
            "map mean {mean} vs logit {logit}"
        );
    }
    // The same file in JSON: BYTES elements as base64.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let doc = infer_json("image_bytes", &[1], "BYTES", json!([b64]));
    let (_, outs) = outputs(post_v2(&app, &format!("{RETINA}/infer"), &doc, &[]).await).await;
    for (p, w) in output(&outs, "probabilities").iter().zip(&want) {
        assert!((p - w).abs() <= 1e-6, "{p} vs {w}");
    }
    // The preprocessed tensor, as a client that preprocesses itself sends it.
    let c = card("diabetes/retina.card.json");
    let settings = medchain_diabetes_svc::load_settings().expect("settings");
    let prepared = medchain_serving::inputs::image::prepare(
        &bytes,
        c.preprocessing.as_ref().expect("preprocessing"),
        &settings.images,
        false,
    )
    .expect("prepare");
    let tensor: Vec<f64> = prepared.tensor.iter().map(|&x| f64::from(x)).collect();
    let doc = json!({"inputs": [{"name": "image", "shape": [1, 3, 224, 224], "datatype": "FP32",
        "parameters": {"binary_data_size": tensor.len() * 4}}], "outputs": [{"name": "probabilities"}]});
    let (_, outs) = outputs(
        post_v2(
            &app,
            &format!("{RETINA}/infer"),
            &doc,
            &[f32_bytes(&tensor)],
        )
        .await,
    )
    .await;
    for (p, w) in output(&outs, "probabilities").iter().zip(&want) {
        assert!((p - w).abs() <= 1e-6, "{p} vs {w}");
    }
}

/// A bad request: its JSON, its binary data, and the words its error must contain.
type Case = (Value, Vec<Vec<u8>>, &'static [&'static str]);

#[tokio::test]
async fn bad_inferences_are_answered_with_the_protocols_errors() {
    let app = spawn_disease(SPEC, |s| {
        s.v2.max_batch = std::num::NonZeroUsize::new(4).expect("4")
    })
    .await;
    let row: Vec<f64> = fixture_rows()
        .into_iter()
        .map(|r| r.0)
        .find(|r| r.iter().all(|x| x.is_finite()))
        .expect("a full row");
    let url = format!("{TABULAR}/infer");
    let mut glucose_high = row.clone();
    glucose_high[1] = 900.0;
    let mut missing_glucose = row.clone();
    missing_glucose[1] = f64::NAN;
    let cases: Vec<Case> = vec![
        (
            infer_json("features", &[1, 7], "FP32", json!(row[..7])),
            vec![],
            &["[N, 8]"],
        ),
        (
            infer_json("features", &[2, 8], "FP32", json!(row)),
            vec![],
            &["holds 16 elements", "has 8"],
        ),
        (
            infer_json("features", &[1, 8], "FP32", json!(glucose_high)),
            vec![],
            &["row 0", "glucose", "900"],
        ),
        (
            json!({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                "parameters": {"binary_data_size": 32}}]}),
            vec![f32_bytes(&missing_glucose)],
            &["glucose", "required"],
        ),
        (
            infer_json("x", &[1, 8], "FP32", json!(row)),
            vec![],
            &["unknown input `x`", "features"],
        ),
        (
            infer_json("features", &[1, 8], "FP16", json!(row)),
            vec![],
            &["FP16"],
        ),
        (
            infer_json("features", &[1, 8], "FLOAT", json!(row)),
            vec![],
            &["unknown datatype `FLOAT`"],
        ),
        (
            infer_json(
                "features",
                &[5, 8],
                "FP32",
                json!([
                    row.clone(),
                    row.clone(),
                    row.clone(),
                    row.clone(),
                    row.clone()
                ]),
            ),
            vec![],
            &["batch size 5", "4"],
        ),
        (
            json!({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", "data": row}],
                "outputs": [{"name": "scores"}]}),
            vec![],
            &["unknown output `scores`"],
        ),
        (
            json!({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                "parameters": {"binary_data_size": 64}}]}),
            vec![f32_bytes(&row)],
            &["64 bytes", "only 32"],
        ),
        (
            json!({"inputs": [{"name": "features", "shape": [2, 8], "datatype": "FP32",
                "data": [row.clone(), row.clone()]}], "parameters": {"patient_id": "MRN-1"}}),
            vec![],
            &["patient_id", "one row"],
        ),
        (json!({"inputs": []}), vec![], &["exactly one input"]),
        (json!({"inputs": [], "bogus": 1}), vec![], &["bogus"]),
    ];
    for (doc, blobs, words) in cases {
        let e = assert_protocol_error(post_v2(&app, &url, &doc, &blobs).await, 400).await;
        for w in words {
            assert!(e.contains(w), "{doc}: {e:?} should name {w:?}");
        }
    }
    // Not JSON at all, and a header that points past the body.
    let res = app.post_raw(&url, "application/json", b"{".to_vec()).await;
    assert!(assert_protocol_error(res, 400).await.contains("not valid"));
    let res = app
        .client
        .post(format!("{}{url}", app.address))
        .header("x-internal-token", app.token.clone().unwrap_or_default())
        .header("inference-header-content-length", "999")
        .body("{}")
        .send()
        .await
        .expect("post");
    assert!(
        assert_protocol_error(res, 400)
            .await
            .contains("inference-header-content-length")
    );
    // An image tensor of the wrong size, and a patient id on a preprocessed tensor.
    let e = assert_protocol_error(
        post_v2(
            &app,
            &format!("{RETINA}/infer"),
            &infer_json("image", &[1, 3, 2, 2], "FP32", json!(vec![0; 12])),
            &[],
        )
        .await,
        400,
    )
    .await;
    assert!(e.contains("[-1, 3, 224, 224]"), "{e}");
    let mut doc = infer_json(
        "image",
        &[1, 3, 224, 224],
        "FP32",
        json!(vec![0; 3 * 224 * 224]),
    );
    doc["parameters"] = json!({"patient_id": "MRN-1"});
    let e = assert_protocol_error(
        post_v2(&app, &format!("{RETINA}/infer"), &doc, &[]).await,
        400,
    )
    .await;
    assert!(e.contains("image_bytes"), "{e}");
    let e = assert_protocol_error(
        post_v2(
            &app,
            &format!("{RETINA}/infer"),
            &infer_json("image_bytes", &[1], "BYTES", json!(["bm90IGFuIGltYWdl"])),
            &[],
        )
        .await,
        400,
    )
    .await;
    assert!(
        e.contains("element 0") && e.contains("not a JPEG or PNG"),
        "{e}"
    );
}

#[tokio::test]
async fn a_model_that_cannot_load_is_a_503_with_retry_after() {
    let models = medchain_tests::models_copy();
    std::fs::write(models.path().join("diabetes/tabular.onnx"), b"not a model").expect("write");
    let dir = models.path().to_str().expect("utf-8").to_string();
    let app = spawn_disease(SPEC, |s| s.models.dir = dir).await;
    let row = vec![1.0, 100.0, 70.0, 20.0, 80.0, 30.0, 0.5, 40.0];
    let res = post_v2(
        &app,
        &format!("{TABULAR}/infer"),
        &infer_json("features", &[1, 8], "FP32", json!(row)),
        &[],
    )
    .await;
    assert!(res.headers().get("retry-after").is_some(), "Retry-After");
    let e = assert_protocol_error(res, 503).await;
    assert!(e.contains("tabular"), "{e}");
    let res = post_v2(
        &app,
        "/v2/repository/models/diabetes-tabular/load",
        &json!({}),
        &[],
    )
    .await;
    assert!(
        res.headers().get("retry-after").is_some(),
        "Retry-After on a failed load too"
    );
    assert_protocol_error(res, 503).await;
}

/// The repository index as (name, state).
async fn index(app: &TestApp) -> Vec<(String, String)> {
    let v: Value = post_v2(app, "/v2/repository/index", &json!({}), &[])
        .await
        .json()
        .await
        .expect("json");
    v.as_array()
        .expect("index")
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("name"), s("state"))
        })
        .collect()
}

/// The memory guard's refusal is the protocol's 503 with `Retry-After` (a full queue is the
/// same error: `v2::error`'s unit test).
#[tokio::test]
async fn the_memory_guard_is_a_503_with_retry_after() {
    let app = spawn_disease(SPEC, |s| {
        s.memory.limit_mb = 16;
        s.memory.reserve_mb = 8;
    })
    .await;
    let row = vec![1.0, 100.0, 70.0, 20.0, 80.0, 30.0, 0.5, 40.0];
    let doc = infer_json("features", &[1, 8], "FP32", json!(row));
    let res = post_v2(&app, &format!("{TABULAR}/infer"), &doc, &[]).await;
    assert!(res.headers().get("retry-after").is_some(), "Retry-After");
    let e = assert_protocol_error(res, 503).await;
    assert!(e.contains("memory guard"), "{e}");
}

#[tokio::test]
async fn the_repository_loads_and_unloads_and_an_inference_loads_an_unloaded_model() {
    let app = spawn_disease(SPEC, |_| {}).await;
    let state = |list: &[(String, String)], name: &str| {
        list.iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
            .expect(name)
    };
    assert_eq!(state(&index(&app).await, "diabetes-tabular"), "UNAVAILABLE");
    assert_eq!(app.get(&format!("{TABULAR}/ready")).await.status(), 503);
    let res = post_v2(
        &app,
        "/v2/repository/models/diabetes-tabular/load",
        &json!({}),
        &[],
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(app.get(&format!("{TABULAR}/ready")).await.status(), 200);
    assert_eq!(state(&index(&app).await, "diabetes-tabular"), "READY");
    assert_eq!(
        state(&index(&app).await, "diabetes-retina"),
        "UNAVAILABLE",
        "only the one asked for"
    );
    let ready_only: Value = post_v2(&app, "/v2/repository/index", &json!({"ready": true}), &[])
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(ready_only.as_array().expect("list").len(), 1);
    let res: Value = post_v2(
        &app,
        "/v2/repository/models/diabetes-tabular/unload",
        &json!({}),
        &[],
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(res["unloaded"], true);
    assert_eq!(app.get(&format!("{TABULAR}/ready")).await.status(), 503);
    // An inference on the unloaded model loads it.
    let row = vec![1.0, 100.0, 70.0, 20.0, 80.0, 30.0, 0.5, 40.0];
    let res = post_v2(
        &app,
        &format!("{TABULAR}/infer"),
        &infer_json("features", &[1, 8], "FP32", json!(row)),
        &[],
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(app.get(&format!("{TABULAR}/ready")).await.status(), 200);
    assert_eq!(
        app.model("tabular").await["loads"],
        2,
        "loaded by the repository, then by the inference"
    );
    let e = assert_protocol_error(
        post_v2(&app, "/v2/repository/models/nope/load", &json!({}), &[]).await,
        404,
    )
    .await;
    assert!(e.contains("nope"), "{e}");
}

/// diabetes-svc's tabular model on its shipped settings, held directly (no service around it).
fn tabular_model() -> LazyModel {
    let settings = medchain_diabetes_svc::load_settings().expect("settings");
    settings.lazy_model("tabular", &settings.models.tabular)
}

/// An unload waits for the request running on the session: the session is held until that
/// request is done, and only then does the unload return.
// Two workers: a call on the tabular model may run on the request's own thread, and this one
// blocks until released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unload_waits_for_the_request_running_on_the_model() {
    let model = Arc::new(tabular_model());
    model.load_now().await.expect("load");
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let running = {
        let model = model.clone();
        tokio::spawn(async move {
            let permit = model.admit().expect("admit");
            model
                .run(&permit, move |_session| {
                    let _ = started_tx.send(());
                    hold.recv().ok();
                    Ok(())
                })
                .await
        })
    };
    started.await.expect("the request runs");
    let unload = {
        let model = model.clone();
        tokio::spawn(async move { model.unload_and_wait().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !unload.is_finished(),
        "the unload waits while the request runs"
    );
    release.send(()).expect("release");
    running
        .await
        .expect("join")
        .expect("the request finishes on its session");
    assert_eq!(
        unload.await.expect("join"),
        Some(1),
        "it waited for one request"
    );
    assert_eq!(
        model.status().state,
        medchain_serving::model::ModelState::Unloaded
    );
}

/// A model whose calls take microseconds runs them on the request's own thread (no hand-off to
/// the blocking pool and back); once its calls take longer, they run on the blocking pool, off
/// the async threads — whichever model it is.
#[tokio::test]
async fn calls_that_take_microseconds_run_on_the_request_thread_and_slow_ones_do_not() {
    let model = tabular_model();
    model.load_now().await.expect("load");
    let here = std::thread::current().id();
    let permit = model.admit().expect("admit");
    let mut last = None;
    for _ in 0..40 {
        last = Some(
            model
                .run(&permit, |_session| {
                    std::thread::sleep(Duration::from_millis(2));
                    Ok(std::thread::current().id())
                })
                .await
                .expect("run"),
        );
    }
    assert_ne!(last, Some(here), "2-ms calls run on the blocking pool");
    for _ in 0..80 {
        last = Some(
            model
                .run(&permit, |_session| Ok(std::thread::current().id()))
                .await
                .expect("run"),
        );
    }
    assert_eq!(last, Some(here), "quick calls run on the request's thread");
}
