//! `POST /v1/predict/{retina|ecg}`: a multipart upload of one image.

use actix_web::{HttpRequest, HttpResponse, web};

use crate::inference::decode;
use crate::inputs::tabular::TensorData;
use crate::prediction::{ImageInfo, Prediction, softmax};
use crate::state::DiseaseModels;
use crate::upload::{self, Upload};
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
    let Upload {
        image,
        patient_id,
        hold,
    } = upload;
    let digest = patient_id.is_some();
    let (prepared, digest) =
        decode(models.clone().into_inner(), image, Some(hold), pre, digest).await?;
    let audit_input = patient_id.zip(digest);
    let info = ImageInfo {
        format: prepared.format,
        width: prepared.original_width,
        height: prepared.original_height,
        decode_scale: prepared.decode_scale,
    };
    let shape = vec![1, 3, i64::from(prepared.height), i64::from(prepared.width)];
    let output = card.logits_output().unwrap_or("logits").to_string();
    let (logits, ms) = crate::inference::run_one(
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
    let p = crate::inference::record(&req, &models, p, audit_input).await;
    Ok(HttpResponse::Ok().json(p))
}
