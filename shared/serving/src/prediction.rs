//! The prediction a route answers: the classes' probabilities from a model's output, the risk
//! band its card assigns, the model that answered and its demo notice, and the audit receipt.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::card::{Band, Modality, ModelCard};
use crate::explain::Explained;
use medchain_core::contract::{Digest, Receipt};
use medchain_core::domain::Disease;
use medchain_core::error::{ApiError, ApiResult};

/// One class and its probability.
#[derive(Debug, Serialize)]
pub struct ClassProbability {
    pub label: String,
    pub name: String,
    pub probability: f64,
}

/// What was predicted.
#[derive(Debug, Serialize)]
pub struct PredictionResult {
    pub class_index: usize,
    pub label: String,
    pub name: String,
    /// Probability of the predicted class.
    pub probability: f64,
    pub probabilities: Vec<ClassProbability>,
    pub risk_band: String,
    pub risk: RiskBasis,
}

/// How the risk band was chosen, with its thresholds.
#[derive(Debug, Serialize)]
#[serde(tag = "basis", rename_all = "snake_case")]
pub enum RiskBasis {
    /// Tabular: the band of the positive-class probability.
    PositiveProbability {
        positive_label: String,
        positive_probability: f64,
        bands: Vec<Band>,
    },
    /// Image: each class stands for a band.
    PredictedClass { bands_by_class: Vec<ClassBand> },
}

/// The band a class stands for.
#[derive(Debug, Serialize)]
pub struct ClassBand {
    pub label: String,
    pub risk_band: String,
}

/// The model that answered (the same type chain-svc reads in a record).
pub use medchain_core::contract::ModelRef;

/// A prediction response.
#[derive(Debug, Serialize)]
pub struct Prediction {
    pub prediction_id: String,
    pub disease: Disease,
    pub modality: Modality,
    pub result: PredictionResult,
    pub model: ModelRef,
    pub demo: bool,
    pub notice: String,
    pub inference_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageInfo>,
    pub created_at_unix_ms: u64,
    /// Tabular models whose card names an explainer: each feature's contribution (TreeSHAP),
    /// or why there is none; image predictions that ask for it (`?explain=cam`): the class
    /// activation map. Derived data: never recorded on chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<Explained>,
    /// The audit record of this prediction: chain-svc's receipt (status `pending`, then
    /// `confirmed` on chain), or `unrecorded` with the reason; null when no `patient_id` was
    /// given (nothing to record).
    pub audit: Option<Audit>,
}

/// The audit of a prediction that named a patient.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Audit {
    /// Taken by chain-svc: its receipt (status `pending`, then `confirmed` on chain), and the
    /// digest of the input that the receipt's commitment salts.
    Recorded {
        #[serde(flatten)]
        receipt: Box<Receipt>,
        input_digest: Digest,
    },
    /// Not recorded, or not known to be: why, and the input's digest.
    NotRecorded {
        status: NotRecorded,
        reason: String,
        /// To look the record up by (when chain-svc may have taken it).
        #[serde(skip_serializing_if = "Option::is_none")]
        prediction_id: Option<String>,
        input_digest: Digest,
    },
}

/// Why a prediction with a patient id carries no receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotRecorded {
    /// chain-svc is not configured, unreachable, or refused the record.
    Unrecorded,
    /// chain-svc did not answer in time, twice: it may have taken the record.
    Unknown,
}

impl Prediction {
    /// The prediction `card`'s model made, from its classes' probabilities (`probs`, in
    /// the card's class order); not yet recorded (`audit` is null).
    pub fn new(
        card: &ModelCard,
        probs: Vec<f64>,
        inference_ms: f64,
        image: Option<ImageInfo>,
    ) -> ApiResult<Prediction> {
        Ok(Prediction {
            prediction_id: uuid::Uuid::new_v4().to_string(),
            disease: card.disease,
            modality: card.modality,
            result: build_result(card, probs)?,
            model: ModelRef {
                id: card.model_id.clone(),
                version: card.version.clone(),
                sha256: card.sha256.clone(),
            },
            demo: card.demo,
            notice: card.notice.clone(),
            inference_ms,
            image,
            created_at_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            explanation: None,
            audit: None,
        })
    }

    /// Notes the model, the prediction id and the inference time for the request's access log
    /// line ("served"), so that it says which model answered, how fast, and which prediction it
    /// was. Nothing of the input or the patient.
    pub(crate) fn trace(&self, req: &actix_web::HttpRequest) {
        medchain_core::request::note_prediction(
            req,
            medchain_core::request::Served {
                model: self.model.id.clone(),
                prediction_id: Some(self.prediction_id.clone()),
                inference_ms: self.inference_ms,
            },
        );
    }
}

/// What the service saw of an uploaded image.
#[derive(Debug, Serialize)]
pub struct ImageInfo {
    pub format: &'static str,
    pub width: u32,
    pub height: u32,
    pub decode_scale: u32,
}

/// Probabilities from a model's logits.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits.iter().map(|&z| f64::from(z - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

fn argmax(p: &[f64]) -> usize {
    p.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

fn build_result(card: &ModelCard, probs: Vec<f64>) -> ApiResult<PredictionResult> {
    if probs.len() != card.classes.len() || probs.iter().any(|p| !p.is_finite()) {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "model `{}` returned {} values for {} classes",
            card.model_id,
            probs.len(),
            card.classes.len()
        )));
    }
    let best = argmax(&probs);
    let class = &card.classes[best];
    let (risk_band, risk) = match &card.risk {
        Some(r) => {
            let p = probs[r.positive_class];
            (
                card.band_for(p).unwrap_or("unknown").to_string(),
                RiskBasis::PositiveProbability {
                    positive_label: card.classes[r.positive_class].label.clone(),
                    positive_probability: p,
                    bands: r.bands.clone(),
                },
            )
        }
        None => (
            class.risk_band.clone().unwrap_or_else(|| "unknown".into()),
            RiskBasis::PredictedClass {
                bands_by_class: card
                    .classes
                    .iter()
                    .map(|c| ClassBand {
                        label: c.label.clone(),
                        risk_band: c.risk_band.clone().unwrap_or_else(|| "unknown".into()),
                    })
                    .collect(),
            },
        ),
    };
    Ok(PredictionResult {
        class_index: best,
        label: class.label.clone(),
        name: class.name.clone(),
        probability: probs[best],
        probabilities: card
            .classes
            .iter()
            .zip(&probs)
            .map(|(c, &p)| ClassProbability {
                label: c.label.clone(),
                name: c.name.clone(),
                probability: p,
            })
            .collect(),
        risk_band,
        risk,
    })
}
