//! `medchain-bench system`: the whole system measured, in this order (memory peaks are reset
//! between phases, so each phase's peak is its own): start-up; idle memory; each model's first
//! prediction; 64 concurrent tabular requests per disease; 16 concurrent 3000×2000 uploads per
//! image model; warm latency at concurrency 1/4/16 through the gateway and direct; the raw
//! ONNX Runtime floor; then the loads again with each service in a 512 MB memory cgroup, and
//! with all four in one 512 MB memory cgroup (the single-instance image).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::floor::Floor;
use crate::load::{LoadFigures, Outcome, Target, drive};
use crate::results::Header;
use crate::{Args, floor, inputs, results};
use medchain_serving::DiseaseSettings;
use medchain_tests::Peer;
use medchain_tests::system::{Cgroup, CgroupStats, Cgroups, System, service_peer};

const LIMIT_512_MB: u64 = 512 << 20;

/// What `medchain-bench system` writes to `results/system.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SystemRun {
    #[serde(flatten)]
    pub header: Header,
    /// The settings the command gave the system (`NAME=value`), secrets left out.
    pub system_env: Vec<String>,
    /// Per process.
    pub startup: BTreeMap<String, Startup>,
    pub idle_memory: Memory,
    /// Whether the processes' peaks could be reset (`/proc/<pid>/clear_refs`).
    pub clear_refs: bool,
    pub first_predictions: Vec<FirstPrediction>,
    pub warm: Vec<WarmRun>,
    pub peaks: Vec<PeakPhase>,
    /// (process, exit status) of any that exited during the run.
    pub exited_during_run: Vec<(String, String)>,
    pub floor: Vec<Floor>,
    pub onnxruntime_library: String,
    pub models: Vec<ModelInfo>,
    pub int8: Ran<Int8Run>,
    pub cgroup_run: Ran<CgroupRun>,
    pub single_instance: Ran<SingleInstance>,
    pub instances: Vec<Ran<InstanceRun>>,
    /// Each image model loaded alone, from its offline-optimised variant and from the portable
    /// file (the variants are made first, and the rest of the run serves from them).
    pub load_peaks: Ran<crate::loadpeak::LoadPeakRun>,
}

/// A part of the run that did not run, and why.
fn not_run<T>(reason: &str) -> Ran<T> {
    Ran::NotRun {
        reason: reason.to_string(),
    }
}

/// A part of the run that may not have run: `{"ran": true, …its figures}` or
/// `{"ran": false, "reason": …}`.
#[derive(Debug, Clone)]
pub enum Ran<T> {
    Ran(T),
    NotRun { reason: String },
}

impl<T: Serialize> Serialize for Ran<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = match self {
            Ran::Ran(run) => {
                let mut v = serde_json::to_value(run).map_err(serde::ser::Error::custom)?;
                v["ran"] = json!(true);
                v
            }
            Ran::NotRun { reason } => json!({"ran": false, "reason": reason}),
        };
        v.serialize(s)
    }
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Ran<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let v = Value::deserialize(d)?;
        match v["ran"].as_bool() {
            Some(true) => serde_json::from_value(v)
                .map(Ran::Ran)
                .map_err(D::Error::custom),
            Some(false) => Ok(Ran::NotRun {
                reason: v["reason"].as_str().unwrap_or_default().to_string(),
            }),
            None => Err(D::Error::custom("neither `\"ran\": true` nor `false`")),
        }
    }
}

/// Spawn → first 200, ms.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Startup {
    pub healthy_ms: f64,
    pub ready_ms: f64,
}

/// One process' memory, MB: its RSS and its peak (VmHWM) since the last reset.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ProcMemory {
    pub rss_mb: f64,
    pub peak_mb: f64,
}

/// Every process' memory at one moment, by name (anvil as `anvil (chain-svc's child)`).
pub type Memory = BTreeMap<String, ProcMemory>;

/// A model's first prediction through the gateway, its lazy load included.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FirstPrediction {
    pub endpoint: String,
    pub service: String,
    pub ok: bool,
    pub first_failure: Option<String>,
    pub latency_ms: Option<f64>,
    /// Its service's memory after it; the peak is the load's transient peak.
    pub service_memory_after: Option<ProcMemory>,
    /// Every process' peak during it (for sums at one moment).
    pub memory: Memory,
}

/// A load phase and every process' peak during it (the warm runs' entry has no load of its
/// own).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeakPhase {
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadFigures>,
    pub memory: Memory,
}

/// One warm latency run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WarmRun {
    pub endpoint: String,
    /// `gateway` or `direct`.
    pub route: String,
    #[serde(flatten)]
    pub load: LoadFigures,
    /// Each service's CPU time (user + system, `/proc/<pid>/stat`) over the run, µs per
    /// request; empty in runs made before it was measured.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cpu_us_per_request: BTreeMap<String, f64>,
}

