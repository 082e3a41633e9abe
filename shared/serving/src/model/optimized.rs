//! Offline-optimised variants of a model. Building a session at ONNX Runtime's full
//! optimisation rewrites a CNN's convolutions into its blocked NCHWc layout, and holds the old
//! weights and the new ones at once while it does: heart-svc's ResNet50 peaked at 245 MB for a
//! steady 138 MB. `<service> optimize-models` does that rewrite once, ahead of time, and saves
//! the graph beside the model; the service then loads the saved graph with optimisation off —
//! the same graph, without the transient.
//!
//! A saved graph belongs to the CPU it was made on (the NCHWc block is 8 floats with AVX2, 16
//! with AVX-512: run elsewhere, its kernels would read the weights wrongly) and to the ONNX
//! Runtime version. So a variant is looked for under this CPU's class only, and used only if
//! its sidecar says it was made from the card's model, on this class, by this runtime version;
//! if its sha256 is the sidecar's; and if it reproduces, on a seeded input, the answer the full
//! optimisation gave when it was made. Anything else: the portable file is loaded, as without
//! a variant, and the reason is logged and counted (`model_optimized_fallbacks_total`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::session::Session;
use serde::{Deserialize, Serialize};

use super::LoadError;
use super::verify::VerifiedFile;
use crate::card::ModelCard;
use crate::runtime::{self, Optimization, RuntimeSettings};
use medchain_core::memory;

const SCHEMA_VERSION: u32 = 1;
/// The seed of the check input (any fixed value: the sidecar records it).
const CHECK_SEED: u64 = 0x6d65_6463_6861_696e;
/// How far the variant's answer may be from the recorded one. Both are the same graph run by
/// the same kernels, so they agree to rounding; a graph run with the wrong block size does not.
const CHECK_TOLERANCE: f32 = 1e-3;

/// What `optimize-models` writes beside a variant: where it came from and how to check it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    pub schema_version: u32,
    /// The sha256 of the portable model it was made from (the card's).
    pub source_sha256: String,
    /// The variant's file name, beside the model.
    pub file: String,
    pub sha256: String,
    pub size_bytes: u64,
    /// The ONNX Runtime version that made it.
    pub onnxruntime: String,
    /// The CPU class it was made on ([`cpu_class`]).
    pub cpu: String,
    /// What loading the variant added to the RSS of the process that made it (the memory
    /// guard's figure for it, in place of the card's).
    pub load_cost_bytes: u64,
    /// The full optimisation's answer on the seeded input.
    pub check: Check,
}

/// A seeded input and the answer to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub seed: u64,
    /// The output compared (the card's first).
    pub output: String,
    pub values: Vec<f32>,
}

/// What `optimize-models` made of one model.
#[derive(Debug, Clone)]
pub struct Made {
    pub variant: PathBuf,
    pub sidecar: Sidecar,
    /// The largest difference between the variant's answer and the full optimisation's.
    pub max_diff: f32,
}

/// This CPU's class, as far as ONNX Runtime's saved graphs depend on it: on x86-64, the widest
/// of AVX-512F, AVX2 with FMA, or SSE, which set its NCHWc block; elsewhere the architecture.
pub fn cpu_class() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let level = if std::arch::is_x86_feature_detected!("avx512f") {
            "avx512f"
        } else if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            "avx2"
        } else {
            "sse"
        };
        format!("x86_64-{level}")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.to_string()
    }
}

/// The variant of `model` for CPU class `cpu` and its sidecar: `ecg.onnx` →
/// `ecg.optimized.x86_64-avx2.onnx` and `ecg.optimized.x86_64-avx2.json`.
pub fn paths(model: &Path, cpu: &str) -> (PathBuf, PathBuf) {
    let stem = model
        .file_stem()
        .map_or_else(|| "model".into(), |s| s.to_string_lossy());
    (
        model.with_file_name(format!("{stem}.optimized.{cpu}.onnx")),
        model.with_file_name(format!("{stem}.optimized.{cpu}.json")),
    )
}

/// Why a variant was not used (the `reason` label of `model_optimized_fallbacks_total`,
/// and the log's text).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("its sidecar cannot be read: {0}")]
    Sidecar(String),
    #[error("it was made from another model (sha256 {0})")]
    Source(String),
    #[error("it was made by ONNX Runtime {0}, this is {ORT}", ORT = runtime::ORT_VERSION)]
    Runtime(String),
    #[error("it was made on a {0} CPU, this one is {1}")]
    Cpu(String, String),
    #[error("{0}")]
    File(String),
    #[error("ONNX Runtime cannot load it: {0}")]
    Load(String),
    #[error("it does not reproduce the recorded answer (largest difference {0})")]
    Answer(f32),
}

