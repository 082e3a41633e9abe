//! The gateway against real stub upstreams (actix servers on port 0): routing, headers,
//! timeouts, upstream down, round-robin with a bad instance, CORS, rate limits, API keys,
//! body limits, and the OpenAPI document against the route table.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use medchain_core::auth::Peer;
use medchain_gateway::callers::{Role, entry_for};
use medchain_gateway::routes::UpstreamKey;
use medchain_gateway::{Settings, route_table};
use medchain_tests::stub::StubServer;
use serde_json::{Value, json};

mod spread;

/// What the gateway presents to each upstream, and what the monitor presents to the gateway.
const TO_DIABETES: &str = "gateway-to-diabetes-credential";
const TO_HEART: &str = "gateway-to-heart-credential";
const TO_CHAIN: &str = "gateway-to-chain-credential";
const TOKEN: &str = "monitor-to-gateway-credential";
/// A caller of each role (their hashes are configured by `settings`).
const CLINICIAN: &str = "mk_test_clinician_0123456789abcdef";
const AUDITOR: &str = "mk_test_auditor_0123456789abcdef";
const ADMIN: &str = "mk_test_admin_0123456789abcdef";

/// A client signed in with `key`.
fn client_as(key: &str) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse().expect("header"),
    );
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .expect("client")
}

/// A clinician's client.
fn client() -> reqwest::Client {
    client_as(CLINICIAN)
}

/// A stub upstream: echoes what it received, drains bodies, can be slow or broken.
#[derive(Clone, Default)]
struct Stub {
    hits: Arc<AtomicUsize>,
    delay_ms: u64,
    html_500: bool,
}

async fn stub_handler(
    req: HttpRequest,
    mut body: web::Payload,
    stub: web::Data<Stub>,
) -> HttpResponse {
    stub.hits.fetch_add(1, Ordering::SeqCst);
    if stub.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(stub.delay_ms)).await;
    }
    if stub.html_500 {
        return HttpResponse::InternalServerError()
            .content_type("text/html")
            .body("<html>Service waking up</html>");
    }
    let mut bytes = 0usize;
    let mut first = Vec::new();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else { break };
        bytes += chunk.len();
        if first.len() < 4096 {
            first.extend_from_slice(&chunk[..chunk.len().min(4096 - first.len())]);
        }
    }
    let h = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    HttpResponse::Ok().json(json!({
        "path": req.path(),
        "query": req.query_string(),
        "method": req.method().as_str(),
        "token": h("x-internal-token"),
        "caller": h("x-medchain-caller"),
        "caller_role": h("x-medchain-caller-role"),
        "request_id": h("x-request-id"),
        "cookie": h("cookie"),
        "content_type": h("content-type"),
        "content_length": h("content-length"),
        "transfer_encoding": h("transfer-encoding"),
        "bytes": bytes,
        "head": String::from_utf8_lossy(&first),
    }))
}

async fn spawn_stub(stub: Stub) -> String {
    let data = web::Data::new(stub);
    StubServer::new()
        .serve(move |cfg| {
            cfg.app_data(data.clone())
                .default_service(web::to(stub_handler));
        })
        .expect("stub")
}

fn closed() -> String {
    medchain_tests::closed_url()
}

fn settings(d: Vec<String>, h: Vec<String>, c: Vec<String>) -> Settings {
    medchain_core::telemetry::init_for_tests();
    medchain_core::http::init_tls();
    let mut s = Settings::load().expect("defaults");
    s.server.port = 0;
    s.server.workers = 1;
    s.auth.send.set(Peer::Diabetes, TO_DIABETES);
    s.auth.send.set(Peer::Heart, TO_HEART);
    s.auth.send.set(Peer::Chain, TO_CHAIN);
    s.auth.accept.set(Peer::Monitor, TOKEN);
    s.upstreams.diabetes = d;
    s.upstreams.heart = h;
    s.upstreams.chain = c;
    s.proxy.wake_grace_ms = 0;
    s.clients.keys = vec![
        entry_for("test-clinician", Role::Clinician, CLINICIAN),
        entry_for("test-auditor", Role::Auditor, AUDITOR),
        entry_for("test-admin", Role::Admin, ADMIN),
    ];
    s
}

async fn start(s: Settings) -> String {
    medchain_tests::spawn_gateway(s)
}

/// GET `url`; status and JSON body.
async fn get_json(url: String) -> (u16, Value) {
    json_of(client().get(url).send().await.expect("get")).await
}

/// POST `body` as JSON to `url`; status and JSON body.
async fn post_json(url: String, body: Value) -> (u16, Value) {
    json_of(client().post(url).json(&body).send().await.expect("post")).await
}

async fn json_of(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    (status, res.json().await.expect("json"))
}

