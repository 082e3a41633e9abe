//! `POST /v2/models/{name}[/versions/{v}]/infer`. A tabular model takes its `[N, F]` feature
//! tensor, every element checked against the card exactly as the JSON API checks a field (NaN
//! is a missing value, where the card allows one). An image model takes either its
//! `[N, 3, H, W]` tensor, already preprocessed, or `image_bytes`: `[N]` encoded files, each
//! decoded and preprocessed as an upload is, within the same budgets. `N` is at most
//! `v2.max_batch`. A request with a `patient_id` parameter (batch 1) is recorded on chain as
//! a JSON-API prediction is; every response's parameters carry the model, its demo flag and
//! notice, and any audit receipt.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;

use super::binary::{self, Request};
use super::meta::{IMAGE_BYTES_INPUT, PROBABILITIES, signature};
use super::tensor::{self, Elements, output_bytes, output_datatype, output_json};
use super::wire::{InferResponse, Parameters, RequestInput, ResponseOutput};
use super::{ModelPath, V2Error, model_name, resolve};
use crate::card::{Modality, ModelCard};
use crate::inference::{self, OutputData, Wanted};
use crate::inputs::tabular::{self, PATIENT_ID, TensorData};
use crate::model::LazyModel;
use crate::prediction::{ImageInfo, Prediction, softmax};
use crate::state::DiseaseModels;
use crate::upload;
use medchain_core::domain::PatientId;
use medchain_core::error::ApiError;
use tokio::sync::OwnedSemaphorePermit;

/// `POST …/infer`.
pub(super) async fn infer(
    req: HttpRequest,
    models: web::Data<DiseaseModels>,
    path: web::Path<ModelPath>,
    payload: web::Payload,
) -> Result<HttpResponse, V2Error> {
    let model = resolve(&models, &path)?.clone();
    let card = model.card()?.clone();
    let max_body = models.v2.max_body_mb.get() << 20;
    let (body, hold) = upload::read_whole(
        &req,
        payload,
        max_body,
        &models.image_limits,
        &models.upload_buffer,
    )
    .await?;
    // Twice what a full batch takes: a request a little over the batch limit is still read,
    // and told so by name; one far over it is refused as it is read.
    let max_elements = 2 * max_elements(&models, &card);
    let Request { doc, binary } = binary::split(req.headers(), body, max_elements)?;
    let outputs = requested_outputs(&card, &doc)?;
    let patient_id = patient_param(&doc.parameters)?;
    let [input] = doc.inputs.as_slice() else {
        return Err(V2Error::bad(format!(
            "send exactly one input; model `{}` takes {}",
            path.name,
            input_list(&card)
        )));
    };
    let elements = tensor::read(input, binary[0].as_deref(), max_elements)?;
    drop(binary);
    let ran = match card.modality {
        Modality::Tabular => {
            drop(hold);
            let record = patient_id.is_some();
            tabular_run(&models, &model, &card, input, elements, &outputs, record).await
        }
        Modality::Image if input.name == IMAGE_BYTES_INPUT => {
            let files = image_files(&models, input, elements)?;
            files_run(
                &models,
                &model,
                &card,
                files,
                hold,
                &outputs,
                patient_id.is_some(),
            )
            .await
        }
        Modality::Image => {
            drop(hold);
            image_tensor_run(
                &models,
                &model,
                &card,
                input,
                elements,
                &outputs,
                &patient_id,
            )
            .await
        }
    }?;
    respond(
        &req, &models, &model, &card, doc.id, outputs, ran, patient_id,
    )
    .await
}

/// The most tensor elements a request to the model may carry: a batch of `v2.max_batch` of
/// its input (a dimension of any size counted as an image at the pixel limit). What a request
/// holds in memory is bounded by it, whatever the body's size.
fn max_elements(models: &DiseaseModels, card: &ModelCard) -> usize {
    let pixels = (models.image_limits.max_megapixels * 1e6) as usize;
    let per_item = card
        .input
        .shape
        .iter()
        .skip(1)
        .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
        .unwrap_or(3 * pixels);
    per_item.saturating_mul(models.v2.max_batch.get())
}

