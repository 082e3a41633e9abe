//! The serving stack on port 0, with real ONNX Runtime and the real models in `models/`,
//! run as diabetes-svc (either disease service would do; what is the same for both is tested
//! here once): predictions and their audit, the lazy load and its failures, the memory guard,
//! the credentials, warm-up and idle unload, image checks and budgets, uploads, keep-alive.

use medchain_diabetes_svc::SPEC;
use medchain_serving::inputs::image::nonzero;
use medchain_tests::{
    Peer, assert_problem, credential, models_copy, png, png_header_only, secure, spawn_disease,
};
use serde_json::{Value, json};

fn valid_body() -> Value {
    medchain_tests::sample_record("diabetes")
}

#[tokio::test]
async fn a_prediction_carries_model_risk_and_notice() {
    let app = spawn_disease(SPEC, |_| {}).await;
    let body: Value = app
        .post_json("/v1/predict/tabular", &valid_body())
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["disease"], "diabetes");
    assert_eq!(body["model"]["id"], "diabetes-tabular-xgb");
    assert_eq!(body["result"]["label"], "diabetes");
    assert_eq!(body["result"]["risk_band"], "high");
    assert_eq!(body["result"]["risk"]["bands"][0]["below"], 0.3);
    assert!(body["inference_ms"].as_f64().is_some_and(|t| t > 0.0));
    assert!(body["notice"].as_str().is_some_and(|n| !n.is_empty()));
    assert!(body["audit"].is_null(), "no patient id, nothing to record");
}

#[tokio::test]
async fn an_unreachable_chain_service_leaves_the_prediction_answered_and_unrecorded() {
    let app = spawn_disease(SPEC, |_| {}).await;
    let mut body = valid_body();
    body["patient_id"] = json!("MRN-0042");
    let p = app.post_json_ok("/v1/predict/tabular", &body).await;
    assert_eq!(p["result"]["label"], "diabetes");
    assert_eq!(p["audit"]["status"], "unrecorded", "{p}");
    assert!(
        p["audit"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("unreachable")),
        "{p}"
    );
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert!(metrics.contains("diabetes_audit_unrecorded_total{reason=\"unreachable\"}"));
}

#[tokio::test]
async fn fifty_concurrent_first_requests_load_the_model_once() {
    let app = spawn_disease(SPEC, |_| {}).await;
    assert_eq!(app.model("tabular").await["state"], "unloaded");
    let body = valid_body();
    let requests = (0..50).map(|_| app.post_json("/v1/predict/tabular", &body));
    let responses = futures_util::future::join_all(requests).await;
    assert!(responses.iter().all(|r| r.status() == 200));
    let model = app.model("tabular").await;
    assert_eq!(model["loads"], 1, "{model}");
    assert_eq!(model["requests_served"], 50, "{model}");
    assert_eq!(model["state"], "ready");
}

