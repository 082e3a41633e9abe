//! The lazy model holder: a model loads on the first request that needs it, exactly once
//! however many requests arrive together (single flight), after its file hash, its tensors and
//! the memory guard check out; it then serves from one ONNX Runtime session behind a lock,
//! off the async threads (unless its calls take microseconds), with a bounded number of
//! waiting requests, and may be unloaded when
//! idle. A failed load answers 503 with `Retry-After`, and is tried again by the first request
//! after its back-off (doubling with each failure in a row, capped).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ort::session::Session;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::card::ModelCard;
use crate::explain::Explainer;
use crate::runtime::RuntimeSettings;
use medchain_core::error::ApiError;
use medchain_core::memory;
use remote::{DownloadSettings, Location};

mod guard;
mod load;
pub mod optimized;
pub mod remote;
mod verify;

pub use crate::error::LoadError;
pub use guard::MemorySettings;
use verify::{FileCheck, file_stamp};

/// Settings of one model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// Card file, relative to `models.dir` (or absolute); the source of truth for the model,
    /// its sha256 included.
    pub card: String,
    /// The ONNX file: empty = the card's `file` next to the card; a local path (relative to
    /// `models.dir`, or absolute); or an `http(s)://` URL, downloaded on first use into
    /// `models.download.cache_dir` and verified against the card before it is loaded.
    #[serde(default)]
    pub file: Location,
    /// Requests that may wait for this model beyond the one running; more get 503 at once.
    pub max_waiting: usize,
    /// Unload the session after this many idle seconds; 0 = never.
    pub idle_unload_secs: u64,
}

/// How long a model whose load failed waits before it is loaded again.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// After the first failure.
    pub initial: Duration,
    /// The longest wait, however many failures in a row.
    pub max: Duration,
}

impl Backoff {
    /// The wait after `failures` failed loads in a row (at least one).
    pub fn after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.initial.saturating_mul(1 << doublings).min(self.max)
    }
}

/// Where a model is in its life.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    Unloaded,
    Loading,
    Ready,
    Failed,
}

struct Loaded {
    session: Mutex<Session>,
    load_ms: f64,
    rss_added_bytes: i64,
    /// The CPU class of the offline-optimised variant loaded, if one was (else the portable
    /// file was).
    optimized: Option<String>,
    /// The session call's typical time, ns: a moving average over the recent calls (the
    /// warm-up run's to begin with).
    typical_ns: AtomicU64,
    /// The explainer the card names (none if it names none), or why it could not be read.
    explainer: Option<Result<Arc<Explainer>, String>>,
}

/// A session call whose typical time is under this runs on the request's own thread: handing
/// a tabular model's ~10 µs inference to the blocking pool and back cost more CPU than the
/// inference (two thread wake-ups per request). Anything slower — an image model, a large
/// model of the user's own — runs on the blocking pool, off the async threads.
const INLINE_BELOW: Duration = Duration::from_micros(100);

impl Loaded {
    fn new(
        session: Session,
        load_ms: f64,
        rss_added_bytes: i64,
        warm_up: Duration,
        optimized: Option<String>,
    ) -> Self {
        Loaded {
            session: Mutex::new(session),
            load_ms,
            rss_added_bytes,
            optimized,
            typical_ns: AtomicU64::new(warm_up.as_nanos() as u64),
            explainer: None,
        }
    }

    /// Runs `f` on the session and counts its time into the average (weight 1/8).
    fn call<T>(&self, session: &mut Session, f: impl FnOnce(&mut Session) -> T) -> T {
        let start = Instant::now();
        let out = f(session);
        let took = start.elapsed().as_nanos() as u64;
        let old = self.typical_ns.load(Ordering::Relaxed);
        self.typical_ns
            .store(old - old / 8 + took / 8, Ordering::Relaxed);
        out
    }

