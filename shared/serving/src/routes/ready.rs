//! `GET /readyz`, open to the platform's probes: nothing it checks loads a model.

use actix_web::{HttpResponse, web};

use crate::state::DiseaseModels;
use medchain_core::health::{Check, readiness};

/// `GET /readyz`: settings valid, the ONNX Runtime library present, both model files present
/// with the card's size and not known to mismatch its hash (hashed in the background once per
/// file version, never waited for). Loads nothing.
pub async fn readyz(models: web::Data<DiseaseModels>) -> HttpResponse {
    let library = models.runtime.library_present();
    let mut checks = vec![Check {
        name: "onnxruntime_library".into(),
        ok: library.is_ok(),
        detail: match library {
            Ok(()) => models.runtime.library().display().to_string(),
            Err(e) => e.to_string(),
        },
    }];
    for m in models.all() {
        let result = m.readiness();
        checks.push(Check {
            name: format!("model_{}", m.key()),
            ok: result.is_ok(),
            detail: result.unwrap_or_else(|e| e.to_string()),
        });
    }
    readiness(models.service, checks)
}
