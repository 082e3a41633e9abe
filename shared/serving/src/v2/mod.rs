//! The Open Inference Protocol (KServe's V2 protocol, as Triton and MLServer speak it) on a
//! disease service, behind the same internal token as every other route:
//! - `GET /v2/health/live`, `GET /v2/health/ready`, `GET /v2` (server metadata);
//! - `GET /v2/models/{name}[/versions/{v}]` (model metadata, from the card) and `…/ready`
//!   (ready only when loaded);
//! - `POST /v2/models/{name}[/versions/{v}]/infer`: JSON tensors and the binary tensor data
//!   extension ([`binary`]), the raw model tensor or, for an image model, the encoded file as
//!   a `BYTES` input ([`infer`]);
//! - the model repository extension: `POST /v2/repository/index`,
//!   `POST /v2/repository/models/{name}/load` and `…/unload` ([`repository`]).
//!
//! A model's name is `<disease>-<key>` (`diabetes-tabular`, `heart-ecg`): stable whichever
//! variant of the model the card configures; its one version is the card's. Errors are the
//! protocol's `{"error": "…"}` ([`error`]).

use actix_web::web;

use crate::state::DiseaseModels;

pub mod binary;
mod error;
mod infer;
mod meta;
mod repository;
pub mod tensor;
pub mod wire;

pub use error::V2Error;

/// The header the binary tensor data extension adds: where the body's JSON ends.
pub const HEADER_LENGTH: &str = medchain_core::contract::INFERENCE_HEADER_CONTENT_LENGTH;

/// The extensions this server speaks, as `GET /v2` lists them.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data", "model_repository", "parameters"];

pub use crate::settings::V2Settings;

/// Mounts the V2 routes (call inside the internal-token scope).
pub fn mount(cfg: &mut web::ServiceConfig) {
    cfg.route("/v2", web::get().to(meta::server))
        .route("/v2/health/live", web::get().to(meta::live))
        .route("/v2/health/ready", web::get().to(meta::ready))
        .route("/v2/models/{name}", web::get().to(meta::model))
        .route(
            "/v2/models/{name}/versions/{version}",
            web::get().to(meta::model),
        )
        .route("/v2/models/{name}/ready", web::get().to(meta::model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            web::get().to(meta::model_ready),
        )
        .route("/v2/models/{name}/infer", web::post().to(infer::infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            web::post().to(infer::infer),
        )
        .route("/v2/repository/index", web::post().to(repository::index))
        .route(
            "/v2/repository/models/{name}/load",
            web::post().to(repository::load),
        )
        .route(
            "/v2/repository/models/{name}/unload",
            web::post().to(repository::unload),
        );
}

/// The model a request names: its name and, when given, the version.
#[derive(Debug, serde::Deserialize)]
pub struct ModelPath {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
}

/// The V2 name of one of the service's models.
pub fn model_name(models: &DiseaseModels, key: &str) -> String {
    format!("{}-{key}", models.disease)
}

/// The model `path` names, with its card; 404 for an unknown name or another version.
pub fn resolve<'a>(
    models: &'a DiseaseModels,
    path: &ModelPath,
) -> Result<&'a std::sync::Arc<crate::model::LazyModel>, V2Error> {
    let model = models
        .all()
        .into_iter()
        .find(|m| model_name(models, m.key()) == path.name)
        .ok_or_else(|| {
            let names: Vec<String> = models
                .all()
                .iter()
                .map(|m| format!("`{}`", model_name(models, m.key())))
                .collect();
            V2Error::not_found(format!(
                "unknown model `{}`; this server serves {}",
                path.name,
                names.join(" and ")
            ))
        })?;
    if let Some(v) = &path.version {
        let card = model.card().map_err(V2Error::from)?;
        if *v != card.version {
            return Err(V2Error::not_found(format!(
                "model `{}` has no version `{v}`; its version is `{}`",
                path.name, card.version
            )));
        }
    }
    Ok(model)
}
