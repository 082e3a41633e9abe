//! Per-request plumbing: the request id (honoured from `x-request-id` or generated), a tracing
//! span per request, request metrics, and a JSON body extractor whose errors name the field.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::error::ApiError;

/// Header carrying the request id across gateway → service → chain-svc.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The id of the request being served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    /// The id of `req`, if the middleware ran.
    pub fn of(req: &HttpRequest) -> Option<String> {
        req.extensions().get::<RequestId>().map(|r| r.0.clone())
    }
}

/// What a prediction adds to its request's access line: the model that answered, the
/// prediction's id (once it has one) and the inference time. Put in the request's extensions by
/// the handler ([`note_prediction`]) and written by [`request_context`] as fields of the
/// `served` event. (Recorded on the request span instead, each field made the JSON formatter
/// parse and write the span's fields again: 43,000 instructions a tabular request, 17% of it,
/// callgrind.)
#[derive(Debug, Clone, Default)]
pub struct Served {
    pub model: String,
    pub prediction_id: Option<String>,
    pub inference_ms: f64,
}

/// Notes a prediction for the access line of `req` (a later call replaces an earlier one).
pub fn note_prediction(req: &HttpRequest, served: Served) {
    req.extensions_mut().insert(served);
}

/// Accepts a caller's id only if it is short, printable ASCII (it ends up in logs).
fn acceptable(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)))
    .then(|| s.to_string())
}

/// Middleware (outermost): request id, span, access log line and request metrics.
pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(acceptable)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = method_label(req.method());
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_string());
    // The route pattern, never the raw path: path parameters are identifiers (patient ids
    // travel in bodies only, but a path may still carry whatever a client put there), which
    // must not reach the logs.
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        %method,
        route = %route,
    );
    let start = Instant::now();
    // Inner middleware answers errors as responses (see `auth`), so an `Err` here is rare; it
    // cannot carry the request id because the request is gone, but it is still logged.
    let mut res = match next.call(req).instrument(span.clone()).await {
        Ok(res) => res.map_into_boxed_body(),
        Err(e) => {
            span.in_scope(|| tracing::warn!(error = %e, "request failed in middleware"));
            return Err(e);
        }
    };
    let elapsed = start.elapsed();
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), v);
    }
    let status = res.status().as_u16();
    // A prediction adds its model, prediction id and inference time (`note_prediction`).
    span.in_scope(|| {
        let latency_ms = elapsed.as_secs_f64() * 1e3;
        match res.request().extensions().get::<Served>() {
            Some(p) => tracing::info!(
                status,
                latency_ms,
                model = %p.model,
                prediction_id = p.prediction_id.as_deref(),
                inference_ms = p.inference_ms,
                "served"
            ),
            None => tracing::info!(status, latency_ms, "served"),
        }
    });
    let labels = [
        ("route", metrics::SharedString::from(route)),
        ("method", method.into()),
        ("status", status_label(status)),
    ];
    metrics::counter!(crate::metrics::name("http_requests_total"), &labels).increment(1);
    metrics::histogram!(
        crate::metrics::name("http_request_duration_seconds"),
        &labels[..2]
    )
    .record(elapsed.as_secs_f64());
    Ok(res)
}

/// A request method as a metric label, without a copy for the usual ones.
fn method_label(m: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// A status code as a metric label, without formatting it for the usual ones.
fn status_label(status: u16) -> metrics::SharedString {
    const USUAL: [(u16, &str); 20] = [
        (200, "200"),
        (201, "201"),
        (202, "202"),
        (204, "204"),
        (301, "301"),
        (302, "302"),
        (304, "304"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (408, "408"),
        (409, "409"),
        (413, "413"),
        (415, "415"),
        (422, "422"),
        (429, "429"),
        (500, "500"),
        (503, "503"),
    ];
    match USUAL.iter().find(|(c, _)| *c == status) {
        Some((_, s)) => (*s).into(),
        None => status.to_string().into(),
    }
}

/// Largest JSON body a `ValidJson` accepts unless the app registers a `JsonLimit`.
pub const DEFAULT_JSON_LIMIT: usize = 64 * 1024;

/// App data: the JSON body limit in bytes.
#[derive(Debug, Clone, Copy)]
pub struct JsonLimit(pub usize);

/// A JSON body deserialised strictly: wrong content type → 415, too large → 413, broken JSON →
/// 400, a field of the wrong type, unknown or missing → 422 naming the field.
#[derive(Debug)]
pub struct ValidJson<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for ValidJson<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = JsonBytes::from_request(req, payload);
        Box::pin(async move { parse_json(&body.await?.0).map(ValidJson) })
    }
}

