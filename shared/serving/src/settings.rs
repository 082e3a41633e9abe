//! The settings tree of a disease service, loaded from its embedded defaults, a file and the
//! environment, and the checks types cannot express. diabetes-svc and heart-svc differ only in
//! their [`DiseaseSpec`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::chain::ChainClientSettings;
use crate::inputs::image::ImageLimits;
use crate::model::remote::DownloadSettings;
use crate::model::{Backoff, LazyModel, MemorySettings, ModelSettings};
use crate::runtime::RuntimeSettings;
use medchain_core::auth::Peer;
use medchain_core::settings::{
    self, AuthSettings, ServerSettings, ServiceSettings, SettingsError, TelemetrySettings,
};

/// Every setting of a disease service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiseaseSettings {
    pub server: ServerSettings,
    pub telemetry: TelemetrySettings,
    pub auth: AuthSettings,
    pub runtime: RuntimeSettings,
    pub memory: MemorySettings,
    pub images: ImageLimits,
    pub models: ModelsSettings,
    pub chain: ChainClientSettings,
    pub v2: V2Settings,
}

/// Settings of the Open Inference Protocol (KServe V2) routes (`[v2]`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct V2Settings {
    /// The largest batch (a tensor's first dimension, or the number of `image_bytes` files) one
    /// inference may carry.
    pub max_batch: std::num::NonZeroUsize,
    /// Images an image model runs at once: a request's batch runs in slices of this many.
    /// Each image run at once adds the model's working memory for one image, and ONNX
    /// Runtime's arena keeps the most it has needed (bench/BENCHMARKS.md measures it); 1 keeps
    /// the model at its batch-1 memory whatever the batch.
    pub image_run_batch: std::num::NonZeroUsize,
    /// The largest inference request body, MiB (JSON tensors of a batch of images are about
    /// 10× their binary form); held in `images.buffer_mb` while it arrives.
    pub max_body_mb: std::num::NonZeroUsize,
}

/// Where the models are and how each is served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsSettings {
    /// Folder the card paths are relative to; empty = this repository's `models/`.
    pub dir: String,
    pub tabular: ModelSettings,
    pub image: ModelSettings,
    /// How models configured by URL are downloaded.
    pub download: DownloadSettings,
    /// A model whose load failed is not loaded again for this many seconds (requests meanwhile
    /// get 503 with `Retry-After`), doubling after each further failure.
    pub load_retry_secs: u64,
    /// The longest wait between two loads of a failing model, seconds.
    pub load_retry_max_secs: u64,
}

impl ModelsSettings {
    /// The models folder in force.
    pub fn dir(&self) -> PathBuf {
        if self.dir.is_empty() {
            let dev = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models"));
            dev.canonicalize().unwrap_or(dev)
        } else {
            PathBuf::from(&self.dir)
        }
    }
}

/// What distinguishes one disease service from the other.
#[derive(Debug, Clone, Copy)]
pub struct DiseaseSpec {
    /// `diabetes-svc`
    pub service: &'static str,
    /// `diabetes`
    pub disease: &'static str,
    /// Env prefix, also the metrics prefix in lower case: `DIABETES`.
    pub env_prefix: &'static str,
    /// `retina` → `POST /v1/predict/retina`
    pub image_route: &'static str,
    /// The service's embedded default settings (TOML).
    pub defaults: &'static str,
    pub version: &'static str,
}

medchain_core::service_settings!(
    DiseaseSettings,
    accepts [Peer::Gateway, Peer::Monitor],
    sends [Peer::Chain]
);

impl DiseaseSettings {
    /// The lazy holder of `model` under the key `key` (nothing loaded), with these settings'
    /// models folder, runtime, memory guard, downloads and back-off.
    pub fn lazy_model(&self, key: &str, model: &ModelSettings) -> LazyModel {
        LazyModel::new(
            key,
            &self.models.dir(),
            model,
            self.runtime.clone(),
            self.memory.clone(),
            &self.models.download,
            Backoff {
                initial: Duration::from_secs(self.models.load_retry_secs.max(1)),
                max: Duration::from_secs(self.models.load_retry_max_secs.max(1)),
            },
        )
    }

    /// Embedded defaults → `<PREFIX>_CONFIG` file → `<PREFIX>__*` env; validated.
    pub fn load(spec: &DiseaseSpec) -> Result<Self, SettingsError> {
        let s = Self::load_unserved(spec)?;
        s.validate(spec)?;
        Ok(s)
    }

    /// Embedded defaults → file → env, without the checks of a service about to listen (its
    /// listener's credentials, its chain-svc URL): for the command-line tools that read only
    /// the models' settings (`optimize-models`, which the images run as they are built, where
    /// the listener is `0.0.0.0` and the credentials are not set yet).
    pub fn load_unserved(spec: &DiseaseSpec) -> Result<Self, SettingsError> {
        settings::load(spec.defaults, spec.env_prefix, &[])
    }

    /// Checks that types cannot express.
    pub fn validate(&self, spec: &DiseaseSpec) -> Result<(), SettingsError> {
        self.check_base(spec.env_prefix)?;
        let url = self.chain.url.trim();
        if !url.is_empty()
            && !settings::url_is_loopback(url)
            && self.auth.send.get(Peer::Chain).is_none()
        {
            return Err(SettingsError::invalid(
                spec.env_prefix,
                "auth.send.chain",
                format!(
                    "required: chain.url {url} is not on loopback, and chain-svc records nothing \
                     without this service's credential (docs/security.md)"
                ),
            ));
        }
        let invalid = |key: &str, reason: &str| SettingsError::Invalid {
            key: key.into(),
            env: format!(
                "{}__{}",
                spec.env_prefix,
                key.to_ascii_uppercase().replace('.', "__")
            ),
            reason: reason.into(),
        };
        if !self.images.max_megapixels.is_finite() || self.images.max_megapixels <= 0.0 {
            return Err(invalid("images.max_megapixels", "must be positive"));
        }
        if self.memory.limit_mb <= self.memory.reserve_mb {
            return Err(invalid("memory.limit_mb", "must exceed memory.reserve_mb"));
        }
        let dir = self.models.dir();
        if !dir.is_dir() {
            return Err(invalid(
                "models.dir",
                &format!("{} is not a folder", dir.display()),
            ));
        }
        Ok(())
    }
}
