//! `POST /v1/predict/{retina|ecg}`: a multipart upload of one image; with `?explain=cam`, also
//! the class activation map of the predicted class (or of `&class=<label>`) and its overlay.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use crate::card::ModelCard;
use crate::explain::{Explained, ExplanationSpec, cam};
use crate::inference::{OutputData, Wanted, decode};
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
    // The query is checked before the body is read: a wrong one costs the caller no upload.
    let explain = explain_request(&req, &card)?;
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
    // The overlay is drawn on the model's input: its RGB8 image is kept only when asked for.
    let (mut prepared, digest) = decode(
        models.clone().into_inner(),
        image,
        Some(hold),
        pre,
        digest,
        explain.is_some(),
    )
    .await?;
    let audit_input = patient_id.zip(digest);
    let info = ImageInfo {
        format: prepared.format,
        width: prepared.original_width,
        height: prepared.original_height,
        decode_scale: prepared.decode_scale,
    };
    let shape = vec![1, 3, i64::from(prepared.height), i64::from(prepared.width)];
    let mut wanted = vec![Wanted {
        name: card.logits_output().unwrap_or("logits").to_string(),
        int64: false,
    }];
    if let Some(e) = &explain {
        wanted.push(Wanted {
            name: e.output.clone(),
            int64: false,
        });
    }
    let kept = prepared
        .rgb
        .take()
        .map(|rgb| (rgb, prepared.width, prepared.height));
    let (outputs, ms) = crate::inference::run(
        model,
        &permit,
        shape,
        TensorData::F32(prepared.tensor),
        card.input.name.clone(),
        wanted,
    )
    .await?;
    drop(permit);
    let mut outputs = outputs.into_iter().map(|(_, data)| data);
    let Some(OutputData::F32(logits)) = outputs.next() else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "the model gave no float32 logits"
        )));
    };
    let mut p = Prediction::new(&card, softmax(&logits), ms, Some(info))?;
    if let (Some(e), Some(OutputData::F32(maps)), Some((rgb, w, h))) =
        (explain, outputs.next(), kept)
    {
        let k = e.class.unwrap_or(p.result.class_index);
        // Milliseconds of work (the overlay is a PNG): off the request threads.
        let internal = |e: String| ApiError::Internal(anyhow::anyhow!("class activation map: {e}"));
        let map = tokio::task::spawn_blocking(move || cam::explain(&card, &maps, k, &rgb, w, h))
            .await
            .map_err(|e| internal(e.to_string()))?
            .map_err(internal)?;
        p.explanation = Some(Explained::Cam(map));
    }
    let p = crate::inference::record(&req, &models, p, audit_input).await;
    Ok(HttpResponse::Ok().json(p))
}

/// `?explain=cam[&class=<label>]`, checked against the card.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainQuery {
    explain: Option<String>,
    class: Option<String>,
}

/// What the query asks for: the map output to read and the class (none: the predicted one).
struct Explain {
    output: String,
    class: Option<usize>,
}

fn explain_request(req: &HttpRequest, card: &ModelCard) -> ApiResult<Option<Explain>> {
    let q = web::Query::<ExplainQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::invalid("explain", format!("bad query string: {e}")))?
        .into_inner();
    match q.explain.as_deref() {
        None if q.class.is_some() => Err(ApiError::invalid(
            "class",
            "`class` names the class to explain: give it with `explain=cam`",
        )),
        None => Ok(None),
        Some("cam") => {
            let Some(ExplanationSpec::Cam { output, .. }) = &card.explanation else {
                return Err(ApiError::invalid(
                    "explain",
                    format!(
                        "model `{}` has no class activation maps (its card names no `cam` output)",
                        card.model_id
                    ),
                ));
            };
            let class = match &q.class {
                None => None,
                Some(label) => Some(
                    card.classes
                        .iter()
                        .position(|c| &c.label == label)
                        .ok_or_else(|| {
                            let labels: Vec<&str> =
                                card.classes.iter().map(|c| c.label.as_str()).collect();
                            ApiError::invalid(
                                "class",
                                format!(
                                    "unknown class `{label}`; expected one of {}",
                                    labels.join(", ")
                                ),
                            )
                        })?,
                ),
            };
            Ok(Some(Explain {
                output: output.clone(),
                class,
            }))
        }
        Some(other) => Err(ApiError::invalid(
            "explain",
            format!("unknown explanation `{other}`; the image models explain with `cam`"),
        )),
    }
}
