//! The test kit, one for every crate's tests and the end-to-end tests in `tests/tests`:
//! - [`spawn_disease`], [`spawn_gateway`] and [`spawn_chain`] start a service in the test's
//!   process on port 0 (real models and ONNX Runtime, a real anvil);
//! - [`stub`] builds stub upstreams, [`net`] finds ports and reaps child processes;
//! - [`chain`] speaks to chain-svc as its callers do;
//! - [`assert_problem`] checks an error answer, [`check_tabular_fixtures`] and its kin a
//!   model's answers against the fixtures;
//! - [`system`] starts the real binaries as processes (whole-system tests and the benchmark).
//! - [`alloc`] is a counting global allocator for a binary that measures heap peaks.

use std::path::{Path, PathBuf};

use medchain_core::auth::CALLS;
pub use medchain_core::auth::Peer;
use medchain_core::settings::AuthSettings;
use medchain_serving::{DiseaseSettings, DiseaseSpec};
use serde_json::Value;

pub mod alloc;
pub mod chain;
pub mod net;
mod services;
pub mod stub;
pub mod system;

pub use net::{closed_port, closed_url, free_port};
pub use services::{gateway_settings, serve, spawn_chain, spawn_gateway};

/// The repository's `models/` folder.
pub fn models_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models"))
}

/// A valid tabular request for `disease` (`diabetes`: a Pima record with insulin unknown;
/// `heart`: a Cleveland record), used wherever a test or the benchmark needs a good body.
pub fn sample_record(disease: &str) -> Value {
    match disease {
        "diabetes" => serde_json::json!({
            "pregnancies": 6, "glucose": 148, "blood_pressure": 72, "skin_thickness": 35,
            "insulin": null, "bmi": 33.6, "diabetes_pedigree_function": 0.627, "age": 50
        }),
        "heart" => serde_json::json!({
            "age": 63, "sex": 1, "cp": 1, "trestbps": 145, "chol": 233, "fbs": 1, "restecg": 2,
            "thalach": 150, "exang": 0, "oldpeak": 2.3, "slope": 3, "ca": 0, "thal": 6
        }),
        other => panic!("no sample record for `{other}`"),
    }
}

/// `models/examples/fixtures.json`.
pub fn fixtures() -> Value {
    let path = models_dir().join("examples/fixtures.json");
    let text = std::fs::read_to_string(&path).expect("read fixtures.json");
    serde_json::from_str(&text).expect("parse fixtures.json")
}

/// A copy of `models/` in a temporary folder, for tests that break files. Offline-optimised
/// variants (`optimize-models`, which `bench/run.sh` runs on `models/`) are left out: a test
/// that wants one makes it.
pub fn models_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_dir(&models_dir(), dir.path());
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let dest = to.join(entry.file_name());
        if entry.file_name().to_string_lossy().contains(".optimized.") {
            continue;
        }
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).expect("copy");
        }
    }
}

/// A running service on loopback.
#[derive(Debug)]
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// Sent as `x-internal-token` when set: the gateway's credential for this service.
    pub token: Option<String>,
    /// The monitor's credential, for `/metrics`, when set.
    pub monitor: Option<String>,
}

/// The credential `from` presents to `to` in tests.
pub fn credential(from: Peer, to: Peer) -> String {
    format!("test-{from}-to-{to}-credential")
}

/// Gives the service `me` the test credentials of a whole system: what each of its callers
/// and the monitor present to it, and what it presents to each service it calls.
pub fn secure(auth: &mut AuthSettings, me: Peer) {
    for (from, to) in CALLS {
        if to == me {
            auth.accept.set(from, credential(from, to));
        }
        if from == me {
            auth.send.set(to, credential(from, to));
        }
    }
    auth.accept
        .set(Peer::Monitor, credential(Peer::Monitor, me));
}

/// The peer a disease service is.
pub fn disease_peer(spec: &DiseaseSpec) -> Peer {
    if spec.disease == "heart" {
        Peer::Heart
    } else {
        Peer::Diabetes
    }
}

/// A clinician's API key for the gateways tests start (see [`test_key_entry`]).
pub const TEST_API_KEY: &str = "mk_test_clinician_key_0123456789abcdef";

/// The gateway's `clients.keys` entry of `key` for a caller called `id` with `role`.
pub fn key_entry(id: &str, role: &str, key: &str) -> String {
    use sha2::Digest;
    format!(
        "{id}:{role}:{}",
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    )
}

/// The `clients.keys` entry of [`TEST_API_KEY`].
pub fn test_key_entry() -> String {
    key_entry("test-clinician", "clinician", TEST_API_KEY)
}

