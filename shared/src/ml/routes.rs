//! The endpoints both disease services mount: tabular and image predictions, warm-up, the
//! model listing and readiness. A service supplies its two `LazyModel`s and route names.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use serde_json::Value;

use super::budget::{Budget, UploadBuffer};
use super::card::{Band, ModelCard};
use super::image::{self, IMAGE_FIELD, ImageLimits, Prepared, prepare};
use super::model::LazyModel;
use super::runtime::{self, RuntimeSettings};
use super::tabular::{self, TensorData};
use super::upload;
use crate::error::{ApiError, ApiResult};
use crate::health::{Check, readiness};
use crate::request::{RequestId, ValidJson};

/// A disease service's models and routes.
#[derive(Debug)]
pub struct DiseaseModels {
    pub service: &'static str,
    pub disease: &'static str,
    pub tabular: Arc<LazyModel>,
    /// The image model and the last segment of its route (`retina`, `ecg`).
    pub image: Arc<LazyModel>,
    pub image_route: &'static str,
    pub image_limits: ImageLimits,
    pub runtime: RuntimeSettings,
    /// Decodes running at once: each holds a decoded image, so this bounds their memory
    /// whatever the number of uploads waiting.
    pub decode_slots: Arc<tokio::sync::Semaphore>,
    /// Memory the decodes hold at once (`images.decode_budget_mb`).
    pub decode_budget: Budget,
    /// Upload bytes held at once, read and not yet decoded (`images.buffer_mb`).
    pub upload_buffer: Arc<UploadBuffer>,
    /// Records predictions that carry a patient id on chain-svc.
    pub audit: super::audit::AuditClient,
}

impl DiseaseModels {
    fn all(&self) -> [&Arc<LazyModel>; 2] {
        [&self.tabular, &self.image]
    }

    /// Sets the per-model gauges from the models' current status.
    fn record_gauges(&self) {
        for m in self.all() {
            let s = m.status();
            let key = s.key.clone();
            metrics::gauge!(crate::metrics::name("model_queue_depth"), "model" => key.clone())
                .set(s.waiting as f64);
            metrics::gauge!(crate::metrics::name("model_requests_served"), "model" => key)
                .set(s.requests_served as f64);
        }
        for (name, figures) in [
            ("image_decode_budget", self.decode_budget.figures()),
            ("image_upload_buffer", self.upload_buffer.figures()),
        ] {
            let gauge =
                |suffix: &str| metrics::gauge!(crate::metrics::name(&format!("{name}_{suffix}")));
            gauge("bytes").set(figures.bytes as f64);
            gauge("in_use_bytes").set(figures.in_use_bytes as f64);
            gauge("peak_bytes").set(figures.peak_bytes as f64);
        }
    }

    /// The hook `/metrics` calls at every scrape.
    pub fn scrape_hook(self: &Arc<Self>) -> crate::health::ScrapeHook {
        let me = Arc::downgrade(self);
        crate::health::ScrapeHook(Box::new(move || {
            if let Some(models) = me.upgrade() {
                models.record_gauges();
            }
        }))
    }

    /// Mounts the guarded routes (call inside the internal-token scope).
    pub fn routes(self: &Arc<Self>, cfg: &mut web::ServiceConfig) {
        cfg.app_data(web::Data::from(self.clone()))
            .route("/v1/predict/tabular", web::post().to(predict_tabular))
            .route(
                &format!("/v1/predict/{}", self.image_route),
                web::post().to(predict_image),
            )
            .route("/v1/warmup", web::post().to(warmup))
            .route("/v1/unload", web::post().to(unload))
            .route("/v1/cards", web::get().to(cards))
            .route("/models", web::get().to(models));
    }

    /// Starts the idle-unload watchers (call from within the runtime).
    pub fn spawn_watchers(&self) {
        for m in self.all() {
            m.spawn_idle_watcher();
            // Hash the model files now, in the background, so readiness knows early.
            m.start_verification();
        }
    }
}

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
pub use crate::contract::ModelRef;

/// A prediction response.
#[derive(Debug, Serialize)]
pub struct Prediction {
    pub prediction_id: String,
    pub disease: String,
    pub modality: &'static str,
    pub result: PredictionResult,
    pub model: ModelRef,
    pub demo: bool,
    pub notice: String,
    pub inference_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageInfo>,
    pub created_at_unix_ms: u64,
    /// The audit record of this prediction: chain-svc's receipt (status `pending`, then
    /// `confirmed` on chain), or `unrecorded` with the reason; null when no `patient_id` was
    /// given (nothing to record).
    pub audit: Option<Value>,
}

