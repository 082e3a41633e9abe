//! A disease service, assembled from its settings: its state (nothing loaded) and its HTTP
//! application.

use std::sync::Arc;

use actix_web::middleware::from_fn;
use actix_web::{App, web};

use crate::budget::{Budget, UploadBuffer};
use crate::chain::AuditClient;
use crate::model::ModelSettings;
use crate::routes;
use crate::settings::{DiseaseSettings, DiseaseSpec};
use crate::state::DiseaseModels;
use medchain_core::auth::{Peer, only};
use medchain_core::request::request_context;
use medchain_core::server::{Application, Common};

/// Builds the service's models (nothing is loaded) and its server.
pub fn build(spec: DiseaseSpec, settings: DiseaseSettings) -> std::io::Result<Application> {
    let model = |key: &str, s: &ModelSettings| Arc::new(settings.lazy_model(key, s));
    let models = Arc::new(DiseaseModels {
        service: spec.service,
        version: spec.version,
        disease: spec.disease,
        tabular: model("tabular", &settings.models.tabular),
        image: model(spec.image_route, &settings.models.image),
        image_route: spec.image_route,
        image_limits: settings.images.clone(),
        runtime: settings.runtime.clone(),
        decode_slots: Arc::new(tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        )),
        decode_budget: Budget::new(settings.images.decode_budget_mb.get()),
        upload_buffer: UploadBuffer::new(settings.images.buffer_mb.get()),
        audit: AuditClient::new(
            &settings.chain,
            settings.auth.send.get(Peer::Chain).cloned(),
        ),
        v2: settings.v2.clone(),
    });
    if tokio::runtime::Handle::try_current().is_ok() {
        models.spawn_watchers();
    }
    let common = Common::new(
        spec.service,
        spec.version,
        &spec.env_prefix.to_ascii_lowercase(),
        &settings.auth,
        &settings.server,
    );
    let hook = web::Data::new(models.scrape_hook());
    Application::build(&settings.server, move || {
        let common = common.clone();
        let models = models.clone();
        let hook = hook.clone();
        let guarded = models.clone();
        App::new()
            .wrap(from_fn(request_context))
            .configure(move |cfg| common.register(cfg))
            .app_data(web::Data::from(models))
            .app_data(hook)
            .route("/readyz", web::get().to(routes::readyz))
            .service(
                web::scope("")
                    // Only the gateway: another disease service has no business here.
                    .wrap(from_fn(only(&[Peer::Gateway])))
                    .configure(move |cfg| routes::mount(&guarded, cfg)),
            )
    })
}
