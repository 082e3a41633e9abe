//! Explanations of a prediction: for a tabular model, each feature's exact contribution to the
//! margin (TreeSHAP on the trees its card names); for an image model, on request, the class
//! activation map of the predicted (or a named) class, from the model's own `cam` output.
//!
//! An explanation is derived data: it is answered with the prediction and never recorded on
//! chain. It says how this model arrived at its output, not why a patient has a disease.

pub mod cam;
pub mod treeshap;

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};

pub use crate::card::ExplanationSpec;
use crate::card::ModelCard;

/// A loaded model's explainer, read and verified with the model.
#[derive(Debug)]
pub enum Explainer {
    Trees(treeshap::Ensemble),
}

/// The explainer a card names, read from `dir` (the card's folder) and checked against the
/// card's size and sha256; `None` when the card names none, or one that needs no file (a
/// class activation map is one of the model's outputs).
pub fn load(card: &ModelCard, dir: &Path) -> Option<Result<Arc<Explainer>, String>> {
    let spec = card.explanation.as_ref()?;
    Some(match spec {
        ExplanationSpec::Treeshap { .. } if card.modality != crate::card::Modality::Tabular => {
            Err("TreeSHAP explains tabular models only".into())
        }
        ExplanationSpec::Cam { .. } => return None,
        ExplanationSpec::Treeshap {
            file,
            sha256,
            size_bytes,
        } => read_verified(&dir.join(file), sha256, *size_bytes).and_then(|bytes| {
            treeshap::Ensemble::from_json(&bytes, card.features.len())
                .map(|e| Arc::new(Explainer::Trees(e)))
                .map_err(|e| format!("{file}: {e}"))
        }),
        ExplanationSpec::Unsupported => {
            Err("the card names an explanation method this build does not know".into())
        }
    })
}

/// A file's bytes if they are what the card says.
fn read_verified(path: &Path, sha256: &str, size: u64) -> Result<Vec<u8>, String> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {name}: {e}"))?;
    if bytes.len() as u64 != size {
        return Err(format!(
            "{name} is {} bytes, the card says {size}",
            bytes.len()
        ));
    }
    let actual = hex::encode(Sha256::digest(&bytes));
    if !actual.eq_ignore_ascii_case(sha256) {
        return Err(format!(
            "{name} has sha256 {actual}, the card says {sha256}"
        ));
    }
    Ok(bytes)
}

/// A tabular prediction's explanation: `base_value` plus the contributions is the model's
/// margin for the positive class, whose logistic function is its probability.
#[derive(Debug, Clone, Serialize)]
pub struct TabularExplanation {
    pub method: &'static str,
    pub link: &'static str,
    /// The margin with no feature known: the training rows' average, as the trees hold it.
    pub base_value: f64,
    /// `base_value` plus every contribution.
    pub margin: f64,
    /// One per feature, in the card's order.
    pub contributions: Vec<Contribution>,
}

/// One feature's value and its contribution to the margin (positive: towards the positive
/// class).
#[derive(Debug, Clone, Serialize)]
pub struct Contribution {
    pub feature: String,
    /// As sent; null for a missing value, which the trees send down each split's default branch.
    pub value: Option<f64>,
    pub contribution: f64,
}

/// What a prediction says of its explanation.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Explained {
    Tabular(TabularExplanation),
    Cam(cam::ClassMap),
    /// The card names an explainer that could not be read: the prediction stands, unexplained.
    Unavailable {
        unavailable: String,
    },
}

impl Explainer {
    /// The bytes the explainer holds (its trees).
    pub fn resident_bytes(&self) -> usize {
        let Explainer::Trees(trees) = self;
        trees.resident_bytes()
    }

    /// Explains one row of a tabular model (features in the card's order, NaN for missing).
    pub fn tabular(&self, card: &ModelCard, features: &[f64]) -> TabularExplanation {
        let Explainer::Trees(trees) = self;
        // The model sees float32 values: the splits are taken as it takes them.
        let row: Vec<f32> = features.iter().map(|&x| x as f32).collect();
        let phi = trees.shap(&row);
        let base_value = trees.base_value();
        TabularExplanation {
            method: "treeshap",
            link: "logit",
            base_value,
            margin: base_value + phi.iter().sum::<f64>(),
            contributions: card
                .features
                .iter()
                .zip(features)
                .zip(phi)
                .map(|((f, &x), contribution)| Contribution {
                    feature: f.name.clone(),
                    value: (!x.is_nan()).then_some(x),
                    contribution,
                })
                .collect(),
        }
    }
}
