//! A model file missing: that endpoint answers 503 naming the model, the other model serves,
//! health stays up, readiness says not ready.

use medchain_diabetes_svc::SPEC;
use medchain_tests::{assert_problem, models_copy, spawn_disease};

#[tokio::test]
async fn a_missing_model_file_fails_its_endpoint_only() {
    let models = models_copy();
    std::fs::remove_file(models.path().join("diabetes/retina.onnx")).expect("remove");
    let dir = models.path().to_str().expect("utf-8").to_string();
    let app = spawn_disease(SPEC, |s| s.models.dir = dir).await;
    let png = std::fs::read(medchain_tests::models_dir().join("examples/retina/0-no_dr-0.png"))
        .expect("example");
    let p = assert_problem(
        app.post_image("/v1/predict/retina", png, "x.png").await,
        503,
        None,
    )
    .await;
    assert!(
        p["detail"].as_str().is_some_and(|d| d.contains("retina")),
        "{p}"
    );
    app.post_json_ok(
        "/v1/predict/tabular",
        &medchain_tests::sample_record("diabetes"),
    )
    .await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 503);
}