impl Refusal {
    /// The metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sidecar(_) => "sidecar",
            Self::Source(_) => "source",
            Self::Runtime(_) => "runtime",
            Self::Cpu(..) => "cpu",
            Self::File(_) => "file",
            Self::Load(_) => "load",
            Self::Answer(_) => "answer",
        }
    }
}

/// The sidecar of this CPU's variant of `model`, if there is one, checked against the card,
/// the runtime and the CPU (not yet the file: see [`load`]). `Ok(None)`: no variant here.
pub fn find(model: &Path, card: &ModelCard) -> Result<Option<Sidecar>, Refusal> {
    let cpu = cpu_class();
    let (_, sidecar_path) = paths(model, &cpu);
    let text = match std::fs::read_to_string(&sidecar_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Refusal::Sidecar(format!("{}: {e}", sidecar_path.display()))),
    };
    let sidecar: Sidecar = serde_json::from_str(&text)
        .map_err(|e| Refusal::Sidecar(format!("{}: {e}", sidecar_path.display())))?;
    if sidecar.schema_version != SCHEMA_VERSION {
        return Err(Refusal::Sidecar(format!(
            "{}: schema_version {} (this service reads {SCHEMA_VERSION})",
            sidecar_path.display(),
            sidecar.schema_version
        )));
    }
    if !sidecar.source_sha256.eq_ignore_ascii_case(&card.sha256) {
        return Err(Refusal::Source(sidecar.source_sha256));
    }
    if sidecar.onnxruntime != runtime::ORT_VERSION {
        return Err(Refusal::Runtime(sidecar.onnxruntime));
    }
    if sidecar.cpu != cpu {
        return Err(Refusal::Cpu(sidecar.cpu, cpu));
    }
    Ok(Some(sidecar))
}

/// A session of the variant `sidecar` describes (beside `model`): its hash checked, built with
/// optimisation off, and its answer on the seeded input checked (which is also its warm-up:
/// its time is returned).
pub(super) fn load(
    settings: &RuntimeSettings,
    model: &Path,
    card: &ModelCard,
    sidecar: &Sidecar,
) -> Result<(Session, std::time::Duration), Refusal> {
    let path = model.with_file_name(&sidecar.file);
    if path.file_name() != Some(std::ffi::OsStr::new(&sidecar.file)) {
        return Err(Refusal::Sidecar(format!(
            "file {:?} is not a file name",
            sidecar.file
        )));
    }
    let file = VerifiedFile::open(&path, &sidecar.sha256, &Mutex::new(None))
        .map_err(|e| Refusal::File(e.to_string()))?;
    let mut session = runtime::session(
        settings,
        &file.load_path(),
        card.modality,
        Optimization::Off,
    )
    .map_err(|e| Refusal::Load(e.to_string()))?;
    file.unchanged().map_err(|e| Refusal::File(e.to_string()))?;
    file.drop_cache();
    let warm_start = std::time::Instant::now();
    let values = answer(
        &mut session,
        card,
        sidecar.check.seed,
        &sidecar.check.output,
    )
    .map_err(|e| Refusal::Load(e.to_string()))?;
    let warm_up = warm_start.elapsed();
    let diff = max_diff(&values, &sidecar.check.values);
    if diff > CHECK_TOLERANCE {
        return Err(Refusal::Answer(diff));
    }
    Ok((session, warm_up))
}

