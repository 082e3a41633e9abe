//! gateway: the only public front. Serves the web page and the public API under `/api/v1/`,
//! proxying each route to its upstream (diabetes-svc, heart-svc, chain-svc) with streamed
//! bodies, per-route limits and timeouts, round-robin with passive health over every instance (an
//! upstream's DNS name resolved to all of its addresses, each with kept-alive connections), a credential per upstream,
//! request ids, CORS, per-client rate limits and optional API keys. No business logic.

pub mod callers;
pub mod edge;
pub mod oidc;
pub mod page;
pub mod proxy;
pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use actix_web::middleware::from_fn;
use actix_web::{App, HttpResponse, web};
use medchain_core::auth::{Calling, INTERNAL_TOKEN_HEADER, Peer, ServiceAuth};
use medchain_core::health::{Check, readiness};
use medchain_core::request::request_context;
use medchain_core::server::{Application, Common};
use medchain_core::settings::{
    self, AuthSettings, ServerSettings, SettingsError, TelemetrySettings,
};
use serde::Deserialize;

use crate::edge::{ClientGate, cors_and_limits};
use crate::proxy::{Proxy, Upstream};
use crate::routes::{ROUTES, UpstreamKey};

const SERVICE: &str = "gateway";
const ENV_PREFIX: &str = "GATEWAY";

/// All settings of the gateway (see `config/default.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub telemetry: TelemetrySettings,
    pub auth: AuthSettings,
    pub upstreams: UpstreamsSettings,
    pub proxy: ProxySettings,
    pub limits: LimitSettings,
    pub clients: ClientSettings,
}

/// Base URLs of each upstream's instances.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamsSettings {
    pub diabetes: Vec<String>,
    pub heart: Vec<String>,
    pub chain: Vec<String>,
}

/// Timeouts and passive health.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    pub connect_timeout_ms: u64,
    pub tabular_timeout_ms: u64,
    pub image_timeout_ms: u64,
    pub read_timeout_ms: u64,
    pub wake_grace_ms: u64,
    pub sleep_after_secs: u64,
    pub eject_secs: u64,
    pub readiness_timeout_ms: u64,
    /// Keep connections to upstreams alive (a pool per instance address).
    pub reuse_connections: bool,
    /// How often an upstream given as a plain-http DNS name is looked up again, each address
    /// it lists becoming an instance; 0: never (the name is then one instance, resolved by
    /// each new connection).
    pub resolve_secs: u64,
}

/// Body size limits per kind of route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub tabular_max_bytes: usize,
    pub image_max_bytes: usize,
    pub verify_max_bytes: usize,
}

/// Who may call the public API, and how often.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    /// Origins (scheme://host[:port]) of web frontends hosted elsewhere; the gateway's own
    /// page needs none.
    pub cors_origins: Vec<String>,
    /// Requests per second per client, and the burst above it.
    pub rate_per_second: std::num::NonZeroU32,
    pub rate_burst: std::num::NonZeroU32,
    /// Proxies in front of the gateway that append to `X-Forwarded-For` (Render: 1). The
    /// client is the entry that many from the right; 0: the peer address, the header ignored.
    pub trusted_proxy_hops: usize,
    /// Callers' API keys, `id:role:sha256hex` each (`gateway new-key <role> <id>` makes
    /// one). Every route under `/api/v1/` but the OpenAPI document needs one.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Bearer tokens from an identity provider (OIDC), besides the keys.
    pub oidc: crate::oidc::OidcSettings,
}

fn invalid(key: &str, reason: impl Into<String>) -> SettingsError {
    SettingsError::invalid(ENV_PREFIX, key, reason)
}

impl Settings {
    /// Embedded defaults → `GATEWAY_CONFIG` file → `GATEWAY__*` env vars (lists comma
    /// separated); validated.
    pub fn load() -> Result<Self, SettingsError> {
        let s: Self = settings::load(
            include_str!("../config/default.toml"),
            ENV_PREFIX,
            &[
                "upstreams.diabetes",
                "upstreams.heart",
                "upstreams.chain",
                "clients.cors_origins",
                "clients.keys",
                "clients.oidc.role_map",
            ],
        )?;
        let mut s = s;
        // `host:port` (what Render's `fromService … property: hostport` gives) means plain http.
        for urls in [
            &mut s.upstreams.diabetes,
            &mut s.upstreams.heart,
            &mut s.upstreams.chain,
        ] {
            for u in urls.iter_mut() {
                if !u.contains("://") {
                    *u = format!("http://{u}");
                }
            }
        }
        s.validate()?;
        Ok(s)
    }

    /// Checks that cannot be expressed in types.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.auth.validate(
            ENV_PREFIX,
            &self.server,
            &[Peer::Monitor],
            &[Peer::Diabetes, Peer::Heart, Peer::Chain],
        )?;
        for (key, urls, peer) in [
            (
                "upstreams.diabetes",
                &self.upstreams.diabetes,
                Peer::Diabetes,
            ),
            ("upstreams.heart", &self.upstreams.heart, Peer::Heart),
            ("upstreams.chain", &self.upstreams.chain, Peer::Chain),
        ] {
            if urls.is_empty() {
                return Err(invalid(key, "needs at least one URL"));
            }
            // Beyond loopback an upstream takes no call without the gateway's credential.
            if self.auth.send.get(peer).is_none()
                && let Some(u) = urls.iter().find(|u| !settings::url_is_loopback(u))
            {
                return Err(invalid(
                    &format!("auth.send.{peer}"),
                    format!(
                        "required: {u} is not on loopback, and {peer} takes no call without \
                         the gateway's credential (docs/security.md)"
                    ),
                ));
            }
            for u in urls {
                let ok = (u.starts_with("http://") || u.starts_with("https://"))
                    && reqwest::Url::parse(u).is_ok();
                if !ok {
                    return Err(invalid(key, format!("`{u}` is not an http(s) URL")));
                }
            }
        }
        for o in &self.clients.cors_origins {
            if reqwest::Url::parse(o).is_err() || o.ends_with('/') {
                return Err(invalid(
                    "clients.cors_origins",
                    format!("`{o}` is not an origin like https://app.example.org"),
                ));
            }
        }
        crate::callers::Callers::from_entries(&self.clients.keys)
            .map_err(|e| invalid("clients.keys", e))?;
        self.clients
            .oidc
            .check()
            .map_err(|e| invalid("clients.oidc", e))?;
        Ok(())
    }
}

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
    let mut builder =
        medchain_core::http::client_builder(Duration::from_millis(p.connect_timeout_ms));
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
            .route("/readyz", web::get().to(readyz))
            .service(
                web::scope("/api/v1")
                    .wrap(from_fn(cors_and_limits))
                    .configure(routes::register),
            )
            .configure(page::register)
    })
}

/// `GET /readyz`: each upstream asked once (not polled in the background, which would keep
/// free-tier instances awake). Point a platform's health check at `/healthz` instead. It is
/// public, so it is rate-limited like the API (each call wakes the upstreams) and says only
/// which upstream is ready; with the monitor's credential it also says why not and where each
/// is.
async fn readyz(
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

/// The routes table, for tests and the OpenAPI check.
pub fn route_table() -> &'static [routes::Route] {
    ROUTES
}