#[tokio::test]
async fn readiness_answers_at_once_and_finds_a_corrupt_model_without_loading_it() {
    let models = models_copy();
    let onnx = models.path().join("diabetes/retina.onnx");
    let mut bad = std::fs::read(&onnx).expect("read model");
    for b in bad.iter_mut().skip(4096).take(64) {
        *b ^= 0x5a;
    }
    std::fs::write(&onnx, &bad).expect("corrupt model");
    let dir = models.path().to_str().expect("utf-8").to_string();
    let app = spawn_disease(SPEC, |s| s.models.dir = dir).await;

    // The service hashes its files in the background from start-up; readiness never waits
    // for the hash and turns not-ready once the mismatch is known.
    let mut last = Value::Null;
    for _ in 0..200 {
        let res = app.get("/readyz").await;
        let status = res.status().as_u16();
        last = res.json().await.expect("json");
        if status == 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let check = last["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "model_retina"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(check["ok"], false, "{last}");
    assert!(
        check["detail"]
            .as_str()
            .is_some_and(|d| d.contains("sha256")),
        "{last}"
    );
    // Nothing was loaded to find it.
    assert_eq!(app.model("retina").await["loads"], 0);
    assert_eq!(app.model("tabular").await["loads"], 0);
}

#[tokio::test]
async fn a_corrupt_model_fails_its_endpoint_only_and_is_retried() {
    let models = models_copy();
    let onnx = models.path().join("diabetes/tabular.onnx");
    let good = std::fs::read(&onnx).expect("read model");
    let mut bad = good.clone();
    for b in bad.iter_mut().skip(100).take(64) {
        *b ^= 0x5a;
    }
    std::fs::write(&onnx, &bad).expect("corrupt model");
    let dir = models.path().to_str().expect("utf-8").to_string();
    let app = spawn_disease(SPEC, |s| {
        s.models.dir = dir;
        s.models.load_retry_secs = 1;
    })
    .await;

    let res = app.post_json("/v1/predict/tabular", &valid_body()).await;
    let problem = assert_problem(res, 503, None).await;
    let detail = problem["detail"].as_str().expect("detail");
    assert!(
        detail.contains("tabular") && detail.contains("sha256"),
        "{detail}"
    );
    let status = app.model("tabular").await;
    assert_eq!(status["state"], "failed");
    assert!(
        status["reason"]
            .as_str()
            .is_some_and(|r| r.contains("sha256"))
    );
    // Counted by kind, so that an operator can tell a bad file from a full instance.
    assert_failure_counted(&app, "hash").await;

    // The other model and health still work.
    let png = std::fs::read(medchain_tests::models_dir().join("examples/retina/1-mild_npdr-0.png"))
        .expect("example");
    assert_eq!(
        app.post_image("/v1/predict/retina", png, "x.png")
            .await
            .status(),
        200
    );
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 503);

    // Put the file back: once its back-off has passed, the next request retries the load and
    // succeeds.
    std::fs::write(&onnx, &good).expect("restore model");
    let retry = app.model("tabular").await["next_retry_unix_ms"].clone();
    medchain_tests::wait_until_unix_ms(retry.as_u64().expect("the next retry is shown")).await;
    app.post_json_ok("/v1/predict/tabular", &valid_body()).await;
    assert_eq!(app.model("tabular").await["loads"], 1);
}

#[tokio::test]
async fn the_memory_guard_refuses_a_load_under_a_small_limit() {
    let app = spawn_disease(SPEC, |s| {
        s.memory.limit_mb = 16;
        s.memory.reserve_mb = 8;
    })
    .await;
    let res = app.post_json("/v1/predict/tabular", &valid_body()).await;
    let problem = assert_problem(res, 503, None).await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("memory guard")),
        "{problem}"
    );
    assert_eq!(app.model("tabular").await["loads"], 0);
    assert_failure_counted(&app, "memory").await;
}

/// `/metrics` counts a failed load of the tabular model of this `kind` (the recorder is one
/// per process, so other tests' failures may be counted too: the kind must be there).
async fn assert_failure_counted(app: &medchain_tests::TestApp, kind: &str) {
    let text = app
        .get("/metrics")
        .await
        .text()
        .await
        .expect("metrics text");
    let needle = format!("diabetes_model_load_failures_total{{model=\"tabular\",kind=\"{kind}\"}}");
    assert!(text.contains(&needle), "missing {needle} in\n{text}");
}