/// A model as its card describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    pub id: String,
    pub version: String,
    pub sha256: String,
    pub size_mb: f64,
    pub demo: bool,
}

/// The image models' int8 variants through the same phases.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Int8Run {
    /// The settings that chose them (`NAME=value`).
    pub env: Vec<String>,
    pub cards: Vec<Int8Card>,
    pub first_predictions: Vec<FirstPrediction>,
    pub peaks: Vec<PeakPhase>,
    pub warm: Vec<WarmRun>,
    pub floor: Vec<Floor>,
    pub exited_during_run: Vec<(String, String)>,
}

/// What an int8 card says of its model against the fp32 one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Int8Card {
    /// `retina` or `ecg`.
    pub model: String,
    /// The card, relative to the models folder.
    pub card: String,
    pub model_id: Option<String>,
    pub size_mb: Option<f64>,
    pub fp32_size_mb: Option<f64>,
    pub agreement_with_fp32: Option<f64>,
    pub accuracy_int8: Option<f64>,
    pub accuracy_fp32: Option<f64>,
    pub compared_on: Option<u64>,
    pub max_abs_prob_diff_vs_fp32: Option<f64>,
}

/// A service's cgroup over a whole run, and whether the service was alive at its end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceCgroup {
    #[serde(flatten)]
    pub stats: Option<CgroupStats>,
    pub alive: bool,
}

/// The loads with each service in its own 512 MB memory cgroup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CgroupRun {
    pub limit_mb: u64,
    pub page_cache_dropped: bool,
    pub services: BTreeMap<String, ServiceCgroup>,
    pub exited: Vec<(String, String)>,
    pub first_predictions: Vec<FirstPrediction>,
    pub peaks: Vec<PeakPhase>,
}

/// The loads with all four services in one 512 MB memory cgroup, per ECG model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SingleInstance {
    pub limit_mb: u64,
    pub runs: Vec<SingleRun>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SingleRun {
    /// `int8` or `fp32`.
    pub ecg_model: String,
    pub page_cache_dropped: bool,
    /// The supervisor's settings it ran with (`NAME=value`).
    pub settings: Vec<String>,
    pub cgroup: Option<CgroupStats>,
    pub exited: Vec<(String, String)>,
    pub first_predictions: Vec<FirstPrediction>,
    pub peaks: Vec<PeakPhase>,
}

/// The system on a platform instance: each service with its memory limit and CPU quota.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceRun {
    pub instance: String,
    pub memory_mb: u64,
    pub cpus: f64,
    pub page_cache_dropped: bool,
    pub startup: BTreeMap<String, Startup>,
    pub services: BTreeMap<String, ServiceCgroup>,
    pub exited: Vec<(String, String)>,
    pub phases: Vec<InstancePhase>,
}

/// One phase on an instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstancePhase {
    pub phase: String,
    pub load: LoadFigures,
    pub cgroup_peaks_reset: bool,
    /// Per service, the phase's own figures.
    pub cgroups: BTreeMap<String, PhaseCgroup>,
    /// Per service, the slowest `/healthz` answer, ms, and how many were not a 200.
    pub healthz_slowest_ms: BTreeMap<String, f64>,
    pub healthz_failed: BTreeMap<String, u64>,
    /// Recorded predictions answered `unrecorded` during it (the audited phase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_unrecorded: Option<f64>,
}

/// A service's cgroup during one phase: its peak (reset before it), MB, and the time the CPU
/// quota has held it back since it started, s.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct PhaseCgroup {
    pub peak_usage_mb: Option<f64>,
    pub oom_kills: Option<u64>,
    pub cpu_throttled_s: Option<f64>,
}

/// A prediction endpoint, through the gateway or direct.
struct Endpoint {
    /// `diabetes/tabular`, `heart/ecg`, `diabetes/tabular+audit`…
    label: String,
    service: &'static str,
    /// Model key for the floor (`tabular`, `retina`, `ecg`); None for the audited variant.
    model: Option<&'static str>,
    image: bool,
    gateway: Target,
    direct: Target,
}