#[tokio::test]
async fn every_route_reaches_its_upstream_path_with_token_and_request_id() {
    let (d, h, c) = (Stub::default(), Stub::default(), Stub::default());
    let s = settings(
        vec![spawn_stub(d.clone()).await],
        vec![spawn_stub(h.clone()).await],
        vec![spawn_stub(c.clone()).await],
    );
    let gw = start(s).await;
    for r in route_table() {
        // A caller the route is for (an admin for model state, which others see redacted).
        let client = client_as(match r.roles[0] {
            _ if r.target == "/models" => ADMIN,
            Role::Clinician => CLINICIAN,
            Role::Auditor => AUDITOR,
            Role::Admin => ADMIN,
        });
        let fill = |p: &str| {
            p.replace("{prediction_id}", "0b9c6f9e-8a35-4f8e-9d59-1f7c3a2b4c5d")
                .replace("{address}", "0x00000000000000000000000000000000000000a1")
                .replace("{name}", "heart-ecg")
                .replace("{version}", "1.0.0")
        };
        let (path, target) = (fill(r.path), fill(r.target));
        let url = format!("{gw}/api/v1{path}?x=1");
        let rb = if r.method == "GET" {
            client.get(&url)
        } else {
            client
                .post(&url)
                .header("content-type", "application/json")
                .body(r#"{"a":1}"#)
        };
        let res = rb
            .header("x-request-id", "trace-abc-123")
            .header("cookie", "session=secret")
            // A client naming itself someone else: the gateway's word replaces it.
            .header("x-medchain-caller", "someone-else")
            .header("x-medchain-caller-role", "auditor")
            .send()
            .await
            .expect("send");
        assert_eq!(res.headers()["x-request-id"], "trace-abc-123");
        let (status, seen) = json_of(res).await;
        assert_eq!(status, 200, "{} {}: {seen}", r.method, r.path);
        assert_eq!(seen["path"], target.as_str(), "{}", r.path);
        assert_eq!(seen["query"], "x=1");
        assert_eq!(seen["method"], r.method);
        let own = match r.upstream {
            UpstreamKey::Diabetes => TO_DIABETES,
            UpstreamKey::Heart => TO_HEART,
            UpstreamKey::Chain => TO_CHAIN,
        };
        assert_eq!(
            seen["token"], own,
            "each upstream gets the gateway's credential for it"
        );
        let (id, role) = match r.roles[0] {
            _ if r.target == "/models" => ("test-admin", "admin"),
            Role::Clinician => ("test-clinician", "clinician"),
            Role::Auditor => ("test-auditor", "auditor"),
            Role::Admin => ("test-admin", "admin"),
        };
        assert_eq!(
            (&seen["caller"], &seen["caller_role"]),
            (&json!(id), &json!(role)),
            "the signed-in caller is named, whatever the client sent"
        );
        assert_eq!(
            seen["request_id"], "trace-abc-123",
            "the request id is forwarded"
        );
        assert!(
            seen["cookie"].is_null(),
            "client cookies stay at the gateway"
        );
        if r.method == "POST" {
            assert_eq!(seen["head"], r#"{"a":1}"#);
        }
    }
    // Generated when the client sends none, and the same id reaches the upstream.
    let res = client()
        .get(format!("{gw}/api/v1/diabetes/cards"))
        .send()
        .await
        .expect("send");
    let id = res.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    let (_, seen) = json_of(res).await;
    assert_eq!(seen["request_id"], id.as_str());
    // Each upstream was called once per route it serves (diabetes-svc once more, above).
    let served = |u: UpstreamKey| route_table().iter().filter(|r| r.upstream == u).count();
    assert_eq!(
        d.hits.load(Ordering::SeqCst),
        served(UpstreamKey::Diabetes) + 1
    );
    assert_eq!(h.hits.load(Ordering::SeqCst), served(UpstreamKey::Heart));
    assert_eq!(c.hits.load(Ordering::SeqCst), served(UpstreamKey::Chain));
    assert_eq!(
        (served(UpstreamKey::Diabetes), served(UpstreamKey::Chain)),
        (18, 5),
        "the six JSON-API routes and twelve V2 routes of a disease service; chain-svc's five"
    );

    let (status, p) = get_json(format!("{gw}/api/v1/nothing")).await;
    assert_eq!(status, 404, "{p}");
}

/// The review: path parameters were decoded twice — the listing for `A/B` (sent `A%2FB`) or
/// `50%` (`50%25`) reached the upstream as `A%252FB` / `50%2525`, another patient's reference.
/// Now the upstream gets the segment exactly as the client sent it (the listing takes its
/// patient id in the body now; the record look-up's id is the path parameter left).
#[tokio::test]
async fn path_parameters_reach_the_upstream_byte_for_byte() {
    let c = Stub::default();
    let s = settings(vec![closed()], vec![closed()], vec![spawn_stub(c).await]);
    let gw = start(s).await;
    for sent in ["A%2FB", "50%25", "%C3%A9t%C3%A9", "a%20b", "MRN-7"] {
        let (status, seen) = get_json(format!("{gw}/api/v1/records/{sent}")).await;
        assert_eq!(status, 200, "{seen}");
        assert_eq!(seen["path"], format!("/v1/records/{sent}"));
    }
}

#[tokio::test]
async fn the_openapi_document_describes_exactly_the_routes() {
    let s = settings(vec![closed()], vec![closed()], vec![closed()]);
    let gw = start(s).await;
    let doc: Value = reqwest::get(format!("{gw}/api/v1/openapi.json"))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("ops").keys() {
            documented.push((method.to_ascii_uppercase(), path.clone()));
        }
    }
    let mut routed: Vec<(String, String)> = route_table()
        .iter()
        .map(|r| (r.method.to_string(), format!("/api/v1{}", r.path)))
        .collect();
    routed.push(("GET".into(), "/api/v1/openapi.json".into()));
    routed.push(("GET".into(), "/api/v1/whoami".into()));
    // Each operation names the roles its route is for.
    for r in route_table() {
        let op = &doc["paths"][format!("/api/v1{}", r.path)][r.method.to_ascii_lowercase()];
        let roles: Vec<&str> = r.roles.iter().map(|x| x.as_str()).collect();
        assert_eq!(op["x-roles"], json!(roles), "{} {}", r.method, r.path);
    }
    documented.sort();
    routed.sort();
    assert_eq!(documented, routed);
}

#[tokio::test]
async fn a_slow_upstream_times_out_and_a_dead_one_is_named_while_the_other_serves() {
    let slow = Stub {
        delay_ms: 3000,
        ..Stub::default()
    };
    let heart = Stub::default();
    let mut s = settings(
        vec![spawn_stub(slow).await],
        vec![spawn_stub(heart).await],
        vec![closed()],
    );
    s.proxy.tabular_timeout_ms = 300;
    let gw = start(s).await;
    let started = Instant::now();
    let (status, p) = post_json(format!("{gw}/api/v1/diabetes/predict/tabular"), json!({})).await;
    assert_eq!(status, 504, "{p}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered within the timeout"
    );
    assert_eq!(p["upstream"], "diabetes-svc");
    let (status, p) = get_json(format!(
        "{gw}/api/v1/records/0b9c6f9e-8a35-4f8e-9d59-1f7c3a2b4c5d"
    ))
    .await;
    assert_eq!(status, 502, "{p}");
    assert_eq!(p["upstream"], "chain-svc");
    let (status, _) = post_json(format!("{gw}/api/v1/heart/predict/tabular"), json!({})).await;
    assert_eq!(status, 200, "the other disease is unaffected");
}

#[tokio::test]
async fn a_platform_error_page_becomes_a_problem_naming_the_upstream() {
    let broken = Stub {
        html_500: true,
        ..Stub::default()
    };
    let s = settings(
        vec![spawn_stub(broken).await],
        vec![closed()],
        vec![closed()],
    );
    let gw = start(s).await;
    let res = client()
        .get(format!("{gw}/api/v1/diabetes/models"))
        .send()
        .await
        .expect("get");
    assert!(
        res.headers()["content-type"]
            .to_str()
            .expect("ct")
            .contains("problem+json")
    );
    let (status, p) = json_of(res).await;
    assert_eq!(
        (status, &p["upstream"]),
        (502, &json!("diabetes-svc")),
        "{p}"
    );
}

#[tokio::test]
async fn round_robin_skips_an_instance_that_fails() {
    let (a, b) = (Stub::default(), Stub::default());
    let s = settings(
        vec![closed()],
        vec![
            closed(),
            spawn_stub(a.clone()).await,
            spawn_stub(b.clone()).await,
        ],
        vec![closed()],
    );
    let gw = start(s).await;
    let client = client();
    for i in 0..12 {
        let res = client
            .post(format!("{gw}/api/v1/heart/predict/tabular"))
            .json(&json!({"n": i}))
            .send()
            .await
            .expect("send");
        assert_eq!(
            res.status(),
            200,
            "request {i} served despite the dead instance"
        );
    }
    let (ha, hb) = (a.hits.load(Ordering::SeqCst), b.hits.load(Ordering::SeqCst));
    assert_eq!(ha + hb, 12);
    assert!(
        ha >= 4 && hb >= 4,
        "both live instances share the load: {ha} / {hb}"
    );
    let metrics = client
        .get(format!("{gw}/metrics"))
        .header("x-internal-token", TOKEN)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let ejections = metrics
        .lines()
        .find(|l| l.starts_with("gateway_upstream_ejections_total{upstream=\"heart-svc\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .expect("ejection counter");
    assert_eq!(
        ejections, 1.0,
        "the dead instance was tried once, then skipped"
    );
}

#[tokio::test]
async fn cors_allows_only_listed_origins() {
    let mut s = settings(
        vec![spawn_stub(Stub::default()).await],
        vec![closed()],
        vec![closed()],
    );
    s.clients.cors_origins = vec!["https://app.example.org".into()];
    let gw = start(s).await;
    let client = client();
    let url = format!("{gw}/api/v1/diabetes/models");
    let ok = client
        .get(&url)
        .header("origin", "https://app.example.org")
        .send()
        .await
        .expect("send");
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example.org"
    );
    let other = client
        .get(&url)
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("send");
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let pre = client
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://app.example.org")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("send");
    assert_eq!(pre.status(), 204);
    assert!(
        pre.headers()["access-control-allow-headers"]
            .to_str()
            .expect("h")
            .contains("x-api-key")
    );
    let denied = client
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("send");
    assert_eq!(denied.status(), 403);
    // The body says the same as the status: a forbidden problem, not an unauthorised one.
    let body: Value = denied.json().await.expect("problem body");
    assert_eq!(body["status"], 403, "{body}");
    assert_eq!(body["type"], "urn:medchain:problem:forbidden", "{body}");
    // The gateway's own page (same origin) needs no CORS and is not refused.
    let host = gw.trim_start_matches("http://");
    let same = client
        .get(&url)
        .header("origin", format!("http://{host}"))
        .send()
        .await
        .expect("send");
    assert_eq!(same.status(), 200);
}

/// The review: any website could make its visitors' browsers write records — a cross-origin
/// multipart POST (`Origin: evil.example`, a "simple" request with no preflight) was recorded.
/// Now a state-changing request from another site is refused before it is forwarded.
#[tokio::test]
async fn cross_site_posts_are_refused_before_anything_is_forwarded() {
    let stub = Stub::default();
    let hits = stub.hits.clone();
    let mut s = settings(vec![spawn_stub(stub).await], vec![closed()], vec![closed()]);
    s.clients.cors_origins = vec!["https://app.example.org".into()];
    let gw = start(s).await;
    let client = client();
    let url = format!("{gw}/api/v1/diabetes/predict/retina");
    let form = || {
        reqwest::multipart::Form::new()
            .text("patient_id", "MRN-0001")
            .part("image", reqwest::multipart::Part::bytes(vec![0xFF, 0xD8]))
    };
    let evil = client
        .post(&url)
        .header("origin", "https://evil.example")
        .multipart(form())
        .send()
        .await
        .expect("send");
    assert_eq!(evil.status(), 403);
    let (_, p) = json_of(evil).await;
    assert_eq!(p["type"], "urn:medchain:problem:forbidden", "{p}");
    // A browser that sends only Sec-Fetch-Site.
    let fetch = client
        .post(&url)
        .header("sec-fetch-site", "cross-site")
        .multipart(form())
        .send()
        .await
        .expect("send");
    assert_eq!(fetch.status(), 403);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
    // The page itself, an allowed origin, and clients that are not browsers pass.
    let host = gw.trim_start_matches("http://");
    for origin in [
        Some(format!("http://{host}")),
        Some("https://app.example.org".into()),
        None,
    ] {
        let mut req = client.post(&url).multipart(form());
        if let Some(o) = origin {
            req = req
                .header("origin", o)
                .header("sec-fetch-site", "same-origin");
        }
        assert_eq!(req.send().await.expect("send").status(), 200);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    // Reads stay open to any origin (without CORS headers the browser keeps the answer).
    let read = client
        .get(format!("{gw}/api/v1/diabetes/models"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("send");
    assert_eq!(read.status(), 200);
}

#[tokio::test]
async fn clients_are_rate_limited_and_api_keys_are_checked() {
    let mut s = settings(
        vec![spawn_stub(Stub::default()).await],
        vec![closed()],
        vec![closed()],
    );
    s.clients.rate_per_second = std::num::NonZeroU32::new(1).expect("positive");
    s.clients.rate_burst = std::num::NonZeroU32::new(3).expect("positive");
    let gw = start(s).await;
    let client = client();
    let url = format!("{gw}/api/v1/diabetes/models");
    for _ in 0..3 {
        assert_eq!(client.get(&url).send().await.expect("send").status(), 200);
    }
    let limited = client.get(&url).send().await.expect("send");
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    let (_, p) = json_of(limited).await;
    assert!(
        p["detail"].as_str().is_some_and(|d| d.contains("too many")),
        "{p}"
    );
    // Health is never limited.
    assert_eq!(
        client
            .get(format!("{gw}/healthz"))
            .send()
            .await
            .expect("send")
            .status(),
        200
    );

    // Callers: every route but the page, health and the OpenAPI document needs a key; each
    // role may call its routes only.
    let stub = Stub::default();
    let hits = stub.hits.clone();
    let gw = start(settings(
        vec![spawn_stub(stub).await],
        vec![closed()],
        vec![closed()],
    ))
    .await;
    let api = |p: &str| format!("{gw}/api/v1{p}");
    let anonymous = reqwest::Client::new();
    let res = anonymous
        .get(api("/diabetes/models"))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 401);
    let (_, p) = json_of(res).await;
    assert_eq!(p["type"], "urn:medchain:problem:unauthorized", "{p}");
    let wrong = client_as("mk_not_a_key_0000000000000000");
    assert_eq!(
        wrong
            .get(api("/diabetes/models"))
            .send()
            .await
            .expect("send")
            .status(),
        401
    );
    let x_api_key = anonymous
        .get(api("/diabetes/models"))
        .header("x-api-key", AUDITOR)
        .send()
        .await
        .expect("send");
    assert_eq!(x_api_key.status(), 200, "the key may come in x-api-key too");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "refused calls reach nothing"
    );
    let tabular = r#"{"glucose": 120}"#;
    let post = |c: &reqwest::Client, p: &str| {
        c.post(api(p))
            .header("content-type", "application/json")
            .body(tabular)
            .send()
    };
    // (chain-svc is down here: a caller the gate lets through gets its 502.)
    for (who, path, want) in [
        (CLINICIAN, "/diabetes/predict/tabular", 200),
        (AUDITOR, "/diabetes/predict/tabular", 403),
        (ADMIN, "/diabetes/predict/tabular", 403),
        (CLINICIAN, "/diabetes/warmup", 200),
        (AUDITOR, "/diabetes/warmup", 403),
        (ADMIN, "/diabetes/warmup", 200),
        (
            CLINICIAN,
            "/records/0b9c6f9e-8a35-4f8e-9d59-1f7c3a2b4c5d/verify",
            502,
        ),
        (
            AUDITOR,
            "/records/0b9c6f9e-8a35-4f8e-9d59-1f7c3a2b4c5d/verify",
            502,
        ),
        (
            ADMIN,
            "/records/0b9c6f9e-8a35-4f8e-9d59-1f7c3a2b4c5d/verify",
            403,
        ),
        (AUDITOR, "/patients/records", 502),
        (ADMIN, "/patients/records", 403),
        // The Open Inference Protocol: inferences are clinicians', unloads admins'.
        (CLINICIAN, "/diabetes/v2/models/diabetes-tabular/infer", 200),
        (AUDITOR, "/diabetes/v2/models/diabetes-tabular/infer", 403),
        (ADMIN, "/diabetes/v2/models/diabetes-tabular/infer", 403),
        (
            CLINICIAN,
            "/diabetes/v2/repository/models/diabetes-tabular/load",
            200,
        ),
        (
            CLINICIAN,
            "/diabetes/v2/repository/models/diabetes-tabular/unload",
            403,
        ),
        (
            ADMIN,
            "/diabetes/v2/repository/models/diabetes-tabular/unload",
            200,
        ),
        (AUDITOR, "/diabetes/v2/repository/index", 200),
    ] {
        let res = post(&client_as(who), path).await.expect("send");
        assert_eq!(res.status(), want, "{who} POST {path}");
        if want == 403 {
            let (_, p) = json_of(res).await;
            assert_eq!(p["type"], "urn:medchain:problem:forbidden", "{p}");
        }
    }
    for (who, path, want) in [
        (ADMIN, "/records/0b9c6f9e-8a35-4f8e-9d59-1f7c3a2b4c5d", 403),
        (ADMIN, "/diabetes/cards", 200),
    ] {
        let res = client_as(who).get(api(path)).send().await.expect("send");
        assert_eq!(res.status(), want, "{who} GET {path}");
    }
    // Who am I, and what may I call.
    let (status, me) = json_of(
        client_as(AUDITOR)
            .get(api("/whoami"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(
        (status, &me["id"], &me["role"]),
        (200, &json!("test-auditor"), &json!("auditor"))
    );
    assert!(
        me["may"]
            .as_array()
            .expect("may")
            .iter()
            .all(|m| !m.as_str().unwrap_or("").contains("/predict/")),
        "{me}"
    );
    assert_eq!(
        anonymous
            .get(api("/whoami"))
            .send()
            .await
            .expect("send")
            .status(),
        401
    );
    // The API description and the page are public.
    assert_eq!(
        anonymous
            .get(api("/openapi.json"))
            .send()
            .await
            .expect("send")
            .status(),
        200
    );
    // The page itself is public (it asks for the key).
    assert_eq!(
        client
            .get(format!("{gw}/"))
            .send()
            .await
            .expect("send")
            .status(),
        200
    );
}

/// The review: behind Render's proxy (`X-Forwarded-For` trusted) the limiter read the left-most
/// entry, so a client that sent its own first hop got 8 × 200 where it should get 429s. The
/// client is now read from the right, one entry per trusted proxy.
#[tokio::test]
async fn a_spoofed_forwarded_for_does_not_escape_the_rate_limit() {
    let mut s = settings(
        vec![spawn_stub(Stub::default()).await],
        vec![closed()],
        vec![closed()],
    );
    s.clients.rate_per_second = std::num::NonZeroU32::new(1).expect("positive");
    s.clients.rate_burst = std::num::NonZeroU32::new(3).expect("positive");
    s.clients.trusted_proxy_hops = 1;
    let gw = start(s).await;
    // Not signed in: limited by address, which is what X-Forwarded-For decides (a signed-in
    // caller is limited by its key id).
    let client = reqwest::Client::new();
    let url = format!("{gw}/api/v1/diabetes/models");
    let mut codes = Vec::new();
    for i in 0..8 {
        // The client's own claim first, then what the proxy saw.
        let xff = format!("10.9.8.{i}, 198.51.100.7");
        let res = client
            .get(&url)
            .header("x-forwarded-for", xff)
            .send()
            .await
            .expect("send");
        codes.push(res.status().as_u16());
    }
    assert_eq!(codes, [401, 401, 401, 429, 429, 429, 429, 429]);
    // Another client behind the same proxy has its own budget.
    let other = client
        .get(&url)
        .header("x-forwarded-for", "198.51.100.8")
        .send()
        .await
        .expect("send");
    assert_eq!(other.status(), 401);
}

/// The review: the gateway's `/metrics` let anyone guess the internal token online, with no
/// limit. After `MAX_FAILURES` wrong tokens in a minute an address is refused — even with the
/// right token — for the rest of the minute.
#[tokio::test]
async fn guessing_the_internal_token_is_cut_off() {
    let s = settings(vec![closed()], vec![closed()], vec![closed()]);
    let gw = start(s).await;
    let client = client();
    let metrics = |token: &'static str| {
        client
            .get(format!("{gw}/metrics"))
            .header("x-internal-token", token)
            .send()
    };
    assert_eq!(metrics(TOKEN).await.expect("send").status(), 200);
    let max = medchain_core::auth::MAX_FAILURES;
    for _ in 0..max {
        let res = metrics("gateway-test-token-guess-000").await.expect("send");
        assert_eq!(res.status(), 401);
    }
    let cut = metrics("gateway-test-token-guess-001").await.expect("send");
    assert_eq!(cut.status(), 429);
    assert!(cut.headers().contains_key("retry-after"));
    // The right token does not help while the address is shut out.
    assert_eq!(metrics(TOKEN).await.expect("send").status(), 429);
}

#[tokio::test]
async fn bodies_over_a_routes_limit_are_refused() {
    let stub = Stub::default();
    let s = settings(
        vec![spawn_stub(stub.clone()).await],
        vec![closed()],
        vec![closed()],
    );
    let gw = start(s).await;
    let client = client();
    let big = vec![b' '; 70 * 1024];
    let (status, p) = json_of(
        client
            .post(format!("{gw}/api/v1/diabetes/predict/tabular"))
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 413, "{p}");
    assert_eq!(
        stub.hits.load(Ordering::SeqCst),
        0,
        "refused before the upstream"
    );
    // Without a declared length (chunked), the limit is enforced while streaming.
    let stream =
        futures_util::stream::iter((0..70).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024])));
    let (status, p) = json_of(
        client
            .post(format!("{gw}/api/v1/diabetes/predict/tabular"))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 413, "{p}");
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_content_security_policy() {
    let s = settings(vec![closed()], vec![closed()], vec![closed()]);
    let gw = start(s).await;
    let res = reqwest::get(format!("{gw}/")).await.expect("get");
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let html = res.text().await.expect("html");
    assert!(
        !html.contains("<script>") && !html.contains(" style="),
        "no inline script or style"
    );
    assert!(html.contains("Not a medical device"));
    for asset in ["/app.js", "/style.css"] {
        assert_eq!(
            reqwest::get(format!("{gw}{asset}"))
                .await
                .expect("get")
                .status(),
            200
        );
    }
}

#[tokio::test]
async fn readiness_aggregates_the_upstreams_when_asked() {
    let up = spawn_stub(Stub::default()).await;
    let gw = start(settings(vec![up.clone()], vec![up.clone()], vec![up])).await;
    let (status, body) = get_json(format!("{gw}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    let gw = start(settings(
        vec![spawn_stub(Stub::default()).await],
        vec![closed()],
        vec![spawn_stub(Stub::default()).await],
    ))
    .await;
    let (status, body) = get_json(format!("{gw}/readyz")).await;
    assert_eq!(status, 503);
    let failing: Vec<&str> = body["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(failing, ["heart-svc"], "{body}");
    // In public it says which, not where or why (the review: it listed the upstream URLs);
    // with the internal token, everything.
    assert!(!body.to_string().contains("127.0.0.1"), "{body}");
    let res = client()
        .get(format!("{gw}/readyz"))
        .header("x-internal-token", TOKEN)
        .send()
        .await
        .expect("get");
    let (_, detailed) = json_of(res).await;
    assert!(detailed.to_string().contains("127.0.0.1"), "{detailed}");
    // Each public call wakes the upstreams: rate-limited like the API (not with the token).
    let mut s = settings(vec![closed()], vec![closed()], vec![closed()]);
    s.clients.rate_per_second = std::num::NonZeroU32::new(1).expect("positive");
    s.clients.rate_burst = std::num::NonZeroU32::new(2).expect("positive");
    let limited = start(s).await;
    let codes: Vec<u16> =
        futures_util::future::join_all((0..6).map(|_| reqwest::get(format!("{limited}/readyz"))))
            .await
            .into_iter()
            .map(|r| r.expect("get").status().as_u16())
            .collect();
    // A burst of 2 and one more a second: six at once cannot all pass.
    assert!(codes.contains(&429), "{codes:?}");
    let with_token = client()
        .get(format!("{limited}/readyz"))
        .header("x-internal-token", TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(
        with_token.status(),
        503,
        "not limited, and the upstreams are down"
    );
    // Liveness never depends on the upstreams.
    assert_eq!(
        reqwest::get(format!("{gw}/healthz"))
            .await
            .expect("get")
            .status(),
        200
    );
}

/// A stub that accepts a connection, reads a little, and hangs up without answering.
async fn spawn_hang_up() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 512];
            let _ = tokio::io::AsyncReadExt::read(&mut sock, &mut buf).await;
            drop(sock);
        }
    });
    (format!("http://127.0.0.1:{port}"), accepted)
}