/// An output the request asked for, and whether as binary data.
struct Out {
    name: String,
    binary: bool,
}

/// The outputs asked for (all of the model's when the request names none), each checked.
fn requested_outputs(
    card: &ModelCard,
    doc: &super::wire::InferRequest,
) -> Result<Vec<Out>, V2Error> {
    let all_binary = flag(&doc.parameters, "binary_data_output")?.unwrap_or(false);
    let (_, known) = signature(card);
    let Some(asked) = &doc.outputs else {
        return Ok(known
            .into_iter()
            .map(|t| Out {
                name: t.name,
                binary: all_binary,
            })
            .collect());
    };
    asked
        .iter()
        .map(|o| {
            if !known.iter().any(|t| t.name == o.name) {
                let names: Vec<String> = known.iter().map(|t| format!("`{}`", t.name)).collect();
                return Err(V2Error::bad(format!(
                    "unknown output `{}`; the model gives {}",
                    o.name,
                    names.join(", ")
                )));
            }
            if o.parameters.contains_key("classification") {
                return Err(V2Error::bad(format!(
                    "output `{}`: the classification extension is not supported",
                    o.name
                )));
            }
            Ok(Out {
                name: o.name.clone(),
                binary: flag(&o.parameters, "binary_data")?.unwrap_or(all_binary),
            })
        })
        .collect()
}

/// A boolean parameter, if given.
fn flag(parameters: &Parameters, name: &str) -> Result<Option<bool>, V2Error> {
    match parameters.get(name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(V2Error::bad(format!(
            "parameter `{name}` must be true or false, got {other}"
        ))),
    }
}

/// The `patient_id` request parameter, checked as the JSON API checks the field.
fn patient_param(parameters: &Parameters) -> Result<Option<PatientId>, V2Error> {
    Ok(tabular::patient_id(parameters.get(PATIENT_ID))?)
}

fn input_list(card: &ModelCard) -> String {
    let (inputs, _) = signature(card);
    let list: Vec<String> = inputs
        .iter()
        .map(|t| format!("`{}` {} {:?}", t.name, t.datatype, t.shape))
        .collect();
    list.join(" or ")
}

/// The batch size of a shape whose first dimension it is, within `v2.max_batch`.
fn batch(models: &DiseaseModels, input: &RequestInput) -> Result<usize, V2Error> {
    let n = input.shape.first().copied().unwrap_or(0);
    let max = models.v2.max_batch.get();
    if n < 1 || n as usize > max {
        return Err(V2Error::bad(format!(
            "input `{}`: batch size {n} (the shape's first dimension) must be between 1 and {max} \
             (v2.max_batch)",
            input.name
        )));
    }
    Ok(n as usize)
}

fn numbers(input: &RequestInput, elements: Elements) -> Result<Vec<f64>, V2Error> {
    match elements {
        Elements::F32(v) => Ok(v.into_iter().map(f64::from).collect()),
        Elements::Numbers(v) => Ok(v),
        Elements::Bytes(_) => Err(not_bytes(input)),
    }
}

/// The elements as float32, the image models' input type.
fn floats(input: &RequestInput, elements: Elements) -> Result<Vec<f32>, V2Error> {
    match elements {
        Elements::F32(v) => Ok(v),
        Elements::Numbers(v) => Ok(v.into_iter().map(|x| x as f32).collect()),
        Elements::Bytes(_) => Err(not_bytes(input)),
    }
}

fn not_bytes(input: &RequestInput) -> V2Error {
    V2Error::bad(format!("input `{}` takes numbers, not BYTES", input.name))
}

/// What a model's run gave: the outputs in the order asked for, the inference time, the class
/// probabilities of each row, what was seen of each image, and the recorded input's digest.
struct Ran {
    outputs: Vec<(Vec<i64>, OutputData)>,
    inference_ms: f64,
    probabilities: Vec<Vec<f64>>,
    images: Vec<ImageInfo>,
    digest: Option<[u8; 32]>,
}