fn endpoints(sys: &System) -> anyhow::Result<Vec<Endpoint>> {
    let gw = sys.get("gateway").url();
    let key = sys.api_key.as_str();
    let mut out = Vec::new();
    for (disease, service, model, record) in [
        (
            "diabetes",
            "diabetes-svc",
            "retina",
            inputs::diabetes_record(),
        ),
        ("heart", "heart-svc", "ecg", inputs::heart_record()),
    ] {
        let svc = sys.get(service).url();
        // Called directly, as the gateway calls it.
        let token = Some(sys.credential(Peer::Gateway, service_peer(service)));
        out.push(Endpoint {
            label: format!("{disease}/tabular"),
            service,
            model: Some("tabular"),
            image: false,
            gateway: Target::json(
                format!("{gw}/api/v1/{disease}/predict/tabular"),
                &record,
                None,
            )
            .signed_in(key),
            direct: Target::json(format!("{svc}/v1/predict/tabular"), &record, token),
        });
        let small = inputs::small_jpeg(model)?;
        out.push(Endpoint {
            label: format!("{disease}/{model} 224×224"),
            service,
            model: Some(model),
            image: true,
            gateway: Target::image(
                format!("{gw}/api/v1/{disease}/predict/{model}"),
                &small,
                "image/jpeg",
                None,
            )
            .signed_in(key),
            direct: Target::image(
                format!("{svc}/v1/predict/{model}"),
                &small,
                "image/jpeg",
                token,
            ),
        });
    }
    // A recorded prediction: the same diabetes record with a patient id, so chain-svc's
    // outbox and the chain are in the path.
    let mut record = inputs::diabetes_record();
    record["patient_id"] = json!("bench-patient-0001");
    let svc = sys.get("diabetes-svc").url();
    out.push(Endpoint {
        label: "diabetes/tabular + audit record".into(),
        service: "diabetes-svc",
        model: None,
        image: false,
        gateway: Target::json(
            format!("{gw}/api/v1/diabetes/predict/tabular"),
            &record,
            None,
        )
        .signed_in(key),
        direct: Target::json(
            format!("{svc}/v1/predict/tabular"),
            &record,
            Some(sys.credential(Peer::Gateway, Peer::Diabetes)),
        ),
    });
    Ok(out)
}

fn proc_memory(m: medchain_tests::system::Mem) -> ProcMemory {
    ProcMemory {
        rss_mb: m.rss_mb,
        peak_mb: m.hwm_mb,
    }
}

fn memory(sys: &System) -> Memory {
    sys.memory()
        .into_iter()
        .map(|(name, m)| (name, proc_memory(m)))
        .collect()
}

fn startup(sys: &System) -> BTreeMap<String, Startup> {
    sys.services
        .iter()
        .map(|s| {
            let figures = Startup {
                healthy_ms: s.healthy_ms,
                ready_ms: s.ready_ms,
            };
            (s.name.to_string(), figures)
        })
        .collect()
}

