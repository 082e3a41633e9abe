//! Tabular input validation driven by the model card: every field typed, finite, within the
//! card's range and allowed codes; unknown fields rejected; nullable fields may be null or
//! omitted and reach the model as NaN (XGBoost's missing value).

use std::fmt;

use serde::Deserializer;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::card::{Feature, ModelCard};
use medchain_core::domain::PatientId;
use medchain_core::error::ApiError;

/// Field every prediction request may carry besides the features.
pub const PATIENT_ID: &str = "patient_id";

/// A validated tabular request.
#[derive(Debug, Clone)]
pub struct TabularInput {
    /// Feature vector in the card's order, as sent; NaN for a missing value.
    pub features: Vec<f64>,
    pub patient_id: Option<PatientId>,
}

/// Parses and validates a JSON body against the card's features, straight from the bytes: each
/// field is read into its feature's slot, with no map of `serde_json::Value`s built first
/// (parsing into one and looking the features up in it was 10% of a tabular prediction's
/// instructions in diabetes-svc, callgrind).
pub fn parse(card: &ModelCard, body: &[u8]) -> Result<TabularInput, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the body is empty: send a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let read = Fields(card)
        .deserialize(&mut de)
        .and_then(|read| de.end().map(|()| read));
    match read {
        Ok(read) => read.validate(card),
        Err(e) => {
            // A body that is not an object is found at its first byte: broken JSON further
            // on is still the answer the caller needs first.
            let e = match serde_json::from_slice::<IgnoredAny>(body) {
                Err(syntax) if e.is_data() => syntax,
                _ => e,
            };
            Err(read_error(card, e))
        }
    }
}

/// Validates a JSON value against the card's features (as [`parse`] does for bytes).
pub fn validate(card: &ModelCard, body: &Value) -> Result<TabularInput, ApiError> {
    match Fields(card).deserialize(body) {
        Ok(read) => read.validate(card),
        Err(e) => Err(read_error(card, e)),
    }
}

fn read_error(card: &ModelCard, e: serde_json::Error) -> ApiError {
    if e.is_data() {
        // Every value is accepted as read (and judged later), so a data error is the body
        // itself not being an object.
        ApiError::Invalid {
            detail: format!(
                "the body must be a JSON object with the fields {}",
                field_list(card)
            ),
            field: None,
        }
    } else {
        ApiError::bad_request(format!("malformed JSON: {e}"))
    }
}

/// A body's fields as read, before the card's checks.
struct Read {
    /// By feature, in the card's order.
    features: Vec<Option<Raw>>,
    patient_id: Option<Raw>,
    /// The first field (in the body's order) the card does not know.
    unknown: Option<String>,
    /// The first field the body gives twice.
    twice: Option<String>,
}

