//! Streaming, measured: the gateway binary as its own process forwards 8 concurrent 10 MB
//! uploads to a stub upstream, and its peak RSS (VmHWM from /proc) must grow by far less than
//! one upload — buffering would add about 80 MB.

use std::process::{Command, Stdio};
use std::time::Duration;

const KEY: &str = "mk_streaming_test_0123456789abcdef";

use actix_web::{HttpResponse, web};
use futures_util::StreamExt;
use medchain_tests::free_port;
use medchain_tests::net::Reap;
use medchain_tests::stub::StubServer;

const UPLOAD: usize = 10 * 1024 * 1024;
const CONCURRENT: usize = 8;

async fn drain(mut body: web::Payload) -> HttpResponse {
    let mut n = 0usize;
    while let Some(Ok(chunk)) = body.next().await {
        n += chunk.len();
        // A slowish consumer, so the uploads really overlap in the gateway.
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    HttpResponse::Ok().json(serde_json::json!({"bytes": n}))
}

fn hwm_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmHWM")
}

#[tokio::test]
async fn ten_megabyte_uploads_stream_through_without_being_buffered() {
    medchain_core::http::init_tls();
    let up = StubServer::new()
        .workers(2)
        .serve(|cfg| {
            cfg.default_service(web::to(drain));
        })
        .expect("stub");

    let port = free_port();
    let gw = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env("GATEWAY__SERVER__PORT", port.to_string())
        .env("GATEWAY__SERVER__WORKERS", "2")
        .env("GATEWAY__UPSTREAMS__DIABETES", &up)
        .env("GATEWAY__UPSTREAMS__HEART", &up)
        .env("GATEWAY__UPSTREAMS__CHAIN", &up)
        .env("GATEWAY__TELEMETRY__FILTER", "warn")
        .env("GATEWAY__CLIENTS__RATE_BURST", "1000")
        .env(
            "GATEWAY__CLIENTS__KEYS",
            medchain_gateway::callers::entry_for(
                "streaming",
                medchain_gateway::callers::Role::Clinician,
                KEY,
            ),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gateway");
    let gw = Reap(gw);
    let base = format!("http://127.0.0.1:{port}");
    let client = {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("x-api-key", KEY.parse().expect("header"));
        reqwest::Client::builder()
            .default_headers(h)
            .build()
            .expect("client")
    };
    for _ in 0..200 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Warm the paths once with a small upload, then take the baseline.
    client
        .post(format!("{base}/api/v1/diabetes/predict/retina"))
        .header("content-type", "multipart/form-data; boundary=x")
        .body(vec![0u8; 1024])
        .send()
        .await
        .expect("warm");
    let before = hwm_kb(gw.0.id());

    let mut tasks = Vec::new();
    for _ in 0..CONCURRENT {
        let (client, base) = (client.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            // Sent in 64 KiB chunks with a declared length, like a browser's upload.
            let chunks = futures_util::stream::iter(
                (0..UPLOAD / 65536).map(|_| Ok::<_, std::io::Error>(vec![7u8; 65536])),
            );
            let res = client
                .post(format!("{base}/api/v1/diabetes/predict/retina"))
                .header("content-type", "multipart/form-data; boundary=x")
                .header("content-length", UPLOAD.to_string())
                .body(reqwest::Body::wrap_stream(chunks))
                .send()
                .await
                .expect("upload");
            assert_eq!(res.status(), 200);
            let v: serde_json::Value = res.json().await.expect("json");
            v["bytes"].as_u64().expect("bytes")
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), UPLOAD as u64, "every byte arrived");
    }
    let after = hwm_kb(gw.0.id());
    let grown_mb = (after.saturating_sub(before)) as f64 / 1024.0;
    eprintln!(
        "gateway VmHWM {:.1} MB -> {:.1} MB (+{grown_mb:.1} MB) for {CONCURRENT} concurrent \
         {} MB uploads",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        UPLOAD / (1024 * 1024)
    );
    drop(gw);
    assert!(
        grown_mb < 16.0,
        "peak RSS grew {grown_mb:.1} MB: uploads are being buffered"
    );
}
