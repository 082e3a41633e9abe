//! The public API's edge: CORS for allowlisted frontend origins, cross-site refusal, the
//! caller's API key (`crate::callers`), and per-caller rate limiting (governor's keyed GCRA
//! limiter; a caller is its key id, an unauthenticated request its address). Errors use the
//! one problem shape.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::callers::{Caller, Callers};
use crate::configuration::ClientSettings;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, ResponseError, web};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use medchain_core::error::ApiError;

/// Who a client is, for rate limiting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ClientKey {
    Key(String),
    Addr(IpAddr),
    Unknown,
}

/// CORS allowlist, callers and the limiter.
#[derive(Debug)]
pub struct ClientGate {
    origins: Vec<String>,
    callers: Callers,
    oidc: Option<crate::oidc::Oidc>,
    trusted_proxy_hops: usize,
    limiter: Arc<DefaultKeyedRateLimiter<ClientKey>>,
}

impl ClientGate {
    pub fn new(s: &ClientSettings) -> Self {
        let (per_second, burst) = (s.rate_per_second, s.rate_burst);
        Self {
            origins: s.cors_origins.clone(),
            // Validated with the settings.
            callers: Callers::from_entries(&s.keys).unwrap_or_default(),
            oidc: s
                .oidc
                .enabled()
                .then(|| crate::oidc::Oidc::new(&s.oidc).ok())
                .flatten(),
            trusted_proxy_hops: s.trusted_proxy_hops,
            limiter: Arc::new(RateLimiter::keyed(
                Quota::per_second(per_second).allow_burst(burst),
            )),
        }
    }

    /// Forgets clients that have been quiet long enough to be back at a full burst, once a
    /// minute, so the limiter's memory follows the active clients only.
    pub fn spawn_cleanup(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let limiter = Arc::downgrade(&self.limiter);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(l) = limiter.upgrade() else { return };
                l.retain_recent();
                l.shrink_to_fit();
            }
        });
    }

    fn allowed_origin(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// Takes one request of `req`'s client address from its budget, or the 429 to answer.
    pub fn limit(&self, req: &actix_web::HttpRequest) -> Result<(), ApiError> {
        let client = self
            .client_addr(req)
            .map_or(ClientKey::Unknown, ClientKey::Addr);
        self.check(&client)
    }

    fn check(&self, client: &ClientKey) -> Result<(), ApiError> {
        self.limiter.check_key(client).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            metrics::counter!(medchain_core::metrics::name("rate_limited_total")).increment(1);
            ApiError::RateLimited {
                detail: format!(
                    "too many requests from this client; retry in {} ms",
                    wait.as_millis()
                ),
                retry_after: wait.as_secs().max(1),
            }
        })
    }

    fn client_addr(&self, req: &actix_web::HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr().map(|a| a.ip());
        if self.trusted_proxy_hops == 0 {
            return peer;
        }
        forwarded_client(
            req.headers()
                .get_all("x-forwarded-for")
                .filter_map(|v| v.to_str().ok()),
            self.trusted_proxy_hops,
        )
        .or(peer)
    }
}

/// The client address behind `hops` trusted proxies: each appends the address it saw, so the
/// client is the `hops`-th entry from the right (entries further left are the client's own,
/// and may be anything). None when there are fewer entries than hops or the entry is not an
/// address.
fn forwarded_client<'a>(headers: impl Iterator<Item = &'a str>, hops: usize) -> Option<IpAddr> {
    let entries: Vec<&str> = headers.flat_map(|h| h.split(',')).map(str::trim).collect();
    let i = entries.len().checked_sub(hops)?;
    entries[i].parse().ok()
}

fn problem(req: ServiceRequest, e: &ApiError) -> ServiceResponse<BoxBody> {
    req.into_response(e.error_response())
}

/// Whether `origin` is the gateway's own (same-origin requests need no CORS).
fn same_origin(req: &ServiceRequest, origin: &str) -> bool {
    let host = req.connection_info().host().to_string();
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(&host))
}