fn settings_list(env: &[(&str, &str)]) -> Vec<String> {
    env.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn say(msg: &str) {
    eprintln!("==> {msg}");
}

/// Runs a peak-load phase: resets the peaks, drives, reads every process' peak.
async fn peak_phase(sys: &System, name: &str, target: &Target, c: usize, n: usize) -> PeakPhase {
    say(&format!("{name}: {n} requests, {c} concurrent"));
    sys.reset_peaks();
    let o = drive(target, c, n).await;
    PeakPhase {
        phase: name.to_string(),
        load: Some(o.figures()),
        memory: memory(sys),
    }
}

/// The loads whose peaks the targets are about, run by both the plain and the cgroup run.
async fn loads(
    sys: &System,
    eps: &[Endpoint],
    quick: bool,
) -> anyhow::Result<(Vec<FirstPrediction>, Vec<PeakPhase>)> {
    let mut first = Vec::new();
    for ep in eps.iter().filter(|e| e.model.is_some()) {
        say(&format!("first prediction: {}", ep.label));
        // Its own peak: what loading this model costs at most, transient buffers included.
        sys.reset_peaks();
        let o = drive(&ep.gateway, 1, 1).await;
        let memory = memory(sys);
        first.push(FirstPrediction {
            endpoint: ep.label.clone(),
            service: ep.service.to_string(),
            ok: o.ok() == 1,
            first_failure: o.first_failure,
            latency_ms: o.latencies_ms.first().copied(),
            service_memory_after: memory.get(ep.service).copied(),
            memory,
        });
    }
    let mut peaks = Vec::new();
    let rounds = if quick { 1 } else { 10 };
    for ep in eps.iter().filter(|e| e.model == Some("tabular")) {
        let name = format!("64 concurrent {}", ep.label);
        peaks.push(peak_phase(sys, &name, &ep.gateway, 64, 64 * rounds).await);
    }
    let gw = sys.get("gateway").url();
    for (disease, model) in [("diabetes", "retina"), ("heart", "ecg")] {
        let large = inputs::large_jpeg(model)?;
        let t = Target::image(
            format!("{gw}/api/v1/{disease}/predict/{model}"),
            &large,
            "image/jpeg",
            None,
        )
        .signed_in(&sys.api_key);
        let name = format!(
            "16 concurrent {disease}/{model} uploads of a 3000×2000 JPEG ({:.1} MB)",
            large.len() as f64 / 1048576.0
        );
        let n = if quick { 16 } else { 48 };
        peaks.push(peak_phase(sys, &name, &t, 16, n).await);
    }
    Ok((first, peaks))
}

pub async fn run(args: &Args) -> anyhow::Result<SystemRun> {
    let logs = crate::repo_root().join(".data/bench/logs");
    let (n_tab, n_img, n_audit) = if args.quick {
        (40, 8, 20)
    } else {
        (2000, 150, 400)
    };
    let header = results::run_header(args, "system");

    let load_peaks = match crate::loadpeak::run(&args.bin_dir, &logs.join("loadpeak")).await {
        Ok(r) => Ran::Ran(r),
        Err(e) => not_run(&format!("{e:#}")),
    };
    say("starting the system (release binaries, embedded defaults)");
    let mut sys = System::start(&args.bin_dir, &logs, Cgroups::None, &[]).await?;
    let (system_env, startup) = (sys.env.clone(), startup(&sys));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_memory = memory(&sys);
    let clear_refs = sys.reset_peaks();

    let eps = endpoints(&sys)?;
    let (first_predictions, mut peaks) = loads(&sys, &eps, args.quick).await?;
    let (warm, c1) = warm_runs(&sys, &eps, (n_tab, n_img, n_audit)).await;
    peaks.push(PeakPhase {
        phase: "warm latency runs".into(),
        load: None,
        memory: memory(&sys),
    });
    let exited_during_run = sys.exited();
    say("stopping the system");
    sys.stop();
    drop(sys);

    let d = medchain_diabetes_svc::load_settings()?;
    let h = medchain_heart_svc::load_settings()?;
    let floor = floors(args, &eps, &c1, &d, &h)?;
    let int8 = int8_run(args, &logs, &d, &h, n_img).await?;
    let (cgroup_run, single_instance, instances) = cgroup_runs(args, &logs).await?;
    Ok(SystemRun {
        header,
        system_env,
        startup,
        idle_memory,
        clear_refs,
        first_predictions,
        warm,
        peaks,
        exited_during_run,
        floor,
        onnxruntime_library: floor::library(&d),
        models: models(&d, &h),
        int8,
        cgroup_run,
        single_instance,
        instances,
        load_peaks,
    })
}

/// The runs under kernel limits, where cgroups can be made (not with `--no-cgroup` or
/// `--quick`): each service in 512 MB, all four in one 512 MB, and each on the platform
/// instances (which need a CPU quota as well).
async fn cgroup_runs(
    args: &Args,
    logs: &std::path::Path,
) -> anyhow::Result<(Ran<CgroupRun>, Ran<SingleInstance>, Vec<Ran<InstanceRun>>)> {
    let cgroups = if !args.cgroup || args.quick {
        Err("skipped (--no-cgroup or --quick)".to_string())
    } else {
        Cgroup::probe()
    };
    let cgroup_run = match &cgroups {
        Err(reason) => not_run(reason),
        Ok(()) => Ran::Ran(cgroup_run(args, logs).await?),
    };
    let single = match &cgroups {
        Err(reason) => not_run(reason),
        Ok(()) => Ran::Ran(single_instance_run(args, logs).await?),
    };
    let quota = cgroups.and_then(|()| Cgroup::probe_cpu());
    let mut instances = Vec::new();
    for instance in [
        medchain_tests::system::RENDER_FREE,
        medchain_tests::system::RENDER_STARTER,
    ] {
        instances.push(match &quota {
            Err(reason) => not_run(reason),
            Ok(()) => Ran::Ran(instance_run(args, logs, instance).await?),
        });
    }
    Ok((cgroup_run, single, instances))
}

/// Warm latency: every endpoint × {gateway, direct} × concurrency {1, 4, 16}, each after a
/// warm-up that is not recorded; with each endpoint's p50 at c=1 by `endpoint|route` (for
/// the floor's ratios). `counts`: requests per tabular, image and audited run.
async fn warm_runs(
    sys: &System,
    eps: &[Endpoint],
    counts: (usize, usize, usize),
) -> (Vec<WarmRun>, BTreeMap<String, f64>) {
    say("warm latency: every endpoint × {gateway, direct} × concurrency {1, 4, 16}");
    sys.reset_peaks();
    let (n_tab, n_img, n_audit) = counts;
    let mut warm = Vec::new();
    let mut c1 = BTreeMap::new();
    for ep in eps {
        for (route, target) in [("gateway", &ep.gateway), ("direct", &ep.direct)] {
            for c in [1, 4, 16] {
                let n = if ep.model.is_none() {
                    n_audit
                } else if ep.image {
                    n_img
                } else {
                    n_tab
                };
                let _ = drive(target, c, (n / 10).max(c)).await; // warm-up, not recorded
                let before = sys.cpu();
                let o: Outcome = drive(target, c, n).await;
                let load = o.figures();
                let cpu_us_per_request = cpu_per_request(&before, &sys.cpu(), load.requests);
                eprintln!(
                    "    {:<34} {:<8} c={c:<2} p50 {:>8.2} ms  p99 {:>8.2} ms  {:>7.1} req/s  failed {}",
                    ep.label,
                    route,
                    o.p(50.0).unwrap_or(f64::NAN),
                    o.p(99.0).unwrap_or(f64::NAN),
                    load.throughput_rps,
                    load.failed
                );
                if c == 1
                    && let Some(p50) = load.p50_ms
                {
                    c1.insert(format!("{}|{route}", ep.label), p50);
                }
                warm.push(WarmRun {
                    endpoint: ep.label.clone(),
                    route: route.into(),
                    load,
                    cpu_us_per_request,
                });
            }
        }
    }
    (warm, c1)
}

/// Each process' CPU time between two readings, µs per request of the `requests` sent.
pub(crate) fn cpu_per_request(
    before: &[(String, f64)],
    after: &[(String, f64)],
    requests: usize,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(name, t)| {
            let (_, t0) = before.iter().find(|(n, _)| n == name)?;
            Some((name.clone(), (t - t0) * 1e6 / requests.max(1) as f64))
        })
        .collect()
}

