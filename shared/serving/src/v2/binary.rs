//! The binary tensor data extension: a request or response body is its JSON document
//! (`Inference-Header-Content-Length` bytes, the whole body without the header) followed by
//! the binary tensors, in the order of the inputs (outputs) that declare a
//! `parameters.binary_data_size`.

use actix_web::http::header::{self, HeaderMap};
use actix_web::{HttpResponse, web::Bytes};

use super::wire::{InferRequest, InferResponse};
use super::{HEADER_LENGTH, V2Error};

/// A request read whole: its JSON and each input's binary data (`None`: in its JSON).
#[derive(Debug)]
pub struct Request {
    pub doc: InferRequest,
    pub binary: Vec<Option<Bytes>>,
}

/// Splits `body` into the request's JSON and its inputs' binary data; the JSON's tensor data
/// may hold `max_elements` elements in all.
pub fn split(headers: &HeaderMap, body: Bytes, max_elements: usize) -> Result<Request, V2Error> {
    let json_len = match headers.get(HEADER_LENGTH) {
        None => body.len(),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|&n| n <= body.len())
            .ok_or_else(|| {
                V2Error::bad(format!(
                    "`{HEADER_LENGTH}` must be the length of the JSON at the start of the \
                     body ({} bytes in all)",
                    body.len()
                ))
            })?,
    };
    let json = &body[..json_len];
    let parsed = super::wire::with_element_limit(max_elements, || {
        serde_json::from_slice::<InferRequest>(json)
    });
    let doc: InferRequest = parsed.map_err(|e| {
        // Some clients write NaN (the missing value) into JSON, which JSON does not have.
        let nan = [&b"NaN"[..], b"Infinity"]
            .iter()
            .any(|t| json.windows(t.len()).any(|w| w == *t));
        let hint = if nan {
            "; JSON has no NaN or Infinity: send a tensor with missing values as binary data"
        } else {
            ""
        };
        V2Error::bad(format!("the inference request is not valid: {e}{hint}"))
    })?;
    let mut at = json_len;
    let mut binary = Vec::with_capacity(doc.inputs.len());
    for input in &doc.inputs {
        let size = match input.parameters.get("binary_data_size") {
            None => {
                binary.push(None);
                continue;
            }
            Some(v) => v.as_u64().ok_or_else(|| {
                V2Error::bad(format!(
                    "input `{}`: `binary_data_size` must be a whole number of bytes",
                    input.name
                ))
            })? as usize,
        };
        if body.len() - at < size {
            return Err(V2Error::bad(format!(
                "input `{}` declares {size} bytes of binary data; only {} follow",
                input.name,
                body.len() - at
            )));
        }
        binary.push(Some(body.slice(at..at + size)));
        at += size;
    }
    if at != body.len() {
        return Err(V2Error::bad(format!(
            "{} bytes follow the inputs' binary data; no input declares them",
            body.len() - at
        )));
    }
    Ok(Request { doc, binary })
}

/// The response: JSON alone, or JSON then the binary outputs (`binary`, in output order)
/// with the header that says where the JSON ends.
pub fn respond(doc: &InferResponse, binary: Vec<Vec<u8>>) -> Result<HttpResponse, V2Error> {
    let json = serde_json::to_vec(doc)
        .map_err(|e| V2Error::from(medchain_core::error::ApiError::Internal(e.into())))?;
    if binary.is_empty() {
        return Ok(HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .body(json));
    }
    let json_len = json.len();
    let mut body = json;
    body.reserve(binary.iter().map(Vec::len).sum());
    for b in binary {
        body.extend_from_slice(&b);
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/octet-stream"))
        .insert_header((HEADER_LENGTH, json_len.to_string()))
        .body(body))
}
