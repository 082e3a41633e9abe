//! The Open Inference Protocol spoken by a second, independent client: the real
//! `tritonclient[http]` (tests/clients/v2_client.py) against the whole system as processes,
//! straight to diabetes-svc and through the gateway. Its metadata is the cards', and its
//! outputs, JSON and binary, equal the JSON API's for the same inputs (tabular to 1e-6, images
//! to 1e-6 for the file and to the fixtures' JPEG tolerance for the tensor the pipeline's own
//! Python preprocessing makes).

use std::process::Command;

use medchain_tests::system::{Cgroups, System, debug_bin_dir};
use medchain_tests::{Peer, fixtures, models_dir, signed_in_client};
use serde_json::Value;

fn probabilities(v: &Value) -> Vec<f64> {
    v["result"]["probabilities"]
        .as_array()
        .expect("probabilities")
        .iter()
        .map(|c| c["probability"].as_f64().expect("p"))
        .collect()
}

fn rows(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_f64().expect("x"))
                .collect()
        })
        .collect()
}

fn assert_rows_close(got: &[Vec<f64>], want: &[Vec<f64>], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: rows");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}: row {i}");
        for (a, b) in g.iter().zip(w) {
            assert!(
                (a - b).abs() <= tol,
                "{what}: row {i}: {a} vs {b} (tolerance {tol})"
            );
        }
    }
}

/// Runs the client against `url` with `header`, and returns what it printed.
async fn client(url: String, header: String, rows_file: String, image: String) -> Value {
    let python = std::env::var("MEDCHAIN_PYTHON").expect(
        "MEDCHAIN_PYTHON names the test environment's Python (scripts/test.sh sets it; \
         scripts/setup.sh --test installs tritonclient into it)",
    );
    let script = models_dir().join("../tests/clients/v2_client.py");
    tokio::task::spawn_blocking(move || {
        let out = Command::new(python)
            .arg(script)
            .args(["--url", &url, "--header", &header, "--disease", "diabetes"])
            .args([
                "--image_model",
                "retina",
                "--image",
                &image,
                "--rows",
                &rows_file,
            ])
            .output()
            .expect("run the client");
        assert!(
            out.status.success(),
            "the client failed against {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("the client prints JSON")
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_gets_the_json_apis_answers_direct_and_through_the_gateway() {
    let bin = debug_bin_dir();
    let logs = tempfile::tempdir().expect("tempdir");
    let mut sys = System::start(&bin, logs.path(), Cgroups::None, &[])
        .await
        .expect("start");
    let gw = sys.get("gateway").url();
    let api = signed_in_client(&sys.api_key);
    let fx = fixtures();
    let card = medchain_serving::card::ModelCard::from_file(
        &models_dir().join("diabetes/tabular.card.json"),
    )
    .expect("card");
    // The JSON API's answers, through the gateway.
    let mut want_tab = Vec::new();
    let mut feature_rows = Vec::new();
    for f in fx["tabular"]
        .as_array()
        .expect("fixtures")
        .iter()
        .filter(|f| f["disease"] == "diabetes")
    {
        let res = api
            .post(format!("{gw}/api/v1/diabetes/predict/tabular"))
            .json(&f["input"])
            .send()
            .await
            .expect("post");
        assert_eq!(res.status(), 200);
        want_tab.push(probabilities(&res.json().await.expect("json")));
        let row: Vec<Value> = card
            .features
            .iter()
            .map(|feat| f["input"][&feat.name].clone())
            .collect();
        feature_rows.push(row);
    }
    let image = fx["image"]
        .as_array()
        .expect("images")
        .iter()
        .find(|f| {
            f["disease"] == "diabetes" && f["file"].as_str().is_some_and(|s| s.ends_with(".jpg"))
        })
        .expect("a retina JPEG");
    let image_path = models_dir()
        .join("examples")
        .join(image["file"].as_str().expect("file"));
    let bytes = std::fs::read(&image_path).expect("image");
    let part = reqwest::multipart::Part::bytes(bytes).file_name("x.jpg");
    let res = api
        .post(format!("{gw}/api/v1/diabetes/predict/retina"))
        .multipart(reqwest::multipart::Form::new().part("image", part))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 200);
    let want_img = probabilities(&res.json().await.expect("json"));
    let jpeg_tol = fx["jpeg_tolerance"].as_f64().expect("jpeg_tolerance");

    let rows_file = logs.path().join("rows.json");
    std::fs::write(&rows_file, serde_json::to_vec(&feature_rows).expect("rows")).expect("write");
    let direct = sys.get("diabetes-svc").url().replace("http://", "");
    let token = sys.credential(Peer::Gateway, Peer::Diabetes);
    let through = format!("{}/api/v1/diabetes", gw.replace("http://", ""));
    let (rows_file, image) = (
        rows_file.display().to_string(),
        image_path.display().to_string(),
    );
    for (route, url, header) in [
        ("direct", direct, format!("x-internal-token={token}")),
        (
            "gateway",
            through,
            format!("authorization=Bearer {}", sys.api_key),
        ),
    ] {
        let got = client(url, header, rows_file.clone(), image.clone()).await;
        assert_eq!(got["live"], true, "{route}");
        assert_eq!(got["ready"], true, "{route}");
        assert_eq!(got["server"]["name"], "diabetes-svc", "{route}");
        assert!(
            got["server"]["extensions"]
                .to_string()
                .contains("binary_tensor_data")
        );
        assert_eq!(
            got["tabular_metadata"]["inputs"][0]["shape"],
            serde_json::json!([-1, 8]),
            "{route}"
        );
        assert_eq!(
            got["image_metadata"]["platform"], "onnxruntime_onnx",
            "{route}"
        );
        for key in ["tabular_binary", "tabular_default"] {
            assert_rows_close(&rows(&got[key]), &want_tab, 1e-6, &format!("{route} {key}"));
        }
        let complete: Vec<Vec<f64>> = got["tabular_json_rows"]
            .as_array()
            .expect("indices")
            .iter()
            .map(|i| want_tab[i.as_u64().expect("index") as usize].clone())
            .collect();
        assert!(
            !complete.is_empty(),
            "{route}: some fixture rows have no missing value"
        );
        let json_rows = rows(&got["tabular_json"]);
        assert_rows_close(
            &json_rows,
            &complete,
            1e-6,
            &format!("{route} tabular_json"),
        );
        let labels: Vec<i64> = want_tab.iter().map(|p| i64::from(p[1] > p[0])).collect();
        assert_eq!(
            got["tabular_binary_label"],
            serde_json::json!(labels),
            "{route}"
        );
        assert_eq!(
            got["parameters"]["model_id"], "diabetes-tabular-xgb",
            "{route}"
        );
        assert!(
            got["parameters"]["notice"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
        );
        let two = vec![want_img.clone(), want_img.clone()];
        assert_rows_close(
            &rows(&got["image_bytes"]),
            &two,
            1e-6,
            &format!("{route} image_bytes"),
        );
        assert_rows_close(
            &rows(&got["image_tensor"]),
            &two[..1],
            jpeg_tol,
            &format!("{route} image tensor"),
        );
        assert_eq!(got["image_ready_after"], true, "{route}: loaded by now");
        let unknown = &got["unknown_model"];
        assert!(
            unknown["status"].to_string().contains("404"),
            "{route}: {unknown}"
        );
    }
    sys.stop();
}
