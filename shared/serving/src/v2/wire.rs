//! The protocol's JSON documents: inference requests and responses, server and model
//! metadata. Tensor contents are [`crate::v2::tensor`]'s.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::tensor::JsonData;

/// A request's or response's `parameters`: names to strings, numbers or booleans.
pub type Parameters = Map<String, Value>;

/// `POST …/infer`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Parameters,
    pub inputs: Vec<RequestInput>,
    /// The outputs wanted; all of the model's when absent.
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
}

/// One input tensor: its data in `data`, or (binary extension) `parameters.binary_data_size`
/// bytes after the JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Parameters,
    #[serde(default)]
    pub data: Option<JsonData>,
}

/// One output wanted; `parameters.binary_data` asks for it as binary data.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Parameters,
}

/// The answer to an inference.
#[derive(Debug, Serialize)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub parameters: Parameters,
    pub outputs: Vec<ResponseOutput>,
}

/// One output tensor: its data in `data`, or its size in `parameters.binary_data_size` and
/// the bytes after the JSON.
#[derive(Debug, Serialize)]
pub struct ResponseOutput {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
    #[serde(skip_serializing_if = "Parameters::is_empty")]
    pub parameters: Parameters,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// `GET /v2`.
#[derive(Debug, Serialize)]
pub struct ServerMetadata {
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: &'static [&'static str],
}

/// `GET /v2/models/{name}`.
#[derive(Debug, Serialize)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: &'static str,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// A tensor the model takes or gives; `-1` marks a dimension of any size.
#[derive(Debug, Clone, Serialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

/// One entry of `POST /v2/repository/index`.
#[derive(Debug, Serialize)]
pub struct IndexEntry {
    pub name: String,
    pub version: Option<String>,
    /// `READY`, `UNAVAILABLE` (not loaded), `LOADING` or `FAILED`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}
