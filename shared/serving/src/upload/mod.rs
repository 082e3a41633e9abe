//! Reading an image upload (multipart: an `image` file and an optional `patient_id`) as it
//! arrives: each chunk's bytes are reserved from the service's upload buffer as they come, so a
//! slow sender holds only what it has sent; a sender that stops sending is answered 408; and a
//! body refused before it is all in is drained first, so that its sender reads the answer
//! instead of a connection reset.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_multipart::Multipart;
use actix_web::HttpRequest;
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::web::{Bytes, Payload};
use futures_util::{Stream, StreamExt};

use crate::budget::{UploadBuffer, UploadHold};
use crate::inputs::image::{IMAGE_FIELD, ImageLimits};
use crate::inputs::tabular::PATIENT_ID;
use medchain_core::domain::PatientId;
use medchain_core::error::{ApiError, ApiResult};

/// Room for the multipart framing and a patient id around the file.
const FRAMING: usize = 16 * 1024;

/// An upload that is all in.
#[derive(Debug)]
pub struct Upload {
    pub image: Vec<u8>,
    pub patient_id: Option<PatientId>,
    /// The image's share of the upload buffer; given back when dropped (once decoded).
    pub hold: UploadHold,
}

/// Reads the upload. Errors are answered only once the rest of the body has been read and
/// dropped (up to twice the upload limit), except when the sender stalled.
pub async fn read(
    req: &HttpRequest,
    payload: Payload,
    limits: &ImageLimits,
    buffer: &Arc<UploadBuffer>,
) -> ApiResult<Upload> {
    let body = Rc::new(RefCell::new(Body::new(
        payload,
        Duration::from_secs(limits.body_stall_secs),
    )));
    let result = match check_headers(req, limits.max_bytes.get()) {
        Ok(declared) => read_fields(req, &body, limits, buffer, declared).await,
        Err(e) => Err(e),
    };
    let cap = 2 * (limits.max_bytes.get() + FRAMING) as u64;
    settle(result, &body, limits, cap, declared_length(req)).await
}

/// Reads a whole request body of at most `max_bytes` (any content type), its bytes reserved
/// from the upload buffer as they arrive, with the same stall timeout and the same draining of
/// a refused body as an upload. Returns the body and its hold on the buffer.
pub async fn read_whole(
    req: &HttpRequest,
    payload: Payload,
    max_bytes: usize,
    limits: &ImageLimits,
    buffer: &Arc<UploadBuffer>,
) -> ApiResult<(Bytes, UploadHold)> {
    let body = Rc::new(RefCell::new(Body::new(
        payload,
        Duration::from_secs(limits.body_stall_secs),
    )));
    let too_large = || ApiError::TooLarge {
        detail: format!("the request body is larger than {max_bytes} bytes"),
        field: None,
    };
    let declared = declared_length(req);
    let result = if declared.is_some_and(|n| n > max_bytes as u64) {
        Err(too_large())
    } else {
        let mut hold = buffer.hold();
        let mut buf = Vec::with_capacity(declared.unwrap_or(0) as usize);
        let mut stream = BodyStream(body.clone());
        let mut result = Ok(());
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    result = Err(ApiError::bad_request(format!(
                        "the body could not be read: {e}"
                    )));
                    break;
                }
            };
            if buf.len() + chunk.len() > max_bytes {
                result = Err(too_large());
                break;
            }
            hold.grow(chunk.len() as u64).await;
            body.borrow_mut().timer = None;
            buf.extend_from_slice(&chunk);
        }
        hold.arrived();
        result.map(|()| (Bytes::from(buf), hold))
    };
    settle(result, &body, limits, 2 * max_bytes as u64, declared).await
}

/// Answers a read: a stalled sender gets a timeout at once; any other refusal is answered only
/// once the rest of the body (up to `cap` bytes, when it declared no more) has been drained.
async fn settle<T>(
    result: ApiResult<T>,
    body: &Rc<RefCell<Body>>,
    limits: &ImageLimits,
    cap: u64,
    declared: Option<u64>,
) -> ApiResult<T> {
    match result {
        Ok(read) => Ok(read),
        Err(_) if body.borrow().stalled => Err(ApiError::Timeout(format!(
            "the request body stopped arriving: nothing was received for {} s",
            limits.body_stall_secs
        ))),
        Err(e) => {
            if declared.unwrap_or(0) <= cap {
                drain(body, cap).await;
            }
            Err(e)
        }
    }
}

/// Checks the upload's headers; returns its declared length (0 when not declared).
fn check_headers(req: &HttpRequest, max_bytes: usize) -> ApiResult<usize> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !ct.starts_with("multipart/form-data") {
        return Err(ApiError::UnsupportedMediaType {
            detail: format!(
                "send the image as multipart/form-data with a file field `{IMAGE_FIELD}`"
            ),
            field: None,
        });
    }
    if !ct.contains("boundary=") {
        return Err(ApiError::bad_request(
            "the multipart content type has no boundary",
        ));
    }
    let declared = declared_length(req);
    if declared.is_some_and(|n| n > (max_bytes + FRAMING) as u64) {
        return Err(too_large(max_bytes));
    }
    Ok(declared.unwrap_or(0) as usize)
}

