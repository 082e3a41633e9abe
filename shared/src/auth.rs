//! The internal-token check for service-to-service calls: a constant-time comparison of the
//! `x-internal-token` header with the configured secret. Health endpoints are registered
//! outside the guarded scope, so they stay open.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// Header an internal caller puts its token in.
pub const INTERNAL_TOKEN_HEADER: &str = "x-internal-token";

/// The configured token, shared with the middleware through app data.
#[derive(Debug, Clone)]
pub struct InternalToken(Option<SecretString>);

impl InternalToken {
    /// `None` accepts every call (allowed only on a loopback listener; settings enforce that).
    pub fn new(token: Option<SecretString>) -> Self {
        Self(token)
    }

    /// Whether `presented` opens the door.
    pub fn accepts(&self, presented: Option<&[u8]>) -> bool {
        match (&self.0, presented) {
            (None, _) => true,
            (Some(expected), Some(p)) => expected.expose_secret().as_bytes().ct_eq(p).into(),
            (Some(_), None) => false,
        }
    }
}

/// Middleware: 401 unless the request carries the internal token.
pub async fn require_internal_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let allowed = match req.app_data::<web::Data<InternalToken>>() {
        Some(token) => token.accepts(
            req.headers()
                .get(INTERNAL_TOKEN_HEADER)
                .map(|v| v.as_bytes()),
        ),
        // A service that forgot to register the token must fail closed.
        None => false,
    };
    if !allowed {
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
}
