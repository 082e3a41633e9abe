//! What every medchain service needs exactly once: settings, telemetry, errors, health and
//! metrics, the service credentials, request ids, process memory figures and the typed
//! contracts between the services (`contract`). The model-serving stack of the disease
//! services is the sibling crate `medchain-serving` (`shared/serving`).

pub mod audit;
pub mod auth;
pub mod contract;
pub mod domain;
pub mod error;
pub mod health;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod request;
pub mod server;
pub mod settings;
pub mod telemetry;

pub use error::{ApiError, ApiResult};