/// Least privilege: diabetes-svc takes its routes from the gateway's credential for it alone,
/// `/metrics` from the monitor's alone; heart-svc's credentials (or the gateway's for heart-svc)
/// open nothing here. Health stays open.
#[tokio::test]
async fn only_the_gateways_credential_opens_the_routes_and_only_the_monitors_the_metrics() {
    let mut app = spawn_disease(SPEC, |s| secure(&mut s.auth, Peer::Diabetes)).await;
    app.post_json_ok("/v1/predict/tabular", &valid_body()).await;
    assert_problem(app.get("/metrics").await, 403, None).await;
    assert!(
        app.metrics().await.contains("diabetes_"),
        "the monitor reads it"
    );
    app.token = Some(credential(Peer::Monitor, Peer::Diabetes));
    assert_problem(
        app.post_json("/v1/predict/tabular", &valid_body()).await,
        403,
        None,
    )
    .await;
    for other in [
        credential(Peer::Gateway, Peer::Heart),
        credential(Peer::Heart, Peer::Chain),
        credential(Peer::Diabetes, Peer::Chain),
        "wrong-token-but-long-enough".into(),
    ] {
        // Two tries each: nine wrong ones in all, under the per-address limit of ten.
        app.token = Some(other.clone());
        assert_problem(app.get("/models").await, 401, None).await;
        assert_problem(
            app.post_json("/v1/predict/tabular", &valid_body()).await,
            401,
            None,
        )
        .await;
    }
    app.token = None;
    assert_problem(app.post_json("/v1/warmup", &json!({})).await, 401, None).await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_ne!(app.get("/readyz").await.status(), 401);
}

#[tokio::test]
async fn warmup_loads_both_models_in_the_background() {
    let app = spawn_disease(SPEC, |_| {}).await;
    let res = app.post_json("/v1/warmup", &json!({})).await;
    assert_eq!(res.status(), 202);
    for key in ["tabular", "retina"] {
        app.wait_for_model_state(key, "ready").await;
    }
}

#[tokio::test]
async fn an_idle_model_is_unloaded_and_loads_again_on_use() {
    let app = spawn_disease(SPEC, |s| s.models.tabular.idle_unload_secs = 1).await;
    app.post_json_ok("/v1/predict/tabular", &valid_body()).await;
    app.wait_for_model_state("tabular", "unloaded").await;
    app.post_json_ok("/v1/predict/tabular", &valid_body()).await;
    assert_eq!(app.model("tabular").await["loads"], 2);
}

