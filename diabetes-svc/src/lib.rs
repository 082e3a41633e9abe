//! diabetes-svc: diabetes risk predictions from its two models (tabular + retina), each loaded lazily
//! on first use. Everything but the names and defaults lives in `medchain_serving`.

use medchain_core::server::Application;
use medchain_core::settings::SettingsError;
use medchain_serving::{DiseaseSettings, DiseaseSpec};

/// The settings tree (see `config/default.toml`).
pub type Settings = DiseaseSettings;

/// What makes this service diabetes-svc.
pub const SPEC: DiseaseSpec = DiseaseSpec {
    service: "diabetes-svc",
    disease: "diabetes",
    env_prefix: "DIABETES",
    image_route: "retina",
    defaults: include_str!("../config/default.toml"),
    version: env!("CARGO_PKG_VERSION"),
};

/// Loads and validates the settings.
pub fn load_settings() -> Result<Settings, SettingsError> {
    DiseaseSettings::load(&SPEC)
}

/// Builds the server (bound, models not loaded).
pub fn build(settings: Settings) -> std::io::Result<Application> {
    medchain_serving::build(SPEC, settings)
}
