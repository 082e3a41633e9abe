//! The ONNX Runtime environment: loaded from the shared library only when the first model
//! loads (an idle service never pays for it), once per process, and the session options every
//! model uses.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use serde::Deserialize;

use crate::error::LoadError;
use medchain_core::domain::Modality;

/// How ONNX Runtime is found and how sessions are built.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Path of `libonnxruntime.so`. Empty: `ORT_DYLIB_PATH`, else the workspace's `.tools`
    /// copy installed by `scripts/setup.sh`, else the dynamic loader's search path.
    pub library_path: String,
    /// Intra-op threads per session; 0 = the cgroup-aware CPU count.
    pub intra_threads: usize,
    /// Intra-op threads of a tabular model's session; 0 = as `intra_threads`. A tree
    /// ensemble's single-row inference takes microseconds, and splitting it across threads
    /// wakes a pool thread for every request.
    pub tabular_intra_threads: usize,
    /// ONNX Runtime's CPU memory arena (on by default: see the measurement in the README).
    pub cpu_arena: bool,
    /// ONNX Runtime's memory-pattern planning (pre-allocates per input shape).
    pub memory_pattern: bool,
    /// ONNX Runtime's weight pre-packing (`session.disable_prepacking` when off): faster
    /// matrix products for a second, re-laid-out copy of the weights.
    pub prepacking: bool,
    /// Whether ONNX Runtime's intra-op threads spin-wait for work between parallel sections
    /// (`session.intra_op.allow_spinning`) rather than sleep.
    pub spinning: bool,
    /// Load a model's offline-optimised variant for this CPU, made by `optimize-models`, when
    /// there is one that checks out (its graph needs no optimising: no transient copy of the
    /// weights as it loads); else the portable file.
    pub offline_optimized: bool,
}

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// Version of the ONNX Runtime library this build expects.
pub const ORT_VERSION: &str = "1.31.1";

impl RuntimeSettings {
    /// The library file that will be loaded.
    pub fn library(&self) -> PathBuf {
        if !self.library_path.is_empty() {
            return PathBuf::from(&self.library_path);
        }
        if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        let dev = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.tools"))
            .join(format!("onnxruntime-{ORT_VERSION}"))
            .join(format!("libonnxruntime.so.{ORT_VERSION}"));
        if dev.exists() {
            dev
        } else {
            PathBuf::from(format!("libonnxruntime.so.{ORT_VERSION}"))
        }
    }

    /// Intra-op thread count in force.
    pub fn threads(&self) -> usize {
        if self.intra_threads > 0 {
            self.intra_threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// Intra-op thread count of a session for a model of `modality`.
    pub fn threads_for(&self, modality: Modality) -> usize {
        match modality {
            Modality::Tabular if self.tabular_intra_threads > 0 => self.tabular_intra_threads,
            _ => self.threads(),
        }
    }

    /// A readiness check that does not load anything: is the library file there?
    pub fn library_present(&self) -> Result<(), LoadError> {
        let lib = self.library();
        if lib.is_absolute() && !lib.exists() {
            return Err(LoadError::Runtime(format!(
                "ONNX Runtime library not found at {} (run scripts/setup.sh or set \
                 runtime.library_path / ORT_DYLIB_PATH)",
                lib.display()
            )));
        }
        Ok(())
    }
}

/// Whether the library has been loaded in this process.
pub fn is_loaded() -> bool {
    ENVIRONMENT.get().is_some()
}

/// Loads the library and creates the environment, once. Failures are not cached: the next
/// model load tries again (the file may have been installed meanwhile).
pub fn ensure(settings: &RuntimeSettings) -> Result<(), LoadError> {
    if is_loaded() {
        return Ok(());
    }
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    if is_loaded() {
        return Ok(());
    }
    settings.library_present()?;
    let lib = settings.library();
    let env = ort::init_from(&lib)
        .map_err(|e| {
            LoadError::Runtime(format!(
                "cannot load ONNX Runtime from {}: {e}",
                lib.display()
            ))
        })?
        .with_name("medchain")
        .build()
        .map_err(|e| {
            LoadError::Runtime(format!("cannot create the ONNX Runtime environment: {e}"))
        })?;
    tracing::info!(library = %lib.display(), "ONNX Runtime loaded");
    let _ = ENVIRONMENT.set(env);
    Ok(())
}

/// How ONNX Runtime optimises a session's graph as it builds it.
#[derive(Debug, Clone, Copy)]
pub enum Optimization<'a> {
    /// Every level, the CPU-specific layout (NCHWc) included: the fastest graph, at the cost
    /// of a transient copy of the weights while it is rewritten.
    Full,
    /// As `Full`, and the optimised graph saved to this file (`optimize-models`).
    FullSavedTo(&'a std::path::Path),
    /// None: the file is already an optimised graph (an offline-optimised variant).
    Off,
}

/// Builds a session for `path` with the configured options.
/// Errors name `path` as given (the loader passes its `/proc/self/fd` path and puts the
/// model's path back).
pub fn session(
    settings: &RuntimeSettings,
    path: &std::path::Path,
    modality: Modality,
    optimization: Optimization<'_>,
) -> Result<Session, LoadError> {
    let err = |e: ort::Error<_>| LoadError::Runtime(format!("cannot configure the session: {e}"));
    let env = ENVIRONMENT.get().ok_or_else(|| {
        LoadError::Runtime("ONNX Runtime is not loaded (runtime::ensure was not called)".into())
    })?;
    let mut builder = Session::builder(env)
        .map_err(|e| LoadError::Runtime(format!("cannot create a session builder: {e}")))?
        .with_optimization_level(match optimization {
            Optimization::Full | Optimization::FullSavedTo(_) => GraphOptimizationLevel::Level3,
            Optimization::Off => GraphOptimizationLevel::Disable,
        })
        .map_err(err)?;
    if let Optimization::FullSavedTo(to) = optimization {
        builder = builder.with_optimized_model_path(to).map_err(err)?;
    }
    builder
        .with_intra_threads(settings.threads_for(modality))
        .map_err(err)?
        .with_memory_pattern(settings.memory_pattern)
        .map_err(err)?
        .with_intra_op_spinning(settings.spinning)
        .map_err(err)?
        .with_config_entry(
            "session.disable_prepacking",
            if settings.prepacking { "0" } else { "1" },
        )
        .map_err(err)?
        .with_execution_providers([ort::ep::CPU::default()
            .with_arena_allocator(settings.cpu_arena)
            .build()])
        .map_err(err)?
        .commit_from_file(path)
        .map_err(|e| {
            LoadError::Runtime(format!("ONNX Runtime cannot load {}: {e}", path.display()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(intra: usize, tabular: usize) -> RuntimeSettings {
        RuntimeSettings {
            library_path: String::new(),
            intra_threads: intra,
            tabular_intra_threads: tabular,
            cpu_arena: true,
            memory_pattern: false,
            prepacking: true,
            spinning: false,
            offline_optimized: true,
        }
    }

    #[test]
    fn a_tabular_model_gets_its_own_thread_count_and_an_image_model_the_general_one() {
        let s = settings(3, 1);
        assert_eq!(s.threads_for(Modality::Tabular), 1);
        assert_eq!(s.threads_for(Modality::Image), 3);
        // 0: as intra_threads.
        assert_eq!(settings(3, 0).threads_for(Modality::Tabular), 3);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(settings(0, 0).threads_for(Modality::Tabular), cpus);
        assert_eq!(settings(0, 2).threads_for(Modality::Image), cpus);
    }
}
