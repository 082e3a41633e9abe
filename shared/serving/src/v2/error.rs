//! The protocol's errors: `{"error": "…"}` with 400 for bad input, 404 for an unknown model
//! or version, 503 with `Retry-After` when the model's queue is full, its load failed or the
//! memory guard refused it; the rest of the service keeps problem+json.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpResponse, ResponseError};

use medchain_core::error::ApiError;

/// An error as the protocol answers it.
#[derive(Debug)]
pub struct V2Error {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl V2Error {
    /// 400: the request is wrong; `message` says what.
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404: no such model or version.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        V2Error {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, its text prefixed with where it happened.
    pub fn context(mut self, at: &str) -> Self {
        self.message = format!("{at}: {}", self.message);
        self
    }

    /// The error's text.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for V2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The service's own errors in the protocol's terms: whatever the JSON API refuses as bad
/// input (400, 415 or 422 there) is a 400 here; size, time-out and availability keep their
/// status.
impl From<ApiError> for V2Error {
    fn from(e: ApiError) -> Self {
        let status = match &e {
            ApiError::BadRequest { .. }
            | ApiError::Invalid { .. }
            | ApiError::UnsupportedMediaType { .. } => StatusCode::BAD_REQUEST,
            other => other.status_code(),
        };
        let retry_after = match &e {
            ApiError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        };
        let message = match &e {
            ApiError::Internal(err) => {
                tracing::error!(error = ?err, "request failed");
                "an internal error occurred; the request id identifies it in the service log"
                    .to_string()
            }
            other => other.to_string(),
        };
        V2Error {
            status,
            message,
            retry_after,
        }
    }
}

impl ResponseError for V2Error {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        if self.status.is_server_error() {
            tracing::warn!(error = %self.message, "V2 request could not be served");
        }
        let mut res = HttpResponse::build(self.status);
        if let Some(s) = self.retry_after {
            res.insert_header((header::RETRY_AFTER, s.to_string()));
        }
        res.json(serde_json::json!({ "error": self.message }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_is_a_503_with_retry_after_and_bad_input_a_400() {
        let busy = ApiError::unavailable(
            "model `ecg` is busy: 16 requests are already waiting",
            Some(1),
        );
        let res = V2Error::from(busy).error_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            res.headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
        for e in [
            ApiError::invalid("glucose", "`glucose` must be between 20 and 600"),
            ApiError::bad_request("broken"),
            ApiError::UnsupportedMediaType {
                detail: "not a JPEG".into(),
                field: None,
            },
        ] {
            assert_eq!(V2Error::from(e).status_code(), StatusCode::BAD_REQUEST);
        }
        let e = V2Error::from(ApiError::Internal(anyhow::anyhow!("secret detail")));
        assert_eq!(e.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            !e.message().contains("secret"),
            "internal errors say little"
        );
    }
}
