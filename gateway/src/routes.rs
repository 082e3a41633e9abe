//! The public API: one table of routes, each mapped to an upstream path, with the body limit
//! and timeout of its kind. `openapi.json` documents exactly these (a test checks it).

use std::time::Duration;

use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use medchain_core::error::ApiError;

use crate::Gateway;
use crate::callers::{Caller, Role};
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
    /// Who may call it.
    pub roles: &'static [Role],
}

const fn r(
    method: &'static str,
    path: &'static str,
    upstream: UpstreamKey,
    target: &'static str,
    kind: Kind,
    roles: &'static [Role],
) -> Route {
    Route {
        method,
        path,
        upstream,
        target,
        kind,
        roles,
    }
}

/// Predictions: clinicians.
const PREDICT: &[Role] = &[Role::Clinician];
/// Records: whoever reads them — clinicians (their work) and auditors.
const RECORDS: &[Role] = &[Role::Clinician, Role::Auditor];
/// Warming the models up: admins, and clinicians (the page warms a service when its tab opens,
/// so that the first prediction does not wait for a cold instance).
const OPERATE: &[Role] = &[Role::Clinician, Role::Admin];
/// Unloading models, managing the contract's recorders: admins.
const ADMIN: &[Role] = &[Role::Admin];
/// What the page needs to draw itself: every caller.
const EVERYONE: &[Role] = &[Role::Clinician, Role::Auditor, Role::Admin];

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
        PREDICT,
    ),
    r(
        "POST",
        "/diabetes/predict/retina",
        Diabetes,
        "/v1/predict/retina",
        Image,
        PREDICT,
    ),
    r(
        "POST",
        "/diabetes/warmup",
        Diabetes,
        "/v1/warmup",
        Read,
        OPERATE,
    ),
    r(
        "POST",
        "/diabetes/unload",
        Diabetes,
        "/v1/unload",
        Read,
        ADMIN,
    ),
    r(
        "GET",
        "/diabetes/models",
        Diabetes,
        "/models",
        Read,
        EVERYONE,
    ),
    r(
        "GET",
        "/diabetes/cards",
        Diabetes,
        "/v1/cards",
        Read,
        EVERYONE,
    ),
    r(
        "POST",
        "/heart/predict/tabular",
        Heart,
        "/v1/predict/tabular",
        Tabular,
        PREDICT,
    ),
    r(
        "POST",
        "/heart/predict/ecg",
        Heart,
        "/v1/predict/ecg",
        Image,
        PREDICT,
    ),
    r("POST", "/heart/warmup", Heart, "/v1/warmup", Read, OPERATE),
    r("POST", "/heart/unload", Heart, "/v1/unload", Read, ADMIN),
    r("GET", "/heart/models", Heart, "/models", Read, EVERYONE),
    r("GET", "/heart/cards", Heart, "/v1/cards", Read, EVERYONE),
    r(
        "GET",
        "/records/{prediction_id}",
        Chain,
        "/v1/records/{prediction_id}",
        Read,
        RECORDS,
    ),
    r(
        "POST",
        "/records/{prediction_id}/verify",
        Chain,
        "/v1/records/{prediction_id}/verify",
        Verify,
        RECORDS,
    ),
    r(
        "GET",
        "/recorders/{address}",
        Chain,
        "/v1/recorders/{address}",
        Read,
        ADMIN,
    ),
    r(
        "POST",
        "/recorders/{address}",
        Chain,
        "/v1/recorders/{address}",
        Read,
        ADMIN,
    ),
    // The patient id in the body: URLs are logged by proxies and platforms.
    r(
        "POST",
        "/patients/records",
        Chain,
        "/v1/patients/records",
        Read,
        RECORDS,
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

    /// The upstream path for this request: each `{param}` is the client's path segment byte
    /// for byte, still percent-encoded as sent, so the upstream decodes it exactly once.
    /// (Decoded here and encoded again, `%2F` and `%25` came out as `%252F` and `%2525`: the
    /// listing for `A/B` reached the reference of a patient called `A%2FB`.)
    fn target_for(&self, req: &HttpRequest) -> String {
        target_from_raw(self.path, self.target, req.uri().path())
    }
}

