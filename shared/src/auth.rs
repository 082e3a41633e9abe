//! The internal-token check for service-to-service calls: a constant-time comparison of the
//! `x-internal-token` header with the configured secret. Health endpoints are registered
//! outside the guarded scope, so they stay open. Wrong tokens are limited per address: after
//! `MAX_FAILURES` in a minute, that address is refused (429) for the rest of the minute even
//! with the right token, so the token cannot be guessed online.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// Header an internal caller puts its token in.
pub const INTERNAL_TOKEN_HEADER: &str = "x-internal-token";

/// Wrong tokens one address may present in a minute.
pub const MAX_FAILURES: u32 = 10;
const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most (the oldest windows are forgotten first).
const MAX_ADDRESSES: usize = 10_000;

/// The configured token, shared with the middleware through app data.
#[derive(Debug, Clone)]
pub struct InternalToken {
    token: Option<SecretString>,
    /// Per address: when its window started and how many wrong tokens it sent in it.
    failures: Arc<Mutex<HashMap<IpAddr, (Instant, u32)>>>,
}

impl InternalToken {
    /// `None` accepts every call (allowed only on a loopback listener; settings enforce that).
    pub fn new(token: Option<SecretString>) -> Self {
        Self {
            token,
            failures: Arc::default(),
        }
    }

    /// Whether `presented` opens the door.
    pub fn accepts(&self, presented: Option<&[u8]>) -> bool {
        match (&self.token, presented) {
            (None, _) => true,
            (Some(expected), Some(p)) => expected.expose_secret().as_bytes().ct_eq(p).into(),
            (Some(_), None) => false,
        }
    }

    /// Seconds until `addr` may try again, if it used up its wrong tokens.
    fn blocked(&self, addr: IpAddr) -> Option<u64> {
        let f = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let (start, n) = f.get(&addr)?;
        let left = WINDOW.checked_sub(start.elapsed())?;
        (*n >= MAX_FAILURES).then(|| left.as_secs().max(1))
    }

    fn failed(&self, addr: IpAddr) {
        let mut f = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if f.len() >= MAX_ADDRESSES {
            f.retain(|_, (start, _)| start.elapsed() < WINDOW);
            if f.len() >= MAX_ADDRESSES {
                // Flooded from many addresses: forget the oldest window.
                if let Some(oldest) = f.iter().min_by_key(|(_, (s, _))| *s).map(|(a, _)| *a) {
                    f.remove(&oldest);
                }
            }
        }
        let e = f.entry(addr).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= WINDOW {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
    }
}

/// Middleware: 401 unless the request carries the internal token.
pub async fn require_internal_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let addr = req
        .peer_addr()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
    let token = req.app_data::<web::Data<InternalToken>>().cloned();
    if let Some(wait) = token.as_ref().and_then(|t| t.blocked(addr)) {
        metrics::counter!(crate::metrics::name("auth_blocked_total")).increment(1);
        let err = ApiError::RateLimited {
            detail: format!(
                "too many wrong `{INTERNAL_TOKEN_HEADER}` headers from this address; retry in \
                 {wait} s"
            ),
            retry_after: wait,
        };
        return Ok(req.error_response(err).map_into_right_body());
    }
    let allowed = match &token {
        Some(token) => token.accepts(
            req.headers()
                .get(INTERNAL_TOKEN_HEADER)
                .map(|v| v.as_bytes()),
        ),
        // A service that forgot to register the token must fail closed.
        None => false,
    };
    if !allowed {
        if let Some(t) = &token {
            t.failed(addr);
        }
        metrics::counter!(crate::metrics::name("auth_failures_total")).increment(1);
        let err = ApiError::Unauthorized(format!(
            "missing or wrong `{INTERNAL_TOKEN_HEADER}` header: this endpoint is for medchain \
             services only"
        ));
        return Ok(req.error_response(err).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_tokens() {
        let t = InternalToken::new(Some(SecretString::from("0123456789abcdef")));
        assert!(t.accepts(Some(b"0123456789abcdef")));
        assert!(!t.accepts(Some(b"0123456789abcdeX")));
        assert!(!t.accepts(Some(b"0123456789abcdef0")));
        assert!(!t.accepts(None));
        assert!(InternalToken::new(None).accepts(None));
    }

    #[test]
    fn an_address_that_guesses_is_shut_out_for_the_minute() {
        let t = InternalToken::new(Some(SecretString::from("0123456789abcdef")));
        let (a, b) = (
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
        );
        for _ in 0..MAX_FAILURES - 1 {
            t.failed(a);
        }
        assert_eq!(t.blocked(a), None);
        t.failed(a);
        assert!(t.blocked(a).is_some_and(|s| (1..=60).contains(&s)));
        assert_eq!(t.blocked(b), None, "other addresses are not affected");
    }
}
