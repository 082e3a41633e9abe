//! What every prediction route does, whatever its protocol: run an input through a model's
//! session and read its outputs, decode and preprocess an image upload within the service's
//! decode budget, and record a prediction that names a patient.

use std::sync::Arc;
use std::time::Instant;

use actix_web::HttpRequest;

use crate::budget::UploadHold;
use crate::card::Preprocessing;
use crate::inputs::IMAGE_FIELD;
use crate::inputs::image::{self as input, Prepared, prepare};
use crate::inputs::tabular::TensorData;
use crate::model::LazyModel;
use crate::prediction::Prediction;
use crate::state::DiseaseModels;
use medchain_core::domain::PatientId;
use medchain_core::error::{ApiError, ApiResult};
use medchain_core::request::RequestId;

/// An output tensor's values.
#[derive(Debug, Clone)]
pub enum OutputData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// An output to read: its name and whether it is int64 (else float32).
#[derive(Debug, Clone)]
pub struct Wanted {
    pub name: String,
    pub int64: bool,
}

fn ort_err(what: &'static str) -> impl Fn(ort::Error) -> ApiError {
    move |e| ApiError::Internal(anyhow::anyhow!("{what}: {e}"))
}

/// Runs an input of `shape` through `model` and returns the `wanted` outputs (their shapes
/// and values, in that order) and the time ONNX Runtime took, ms.
pub async fn run(
    model: &LazyModel,
    permit: &tokio::sync::OwnedSemaphorePermit,
    shape: Vec<i64>,
    data: TensorData,
    input: String,
    wanted: Vec<Wanted>,
) -> ApiResult<(Vec<(Vec<i64>, OutputData)>, f64)> {
    model
        .run(permit, move |session| {
            let tensor = match data {
                TensorData::F32(v) => {
                    ort::value::Tensor::from_array((shape, v)).map(|t| t.into_dyn())
                }
                TensorData::F64(v) => {
                    ort::value::Tensor::from_array((shape, v)).map(|t| t.into_dyn())
                }
            }
            .map_err(ort_err("input tensor"))?;
            let start = Instant::now();
            let outputs = session
                .run(ort::inputs![input.as_str() => tensor])
                .map_err(ort_err("inference"))?;
            let elapsed = start.elapsed().as_secs_f64() * 1e3;
            let read = wanted
                .iter()
                .map(|w| {
                    let value = &outputs[w.name.as_str()];
                    Ok(if w.int64 {
                        let (shape, v) = value
                            .try_extract_tensor::<i64>()
                            .map_err(ort_err("output tensor"))?;
                        (shape.to_vec(), OutputData::I64(v.to_vec()))
                    } else {
                        let (shape, v) = value
                            .try_extract_tensor::<f32>()
                            .map_err(ort_err("output tensor"))?;
                        (shape.to_vec(), OutputData::F32(v.to_vec()))
                    })
                })
                .collect::<ApiResult<Vec<_>>>()?;
            Ok((read, elapsed))
        })
        .await
}

/// Runs an input through `model` and returns its float32 output `output`, flat, and the time
/// ONNX Runtime took.
pub async fn run_one(
    model: &LazyModel,
    permit: &tokio::sync::OwnedSemaphorePermit,
    shape: Vec<i64>,
    data: TensorData,
    input: String,
    output: String,
) -> ApiResult<(Vec<f32>, f64)> {
    let wanted = vec![Wanted {
        name: output,
        int64: false,
    }];
    let (mut outputs, ms) = run(model, permit, shape, data, input, wanted).await?;
    match outputs.pop() {
        Some((_, OutputData::F32(v))) => Ok((v, ms)),
        _ => Err(ApiError::Internal(anyhow::anyhow!(
            "the model gave no float32 output"
        ))),
    }
}

/// Records `p` on chain-svc when the request named a patient (`audit_input`: the patient id
/// and the input's digest), and puts the prediction on the request's span.
pub async fn record(
    req: &HttpRequest,
    models: &DiseaseModels,
    mut p: Prediction,
    audit_input: Option<(PatientId, [u8; 32])>,
) -> Prediction {
    p.audit = models
        .audit
        .record(
            &p,
            audit_input,
            RequestId::of(req),
            medchain_core::auth::forwarded_caller(req).map(|(id, _)| id),
        )
        .await;
    p.trace(req);
    p
}

/// Decodes and preprocesses an uploaded image off the async threads, holding one of the
/// service's decode slots and, before decoding starts, what the decode will hold of its
/// decode budget. Returns the model's input and, when `digest`, the upload's sha256 (the
/// recorded input of a prediction that names a patient). `hold` (the upload's share of the
/// upload buffer) is given back once the file is decoded. With `keep_rgb` the model's input is
/// kept as RGB8 too (for an overlay).
pub async fn decode(
    models: Arc<DiseaseModels>,
    bytes: Vec<u8>,
    hold: Option<UploadHold>,
    pre: Preprocessing,
    digest: bool,
    keep_rgb: bool,
) -> ApiResult<(Prepared, Option<[u8; 32]>)> {
    let span = tracing::Span::current();
    let _decode_slot = models
        .decode_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("decode slots closed: {e}")))?;
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        // What decoding will hold, from the header: refused if it alone exceeds the budget,
        // else reserved (waiting while other decodes hold it) before it starts. Every holder
        // of the budget holds a decode slot too, so the wait always ends.
        let budget = &models.decode_budget;
        let _decoding = match input::decode_cost(&bytes, &pre) {
            Some(cost) if cost > budget.total_bytes() => {
                return Err(ApiError::TooLarge {
                    detail: format!(
                        "decoding this image would take about {} MB of memory; this service \
                         decodes within {} MB — send an image with fewer pixels, or a baseline \
                         (not progressive) 8-bit JPEG",
                        cost.div_ceil(1 << 20),
                        budget.total_bytes() >> 20
                    ),
                    field: Some(IMAGE_FIELD.into()),
                });
            }
            Some(cost) => Some(runtime.block_on(budget.reserve(cost))),
            None => None,
        };
        let prepared = prepare(&bytes, &pre, &models.image_limits, keep_rgb)?;
        // The uploaded bytes are the recorded input; hashed only when there is a patient.
        let digest = digest.then(|| medchain_core::audit::sha256(&bytes));
        drop(bytes);
        drop(hold);
        Ok((prepared, digest))
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("preprocessing task failed: {e}")))?
}