#[tokio::test]
async fn a_prediction_that_reached_an_instance_is_never_sent_to_another() {
    let (bad, accepted) = spawn_hang_up().await;
    let good = Stub::default();
    let s = settings(
        vec![bad, spawn_stub(good.clone()).await],
        vec![closed()],
        vec![closed()],
    );
    let gw = start(s).await;
    let client = client();
    let mut statuses = Vec::new();
    for i in 0..2 {
        let res = client
            .post(format!("{gw}/api/v1/diabetes/predict/tabular"))
            .json(&json!({"n": i}))
            .send()
            .await
            .expect("send");
        statuses.push(res.status().as_u16());
    }
    statuses.sort();
    // Round-robin sends one to each; the one cut off after connecting is a 502, not a retry.
    assert_eq!(statuses, [200, 502]);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(
        good.hits.load(Ordering::SeqCst),
        1,
        "no second attempt elsewhere"
    );
}

#[tokio::test]
async fn an_instance_that_may_be_asleep_gets_the_wake_grace_once() {
    let slow = Stub {
        delay_ms: 700,
        ..Stub::default()
    };
    let mut s = settings(vec![spawn_stub(slow).await], vec![closed()], vec![closed()]);
    s.proxy.tabular_timeout_ms = 300;
    s.proxy.wake_grace_ms = 2000;
    let gw = start(s).await;
    let client = client();
    let url = format!("{gw}/api/v1/diabetes/predict/tabular");
    // Never heard from: it may be waking up, so the first call may take route + grace.
    let first = client
        .post(&url)
        .json(&json!({}))
        .send()
        .await
        .expect("send");
    assert_eq!(first.status(), 200);
    // It answered a moment ago: now the route's own timeout applies.
    let (status, p) = post_json(url.clone(), json!({})).await;
    assert_eq!(status, 504, "{p}");
}

