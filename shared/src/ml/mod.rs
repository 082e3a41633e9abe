//! Model serving (feature `ml`, enabled only by the disease services): model cards, the lazy
//! ONNX Runtime model holder, input validation and image preprocessing, and the prediction
//! endpoints both disease services mount.

pub mod audit;
pub mod budget;
pub mod card;
pub mod image;
pub mod jpeg;
pub mod model;
pub mod remote;
pub mod resample;
pub mod routes;
pub mod runtime;
pub mod service;
pub mod tabular;
pub mod upload;
