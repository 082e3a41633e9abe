//! `GET /readyz` of the gateway: every upstream asked, at the time of the call.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use medchain_core::auth::{Calling, INTERNAL_TOKEN_HEADER, Peer, ServiceAuth};
use medchain_core::health::{Check, readiness};

use crate::configuration::SERVICE;
use crate::edge::ClientGate;
use crate::{Gateway, proxy};

/// `GET /readyz`: each upstream asked once (not polled in the background, which would keep
/// free-tier instances awake). Point a platform's health check at `/healthz` instead. It is
/// public, so it is rate-limited like the API (each call wakes the upstreams) and says only
/// which upstream is ready; with the monitor's credential it also says why not and where each
/// is.
pub async fn readyz(
    req: actix_web::HttpRequest,
    g: web::Data<Gateway>,
    gate: web::Data<ClientGate>,
    auth: Option<web::Data<ServiceAuth>>,
) -> Result<HttpResponse, medchain_core::error::ApiError> {
    let detailed = auth.is_some_and(|a| {
        let presented = req
            .headers()
            .get(INTERNAL_TOKEN_HEADER)
            .map(|v| v.as_bytes());
        matches!(
            a.identify(presented),
            Some(Calling::Peer(Peer::Monitor) | Calling::Anyone)
        )
    });
    if !detailed {
        gate.limit(&req)?;
    }
    let t = Duration::from_millis(g.timeouts.readiness_timeout_ms);
    let (d, h, c) = tokio::join!(
        proxy::ready(&g.proxy, &g.diabetes, t),
        proxy::ready(&g.proxy, &g.heart, t),
        proxy::ready(&g.proxy, &g.chain, t),
    );
    let check = |name: &str, (ok, detail): (bool, String)| Check {
        name: name.into(),
        ok,
        detail: if detailed {
            detail
        } else if ok {
            "ready".into()
        } else {
            "not ready".into()
        },
    };
    Ok(readiness(
        SERVICE,
        vec![
            check("diabetes-svc", d),
            check("heart-svc", h),
            check("chain-svc", c),
        ],
    ))
}