/// A GET carries no body upstream, so it carries no body framing either: a `Content-Length`
/// passed on without its body left the upstream waiting for bytes that never came.
#[tokio::test]
async fn bodiless_requests_go_upstream_without_body_framing() {
    let d = Stub::default();
    let mut s = settings(
        vec![spawn_stub(d.clone()).await],
        vec![closed()],
        vec![closed()],
    );
    s.proxy.read_timeout_ms = 5_000;
    let base = start(s).await;
    // An admin: the upstream's answer comes back as it is (no public view of model state).
    let client = client_as(ADMIN);
    let url = format!("{base}/api/v1/diabetes/models");
    let requests = [
        (
            "an empty declared body",
            client.get(&url).header("content-length", "0"),
        ),
        ("a body on a GET", client.get(&url).body("abcd")),
    ];
    for (what, rb) in requests {
        let (status, echoed) = json_of(rb.send().await.expect("get")).await;
        assert_eq!(status, 200, "{what}: {echoed}");
        assert_eq!(echoed["method"], "GET");
        assert_eq!(echoed["content_length"], Value::Null, "{what}: {echoed}");
        assert_eq!(echoed["transfer_encoding"], Value::Null, "{what}: {echoed}");
        assert_eq!(echoed["bytes"], 0);
    }
}

