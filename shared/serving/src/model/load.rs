//! Loading a model: the download if it is configured by URL, the file's hash, the ONNX Runtime
//! session (of this CPU's offline-optimised variant when there is a good one), the card's
//! tensors and one warm-up run, inside the single-flight load.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ort::session::Session;

use super::guard::guard;
use super::optimized::{self, Refusal, Sidecar};
use super::verify::VerifiedFile;
use super::{FileCheck, LazyModel, LoadError, Loaded, remote};
use crate::card::ModelCard;
use crate::runtime::{self, Optimization};
use medchain_core::memory;

impl LazyModel {
    pub(super) async fn load(&self) -> Result<Arc<Loaded>, LoadError> {
        let card = self.card.as_ref().map_err(Clone::clone)?.clone();
        let remote = self.source.is_some();
        let variant = self.variant(&card);
        self.memory_guard(&card, variant.as_ref().map(|v| v.load_cost_bytes))?;
        let mut downloaded = None;
        if let Some(url) = &self.source
            && !self.onnx_path.is_file()
        {
            // Inside the single-flight load: concurrent first requests share this download.
            downloaded = Some(
                remote::fetch(
                    url,
                    &self.onnx_path,
                    &card.sha256,
                    card.size_bytes,
                    &self.download,
                )
                .await?,
            );
        }
        let path = self.onnx_path.clone();
        let runtime = self.runtime.clone();
        let start = Instant::now();
        let verified = self.verified.clone();
        let (key, memory) = (self.key.clone(), self.memory.clone());
        let card_dir = self.card_dir.clone();
        let loaded = tokio::task::spawn_blocking(move || -> Result<Loaded, LoadError> {
            let session = || -> Result<Loaded, LoadError> {
                runtime::ensure(&runtime)?;
                let before = memory::rss_bytes() as i64;
                // The variant is verified on its own (its sidecar names the card's model); the
                // portable file is read only if it is refused: reading both would have both
                // cached at once, charged to the container's memory (the single-instance run's
                // peak with the fp32 ECG model: 426 MB).
                if let Some(sidecar) = variant {
                    match variant_session(&runtime, &path, &card, &sidecar) {
                        Ok((session, warm_up)) => {
                            memory::release_free_memory();
                            return Ok(Loaded::new(
                                session,
                                start.elapsed().as_secs_f64() * 1e3,
                                memory::rss_bytes() as i64 - before,
                                warm_up,
                                Some(sidecar.cpu),
                            ));
                        }
                        Err(refusal) => {
                            note_refusal(&key, &refusal);
                            memory::release_free_memory();
                            guard(&memory, &card, None)?;
                        }
                    }
                }
                let file = open_verified(downloaded, &path, &card.sha256, &verified, remote)?;
                session_of(&file, &path, &runtime, &card, start, before)
            };
            let mut loaded = session()?;
            // Read with the model, so that a replaced file is read again with it.
            loaded.explainer = crate::explain::load(&card, &card_dir);
            if let Some(Err(reason)) = &loaded.explainer {
                tracing::warn!(model = %key, %reason, "model loaded unexplained");
            }
            Ok(loaded)
        })
        .await
        .map_err(|e| LoadError::Panicked(e.to_string()))??;
        self.note_loaded(&loaded);
        Ok(Arc::new(loaded))
    }

    /// The sidecar of this CPU's offline-optimised variant, if it may be tried (the file and
    /// its answer are checked as it loads); a variant refused here is logged and counted.
    fn variant(&self, card: &ModelCard) -> Option<Sidecar> {
        if !self.runtime.offline_optimized || self.source.is_some() {
            return None;
        }
        optimized::find(&self.onnx_path, card).unwrap_or_else(|refusal| {
            note_refusal(&self.key, &refusal);
            None
        })
    }

    /// Counts a load, keeps its figures for `/models`, and says so in metrics and the log.
    fn note_loaded(&self, loaded: &Loaded) {
        let key = &self.key;
        self.loads.fetch_add(1, Ordering::Relaxed);
        *self.last_load.lock().unwrap_or_else(|e| e.into_inner()) = Some((
            loaded.load_ms,
            loaded.rss_added_bytes,
            loaded.optimized.clone(),
        ));
        metrics::counter!(medchain_core::metrics::name("model_loads_total"), "model" => key.clone())
            .increment(1);
        metrics::gauge!(medchain_core::metrics::name("model_load_seconds"), "model" => key.clone())
            .set(loaded.load_ms / 1e3);
        metrics::gauge!(medchain_core::metrics::name("model_rss_added_bytes"), "model" => key.clone())
            .set(loaded.rss_added_bytes as f64);
        tracing::info!(
            model = %key,
            load_ms = loaded.load_ms,
            rss_added_mb = loaded.rss_added_bytes as f64 / 1048576.0,
            optimized = loaded.optimized.as_deref().unwrap_or("no"),
            "model loaded"
        );
    }
}

/// The model file, hashed at every load, whatever readiness saw (the result also serves
/// readiness), except right after a download, which hashed these very bytes as they arrived.
/// A bad cached copy of a `remote` model is not kept: the next load fetches it again. What is
/// hashed is what is loaded: one open file, whatever happens to the path meanwhile.
fn open_verified(
    downloaded: Option<std::fs::File>,
    path: &Path,
    sha256: &str,
    verified: &Mutex<Option<FileCheck>>,
    remote: bool,
) -> Result<VerifiedFile, LoadError> {
    if let Some(file) = downloaded {
        let file = VerifiedFile::from_download(file, path)?;
        *verified.lock().unwrap_or_else(|e| e.into_inner()) = Some((file.stamp(), Ok(())));
        return Ok(file);
    }
    VerifiedFile::open(path, sha256, verified).inspect_err(|_| {
        if remote {
            let _ = std::fs::remove_file(path);
        }
    })
}

