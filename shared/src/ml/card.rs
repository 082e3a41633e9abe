//! Model cards (`models/<disease>/<model>.card.json`): the single source of truth a service
//! reads about a model — file hash, tensor names and shapes, classes, features and their
//! ranges, preprocessing, risk bands, demo flag and load cost.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The card format this code understands.
pub const SCHEMA_VERSION: u32 = 1;

/// A model card. Unknown fields are ignored so that cards may grow.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ModelCard {
    pub schema_version: u32,
    pub model_id: String,
    pub version: String,
    pub disease: String,
    pub modality: Modality,
    pub file: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub demo: bool,
    pub notice: String,
    pub input: TensorSpec,
    pub outputs: Vec<TensorSpec>,
    pub classes: Vec<Class>,
    #[serde(default)]
    pub features: Vec<Feature>,
    #[serde(default)]
    pub risk: Option<Risk>,
    #[serde(default)]
    pub preprocessing: Option<Preprocessing>,
    pub load_cost: LoadCost,
}

/// Tabular or image model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Tabular,
    Image,
}

/// An ONNX input or output.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TensorSpec {
    pub name: String,
    /// `-1` marks a dynamic dimension.
    pub shape: Vec<i64>,
    pub dtype: String,
}

/// One output class.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Class {
    pub index: usize,
    pub label: String,
    pub name: String,
    /// Image models: the risk band this class stands for.
    #[serde(default)]
    pub risk_band: Option<String>,
}

/// One tabular input feature, in input order.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Feature {
    pub name: String,
    pub unit: String,
    #[serde(default)]
    pub description: String,
    pub min: f64,
    pub max: f64,
    #[serde(default)]
    pub integer: bool,
    #[serde(default)]
    pub allowed: Option<Vec<f64>>,
    #[serde(default)]
    pub nullable: bool,
}

/// Risk bands of the positive-class probability (tabular models).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Risk {
    pub positive_class: usize,
    pub bands: Vec<Band>,
}

/// A band: applies when the probability is below `below` (the last band has none).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Band {
    pub band: String,
    pub below: Option<f64>,
}

/// Image preprocessing the model was trained with.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Preprocessing {
    pub resize: Resize,
    pub exif_orientation: bool,
    pub channel_order: String,
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub layout: String,
}

/// Target size and filter.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Resize {
    pub width: u32,
    pub height: u32,
    pub filter: String,
    pub keep_aspect: bool,
}

/// What loading the model costs in memory.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LoadCost {
    pub rss_added_bytes: u64,
}

impl ModelCard {
    /// Reads and checks a card file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read model card {}: {e}", path.display()))?;
        let card: Self = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("model card {} is invalid: {e}", path.display()))?;
        card.check()
            .map_err(|e| anyhow::anyhow!("model card {} is inconsistent: {e}", path.display()))?;
        Ok(card)
    }

    /// Internal consistency: what the services rely on.
    pub fn check(&self) -> Result<(), String> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(format!(
                "schema_version {} (this build reads {SCHEMA_VERSION})",
                self.schema_version
            ));
        }
        if self.classes.len() < 2 || self.classes.iter().enumerate().any(|(i, c)| c.index != i) {
            return Err("classes must be at least two, indexed 0..n in order".into());
        }
        match self.modality {
            Modality::Tabular => {
                if self.features.is_empty() {
                    return Err("a tabular model needs features".into());
                }
                if self.input.shape != [-1, self.features.len() as i64] {
                    return Err(format!(
                        "input shape {:?} does not match {} features",
                        self.input.shape,
                        self.features.len()
                    ));
                }
                if self.probabilities_output().is_none() {
                    return Err("a tabular model needs a `probabilities` output".into());
                }
                let risk = self
                    .risk
                    .as_ref()
                    .ok_or("a tabular model needs risk bands")?;
                if risk.positive_class >= self.classes.len()
                    || risk.bands.last().is_none_or(|b| b.below.is_some())
                {
                    return Err("risk bands must end with an open band".into());
                }
                for f in &self.features {
                    if f.min.partial_cmp(&f.max) != Some(std::cmp::Ordering::Less) {
                        return Err(format!("feature {}: min must be below max", f.name));
                    }
                }
            }
            Modality::Image => {
                let pre = self
                    .preprocessing
                    .as_ref()
                    .ok_or("an image model needs preprocessing")?;
                let expect = [-1, 3, pre.resize.height as i64, pre.resize.width as i64];
                if self.input.shape != expect {
                    return Err(format!(
                        "input shape {:?} does not match preprocessing {:?}",
                        self.input.shape, expect
                    ));
                }
                if pre.layout != "NCHW" || pre.channel_order != "RGB" || pre.resize.keep_aspect {
                    return Err("only NCHW, RGB, full-image resize is supported".into());
                }
                if self.logits_output().is_none() {
                    return Err("an image model needs a `logits` output".into());
                }
                if self.classes.iter().any(|c| c.risk_band.is_none()) {
                    return Err("every class of an image model needs a risk_band".into());
                }
            }
        }
        Ok(())
    }

    /// Name of the probabilities output (tabular models).
    pub fn probabilities_output(&self) -> Option<&str> {
        self.outputs
            .iter()
            .find(|o| o.name == "probabilities")
            .map(|o| o.name.as_str())
    }

    /// Name of the logits output (image models).
    pub fn logits_output(&self) -> Option<&str> {
        self.outputs
            .iter()
            .find(|o| o.name == "logits")
            .map(|o| o.name.as_str())
    }

    /// The band a positive-class probability falls in.
    pub fn band_for(&self, p: f64) -> Option<&str> {
        let risk = self.risk.as_ref()?;
        risk.bands
            .iter()
            .find(|b| b.below.is_none_or(|t| p < t))
            .map(|b| b.band.as_str())
    }
}