/// A test identity provider: an RSA and a P-256 key, its JWKS served on loopback (changeable,
/// fetches counted), and tokens it signs.
mod idp {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use actix_web::{HttpResponse, web};
    use base64::Engine;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use medchain_tests::stub::StubServer;
    use serde_json::{Value, json};

    pub const ISSUER: &str = "https://idp.example.org";
    pub const AUDIENCE: &str = "medchain-gateway";

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    /// A signing key and its public JWK.
    pub struct Key {
        pub kid: String,
        pub alg: Algorithm,
        pub encoding: EncodingKey,
        pub jwk: Value,
        /// The raw public key bytes (for the HS256-with-the-public-key attack).
        pub public: Vec<u8>,
    }

    pub fn rsa(kid: &str) -> Key {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("rsa key");
        let der = private.to_pkcs1_der().expect("pkcs1");
        let (n, e) = (private.n().to_bytes_be(), private.e().to_bytes_be());
        Key {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(&n), "e": b64(&e)}),
            public: n,
        }
    }

    pub fn ec(kid: &str) -> Key {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("ec key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("ec pair");
        let point = pair.public_key().as_ref().to_vec(); // 0x04 ‖ x ‖ y
        Key {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({"kty": "EC", "kid": kid, "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..])}),
            public: point,
        }
    }

    pub fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }

    /// Standard claims for `sub` with `roles`, changed by `tweak`.
    pub fn claims(sub: &str, roles: Value, tweak: impl FnOnce(&mut Value)) -> Value {
        let mut c = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "roles": roles,
            "iat": now(), "nbf": now() - 5, "exp": now() + 600,
        });
        tweak(&mut c);
        c
    }

    pub fn sign(key: &Key, claims: &Value) -> String {
        let mut h = Header::new(key.alg);
        h.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&h, claims, &key.encoding).expect("sign")
    }

    /// The JWKS endpoint: its document and how often it was fetched.
    #[derive(Clone)]
    pub struct Jwks {
        pub doc: Arc<Mutex<Value>>,
        pub fetches: Arc<AtomicUsize>,
        pub down: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Jwks {
        pub fn set(&self, keys: &[&Key]) {
            *self.doc.lock().expect("lock") =
                json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
        }
        pub fn fetched(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }
    }

    pub async fn serve(keys: &[&Key]) -> (String, Jwks) {
        let jwks = Jwks {
            doc: Arc::default(),
            fetches: Arc::default(),
            down: Arc::default(),
        };
        jwks.set(keys);
        let state = web::Data::new(jwks.clone());
        let base = StubServer::new()
            .serve(move |cfg| {
                cfg.app_data(state.clone()).route(
                    "/jwks.json",
                    web::get().to(|j: web::Data<Jwks>| async move {
                        j.fetches.fetch_add(1, Ordering::SeqCst);
                        if j.down.load(Ordering::SeqCst) {
                            return HttpResponse::ServiceUnavailable().finish();
                        }
                        let doc = j.doc.lock().expect("lock").clone();
                        HttpResponse::Ok().json(doc)
                    }),
                );
            })
            .expect("JWKS stub");
        (format!("{base}/jwks.json"), jwks)
    }
}

