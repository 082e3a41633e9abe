//! The public API as one table of routes, each mapped to an upstream path, with the body limit
//! and timeout of its kind and the roles that may call it. `openapi.json` documents exactly
//! these (a test checks it).

use std::time::Duration;

use actix_web::HttpRequest;

use crate::Gateway;
use crate::callers::Role;
use crate::proxy::RoutePolicy;

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
    /// An Open Inference Protocol inference: JSON or binary tensors, a batch of them.
    Inference,
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

use Kind::{Image, Inference, Read, Tabular, Verify};
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
    // The Open Inference Protocol (KServe V2) of each disease service: a standard client's
    // base URL is `<gateway>/api/v1/<disease>`.
    r("GET", "/diabetes/v2", Diabetes, "/v2", Read, EVERYONE),
    r(
        "GET",
        "/diabetes/v2/health/live",
        Diabetes,
        "/v2/health/live",
        Read,
        EVERYONE,
    ),
    r(
        "GET",
        "/diabetes/v2/health/ready",
        Diabetes,
        "/v2/health/ready",
        Read,
        EVERYONE,
    ),
    r(
        "GET",
        "/diabetes/v2/models/{name}",
        Diabetes,
        "/v2/models/{name}",
        Read,
        EVERYONE,
    ),
    r(
        "GET",
        "/diabetes/v2/models/{name}/versions/{version}",
        Diabetes,
        "/v2/models/{name}/versions/{version}",
        Read,
        EVERYONE,
    ),
    r(
        "GET",
        "/diabetes/v2/models/{name}/ready",
        Diabetes,
        "/v2/models/{name}/ready",
        Read,
        EVERYONE,
    ),
    r(
        "GET",
        "/diabetes/v2/models/{name}/versions/{version}/ready",
        Diabetes,
        "/v2/models/{name}/versions/{version}/ready",
        Read,
        EVERYONE,
    ),
    r(
        "POST",
        "/diabetes/v2/models/{name}/infer",
        Diabetes,
        "/v2/models/{name}/infer",
        Inference,
        PREDICT,
    ),
    r(
        "POST",
        "/diabetes/v2/models/{name}/versions/{version}/infer",
        Diabetes,
        "/v2/models/{name}/versions/{version}/infer",
        Inference,
        PREDICT,
    ),
    r(
        "POST",
        "/diabetes/v2/repository/index",
        Diabetes,
        "/v2/repository/index",
        Read,
        EVERYONE,
    ),
    r(
        "POST",
        "/diabetes/v2/repository/models/{name}/load",
        Diabetes,
        "/v2/repository/models/{name}/load",
        Read,
        OPERATE,
    ),
    r(
        "POST",
        "/diabetes/v2/repository/models/{name}/unload",
        Diabetes,
        "/v2/repository/models/{name}/unload",
        Read,
        ADMIN,
    ),
    r("GET", "/heart/v2", Heart, "/v2", Read, EVERYONE),
    r(
        "GET",
        "/heart/v2/health/live",
        Heart,
        "/v2/health/live",
        Read,
        EVERYONE,
    ),
    r(
        "GET",
        "/heart/v2/health/ready",
        Heart,
        "/v2/health/ready",
        Read,
        EVERYONE,
    ),
    r(
        "GET",
        "/heart/v2/models/{name}",
        Heart,
        "/v2/models/{name}",
        Read,
        EVERYONE,
    ),
    r(
        "GET",
        "/heart/v2/models/{name}/versions/{version}",
        Heart,
        "/v2/models/{name}/versions/{version}",
        Read,
        EVERYONE,
    ),
    r(
        "GET",
        "/heart/v2/models/{name}/ready",
        Heart,
        "/v2/models/{name}/ready",
        Read,
        EVERYONE,
    ),
    r(
        "GET",
        "/heart/v2/models/{name}/versions/{version}/ready",
        Heart,
        "/v2/models/{name}/versions/{version}/ready",
        Read,
        EVERYONE,
    ),
    r(
        "POST",
        "/heart/v2/models/{name}/infer",
        Heart,
        "/v2/models/{name}/infer",
        Inference,
        PREDICT,
    ),
    r(
        "POST",
        "/heart/v2/models/{name}/versions/{version}/infer",
        Heart,
        "/v2/models/{name}/versions/{version}/infer",
        Inference,
        PREDICT,
    ),
    r(
        "POST",
        "/heart/v2/repository/index",
        Heart,
        "/v2/repository/index",
        Read,
        EVERYONE,
    ),
    r(
        "POST",
        "/heart/v2/repository/models/{name}/load",
        Heart,
        "/v2/repository/models/{name}/load",
        Read,
        OPERATE,
    ),
    r(
        "POST",
        "/heart/v2/repository/models/{name}/unload",
        Heart,
        "/v2/repository/models/{name}/unload",
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
    pub(super) fn policy(&self, g: &Gateway) -> RoutePolicy {
        let t = &g.timeouts;
        let (timeout, max_body) = match self.kind {
            Tabular => (t.tabular_timeout_ms, g.limits.tabular_max_bytes),
            Image => (t.image_timeout_ms, g.limits.image_max_bytes),
            Verify => (t.image_timeout_ms, g.limits.verify_max_bytes),
            Inference => (t.image_timeout_ms, g.limits.inference_max_bytes),
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
    pub(super) fn target_for(&self, req: &HttpRequest) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