/// `target` with each `{name}` replaced by the segment of `raw` (the request's path, as sent)
/// at the place `{name}` has in `/api/v1` + `path`.
fn target_from_raw(path: &str, target: &str, raw: &str) -> String {
    let pattern: Vec<&str> = "/api/v1"
        .split('/')
        .chain(path.split('/').skip(1))
        .collect();
    let sent: Vec<&str> = raw.split('/').collect();
    let mut out = target.to_string();
    for (i, seg) in pattern.iter().enumerate() {
        if seg.starts_with('{')
            && let Some(value) = sent.get(i)
        {
            out = out.replace(seg, value);
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
    // Authenticated by the edge (`cors_and_limits`); here: may this caller do this?
    let caller = req.extensions().get::<Caller>().cloned();
    let Some(caller) = caller else {
        return Err(ApiError::Unauthorized("sign in first".into()));
    };
    if !route.roles.contains(&caller.role) {
        metrics::counter!(medchain_core::metrics::name("forbidden_total"), "role" => caller.role.as_str())
            .increment(1);
        let who: Vec<&str> = route.roles.iter().map(|r| r.as_str()).collect();
        return Err(ApiError::Forbidden(format!(
            "{} {} is for the {} role{}; `{}` is signed in as {}",
            route.method,
            route.path,
            who.join(" or "),
            if who.len() > 1 { "s" } else { "" },
            caller.id,
            caller.role
        )));
    }
    let target = route.target_for(&req);
    let res = proxy::forward(
        &g.proxy,
        g.upstream(route.upstream),
        route.policy(&g),
        &req,
        payload,
        &target,
    )
    .await?;
    // Model state tells an admin everything (files, download hosts, failure reasons, memory);
    // everyone else learns what is loaded, not where it lives or why it failed.
    if route.target == "/models" && caller.role != Role::Admin && res.status().is_success() {
        let status = res.status();
        // Model state is a few KB; an upstream answering more is not read further.
        let body = actix_web::body::to_bytes_limited(res.into_body(), 1 << 20)
            .await
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("/models is over 1 MiB")))?
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("reading /models: {e}")))?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("/models is not JSON: {e}")))?;
        return Ok(HttpResponse::build(status).json(public_models(&v)));
    }
    Ok(res)
}

/// What a disease service's `/models` says to a caller who is not an admin.
fn public_models(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::{Value, json};
    const KEPT: [&str; 8] = [
        "key",
        "state",
        "model_id",
        "version",
        "sha256",
        "demo",
        "waiting",
        "max_waiting",
    ];
    let models: Vec<Value> = v["models"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let mut out = serde_json::Map::new();
            for k in KEPT {
                if let Some(x) = m.get(k) {
                    out.insert(k.into(), x.clone());
                }
            }
            if m.get("reason").is_some() {
                out.insert(
                    "reason".into(),
                    json!("the model could not be loaded; an admin sees why"),
                );
            }
            Value::Object(out)
        })
        .collect();
    json!({"service": v["service"], "disease": v["disease"], "models": models})
}

/// Mounts every route of the table (inside `/api/v1`), and the OpenAPI document.
pub fn register(cfg: &mut web::ServiceConfig) {
    cfg.route("/openapi.json", web::get().to(crate::page::openapi));
    cfg.route("/whoami", web::get().to(whoami));
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

/// `GET /whoami`: the signed-in caller (id and role) and what the role may call.
async fn whoami(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let caller = req.extensions().get::<Caller>().cloned();
    let caller = caller.ok_or_else(|| ApiError::Unauthorized("sign in first".into()))?;
    let may: Vec<String> = ROUTES
        .iter()
        .filter(|r| r.roles.contains(&caller.role))
        .map(|r| format!("{} /api/v1{}", r.method, r.path))
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "id": caller.id,
        "role": caller.role,
        "may": may,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_state_in_public_says_what_not_where_or_why() {
        let full = serde_json::json!({
            "service": "diabetes-svc", "disease": "diabetes", "onnxruntime_loaded": true,
            "memory": {"rss_bytes": 1}, "image_memory": {},
            "models": [{"key": "retina", "state": "failed", "reason": "download from https://models.internal/x failed",
                        "file": "/srv/models/retina.onnx", "source": "https://models.internal/x",
                        "model_id": "m", "version": "1", "sha256": "ab", "demo": true,
                        "load_ms": 5.0, "rss_added_bytes": 9, "waiting": 0, "max_waiting": 8}],
        });
        let public = public_models(&full);
        let text = public.to_string();
        for hidden in [
            "/srv/models",
            "models.internal",
            "rss_bytes",
            "onnxruntime_loaded",
            "load_ms",
        ] {
            assert!(!text.contains(hidden), "{hidden} in {text}");
        }
        assert_eq!(public["models"][0]["state"], "failed");
        assert_eq!(public["models"][0]["model_id"], "m");
        assert!(public["models"][0]["reason"].is_string());
    }

    #[test]
    fn parameters_are_forwarded_as_sent() {
        let t = |raw| target_from_raw("/records/{id}/verify", "/v1/records/{id}/verify", raw);
        assert_eq!(t("/api/v1/records/abc/verify"), "/v1/records/abc/verify");
        assert_eq!(
            t("/api/v1/records/A%2FB/verify"),
            "/v1/records/A%2FB/verify"
        );
        assert_eq!(
            t("/api/v1/records/50%25/verify"),
            "/v1/records/50%25/verify"
        );
        assert_eq!(
            t("/api/v1/records/%C3%A9/verify"),
            "/v1/records/%C3%A9/verify"
        );
    }
}