async fn tabular_run(
    models: &DiseaseModels,
    model: &LazyModel,
    card: &ModelCard,
    input: &RequestInput,
    elements: Elements,
    outputs: &[Out],
    record: bool,
) -> Result<Ran, V2Error> {
    if input.name != card.input.name {
        return Err(V2Error::bad(format!(
            "unknown input `{}`; the model takes {}",
            input.name,
            input_list(card)
        )));
    }
    let width = card.features.len();
    if input.shape.len() != 2 || input.shape[1] != width as i64 {
        return Err(V2Error::bad(format!(
            "input `{}`: shape {:?} must be [N, {width}] (one row of the card's {width} features \
             per prediction)",
            input.name, input.shape
        )));
    }
    let n = batch(models, input)?;
    let values = numbers(input, elements)?;
    let mut rows = Vec::with_capacity(n);
    for (r, row) in values.chunks(width).enumerate() {
        rows.push(checked_row(card, input, r, row)?);
    }
    // Only a prediction with a patient id is recorded, so only it needs the input's digest.
    let digest = match rows.as_slice() {
        _ if !record => None,
        [row] => {
            let canonical = medchain_core::audit::canonical_features(&tabular::canonical(
                card, row,
            ))
            .map_err(|k| ApiError::Internal(anyhow::anyhow!("feature `{k}` not canonical")))?;
            Some(medchain_core::audit::sha256(&canonical))
        }
        _ => {
            return Err(V2Error::bad(format!(
                "`{PATIENT_ID}` records one prediction: send one row with it"
            )));
        }
    };
    let flat: Vec<f64> = rows
        .iter()
        .flatten()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect();
    let data = if card.input.dtype == "float64" {
        TensorData::F64(flat)
    } else {
        TensorData::F32(flat.iter().map(|&x| x as f32).collect())
    };
    let probs_name = card
        .probabilities_output()
        .unwrap_or(PROBABILITIES)
        .to_string();
    let permit = model.admit()?;
    let (outputs, inference_ms, probs) = run(
        model,
        &permit,
        card,
        vec![n as i64, width as i64],
        data,
        outputs,
        &probs_name,
    )
    .await?;
    Ok(Ran {
        outputs,
        inference_ms,
        probabilities: probs
            .chunks(card.classes.len().max(1))
            .map(|c| c.to_vec())
            .collect(),
        images: Vec::new(),
        digest,
    })
}

/// Row `r` of a feature tensor, each element checked against its feature (`None`: missing).
fn checked_row(
    card: &ModelCard,
    input: &RequestInput,
    r: usize,
    row: &[f64],
) -> Result<Vec<Option<f64>>, V2Error> {
    card.features
        .iter()
        .zip(row)
        .map(|(f, &x)| {
            if x.is_nan() {
                return if f.nullable {
                    Ok(None)
                } else {
                    Err(V2Error::bad(format!(
                        "input `{}`, row {r}: `{}` is required (NaN marks a missing value, \
                         which only nullable features may have)",
                        input.name, f.name
                    )))
                };
            }
            // An FP32 element stands for the decimal the client wrote (28.4, not the float's
            // 28.399999618530273): the value checked and, for a recorded prediction, digested
            // as the JSON API digests the same field, so the same features verify either way.
            let x = if input.datatype == "FP32" {
                let f32_value = x as f32;
                f32_value.to_string().parse().unwrap_or(x)
            } else {
                x
            };
            tabular::check_value(f, x)
                .map(Some)
                .map_err(|e| V2Error::bad(format!("input `{}`, row {r}: {e}", input.name)))
        })
        .collect()
}