    /// Runs `f` on the request's thread if its calls are typically that quick and the session
    /// is free right now (never waiting for it on an async thread); else hands `f` back.
    fn try_inline<T, F: FnOnce(&mut Session) -> T>(&self, f: F) -> Result<T, F> {
        if self.typical_ns.load(Ordering::Relaxed) >= INLINE_BELOW.as_nanos() as u64 {
            return Err(f);
        }
        match self.session.try_lock() {
            Ok(mut session) => Ok(self.call(&mut session, f)),
            Err(_) => Err(f),
        }
    }
}

enum State {
    Unloaded,
    Loading,
    Ready(Arc<Loaded>),
    Failed {
        reason: LoadError,
        at: Instant,
        /// No load is tried before this.
        retry_at: Instant,
    },
}

/// What `/models` shows of a model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    pub key: String,
    pub state: ModelState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub model_id: Option<String>,
    pub version: Option<String>,
    pub sha256: Option<String>,
    pub demo: Option<bool>,
    pub file: String,
    /// The URL the file is downloaded from (without its query string), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub loads: u64,
    /// Failed loads in a row, and when the next load may be tried (while failed).
    pub failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_retry_unix_ms: Option<u64>,
    pub load_ms: Option<f64>,
    pub rss_added_bytes: Option<i64>,
    /// The last load used the offline-optimised variant for this CPU class (`optimize-models`);
    /// none: it loaded the portable file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optimized: Option<String>,
    pub expected_load_cost_bytes: Option<u64>,
    pub last_used_unix_ms: Option<u64>,
    pub requests_served: u64,
    pub waiting: usize,
    pub max_waiting: usize,
}

/// One lazily loaded model.
pub struct LazyModel {
    key: String,
    /// `key` as a metric label (a label from a `String` is a copy per request).
    label: &'static str,
    onnx_path: PathBuf,
    /// Where the file is downloaded from, for a model configured by URL.
    source: Option<Location>,
    download: DownloadSettings,
    card: Result<ModelCard, LoadError>,
    /// The card's folder, where the files it names besides the model are.
    card_dir: PathBuf,
    runtime: RuntimeSettings,
    memory: MemorySettings,
    idle_unload: Option<Duration>,
    max_waiting: usize,
    state: Mutex<State>,
    load_lock: tokio::sync::Mutex<()>,
    queue: Arc<Semaphore>,
    loads: AtomicU64,
    backoff: Backoff,
    /// Failed loads in a row.
    failures: std::sync::atomic::AtomicU32,
    served: AtomicU64,
    last_used_ms: AtomicU64,
    /// The last load's time, ms, RSS added, and optimised variant.
    last_load: Mutex<Option<(f64, i64, Option<String>)>>,
    verified: Arc<Mutex<Option<FileCheck>>>,
    /// A background hash of the file is running (readiness never waits for one).
    verifying: Arc<AtomicBool>,
}

