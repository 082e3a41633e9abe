//! The floor: raw ONNX Runtime inference time per model for one input, in this process, with
//! the session options the service itself uses (its settings, loaded the way it loads them),
//! on the same input the load generator sends, preprocessed by the service's own code.

use std::path::Path;
use std::time::Instant;

use medchain_serving::card::ModelCard;
use medchain_serving::explain;
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
    let mut explain = None;
    let mut kept_rgb = Vec::new();
    let mut prep_size = (0, 0);
    let (shape, data, output) = match input {
        Input::Tabular(body) => {
            let x = tabular::validate(&card, body).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            explain = explanation_cost(settings, &card, &card_path, &x.features, runs)?;
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
            // Timed as a plain prediction prepares; the RGB8 image a map's overlay is drawn on
            // is the resized image itself (no copy) for a card without a crop.
            let (times, _) = timed(runs, || {
                image::prepare(bytes, pre, &settings.images, false)
                    .map_err(|e| anyhow::anyhow!("{e:?}"))
            })?;
            prep_times = times;
            let mut p = image::prepare(bytes, pre, &settings.images, true)
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            kept_rgb = p.rgb.take().unwrap_or_default();
            let shape = vec![1, 3, i64::from(p.height), i64::from(p.width)];
            prep_size = (p.width, p.height);
            let out = card.logits_output().unwrap_or("logits");
            (shape, p.tensor, out.to_string())
        }
    };
    // An image model with class activation maps: what one costs beside the prediction.
    let cam = match (input, &card.explanation) {
        (Input::Image(_), Some(explain::ExplanationSpec::Cam { output: maps, .. })) => {
            Some(cam_cost(
                &mut session,
                &card,
                maps,
                (&shape, &data),
                (&kept_rgb, prep_size),
                runs,
            )?)
        }
        _ => None,
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
        explain,
        cam,
        ..Floor::default()
    })
}

/// What a class activation map costs an image prediction (`?explain=cam`): the model run asked
/// for the logits alone and for the logits and the maps, in alternating order (what the maps'
/// node adds, if ONNX Runtime prunes it when they are not asked for; the service runs every
/// output, so plain predictions pay for the node too: it is one 1×1 convolution of the last
/// feature map); then what the service does with the maps, timed alone: the map of the
/// predicted class, its peak, the overlay PNG on the RGB8 image preprocessing kept, the data
/// URL and the map's JSON. Its memory is the most heap that step holds at once (this
/// binary's counting allocator).
fn cam_cost(
    session: &mut ort::session::Session,
    card: &ModelCard,
    maps_output: &str,
    (shape, data): (&[i64], &[f32]),
    (rgb, (width, height)): (&[u8], (u32, u32)),
    runs: usize,
) -> anyhow::Result<CamCost> {
    use ort::session::{OutputSelector, RunOptions};
    let logits_name = card.logits_output().unwrap_or("logits").to_string();
    let alone = RunOptions::new()?.with_outputs(OutputSelector::no_default().with(&logits_name));
    let both = RunOptions::new()?.with_outputs(
        OutputSelector::no_default()
            .with(&logits_name)
            .with(maps_output),
    );
    let input = card.input.name.as_str();
    let (mut plain, mut with_maps) = (Vec::new(), Vec::new());
    let (mut logits, mut maps) = (Vec::new(), Vec::new());
    for i in 0..runs + 3 {
        for maps_first in [i % 2 == 0, i % 2 != 0] {
            let tensor = ort::value::Tensor::from_array((shape.to_vec(), data.to_vec()))?;
            let options = if maps_first { &both } else { &alone };
            let start = Instant::now();
            let out = session.run_with_options(ort::inputs![input => tensor], options)?;
            let ms = start.elapsed().as_secs_f64() * 1e3;
            logits = out[logits_name.as_str()]
                .try_extract_tensor::<f32>()?
                .1
                .to_vec();
            if maps_first {
                maps = out[maps_output].try_extract_tensor::<f32>()?.1.to_vec();
            }
            if i >= 3 {
                if maps_first {
                    &mut with_maps
                } else {
                    &mut plain
                }
                .push(ms);
            }
        }
    }
    let k = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(k, _)| k);
    let step = || -> anyhow::Result<(usize, usize)> {
        let map = explain::cam::explain(card, &maps, k, rgb, width, height)
            .map_err(anyhow::Error::msg)?;
        let png = map.overlay_png.as_ref().map_or(0, String::len);
        let json = serde_json::to_vec(&map)?;
        Ok((png, json.len()))
    };
    let (post, _) = timed(runs, step)?;
    let (sizes, heap) = medchain_tests::alloc::thread_peak_during(step);
    let (data_url_bytes, json_bytes) = sizes?;
    for v in [&mut plain, &mut with_maps] {
        v.sort_by(f64::total_cmp);
    }
    let (p, m, e) = (
        percentile(&plain, 50.0),
        percentile(&with_maps, 50.0),
        percentile(&post, 50.0),
    );
    Ok(CamCost {
        runs,
        logits_only_p50_ms: p,
        with_maps_p50_ms: m,
        explain_p50_ms: e,
        explain_p95_ms: percentile(&post, 95.0),
        share_of_inference: match (p, m, e) {
            (Some(p), Some(m), Some(e)) if p > 0.0 => Some(((m - p).max(0.0) + e) / p),
            _ => None,
        },
        heap_peak_bytes: heap,
        maps_output_bytes: maps.len() * 4,
        data_url_bytes,
        json_bytes,
    })
}

