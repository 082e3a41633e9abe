//! The model repository extension: `POST /v2/repository/index` lists the service's models
//! and their state; `…/models/{name}/load` loads one as its first inference would (the same
//! single-flight load: hash, tensor and memory checks); `…/unload` frees its ONNX Runtime
//! session once the requests running on it are done.

use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::wire::IndexEntry;
use super::{ModelPath, V2Error, model_name, resolve};
use crate::model::ModelState;
use crate::state::DiseaseModels;

/// The index request's body (optional): `{"ready": true}` lists only loaded models.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

/// `POST /v2/repository/index`.
pub(super) async fn index(
    models: web::Data<DiseaseModels>,
    body: web::Bytes,
) -> Result<HttpResponse, V2Error> {
    let request: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| V2Error::bad(format!("the index request is not valid: {e}")))?
    };
    let entries: Vec<IndexEntry> = models
        .all()
        .into_iter()
        .map(|m| {
            let s = m.status();
            IndexEntry {
                name: model_name(&models, m.key()),
                version: s.version.clone(),
                state: match s.state {
                    ModelState::Ready => "READY",
                    ModelState::Loading => "LOADING",
                    ModelState::Unloaded => "UNAVAILABLE",
                    ModelState::Failed => "FAILED",
                },
                reason: s.reason.unwrap_or_default(),
            }
        })
        .filter(|e| !request.ready || e.state == "READY")
        .collect();
    Ok(HttpResponse::Ok().json(entries))
}

/// `POST /v2/repository/models/{name}/load`: returns once loaded (200), or with the load's
/// failure (503 with `Retry-After`, as an inference would get).
pub(super) async fn load(
    models: web::Data<DiseaseModels>,
    path: web::Path<ModelPath>,
) -> Result<HttpResponse, V2Error> {
    let m = resolve(&models, &path)?;
    m.load_now().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({})))
}

/// `POST /v2/repository/models/{name}/unload`: returns once the session is freed (the
/// requests running on it finish first). Unloading a model that is not loaded is not an error.
pub(super) async fn unload(
    models: web::Data<DiseaseModels>,
    path: web::Path<ModelPath>,
) -> Result<HttpResponse, V2Error> {
    let m = resolve(&models, &path)?;
    let waited_for = m.unload_and_wait().await;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "unloaded": waited_for.is_some(),
        "waited_for_requests": waited_for.unwrap_or(0),
    })))
}