fn declared_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

fn too_large(max_bytes: usize) -> ApiError {
    ApiError::TooLarge {
        detail: format!("the upload is larger than {max_bytes} bytes"),
        field: Some(IMAGE_FIELD.into()),
    }
}

async fn read_fields(
    req: &HttpRequest,
    body: &Rc<RefCell<Body>>,
    limits: &ImageLimits,
    buffer: &Arc<UploadBuffer>,
    declared: usize,
) -> ApiResult<Upload> {
    let max_bytes = limits.max_bytes.get();
    let mut form = Multipart::new(req.headers(), BodyStream(body.clone()));
    let mut hold = buffer.hold();
    let mut image: Option<Vec<u8>> = None;
    let mut patient_id = None;
    let bad = |e: actix_multipart::MultipartError| {
        ApiError::bad_request(format!("malformed multipart body: {e}"))
    };
    while let Some(field) = form.next().await {
        let mut field = field.map_err(bad)?;
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            IMAGE_FIELD => {
                if image.is_some() {
                    return Err(ApiError::invalid(
                        IMAGE_FIELD,
                        "send exactly one image per request",
                    ));
                }
                // Sized once from the declared length (the file is nearly all of it): growing
                // by doubling would hold up to twice the file. Only the pages written count.
                let mut buf = Vec::with_capacity(declared.min(max_bytes));
                while let Some(chunk) = field.next().await {
                    let chunk = chunk.map_err(bad)?;
                    if buf.len() + chunk.len() > max_bytes {
                        return Err(too_large(max_bytes));
                    }
                    // Reserved as it arrives; waits (the sender is paused) while the buffer is
                    // spent. The stall timer does not run meanwhile: nothing is being asked
                    // of the sender.
                    hold.grow(chunk.len() as u64).await;
                    body.borrow_mut().timer = None;
                    buf.extend_from_slice(&chunk);
                }
                image = Some(buf);
            }
            PATIENT_ID => {
                let mut buf = Vec::new();
                while let Some(chunk) = field.next().await {
                    let chunk = chunk.map_err(bad)?;
                    if buf.len() + chunk.len() > 1024 {
                        return Err(ApiError::invalid(PATIENT_ID, "`patient_id` is too long"));
                    }
                    buf.extend_from_slice(&chunk);
                }
                let text = String::from_utf8(buf)
                    .map_err(|_| ApiError::invalid(PATIENT_ID, "`patient_id` must be UTF-8"))?;
                patient_id = Some(PatientId::parse(&text)?);
            }
            other => {
                return Err(ApiError::invalid(
                    other,
                    format!(
                        "unknown multipart field `{other}`; send the file as `{IMAGE_FIELD}` \
                         (and optionally `{PATIENT_ID}`)"
                    ),
                ));
            }
        }
    }
    let image = image.ok_or_else(|| {
        ApiError::invalid(
            IMAGE_FIELD,
            format!("missing the multipart file field `{IMAGE_FIELD}`"),
        )
    })?;
    hold.arrived();
    Ok(Upload {
        image,
        patient_id,
        hold,
    })
}

/// Reads and drops what is left of the body, up to `cap` bytes in all, within the stall
/// timeout: a sender still writing its body reads no response until it is done, and one whose
/// body is left unread gets a reset instead of the answer.
async fn drain(body: &Rc<RefCell<Body>>, cap: u64) {
    let mut stream = BodyStream(body.clone());
    while body.borrow().received <= cap {
        match stream.next().await {
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
}

/// The request body with a stall timer. Only time spent waiting for the sender counts: the
/// timer starts when a read finds nothing and stops when a chunk arrives, so time the handler
/// spends elsewhere between reads (waiting for the upload buffer) is never held against the
/// sender.
struct Body {
    payload: Payload,
    stall: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    stalled: bool,
    received: u64,
}

impl Body {
    fn new(payload: Payload, stall: Duration) -> Self {
        Self {
            payload,
            stall,
            timer: None,
            stalled: false,
            received: 0,
        }
    }
}

/// The multipart parser's view of the body, shared so that the rest can be drained after it.
struct BodyStream(Rc<RefCell<Body>>);

impl Stream for BodyStream {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut body = self.0.borrow_mut();
        let body = &mut *body;
        if body.stalled {
            return Poll::Ready(None);
        }
        // The body first: a chunk that is there wins over a timer that ran out meanwhile.
        match Pin::new(&mut body.payload).poll_next(cx) {
            Poll::Ready(item) => {
                body.timer = None;
                if let Some(Ok(chunk)) = &item {
                    body.received += chunk.len() as u64;
                }
                Poll::Ready(item)
            }
            Poll::Pending => {
                let stall = body.stall;
                let timer = body
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                if timer.as_mut().poll(cx).is_ready() {
                    body.timer = None;
                    body.stalled = true;
                    return Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the request body stopped arriving",
                    )))));
                }
                Poll::Pending
            }
        }
    }
}