#[tokio::test]
async fn image_inputs_are_checked_before_decoding() {
    let app = spawn_disease(SPEC, |s| s.images.max_bytes = nonzero(2_000_000)).await;
    let example =
        std::fs::read(medchain_tests::models_dir().join("examples/retina/2-moderate_npdr-1.jpg"))
            .expect("example");
    let path = "/v1/predict/retina";
    let gray =
        image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(64, 48, image::Luma([90])));
    let rgba = image::DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
        64,
        48,
        image::Rgba([200, 80, 30, 128]),
    ));
    let rgb16 = image::DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(
        64,
        48,
        image::Rgb([50_000u16, 20_000, 9_000]),
    ));
    let one =
        image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(1, 1, image::Rgb([1, 2, 3])));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("empty", vec![], 422),
        ("text", b"this is not an image".to_vec(), 415),
        ("gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec(), 415),
        (
            "svg",
            b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>".to_vec(),
            415,
        ),
        ("truncated jpeg", example[..example.len() / 3].to_vec(), 422),
        ("bomb", png_header_only(50_000, 50_000), 413),
        ("too large", vec![0xff; 2_100_000], 413),
        ("gray", png(gray), 200),
        ("alpha", png(rgba), 200),
        ("16-bit", png(rgb16), 200),
        ("1x1", png(one), 200),
    ];
    for (what, bytes, status) in cases {
        let res = app.post_image(path, bytes, "upload").await;
        if status == 200 {
            assert_eq!(res.status(), 200, "{what}");
        } else {
            let body = assert_problem(res, status, None).await;
            assert!(
                body["field"].is_null() || body["field"] == "image",
                "{what}: {body}"
            );
        }
    }
    let form = || reqwest::multipart::Form::new();
    let part = |b: &[u8]| reqwest::multipart::Part::bytes(b.to_vec()).file_name("x.jpg");
    // Missing part, two images, wrong field name, not multipart, no boundary.
    assert_problem(
        app.post_form(path, form().text("patient_id", "p1")).await,
        422,
        Some("image"),
    )
    .await;
    assert_problem(
        app.post_form(
            path,
            form()
                .part("image", part(&example))
                .part("image", part(&example)),
        )
        .await,
        422,
        Some("image"),
    )
    .await;
    assert_problem(
        app.post_form(path, form().part("photo", part(&example)))
            .await,
        422,
        Some("photo"),
    )
    .await;
    assert_problem(
        app.post_raw(path, "image/jpeg", example.clone()).await,
        415,
        None,
    )
    .await;
    assert_problem(
        app.post_raw(path, "multipart/form-data", example.clone())
            .await,
        400,
        None,
    )
    .await;
    let ok = app
        .post_form(
            path,
            form()
                .part("image", part(&example))
                .text("patient_id", "MRN-7"),
        )
        .await;
    assert_eq!(ok.status(), 200);
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn metrics_show_model_queue_and_memory_figures() {
    let app = spawn_disease(SPEC, |_| {}).await;
    app.post_json_ok("/v1/predict/tabular", &valid_body()).await;
    let text = app
        .get("/metrics")
        .await
        .text()
        .await
        .expect("metrics text");
    for needle in [
        "diabetes_model_loads_total{model=\"tabular\"}",
        "diabetes_model_load_seconds{model=\"tabular\"}",
        "diabetes_inference_seconds_bucket{model=\"tabular\"",
        "diabetes_model_queue_depth{model=\"retina\"} 0",
        "diabetes_model_state{model=\"tabular\"} 2",
        "diabetes_process_resident_memory_bytes",
        "diabetes_process_peak_resident_memory_bytes",
        "diabetes_http_requests_total{",
        "diabetes_image_decode_budget_bytes 134217728",
        "diabetes_image_decode_budget_peak_bytes",
        "diabetes_image_upload_buffer_in_use_bytes",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[tokio::test]
async fn a_cmyk_jpeg_is_converted_and_predicts_like_its_rgb_original() {
    let app = spawn_disease(SPEC, |_| {}).await;
    let dir = medchain_tests::models_dir().join("examples");
    let mut out = Vec::new();
    for file in ["retina/0-no_dr-1.jpg", "edge/retina-cmyk.jpg"] {
        let bytes = std::fs::read(dir.join(file)).expect("example");
        let res = app.post_image("/v1/predict/retina", bytes, file).await;
        assert_eq!(res.status(), 200, "{file}");
        out.push(res.json::<Value>().await.expect("json"));
    }
    assert_eq!(out[0]["result"]["label"], out[1]["result"]["label"]);
    let (rgb, cmyk) = (
        medchain_tests::probabilities(&out[0]),
        medchain_tests::probabilities(&out[1]),
    );
    for (a, b) in rgb.iter().zip(&cmyk) {
        assert!((a - b).abs() < 0.05, "rgb {rgb:?} vs cmyk {cmyk:?}");
    }
}

#[tokio::test]
async fn image_decodes_and_uploads_are_held_to_their_memory_budgets() {
    let app = spawn_disease(SPEC, |s| {
        s.images.decode_budget_mb = nonzero(40);
        s.images.buffer_mb = nonzero(1);
    })
    .await;
    let path = "/v1/predict/retina";
    // A few hundred bytes whose header promises 40 megapixels of 16-bit RGBA: the decoder
    // alone would need 320 MB. Refused from the header, before anything is decoded.
    let res = app
        .post_image(
            path,
            medchain_tests::png_header(7000, 5700, 16, 6),
            "huge.png",
        )
        .await;
    let problem = assert_problem(res, 413, Some("image")).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or("")
            .contains("MB of memory"),
        "{problem}"
    );
    let budget = |all: &Value, which: &str| all["image_memory"][which].clone();
    assert_eq!(
        budget(&app.models().await, "decode_budget")["peak_bytes"],
        0
    );

    // Real 2400×1800 RGBA PNGs, each needing ~30 MB to decode (17 MB decoder buffer + the
    // 13 MB RGB copy): six at once all succeed, one decode at a time within 40 MB (two decode
    // slots would otherwise hold ~60 MB).
    let img = image::RgbaImage::from_fn(2400, 1800, |x, y| {
        image::Rgba([(x % 251) as u8, (y % 241) as u8, ((x ^ y) % 239) as u8, 255])
    });
    let bytes = png(image::DynamicImage::ImageRgba8(img));
    let posts = (0..6).map(|_| app.post_image(path, bytes.clone(), "p.png"));
    for res in futures_util::future::join_all(posts).await {
        assert_eq!(res.status(), 200);
    }
    let all = app.models().await;
    let decode = budget(&all, "decode_budget");
    let peak = decode["peak_bytes"].as_u64().expect("peak");
    assert!(peak > 25 << 20 && peak <= 40 << 20, "{decode}");
    assert_eq!(decode["in_use_bytes"], 0, "{decode}");
    // Each body is reserved as it arrives, and while only bodies still arriving hold the
    // buffer the oldest may go past it: at most the buffer plus one upload.
    let upload = budget(&all, "upload_buffer");
    assert!(
        upload["peak_bytes"].as_u64().expect("peak") <= (1 << 20) + bytes.len() as u64,
        "{upload}, one upload {} bytes",
        bytes.len()
    );
    assert_eq!(upload["in_use_bytes"], 0, "{upload}");
}

/// A client's pool keeps an idle connection for a while (reqwest: 90 s; the services' own
/// client: 30 s) and writes the next request straight into it. A server that has closed it
/// meanwhile turns that request into a broken pipe — under CPU load, before the client has
/// even noticed the close. actix closes idle connections after 5 s unless told otherwise, so
/// the services keep them for `server.keep_alive_secs`, longer than any client here pools.
#[tokio::test]
async fn an_idle_keep_alive_connection_outlives_the_clients_pool() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_disease(SPEC, |_| {}).await;
    let addr = app.address.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let answered = async |conn: &mut tokio::net::TcpStream| {
        conn.write_all(request.as_bytes()).await.expect("write");
        let mut buf = vec![0u8; 4096];
        let n = conn.read(&mut buf).await.expect("read");
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200")
    };
    assert!(answered(&mut conn).await);
    // Longer than actix's default keep-alive (5 s), well within the configured one.
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    assert!(
        answered(&mut conn).await,
        "the server closed an idle connection a client would still reuse"
    );
}