/// A JSON body's bytes, checked as [`ValidJson`] checks them (content type → 415, size → 413)
/// and left for the handler to parse: for a body whose shape is the model card's, read
/// straight into its features.
#[derive(Debug)]
pub struct JsonBytes(pub Bytes);

impl FromRequest for JsonBytes {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req
            .app_data::<web::Data<JsonLimit>>()
            .map_or(DEFAULT_JSON_LIMIT, |l| l.0);
        let content_type_ok = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || m.ends_with("+json")
            });
        let body = web::Bytes::from_request(req, payload);
        let declared_len = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        Box::pin(async move {
            match content_type_ok {
                Some(true) => {}
                Some(false) => {
                    return Err(ApiError::UnsupportedMediaType {
                        detail: "send the body as JSON with `content-type: application/json`"
                            .into(),
                        field: None,
                    });
                }
                None => {
                    return Err(ApiError::UnsupportedMediaType {
                        detail: "missing `content-type: application/json` header".into(),
                        field: None,
                    });
                }
            }
            let too_large = || ApiError::TooLarge {
                detail: format!("JSON body larger than {limit} bytes"),
                field: None,
            };
            if declared_len.is_some_and(|n| n > limit) {
                return Err(too_large());
            }
            let bytes: Bytes = body
                .await
                .map_err(|e| ApiError::bad_request(format!("could not read the body: {e}")))?;
            if bytes.len() > limit {
                return Err(too_large());
            }
            Ok(JsonBytes(bytes))
        })
    }
}

/// Strict JSON parsing with errors that name the offending field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the body is empty: send a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let result: Result<T, _> = serde_path_to_error::deserialize(de);
    result.map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let msg = inner.to_string();
        // serde_path_to_error's path already ends at an unknown key, but stops at the parent
        // of a missing one.
        let field = match (unknown_field(&msg), missing_field(&msg)) {
            (Some(f), _) if path == "." => Some(f),
            (_, Some(f)) if path == "." => Some(f),
            (_, Some(f)) => Some(format!("{path}.{f}")),
            _ => (path != ".").then_some(path),
        };
        match inner.classify() {
            serde_json::error::Category::Data => ApiError::Invalid { detail: msg, field },
            _ => ApiError::BadRequest {
                detail: format!("malformed JSON: {msg}"),
                field: None,
            },
        }
    })
}

fn backticked_after<'a>(msg: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = msg.strip_prefix(prefix)?;
    rest.split('`').next()
}

fn unknown_field(msg: &str) -> Option<String> {
    backticked_after(msg, "unknown field `").map(str::to_string)
}

fn missing_field(msg: &str) -> Option<String> {
    backticked_after(msg, "missing field `").map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        glucose: f64,
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        x: u8,
    }

    fn field_of(json: &str) -> (u16, Option<String>) {
        match parse_json::<Body>(json.as_bytes()) {
            Ok(_) => (200, None),
            Err(e) => {
                let p = e.problem();
                (p.status, p.field)
            }
        }
    }

    #[test]
    fn names_fields_in_errors() {
        assert_eq!(field_of(r#"{"glucose": 1}"#), (200, None));
        assert_eq!(
            field_of(r#"{"glucose": "high"}"#),
            (422, Some("glucose".into()))
        );
        assert_eq!(
            field_of(r#"{"glucose": 1, "sugar": 2}"#),
            (422, Some("sugar".into()))
        );
        assert_eq!(field_of(r#"{}"#), (422, Some("glucose".into())));
        assert_eq!(
            field_of(r#"{"glucose": 1, "inner": {"x": 300}}"#),
            (422, Some("inner.x".into()))
        );
        assert_eq!(field_of(r#"{"glucose": 1,"#).0, 400);
        assert_eq!(field_of("   ").0, 400);
    }

    #[test]
    fn request_ids_from_callers_are_sanitised() {
        assert!(acceptable(&HeaderValue::from_static("abc-123_x.y:z")).is_some());
        assert!(acceptable(&HeaderValue::from_static("has space")).is_none());
        assert!(acceptable(&HeaderValue::from_static("")).is_none());
        let long = "a".repeat(129);
        assert!(acceptable(&HeaderValue::from_str(&long).expect("header")).is_none());
    }
}