/// One field's value as validation needs it: a number, null, or the kind of anything else.
enum Raw {
    Null,
    Number(f64),
    /// Kept only for `patient_id`.
    String(String),
    Other(&'static str),
}

impl Read {
    fn validate(self, card: &ModelCard) -> Result<TabularInput, ApiError> {
        if let Some(key) = self.unknown {
            return Err(ApiError::invalid(
                key.clone(),
                format!("unknown field `{key}`; expected {}", field_list(card)),
            ));
        }
        if let Some(key) = self.twice {
            return Err(ApiError::invalid(
                key.clone(),
                format!("field `{key}` is given more than once"),
            ));
        }
        let patient_id = match self.patient_id {
            None | Some(Raw::Null) => None,
            Some(Raw::String(s)) => Some(PatientId::parse(&s)?),
            Some(Raw::Number(_)) => return Err(not_a_patient_id("a number")),
            Some(Raw::Other(kind)) => return Err(not_a_patient_id(kind)),
        };
        let features = card
            .features
            .iter()
            .zip(&self.features)
            .map(|(f, v)| feature_value(f, v.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TabularInput {
            features,
            patient_id,
        })
    }
}

fn not_a_patient_id(kind: &str) -> ApiError {
    ApiError::invalid(
        PATIENT_ID,
        format!("`{PATIENT_ID}` must be a string, got {kind}"),
    )
}

/// Reads a body's top-level object into a [`Read`].
struct Fields<'c>(&'c ModelCard);

impl<'de> DeserializeSeed<'de> for Fields<'_> {
    type Value = Read;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Read, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = Read;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object of the card's features")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Read, A::Error> {
        let card = self.0;
        let mut read = Read {
            features: card.features.iter().map(|_| None).collect(),
            patient_id: None,
            unknown: None,
            twice: None,
        };
        while let Some(key) = map.next_key_seed(KeyOf(card))? {
            let slot = match key {
                Key::Feature(i) => &mut read.features[i],
                Key::PatientId => &mut read.patient_id,
                Key::Unknown(name) => {
                    read.unknown.get_or_insert(name);
                    map.next_value_seed(RawOf::skip())?;
                    continue;
                }
            };
            let value = map.next_value_seed(RawOf {
                keep_string: matches!(key, Key::PatientId),
            })?;
            if slot.replace(value).is_some() && read.twice.is_none() {
                read.twice = Some(match key {
                    Key::Feature(i) => card.features[i].name.clone(),
                    _ => PATIENT_ID.to_string(),
                });
            }
        }
        Ok(read)
    }
}

enum Key {
    Feature(usize),
    PatientId,
    Unknown(String),
}

/// Resolves a key to its feature without allocating (only an unknown key is copied, for the
/// error).
struct KeyOf<'c>(&'c ModelCard);

impl<'de> DeserializeSeed<'de> for KeyOf<'_> {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyOf<'_> {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        if key == PATIENT_ID {
            return Ok(Key::PatientId);
        }
        Ok(match self.0.features.iter().position(|f| f.name == key) {
            Some(i) => Key::Feature(i),
            None => Key::Unknown(key.to_string()),
        })
    }
}

/// Reads any JSON value as a [`Raw`], skipping the insides of arrays and objects.
struct RawOf {
    keep_string: bool,
}

impl RawOf {
    fn skip() -> Self {
        Self { keep_string: false }
    }
}