impl std::fmt::Debug for LazyModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyModel")
            .field("key", &self.key)
            .field("onnx_path", &self.onnx_path)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl LazyModel {
    /// Reads the card (a bad card is reported on use and in readiness, not a start-up crash,
    /// so the service's other model keeps working).
    pub fn new(
        key: &str,
        models_dir: &Path,
        settings: &ModelSettings,
        runtime: RuntimeSettings,
        memory: MemorySettings,
        download: &DownloadSettings,
        backoff: Backoff,
    ) -> Self {
        let card_path = models_dir.join(&settings.card);
        let card = ModelCard::from_file(&card_path).map_err(|e| LoadError::Card(e.to_string()));
        let file = &settings.file;
        let onnx_path = match &card {
            // Downloads are kept under the card's hash: a new model version is a new file.
            _ if file.is_url() => download.cache_dir().join(match &card {
                Ok(c) => format!("{}.onnx", c.sha256.to_ascii_lowercase()),
                Err(_) => format!("{key}.onnx"),
            }),
            _ if !file.0.is_empty() => models_dir.join(&file.0),
            Ok(c) => card_path.with_file_name(&c.file),
            Err(_) => card_path.with_extension("").with_extension("onnx"),
        };
        Self {
            key: key.to_string(),
            label: medchain_core::metrics::label(key),
            onnx_path,
            source: file.is_url().then(|| file.clone()),
            download: download.clone(),
            card,
            card_dir: card_path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            runtime,
            memory,
            idle_unload: (settings.idle_unload_secs > 0)
                .then(|| Duration::from_secs(settings.idle_unload_secs)),
            max_waiting: settings.max_waiting,
            state: Mutex::new(State::Unloaded),
            load_lock: tokio::sync::Mutex::new(()),
            queue: Arc::new(Semaphore::new(settings.max_waiting + 1)),
            loads: AtomicU64::new(0),
            backoff,
            failures: std::sync::atomic::AtomicU32::new(0),
            served: AtomicU64::new(0),
            last_used_ms: AtomicU64::new(0),
            last_load: Mutex::new(None),
            verified: Arc::new(Mutex::new(None)),
            verifying: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The model's local file (a download's place in the cache, for a model configured by URL).
    pub fn onnx_path(&self) -> &Path {
        &self.onnx_path
    }

    /// The model's key (`tabular`, `retina`, `ecg`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The card, or why it could not be read.
    pub fn card(&self) -> Result<&ModelCard, ApiError> {
        self.card.as_ref().map_err(|e| {
            ApiError::unavailable(format!("model `{}` is unavailable: {e}", self.key), None)
        })
    }

    /// The loaded model's explainer: none if the model is not loaded or its card names none.
    pub fn explainer(&self) -> Option<Result<Arc<Explainer>, String>> {
        match &*self.lock_state() {
            State::Ready(loaded) => loaded.explainer.clone(),
            _ => None,
        }
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place in this model's bounded queue, or 503 with `Retry-After` at once.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.queue.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!(medchain_core::metrics::name("model_rejected_total"), "model" => self.label)
                .increment(1);
            ApiError::unavailable(
                format!(
                    "model `{}` is busy: {} requests are already waiting; retry shortly",
                    self.key, self.max_waiting
                ),
                Some(1),
            )
        })
    }

    /// Runs `f` on the session (loading it first if needed): on the blocking pool, or on this
    /// thread when the model's calls take microseconds (see [`INLINE_BELOW`]). The caller
    /// holds a permit from `admit` for the whole request.
    pub async fn run<T, F>(&self, _permit: &OwnedSemaphorePermit, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&mut Session) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let loaded = self.get_or_load().await?;
        let start = Instant::now();
        let out = match loaded.try_inline(f) {
            Ok(out) => out,
            Err(f) => {
                let span = tracing::Span::current();
                let key = self.key.clone();
                tokio::task::spawn_blocking(move || {
                    let _entered = span.enter();
                    let mut session = loaded.session.lock().unwrap_or_else(|e| e.into_inner());
                    loaded.call(&mut session, f)
                })
                .await
                .map_err(|e| {
                    ApiError::Internal(anyhow::anyhow!("inference task of `{key}` failed: {e}"))
                })?
            }
        };
        metrics::histogram!(medchain_core::metrics::name("inference_seconds"), "model" => self.label)
            .record(start.elapsed().as_secs_f64());
        self.served.fetch_add(1, Ordering::Relaxed);
        self.last_used_ms.store(now_ms(), Ordering::Relaxed);
        out
    }

    /// Starts loading in the background (warm-up); returns at once.
    pub fn warm_up(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.get_or_load().await {
                tracing::warn!(model = %me.key, error = %e, "warm-up load failed");
            }
        });
    }

    async fn get_or_load(&self) -> Result<Arc<Loaded>, ApiError> {
        match &*self.lock_state() {
            State::Ready(l) => return Ok(l.clone()),
            // Within its back-off a failed model answers at once, loading nothing.
            State::Failed {
                reason, retry_at, ..
            } if Instant::now() < *retry_at => return Err(self.failed(reason, *retry_at)),
            _ => {}
        }
        let asked = Instant::now();
        let _single_flight = self.load_lock.lock().await;
        match &*self.lock_state() {
            State::Ready(l) => return Ok(l.clone()),
            // A load that failed while we waited is this request's answer too.
            State::Failed {
                reason,
                at,
                retry_at,
            } if *at >= asked || Instant::now() < *retry_at => {
                return Err(self.failed(reason, *retry_at));
            }
            _ => {}
        }
        *self.lock_state() = State::Loading;
        metrics::gauge!(medchain_core::metrics::name("model_state"), "model" => self.key.clone())
            .set(1.0);
        match self.load().await {
            Ok(loaded) => {
                self.failures.store(0, Ordering::Relaxed);
                *self.lock_state() = State::Ready(loaded.clone());
                metrics::gauge!(medchain_core::metrics::name("model_state"), "model" => self.key.clone())
                    .set(2.0);
                Ok(loaded)
            }
            Err(reason) => {
                metrics::counter!(
                    medchain_core::metrics::name("model_load_failures_total"),
                    "model" => self.key.clone(),
                    "kind" => reason.kind(),
                )
                .increment(1);
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                let wait = self.backoff.after(failures);
                tracing::error!(model = %self.key, %reason, kind = reason.kind(), failures, retry_in_secs = wait.as_secs_f64(), "model load failed");
                metrics::gauge!(medchain_core::metrics::name("model_state"), "model" => self.key.clone())
                    .set(-1.0);
                let at = Instant::now();
                let retry_at = at + wait;
                *self.lock_state() = State::Failed {
                    reason: reason.clone(),
                    at,
                    retry_at,
                };
                Err(self.failed(&reason, retry_at))
            }
        }
    }

    fn failed(&self, reason: &LoadError, retry_at: Instant) -> ApiError {
        let wait = retry_at.saturating_duration_since(Instant::now());
        ApiError::unavailable(
            format!(
                "model `{}` could not be loaded: {reason} (tried again in {} s)",
                self.key,
                wait.as_secs_f64().ceil()
            ),
            Some(wait.as_secs_f64().ceil().max(1.0) as u64),
        )
    }

    /// Drops the session now (an operator's unload): the next request loads it again.
    /// Requests still running finish on the session they hold, which is freed after the last.
    /// Returns how many were running, or `None` if it was not loaded.
    pub fn unload(&self) -> Option<usize> {
        let loaded = self.take_session(|_| true)?;
        let running = Arc::strong_count(&loaded) - 1;
        drop(loaded);
        memory::release_free_memory();
        tracing::info!(model = %self.key, running, "unloaded on request");
        Some(running)
    }

    /// Marks the model unloaded and hands back its session, if it is loaded and `may` allows;
    /// the session is freed when the last holder drops it.
    fn take_session(&self, may: impl FnOnce(&Arc<Loaded>) -> bool) -> Option<Arc<Loaded>> {
        let mut state = self.lock_state();
        let State::Ready(loaded) = &*state else {
            return None;
        };
        if !may(loaded) {
            return None;
        }
        let loaded = loaded.clone();
        *state = State::Unloaded;
        drop(state);
        metrics::gauge!(medchain_core::metrics::name("model_state"), "model" => self.key.clone())
            .set(0.0);
        Some(loaded)
    }

    /// Loads the model now, as its first request would (single flight: with a load already
    /// running, waits for that one), and returns when it is loaded or its load failed.
    pub async fn load_now(&self) -> Result<(), ApiError> {
        self.get_or_load().await.map(drop)
    }

    /// Unloads the model and returns once its session is freed: requests still running on it
    /// finish first (new ones load it again). Returns how many it waited for, or `None` if it
    /// was not loaded.
    pub async fn unload_and_wait(&self) -> Option<usize> {
        let loaded = self.take_session(|_| true)?;
        let running = Arc::strong_count(&loaded) - 1;
        tracing::info!(model = %self.key, running, "unloading on request, after the requests running on it");
        while Arc::strong_count(&loaded) > 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(loaded);
        memory::release_free_memory();
        Some(running)
    }

    /// Drops the session if it has been idle long enough and nobody is using it.
    /// Returns whether it unloaded.
    pub fn unload_if_idle(&self) -> bool {
        let Some(idle) = self.idle_unload else {
            return false;
        };
        let last = self.last_used_ms.load(Ordering::Relaxed);
        if now_ms().saturating_sub(last) < idle.as_millis() as u64 {
            return false;
        }
        // Only a session nobody else holds: the state's reference is the one cloned from.
        let Some(loaded) = self.take_session(|l| Arc::strong_count(l) == 1) else {
            return false;
        };
        drop(loaded);
        memory::release_free_memory();
        tracing::info!(model = %self.key, "unloaded after being idle");
        true
    }

    /// Starts the idle-unload watcher, when configured.
    pub fn spawn_idle_watcher(self: &Arc<Self>) {
        let Some(idle) = self.idle_unload else {
            return;
        };
        let me = Arc::downgrade(self);
        let tick = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            loop {
                interval.tick().await;
                let Some(model) = me.upgrade() else { break };
                model.unload_if_idle();
            }
        });
    }

    /// Readiness of the file, without waiting: present with the card's size, and its sha256
    /// as far as known. The hash is computed once per file version (size + modification time)
    /// on the blocking pool, started here or by [`LazyModel::start_verification`]; until it
    /// is known the file counts as ready (it is hashed again before any load, and a mismatch
    /// then fails that load). Returns what readiness shows.
    pub fn readiness(self: &Arc<Self>) -> Result<String, LoadError> {
        if let Some(url) = &self.source
            && !self.onnx_path.exists()
        {
            self.card.as_ref().map_err(Clone::clone)?;
            return Ok(format!(
                "not downloaded yet: fetched from {} on first use",
                url.redacted()
            ));
        }
        self.check_files()?;
        let stamp = file_stamp(&self.onnx_path)?;
        if let Some((s, result)) = &*self.verified.lock().unwrap_or_else(|e| e.into_inner())
            && *s == stamp
        {
            return result
                .clone()
                .map(|()| "file present, sha256 matches its card".to_string());
        }
        self.start_verification();
        Ok(
            "file present with its card's size; sha256 being verified (and again before loading)"
                .to_string(),
        )
    }

    /// What `/models` shows.
    pub fn status(&self) -> ModelStatus {
        let mut next_retry_unix_ms = None;
        let (state, reason) = match &*self.lock_state() {
            State::Unloaded => (ModelState::Unloaded, None),
            State::Loading => (ModelState::Loading, None),
            State::Ready(_) => (ModelState::Ready, None),
            State::Failed {
                reason, retry_at, ..
            } => {
                let wait = retry_at.saturating_duration_since(Instant::now());
                next_retry_unix_ms = Some(now_ms() + wait.as_millis() as u64);
                (ModelState::Failed, Some(reason.to_string()))
            }
        };
        let (state, reason) = match (&self.card, state) {
            (Err(e), _) => (ModelState::Failed, Some(e.to_string())),
            (_, s) => (s, reason),
        };
        let card = self.card.as_ref().ok();
        let last_load = self
            .last_load
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let last_used = self.last_used_ms.load(Ordering::Relaxed);
        ModelStatus {
            key: self.key.clone(),
            state,
            reason,
            model_id: card.map(|c| c.model_id.clone()),
            version: card.map(|c| c.version.clone()),
            sha256: card.map(|c| c.sha256.clone()),
            demo: card.map(|c| c.demo),
            file: self.onnx_path.display().to_string(),
            source: self.source.as_ref().map(Location::redacted),
            loads: self.loads.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            next_retry_unix_ms,
            load_ms: last_load.as_ref().map(|l| l.0),
            rss_added_bytes: last_load.as_ref().map(|l| l.1),
            optimized: last_load.and_then(|l| l.2),
            expected_load_cost_bytes: card.map(|c| c.load_cost.rss_added_bytes),
            last_used_unix_ms: (last_used > 0).then_some(last_used),
            requests_served: self.served.load(Ordering::Relaxed),
            waiting: (self.max_waiting + 1).saturating_sub(self.queue.available_permits()),
            max_waiting: self.max_waiting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_back_off_doubles_up_to_its_cap() {
        let b = Backoff {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(300),
        };
        let waits: Vec<u64> = (1..=10).map(|n| b.after(n).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(b.after(u32::MAX), Duration::from_secs(300));
    }
}
