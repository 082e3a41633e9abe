//! The one error type of the system and its one mapping to HTTP: every error body is an
//! RFC 9457 `application/problem+json` document naming what is wrong (and the field, if any).

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Syntactically broken request (bad JSON, bad multipart), 400.
    #[error("{detail}")]
    BadRequest {
        detail: String,
        field: Option<String>,
    },
    /// Well-formed but invalid input (out of range, unknown field, wrong type), 422.
    #[error("{detail}")]
    Invalid {
        detail: String,
        field: Option<String>,
    },
    /// Missing or wrong credentials, 401.
    #[error("{0}")]
    Unauthorized(String),
    /// Known, or not needing to be, but not allowed this, 403.
    #[error("{0}")]
    Forbidden(String),
    /// No such resource, 404.
    #[error("{0}")]
    NotFound(String),
    /// The client stopped sending its request body, 408.
    #[error("{0}")]
    Timeout(String),
    /// The resource exists with other content, 409.
    #[error("{0}")]
    Conflict(String),
    /// Body or image too large, 413.
    #[error("{detail}")]
    TooLarge {
        detail: String,
        field: Option<String>,
    },
    /// Content type not accepted, 415.
    #[error("{detail}")]
    UnsupportedMediaType {
        detail: String,
        field: Option<String>,
    },
    /// Too many requests from this client, 429.
    #[error("{detail}")]
    RateLimited { detail: String, retry_after: u64 },
    /// Temporarily unable to serve (model loading failed, queue full, memory guard), 503.
    #[error("{detail}")]
    Unavailable {
        detail: String,
        retry_after: Option<u64>,
    },
    /// An upstream service failed (the gateway's view), 502/503/504.
    #[error("{upstream}: {detail}")]
    Upstream {
        upstream: String,
        status: u16,
        detail: String,
    },
    /// A bug or an unexpected failure; the client learns little, the log everything.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// 422 naming a field.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Invalid {
            field: Some(field.into()),
            detail: detail.into(),
        }
    }

    /// 400 without a field.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::BadRequest {
            detail: detail.into(),
            field: None,
        }
    }

    /// 503 with an optional `Retry-After`.
    pub fn unavailable(detail: impl Into<String>, retry_after: Option<u64>) -> Self {
        Self::Unavailable {
            detail: detail.into(),
            retry_after,
        }
    }

    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::BadRequest { .. } => ("bad-request", "Malformed request"),
            Self::Invalid { .. } => ("invalid-input", "Invalid input"),
            Self::Unauthorized(_) => ("unauthorized", "Not authorised"),
            Self::Forbidden(_) => ("forbidden", "Forbidden"),
            Self::NotFound(_) => ("not-found", "Not found"),
            Self::Timeout(_) => ("request-timeout", "Request timeout"),
            Self::Conflict(_) => ("conflict", "Conflict"),
            Self::TooLarge { .. } => ("too-large", "Payload too large"),
            Self::UnsupportedMediaType { .. } => {
                ("unsupported-media-type", "Unsupported media type")
            }
            Self::RateLimited { .. } => ("rate-limited", "Too many requests"),
            Self::Unavailable { .. } => ("unavailable", "Temporarily unavailable"),
            Self::Upstream { .. } => ("upstream-failure", "Upstream service failed"),
            Self::Internal(_) => ("internal", "Internal error"),
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            Self::BadRequest { field, .. }
            | Self::Invalid { field, .. }
            | Self::TooLarge { field, .. }
            | Self::UnsupportedMediaType { field, .. } => field.as_deref(),
            _ => None,
        }
    }

    /// The body this error is sent as.
    pub fn problem(&self) -> Problem {
        let (slug, title) = self.kind();
        let detail = match self {
            Self::Internal(_) => "an internal error occurred; the request id identifies it in \
                                  the service log"
                .to_string(),
            other => other.to_string(),
        };
        Problem {
            kind: format!("urn:medchain:problem:{slug}"),
            title: title.to_string(),
            status: self.status_code().as_u16(),
            detail,
            field: self.field().map(str::to_string),
            upstream: match self {
                Self::Upstream { upstream, .. } => Some(upstream.clone()),
                _ => None,
            },
        }
    }
}

/// The JSON error shape (`application/problem+json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub upstream: Option<String>,
}

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Internal(e) = self {
            tracing::error!(error = ?e, "request failed");
        } else if self.status_code().is_server_error() {
            tracing::warn!(error = %self, "request could not be served");
        }
        let mut res = HttpResponse::build(self.status_code());
        res.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)));
        let retry = match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        if let Some(secs) = retry {
            res.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        res.json(self.problem())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    async fn body_of(e: ApiError) -> (u16, Option<String>, Problem) {
        let res = e.error_response();
        let status = res.status().as_u16();
        let retry = res
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap_or_default().to_string());
        let bytes = to_bytes(res.into_body()).await.expect("body");
        (
            status,
            retry,
            serde_json::from_slice(&bytes).expect("problem json"),
        )
    }

    #[actix_web::test]
    async fn invalid_names_the_field() {
        let (status, _, p) = body_of(ApiError::invalid("glucose", "too high")).await;
        assert_eq!(status, 422);
        assert_eq!(p.field.as_deref(), Some("glucose"));
        assert_eq!(p.kind, "urn:medchain:problem:invalid-input");
        assert_eq!(p.detail, "too high");
    }

    #[actix_web::test]
    async fn internal_errors_hide_their_cause() {
        let (status, _, p) =
            body_of(ApiError::Internal(anyhow::anyhow!("db password wrong"))).await;
        assert_eq!(status, 500);
        assert!(!p.detail.contains("password"), "{}", p.detail);
    }

    #[actix_web::test]
    async fn unavailable_carries_retry_after() {
        let (status, retry, _) = body_of(ApiError::unavailable("queue full", Some(2))).await;
        assert_eq!(status, 503);
        assert_eq!(retry.as_deref(), Some("2"));
    }

    #[actix_web::test]
    async fn upstream_names_the_upstream() {
        let e = ApiError::Upstream {
            upstream: "heart-svc".into(),
            status: 504,
            detail: "timed out after 5 s".into(),
        };
        let (status, _, p) = body_of(e).await;
        assert_eq!(status, 504);
        assert_eq!(p.upstream.as_deref(), Some("heart-svc"));
    }
}
