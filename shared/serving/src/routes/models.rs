//! `GET /v1/cards` and `GET /models`: what the service serves, and in what state. Neither
//! loads a model.

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use serde_json::Value;

use crate::model::LazyModel;
use crate::runtime;
use crate::state::DiseaseModels;

/// `GET /v1/cards`: both model cards (features with units and ranges, classes, preprocessing,
/// provenance, metrics, the demo notice), for forms and model summaries. Loads nothing.
pub(super) async fn cards(models: web::Data<DiseaseModels>) -> HttpResponse {
    let card = |m: &Arc<LazyModel>| match m.card() {
        Ok(c) => serde_json::to_value(c).unwrap_or(Value::Null),
        Err(e) => serde_json::json!({"error": e.to_string()}),
    };
    HttpResponse::Ok().json(serde_json::json!({
        "disease": models.disease,
        "tabular": card(&models.tabular),
        "image": card(&models.image),
        "image_route": models.image_route,
    }))
}

/// `GET /models`: every model's state and figures, and the process's memory.
pub(super) async fn models(models: web::Data<DiseaseModels>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "service": models.service,
        "disease": models.disease,
        "onnxruntime_loaded": runtime::is_loaded(),
        "memory": medchain_core::memory::read(),
        "image_memory": {
            "decode_budget": models.decode_budget.figures(),
            "upload_buffer": models.upload_buffer.figures(),
        },
        "models": models.all().iter().map(|m| m.status()).collect::<Vec<_>>(),
    }))
}