/// Makes this CPU's variant of `model` (whose sha256 must be the card's) and its sidecar:
/// the full optimisation's graph saved, then loaded back with optimisation off and held to the
/// full optimisation's answer. The files appear only once complete.
pub fn make(settings: &RuntimeSettings, model: &Path, card: &ModelCard) -> anyhow::Result<Made> {
    runtime::ensure(settings)?;
    let source = VerifiedFile::open(model, &card.sha256, &Mutex::new(None))?;
    let cpu = cpu_class();
    let (variant, sidecar_path) = paths(model, &cpu);
    let partial = variant.with_extension(format!("onnx.partial-{}", std::process::id()));
    let output = card
        .outputs
        .first()
        .map(|o| o.name.clone())
        .ok_or_else(|| anyhow::anyhow!("the card names no output"))?;
    let result = (|| -> anyhow::Result<Made> {
        let mut full = runtime::session(
            settings,
            &source.load_path(),
            card.modality,
            Optimization::FullSavedTo(&partial),
        )?;
        let expected = answer(&mut full, card, CHECK_SEED, &output)?;
        drop(full);
        memory::release_free_memory();
        let before = memory::rss_bytes();
        let mut saved = runtime::session(settings, &partial, card.modality, Optimization::Off)?;
        let got = answer(&mut saved, card, CHECK_SEED, &output)?;
        memory::release_free_memory();
        let load_cost_bytes = memory::rss_bytes().saturating_sub(before);
        drop(saved);
        let diff = max_diff(&got, &expected);
        if diff > CHECK_TOLERANCE {
            anyhow::bail!(
                "the saved graph does not reproduce the model's answer (largest difference \
                 {diff}); no variant written"
            );
        }
        let bytes = std::fs::metadata(&partial)?.len();
        let sha256 = super::verify::sha256_of(&partial)?;
        std::fs::rename(&partial, &variant)?;
        let sidecar = Sidecar {
            schema_version: SCHEMA_VERSION,
            source_sha256: card.sha256.to_ascii_lowercase(),
            file: variant
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256,
            size_bytes: bytes,
            onnxruntime: runtime::ORT_VERSION.into(),
            cpu,
            load_cost_bytes,
            check: Check {
                seed: CHECK_SEED,
                output: output.clone(),
                values: expected,
            },
        };
        let partial_sidecar =
            sidecar_path.with_extension(format!("json.partial-{}", std::process::id()));
        std::fs::write(
            &partial_sidecar,
            serde_json::to_string_pretty(&sidecar)? + "\n",
        )?;
        std::fs::rename(&partial_sidecar, &sidecar_path)?;
        Ok(Made {
            variant: variant.clone(),
            sidecar,
            max_diff: diff,
        })
    })();
    let _ = std::fs::remove_file(&partial);
    result
}

/// The session's output `output` on the input seeded by `seed`, flat.
fn answer(
    session: &mut Session,
    card: &ModelCard,
    seed: u64,
    output: &str,
) -> Result<Vec<f32>, LoadError> {
    let dims: Vec<i64> = card.input.shape.iter().map(|&d| d.max(1)).collect();
    let len = dims.iter().product::<i64>() as usize;
    let values = seeded(seed, len);
    let tensor = if card.input.dtype == "float64" {
        let values: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
        ort::value::Tensor::from_array((dims, values)).map(|t| t.into_dyn())
    } else {
        ort::value::Tensor::from_array((dims, values)).map(|t| t.into_dyn())
    }
    .map_err(|e| LoadError::WarmUp(format!("cannot build the check input: {e}")))?;
    let outputs = session
        .run(ort::inputs![card.input.name.as_str() => tensor])
        .map_err(|e| LoadError::WarmUp(format!("the check run failed: {e}")))?;
    let value = outputs
        .get(output)
        .ok_or_else(|| LoadError::WarmUp(format!("the check run has no output {output:?}")))?;
    let (_, v) = value
        .try_extract_tensor::<f32>()
        .map_err(|e| LoadError::WarmUp(format!("the check output is not float32: {e}")))?;
    Ok(v.to_vec())
}

/// `len` values in [-2, 2) from a SplitMix64 sequence: about the range of a normalised image.
fn seeded(seed: u64, len: usize) -> Vec<f32> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        })
        .collect()
}

/// The largest absolute difference, or infinity if the lengths differ or a value is NaN.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter().zip(b).fold(0f32, |m, (x, y)| {
        let d = (x - y).abs();
        if d.is_nan() { f32::INFINITY } else { m.max(d) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_names_sit_beside_the_model_under_the_cpu_class() {
        let (v, s) = paths(Path::new("/m/heart/ecg.int8.onnx"), "x86_64-avx2");
        assert_eq!(v, Path::new("/m/heart/ecg.int8.optimized.x86_64-avx2.onnx"));
        assert_eq!(s, Path::new("/m/heart/ecg.int8.optimized.x86_64-avx2.json"));
    }

    #[test]
    fn the_check_input_is_seeded_and_in_range() {
        let a = seeded(7, 1000);
        assert_eq!(a, seeded(7, 1000));
        assert_ne!(a, seeded(8, 1000));
        assert!(a.iter().all(|v| (-2.0..2.0).contains(v)));
        assert!(a.iter().any(|&v| v < -1.5) && a.iter().any(|&v| v > 1.5));
    }

    #[test]
    fn answers_of_another_length_or_nan_never_match() {
        assert_eq!(max_diff(&[1.0, 2.0], &[1.0, 2.5]), 0.5);
        assert_eq!(max_diff(&[1.0], &[1.0, 2.0]), f32::INFINITY);
        assert_eq!(max_diff(&[f32::NAN], &[1.0]), f32::INFINITY);
    }

    #[test]
    fn this_cpu_has_a_class() {
        let c = cpu_class();
        assert!(c.starts_with(std::env::consts::ARCH), "{c}");
    }
}
