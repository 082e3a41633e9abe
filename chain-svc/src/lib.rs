//! chain-svc: owns the audit contract and the signing key. So far: the contract bindings,
//! deterministic deployment and the embedded anvil; the outbox and HTTP API come next.

pub mod anvil;
pub mod chain;
pub mod outbox;
pub mod privacy;
pub mod sender;

use actix_web::middleware::from_fn;
use actix_web::{App, HttpResponse, web};
use medchain_shared::health::{Check, readiness};
use medchain_shared::request::request_context;
use medchain_shared::server::{Application, Common};
use medchain_shared::settings::{
    self, AuthSettings, ServerSettings, SettingsError, TelemetrySettings,
};
use serde::Deserialize;

const SERVICE: &str = "chain-svc";
const ENV_PREFIX: &str = "CHAIN";

/// All settings of chain-svc.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub telemetry: TelemetrySettings,
    pub auth: AuthSettings,
}

impl Settings {
    /// Embedded defaults → `CHAIN_CONFIG` file → `CHAIN__*` env vars; validated.
    pub fn load() -> Result<Self, SettingsError> {
        let s: Self = settings::load(include_str!("../config/default.toml"), ENV_PREFIX, &[])?;
        s.validate()?;
        Ok(s)
    }

    /// Checks that cannot be expressed in types.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.auth.validate(ENV_PREFIX, &self.server)
    }
}

/// Builds the server (bound, not yet running).
pub fn build(settings: Settings) -> std::io::Result<Application> {
    let common = Common::new(SERVICE, env!("CARGO_PKG_VERSION"), "chain", &settings.auth);
    Application::build(&settings.server, move || {
        let common = common.clone();
        App::new()
            .wrap(from_fn(request_context))
            .configure(move |cfg| common.register(cfg))
            .route("/readyz", web::get().to(readyz))
    })
}

async fn readyz() -> HttpResponse {
    readiness(
        SERVICE,
        vec![Check {
            name: "config".into(),
            ok: true,
            detail: "settings loaded and validated".into(),
        }],
    )
}