/// What a class activation map adds to an image prediction, in this process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CamCost {
    pub runs: usize,
    /// The model run asking for the logits alone (a plain prediction).
    pub logits_only_p50_ms: Option<f64>,
    /// The model run asking for the logits and the maps.
    pub with_maps_p50_ms: Option<f64>,
    /// The service's work on the maps: map, peak, overlay PNG, data URL, JSON.
    pub explain_p50_ms: Option<f64>,
    pub explain_p95_ms: Option<f64>,
    /// (maps' extra run time, if any, + the work on them) ÷ the plain run (target ≤ 0.05).
    pub share_of_inference: Option<f64>,
    /// The most heap the work on the maps holds at once (target ≤ 4 MB).
    pub heap_peak_bytes: usize,
    /// The maps as ONNX Runtime returns them (every class).
    pub maps_output_bytes: usize,
    /// The overlay as a data URL, and the explanation's JSON.
    pub data_url_bytes: usize,
    pub json_bytes: usize,
}

/// The service's own decoding and preprocessing of the upload `bytes` for the model behind
/// `card_rel`, p50 of `runs` calls (after 3 untimed ones), ms.
pub fn preprocess_p50(
    settings: &DiseaseSettings,
    card_rel: &str,
    bytes: &[u8],
    runs: usize,
) -> anyhow::Result<Option<f64>> {
    let card = ModelCard::from_file(&settings.models.dir().join(card_rel))?;
    let pre = card
        .preprocessing
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("image card without preprocessing"))?;
    let (times, _) = timed(runs, || {
        image::prepare(bytes, pre, &settings.images, false).map_err(|e| anyhow::anyhow!("{e:?}"))
    })?;
    Ok(percentile(&times, 50.0))
}

/// `f` called 3 times untimed, then `runs` times timed: the times (ms, sorted) and the last
/// result.
fn timed<T>(
    runs: usize,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(Vec<f64>, T)> {
    let mut last = f()?;
    for _ in 0..2 {
        last = std::hint::black_box(f()?);
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        last = std::hint::black_box(f()?);
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok((times, last))
}

/// What explaining a tabular prediction costs: TreeSHAP on `record` `runs` times, and once on
/// every row of the data set (the parity fixture's rows), each call timed alone.
fn explanation_cost(
    settings: &DiseaseSettings,
    card: &ModelCard,
    card_path: &Path,
    record: &[f64],
    runs: usize,
) -> anyhow::Result<Option<ExplainCost>> {
    let dir = card_path.parent().unwrap_or(Path::new("."));
    let Some(explainer) = explain::load(card, dir) else {
        return Ok(None);
    };
    let explainer = explainer.map_err(anyhow::Error::msg)?;
    let time = |x: &[f64]| {
        let start = Instant::now();
        std::hint::black_box(explainer.tabular(card, std::hint::black_box(x)));
        start.elapsed().as_secs_f64() * 1e6
    };
    let mut times: Vec<f64> = (0..runs + 3).map(|_| time(record)).skip(3).collect();
    times.sort_by(f64::total_cmp);
    let fixture = settings
        .models
        .dir()
        .join(format!("examples/treeshap-{}.json", card.disease.as_str()));
    let rows: Vec<Vec<f64>> = match std::fs::read(&fixture) {
        Ok(bytes) => {
            let v: Value = serde_json::from_slice(&bytes)?;
            v["rows"]
                .as_array()
                .map(|rows| {
                    rows.iter()
                        .filter_map(Value::as_array)
                        .map(|r| r.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect())
                        .collect()
                })
                .unwrap_or_default()
        }
        Err(_) => Vec::new(),
    };
    let mut row_times: Vec<f64> = rows.iter().map(|r| time(r)).collect();
    row_times.sort_by(f64::total_cmp);
    Ok(Some(ExplainCost {
        runs,
        p50_us: percentile(&times, 50.0),
        p95_us: percentile(&times, 95.0),
        rows: row_times.len(),
        rows_p50_us: percentile(&row_times, 50.0),
        rows_max_us: row_times.last().copied(),
        resident_bytes: explainer.resident_bytes(),
    }))
}

/// The time a tabular explanation takes, in this process (µs per call, timed alone).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExplainCost {
    pub runs: usize,
    /// On the load generator's record, `runs` times.
    pub p50_us: Option<f64>,
    pub p95_us: Option<f64>,
    /// Once on each row of the data set.
    pub rows: usize,
    pub rows_p50_us: Option<f64>,
    pub rows_max_us: Option<f64>,
    /// What the loaded explainer holds in memory.
    pub resident_bytes: usize,
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
    /// The same for the load phases' 3000×2000 JPEG (system run; issue 23's target: ≤ 25% of
    /// `p50_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub large_preprocess_p50_ms: Option<f64>,
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
    /// Tabular models with an explainer: what an explanation costs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explain: Option<ExplainCost>,
    /// Image models with class activation maps: what a map costs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cam: Option<CamCost>,
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

#[cfg(test)]
mod tests {
    use medchain_tests::alloc::thread_peak_during;

    /// The counting allocator this binary installs sees what a step holds at once on its
    /// thread, not what it allocates in all, nor what other threads allocate.
    #[test]
    fn a_steps_heap_peak_is_what_it_holds_at_once_on_its_thread() {
        let ((), peak) = thread_peak_during(|| {
            for _ in 0..10 {
                std::hint::black_box(vec![0u8; 1 << 20]);
            }
        });
        assert!((1 << 20..2 << 20).contains(&peak), "{peak}");
        let (kept, peak) = thread_peak_during(|| (vec![1u8; 3 << 20], vec![2u8; 1 << 20]));
        assert!(peak >= 4 << 20, "{peak}");
        drop(kept);
        let ((), peak) = thread_peak_during(|| {
            std::thread::spawn(|| drop(std::hint::black_box(vec![0u8; 8 << 20])))
                .join()
                .expect("thread");
        });
        assert!(peak < 1 << 20, "{peak}");
    }
}
