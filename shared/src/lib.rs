//! The library every medchain service uses: settings, telemetry, errors, health and metrics,
//! the service credentials, process memory figures and the typed contracts between the services
//! (`contract`); with the `ml` feature, the model-serving stack of the disease services
//! (`ml`).

pub mod audit;
pub mod auth;
pub mod contract;
pub mod error;
pub mod health;
pub mod http;
pub mod memory;
pub mod metrics;
#[cfg(feature = "ml")]
pub mod ml;
pub mod request;
pub mod server;
pub mod settings;
pub mod telemetry;

pub use error::{ApiError, ApiResult};
