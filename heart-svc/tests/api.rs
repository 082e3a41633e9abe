//! What is heart-svc's own, against real ONNX Runtime and the real models in `models/`, on port
//! 0: its fixtures (fp32 and int8), its routes, its card's categorical codes and its ECG
//! examples. The serving stack's behaviour (loading, guards, image checks) is tested once, in
//! `shared/serving/tests`.

use medchain_heart_svc::SPEC;
use medchain_tests::{
    assert_problem, check_image_fixtures, check_int8_variant, check_tabular_fixtures, fixtures,
    spawn_disease,
};
use serde_json::{Value, json};

fn valid_body() -> Value {
    medchain_tests::sample_record("heart")
}

#[tokio::test]
async fn the_int8_variant_is_chosen_by_configuration_and_reproduces_its_fixtures() {
    let n = check_int8_variant(SPEC, "heart", "ecg", "/v1/predict/ecg").await;
    assert!(n >= 8, "{n} fixtures");
}

#[tokio::test]
async fn tabular_fixtures_are_reproduced() {
    let app = spawn_disease(SPEC, |_| {}).await;
    assert!(check_tabular_fixtures(&app, "heart").await >= 5);
    let fx = fixtures();
    let rows = fx["tabular"].as_array().expect("rows");
    assert!(
        rows.iter().any(|r| r["disease"] == "heart"
            && (r["input"]["ca"].is_null() || r["input"]["thal"].is_null()))
    );
}

#[tokio::test]
async fn ecg_fixtures_are_reproduced() {
    let app = spawn_disease(SPEC, |_| {}).await;
    assert!(check_image_fixtures(&app, "heart", "/v1/predict/ecg").await >= 8);
    let models = app.models().await;
    assert_eq!(models["models"][1]["state"], "ready", "{models}");
}

#[tokio::test]
async fn categorical_codes_are_checked_against_their_sets() {
    let app = spawn_disease(SPEC, |_| {}).await;
    let with = |k: &str, v: Value| {
        let mut b = valid_body();
        b[k] = v;
        b
    };
    for (field, value) in [
        ("cp", json!(5)),
        ("cp", json!(0)),
        ("sex", json!(2)),
        ("thal", json!(4)),
        ("slope", json!(0)),
        ("restecg", json!(3)),
        ("ca", json!(4)),
        ("fbs", json!(0.5)),
        ("oldpeak", json!(-1)),
        ("thalach", json!(400)),
    ] {
        let res = app
            .post_json("/v1/predict/tabular", &with(field, value))
            .await;
        assert_problem(res, 422, Some(field)).await;
    }
    for body in [with("ca", json!(null)), with("thal", json!(null))] {
        assert_eq!(
            app.post_json("/v1/predict/tabular", &body).await.status(),
            200
        );
    }
}

#[tokio::test]
async fn serves_only_its_own_models() {
    let app = spawn_disease(SPEC, |_| {}).await;
    app.post_json_ok("/v1/predict/tabular", &valid_body()).await;
    let models = app.models().await;
    assert_eq!(models["disease"], "heart");
    for m in models["models"].as_array().expect("models") {
        assert!(
            m["file"].as_str().is_some_and(|f| f.contains("/heart/")),
            "{m}"
        );
    }
    assert_eq!(
        app.post_json("/v1/predict/retina", &json!({}))
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn an_ecg_stored_sideways_with_exif_orientation_is_turned_upright() {
    let app = spawn_disease(SPEC, |_| {}).await;
    let dir = medchain_tests::models_dir().join("examples");
    let mut probs = Vec::new();
    for file in [
        "ecg/2-myocardial_infarction-0.jpg",
        "edge/ecg-exif-rotated.jpg",
        "edge/ecg-rotated-no-exif.jpg",
    ] {
        let bytes = std::fs::read(dir.join(file)).expect("example");
        let res = app.post_image("/v1/predict/ecg", bytes, file).await;
        assert_eq!(res.status(), 200, "{file}");
        let body: Value = res.json().await.expect("json");
        probs.push(medchain_tests::probabilities(&body));
    }
    let diff = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    };
    assert!(
        diff(&probs[0], &probs[1]) < 0.05,
        "EXIF-rotated {:?} vs upright {:?}",
        probs[1],
        probs[0]
    );
    // The control: the same sideways pixels without EXIF read differently, so the check above
    // would fail if the orientation were ignored.
    assert!(
        diff(&probs[0], &probs[2]) > 0.2,
        "sideways without EXIF {:?} vs upright {:?}",
        probs[2],
        probs[0]
    );
}
