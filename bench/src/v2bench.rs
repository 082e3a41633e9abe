//! `medchain-bench v2`: the Open Inference Protocol (KServe V2) beside medchain's own API,
//! through the gateway, on the release binaries. A 224×224 retina JPEG sent four ways — the
//! JSON API's multipart upload, V2 with the file as a binary `BYTES` input, V2 with the
//! preprocessed FP32 tensor as binary data, and the same tensor as a JSON number list — at
//! concurrency 1 and 16; then a batch of 8 against 8 requests of batch 1, for the tabular
//! and the retina model (binary tensors).

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::load::{LoadFigures, Target, drive};
use crate::results::Header;
use crate::{Args, inputs, results};
use medchain_tests::system::{Cgroups, System};

/// What `medchain-bench v2` writes to `results/v2.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct V2Run {
    #[serde(flatten)]
    pub header: Header,
    pub ways: Vec<Way>,
    pub batches: Vec<Batching>,
    pub exited_during_run: Vec<(String, String)>,
}

/// One way of sending the image, at one concurrency.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Way {
    pub way: String,
    /// The request body, bytes.
    pub body_bytes: usize,
    pub load: LoadFigures,
}

/// The same number of rows or images sent in batches of `batch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batching {
    /// `tabular` or `retina`.
    pub model: String,
    pub batch: usize,
    /// `v2.image_run_batch`: images the model runs at once (the tabular model runs all its
    /// rows at once: the setting is the image models').
    pub image_run_batch: usize,
    /// Rows or images in all.
    pub items: usize,
    pub items_per_second: f64,
    pub load: LoadFigures,
    /// The serving process' peak RSS (VmHWM) during the run (reset just before it), MB: what
    /// the batch's working memory adds.
    pub service_peak_mb: Option<f64>,
}

fn say(msg: &str) {
    eprintln!("==> {msg}");
}

/// The retina model's input for `jpeg`, preprocessed by the service's own code.
fn tensor(jpeg: &[u8]) -> anyhow::Result<Vec<f32>> {
    tensor_of("diabetes", jpeg)
}

/// The image model's input of `disease` for `jpeg`, preprocessed by the service's own code.
fn tensor_of(disease: &str, jpeg: &[u8]) -> anyhow::Result<Vec<f32>> {
    let settings = if disease == "heart" {
        medchain_heart_svc::load_settings()?
    } else {
        medchain_diabetes_svc::load_settings()?
    };
    let card = medchain_serving::card::ModelCard::from_file(
        &settings.models.dir().join(&settings.models.image.card),
    )?;
    let pre = card
        .preprocessing
        .ok_or_else(|| anyhow::anyhow!("the retina card has no preprocessing"))?;
    let p = medchain_serving::inputs::image::prepare(jpeg, &pre, &settings.images, false)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(p.tensor)
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A binary V2 request of one FP32 input `name` of `shape`.
fn fp32(url: &str, name: &str, shape: &[usize], data: &[f32]) -> Target {
    let blob = le_bytes(data);
    let doc = json!({"inputs": [{"name": name, "shape": shape, "datatype": "FP32",
        "parameters": {"binary_data_size": blob.len()}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}]});
    Target::v2(url.to_string(), &doc, &[blob])
}

/// The four ways of sending one 224×224 JPEG to the retina model.
fn ways(gw: &str, key: &str, jpeg: &[u8], t: &[f32]) -> Vec<(&'static str, Target)> {
    let v2 = format!("{gw}/api/v1/diabetes/v2/models/diabetes-retina/infer");
    let file = [(jpeg.len() as u32).to_le_bytes().to_vec(), jpeg.to_vec()].concat();
    let bytes_doc = json!({"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
        "parameters": {"binary_data_size": file.len()}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}]});
    let json_doc = json!({"inputs": [{"name": "image", "shape": [1, 3, 224, 224],
        "datatype": "FP32", "data": t}], "outputs": [{"name": "probabilities"}]});
    vec![
        (
            "JSON API: multipart upload of the JPEG",
            Target::image(
                format!("{gw}/api/v1/diabetes/predict/retina"),
                jpeg,
                "image/jpeg",
                None,
            ),
        ),
        (
            "V2 binary: the JPEG as a BYTES input",
            Target::v2(v2.clone(), &bytes_doc, &[file]),
        ),
        (
            "V2 binary: the preprocessed FP32 tensor",
            fp32(&v2, "image", &[1, 3, 224, 224], t),
        ),
        (
            "V2 JSON: the preprocessed tensor as a number list",
            Target::v2(v2, &json_doc, &[]),
        ),
    ]
    .into_iter()
    .map(|(w, target)| (w, target.signed_in(key)))
    .collect()
}

