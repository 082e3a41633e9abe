//! The gateway's routes: the public API's table ([`table`]), each route served by
//! [`proxied`]; `whoami`; and the gateway's own readiness.

use actix_web::{HttpRequest, HttpResponse, web};
use medchain_core::error::ApiError;

use crate::Gateway;

mod proxied;
mod ready;
pub mod table;
mod whoami;

pub use ready::readyz;
pub use table::{Kind, ROUTES, Route, UpstreamKey};

/// Mounts every route of the table (inside `/api/v1`), and the OpenAPI document.
pub fn register(cfg: &mut web::ServiceConfig) {
    cfg.route("/openapi.json", web::get().to(crate::page::openapi));
    cfg.route("/whoami", web::get().to(whoami::whoami));
    for route in ROUTES {
        let method = match route.method {
            "GET" => web::get(),
            _ => web::post(),
        };
        cfg.route(
            route.path,
            method.to(
                move |req: HttpRequest, payload: web::Payload, g: web::Data<Gateway>| {
                    proxied::handle(route, req, payload, g)
                },
            ),
        );
    }
    cfg.default_service(web::to(|req: HttpRequest| async move {
        Err::<HttpResponse, _>(ApiError::NotFound(format!(
            "no public route {} {}; see /api/v1/openapi.json",
            req.method(),
            req.path()
        )))
    }));
}
