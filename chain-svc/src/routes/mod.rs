//! chain-svc's routes: records written by the disease services; records, per-patient
//! listings, verification and recorders read for the gateway; and readiness.

use actix_web::middleware::from_fn;
use actix_web::web;
use medchain_core::auth::{Peer, only};

mod ready;
pub mod recorders;
pub mod records;
pub mod views;

pub use ready::{Readiness, readyz};
pub use records::{RecordLimits, RecordsState};

/// Mounts readiness and the record routes, each behind the peers that may call it.
pub fn mount(cfg: &mut web::ServiceConfig) {
    cfg.route("/readyz", web::get().to(readyz))
        // Writing: the disease services (each its own disease). Reading: the gateway, on
        // behalf of the caller it names.
        .service(
            web::resource("/v1/records")
                .wrap(from_fn(only(&[Peer::Diabetes, Peer::Heart])))
                .route(web::post().to(records::accept)),
        )
        .service(
            web::scope("")
                .wrap(from_fn(only(&[Peer::Gateway])))
                .route("/v1/records/{id}", web::get().to(records::get))
                .route("/v1/records/{id}/verify", web::post().to(records::verify))
                .route("/v1/patients/records", web::post().to(records::by_patient))
                .route("/v1/recorders/{address}", web::get().to(recorders::status))
                .route("/v1/recorders/{address}", web::post().to(recorders::change)),
        );
}