async fn image_tensor_run(
    models: &DiseaseModels,
    model: &LazyModel,
    card: &ModelCard,
    input: &RequestInput,
    elements: Elements,
    outputs: &[Out],
    patient_id: &Option<PatientId>,
) -> Result<Ran, V2Error> {
    if input.name != card.input.name {
        return Err(V2Error::bad(format!(
            "unknown input `{}`; the model takes {}",
            input.name,
            input_list(card)
        )));
    }
    if patient_id.is_some() {
        return Err(V2Error::bad(format!(
            "a prediction is recorded with the input it was made from, which a preprocessed \
             tensor is not: send the image file as `{IMAGE_BYTES_INPUT}` to record it, or leave \
             out `{PATIENT_ID}`"
        )));
    }
    let want = &card.input.shape;
    let fits = input.shape.len() == want.len()
        && input
            .shape
            .iter()
            .zip(want)
            .skip(1)
            .all(|(&d, &w)| w < 0 || d == w);
    if !fits {
        return Err(V2Error::bad(format!(
            "input `{}`: shape {:?} must be {:?} with N the batch size (the tensor as the \
             card's preprocessing makes it)",
            input.name, input.shape, want
        )));
    }
    batch(models, input)?;
    let data = floats(input, elements)?;
    if let Some(i) = data.iter().position(|x| !x.is_finite()) {
        return Err(V2Error::bad(format!(
            "input `{}`: element {i} is not a finite number",
            input.name
        )));
    }
    let slice = models.v2.image_run_batch.get();
    image_run(
        model,
        card,
        input.shape.clone(),
        data,
        slice,
        outputs,
        Vec::new(),
        None,
    )
    .await
}

/// The encoded files of an `image_bytes` input: `[N]` or `[N, 1]`.
fn image_files(
    models: &DiseaseModels,
    input: &RequestInput,
    elements: Elements,
) -> Result<Vec<Vec<u8>>, V2Error> {
    let shape_ok = matches!(input.shape.as_slice(), [_] | [_, 1]);
    if !shape_ok {
        return Err(V2Error::bad(format!(
            "input `{IMAGE_BYTES_INPUT}`: shape {:?} must be [N] (one encoded image file each)",
            input.shape
        )));
    }
    batch(models, input)?;
    match elements {
        Elements::Bytes(files) => Ok(files),
        Elements::Numbers(_) | Elements::F32(_) => Err(V2Error::bad(format!(
            "input `{IMAGE_BYTES_INPUT}` takes BYTES: the encoded image files"
        ))),
    }
}

async fn files_run(
    models: &web::Data<DiseaseModels>,
    model: &LazyModel,
    card: &ModelCard,
    files: Vec<Vec<u8>>,
    hold: crate::budget::UploadHold,
    outputs: &[Out],
    record: bool,
) -> Result<Ran, V2Error> {
    if record && files.len() != 1 {
        return Err(V2Error::bad(format!(
            "`{PATIENT_ID}` records one prediction: send one image with it"
        )));
    }
    let pre = card
        .preprocessing
        .clone()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("image card without preprocessing")))?;
    let state: Arc<DiseaseModels> = models.clone().into_inner();
    let n = files.len();
    let mut hold = Some(hold);
    let mut data = Vec::new();
    let mut images = Vec::with_capacity(n);
    let mut size = None;
    let mut digest = None;
    for (i, file) in files.into_iter().enumerate() {
        // The body's share of the upload buffer goes back with the last file decoded.
        let last_hold = if i + 1 == n { hold.take() } else { None };
        let (prepared, d) =
            inference::decode(state.clone(), file, last_hold, pre.clone(), record, false)
                .await
                .map_err(|e| {
                    V2Error::from(e).context(&format!("input `{IMAGE_BYTES_INPUT}`, element {i}"))
                })?;
        let dims = (prepared.height, prepared.width);
        if *size.get_or_insert(dims) != dims {
            return Err(V2Error::bad(format!(
                "input `{IMAGE_BYTES_INPUT}`: element {i} preprocesses to {}×{}, the first to \
                 {}×{}; send images of one aspect ratio together, or one per request",
                dims.1,
                dims.0,
                size.map_or(0, |s| s.1),
                size.map_or(0, |s| s.0)
            )));
        }
        digest = digest.or(d);
        images.push(ImageInfo {
            format: prepared.format,
            width: prepared.original_width,
            height: prepared.original_height,
            decode_scale: prepared.decode_scale,
        });
        data.extend_from_slice(&prepared.tensor);
    }
    let (h, w) = size.unwrap_or((0, 0));
    let shape = vec![n as i64, 3, i64::from(h), i64::from(w)];
    let slice = models.v2.image_run_batch.get();
    image_run(model, card, shape, data, slice, outputs, images, digest).await
}

