//! The floor: raw ONNX Runtime inference time per model for one input, in this process, with
//! the session options the service itself uses (its settings, loaded the way it loads them),
//! on the same input the load generator sends, preprocessed by the service's own code.

use std::path::Path;
use std::time::Instant;

use medchain_serving::card::ModelCard;
use medchain_serving::inputs::{image, tabular};
use medchain_serving::runtime::{self, Optimization};
use medchain_serving::settings::DiseaseSettings;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::load::percentile;

/// The input to time.
#[derive(Debug)]
pub enum Input<'a> {
    Tabular(&'a Value),
    Image(&'a [u8]),
}

/// Times `runs` calls of `session.run` (after 3 untimed ones) for the model behind `card`.
pub fn measure(
    settings: &DiseaseSettings,
    card_rel: &str,
    input: Input<'_>,
    runs: usize,
) -> anyhow::Result<Floor> {
    let card_path = settings.models.dir().join(card_rel);
    let card = ModelCard::from_file(&card_path)?;
    let onnx = card_path.with_file_name(&card.file);
    runtime::ensure(&settings.runtime).map_err(anyhow::Error::msg)?;
    let mut session = runtime::session(&settings.runtime, &onnx, card.modality, Optimization::Full)
        .map_err(anyhow::Error::msg)?;
    // The service's own decoding and preprocessing of an upload, timed the same way: what the
    // end-to-end time adds to the floor before any HTTP.
    let mut prep_times = Vec::new();
    let (shape, data, output) = match input {
        Input::Tabular(body) => {
            let x = tabular::validate(&card, body).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let n = x.features.len() as i64;
            let x = match x.tensor_data(&card) {
                tabular::TensorData::F32(v) => v,
                // The committed tabular models take float32; a converted Pipeline's float64
                // is not part of the floor.
                tabular::TensorData::F64(_) => anyhow::bail!("a float64 model is not benchmarked"),
            };
            let out = card.probabilities_output().unwrap_or("probabilities");
            (vec![1, n], x, out.to_string())
        }
        Input::Image(bytes) => {
            let pre = card
                .preprocessing
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("image card without preprocessing"))?;
            let prep = || {
                image::prepare(bytes, pre, &settings.images).map_err(|e| anyhow::anyhow!("{e:?}"))
            };
            let mut p = prep()?;
            for i in 0..runs + 3 {
                let start = Instant::now();
                p = std::hint::black_box(prep()?);
                if i >= 3 {
                    prep_times.push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
            let shape = vec![1, 3, i64::from(p.height), i64::from(p.width)];
            let out = card.logits_output().unwrap_or("logits");
            (shape, p.tensor, out.to_string())
        }
    };
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs + 3 {
        // The tensor is built outside the timed region, as the service does.
        let tensor = ort::value::Tensor::from_array((shape.clone(), data.clone()))?;
        let start = Instant::now();
        let outputs = session.run(ort::inputs![card.input.name.as_str() => tensor])?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let _ = outputs[output.as_str()].try_extract_tensor::<f32>()?;
        if i >= 3 {
            times.push(ms);
        }
    }
    times.sort_by(f64::total_cmp);
    prep_times.sort_by(f64::total_cmp);
    Ok(Floor {
        model_id: card.model_id.clone(),
        model_version: card.version.clone(),
        file: onnx
            .file_name()
            .and_then(|f| f.to_str())
            .map(str::to_string),
        intra_threads: settings.runtime.threads_for(card.modality),
        runs,
        p50_ms: percentile(&times, 50.0),
        p95_ms: percentile(&times, 95.0),
        min_ms: times.first().copied(),
        preprocess_p50_ms: percentile(&prep_times, 50.0),
        ..Floor::default()
    })
}

/// One model's floor as the results hold it, with what the system run sets beside it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Floor {
    pub model_id: String,
    pub model_version: String,
    pub file: Option<String>,
    pub intra_threads: usize,
    pub runs: usize,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub min_ms: Option<f64>,
    /// The service's own decoding and preprocessing of the upload (image models).
    pub preprocess_p50_ms: Option<f64>,
    /// The endpoint it is the floor of (system run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The model it is the floor of (int8 run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// End-to-end p50 at c=1 straight to the service, and its ratio to `p50_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e_p50_ms_direct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_direct: Option<f64>,
    /// The same through the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e_p50_ms_gateway: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_gateway: Option<f64>,
}

/// The model files the floor would load, for the results' version list.
pub fn card(settings: &DiseaseSettings, card_rel: &str) -> Option<ModelCard> {
    ModelCard::from_file(&settings.models.dir().join(card_rel)).ok()
}

/// Whether a path names an existing ONNX Runtime library (reported in the results).
pub fn library(settings: &DiseaseSettings) -> String {
    let lib = settings.runtime.library();
    let exists = Path::new(&lib).exists();
    format!(
        "{}{}",
        lib.display(),
        if exists { "" } else { " (not found)" }
    )
}