/// The floor: raw ONNX Runtime inference in this process, with the services' own options and
/// inputs, and each endpoint's end-to-end p50 at c=1 (`c1`) as a ratio of it.
fn floors(
    args: &Args,
    eps: &[Endpoint],
    c1: &BTreeMap<String, f64>,
    d: &DiseaseSettings,
    h: &DiseaseSettings,
) -> anyhow::Result<Vec<Floor>> {
    say("the floor: raw ONNX Runtime inference in this process, same options and inputs");
    let mut floors = Vec::new();
    let runs = |image: bool| match (args.quick, image) {
        (true, _) => 5,
        (false, true) => 60,
        (false, false) => 2000,
    };
    for ep in eps.iter().filter(|e| e.model.is_some()) {
        let (settings, card) = match (ep.service, ep.model) {
            ("diabetes-svc", Some("tabular")) => (d, &d.models.tabular.card),
            ("diabetes-svc", _) => (d, &d.models.image.card),
            (_, Some("tabular")) => (h, &h.models.tabular.card),
            _ => (h, &h.models.image.card),
        };
        let record;
        let small;
        let input = if ep.image {
            small = inputs::small_jpeg(ep.model.unwrap_or("retina"))?;
            floor::Input::Image(&small)
        } else {
            record = if ep.service == "diabetes-svc" {
                inputs::diabetes_record()
            } else {
                inputs::heart_record()
            };
            floor::Input::Tabular(&record)
        };
        let mut f = floor::measure(settings, card, input, runs(ep.image))?;
        if ep.image {
            let large = inputs::large_jpeg(ep.model.unwrap_or("retina"))?;
            let n = if args.quick { 3 } else { 30 };
            f.large_preprocess_p50_ms = floor::preprocess_p50(settings, card, &large, n)?;
        }
        let ort = f.p50_ms.unwrap_or(f64::NAN);
        let e2e = |route: &str| c1.get(&format!("{}|{route}", ep.label)).copied();
        let (direct, gateway) = (e2e("direct"), e2e("gateway"));
        eprintln!("    {:<34} ORT p50 {ort:>8.3} ms", ep.label);
        floors.push(Floor {
            endpoint: Some(ep.label.clone()),
            e2e_p50_ms_direct: direct,
            ratio_direct: direct.map(|e| e / ort),
            e2e_p50_ms_gateway: gateway,
            ratio_gateway: gateway.map(|e| e / ort),
            ..f
        });
    }
    Ok(floors)
}

/// The four models' cards: id, version, sha256, size, demo.
fn models(d: &DiseaseSettings, h: &DiseaseSettings) -> Vec<ModelInfo> {
    [
        (d, &d.models.tabular.card),
        (d, &d.models.image.card),
        (h, &h.models.tabular.card),
        (h, &h.models.image.card),
    ]
    .iter()
    .filter_map(|(s, c)| floor::card(s, c))
    .map(|c| ModelInfo {
        id: c.model_id,
        version: c.version,
        sha256: c.sha256,
        size_mb: c.size_bytes as f64 / 1048576.0,
        demo: c.demo,
    })
    .collect()
}

/// Drops the kernel's clean page cache (needs root), so that the ONNX Runtime library and the
/// model files are read again by — and charged to — the cgroup about to start, as in a fresh
/// container; otherwise pages an earlier run cached stay charged to the cgroup that first read
/// them and a cgroup's peak leaves them out. Whether it could.
pub(crate) fn drop_page_cache() -> bool {
    // Written back first, so that dirty pages can be dropped too.
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok()
}