fn retina_example() -> Vec<u8> {
    let dir = medchain_tests::models_dir().join("examples/retina");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png" || x == "jpg"))
        .collect();
    files.sort();
    std::fs::read(&files[0]).expect("example image")
}

/// Waits until `n` slow uploads have reached the handler: before this change each took a
/// place in the model's queue at once (`waiting`); now each holds the bytes it has sent.
async fn wait_for_slow_uploads(app: &medchain_tests::TestApp, n: u64, sent_each: u64) {
    for _ in 0..600 {
        let all = app.models().await;
        let held = all["image_memory"]["upload_buffer"]["in_use_bytes"]
            .as_u64()
            .unwrap_or(0);
        let waiting = app.model("retina").await["waiting"].as_u64().unwrap_or(0);
        if waiting >= n || held >= n * sent_each {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the slow uploads never reached the service");
}

/// Starts `n` uploads declaring `declared` bytes that send their first KB and then hold, and
/// waits until all have reached the service.
async fn slow_uploads(
    app: &medchain_tests::TestApp,
    path: &str,
    n: u64,
    declared: usize,
) -> Vec<medchain_tests::RawUpload> {
    let preamble = medchain_tests::RawUpload::preamble("image");
    let mut slow = Vec::new();
    for _ in 0..n {
        let mut up = medchain_tests::RawUpload::start(app, path, declared).await;
        up.send(&preamble).await.expect("preamble");
        up.send(&[0x89; 1024]).await.expect("first bytes");
        slow.push(up);
    }
    wait_for_slow_uploads(app, n, 1024).await;
    slow
}

/// Slow senders used to take a place in the model's queue before sending their body: the
/// 17th trickling upload left an honest one a 503 "busy" at once.
#[tokio::test]
async fn trickling_uploads_do_not_fill_the_queue() {
    let app = spawn_disease(SPEC, |_| {}).await;
    let path = "/v1/predict/retina";
    let slow = slow_uploads(&app, path, 17, 1 << 20).await;
    let res = app.post_image(path, retina_example(), "r.png").await;
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    assert_eq!(slow.len(), 17, "still open");
}

/// Each slow upload used to reserve its declared length before sending a byte: two declaring
/// 10 MB in a 16 MB buffer held an honest upload until one of them finished.
#[tokio::test]
async fn slow_uploads_hold_only_what_they_have_sent() {
    let app = spawn_disease(SPEC, |s| s.images.buffer_mb = nonzero(16)).await;
    let path = "/v1/predict/retina";
    let _slow = slow_uploads(&app, path, 2, 10 << 20).await;
    // (held open, trickling, until the end of the test)
    let honest = app.post_image(path, retina_example(), "r.png");
    let res = tokio::time::timeout(std::time::Duration::from_secs(120), honest)
        .await
        .expect("the honest upload is served while the slow ones trickle");
    assert_eq!(res.status(), 200);
    let held = app.models().await["image_memory"]["upload_buffer"]["in_use_bytes"].clone();
    assert!(held.as_u64().is_some_and(|b| b < 64 << 10), "{held}");
}

#[tokio::test]
async fn a_stalled_upload_is_answered_408() {
    let app = spawn_disease(SPEC, |s| s.images.body_stall_secs = 1).await;
    let mut up = medchain_tests::RawUpload::start(&app, "/v1/predict/retina", 1 << 20).await;
    up.send(&medchain_tests::RawUpload::preamble("image"))
        .await
        .expect("preamble");
    up.send(&[0x89; 1024]).await.expect("first bytes");
    let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(60), up.response())
        .await
        .expect("answered")
        .expect("a response, not a reset");
    assert_eq!(status, 408, "{body}");
    let problem: Value = serde_json::from_str(&body).expect("problem+json");
    assert_eq!(problem["status"], 408);
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("stopped arriving")),
        "{problem}"
    );
    let held = app.models().await["image_memory"]["upload_buffer"]["in_use_bytes"].clone();
    assert_eq!(held, 0);
}

