//! Explanations: TreeSHAP against XGBoost's own `pred_contribs` on every row of both data sets
//! (`models/examples/treeshap-*.json`, written by `models/pipeline/explain_tabular.py` from the
//! retrained booster), and as a prediction answers them over HTTP.

use medchain_diabetes_svc::SPEC;
use medchain_serving::card::ModelCard;
use medchain_serving::explain;
use medchain_tests::{models_copy, models_dir, spawn_disease};
use serde_json::{Value, json};

const TOLERANCE: f64 = 1e-5;

#[test]
fn treeshap_matches_xgboosts_pred_contribs_on_every_row_of_both_data_sets() {
    for disease in ["diabetes", "heart"] {
        let dir = models_dir().join(disease);
        let card = ModelCard::from_file(&dir.join("tabular.card.json")).expect("card");
        let explainer = explain::load(&card, &dir)
            .expect("the card names an explainer")
            .expect("it loads");
        // These shallow trees are explained from their leaf tables; the recursion, kept for
        // deeper ones, is checked against them on every row below.
        let explain::Explainer::Trees(trees) = &*explainer;
        assert!(trees.tabled(), "{disease}: leaf tables");
        let text =
            std::fs::read_to_string(models_dir().join(format!("examples/treeshap-{disease}.json")))
                .expect("fixture");
        let fixture: Value = serde_json::from_str(&text).expect("json");
        let names: Vec<&str> = card.features.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(fixture["features"], json!(names));
        let rows = fixture["rows"].as_array().expect("rows");
        assert!(rows.len() >= 300, "{disease}: every row of the data set");
        let mut worst = 0.0f64;
        let mut missing_rows = 0;
        for (r, row) in rows.iter().enumerate() {
            let x: Vec<f64> = row
                .as_array()
                .expect("row")
                .iter()
                .map(|v| v.as_f64().unwrap_or(f64::NAN))
                .collect();
            missing_rows += usize::from(x.iter().any(|v| v.is_nan()));
            let e = explainer.tabular(&card, &x);
            let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            for (a, b) in trees.shap(&xf).iter().zip(trees.shap_recursive(&xf)) {
                assert!(
                    (a - b).abs() <= 1e-9,
                    "{disease} row {r}: tables {a} vs recursion {b}"
                );
            }
            let want = &fixture["contributions"][r];
            for (i, c) in e.contributions.iter().enumerate() {
                let d = (c.contribution - want[i].as_f64().expect("number")).abs();
                worst = worst.max(d);
                assert!(d <= TOLERANCE, "{disease} row {r} {}: {d:e}", c.feature);
                assert_eq!(c.feature, names[i]);
            }
            let base = fixture["base_values"][r].as_f64().expect("base");
            assert!((e.base_value - base).abs() <= TOLERANCE, "{disease} base");
            let margin = fixture["margins"][r].as_f64().expect("margin");
            assert!(
                (e.margin - margin).abs() <= TOLERANCE,
                "{disease} row {r} margin"
            );
        }
        // The data sets' missing values (NaN down the default branch) are among the rows.
        assert!(missing_rows > 0, "{disease}: rows with missing values");
        eprintln!("{disease}: {} rows, worst |Δ| {worst:.2e}", rows.len());
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[tokio::test]
async fn a_tabular_prediction_carries_its_contributions_and_they_add_up_to_its_probability() {
    let app = spawn_disease(SPEC, |_| {}).await;
    let body = medchain_tests::sample_record("diabetes");
    let p = app.post_json_ok("/v1/predict/tabular", &body).await;
    let e = &p["explanation"];
    assert_eq!(e["method"], "treeshap", "{p}");
    assert_eq!(e["link"], "logit");
    let contributions = e["contributions"].as_array().expect("contributions");
    assert_eq!(contributions.len(), 8);
    let sum: f64 = contributions
        .iter()
        .map(|c| c["contribution"].as_f64().expect("number"))
        .sum();
    let (base, margin) = (
        e["base_value"].as_f64().unwrap(),
        e["margin"].as_f64().unwrap(),
    );
    assert!((base + sum - margin).abs() < 1e-9);
    let positive = p["result"]["risk"]["positive_probability"]
        .as_f64()
        .unwrap();
    assert!(
        (sigmoid(margin) - positive).abs() < 1e-5,
        "{margin} vs {positive}"
    );
    // Each feature with its value as sent; the missing insulin as null.
    let by_name = |n: &str| contributions.iter().find(|c| c["feature"] == n).expect(n);
    assert_eq!(by_name("glucose")["value"], 148.0);
    assert!(by_name("insulin")["value"].is_null());
    // Glucose 148 is what pushes this record's risk up most.
    let top = contributions
        .iter()
        .max_by(|a, b| {
            a["contribution"]
                .as_f64()
                .partial_cmp(&b["contribution"].as_f64())
                .unwrap()
        })
        .unwrap();
    assert_eq!(top["feature"], "glucose", "{e}");
}

#[tokio::test]
async fn a_trees_file_that_is_not_the_cards_leaves_predictions_served_and_says_why() {
    // Same size, other bytes (a leaf value changed); then no file at all.
    type Tamper = fn(&std::path::Path);
    let tamper: [(&str, Tamper); 2] = [
        ("sha256", |trees| {
            let text = std::fs::read_to_string(trees).expect("trees");
            let i = text.find("\"value\":[").expect("values") + 9;
            let changed = format!("{}{}", &text[..i], &text[i..].replacen('0', "1", 1));
            assert_eq!(changed.len(), text.len());
            std::fs::write(trees, changed).expect("write");
        }),
        ("cannot read", |trees| {
            std::fs::remove_file(trees).expect("remove")
        }),
    ];
    for (reason, tamper) in tamper {
        let models = models_copy();
        tamper(&models.path().join("diabetes/tabular.trees.json"));
        let dir = models.path().to_str().expect("utf-8").to_string();
        let app = spawn_disease(SPEC, |s| s.models.dir = dir).await;
        let p = app
            .post_json_ok(
                "/v1/predict/tabular",
                &medchain_tests::sample_record("diabetes"),
            )
            .await;
        assert_eq!(p["result"]["label"], "diabetes");
        let why = p["explanation"]["unavailable"].as_str().expect("a reason");
        assert!(why.contains(reason), "{why}");
    }
}

fn retina_example() -> Vec<u8> {
    std::fs::read(models_dir().join("examples/retina/3-severe_npdr-0.png")).expect("example")
}

/// The raw map's mean over the grid, from the answer's 0–1 values and their range.
fn raw_mean(cam: &Value) -> f64 {
    let (lo, hi) = (
        cam["grid"]["min"].as_f64().expect("min"),
        cam["grid"]["max"].as_f64().expect("max"),
    );
    let values = cam["grid"]["values"].as_array().expect("values");
    values
        .iter()
        .map(|v| lo + v.as_f64().expect("value") * (hi - lo))
        .sum::<f64>()
        / values.len() as f64
}

#[tokio::test]
async fn an_image_prediction_asked_for_its_map_answers_it_with_an_overlay() {
    let app = spawn_disease(SPEC, |_| {}).await;
    // Plain predictions stay as they were.
    let plain: Value = app
        .post_image("/v1/predict/retina", retina_example(), "eye.png")
        .await
        .json()
        .await
        .expect("json");
    assert!(plain.get("explanation").is_none(), "{plain}");
    let res = app
        .post_image(
            "/v1/predict/retina?explain=cam",
            retina_example(),
            "eye.png",
        )
        .await;
    assert_eq!(res.status(), 200);
    let p: Value = res.json().await.expect("json");
    let cam = &p["explanation"];
    assert_eq!(cam["method"], "cam", "{p}");
    assert_eq!(
        cam["class"], p["result"]["label"],
        "the predicted class by default"
    );
    assert_eq!(
        (
            cam["grid"]["height"].as_u64(),
            cam["grid"]["width"].as_u64()
        ),
        (Some(7), Some(7))
    );
    let values: Vec<f64> = cam["grid"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(values.len(), 49);
    assert!(values.iter().all(|v| (0.0..=1.0).contains(v)));
    let (row, col) = (
        cam["peak"]["row"].as_u64().unwrap(),
        cam["peak"]["col"].as_u64().unwrap(),
    );
    assert_eq!(
        values[(row * 7 + col) as usize],
        1.0,
        "the peak is the highest cell"
    );
    let png = cam["overlay_png"]
        .as_str()
        .and_then(|s| s.strip_prefix("data:image/png;base64,"))
        .expect("a PNG data URL");
    let png =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, png).expect("base64");
    let img = image::load_from_memory(&png).expect("a PNG");
    assert_eq!((img.width(), img.height()), (224, 224));
    // Another class on request. Each map's mean is its logit, so two maps' means differ as
    // the log-probabilities of their classes do.
    let other = if p["result"]["class_index"] == 0 {
        "mild_npdr"
    } else {
        "no_dr"
    };
    let q: Value = app
        .post_image(
            &format!("/v1/predict/retina?explain=cam&class={other}"),
            retina_example(),
            "eye.png",
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(q["explanation"]["class"], other);
    let prob = |label: &str| {
        p["result"]["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["label"] == label)
            .and_then(|c| c["probability"].as_f64())
            .unwrap()
    };
    let predicted = p["result"]["label"].as_str().unwrap();
    let want = prob(predicted).ln() - prob(other).ln();
    let got = raw_mean(cam) - raw_mean(&q["explanation"]);
    assert!((got - want).abs() < 1e-3, "{got} vs {want}");
}

#[tokio::test]
async fn a_wrong_explanation_request_is_refused_before_the_upload_is_read() {
    let models = models_copy();
    let card_path = models.path().join("diabetes/retina.card.json");
    let mut card: Value =
        serde_json::from_str(&std::fs::read_to_string(&card_path).unwrap()).unwrap();
    card.as_object_mut().unwrap().remove("explanation");
    std::fs::write(&card_path, serde_json::to_vec(&card).unwrap()).unwrap();
    let app = spawn_disease(SPEC, |_| {}).await;
    let plain = spawn_disease(SPEC, |s| {
        s.models.dir = models.path().to_str().unwrap().into()
    })
    .await;
    for (app, query, field, says) in [
        (&app, "explain=shap", "explain", "unknown explanation"),
        (
            &app,
            "explain=cam&class=nope",
            "class",
            "unknown class `nope`",
        ),
        (&app, "class=no_dr", "class", "explain=cam"),
        (&app, "explain=cam&x=1", "explain", "bad query"),
        (&plain, "explain=cam", "explain", "no class activation maps"),
    ] {
        let res = app
            .post_image(
                &format!("/v1/predict/retina?{query}"),
                retina_example(),
                "eye.png",
            )
            .await;
        assert_eq!(res.status(), 422, "{query}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["field"], field, "{query}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(says),
            "{query}: {body}"
        );
    }
}
