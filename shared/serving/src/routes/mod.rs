//! The routes of a disease service, one file each. All but `/readyz` are mounted behind the
//! internal token (only the gateway may call them).

use std::sync::Arc;
use std::time::Instant;

use actix_web::{HttpRequest, web};

use crate::inputs::tabular::TensorData;
use crate::model::LazyModel;
use crate::prediction::Prediction;
use crate::state::DiseaseModels;
use medchain_core::domain::PatientId;
use medchain_core::error::{ApiError, ApiResult};
use medchain_core::request::RequestId;

mod admin;
mod image;
mod models;
mod ready;
mod tabular;

pub use ready::readyz;

/// Mounts the guarded routes (call inside the internal-token scope).
pub fn mount(models: &Arc<DiseaseModels>, cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::Data::from(models.clone()))
        .route("/v1/predict/tabular", web::post().to(tabular::predict))
        .route(
            &format!("/v1/predict/{}", models.image_route),
            web::post().to(image::predict),
        )
        .route("/v1/warmup", web::post().to(admin::warmup))
        .route("/v1/unload", web::post().to(admin::unload))
        .route("/v1/cards", web::get().to(models::cards))
        .route("/models", web::get().to(models::models));
}

fn ort_err(what: &'static str) -> impl Fn(ort::Error) -> ApiError {
    move |e| ApiError::Internal(anyhow::anyhow!("{what}: {e}"))
}

/// Runs an input of `shape` through `model` and returns the named (float32) output and the
/// time ONNX Runtime took.
async fn infer(
    model: &LazyModel,
    permit: &tokio::sync::OwnedSemaphorePermit,
    shape: Vec<i64>,
    data: TensorData,
    input: String,
    output: String,
) -> ApiResult<(Vec<f32>, f64)> {
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
            let (_, values) = outputs[output.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(ort_err("output tensor"))?;
            Ok((values.to_vec(), elapsed))
        })
        .await
}

/// Records `p` on chain-svc when the request named a patient (`audit_input`: the patient id
/// and the input's digest), and puts the prediction on the request's span.
async fn record(
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
    p.trace();
    p
}
