//! What is diabetes-svc's own, against real ONNX Runtime and the real models in `models/`, on
//! port 0: its fixtures (fp32 and int8), its routes and its card's validation. The serving
//! stack's behaviour (loading, budgets, uploads, credentials) is tested once, in
//! `shared/serving/tests`.

use medchain_diabetes_svc::SPEC;
use medchain_tests::{
    assert_problem, check_image_fixtures, check_int8_variant, check_tabular_fixtures, spawn_disease,
};
use serde_json::{Value, json};

fn valid_body() -> Value {
    medchain_tests::sample_record("diabetes")
}

#[tokio::test]
async fn the_int8_variant_is_chosen_by_configuration_and_reproduces_its_fixtures() {
    let n = check_int8_variant(SPEC, "diabetes", "retina", "/v1/predict/retina").await;
    assert!(n >= 8, "{n} fixtures");
}

#[tokio::test]
async fn tabular_fixtures_are_reproduced() {
    let app = spawn_disease(SPEC, |_| {}).await;
    assert!(check_tabular_fixtures(&app, "diabetes").await >= 5);
}

#[tokio::test]
async fn retina_fixtures_are_reproduced() {
    let app = spawn_disease(SPEC, |_| {}).await;
    assert!(check_image_fixtures(&app, "diabetes", "/v1/predict/retina").await >= 5);
}

#[tokio::test]
async fn serves_only_its_own_models() {
    let app = spawn_disease(SPEC, |_| {}).await;
    app.post_json_ok("/v1/predict/tabular", &valid_body()).await;
    let png = std::fs::read(medchain_tests::models_dir().join("examples/retina/0-no_dr-0.png"))
        .expect("example");
    assert_eq!(
        app.post_image("/v1/predict/retina", png, "x.png")
            .await
            .status(),
        200
    );
    let models = app.models().await;
    let list = models["models"].as_array().expect("models");
    assert_eq!(list.len(), 2);
    for m in list {
        assert_eq!(m["state"], "ready", "{m}");
        assert!(
            m["model_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("diabetes-"))
        );
        assert!(m["file"].as_str().is_some_and(|f| f.contains("/diabetes/")));
    }
    // No heart route either.
    assert_eq!(
        app.post_json("/v1/predict/ecg", &json!({})).await.status(),
        404
    );
}

#[tokio::test]
async fn tabular_validation_names_the_field() {
    let app = spawn_disease(SPEC, |_| {}).await;
    let with = |k: &str, v: Value| {
        let mut b = valid_body();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = valid_body();
        b.as_object_mut().expect("object").remove(k);
        b
    };
    let cases: Vec<(Value, u16, Option<&str>)> = vec![
        (with("glucose", json!(700)), 422, Some("glucose")),
        (with("glucose", json!(-5)), 422, Some("glucose")),
        (with("glucose", json!("148")), 422, Some("glucose")),
        (with("glucose", json!(null)), 422, Some("glucose")),
        (with("glucose", json!(true)), 422, Some("glucose")),
        (with("glucose", json!([148])), 422, Some("glucose")),
        (with("glucose", json!(1e300)), 422, Some("glucose")),
        (with("pregnancies", json!(2.5)), 422, Some("pregnancies")),
        (with("age", json!(150)), 422, Some("age")),
        (with("bmi", json!(0)), 422, Some("bmi")),
        (with("sugar", json!(1)), 422, Some("sugar")),
        (with("patient_id", json!(12)), 422, Some("patient_id")),
        (with("patient_id", json!("")), 422, Some("patient_id")),
        (without("glucose"), 422, Some("glucose")),
        (json!([1, 2, 3]), 422, None),
        (json!("text"), 422, None),
        // Nullable fields may be null or left out.
        (with("skin_thickness", json!(null)), 200, None),
        (without("insulin"), 200, None),
        (with("patient_id", json!("MRN-0042")), 200, None),
    ];
    for (body, status, field) in cases {
        let res = app.post_json("/v1/predict/tabular", &body).await;
        if status == 200 {
            assert_eq!(res.status(), 200, "{body}");
        } else {
            assert_problem(res, status, field).await;
        }
    }
    let raw_cases: Vec<(&str, &[u8], u16)> = vec![
        ("application/json", b"", 400),
        ("application/json", b"{\"glucose\": ", 400),
        ("application/json", b"{\"glucose\": NaN}", 400),
        ("text/plain", b"{}", 415),
    ];
    for (ct, body, status) in raw_cases {
        let res = app.post_raw("/v1/predict/tabular", ct, body.to_vec()).await;
        assert_problem(res, status, None).await;
    }
    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(100_000));
    let res = app
        .post_raw("/v1/predict/tabular", "application/json", huge.into_bytes())
        .await;
    assert_problem(res, 413, None).await;
    assert_eq!(app.get("/healthz").await.status(), 200);
}

/// A limit of zero would refuse every image: the service does not start, and says which
/// setting (the image limits are `NonZeroUsize`, so no zero gets past reading the settings).
#[test]
fn a_zero_image_limit_is_refused_naming_its_setting() {
    for key in ["max_bytes", "decode_budget_mb", "buffer_mb"] {
        let env = format!("DIABETES__IMAGES__{}", key.to_ascii_uppercase());
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_diabetes-svc"))
            .env(&env, "0")
            .env("DIABETES__SERVER__PORT", "0")
            .env("RUST_BACKTRACE", "0")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run");
        assert!(!out.status.success(), "{env}=0 started the service");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("images.{key}")),
            "{env}=0: {stderr}"
        );
    }
}
