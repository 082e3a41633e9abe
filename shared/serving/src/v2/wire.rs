//! The protocol's JSON documents: inference requests and responses, server and model
//! metadata, and a tensor's `data` as sent. Reading tensor contents is [`crate::v2::tensor`]'s.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

/// `data` as sent: nested arrays flattened in row-major order.
#[derive(Debug, Default)]
pub struct JsonData {
    pub(super) numbers: Vec<f64>,
    pub(super) strings: Vec<String>,
    pub(super) bools: usize,
}

impl JsonData {
    pub(super) fn len(&self) -> usize {
        self.numbers.len() + self.strings.len() + self.bools
    }
}

std::thread_local! {
    /// The most `data` elements one request may hold (see [`with_element_limit`]).
    static ELEMENT_LIMIT: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// Runs `parse` with every `data` it reads held to `limit` elements in all, so that a JSON
/// body of small numbers (`0,0,0,…`: 2 bytes each, 8 in memory) is refused while it is read,
/// not after it has grown several times the body. Parsing runs on this thread, start to end.
pub(super) fn with_element_limit<T>(limit: usize, parse: impl FnOnce() -> T) -> T {
    let before = ELEMENT_LIMIT.with(|l| l.replace(limit));
    let out = parse();
    ELEMENT_LIMIT.with(|l| l.set(before));
    out
}

/// Takes one element off the request's allowance; an error once it is spent.
fn take_element<E: de::Error>() -> Result<(), E> {
    ELEMENT_LIMIT.with(|l| match l.get() {
        0 => Err(E::custom(
            "the inputs' data hold more elements than a batch of v2.max_batch of this \
             model takes",
        )),
        n => {
            l.set(n - 1);
            Ok(())
        }
    })
}

impl<'de> serde::Deserialize<'de> for JsonData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut data = JsonData::default();
        d.deserialize_seq(Flatten(&mut data))?;
        Ok(data)
    }
}

/// Pushes every element of a (nested) array into the data.
struct Flatten<'a>(&'a mut JsonData);

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array (possibly nested) of numbers, or of strings for BYTES")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        take_element()?;
        self.0.numbers.push(v);
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        take_element()?;
        self.0.bools += 1;
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        take_element()?;
        self.0.strings.push(v.to_string());
        Ok(())
    }
}
