//! The library every medchain service uses: settings, telemetry, errors, health and metrics,
//! the internal-token check and process memory figures. It knows no service.

pub mod audit;
pub mod auth;
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
