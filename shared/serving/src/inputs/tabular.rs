//! Tabular input validation driven by the model card: every field typed, finite, within the
//! card's range and allowed codes; unknown fields rejected; nullable fields may be null or
//! omitted and reach the model as NaN (XGBoost's missing value).

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
    /// The features as accepted (for the audit commitment), in card order.
    pub canonical: Map<String, Value>,
    pub patient_id: Option<PatientId>,
}

/// Validates a JSON body against the card's features.
pub fn validate(card: &ModelCard, body: &Value) -> Result<TabularInput, ApiError> {
    let obj = body.as_object().ok_or_else(|| ApiError::Invalid {
        detail: format!(
            "the body must be a JSON object with the fields {}",
            field_list(card)
        ),
        field: None,
    })?;
    for key in obj.keys() {
        if key != PATIENT_ID && !card.features.iter().any(|f| &f.name == key) {
            return Err(ApiError::invalid(
                key.clone(),
                format!("unknown field `{key}`; expected {}", field_list(card)),
            ));
        }
    }
    let patient_id = patient_id(obj.get(PATIENT_ID))?;
    let values = card
        .features
        .iter()
        .map(|f| feature_value(f, obj.get(&f.name)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TabularInput {
        features: values.iter().map(|v| v.unwrap_or(f64::NAN)).collect(),
        canonical: canonical(card, &values),
        patient_id,
    })
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

fn feature_value(f: &Feature, v: Option<&Value>) -> Result<Option<f64>, ApiError> {
    let x = match v {
        None | Some(Value::Null) if f.nullable => return Ok(None),
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
        Some(Value::Null) => {
            return Err(ApiError::invalid(
                &f.name,
                format!("`{}` is required and may not be null", f.name),
            ));
        }
        Some(Value::Number(n)) => n.as_f64().ok_or_else(|| {
            ApiError::invalid(
                &f.name,
                format!("`{}` is not a representable number", f.name),
            )
        })?,
        Some(other) => {
            return Err(ApiError::invalid(
                &f.name,
                format!("`{}` must be a number, got {}", f.name, json_type(other)),
            ));
        }
    };
    check_value(f, x).map(Some)
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
        Some(other) => Err(ApiError::invalid(
            PATIENT_ID,
            format!("`{PATIENT_ID}` must be a string, got {}", json_type(other)),
        )),
    }
}