/// Middleware on `/api/v1`: CORS, API key, rate limit.
pub async fn cors_and_limits(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(gate) = req.app_data::<web::Data<ClientGate>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let cross = origin
        .as_deref()
        .filter(|o| !same_origin(&req, o))
        .map(str::to_string);
    let cors_ok = cross.as_deref().is_some_and(|o| gate.allowed_origin(o));

    // Preflight: answered here, never forwarded.
    if req.method() == Method::OPTIONS
        && req.headers().contains_key("access-control-request-method")
    {
        return Ok(preflight(req, cross.filter(|_| cors_ok)));
    }
    if is_cross_site_change(&req, origin.as_deref(), cross.as_deref(), cors_ok) {
        metrics::counter!(medchain_core::metrics::name("cross_site_refused_total")).increment(1);
        let e = ApiError::Forbidden(
            "a cross-site request may not change anything here: call the API from the \
             gateway's own page, an allowed origin (clients.cors_origins) or a client that \
             is not a browser"
                .into(),
        );
        return Ok(problem(req, &e));
    }
    let allow = cors_ok.then_some(origin);

    // The API's own description is public (rate-limited by address).
    if req.path().ends_with("/openapi.json") {
        if let Err(e) = gate.limit(req.request()) {
            return Ok(with_cors(problem(req, &e), allow));
        }
        let res = next.call(req).await?.map_into_boxed_body();
        return Ok(with_cors(res, allow));
    }
    let caller = match authenticate(&gate, &req).await {
        Ok(c) => c,
        Err(e) => return Ok(with_cors(problem(req, &e), allow)),
    };
    if let Err(e) = gate.check(&ClientKey::Key(caller.id.clone())) {
        return Ok(with_cors(problem(req, &e), allow));
    }
    actix_web::HttpMessage::extensions_mut(&req).insert(caller);
    let res = next.call(req).await?.map_into_boxed_body();
    Ok(with_cors(res, allow))
}

/// The answer to a CORS preflight: what an allowed cross-origin caller may send, or 403.
fn preflight(req: ServiceRequest, allowed: Option<String>) -> ServiceResponse<BoxBody> {
    let Some(o) = allowed else {
        let e = ApiError::Forbidden(
            "this origin is not allowed to call the API (clients.cors_origins)".into(),
        );
        return problem(req, &e);
    };
    let res = HttpResponse::NoContent()
        .insert_header(("access-control-allow-origin", o))
        .insert_header(("access-control-allow-methods", "GET, POST"))
        .insert_header((
            "access-control-allow-headers",
            "authorization, content-type, x-api-key, x-request-id",
        ))
        .insert_header(("access-control-max-age", "600"))
        .insert_header((header::VARY, "origin"))
        .finish();
    req.into_response(res)
}

/// A cross-site request that changes state is refused before it reaches anything: a form or
/// a `fetch` on another site can send a "simple" POST (multipart, text/plain) without a
/// preflight, with the visitor's network position and cookies. Browsers say where a request
/// comes from (`Origin`, `Sec-Fetch-Site`); clients that are not browsers send neither.
fn is_cross_site_change(
    req: &ServiceRequest,
    origin: Option<&str>,
    cross: Option<&str>,
    cors_ok: bool,
) -> bool {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return false;
    }
    let fetch_site = req
        .headers()
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    match (cross, fetch_site.as_deref()) {
        (Some(_), _) => !cors_ok,
        (None, Some("cross-site" | "same-site")) => origin.is_none(),
        _ => false,
    }
}

/// Who is calling: an OIDC bearer token or an API key. A request that names no caller, or an
/// unknown one, still counts against its address's budget, so keys cannot be guessed at full
/// speed (a spent budget is the error then).
async fn authenticate(gate: &ClientGate, req: &ServiceRequest) -> Result<Caller, ApiError> {
    let bearer = crate::callers::bearer(req.headers());
    let authenticated = match (&gate.oidc, bearer) {
        (Some(oidc), Some(token)) if crate::oidc::Oidc::looks_like_jwt(token) => {
            oidc.authenticate(token).await
        }
        _ => gate.callers.authenticate(req.headers()),
    };
    authenticated.map_err(|e| {
        metrics::counter!(medchain_core::metrics::name("unauthenticated_total")).increment(1);
        gate.limit(req.request()).err().unwrap_or(e)
    })
}

fn with_cors(
    mut res: ServiceResponse<BoxBody>,
    origin: Option<Option<String>>,
) -> ServiceResponse<BoxBody> {
    if let Some(Some(o)) = origin
        && let Ok(v) = HeaderValue::from_str(&o)
    {
        let h = res.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-request-id, retry-after"),
        );
        h.insert(header::VARY, HeaderValue::from_static("origin"));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_read_from_the_right() {
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        let one = ["203.0.113.9, 198.51.100.7"];
        assert_eq!(forwarded_client(one.into_iter(), 1), ip("198.51.100.7"));
        assert_eq!(forwarded_client(one.into_iter(), 2), ip("203.0.113.9"));
        assert_eq!(forwarded_client(one.into_iter(), 3), None);
        // Several headers are one list, in order.
        let two = ["spoofed, 203.0.113.9", "198.51.100.7"];
        assert_eq!(forwarded_client(two.into_iter(), 1), ip("198.51.100.7"));
        assert_eq!(forwarded_client(two.into_iter(), 2), ip("203.0.113.9"));
        assert_eq!(forwarded_client(["junk"].into_iter(), 1), None);
    }
}