impl Prediction {
    /// Puts the model, the prediction id and the inference time on the request's span, so the
    /// access log line ("served") says which model answered, how fast, and which prediction it
    /// was. Nothing of the input or the patient.
    fn trace(&self) {
        let span = tracing::Span::current();
        span.record("model", self.model.id.as_str());
        span.record("prediction_id", self.prediction_id.as_str());
        span.record("inference_ms", self.inference_ms);
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

fn softmax(logits: &[f32]) -> Vec<f64> {
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

fn prediction(
    card: &ModelCard,
    probs: Vec<f64>,
    inference_ms: f64,
    image: Option<ImageInfo>,
) -> ApiResult<Prediction> {
    Ok(Prediction {
        prediction_id: uuid::Uuid::new_v4().to_string(),
        disease: card.disease.clone(),
        modality: match card.modality {
            super::card::Modality::Tabular => "tabular",
            super::card::Modality::Image => "image",
        },
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
        audit: None,
    })
}

fn ort_err(what: &'static str) -> impl Fn(ort::Error) -> ApiError {
    move |e| ApiError::Internal(anyhow::anyhow!("{what}: {e}"))
}

/// Runs an input of `shape` through `model` and returns the named (float32) output and the
/// time ONNX Runtime took.
async fn infer(
    model: &LazyModel,
    permit: &tokio::sync::OwnedSemaphorePermit,
    shape: Vec<i64>,
    data: TensorData,
    input: String,
    output: String,
) -> ApiResult<(Vec<f32>, f64)> {
    model
        .run(permit, move |session| {
            let tensor = match data {
                TensorData::F32(v) => {
                    ort::value::Tensor::from_array((shape, v)).map(|t| t.into_dyn())
                }
                TensorData::F64(v) => {
                    ort::value::Tensor::from_array((shape, v)).map(|t| t.into_dyn())
                }
            }
            .map_err(ort_err("input tensor"))?;
            let start = Instant::now();
            let outputs = session
                .run(ort::inputs![input.as_str() => tensor])
                .map_err(ort_err("inference"))?;
            let elapsed = start.elapsed().as_secs_f64() * 1e3;
            let (_, values) = outputs[output.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(ort_err("output tensor"))?;
            Ok((values.to_vec(), elapsed))
        })
        .await
}

/// `POST /v1/predict/tabular`
async fn predict_tabular(
    req: HttpRequest,
    models: web::Data<DiseaseModels>,
    body: ValidJson<Value>,
) -> ApiResult<HttpResponse> {
    let model = &models.tabular;
    let card = model.card()?;
    let input = tabular::validate(card, &body.0)?;
    // Only a prediction with a patient id is recorded, so only it needs the input's digest.
    let audit_input = match &input.patient_id {
        Some(pid) => {
            let canonical = crate::audit::canonical_features(&input.canonical)
                .map_err(|k| ApiError::Internal(anyhow::anyhow!("feature `{k}` not canonical")))?;
            Some((pid.clone(), crate::audit::sha256(&canonical)))
        }
        None => None,
    };
    let permit = model.admit()?;
    let n = input.features.len() as i64;
    let output = card
        .probabilities_output()
        .unwrap_or("probabilities")
        .to_string();
    let (probs, ms) = infer(
        model,
        &permit,
        vec![1, n],
        input.tensor_data(card),
        card.input.name.clone(),
        output,
    )
    .await?;
    drop(permit);
    let probs = probs.into_iter().map(f64::from).collect();
    let mut p = prediction(card, probs, ms, None)?;
    p.audit = models
        .audit
        .record(
            &p,
            audit_input,
            RequestId::of(&req),
            crate::auth::forwarded_caller(&req).map(|(id, _)| id),
        )
        .await;
    p.trace();
    Ok(HttpResponse::Ok().json(p))
}

/// `POST /v1/predict/{retina|ecg}`: multipart with an `image` file and optional `patient_id`.
async fn predict_image(
    req: HttpRequest,
    models: web::Data<DiseaseModels>,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let model = &models.image;
    let card = model.card()?.clone();
    // The body first, its bytes reserved as they arrive; the place in the model's queue only
    // once it is all in, so that slow senders hold neither (and a refusal is read, not reset).
    let upload = upload::read(&req, payload, &models.image_limits, &models.upload_buffer).await?;
    let permit = model.admit()?;
    let pre = card
        .preprocessing
        .clone()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("image card without preprocessing")))?;
    let limits = models.image_limits.clone();
    let span = tracing::Span::current();
    let _decode_slot = models
        .decode_slots
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("decode slots closed: {e}")))?;
    let runtime = tokio::runtime::Handle::current();
    let shared = models.clone();
    let (prepared, audit_input): (Prepared, Option<(String, [u8; 32])>) =
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let upload::Upload {
                image: bytes,
                patient_id,
                hold,
            } = upload;
            // What decoding will hold, from the header: refused if it alone exceeds the
            // budget, else reserved (waiting while other decodes hold it) before it starts.
            // Every holder of the budget holds a decode slot too, so the wait always ends.
            let budget = &shared.decode_budget;
            let _decoding = match image::decode_cost(&bytes, &pre) {
                Some(cost) if cost > budget.total_bytes() => {
                    return Err(ApiError::TooLarge {
                        detail: format!(
                            "decoding this image would take about {} MB of memory; this \
                             service decodes within {} MB — send an image with fewer pixels, or \
                             a baseline (not progressive) 8-bit JPEG",
                            cost.div_ceil(1 << 20),
                            budget.total_bytes() >> 20
                        ),
                        field: Some(IMAGE_FIELD.into()),
                    });
                }
                Some(cost) => Some(runtime.block_on(budget.reserve(cost))),
                None => None,
            };
            let prepared = prepare(&bytes, &pre, &limits)?;
            // The uploaded bytes are the recorded input; hashed only when there is a patient.
            let audit_input = patient_id.map(|pid| (pid, crate::audit::sha256(&bytes)));
            drop(bytes);
            drop(hold);
            Ok::<_, ApiError>((prepared, audit_input))
        })
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("preprocessing task failed: {e}")))??;
    drop(_decode_slot);
    let info = ImageInfo {
        format: prepared.format,
        width: prepared.original_width,
        height: prepared.original_height,
        decode_scale: prepared.decode_scale,
    };
    let shape = vec![1, 3, i64::from(prepared.height), i64::from(prepared.width)];
    let output = card.logits_output().unwrap_or("logits").to_string();
    let (logits, ms) = infer(
        model,
        &permit,
        shape,
        TensorData::F32(prepared.tensor),
        card.input.name.clone(),
        output,
    )
    .await?;
    drop(permit);
    let mut p = prediction(&card, softmax(&logits), ms, Some(info))?;
    p.audit = models
        .audit
        .record(
            &p,
            audit_input,
            RequestId::of(&req),
            crate::auth::forwarded_caller(&req).map(|(id, _)| id),
        )
        .await;
    p.trace();
    Ok(HttpResponse::Ok().json(p))
}