pub async fn run(args: &Args) -> anyhow::Result<V2Run> {
    let logs = crate::repo_root().join(".data/bench/logs/v2");
    let header = results::run_header(args, "v2");
    say("starting the system (release binaries, embedded defaults)");
    let mut sys = System::start(&args.bin_dir, &logs, Cgroups::None, &[]).await?;
    let gw = sys.get("gateway").url();
    let key = sys.api_key.clone();
    let jpeg = inputs::small_jpeg("retina")?;
    let t = tensor(&jpeg)?;
    let mut results = Vec::new();
    for (way, target) in ways(&gw, &key, &jpeg, &t) {
        let _ = drive(&target, 1, 10).await; // the model's load and a warm-up, not recorded
        for c in [1, 16] {
            let n = match (args.quick, c) {
                (true, _) => 2 * c,
                (false, 1) => 150,
                (false, _) => 320,
            };
            let load = drive(&target, c, n).await.figures();
            eprintln!(
                "    {way:<50} c={c:<2} p50 {:>7.2} ms  {:>6.1} req/s  failed {}",
                load.p50_ms.unwrap_or(f64::NAN),
                load.throughput_rps,
                load.failed
            );
            results.push(Way {
                way: way.into(),
                body_bytes: target.body.len(),
                load,
            });
        }
    }
    let ecg = tensor_of("heart", &inputs::small_jpeg("ecg")?)?;
    let mut batches = batching(&sys, &gw, &key, [&t, &ecg], args.quick, 1).await?;
    let mut exited = sys.exited();
    sys.stop();
    drop(sys);
    // The image models running a whole batch of 8 at once: what it buys and what it costs.
    say("again with v2.image_run_batch = 8");
    let env = [
        ("DIABETES__V2__IMAGE_RUN_BATCH", "8"),
        ("HEART__V2__IMAGE_RUN_BATCH", "8"),
    ];
    let mut sys = System::start(
        &args.bin_dir,
        &logs.join("run-batch-8"),
        Cgroups::None,
        &env,
    )
    .await?;
    let gw = sys.get("gateway").url();
    let key = sys.api_key.clone();
    let whole = batching(&sys, &gw, &key, [&t, &ecg], args.quick, 8).await?;
    batches.extend(
        whole
            .into_iter()
            .filter(|b| b.model != "tabular" && b.batch == 8),
    );
    exited.extend(sys.exited());
    sys.stop();
    Ok(V2Run {
        header,
        ways: results,
        batches,
        exited_during_run: exited,
    })
}

/// Batch 8 against 8 × batch 1, the same rows or images in all, at concurrency 1: the tabular
/// and retina models of diabetes-svc and heart-svc's ECG model (`images`: the retina and ECG
/// tensors).
async fn batching(
    sys: &System,
    gw: &str,
    key: &str,
    images: [&[f32]; 2],
    quick: bool,
    image_run_batch: usize,
) -> anyhow::Result<Vec<Batching>> {
    let card = medchain_serving::card::ModelCard::from_file(
        &crate::repo_root().join("models/diabetes/tabular.card.json"),
    )?;
    let record = inputs::diabetes_record();
    let row: Vec<f32> = card
        .features
        .iter()
        .map(|f| record[&f.name].as_f64().unwrap_or(f64::NAN) as f32)
        .collect();
    let mut out = Vec::new();
    for (model, one, items) in [
        ("tabular", row.as_slice(), if quick { 16 } else { 4000 }),
        ("retina", images[0], if quick { 16 } else { 240 }),
        ("ecg", images[1], if quick { 16 } else { 80 }),
    ] {
        let (disease, service) = match model {
            "ecg" => ("heart", "heart-svc"),
            _ => ("diabetes", "diabetes-svc"),
        };
        for batch in [1usize, 8] {
            let data: Vec<f32> = std::iter::repeat_n(one, batch).flatten().copied().collect();
            let (name, shape) = match model {
                "tabular" => ("features", vec![batch, one.len()]),
                _ => ("image", vec![batch, 3, 224, 224]),
            };
            let url = format!("{gw}/api/v1/{disease}/v2/models/{disease}-{model}/infer");
            let target = fp32(&url, name, &shape, &data).signed_in(key);
            let _ = drive(&target, 1, 2).await;
            sys.reset_peaks();
            let load = drive(&target, 1, items / batch).await.figures();
            let service_peak_mb = sys
                .memory()
                .into_iter()
                .find(|(n, _)| n == service)
                .map(|(_, m)| m.hwm_mb);
            let items_per_second = load.throughput_rps * batch as f64;
            eprintln!(
                "    {model:<8} batch {batch}: {items_per_second:>8.1} per second (p50 {:.2} ms a request)",
                load.p50_ms.unwrap_or(f64::NAN)
            );
            out.push(Batching {
                model: model.into(),
                batch,
                image_run_batch: if model == "tabular" {
                    batch
                } else {
                    image_run_batch
                },
                items,
                items_per_second,
                load,
                service_peak_mb,
            });
        }
    }
    Ok(out)
}