/// Bearer tokens from the operator's identity provider, against a JWKS served on loopback:
/// RS256 and ES256 accepted with their role; expired (beyond the leeway), wrong audience or
/// issuer, unknown key id, `alg: none` and HS256 signed with the public key refused; a rotated
/// key set fetched again; no mapped role is a 403; the provider down with no cached key a 503.
#[tokio::test]
async fn bearer_tokens_from_the_identity_provider() {
    use serde_json::json;
    let (rsa1, ec1) = (idp::rsa("rsa-1"), idp::ec("ec-1"));
    let (jwks_url, jwks) = idp::serve(&[&rsa1, &ec1]).await;
    let mut s = settings(
        vec![spawn_stub(Stub::default()).await],
        vec![closed()],
        vec![closed()],
    );
    s.clients.oidc.issuer = idp::ISSUER.into();
    s.clients.oidc.audience = idp::AUDIENCE.into();
    s.clients.oidc.jwks_url = jwks_url;
    s.clients.oidc.role_map = vec![
        "medchain-clinician=clinician".into(),
        "medchain-auditor=auditor".into(),
    ];
    s.clients.oidc.jwks_min_refetch_secs = 0;
    let gw = start(s).await;
    let whoami = |token: String| {
        let url = format!("{gw}/api/v1/whoami");
        async move { json_of(client_as(&token).get(url).send().await.expect("send")).await }
    };
    let detail = |p: &Value| p["detail"].as_str().unwrap_or_default().to_string();

    let rs = idp::sign(
        &rsa1,
        &idp::claims("alice", json!("medchain-clinician"), |_| {}),
    );
    let (status, me) = whoami(rs.clone()).await;
    assert_eq!(
        (status, &me["id"], &me["role"]),
        (200, &json!("oidc:alice"), &json!("clinician")),
        "{me}"
    );
    let es = idp::sign(
        &ec1,
        &idp::claims("bob", json!(["staff", "medchain-auditor"]), |_| {}),
    );
    let (status, me) = whoami(es.clone()).await;
    assert_eq!((status, &me["role"]), (200, &json!("auditor")), "{me}");
    // The role decides the routes, as with keys.
    let predict = client_as(&es)
        .post(format!("{gw}/api/v1/diabetes/predict/tabular"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(predict.status(), 403);

    // Clock skew within the leeway passes; beyond it, expired.
    let skewed = idp::sign(
        &rsa1,
        &idp::claims("alice", json!("medchain-clinician"), |c| {
            c["exp"] = json!(idp::now() - 30);
        }),
    );
    assert_eq!(whoami(skewed).await.0, 200);
    for (what, tweak, expect) in [
        (
            "expired",
            Box::new(|c: &mut Value| c["exp"] = json!(idp::now() - 3600))
                as Box<dyn Fn(&mut Value)>,
            "expired",
        ),
        (
            "another audience",
            Box::new(|c: &mut Value| c["aud"] = json!("someone-else")),
            "is not for",
        ),
        (
            "another issuer",
            Box::new(|c: &mut Value| c["iss"] = json!("https://evil.example")),
            "not issued by",
        ),
        (
            "not yet valid",
            Box::new(|c: &mut Value| c["nbf"] = json!(idp::now() + 3600)),
            "not valid yet",
        ),
    ] {
        let t = idp::sign(
            &rsa1,
            &idp::claims("alice", json!("medchain-clinician"), |c| tweak(c)),
        );
        let (status, p) = whoami(t).await;
        assert_eq!(status, 401, "{what}: {p}");
        assert!(detail(&p).contains(expect), "{what}: {p}");
    }

    // A key the provider does not publish.
    let stranger = idp::rsa("rsa-9");
    let (status, p) = whoami(idp::sign(
        &stranger,
        &idp::claims("eve", json!("medchain-clinician"), |_| {}),
    ))
    .await;
    assert_eq!(status, 401, "{p}");
    assert!(detail(&p).contains("not one of the provider's"), "{p}");

    // `alg: none`, and HS256 "signed" with the RSA public key: refused by algorithm.
    let body = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        idp::claims("eve", json!("medchain-clinician"), |_| {}).to_string(),
    );
    let none_header = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        r#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#,
    );
    let (status, p) = whoami(format!("{none_header}.{body}.")).await;
    assert_eq!(status, 401, "{p}");
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = Some("rsa-1".into());
    let forged = jsonwebtoken::encode(
        &hs,
        &idp::claims("eve", json!("medchain-clinician"), |_| {}),
        &jsonwebtoken::EncodingKey::from_secret(&rsa1.public),
    )
    .expect("sign");
    let (status, p) = whoami(forged).await;
    assert_eq!(status, 401, "{p}");
    assert!(detail(&p).contains("HS256"), "{p}");

    // Rotation: the provider publishes a new key (and drops the old one); the first token
    // naming it makes the gateway fetch the key set again.
    let rsa2 = idp::rsa("rsa-2");
    jwks.set(&[&rsa2, &ec1]);
    let before = jwks.fetched();
    let rotated = idp::sign(
        &rsa2,
        &idp::claims("carol", json!("medchain-clinician"), |_| {}),
    );
    assert_eq!(whoami(rotated.clone()).await.0, 200);
    assert_eq!(jwks.fetched(), before + 1, "fetched once for the new key");
    assert_eq!(whoami(rotated).await.0, 200);
    assert_eq!(jwks.fetched(), before + 1, "then served from the cache");

    // Signed in, but no role in medchain.
    let visitor = idp::sign(&rsa2, &idp::claims("dave", json!(["staff"]), |_| {}));
    let (status, p) = whoami(visitor).await;
    assert_eq!(status, 403, "{p}");

    // The provider down: cached keys still work; an unknown key cannot be checked (503).
    jwks.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let cached = idp::sign(&ec1, &idp::claims("bob", json!("medchain-auditor"), |_| {}));
    assert_eq!(whoami(cached).await.0, 200);
    let rsa3 = idp::rsa("rsa-3");
    let (status, p) = whoami(idp::sign(
        &rsa3,
        &idp::claims("carol", json!("medchain-clinician"), |_| {}),
    ))
    .await;
    assert_eq!(status, 503, "{p}");
}