/// `POST /v1/unload`: drops both models' sessions (an operator freeing memory, or making the
/// next request load a changed file); each loads again on its next request.
async fn unload(models: web::Data<DiseaseModels>) -> HttpResponse {
    let models: Vec<serde_json::Value> = models
        .all()
        .into_iter()
        .map(|m| {
            let running = m.unload();
            serde_json::json!({
                "key": m.key(),
                "unloaded": running.is_some(),
                // Requests that finish on the session they hold; it is freed after them.
                "finishing": running.unwrap_or(0),
            })
        })
        .collect();
    HttpResponse::Ok().json(serde_json::json!({ "models": models }))
}

/// `POST /v1/warmup`: starts loading both models in the background; returns at once.
async fn warmup(models: web::Data<DiseaseModels>) -> HttpResponse {
    for m in models.all() {
        m.warm_up();
    }
    HttpResponse::Accepted().json(serde_json::json!({
        "status": "warming",
        "models": models.all().iter().map(|m| m.key()).collect::<Vec<_>>(),
    }))
}

/// `GET /v1/cards`: both model cards (features with units and ranges, classes, preprocessing,
/// provenance, metrics, the demo notice), for forms and model summaries. Loads nothing.
async fn cards(models: web::Data<DiseaseModels>) -> HttpResponse {
    let card = |m: &Arc<LazyModel>| match m.card() {
        Ok(c) => serde_json::to_value(c).unwrap_or(Value::Null),
        Err(e) => serde_json::json!({"error": e.to_string()}),
    };
    HttpResponse::Ok().json(serde_json::json!({
        "disease": models.disease,
        "tabular": card(&models.tabular),
        "image": card(&models.image),
        "image_route": models.image_route,
    }))
}

/// `GET /models`: every model's state and figures, and the process's memory.
async fn models(models: web::Data<DiseaseModels>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "service": models.service,
        "disease": models.disease,
        "onnxruntime_loaded": runtime::is_loaded(),
        "memory": crate::memory::read(),
        "image_memory": {
            "decode_budget": models.decode_budget.figures(),
            "upload_buffer": models.upload_buffer.figures(),
        },
        "models": models.all().iter().map(|m| m.status()).collect::<Vec<_>>(),
    }))
}

/// `GET /readyz`: settings valid, the ONNX Runtime library present, both model files present
/// with the card's size and not known to mismatch its hash (hashed in the background once per
/// file version, never waited for). Loads nothing.
pub async fn readyz(models: web::Data<DiseaseModels>) -> HttpResponse {
    let mut checks = vec![Check {
        name: "onnxruntime_library".into(),
        ok: models.runtime.library_present().is_ok(),
        detail: models
            .runtime
            .library_present()
            .err()
            .unwrap_or_else(|| models.runtime.library().display().to_string()),
    }];
    for m in models.all() {
        let result = m.readiness();
        checks.push(Check {
            name: format!("model_{}", m.key()),
            ok: result.is_ok(),
            detail: result.unwrap_or_else(|e| e),
        });
    }
    readiness(models.service, checks)
}