/// The settings `deploy/supervise.sh` gives the services by default (its
/// `export NAME="${NAME:-value}"` lines), so the benchmark runs what the image runs.
fn supervisor_defaults() -> anyhow::Result<Vec<(String, String)>> {
    let script = std::fs::read_to_string(crate::repo_root().join("deploy/supervise.sh"))?;
    Ok(script
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("export ")?.split_once("=\"${")?;
            let value = rest
                .strip_prefix(name)?
                .strip_prefix(":-")?
                .strip_suffix("}\"")?;
            Some((name.to_string(), value.to_string()))
        })
        // Where it listens is the image's business; the benchmark picks free loopback ports.
        .filter(|(name, _)| !name.contains("__SERVER__"))
        .collect())
}

/// The loads again with all four services (and chain-svc's embedded anvil) in one memory
/// cgroup of 512 MB, as the single-instance image runs them (the supervisor's defaults: the
/// int8 ECG model, half-size image memory budgets), then the same with the fp32 ECG model.
async fn single_instance_run(
    args: &Args,
    logs: &std::path::Path,
) -> anyhow::Result<SingleInstance> {
    let defaults = supervisor_defaults()?;
    anyhow::ensure!(
        defaults
            .iter()
            .any(|(k, v)| k == "HEART__MODELS__IMAGE__CARD" && v.contains("int8")),
        "deploy/supervise.sh no longer sets the int8 ECG model: {defaults:?}"
    );
    let mut runs = Vec::new();
    for (ecg, card) in [
        ("int8", "heart/ecg.int8.card.json"),
        ("fp32", "heart/ecg.card.json"),
    ] {
        say(&format!(
            "all four services in one 512 MB memory cgroup, {ecg} ECG model"
        ));
        let mut env: Vec<(&str, &str)> = defaults
            .iter()
            .filter(|(k, _)| k != "HEART__MODELS__IMAGE__CARD")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.push(("HEART__MODELS__IMAGE__CARD", card));
        let page_cache_dropped = drop_page_cache();
        let mut sys = System::start(
            &args.bin_dir,
            &logs.join(format!("single-{ecg}")),
            Cgroups::AllIn(LIMIT_512_MB),
            &env,
        )
        .await?;
        let eps = endpoints(&sys)?;
        let (first, peaks) = loads(&sys, &eps, args.quick).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let exited = sys.exited();
        let cgroup = sys.services[0].cgroup.as_ref().map(|c| c.stats());
        sys.stop();
        runs.push(SingleRun {
            ecg_model: ecg.into(),
            page_cache_dropped,
            settings: settings_list(&env),
            cgroup,
            exited,
            first_predictions: first,
            peaks,
        });
    }
    Ok(SingleInstance {
        limit_mb: 512,
        runs,
    })
}

/// After a cgroup run: which processes exited, and each service's cgroup figures with whether
/// it was still alive; then stops the system.
async fn stop_and_summarise(
    sys: &mut System,
) -> (Vec<(String, String)>, BTreeMap<String, ServiceCgroup>) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let exited = sys.exited();
    let services = sys
        .services
        .iter()
        .map(|s| {
            let figures = ServiceCgroup {
                stats: s.cgroup.as_ref().map(|c| c.stats()),
                alive: !exited.iter().any(|(n, _)| n == s.name),
            };
            (s.name.to_string(), figures)
        })
        .collect();
    sys.stop();
    (exited, services)
}

/// Every service's cgroup peak (reset before the phase), MB, and the time the CPU quota held
/// it back, seconds.
fn cgroup_peaks(sys: &System) -> BTreeMap<String, PhaseCgroup> {
    sys.services
        .iter()
        .map(|s| {
            let cg = s.cgroup.as_ref();
            let st = cg.map(|c| c.stats());
            let figures = PhaseCgroup {
                peak_usage_mb: st.as_ref().and_then(|st| st.peak_usage_mb),
                oom_kills: st.as_ref().and_then(|st| st.oom_kills),
                cpu_throttled_s: cg.and_then(|c| c.cpu_throttled_seconds()),
            };
            (s.name.to_string(), figures)
        })
        .collect()
}

fn reset_cgroup_peaks(sys: &System) -> bool {
    sys.services
        .iter()
        .filter_map(|s| s.cgroup.as_ref())
        .all(|c| c.reset_peak())
}

