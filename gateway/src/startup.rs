//! The gateway, assembled from its settings: the upstreams and their client, the callers'
//! gate, and the HTTP application.

use std::sync::Arc;
use std::time::Duration;

use actix_web::middleware::from_fn;
use actix_web::{App, web};
use medchain_core::auth::Peer;
use medchain_core::request::request_context;
use medchain_core::server::{Application, Common};

use crate::configuration::{LimitSettings, ProxySettings, SERVICE, Settings};
use crate::edge::{ClientGate, cors_and_limits};
use crate::page;
use crate::proxy::{self, Proxy, Upstream};
use crate::routes::{self, UpstreamKey};

/// What the handlers share.
#[derive(Debug)]
pub struct Gateway {
    pub proxy: Proxy,
    pub diabetes: Upstream,
    pub heart: Upstream,
    pub chain: Upstream,
    pub limits: LimitSettings,
    pub timeouts: ProxySettings,
}

impl Gateway {
    /// The upstream behind `key`.
    pub fn upstream(&self, key: UpstreamKey) -> &Upstream {
        match key {
            UpstreamKey::Diabetes => &self.diabetes,
            UpstreamKey::Heart => &self.heart,
            UpstreamKey::Chain => &self.chain,
        }
    }
}

/// Builds the server (bound, not yet running).
pub fn build(settings: Settings) -> std::io::Result<Application> {
    build_with(settings, Arc::new(proxy::SystemResolver))
}

/// The same, with upstream names looked up by `resolver` (tests give several loopback
/// addresses to one name).
pub fn build_with(
    settings: Settings,
    resolver: Arc<dyn proxy::Resolve>,
) -> std::io::Result<Application> {
    let p = &settings.proxy;
    let eject = Duration::from_secs(p.eject_secs);
    // An upstream's redirect is the client's to follow, not the gateway's (which would carry
    // the caller's request, and the gateway's credential, wherever it pointed); not following
    // also skips reqwest's redirect layer, 4.8% of the gateway's instructions a request.
    let mut builder =
        medchain_core::http::client_builder(Duration::from_millis(p.connect_timeout_ms))
            .redirect(reqwest::redirect::Policy::none());
    if !p.reuse_connections {
        builder = builder.pool_max_idle_per_host(0);
    }
    let client = builder.build().map_err(std::io::Error::other)?;
    let send = |p: Peer| settings.auth.send.get(p).cloned();
    let gateway = Arc::new(Gateway {
        proxy: Proxy {
            client,
            wake_grace: Duration::from_millis(p.wake_grace_ms),
            sleep_after: Duration::from_secs(p.sleep_after_secs),
        },
        diabetes: Upstream::new("diabetes-svc", &settings.upstreams.diabetes, eject)
            .presenting(send(Peer::Diabetes)),
        heart: Upstream::new("heart-svc", &settings.upstreams.heart, eject)
            .presenting(send(Peer::Heart)),
        chain: Upstream::new("chain-svc", &settings.upstreams.chain, eject)
            .presenting(send(Peer::Chain)),
        limits: settings.limits.clone(),
        timeouts: settings.proxy.clone(),
    });
    proxy::spawn_refresh(
        Arc::downgrade(&gateway),
        resolver,
        Duration::from_secs(p.resolve_secs),
    );
    let gate = Arc::new(ClientGate::new(&settings.clients));
    gate.spawn_cleanup();
    let common = Common::new(
        SERVICE,
        env!("CARGO_PKG_VERSION"),
        "gateway",
        &settings.auth,
        &settings.server,
    );
    Application::build(&settings.server, move || {
        let common = common.clone();
        let gateway = web::Data::from(gateway.clone());
        let gate = web::Data::from(gate.clone());
        App::new()
            .wrap(from_fn(request_context))
            .configure(move |cfg| common.register(cfg))
            .app_data(gateway)
            .app_data(gate)
            .app_data(web::PayloadConfig::new(usize::MAX))
            .route("/readyz", web::get().to(routes::readyz))
            .service(
                web::scope("/api/v1")
                    .wrap(from_fn(cors_and_limits))
                    .configure(routes::register),
            )
            .configure(page::register)
    })
}
