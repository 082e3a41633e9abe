//! What a disease service's routes share: its two lazy models, the image limits and memory
//! budgets, and the chain-svc client.

use std::sync::Arc;

use crate::budget::{Budget, UploadBuffer};
use crate::chain::AuditClient;
use crate::inputs::image::ImageLimits;
use crate::model::LazyModel;
use crate::runtime::RuntimeSettings;
use medchain_core::health::ScrapeHook;
use medchain_core::metrics::name as metrics_name;

/// A disease service's models and routes.
#[derive(Debug)]
pub struct DiseaseModels {
    pub service: &'static str,
    pub version: &'static str,
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
    pub audit: AuditClient,
    /// The Open Inference Protocol routes' limits.
    pub v2: crate::settings::V2Settings,
}

impl DiseaseModels {
    /// Both models: the tabular one, then the image one.
    pub fn all(&self) -> [&Arc<LazyModel>; 2] {
        [&self.tabular, &self.image]
    }

    /// Sets the per-model gauges from the models' current status.
    fn record_gauges(&self) {
        for m in self.all() {
            let s = m.status();
            let key = s.key.clone();
            metrics::gauge!(metrics_name("model_queue_depth"), "model" => key.clone())
                .set(s.waiting as f64);
            metrics::gauge!(metrics_name("model_requests_served"), "model" => key)
                .set(s.requests_served as f64);
        }
        for (name, figures) in [
            ("image_decode_budget", self.decode_budget.figures()),
            ("image_upload_buffer", self.upload_buffer.figures()),
        ] {
            let gauge = |suffix: &str| {
                let full = medchain_core::metrics::label(&format!("{name}_{suffix}"));
                metrics::gauge!(metrics_name(full))
            };
            gauge("bytes").set(figures.bytes as f64);
            gauge("in_use_bytes").set(figures.in_use_bytes as f64);
            gauge("peak_bytes").set(figures.peak_bytes as f64);
        }
    }

    /// The hook `/metrics` calls at every scrape.
    pub fn scrape_hook(self: &Arc<Self>) -> ScrapeHook {
        let me = Arc::downgrade(self);
        ScrapeHook(Box::new(move || {
            if let Some(models) = me.upgrade() {
                models.record_gauges();
            }
        }))
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