/// An upstream that answers 200 with `Content-Length: 400` and a JSON body cut off after a
/// few bytes, then hangs up.
async fn spawn_cut_off() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut sock, &mut buf).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n{\"result\":";
            let _ = tokio::io::AsyncWriteExt::write_all(&mut sock, head.as_bytes()).await;
            drop(sock);
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// A prediction's answer is small: the gateway reads it whole and answers with its length,
/// and one cut off before its end is a 502 problem naming the upstream — never a 200 whose
/// body breaks off.
#[tokio::test]
async fn a_small_answer_is_sent_whole_and_one_cut_off_is_a_problem() {
    let s = settings(
        vec![spawn_cut_off().await],
        vec![spawn_stub(Stub::default()).await],
        vec![closed()],
    );
    let gw = start(s).await;
    let client = client();
    let whole = client
        .post(format!("{gw}/api/v1/heart/predict/tabular"))
        .json(&json!({"n": 1}))
        .send()
        .await
        .expect("send");
    assert_eq!(whole.status(), 200);
    let length = whole.content_length().expect("a length, not chunks");
    assert_eq!(length as usize, whole.bytes().await.expect("body").len());
    let (status, p) = post_json(
        format!("{gw}/api/v1/diabetes/predict/tabular"),
        json!({"n": 1}),
    )
    .await;
    assert_eq!(
        (status, &p["upstream"]),
        (502, &json!("diabetes-svc")),
        "{p}"
    );
    assert!(
        p["detail"].as_str().is_some_and(|d| d.contains("cut off")),
        "{p}"
    );
}

/// A small body is read whole before it goes upstream, within the route's timeout: a client
/// that sends part of it and stops gets a 408 problem then, and holds nothing for longer.
#[tokio::test]
async fn a_small_body_that_stops_arriving_is_a_408_within_the_timeout() {
    let mut s = settings(
        vec![spawn_stub(Stub::default()).await],
        vec![closed()],
        vec![closed()],
    );
    s.proxy.tabular_timeout_ms = 300;
    let gw = start(s).await;
    let addr = gw.trim_start_matches("http://").to_string();
    let mut sock = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /api/v1/diabetes/predict/tabular HTTP/1.1\r\nhost: {addr}\r\n\
         authorization: Bearer {CLINICIAN}\r\ncontent-type: application/json\r\n\
         content-length: 100\r\n\r\n{{\"glucose\":"
    );
    tokio::io::AsyncWriteExt::write_all(&mut sock, head.as_bytes())
        .await
        .expect("write");
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut sock, &mut answer),
    )
    .await;
    let text = String::from_utf8_lossy(&answer);
    assert!(read.is_ok(), "answered, not left hanging: {text}");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("did not arrive within 300 ms"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