/// A client that signs in with `key` on every request (`Authorization: Bearer`).
pub fn signed_in_client(key: &str) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    if let Ok(v) = format!("Bearer {key}").parse() {
        h.insert(reqwest::header::AUTHORIZATION, v);
    }
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .unwrap_or_default()
}

/// Starts a disease service on port 0 with its embedded defaults, changed by `tweak`.
pub async fn spawn_disease(spec: DiseaseSpec, tweak: impl FnOnce(&mut DiseaseSettings)) -> TestApp {
    medchain_core::telemetry::init_for_tests();
    medchain_core::http::init_tls();
    let mut settings = DiseaseSettings::load(&spec).expect("embedded defaults load");
    settings.server.port = 0;
    settings.server.workers = 2;
    // chain-svc is somewhere else in each test: by default a closed port (an unreachable
    // chain-svc), never whatever happens to listen on the development port.
    settings.chain.url = format!("http://127.0.0.1:{}", closed_port());
    settings.chain.timeout_ms = 500;
    // Every app of a test binary shares one process, so its RSS holds the models of tests
    // running alongside: the memory guard's 512 MB budget is per service, not per test binary.
    // (Tests of the guard set their own limit.)
    settings.memory.limit_mb = 8192;
    tweak(&mut settings);
    settings.validate(&spec).expect("test settings are valid");
    let accepted = |p: Peer| {
        settings
            .auth
            .accept
            .get(p)
            .map(|v| secrecy::ExposeSecret::expose_secret(v).to_string())
    };
    let (token, monitor) = (accepted(Peer::Gateway), accepted(Peer::Monitor));
    let app = medchain_serving::build(spec, settings).expect("build app");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        client: reqwest::Client::new(),
        token,
        monitor,
    }
}

impl TestApp {
    fn with_token(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.header("x-internal-token", t),
            None => rb,
        }
    }

    /// `/metrics`, with the monitor's credential when the service has one.
    pub async fn metrics(&self) -> String {
        let mut rb = self.client.get(format!("{}/metrics", self.address));
        if let Some(m) = &self.monitor {
            rb = rb.header("x-internal-token", m);
        }
        let res = rb.send().await.expect("GET /metrics");
        assert_eq!(res.status(), 200, "/metrics");
        res.text().await.expect("metrics")
    }

    /// GET with the internal token.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.with_token(self.client.get(format!("{}{path}", self.address)))
            .send()
            .await
            .expect("GET")
    }

    /// POST a JSON value with the internal token.
    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.with_token(self.client.post(format!("{}{path}", self.address)))
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    /// POST raw bytes with a content type, with the internal token.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> reqwest::Response {
        self.with_token(self.client.post(format!("{}{path}", self.address)))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("POST")
    }

    /// POST a multipart form with the internal token.
    pub async fn post_form(&self, path: &str, form: reqwest::multipart::Form) -> reqwest::Response {
        self.with_token(self.client.post(format!("{}{path}", self.address)))
            .multipart(form)
            .send()
            .await
            .expect("POST")
    }

    /// POST an image file as the `image` part.
    pub async fn post_image(&self, path: &str, bytes: Vec<u8>, name: &str) -> reqwest::Response {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(name.to_string());
        self.post_form(path, reqwest::multipart::Form::new().part("image", part))
            .await
    }

    /// POSTs JSON, asserts 200 and returns the body.
    pub async fn post_json_ok(&self, path: &str, body: &Value) -> Value {
        let res = self.post_json(path, body).await;
        let status = res.status().as_u16();
        let v: Value = res.json().await.expect("json body");
        assert_eq!(status, 200, "{v}");
        v
    }

    /// Polls `/models` until model `key` is in `state` (at most 30 s); returns its entry.
    pub async fn wait_for_model_state(&self, key: &str, state: &str) -> Value {
        let mut entry = Value::Null;
        for _ in 0..300 {
            entry = self.model(key).await;
            if entry["state"] == state {
                return entry;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("model {key} did not reach {state}: {entry}");
    }

    /// `GET /models` as JSON.
    pub async fn models(&self) -> Value {
        self.get("/models").await.json().await.expect("models json")
    }

    /// The `/models` entry of `key`.
    pub async fn model(&self, key: &str) -> Value {
        let all = self.models().await;
        all["models"]
            .as_array()
            .expect("models array")
            .iter()
            .find(|m| m["key"] == key)
            .cloned()
            .expect("model listed")
    }
}

/// A response's content type ("" when it has none).
fn content_type(res: &reqwest::Response) -> String {
    res.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Asserts an Open Inference Protocol error (`{"error": "..."}` as JSON, not a problem) with
/// `status`; returns its message.
pub async fn assert_protocol_error(res: reqwest::Response, status: u16) -> String {
    assert_eq!(res.status(), status);
    let ct = content_type(&res);
    assert!(
        ct.starts_with("application/json"),
        "the protocol's error, not a problem: {ct}"
    );
    let v: Value = res.json().await.expect("json");
    v["error"]
        .as_str()
        .expect("`error` names the problem")
        .to_string()
}

/// Asserts a problem+json error with `status` naming `field` (when given); returns its body.
pub async fn assert_problem(res: reqwest::Response, status: u16, field: Option<&str>) -> Value {
    assert_problem_for(res, status, field, "").await
}

/// `assert_problem`, with `what` (the case being checked) in every failure message.
pub async fn assert_problem_for(
    res: reqwest::Response,
    status: u16,
    field: Option<&str>,
    what: &str,
) -> Value {
    let got = res.status().as_u16();
    let ct = content_type(&res);
    let text = res.text().await.expect("error body");
    assert_eq!(got, status, "{what}: {text}");
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: not JSON: {text}"));
    assert_eq!(ct, "application/problem+json", "{what}: {body}");
    assert_eq!(body["status"], status, "{what}: {body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{what}: {body}"
    );
    if let Some(f) = field {
        assert_eq!(body["field"], f, "{what}: {body}");
    }
    body
}

/// The class probabilities of a prediction response, in class order.
pub fn probabilities(body: &Value) -> Vec<f64> {
    body["result"]["probabilities"]
        .as_array()
        .expect("probabilities")
        .iter()
        .map(|p| p["probability"].as_f64().expect("number"))
        .collect()
}

/// Asserts every probability is within `tol` of the fixture's.
pub fn assert_close(got: &[f64], want: &Value, tol: f64, what: &str) {
    let want: Vec<f64> = want
        .as_array()
        .expect("fixture probabilities")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect();
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g - w).abs() <= tol,
            "{what}: got {got:?}, fixture {want:?}"
        );
    }
}