/// Runs a batch of images (`shape` `[N, 3, H, W]`) through the model `slice` images at a time:
/// each image run at once adds the model's working memory for one image (ONNX Runtime's arena
/// keeps the largest it has needed), so `v2.image_run_batch` bounds what a batch can add.
#[allow(clippy::too_many_arguments)]
async fn image_run(
    model: &LazyModel,
    card: &ModelCard,
    shape: Vec<i64>,
    mut data: Vec<f32>,
    slice: usize,
    outputs: &[Out],
    images: Vec<ImageInfo>,
    digest: Option<[u8; 32]>,
) -> Result<Ran, V2Error> {
    let logits = card.logits_output().unwrap_or("logits").to_string();
    let n = shape.first().copied().unwrap_or(1).max(1) as usize;
    let per_image = data.len() / n;
    let mut outs: Vec<(Vec<i64>, OutputData)> = Vec::new();
    let (mut inference_ms, mut logit_values) = (0.0, Vec::new());
    // One place in the model's queue for the whole batch: its slices run one after another.
    let permit = model.admit()?;
    for first in (0..n).step_by(slice.max(1)) {
        let k = slice.max(1).min(n - first);
        let mut part_shape = shape.clone();
        part_shape[0] = k as i64;
        // The whole batch at once is the tensor itself; a slice is a copy of its part.
        let part = if k == n {
            std::mem::take(&mut data)
        } else {
            data[first * per_image..(first + k) * per_image].to_vec()
        };
        let (part_outs, ms, values) = run(
            model,
            &permit,
            card,
            part_shape,
            TensorData::F32(part),
            outputs,
            &logits,
        )
        .await?;
        inference_ms += ms;
        logit_values.extend(values);
        if outs.is_empty() {
            outs = part_outs;
        } else {
            for ((shape, all), (part_shape, part)) in outs.iter_mut().zip(part_outs) {
                shape[0] += part_shape.first().copied().unwrap_or(0);
                match (all, part) {
                    (OutputData::F32(a), OutputData::F32(b)) => a.extend(b),
                    (OutputData::I64(a), OutputData::I64(b)) => a.extend(b),
                    _ => {
                        return Err(V2Error::from(ApiError::Internal(anyhow::anyhow!(
                            "an output changed type between slices of a batch"
                        ))));
                    }
                }
            }
        }
    }
    drop(data);
    let classes = card.classes.len().max(1);
    let probabilities: Vec<Vec<f64>> = logit_values
        .chunks(classes)
        .map(|row| softmax(&row.iter().map(|&x| x as f32).collect::<Vec<_>>()))
        .collect();
    // The derived output, where it was asked for (the model itself gives only logits).
    for (o, out) in outputs.iter().zip(outs.iter_mut()) {
        if o.name == PROBABILITIES && !card.outputs.iter().any(|t| t.name == PROBABILITIES) {
            let flat = probabilities.iter().flatten().map(|&p| p as f32).collect();
            *out = (
                vec![probabilities.len() as i64, classes as i64],
                OutputData::F32(flat),
            );
        }
    }
    Ok(Ran {
        outputs: outs,
        inference_ms,
        probabilities,
        images,
        digest,
    })
}

