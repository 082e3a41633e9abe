//! The operator's routes: `POST /v1/warmup` and `POST /v1/unload`.

use actix_web::{HttpResponse, web};

use crate::state::DiseaseModels;

/// `POST /v1/unload`: drops both models' sessions (an operator freeing memory, or making the
/// next request load a changed file); each loads again on its next request.
pub(super) async fn unload(models: web::Data<DiseaseModels>) -> HttpResponse {
    let models: Vec<serde_json::Value> = models
        .all()
        .into_iter()
        .map(|m| {
            let running = m.unload();
            serde_json::json!({
                "key": m.key(),
                "unloaded": running.is_some(),
                // Requests that finish on the session they hold; it is freed after them.
                "finishing": running.unwrap_or(0),
            })
        })
        .collect();
    HttpResponse::Ok().json(serde_json::json!({ "models": models }))
}

/// `POST /v1/warmup`: starts loading both models in the background; returns at once.
pub(super) async fn warmup(models: web::Data<DiseaseModels>) -> HttpResponse {
    for m in models.all() {
        m.warm_up();
    }
    HttpResponse::Accepted().json(serde_json::json!({
        "status": "warming",
        "models": models.all().iter().map(|m| m.key()).collect::<Vec<_>>(),
    }))
}
