//! `POST /v1/predict/{retina|ecg}`: a multipart upload of one image.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};

use crate::card::Preprocessing;
use crate::inputs::image::{self as input, IMAGE_FIELD, Prepared, prepare};
use crate::inputs::tabular::TensorData;
use crate::prediction::{ImageInfo, Prediction, softmax};
use crate::state::DiseaseModels;
use crate::upload::{self, Upload};
use medchain_core::domain::PatientId;
use medchain_core::error::{ApiError, ApiResult};

/// `POST /v1/predict/{retina|ecg}`: multipart with an `image` file and optional `patient_id`.
pub(super) async fn predict(
    req: HttpRequest,
    models: web::Data<DiseaseModels>,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let model = &models.image;
    let card = model.card()?.clone();
    // The body first, its bytes reserved as they arrive; the place in the model's queue only
    // once it is all in, so that slow senders hold neither (and a refusal is read, not reset).
    let upload = upload::read(&req, payload, &models.image_limits, &models.upload_buffer).await?;
    let permit = model.admit()?;
    let pre = card
        .preprocessing
        .clone()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("image card without preprocessing")))?;
    let (prepared, audit_input) = decode(models.clone().into_inner(), upload, pre).await?;
    let info = ImageInfo {
        format: prepared.format,
        width: prepared.original_width,
        height: prepared.original_height,
        decode_scale: prepared.decode_scale,
    };
    let shape = vec![1, 3, i64::from(prepared.height), i64::from(prepared.width)];
    let output = card.logits_output().unwrap_or("logits").to_string();
    let (logits, ms) = super::infer(
        model,
        &permit,
        shape,
        TensorData::F32(prepared.tensor),
        card.input.name.clone(),
        output,
    )
    .await?;
    drop(permit);
    let p = Prediction::new(&card, softmax(&logits), ms, Some(info))?;
    let p = super::record(&req, &models, p, audit_input).await;
    Ok(HttpResponse::Ok().json(p))
}

/// Decodes and preprocesses an upload off the async threads, holding one of the service's
/// decode slots and, before decoding starts, what the decode will hold of its decode budget.
/// Returns the model's input and, when the upload named a patient, the patient id with the
/// upload's digest (the recorded input).
async fn decode(
    models: Arc<DiseaseModels>,
    upload: Upload,
    pre: Preprocessing,
) -> ApiResult<(Prepared, Option<(PatientId, [u8; 32])>)> {
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
        let Upload {
            image: bytes,
            patient_id,
            hold,
        } = upload;
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
        let prepared = prepare(&bytes, &pre, &models.image_limits)?;
        // The uploaded bytes are the recorded input; hashed only when there is a patient.
        let audit_input = patient_id.map(|pid| (pid, medchain_core::audit::sha256(&bytes)));
        drop(bytes);
        drop(hold);
        Ok((prepared, audit_input))
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("preprocessing task failed: {e}")))?
}
