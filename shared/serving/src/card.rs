//! Model cards (`models/<disease>/<model>.card.json`): the single source of truth a service
//! reads about a model — file hash, tensor names and shapes, classes, features and their
//! ranges, preprocessing, risk bands, demo flag and load cost.

use std::path::Path;

use medchain_core::domain::Disease;
use serde::{Deserialize, Serialize};

/// The card format this code understands.
pub const SCHEMA_VERSION: u32 = 1;

/// A model card. Unknown fields are ignored so that cards may grow.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ModelCard {
    pub schema_version: u32,
    pub model_id: String,
    pub version: String,
    pub disease: Disease,
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
    /// How the model's predictions are explained, and the file that needs (verified at load).
    #[serde(default)]
    pub explanation: Option<ExplanationSpec>,
}

/// What a card says about explaining its model.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum ExplanationSpec {
    /// TreeSHAP on a trees file next to the card (`tabular.trees.json`).
    Treeshap {
        file: String,
        sha256: String,
        size_bytes: u64,
    },
    /// Class activation maps: the model's output `output`, `[N, classes, grid[0], grid[1]]`.
    Cam { output: String, grid: [usize; 2] },
    /// A method this build does not know: the model serves, unexplained.
    #[serde(other)]
    Unsupported,
}

/// Tabular or image model (the shared domain type).
pub use medchain_core::domain::Modality;

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

/// Image preprocessing the model was trained with: decode → EXIF orientation (when
/// `exif_orientation`) → RGB8 → resize (the whole image to `width`×`height`, or its shorter side
/// to `shorter_side` keeping the aspect ratio, as torchvision's `Resize(n)` does) with one of
/// Pillow's antialiased filters → centre crop (`crop`, as torchvision's `CenterCrop`) → channel
/// order → `(v * scale - mean) / std` → NCHW float32. `models/pipeline/preprocess.py` is the
/// Python side of the same steps.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Preprocessing {
    pub resize: Resize,
    #[serde(default)]
    pub crop: Option<Crop>,
    pub exif_orientation: bool,
    pub channel_order: ChannelOrder,
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub layout: String,
}

/// How the image is resized: to a fixed size (`width`, `height`, aspect not kept) or its
/// shorter side to `shorter_side` (`keep_aspect`), the longer one in proportion (truncated).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Resize {
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
    #[serde(default)]
    pub shorter_side: Option<u32>,
    pub filter: Filter,
    pub keep_aspect: bool,
}

/// Pillow's resampling filters, all antialiased (the filter widens with the reduction), bit for
/// bit (see `resample`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    BoxAntialiased,
    BilinearAntialiased,
    HammingAntialiased,
    BicubicAntialiased,
    LanczosAntialiased,
}

/// A centre crop of the resized image.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
pub struct Crop {
    pub width: u32,
    pub height: u32,
}

/// The order of the channels in the model's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum ChannelOrder {
    #[serde(rename = "RGB")]
    Rgb,
    #[serde(rename = "BGR")]
    Bgr,
}

/// The largest side any resize or crop may have, pixels: ten times the usual model input.
pub const MAX_INPUT_SIDE: u32 = 2048;

impl Preprocessing {
    /// The model's input size, width × height: the crop, or the fixed resize.
    pub fn input_size(&self) -> (u32, u32) {
        match (self.crop, self.resize.width, self.resize.height) {
            (Some(c), _, _) => (c.width, c.height),
            (None, Some(w), Some(h)) => (w, h),
            // Refused by `check`.
            _ => (0, 0),
        }
    }

    /// The size an upright `w`×`h` image is resized to before the crop: torchvision's
    /// `Resize(n)` sets the shorter side to `n` and the longer to `int(n * long / short)`.
    pub fn resized_size(&self, w: u32, h: u32) -> (u32, u32) {
        match (
            self.resize.shorter_side,
            self.resize.width,
            self.resize.height,
        ) {
            (Some(s), _, _) => {
                let long = |long: u32, short: u32| {
                    ((u64::from(s) * u64::from(long)) as f64 / f64::from(short.max(1))) as u32
                };
                if w <= h {
                    (s, long(h, w).max(1))
                } else {
                    (long(w, h).max(1), s)
                }
            }
            (None, Some(tw), Some(th)) => (tw, th),
            _ => (0, 0),
        }
    }

    /// Where the centre crop of a `w`×`h` resized image starts, (left, top): torchvision's
    /// `int(round((size - crop) / 2.0))`, rounding halves to even as Python does.
    pub fn crop_origin(&self, w: u32, h: u32) -> (u32, u32) {
        let start = |size: u32, crop: u32| {
            let d = size.saturating_sub(crop);
            let half = d / 2;
            if d % 2 == 1 && half % 2 == 1 {
                half + 1
            } else {
                half
            }
        };
        match self.crop {
            Some(c) => (start(w, c.width), start(h, c.height)),
            None => (0, 0),
        }
    }