impl<'de> DeserializeSeed<'de> for RawOf {
    type Value = Raw;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RawOf {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Raw, E> {
        Ok(Raw::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, x: i64) -> Result<Raw, E> {
        Ok(Raw::Number(x as f64))
    }

    fn visit_u64<E: de::Error>(self, x: u64) -> Result<Raw, E> {
        Ok(Raw::Number(x as f64))
    }

    fn visit_f64<E: de::Error>(self, x: f64) -> Result<Raw, E> {
        Ok(Raw::Number(x))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Raw, E> {
        Ok(if self.keep_string {
            Raw::String(s.to_string())
        } else {
            Raw::Other("a string")
        })
    }

    // Nested values are read as values (not skipped as `IgnoredAny`, which serde_json skips
    // without its nesting limit), so a body nested too deep is refused as broken JSON.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        while seq.next_element_seed(RawOf::skip())?.is_some() {}
        Ok(Raw::Other("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(RawOf::skip())?;
        }
        Ok(Raw::Other("an object"))
    }
}

/// A model's input tensor data: float32 for most models; float64 for a converted scikit-learn
/// Pipeline, whose scaling runs in float64 before the trees' float32 (`pipeline.convert`).
#[derive(Debug, Clone)]
pub enum TensorData {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl TabularInput {
    /// The features as the card's input dtype (checked at load: `float32` or `float64`).
    pub fn tensor_data(&self, card: &ModelCard) -> TensorData {
        if card.input.dtype == "float64" {
            TensorData::F64(self.features.clone())
        } else {
            TensorData::F32(self.features.iter().map(|&x| x as f32).collect())
        }
    }

    /// The accepted features in their canonical form (see [`canonical`]); made only for a
    /// prediction that is recorded.
    pub fn canonical(&self, card: &ModelCard) -> Map<String, Value> {
        let values: Vec<Option<f64>> = self
            .features
            .iter()
            .map(|&x| (!x.is_nan()).then_some(x))
            .collect();
        canonical(card, &values)
    }
}

fn field_list(card: &ModelCard) -> String {
    let names: Vec<&str> = card.features.iter().map(|f| f.name.as_str()).collect();
    format!("{} (and optionally `{PATIENT_ID}`)", names.join(", "))
}

/// The range of `f` as the errors give it (`0 and 20`, `40 and 400 mg/dL`); made only for an
/// error (formatting it for every field of every request was 14% of a tabular prediction's
/// instructions in diabetes-svc, callgrind).
fn range(f: &Feature) -> String {
    let unit = if f.unit == "1" || f.unit == "code" || f.unit == "count" {
        String::new()
    } else {
        format!(" {}", f.unit)
    };
    format!("{} and {}{unit}", f.min, f.max)
}

/// A feature's value from its field: NaN when a nullable field is null or missing.
fn feature_value(f: &Feature, v: Option<&Raw>) -> Result<f64, ApiError> {
    let x = match v {
        None | Some(Raw::Null) if f.nullable => return Ok(f64::NAN),
        None => {
            return Err(ApiError::invalid(
                &f.name,
                format!(
                    "missing field `{}` ({}, between {})",
                    f.name,
                    f.description,
                    range(f)
                ),
            ));
        }
        Some(Raw::Null) => {
            return Err(ApiError::invalid(
                &f.name,
                format!("`{}` is required and may not be null", f.name),
            ));
        }
        Some(Raw::Number(x)) => *x,
        Some(Raw::String(_)) => return Err(not_a_number(f, "a string")),
        Some(Raw::Other(kind)) => return Err(not_a_number(f, kind)),
    };
    check_value(f, x)
}

fn not_a_number(f: &Feature, kind: &str) -> ApiError {
    ApiError::invalid(
        &f.name,
        format!("`{}` must be a number, got {kind}", f.name),
    )
}

/// Checks a value of `f` as the card says (finite, whole where it must be, an allowed code,
/// within the range): the same checks for a JSON field and a tensor element.
pub fn check_value(f: &Feature, x: f64) -> Result<f64, ApiError> {
    if !x.is_finite() {
        return Err(ApiError::invalid(
            &f.name,
            format!("`{}` must be finite", f.name),
        ));
    }
    if f.integer && x.fract() != 0.0 {
        return Err(ApiError::invalid(
            &f.name,
            format!("`{}` must be a whole number, got {x}", f.name),
        ));
    }
    if let Some(allowed) = &f.allowed
        && !allowed.contains(&x)
    {
        let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
        return Err(ApiError::invalid(
            &f.name,
            format!(
                "`{}` must be one of {} ({}), got {x}",
                f.name,
                list.join(", "),
                f.description
            ),
        ));
    }
    if x < f.min || x > f.max {
        return Err(ApiError::invalid(
            &f.name,
            format!("`{}` must be between {}, got {x}", f.name, range(f)),
        ));
    }
    Ok(x)
}

/// The canonical form of accepted features (`None`: missing), in the card's order: what the
/// audit commitment digests.
pub fn canonical(card: &ModelCard, values: &[Option<f64>]) -> Map<String, Value> {
    card.features
        .iter()
        .zip(values)
        .map(|(f, v)| {
            let v = v.and_then(serde_json::Number::from_f64);
            (f.name.clone(), v.map_or(Value::Null, Value::Number))
        })
        .collect()
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Validates an optional patient id (see [`PatientId`]).
pub fn patient_id(v: Option<&Value>) -> Result<Option<PatientId>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => PatientId::parse(s).map(Some),
        Some(other) => Err(not_a_patient_id(json_type(other))),
    }
}