/// Posts every tabular fixture row of `disease` and checks the probabilities; returns how many.
pub async fn check_tabular_fixtures(app: &TestApp, disease: &str) -> usize {
    let fx = fixtures();
    let tol = fx["tolerance"].as_f64().expect("tolerance");
    let rows: Vec<&Value> = fx["tabular"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["disease"] == disease)
        .collect();
    for row in &rows {
        let res = app.post_json("/v1/predict/tabular", &row["input"]).await;
        assert_eq!(res.status(), 200, "{row}");
        let body: Value = res.json().await.expect("json");
        assert_eq!(body["model"]["sha256"], row["model_sha256"]);
        assert_close(
            &probabilities(&body),
            &row["probabilities"],
            tol,
            &row.to_string(),
        );
    }
    rows.len()
}

/// Uploads every image fixture of `disease` to `route` and checks the probabilities and the
/// demo notice; returns how many.
pub async fn check_image_fixtures(app: &TestApp, disease: &str, route: &str) -> usize {
    check_variant_fixtures(app, disease, route, None).await
}

/// Serves `disease`'s image model (`model`, at `route`) from its int8 card, chosen by
/// configuration, and checks that the variant reproduces its own fixtures; returns how many.
pub async fn check_int8_variant(
    spec: DiseaseSpec,
    disease: &str,
    model: &str,
    route: &str,
) -> usize {
    let card = format!("{disease}/{model}.int8.card.json");
    let app = spawn_disease(spec, move |s| s.models.image.card = card).await;
    let n = check_variant_fixtures(&app, disease, route, Some("int8")).await;
    let m = app.model(model).await;
    assert_eq!(m["state"], "ready", "{m}");
    assert!(
        m["model_id"]
            .as_str()
            .is_some_and(|id| id.ends_with("-int8")),
        "{m}"
    );
    n
}