/// Asks every service's `/healthz` in turn, every 250 ms, until `stop`: the slowest answer per
/// service, ms, and how many did not answer 200 within 30 s — what a platform's health check
/// or a liveness probe would see meanwhile.
async fn poll_health(
    services: Vec<(String, String)>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (BTreeMap<String, f64>, BTreeMap<String, u64>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default();
    let mut slowest = BTreeMap::new();
    let mut failed = BTreeMap::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for (name, url) in &services {
            let t = std::time::Instant::now();
            let ok = client
                .get(format!("{url}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let worst: &mut f64 = slowest.entry(name.clone()).or_default();
            *worst = worst.max(ms);
            *failed.entry(name.clone()).or_default() += u64::from(!ok);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (slowest, failed)
}

/// Predictions diabetes-svc answered `unrecorded` so far (its metric, every reason).
async fn unrecorded(sys: &System) -> Option<f64> {
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", sys.get("diabetes-svc").url()))
        .header(
            medchain_core::auth::INTERNAL_TOKEN_HEADER,
            sys.credential(Peer::Monitor, Peer::Diabetes),
        )
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with("diabetes_audit_unrecorded_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// One phase on an instance: the cgroup peaks reset first, read after; the services' health
/// checks timed throughout.
async fn instance_phase(
    sys: &System,
    name: &str,
    target: &Target,
    c: usize,
    n: usize,
) -> InstancePhase {
    say(&format!("{name}: {n} requests, {c} concurrent"));
    let reset = reset_cgroup_peaks(sys);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let services = sys
        .services
        .iter()
        .map(|s| (s.name.to_string(), s.url()))
        .collect();
    let health = tokio::spawn(poll_health(services, stop.clone()));
    let o = drive(target, c, n).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (healthz_slowest_ms, healthz_failed) = health.await.unwrap_or_default();
    InstancePhase {
        phase: name.to_string(),
        load: o.figures(),
        cgroup_peaks_reset: reset,
        cgroups: cgroup_peaks(sys),
        healthz_slowest_ms,
        healthz_failed,
        audit_unrecorded: None,
    }
}

/// The system as it runs on a platform instance: each service in a cgroup of its own with the
/// instance's memory limit and CPU quota (Render's free and starter instances). Each model's
/// first prediction (its lazy load, under the quota), warm latency at c=1, and the load phases:
/// 64 concurrent tabular, 16 concurrent 3000×2000 uploads and 16 concurrent 40-MP progressive
/// JPEGs per disease.
async fn instance_run(
    args: &Args,
    logs: &std::path::Path,
    instance: medchain_tests::system::Instance,
) -> anyhow::Result<InstanceRun> {
    say(&format!(
        "each service on a {} instance ({} MB, {} CPU)",
        instance.name,
        instance.memory_bytes >> 20,
        instance.cpus
    ));
    let page_cache_dropped = drop_page_cache();
    let mut sys = System::start(
        &args.bin_dir,
        &logs.join(instance.name),
        Cgroups::Instance(instance),
        &[],
    )
    .await?;
    let startup = startup(&sys);
    let eps = endpoints(&sys)?;
    let mut phases = Vec::new();
    for ep in eps.iter().filter(|e| e.model.is_some()) {
        let name = format!("first prediction {}", ep.label);
        phases.push(instance_phase(&sys, &name, &ep.gateway, 1, 1).await);
    }
    for ep in eps.iter().filter(|e| e.model.is_some()) {
        let name = format!("warm {} c=1", ep.label);
        let n = if ep.image { 20 } else { 200 };
        phases.push(instance_phase(&sys, &name, &ep.gateway, 1, n).await);
    }
    for ep in eps.iter().filter(|e| e.model == Some("tabular")) {
        let name = format!("64 concurrent {}", ep.label);
        phases.push(instance_phase(&sys, &name, &ep.gateway, 64, 640).await);
    }
    // Recorded predictions: whether chain-svc answers within the disease service's
    // `chain.timeout_ms` here (an `unrecorded` answer counts in its metric).
    if let Some(ep) = eps.iter().find(|e| e.model.is_none()) {
        let before = unrecorded(&sys).await;
        let name = format!("16 concurrent {}", ep.label);
        let mut phase = instance_phase(&sys, &name, &ep.gateway, 16, 160).await;
        phase.audit_unrecorded = unrecorded(&sys).await.zip(before).map(|(a, b)| a - b);
        phases.push(phase);
    }
    let gw = sys.get("gateway").url();
    for (disease, model) in [("diabetes", "retina"), ("heart", "ecg")] {
        let url = format!("{gw}/api/v1/{disease}/predict/{model}");
        let large = inputs::large_jpeg(model)?;
        let t = Target::image(url.clone(), &large, "image/jpeg", None).signed_in(&sys.api_key);
        let name = format!("16 concurrent {disease}/{model} 3000×2000 JPEGs");
        phases.push(instance_phase(&sys, &name, &t, 16, 48).await);
        let progressive = inputs::progressive_40mp(model)?;
        let t = Target::image(url, &progressive, "image/jpeg", None).signed_in(&sys.api_key);
        let name = format!(
            "16 concurrent {disease}/{model} 40-MP progressive JPEGs ({:.0} KB)",
            progressive.len() as f64 / 1024.0
        );
        phases.push(instance_phase(&sys, &name, &t, 16, 16).await);
    }
    let (exited, services) = stop_and_summarise(&mut sys).await;
    Ok(InstanceRun {
        instance: instance.name.into(),
        memory_mb: instance.memory_bytes >> 20,
        cpus: instance.cpus,
        page_cache_dropped,
        startup,
        services,
        exited,
        phases,
    })
}

/// The loads again, each service in its own 512 MB memory cgroup.
async fn cgroup_run(args: &Args, logs: &std::path::Path) -> anyhow::Result<CgroupRun> {
    say("again with each service in a 512 MB memory cgroup");
    let page_cache_dropped = drop_page_cache();
    let mut sys = System::start(
        &args.bin_dir,
        &logs.join("cgroup"),
        Cgroups::EachIn(LIMIT_512_MB),
        &[],
    )
    .await?;
    let eps = endpoints(&sys)?;
    let (first, peaks) = loads(&sys, &eps, args.quick).await?;
    let (exited, per_service) = stop_and_summarise(&mut sys).await;
    Ok(CgroupRun {
        limit_mb: 512,
        page_cache_dropped,
        services: per_service,
        exited,
        first_predictions: first,
        peaks,
    })
}

/// The image models' int8 variants (`<model>.int8.card.json`, chosen by configuration as an
/// operator would), through the same first predictions and load phases, warm image latency at
/// c=1 and 4, and their floor — for the fp32-vs-int8 comparison.
async fn int8_run(
    args: &Args,
    logs: &std::path::Path,
    d: &medchain_serving::settings::DiseaseSettings,
    h: &medchain_serving::settings::DiseaseSettings,
    n_img: usize,
) -> anyhow::Result<Ran<Int8Run>> {
    let variants = [
        (
            "DIABETES__MODELS__IMAGE__CARD",
            "diabetes/retina.int8.card.json",
            d,
        ),
        ("HEART__MODELS__IMAGE__CARD", "heart/ecg.int8.card.json", h),
    ];
    let present: Vec<_> = variants
        .iter()
        .filter(|(_, card, s)| s.models.dir().join(card).is_file())
        .collect();
    if present.is_empty() {
        return Ok(Ran::NotRun {
            reason: "no int8 cards (python -m pipeline.quantize)".into(),
        });
    }
    say("int8 variants: the same phases with the image models' int8 cards configured");
    let env: Vec<(&str, &str)> = present.iter().map(|(k, v, _)| (*k, *v)).collect();
    let mut sys = System::start(&args.bin_dir, &logs.join("int8"), Cgroups::None, &env).await?;
    let eps = endpoints(&sys)?;
    let (first, peaks) = loads(&sys, &eps, args.quick).await?;
    let mut warm = Vec::new();
    for ep in eps.iter().filter(|e| e.image) {
        for (route, target) in [("gateway", &ep.gateway), ("direct", &ep.direct)] {
            for c in [1, 4] {
                let _ = drive(target, c, (n_img / 10).max(c)).await;
                let o = drive(target, c, n_img).await;
                warm.push(WarmRun {
                    endpoint: ep.label.clone(),
                    route: route.into(),
                    load: o.figures(),
                    cpu_us_per_request: BTreeMap::new(),
                });
            }
        }
    }
    let exited = sys.exited();
    sys.stop();
    drop(sys);
    let mut floors = Vec::new();
    let mut cards = Vec::new();
    for (_, card, settings) in &present {
        let model = if card.contains("retina") {
            "retina"
        } else {
            "ecg"
        };
        let small = inputs::small_jpeg(model)?;
        let runs = if args.quick { 5 } else { 60 };
        let f = floor::measure(settings, card, floor::Input::Image(&small), runs)?;
        floors.push(Floor {
            model: Some(model.into()),
            ..f
        });
        let raw = std::fs::read_to_string(settings.models.dir().join(card))?;
        cards.push(int8_card(model, card, &serde_json::from_str(&raw)?));
    }
    Ok(Ran::Ran(Int8Run {
        env: settings_list(&env),
        cards,
        first_predictions: first,
        peaks,
        warm,
        floor: floors,
        exited_during_run: exited,
    }))
}

/// What the int8 card `c` (its JSON) says of its model against the fp32 one.
fn int8_card(model: &str, card: &str, c: &Value) -> Int8Card {
    let mb = |v: &Value| v.as_f64().map(|b| b / 1048576.0);
    let metric = |name: &str| c["metrics"][name].as_f64();
    Int8Card {
        model: model.into(),
        card: card.into(),
        model_id: c["model_id"].as_str().map(str::to_string),
        size_mb: mb(&c["size_bytes"]),
        fp32_size_mb: mb(&c["quantization"]["from"]["size_bytes"]),
        agreement_with_fp32: metric("agreement_with_fp32"),
        accuracy_int8: metric("accuracy_int8"),
        accuracy_fp32: metric("accuracy_fp32"),
        compared_on: c["metrics"]["compared_on"].as_u64(),
        max_abs_prob_diff_vs_fp32: metric("max_abs_prob_diff_vs_fp32"),
    }
}
