//! Health, server metadata and model metadata: `GET /v2/health/{live,ready}`, `GET /v2`,
//! `GET /v2/models/{name}[/versions/{v}]` and `…/ready`.

use actix_web::{HttpResponse, web};

use super::wire::{ModelMetadata, ServerMetadata, TensorMetadata};
use super::{EXTENSIONS, ModelPath, V2Error, model_name, resolve};
use crate::card::{Modality, ModelCard};
use crate::model::ModelState;
use crate::state::DiseaseModels;

/// The `BYTES` input of an image model: the encoded file (JPEG, PNG), decoded and preprocessed
/// by the service as an upload is.
pub const IMAGE_BYTES_INPUT: &str = "image_bytes";

/// The output an image model's logits are turned into, as the JSON API turns them.
pub const PROBABILITIES: &str = "probabilities";

/// `GET /v2/health/live`: the process answers.
pub(super) async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "live": true }))
}

/// `GET /v2/health/ready`: what `/readyz` checks (the ONNX Runtime library and both model
/// files present and not known to mismatch their cards); loads nothing.
pub(super) async fn ready(models: web::Data<DiseaseModels>) -> HttpResponse {
    let ready = models.runtime.library_present().is_ok()
        && models.all().iter().all(|m| m.readiness().is_ok());
    if ready {
        HttpResponse::Ok().json(serde_json::json!({ "ready": true }))
    } else {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({ "ready": false }))
    }
}

/// `GET /v2`.
pub(super) async fn server(models: web::Data<DiseaseModels>) -> HttpResponse {
    HttpResponse::Ok().json(ServerMetadata {
        name: models.service,
        version: models.version,
        extensions: EXTENSIONS,
    })
}

/// `GET /v2/models/{name}[/versions/{v}]`: from the card.
pub(super) async fn model(
    models: web::Data<DiseaseModels>,
    path: web::Path<ModelPath>,
) -> Result<HttpResponse, V2Error> {
    let m = resolve(&models, &path)?;
    let card = m.card()?;
    let (inputs, outputs) = signature(card);
    Ok(HttpResponse::Ok().json(ModelMetadata {
        name: model_name(&models, m.key()),
        versions: vec![card.version.clone()],
        platform: "onnxruntime_onnx",
        inputs,
        outputs,
    }))
}

/// `GET /v2/models/{name}[/versions/{v}]/ready`: 200 only while the model is loaded; 503 while
/// it is not (its next inference, or a repository load, loads it).
pub(super) async fn model_ready(
    models: web::Data<DiseaseModels>,
    path: web::Path<ModelPath>,
) -> Result<HttpResponse, V2Error> {
    let m = resolve(&models, &path)?;
    let name = model_name(&models, m.key());
    let status = m.status();
    let ready = status.state == ModelState::Ready;
    let body = serde_json::json!({ "name": name, "ready": ready });
    Ok(if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    })
}

/// The protocol's name of a card's dtype.
pub fn datatype(dtype: &str) -> &'static str {
    match dtype {
        "float64" => "FP64",
        "int64" => "INT64",
        "int32" => "INT32",
        _ => "FP32",
    }
}

/// The tensors a model takes and gives over V2: the card's input (and, for an image model,
/// the encoded file as `BYTES`), the card's outputs (and, for an image model without one,
/// the class probabilities).
pub fn signature(card: &ModelCard) -> (Vec<TensorMetadata>, Vec<TensorMetadata>) {
    let tensor = |t: &crate::card::TensorSpec| TensorMetadata {
        name: t.name.clone(),
        datatype: datatype(&t.dtype),
        shape: t.shape.clone(),
    };
    let mut inputs = vec![tensor(&card.input)];
    let mut outputs: Vec<TensorMetadata> = card.outputs.iter().map(tensor).collect();
    if card.modality == Modality::Image {
        inputs.push(TensorMetadata {
            name: IMAGE_BYTES_INPUT.into(),
            datatype: "BYTES",
            shape: vec![-1],
        });
        if !outputs.iter().any(|o| o.name == PROBABILITIES) {
            outputs.push(TensorMetadata {
                name: PROBABILITIES.into(),
                datatype: "FP32",
                shape: vec![-1, card.classes.len() as i64],
            });
        }
    }
    (inputs, outputs)
}