/// As [`check_image_fixtures`], for a model variant's own fixtures (`Some("int8")`), with the
/// service configured to serve that variant.
pub async fn check_variant_fixtures(
    app: &TestApp,
    disease: &str,
    route: &str,
    variant: Option<&str>,
) -> usize {
    let fx = fixtures();
    let exact = fx["tolerance"].as_f64().expect("tolerance");
    // JPEG decoders round differently (see models/pipeline/fixtures.py).
    let jpeg = match variant {
        None => fx["jpeg_tolerance"].as_f64().expect("jpeg_tolerance"),
        Some(_) => fx["int8_jpeg_tolerance"]
            .as_f64()
            .expect("int8_jpeg_tolerance"),
    };
    let items: Vec<&Value> = fx["image"]
        .as_array()
        .expect("images")
        .iter()
        .filter(|r| r["disease"] == disease && r["variant"].as_str() == variant)
        .collect();
    for item in &items {
        let file = item["file"].as_str().expect("file");
        let bytes = std::fs::read(models_dir().join("examples").join(file)).expect("image");
        let res = app.post_image(route, bytes, file).await;
        assert_eq!(res.status(), 200, "{file}");
        let body: Value = res.json().await.expect("json");
        assert_eq!(body["model"]["sha256"], item["model_sha256"]);
        assert_eq!(body["demo"], true);
        assert!(
            body["notice"]
                .as_str()
                .is_some_and(|n| n.contains("not for clinical use")),
            "{body}"
        );
        let got = probabilities(&body);
        let png = file.ends_with(".png");
        assert_close(
            &got,
            &item["probabilities"],
            if png { exact } else { jpeg },
            file,
        );
        if !png && variant.is_some() {
            let top = |p: &[f64]| {
                p.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, _)| i)
            };
            let want: Vec<f64> = item["probabilities"]
                .as_array()
                .expect("probabilities")
                .iter()
                .filter_map(Value::as_f64)
                .collect();
            assert_eq!(top(&got), top(&want), "{file}: top class");
        }
    }
    items.len()
}

/// `img` encoded as PNG.
pub fn png(img: image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

/// A PNG whose header claims `w`×`h` pixels, with a token data chunk (a decompression bomb's
/// header: decoding it would need w×h×3 bytes).
pub fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    png_header(w, h, 8, 2)
}

/// Like [`png_header_only`] with another bit depth and PNG colour type (2 = RGB, 6 = RGBA).
pub fn png_header(w: u32, h: u32, bit_depth: u8, colour_type: u8) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[bit_depth, colour_type, 0, 0, 0]);
    v.extend_from_slice(&13u32.to_be_bytes());
    v.extend_from_slice(&ihdr);
    v.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    for (kind, data) in [
        (&b"IDAT"[..], &[0x78u8, 0x9c, 0x03, 0, 0, 0, 0, 1][..]),
        (b"IEND", &[]),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(data);
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(&chunk);
        v.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    v
}

/// `jpeg` with an EXIF APP1 segment giving `orientation` inserted right after SOI.
pub fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = vec![
        b'I', b'I', 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0,
    ];
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let len = (2 + 6 + tiff.len()) as u16;
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b"Exif\0\0");
    out.extend_from_slice(&tiff);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An image upload written by hand over TCP, for the senders reqwest cannot play: slow,
/// stalled or oversized bodies. Its head declares `declared` body bytes (framing included).
#[derive(Debug)]
pub struct RawUpload {
    conn: tokio::net::TcpStream,
}

/// The multipart boundary of [`RawUpload`]s.
pub const RAW_BOUNDARY: &str = "medchain-raw-upload";

impl RawUpload {
    /// The multipart framing before the file's bytes, for a field named `field`.
    pub fn preamble(field: &str) -> Vec<u8> {
        format!(
            "--{RAW_BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; \
             filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n"
        )
        .into_bytes()
    }

    /// The framing after the file's bytes.
    pub fn epilogue() -> Vec<u8> {
        format!("\r\n--{RAW_BOUNDARY}--\r\n").into_bytes()
    }

    /// Connects and sends the head (with the internal token, if `app` has one).
    pub async fn start(app: &TestApp, path: &str, declared: usize) -> Self {
        use tokio::io::AsyncWriteExt;
        let addr = app.address.trim_start_matches("http://");
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let token = app
            .token
            .as_ref()
            .map(|t| format!("x-internal-token: {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{token}Content-Type: multipart/form-data; \
             boundary={RAW_BOUNDARY}\r\nContent-Length: {declared}\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await.expect("head");
        Self { conn }
    }

    /// Sends part of the body.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.conn.write_all(bytes).await
    }

    /// Reads the response: status and body.
    pub async fn response(&mut self) -> std::io::Result<(u16, String)> {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let (head_end, length) = loop {
            let n = self.conn.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("closed after {} bytes of response", buf.len()),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (i + 4, length);
            }
        };
        while buf.len() < head_end + length {
            let n = self.conn.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let status = String::from_utf8_lossy(&buf[9..12.min(buf.len())])
            .parse()
            .unwrap_or(0);
        let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
        Ok((status, body))
    }
}

/// Waits until the wall clock has passed `unix_ms` (a time a service announced, such as a
/// model's next load attempt).
pub async fn wait_until_unix_ms(unix_ms: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    tokio::time::sleep(std::time::Duration::from_millis(
        unix_ms.saturating_sub(now) + 20,
    ))
    .await;
}