/// A refusal decided while the body is still arriving: the sender writes its whole body (over
/// a slow link: longer than actix lingers after an early response, 1 s) and then reads the
/// answer — not a reset.
async fn refused_mid_body(field: &str, declared_file: usize) -> (u16, String) {
    let app = spawn_disease(SPEC, |_| {}).await;
    let preamble = medchain_tests::RawUpload::preamble(field);
    let epilogue = medchain_tests::RawUpload::epilogue();
    let declared = preamble.len() + declared_file + epilogue.len();
    let mut up = medchain_tests::RawUpload::start(&app, "/v1/predict/retina", declared).await;
    up.send(&preamble).await.expect("preamble");
    let piece = vec![0x89u8; 256 << 10];
    let mut sent = 0;
    while sent < declared_file {
        let n = piece.len().min(declared_file - sent);
        up.send(&piece[..n])
            .await
            .expect("the body is accepted to its end");
        sent += n;
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    }
    up.send(&epilogue).await.expect("epilogue");
    up.response().await.expect("the answer, not a reset")
}

#[tokio::test]
async fn an_upload_refused_mid_body_gets_its_answer() {
    // Declared larger than the limit: refused from the head, the body still read to its end.
    let (status, body) = refused_mid_body("image", (10 << 20) + (64 << 10)).await;
    assert_eq!(status, 413, "{body}");
    // An unknown field ahead of a large file: refused at the first field.
    let (status, body) = refused_mid_body("scan", 6 << 20).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("unknown multipart field"), "{body}");
}
