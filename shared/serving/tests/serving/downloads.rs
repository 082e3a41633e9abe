//! The retina model configured by URL, served by a real HTTP server on loopback that can be
//! told to misbehave: downloaded once under 20 concurrent first requests, verified and served;
//! a corrupted file, a truncated file, a 404 and a stalled transfer each leave the model
//! `failed` with a clear reason and its endpoint answering 503 (the tabular endpoint keeps
//! working), nothing bad is kept in the cache, and the next request tries again.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::{HttpResponse, web};
use medchain_diabetes_svc::SPEC;
use medchain_serving::model::remote::Location;
use medchain_tests::stub::StubServer;
use medchain_tests::{TestApp, models_dir, spawn_disease};
use serde_json::Value;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Good,
    Corrupt,
    Truncated,
    Missing,
    Stall,
}

struct Host {
    file: Vec<u8>,
    mode: Mutex<Mode>,
    requests: AtomicUsize,
}

async fn serve(host: web::Data<Host>) -> HttpResponse {
    host.requests.fetch_add(1, Ordering::SeqCst);
    let mode = *host.mode.lock().expect("mode");
    match mode {
        Mode::Good => HttpResponse::Ok().body(host.file.clone()),
        Mode::Corrupt => {
            let mut bad = host.file.clone();
            for b in bad.iter_mut().skip(1000).take(32) {
                *b ^= 0xA5;
            }
            HttpResponse::Ok().body(bad)
        }
        Mode::Truncated => HttpResponse::Ok().body(host.file[..host.file.len() / 2].to_vec()),
        Mode::Missing => HttpResponse::NotFound().body("no such object"),
        Mode::Stall => {
            let first = bytes::Bytes::copy_from_slice(&host.file[..64 * 1024]);
            let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(first) })
                .chain(futures_util::stream::pending());
            HttpResponse::Ok().streaming(stream)
        }
    }
}

use futures_util::StreamExt;

/// The model host on a free port; returns its state and the URL of the retina file (with a
/// query string standing in for a presigned URL's signature).
fn model_host() -> (Arc<Host>, String) {
    let host = Arc::new(Host {
        file: std::fs::read(models_dir().join("diabetes/retina.onnx")).expect("model"),
        mode: Mutex::new(Mode::Good),
        requests: AtomicUsize::new(0),
    });
    let data = web::Data::from(host.clone());
    let base = StubServer::new()
        .serve(move |cfg| {
            cfg.app_data(data.clone())
                .route("/models/retina.onnx", web::get().to(serve));
        })
        .expect("model host");
    (
        host,
        format!("{base}/models/retina.onnx?X-Signature=s3cr3t-signature"),
    )
}

async fn service(url: &str, cache: &Path) -> TestApp {
    let (url, cache) = (url.to_string(), cache.display().to_string());
    spawn_disease(SPEC, move |s| {
        s.models.image.file = Location(url);
        s.models.image.max_waiting = 32;
        s.models.download.cache_dir = cache;
        s.models.download.stall_secs = 1;
        s.models.download.timeout_secs = 20;
        s.models.download.retries = 1;
        // Long enough that the requests made within it are several even on a loaded machine.
        s.models.load_retry_secs = 4;
    })
    .await
}

fn retina_png() -> Vec<u8> {
    std::fs::read(models_dir().join("examples/retina/1-mild_npdr-0.png")).expect("example")
}

fn tabular() -> Value {
    medchain_tests::sample_record("diabetes")
}

fn cached_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_model_by_url_is_downloaded_once_for_20_concurrent_first_requests() {
    let (host, url) = model_host();
    let cache = tempfile::tempdir().expect("tempdir");
    let app = service(&url, cache.path()).await;

    let before = app.model("retina").await;
    assert_eq!(before["state"], "unloaded");
    let source = before["source"].as_str().expect("source shown");
    assert!(source.ends_with("/models/retina.onnx?…"), "{source}");
    assert_eq!(app.get("/readyz").await.status(), 200);

    let app = Arc::new(app);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            app.post_image("/v1/predict/retina", retina_png(), "x.png")
                .await
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), 200);
    }
    assert_eq!(host.requests.load(Ordering::SeqCst), 1, "one download");
    let m = app.model("retina").await;
    assert_eq!(m["state"], "ready");
    assert_eq!(m["loads"], 1);
    let sha = m["sha256"].as_str().expect("sha");
    assert_eq!(cached_files(cache.path()), vec![format!("{sha}.onnx")]);
    // Nothing of the signature in what the service shows.
    assert!(!app.models().await.to_string().contains("s3cr3t"));

    // A second service on the same cache (a restart on a persistent disk) does not download.
    let again = service(&url, cache.path()).await;
    assert_eq!(
        again
            .post_image("/v1/predict/retina", retina_png(), "x.png")
            .await
            .status(),
        200
    );
    assert_eq!(host.requests.load(Ordering::SeqCst), 1);
}