/// Runs the model for the outputs asked for (the model's own; a derived one is read as its
/// source, `source`, and replaced by the caller) and returns them, the inference time and the
/// values of `source` (the probabilities or logits every prediction is built from).
async fn run(
    model: &LazyModel,
    permit: &OwnedSemaphorePermit,
    card: &ModelCard,
    shape: Vec<i64>,
    data: TensorData,
    outputs: &[Out],
    source: &str,
) -> Result<(Vec<(Vec<i64>, OutputData)>, f64, Vec<f64>), V2Error> {
    let int64 = |name: &str| {
        card.outputs
            .iter()
            .any(|t| t.name == name && t.dtype == "int64")
    };
    let own = |name: &str| card.outputs.iter().any(|t| t.name == name);
    // The source first, then each output asked for (a derived one reads the source again).
    let wanted: Vec<Wanted> = std::iter::once(source)
        .chain(outputs.iter().map(|o| o.name.as_str()))
        .map(|name| {
            let name = if own(name) { name } else { source };
            Wanted {
                name: name.to_string(),
                int64: int64(name),
            }
        })
        .collect();
    let input = card.input.name.clone();
    let (mut read, ms) = inference::run(model, permit, shape, data, input, wanted).await?;
    let (_, source_data) = read.remove(0);
    let source_values = match source_data {
        OutputData::F32(v) => v.into_iter().map(f64::from).collect(),
        OutputData::I64(v) => v.into_iter().map(|x| x as f64).collect(),
    };
    Ok((read, ms, source_values))
}

/// The response: each output as JSON or binary data, as asked; the parameters every answer
/// carries (the model, its demo flag and notice) and, for a request naming a patient, the
/// audit receipt of its recorded prediction.
#[allow(clippy::too_many_arguments)]
async fn respond(
    req: &HttpRequest,
    models: &DiseaseModels,
    model: &LazyModel,
    card: &ModelCard,
    id: Option<String>,
    outputs: Vec<Out>,
    ran: Ran,
    patient_id: Option<PatientId>,
) -> Result<HttpResponse, V2Error> {
    let mut parameters = Parameters::new();
    parameters.insert("model_id".into(), card.model_id.clone().into());
    parameters.insert("model_sha256".into(), card.sha256.clone().into());
    parameters.insert("demo".into(), card.demo.into());
    parameters.insert("notice".into(), card.notice.clone().into());
    parameters.insert("inference_ms".into(), ran.inference_ms.into());
    medchain_core::request::note_prediction(
        req,
        medchain_core::request::Served {
            model: card.model_id.clone(),
            prediction_id: None,
            inference_ms: ran.inference_ms,
        },
    );
    if let Some(pid) = patient_id {
        let probs = ran.probabilities.into_iter().next().unwrap_or_default();
        let p = Prediction::new(card, probs, ran.inference_ms, ran.images.into_iter().next())?;
        let audit_input = ran.digest.map(|d| (pid, d));
        let p = inference::record(req, models, p, audit_input).await;
        parameters.insert("prediction_id".into(), p.prediction_id.clone().into());
        audit_parameters(&mut parameters, &p)?;
    }
    let mut binary = Vec::new();
    let outputs = outputs
        .into_iter()
        .zip(ran.outputs)
        .map(|(o, (shape, data))| {
            let mut p = Parameters::new();
            let json = if o.binary {
                let bytes = output_bytes(&data);
                p.insert("binary_data_size".into(), bytes.len().into());
                binary.push(bytes);
                None
            } else {
                Some(output_json(&data))
            };
            ResponseOutput {
                name: o.name,
                datatype: output_datatype(&data),
                shape,
                parameters: p,
                data: json,
            }
        })
        .collect();
    let doc = InferResponse {
        model_name: model_name(models, model.key()),
        model_version: card.version.clone(),
        id,
        parameters,
        outputs,
    };
    binary::respond(&doc, binary)
}

/// The prediction's audit as parameters (the protocol's parameters are strings, numbers and
/// booleans): each field of the receipt as `audit_<field>`.
fn audit_parameters(parameters: &mut Parameters, p: &Prediction) -> Result<(), V2Error> {
    let audit =
        serde_json::to_value(&p.audit).map_err(|e| V2Error::from(ApiError::Internal(e.into())))?;
    if let Value::Object(fields) = audit {
        for (k, v) in fields {
            let v = match v {
                Value::Null => continue,
                v @ (Value::Bool(_) | Value::Number(_) | Value::String(_)) => v,
                other => Value::String(other.to_string()),
            };
            parameters.insert(format!("audit_{k}"), v);
        }
    }
    Ok(())
}