    /// What the services rely on: a fixed input size that the resize covers.
    pub fn check(&self) -> Result<(), String> {
        if self.layout != "NCHW" {
            return Err(format!("layout {:?}: only NCHW is supported", self.layout));
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err("preprocessing.scale must be a positive number".into());
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || self.mean.iter().any(|m| !m.is_finite())
        {
            return Err("preprocessing.std must be positive and mean finite".into());
        }
        let r = &self.resize;
        let side_ok = |v: u32| (1..=MAX_INPUT_SIDE).contains(&v);
        match (r.keep_aspect, r.shorter_side, r.width, r.height) {
            (true, Some(s), None, None) if side_ok(s) => {
                let c = self
                    .crop
                    .ok_or("a shorter-side resize gives images of varying size: it needs a crop")?;
                if c.width > s || c.height > s {
                    return Err(format!(
                        "the crop {}×{} is larger than the resized shorter side {s}",
                        c.width, c.height
                    ));
                }
            }
            (false, None, Some(w), Some(h)) if side_ok(w) && side_ok(h) => {
                if let Some(c) = self.crop
                    && (c.width > w || c.height > h)
                {
                    return Err(format!(
                        "the crop {}×{} is larger than the resize {w}×{h}",
                        c.width, c.height
                    ));
                }
            }
            _ => {
                return Err(format!(
                    "resize needs either keep_aspect false with width and height, or \
                     keep_aspect true with shorter_side (each 1..={MAX_INPUT_SIDE})"
                ));
            }
        }
        if let Some(c) = self.crop
            && !(side_ok(c.width) && side_ok(c.height))
        {
            return Err(format!("crop sides must be 1..={MAX_INPUT_SIDE}"));
        }
        Ok(())
    }
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
        if let Some(ExplanationSpec::Cam { output, grid }) = &self.explanation {
            let want = [
                -1,
                self.classes.len() as i64,
                grid[0] as i64,
                grid[1] as i64,
            ];
            if !self
                .outputs
                .iter()
                .any(|o| &o.name == output && o.shape == want)
            {
                return Err(format!(
                    "explanation.output `{output}` is not an output of shape {want:?}"
                ));
            }
        }
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
                if !matches!(self.input.dtype.as_str(), "float32" | "float64") {
                    return Err(format!(
                        "input dtype {:?}: a tabular model takes float32 or float64",
                        self.input.dtype
                    ));
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
                pre.check().map_err(|e| format!("preprocessing: {e}"))?;
                if self.input.dtype != "float32" {
                    return Err("an image model takes a float32 input".into());
                }
                let (w, h) = pre.input_size();
                let expect = [-1, 3, i64::from(h), i64::from(w)];
                if self.input.shape != expect {
                    return Err(format!(
                        "input shape {:?} does not match preprocessing {:?}",
                        self.input.shape, expect
                    ));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn retina() -> ModelCard {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/diabetes/retina.card.json");
        ModelCard::from_file(&path).expect("the committed card")
    }

    fn with_pre(pre: serde_json::Value, shape: [i64; 4]) -> Result<(), String> {
        let mut card = retina();
        card.preprocessing = Some(serde_json::from_value(pre).map_err(|e| e.to_string())?);
        card.input.shape = shape.to_vec();
        card.check()
    }

    fn pre(resize: serde_json::Value, crop: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "resize": resize, "crop": crop, "exif_orientation": true, "channel_order": "BGR",
            "scale": 1.0, "mean": [103.9, 116.8, 123.7], "std": [1.0, 1.0, 1.0],
            "layout": "NCHW"
        })
    }

    #[test]
    fn the_committed_cards_read_as_a_fixed_resize_without_crop() {
        let p = retina().preprocessing.expect("image card");
        assert_eq!(p.input_size(), (224, 224));
        assert_eq!(p.resized_size(3000, 1000), (224, 224));
        assert!(p.crop.is_none() && p.channel_order == ChannelOrder::Rgb);
    }

    #[test]
    fn shorter_side_and_crop_follow_torchvision() {
        let shorter = serde_json::json!({"shorter_side": 256, "filter": "bicubic_antialiased",
                                         "keep_aspect": true});
        let crop = serde_json::json!({"width": 224, "height": 224});
        with_pre(pre(shorter.clone(), crop.clone()), [-1, 3, 224, 224]).expect("valid");
        let p: Preprocessing = serde_json::from_value(pre(shorter, crop)).expect("parse");
        // int(256 * 500 / 333) = 384; landscape and portrait alike.
        assert_eq!(p.resized_size(500, 333), (384, 256));
        assert_eq!(p.resized_size(333, 500), (256, 384));
        // (384 - 224) / 2 = 80; an odd difference rounds half to even as Python's round().
        assert_eq!(p.crop_origin(384, 256), (80, 16));
        assert_eq!(p.crop_origin(229, 227), (2, 2)); // 2.5 -> 2, 1.5 -> 2
    }

    #[test]
    fn preprocessing_the_services_cannot_serve_is_refused() {
        let shorter = serde_json::json!({"shorter_side": 200, "filter": "lanczos_antialiased",
                                         "keep_aspect": true});
        let crop = serde_json::json!({"width": 224, "height": 224});
        let no_crop = with_pre(
            pre(shorter.clone(), serde_json::Value::Null),
            [-1, 3, 224, 224],
        );
        assert!(no_crop.expect_err("no crop").contains("needs a crop"));
        let big_crop = with_pre(pre(shorter, crop.clone()), [-1, 3, 224, 224]);
        assert!(big_crop.expect_err("crop").contains("larger than"));
        let fixed = serde_json::json!({"width": 224, "height": 224, "filter": "bilinear_antialiased",
                                       "keep_aspect": false});
        let shape = with_pre(pre(fixed, serde_json::Value::Null), [-1, 3, 256, 256]);
        assert!(shape.expect_err("shape").contains("does not match"));
        let nearest = serde_json::json!({"width": 224, "height": 224, "filter": "nearest",
                                         "keep_aspect": false});
        assert!(with_pre(pre(nearest, serde_json::Value::Null), [-1, 3, 224, 224]).is_err());
        let mut card = retina();
        card.input.dtype = "float64".into();
        assert!(card.check().expect_err("dtype").contains("float32"));
    }
}