/// One bad mode: the image endpoint 503s naming the cause, the model is `failed`, tabular
/// works, nothing is cached; the next request asks the host again, and once the host serves
/// the right file the model loads.
async fn fails_then_recovers(mode: Mode, reason: &str, attempts: usize) {
    let (host, url) = model_host();
    *host.mode.lock().expect("mode") = mode;
    let cache = tempfile::tempdir().expect("tempdir");
    let app = service(&url, cache.path()).await;

    let res = app
        .post_image("/v1/predict/retina", retina_png(), "x.png")
        .await;
    let problem = medchain_tests::assert_problem(res, 503, None).await;
    let detail = problem["detail"].as_str().expect("detail");
    assert!(detail.contains(reason), "{mode:?}: {detail}");
    assert!(!detail.contains("s3cr3t"), "{detail}");
    let m = app.model("retina").await;
    assert_eq!(m["state"], "failed", "{mode:?}");
    assert!(m["reason"].as_str().is_some_and(|r| r.contains(reason)));
    assert_eq!(host.requests.load(Ordering::SeqCst), attempts, "{mode:?}");
    let m = app.model("retina").await;
    assert_eq!(m["failures"], 1, "{m}");
    let next = m["next_retry_unix_ms"].as_u64().expect("next retry shown");
    // Requests within the back-off are told when to come back; none starts another download.
    // They are sent only while the back-off has more than 2 s to run, so that none reaches
    // the service after it (a request then rightly tries again): on a loaded machine fewer
    // than eight may be sent.
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    let mut answered_in_back_off = 0;
    for _ in 0..8 {
        if now_ms() + 2000 >= next {
            break;
        }
        let res = app
            .post_image("/v1/predict/retina", retina_png(), "x.png")
            .await;
        assert!(res.headers().contains_key("retry-after"), "{mode:?}");
        medchain_tests::assert_problem(res, 503, None).await;
        answered_in_back_off += 1;
        assert_eq!(host.requests.load(Ordering::SeqCst), attempts, "{mode:?}");
    }
    assert!(
        answered_in_back_off > 0,
        "no request fitted in the back-off"
    );
    assert!(
        cached_files(cache.path()).is_empty(),
        "{mode:?} left {:?}",
        cached_files(cache.path())
    );
    app.post_json_ok("/v1/predict/tabular", &tabular()).await;

    *host.mode.lock().expect("mode") = Mode::Good;
    medchain_tests::wait_until_unix_ms(next).await;
    assert_eq!(
        app.post_image("/v1/predict/retina", retina_png(), "x.png")
            .await
            .status(),
        200,
        "{mode:?}: the next request retries"
    );
    assert_eq!(host.requests.load(Ordering::SeqCst), attempts + 1);
    assert_eq!(app.model("retina").await["state"], "ready");
}

#[tokio::test]
async fn a_corrupted_download_fails_and_is_not_kept() {
    fails_then_recovers(Mode::Corrupt, "sha256", 1).await;
}

#[tokio::test]
async fn a_truncated_download_fails() {
    fails_then_recovers(Mode::Truncated, "bytes", 1).await;
}

#[tokio::test]
async fn a_missing_file_fails() {
    fails_then_recovers(Mode::Missing, "404", 1).await;
}

#[tokio::test]
async fn a_stalled_download_times_out_and_is_retried_once() {
    // retries = 1: two attempts, each cut after 1 s without a byte.
    fails_then_recovers(Mode::Stall, "attempts", 2).await;
}

#[tokio::test]
async fn a_download_in_progress_shows_as_loading() {
    let (host, url) = model_host();
    *host.mode.lock().expect("mode") = Mode::Stall;
    let cache = tempfile::tempdir().expect("tempdir");
    let app = Arc::new(service(&url, cache.path()).await);
    let first = {
        let app = app.clone();
        tokio::spawn(async move {
            app.post_image("/v1/predict/retina", retina_png(), "x.png")
                .await
                .status()
                .as_u16()
        })
    };
    let mut seen = Vec::new();
    for _ in 0..40 {
        let state = app.model("retina").await["state"].clone();
        if state == "loading" {
            break;
        }
        seen.push(state);
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(app.model("retina").await["state"], "loading", "{seen:?}");
    // The tabular model is not held up by the other model's download.
    app.post_json_ok("/v1/predict/tabular", &tabular()).await;
    assert_eq!(first.await.expect("task"), 503);
}
