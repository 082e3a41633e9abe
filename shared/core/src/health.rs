//! Health, readiness and metrics handlers every service mounts outside its guarded scope
//! (except `/metrics`, which sits behind the internal token).

use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, web};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

/// Static facts about the running service.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceInfo {
    pub service: &'static str,
    pub version: &'static str,
}

/// `GET /healthz`: the process is alive. Never touches a model, a chain or an upstream.
pub async fn healthz(info: web::Data<ServiceInfo>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "status": "ok",
        "service": info.service,
        "version": info.version,
    }))
}

/// One readiness check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// `GET /readyz` body: 200 when every check passes, else 503 with the failing ones.
pub fn readiness(service: &str, checks: Vec<Check>) -> HttpResponse {
    let ready = checks.iter().all(|c| c.ok);
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "service": service,
        "checks": checks,
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// App data: refreshes a service's own gauges (queue depths, model states) at every scrape.
pub struct ScrapeHook(pub Box<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for ScrapeHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScrapeHook")
    }
}

/// `GET /metrics`: Prometheus text exposition, with current memory figures.
pub async fn metrics(
    handle: web::Data<PrometheusHandle>,
    hook: Option<web::Data<ScrapeHook>>,
) -> HttpResponse {
    crate::memory::record_gauges();
    if let Some(hook) = hook {
        (hook.0)();
    }
    HttpResponse::Ok()
        .content_type(ContentType(
            "text/plain; version=0.0.4; charset=utf-8"
                .parse()
                .unwrap_or(mime_text()),
        ))
        .body(handle.render())
}

fn mime_text() -> actix_web::mime::Mime {
    actix_web::mime::TEXT_PLAIN_UTF_8
}

/// Mounts `/healthz` (open) and `/metrics` (the monitor's credential) on a service. The app
/// must register `ServiceInfo`, `PrometheusHandle` and `ServiceAuth` as app data.
pub fn base_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz)).service(
        web::resource("/metrics")
            .wrap(actix_web::middleware::from_fn(crate::auth::only(&[
                crate::auth::Peer::Monitor,
            ])))
            .route(web::get().to(metrics)),
    );
}