/// A variant not used: said in the log and counted; the portable file is loaded instead.
fn note_refusal(key: &str, refusal: &Refusal) {
    tracing::warn!(
        model = %key,
        reason = %refusal,
        "offline-optimised variant not used; loading the portable model"
    );
    metrics::counter!(
        medchain_core::metrics::name("model_optimized_fallbacks_total"),
        "model" => key.to_string(),
        "reason" => refusal.kind()
    )
    .increment(1);
}

/// The session of this CPU's offline-optimised variant, checked (its file, its answer, the
/// card's tensors), and how long its check run (the warm-up) took.
fn variant_session(
    runtime_settings: &runtime::RuntimeSettings,
    path: &Path,
    card: &ModelCard,
    sidecar: &Sidecar,
) -> Result<(Session, std::time::Duration), Refusal> {
    let (session, warm_up) = optimized::load(runtime_settings, path, card, sidecar)?;
    check_tensors(&session, card).map_err(|e| Refusal::Load(e.to_string()))?;
    Ok((session, warm_up))
}

/// The ONNX Runtime session of the portable `file`, its tensors checked against the card and
/// run once.
fn session_of(
    file: &VerifiedFile,
    path: &Path,
    runtime_settings: &runtime::RuntimeSettings,
    card: &ModelCard,
    start: Instant,
    before: i64,
) -> Result<Loaded, LoadError> {
    let mut session = runtime::session(
        runtime_settings,
        &file.load_path(),
        card.modality,
        Optimization::Full,
    )
    .map_err(|e| {
        LoadError::Runtime(e.to_string().replace(
            &file.load_path().display().to_string(),
            &path.display().to_string(),
        ))
    })?;
    file.unchanged()?;
    file.drop_cache();
    check_tensors(&session, card)?;
    let warm_start = Instant::now();
    warm_run(&mut session, card)?;
    let warm_up = warm_start.elapsed();
    // Loading frees large transient buffers (the file's bytes, the parsed protobuf); glibc
    // keeps them unless asked to give them back.
    memory::release_free_memory();
    let rss_added_bytes = memory::rss_bytes() as i64 - before;
    Ok(Loaded::new(
        session,
        start.elapsed().as_secs_f64() * 1e3,
        rss_added_bytes,
        warm_up,
        None,
    ))
}

/// The session's tensors must be the card's.
fn check_tensors(session: &Session, card: &ModelCard) -> Result<(), LoadError> {
    let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
    if inputs != [card.input.name.as_str()] {
        return Err(LoadError::Tensors(format!(
            "ONNX inputs {inputs:?} do not match the card's [{:?}]",
            card.input.name
        )));
    }
    let element = session.inputs()[0].dtype().tensor_type();
    let dtype = match element {
        Some(ort::value::TensorElementType::Float32) => "float32",
        Some(ort::value::TensorElementType::Float64) => "float64",
        _ => "another type",
    };
    if dtype != card.input.dtype {
        return Err(LoadError::Tensors(format!(
            "ONNX input is {dtype}, the card says {} (only float32 and float64 inputs are served)",
            card.input.dtype
        )));
    }
    if let Some(shape) = session.inputs()[0].dtype().tensor_shape() {
        let dims: Vec<i64> = shape.iter().copied().collect();
        if dims != card.input.shape {
            return Err(LoadError::Tensors(format!(
                "ONNX input shape {dims:?} does not match the card's {:?}",
                card.input.shape
            )));
        }
    }
    let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
    let expected: Vec<&str> = card.outputs.iter().map(|o| o.name.as_str()).collect();
    if outputs != expected {
        return Err(LoadError::Tensors(format!(
            "ONNX outputs {outputs:?} do not match the card's {expected:?}"
        )));
    }
    Ok(())
}

/// One run on a neutral input, so that the first real request does not pay ONNX Runtime's
/// first-run allocations (and so that the load cost measured includes them).
fn warm_run(session: &mut Session, card: &ModelCard) -> Result<(), LoadError> {
    let dims: Vec<i64> = card.input.shape.iter().map(|&d| d.max(1)).collect();
    let len = dims.iter().product::<i64>() as usize;
    let tensor = if card.input.dtype == "float64" {
        ort::value::Tensor::from_array((dims, vec![0f64; len])).map(|t| t.into_dyn())
    } else {
        ort::value::Tensor::from_array((dims, vec![0f32; len])).map(|t| t.into_dyn())
    }
    .map_err(|e| LoadError::WarmUp(format!("cannot build the warm-up input: {e}")))?;
    session
        .run(ort::inputs![card.input.name.as_str() => tensor])
        .map(|_| ())
        .map_err(|e| LoadError::WarmUp(format!("warm-up inference failed: {e}")))
}

impl LazyModel {
    /// Makes this CPU's offline-optimised variant of the model beside its file
    /// (`optimize-models`); `None` for a model configured by URL, whose file is downloaded by
    /// the service and has no place to make one ahead of it.
    pub fn make_optimized(&self) -> anyhow::Result<Option<optimized::Made>> {
        let card = self.card.as_ref().map_err(Clone::clone)?;
        if self.source.is_some() {
            return Ok(None);
        }
        optimized::make(&self.runtime, &self.onnx_path, card).map(Some)
    }
}
