//! The ONNX Runtime library missing (alone in this test binary: the library is loaded once per
//! process, so no other test may load it first). Health stays up, readiness names the library,
//! every prediction answers 503 naming ONNX Runtime, validation still answers.

use medchain_diabetes_svc::SPEC;
use medchain_tests::{assert_problem, spawn_disease};
use serde_json::{Value, json};

fn body() -> Value {
    medchain_tests::sample_record("diabetes")
}

#[tokio::test]
async fn without_the_onnx_runtime_library_predictions_503_and_health_stays_up() {
    let missing = "/nonexistent/medchain/libonnxruntime.so.1.31.1";
    let app = spawn_disease(SPEC, |s| s.runtime.library_path = missing.into()).await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let r: Value = ready.json().await.expect("json");
    let lib = r["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "onnxruntime_library")
        .expect("library check")
        .clone();
    assert_eq!(lib["ok"], false, "{r}");
    assert!(
        lib["detail"].as_str().is_some_and(|d| d.contains(missing)),
        "{r}"
    );

    let p = assert_problem(
        app.post_json("/v1/predict/tabular", &body()).await,
        503,
        None,
    )
    .await;
    assert!(
        p["detail"]
            .as_str()
            .is_some_and(|d| d.contains("ONNX Runtime")),
        "{p}"
    );
    let png = std::fs::read(medchain_tests::models_dir().join("examples/retina/0-no_dr-0.png"))
        .expect("example");
    let p = assert_problem(
        app.post_image("/v1/predict/retina", png, "x.png").await,
        503,
        None,
    )
    .await;
    assert!(
        p["detail"]
            .as_str()
            .is_some_and(|d| d.contains("ONNX Runtime")),
        "{p}"
    );
    // Validation still answers before any model is needed, and the process is still up.
    assert_problem(
        app.post_json("/v1/predict/tabular", &json!({"age": 50}))
            .await,
        422,
        None,
    )
    .await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.models().await["onnxruntime_loaded"], false);
}
