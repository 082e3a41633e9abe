//! The public API: one table of routes, each mapped to an upstream path, with the body limit
//! and timeout of its kind. `openapi.json` documents exactly these (a test checks it).

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use medchain_shared::error::ApiError;

use crate::Gateway;
use crate::proxy::{self, RoutePolicy};

/// Which upstream serves a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKey {
    Diabetes,
    Heart,
    Chain,
}

/// What kind of call a route is: sets its body limit and timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// JSON features: small body, short timeout.
    Tabular,
    /// An image upload: large body, longer timeout.
    Image,
    /// A read (GET) or a small control call.
    Read,
    /// Verify a record: JSON or the original image.
    Verify,
}

/// One public route.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    /// Under `/api/v1`, with `{param}` segments.
    pub path: &'static str,
    pub upstream: UpstreamKey,
    /// The upstream's path, with the same `{param}` segments.
    pub target: &'static str,
    pub kind: Kind,
}

const fn r(
    method: &'static str,
    path: &'static str,
    upstream: UpstreamKey,
    target: &'static str,
    kind: Kind,
) -> Route {
    Route {
        method,
        path,
        upstream,
        target,
        kind,
    }
}

use Kind::{Image, Read, Tabular, Verify};
use UpstreamKey::{Chain, Diabetes, Heart};

/// Every public route.
pub const ROUTES: &[Route] = &[
    r(
        "POST",
        "/diabetes/predict/tabular",
        Diabetes,
        "/v1/predict/tabular",
        Tabular,
    ),
    r(
        "POST",
        "/diabetes/predict/retina",
        Diabetes,
        "/v1/predict/retina",
        Image,
    ),
    r("POST", "/diabetes/warmup", Diabetes, "/v1/warmup", Read),
    r("GET", "/diabetes/models", Diabetes, "/models", Read),
    r("GET", "/diabetes/cards", Diabetes, "/v1/cards", Read),
    r(
        "POST",
        "/heart/predict/tabular",
        Heart,
        "/v1/predict/tabular",
        Tabular,
    ),
    r(
        "POST",
        "/heart/predict/ecg",
        Heart,
        "/v1/predict/ecg",
        Image,
    ),
    r("POST", "/heart/warmup", Heart, "/v1/warmup", Read),
    r("GET", "/heart/models", Heart, "/models", Read),
    r("GET", "/heart/cards", Heart, "/v1/cards", Read),
    r(
        "GET",
        "/records/{prediction_id}",
        Chain,
        "/v1/records/{prediction_id}",
        Read,
    ),
    r(
        "POST",
        "/records/{prediction_id}/verify",
        Chain,
        "/v1/records/{prediction_id}/verify",
        Verify,
    ),
    r(
        "GET",
        "/patients/{patient_id}/records",
        Chain,
        "/v1/patients/{patient_id}/records",
        Read,
    ),
];

impl Route {
    fn policy(&self, g: &Gateway) -> RoutePolicy {
        let t = &g.timeouts;
        let (timeout, max_body) = match self.kind {
            Tabular => (t.tabular_timeout_ms, g.limits.tabular_max_bytes),
            Image => (t.image_timeout_ms, g.limits.image_max_bytes),
            Verify => (t.image_timeout_ms, g.limits.verify_max_bytes),
            Read => (t.read_timeout_ms, g.limits.tabular_max_bytes),
        };
        RoutePolicy {
            timeout: Duration::from_millis(timeout),
            max_body,
        }
    }

    /// The upstream path for this request, parameters percent-encoded again.
    fn target_for(&self, req: &HttpRequest) -> String {
        let mut out = self.target.to_string();
        for (name, value) in req.match_info().iter() {
            out = out.replace(&format!("{{{name}}}"), &encode_segment(value));
        }
        out
    }
}

/// Percent-encodes a path segment (everything but RFC 3986 unreserved characters).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn handle(
    route: &'static Route,
    req: HttpRequest,
    payload: web::Payload,
    g: web::Data<Gateway>,
) -> Result<HttpResponse, ApiError> {
    let target = route.target_for(&req);
    proxy::forward(
        &g.proxy,
        g.upstream(route.upstream),
        route.policy(&g),
        &req,
        payload,
        &target,
    )
    .await
}

/// Mounts every route of the table (inside `/api/v1`), and the OpenAPI document.
pub fn register(cfg: &mut web::ServiceConfig) {
    cfg.route("/openapi.json", web::get().to(crate::page::openapi));
    for route in ROUTES {
        let method = match route.method {
            "GET" => web::get(),
            _ => web::post(),
        };
        cfg.route(
            route.path,
            method.to(
                move |req: HttpRequest, payload: web::Payload, g: web::Data<Gateway>| {
                    handle(route, req, payload, g)
                },
            ),
        );
    }
    cfg.default_service(web::to(|req: HttpRequest| async move {
        Err::<HttpResponse, _>(ApiError::NotFound(format!(
            "no public route {} {}; see /api/v1/openapi.json",
            req.method(),
            req.path()
        )))
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("MRN-0042"), "MRN-0042");
        assert_eq!(encode_segment("a b/c?"), "a%20b%2Fc%3F");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }
}
