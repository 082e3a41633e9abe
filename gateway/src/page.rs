//! The web page (plain HTML, CSS and JS embedded in the binary; no build step) and the OpenAPI
//! document, served with a strict Content-Security-Policy: no inline script or style, nothing
//! from another origin.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

const INDEX: &str = include_str!("../static/index.html");
const APP_JS: &str = include_str!("../static/app.js");
const STYLE: &str = include_str!("../static/style.css");
const OPENAPI: &str = include_str!("../static/openapi.json");

/// The page's Content-Security-Policy.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' blob: data:; connect-src 'self'; form-action 'none'; \
     base-uri 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX)
}

async fn app_js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}

/// `GET /api/v1/openapi.json`
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(OPENAPI)
}

/// Mounts the page's files.
pub fn register(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/index.html", web::get().to(index))
        .route("/app.js", web::get().to(app_js))
        .route("/style.css", web::get().to(style))
        .route(
            "/favicon.ico",
            web::get().to(|| async { HttpResponse::NoContent().finish() }),
        );
}
