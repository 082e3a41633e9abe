//! The routes of a disease service, one file each. All but `/readyz` are mounted behind the
//! internal token (only the gateway may call them).

use std::sync::Arc;

use actix_web::web;

use crate::state::DiseaseModels;

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
        .route("/models", web::get().to(models::models))
        .configure(crate::v2::mount);
}
