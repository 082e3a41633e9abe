//! diabetes-svc: skeleton service (health, readiness, metrics); its domain routes come with their issue.

use actix_web::middleware::from_fn;
use actix_web::{App, HttpResponse, web};
use medchain_shared::health::{Check, readiness};
use medchain_shared::request::request_context;
use medchain_shared::server::{Application, Common};
use medchain_shared::settings::{
    self, AuthSettings, ServerSettings, SettingsError, TelemetrySettings,
};
use serde::Deserialize;

const SERVICE: &str = "diabetes-svc";
const ENV_PREFIX: &str = "DIABETES";

/// All settings of diabetes-svc.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub telemetry: TelemetrySettings,
    pub auth: AuthSettings,
}

impl Settings {
    /// Embedded defaults → `DIABETES_CONFIG` file → `DIABETES__*` env vars; validated.
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
    let common = Common::new(
        SERVICE,
        env!("CARGO_PKG_VERSION"),
        "diabetes",
        &settings.auth,
    );
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
