//! `medchain-bench system`: the whole system measured, in this order (memory peaks are reset
//! between phases, so each phase's peak is its own): start-up; idle memory; each model's first
//! prediction; 64 concurrent tabular requests per disease; 16 concurrent 3000×2000 uploads per
//! image model; warm latency at concurrency 1/4/16 through the gateway and direct; the raw
//! ONNX Runtime floor; then the loads again with each service in a 512 MB memory cgroup, and
//! with all four in one 512 MB memory cgroup (the single-instance image).

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::load::{Outcome, Target, drive};
use crate::{Args, floor, inputs, results};
use medchain_serving::DiseaseSettings;
use medchain_tests::Peer;
use medchain_tests::system::{Cgroup, Cgroups, System, service_peer};

const LIMIT_512_MB: u64 = 512 << 20;

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

fn memory_json(sys: &System) -> Value {
    sys.memory()
        .into_iter()
        .map(|(name, m)| (name, json!({"rss_mb": m.rss_mb, "peak_mb": m.hwm_mb})))
        .collect::<Map<_, _>>()
        .into()
}

fn say(msg: &str) {
    eprintln!("==> {msg}");
}

/// Runs a peak-load phase: resets the peaks, drives, reads every process' peak.
async fn peak_phase(sys: &System, name: &str, target: &Target, c: usize, n: usize) -> Value {
    say(&format!("{name}: {n} requests, {c} concurrent"));
    sys.reset_peaks();
    let o = drive(target, c, n).await;
    json!({"phase": name, "load": o.to_json(), "memory": memory_json(sys)})
}

/// The loads whose peaks the targets are about, run by both the plain and the cgroup run.
async fn loads(
    sys: &System,
    eps: &[Endpoint],
    quick: bool,
) -> anyhow::Result<(Vec<Value>, Vec<Value>)> {
    let mut first = Vec::new();
    for ep in eps.iter().filter(|e| e.model.is_some()) {
        say(&format!("first prediction: {}", ep.label));
        // Its own peak: what loading this model costs at most, transient buffers included.
        sys.reset_peaks();
        let o = drive(&ep.gateway, 1, 1).await;
        let mem = sys
            .memory()
            .into_iter()
            .find(|(n, _)| n == ep.service)
            .map(|(_, m)| json!({"rss_mb": m.rss_mb, "peak_mb": m.hwm_mb}));
        first.push(json!({
            "endpoint": ep.label,
            "service": ep.service,
            "ok": o.ok() == 1,
            "first_failure": o.first_failure,
            "latency_ms": o.latencies_ms.first(),
            "service_memory_after": mem,
            // Every process' peak during this first prediction (for sums at one moment).
            "memory": memory_json(sys),
        }));
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

pub async fn run(args: &Args) -> anyhow::Result<Value> {
    let logs = crate::repo_root().join(".data/bench/logs");
    let (n_tab, n_img, n_audit) = if args.quick {
        (40, 8, 20)
    } else {
        (2000, 150, 400)
    };
    let mut results = results::header(args, "system")?;

    say("starting the system (release binaries, embedded defaults)");
    let mut sys = System::start(&args.bin_dir, &logs, Cgroups::None, &[]).await?;
    results["system_env"] = json!(sys.env);
    results["startup"] = sys
        .services
        .iter()
        .map(|s| {
            (
                s.name.to_string(),
                json!({"healthy_ms": s.healthy_ms, "ready_ms": s.ready_ms}),
            )
        })
        .collect::<Map<_, _>>()
        .into();
    tokio::time::sleep(Duration::from_secs(1)).await;
    results["idle_memory"] = memory_json(&sys);
    results["clear_refs"] = json!(sys.reset_peaks());

    let eps = endpoints(&sys)?;
    let (first, mut peaks) = loads(&sys, &eps, args.quick).await?;
    results["first_predictions"] = json!(first);

    let (warm, c1) = warm_runs(&sys, &eps, (n_tab, n_img, n_audit)).await;
    peaks.push(json!({"phase": "warm latency runs", "memory": memory_json(&sys)}));
    results["warm"] = json!(warm);
    results["peaks"] = json!(peaks);
    results["exited_during_run"] = json!(sys.exited());
    say("stopping the system");
    sys.stop();
    drop(sys);

    let d = medchain_diabetes_svc::load_settings()?;
    let h = medchain_heart_svc::load_settings()?;
    results["floor"] = json!(floors(args, &eps, &c1, &d, &h)?);
    results["onnxruntime_library"] = json!(floor::library(&d));
    results["models"] = models_json(&d, &h);

    results["int8"] = int8_run(args, &logs, &d, &h, n_img).await?;

    let cgroups = if !args.cgroup || args.quick {
        Err("skipped (--no-cgroup or --quick)".to_string())
    } else {
        Cgroup::probe()
    };
    let not_run = |reason: &String| json!({"ran": false, "reason": reason});
    results["cgroup_run"] = match &cgroups {
        Err(reason) => not_run(reason),
        Ok(()) => cgroup_run(args, &logs).await?,
    };
    results["single_instance"] = match &cgroups {
        Err(reason) => not_run(reason),
        Ok(()) => single_instance_run(args, &logs).await?,
    };
    let quota = cgroups.and_then(|()| Cgroup::probe_cpu());
    let mut instances = Vec::new();
    for instance in [
        medchain_tests::system::RENDER_FREE,
        medchain_tests::system::RENDER_STARTER,
    ] {
        instances.push(match &quota {
            Err(reason) => not_run(reason),
            Ok(()) => instance_run(args, &logs, instance).await?,
        });
    }
    results["instances"] = json!(instances);
    Ok(results)
}

/// Warm latency: every endpoint × {gateway, direct} × concurrency {1, 4, 16}, each after a
/// warm-up that is not recorded; with each endpoint's p50 at c=1 by `endpoint|route` (for
/// the floor's ratios). `counts`: requests per tabular, image and audited run.
async fn warm_runs(
    sys: &System,
    eps: &[Endpoint],
    counts: (usize, usize, usize),
) -> (Vec<Value>, Map<String, Value>) {
    say("warm latency: every endpoint × {gateway, direct} × concurrency {1, 4, 16}");
    sys.reset_peaks();
    let (n_tab, n_img, n_audit) = counts;
    let mut warm = Vec::new();
    let mut c1 = Map::new();
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
                let o: Outcome = drive(target, c, n).await;
                eprintln!(
                    "    {:<34} {:<8} c={c:<2} p50 {:>8.2} ms  p99 {:>8.2} ms  {:>7.1} req/s  failed {}",
                    ep.label,
                    route,
                    o.p(50.0).unwrap_or(f64::NAN),
                    o.p(99.0).unwrap_or(f64::NAN),
                    o.to_json()["throughput_rps"].as_f64().unwrap_or(0.0),
                    o.failed()
                );
                if c == 1 {
                    c1.insert(format!("{}|{route}", ep.label), json!(o.p(50.0)));
                }
                let mut j = o.to_json();
                j["endpoint"] = json!(ep.label);
                j["route"] = json!(route);
                warm.push(j);
            }
        }
    }
    (warm, c1)
}

/// The floor: raw ONNX Runtime inference in this process, with the services' own options and
/// inputs, and each endpoint's end-to-end p50 at c=1 (`c1`) as a ratio of it.
fn floors(
    args: &Args,
    eps: &[Endpoint],
    c1: &Map<String, Value>,
    d: &DiseaseSettings,
    h: &DiseaseSettings,
) -> anyhow::Result<Vec<Value>> {
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
        let ort = f["p50_ms"].as_f64().unwrap_or(f64::NAN);
        for route in ["direct", "gateway"] {
            if let Some(e2e) = c1
                .get(&format!("{}|{route}", ep.label))
                .and_then(Value::as_f64)
            {
                f[format!("e2e_p50_ms_{route}")] = json!(e2e);
                f[format!("ratio_{route}")] = json!(e2e / ort);
            }
        }
        f["endpoint"] = json!(ep.label);
        eprintln!(
            "    {:<34} ORT p50 {:>8.3} ms",
            ep.label,
            f["p50_ms"].as_f64().unwrap_or(f64::NAN)
        );
        floors.push(f);
    }
    Ok(floors)
}

/// The four models' cards: id, version, sha256, size, demo.
fn models_json(d: &DiseaseSettings, h: &DiseaseSettings) -> Value {
    json!(
        [
            (d, &d.models.tabular.card),
            (d, &d.models.image.card),
            (h, &h.models.tabular.card),
            (h, &h.models.image.card)
        ]
        .iter()
        .filter_map(|(s, c)| floor::card(s, c))
        .map(
            |c| json!({"id": c.model_id, "version": c.version, "sha256": c.sha256,
                        "size_mb": c.size_bytes as f64 / 1048576.0, "demo": c.demo})
        )
        .collect::<Vec<_>>()
    )
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
async fn single_instance_run(args: &Args, logs: &std::path::Path) -> anyhow::Result<Value> {
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
        let cgroup = sys.services[0]
            .cgroup
            .as_ref()
            .map_or(Value::Null, |c| c.stats());
        sys.stop();
        runs.push(json!({
            "ecg_model": ecg,
            "page_cache_dropped": page_cache_dropped,
            "settings": env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "cgroup": cgroup,
            "exited": exited,
            "first_predictions": first,
            "peaks": peaks,
        }));
    }
    Ok(json!({"ran": true, "limit_mb": 512, "runs": runs}))
}

/// After a cgroup run: which processes exited, and each service's cgroup figures with whether
/// it was still alive; then stops the system.
async fn stop_and_summarise(sys: &mut System) -> (Vec<(String, String)>, Map<String, Value>) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let exited = sys.exited();
    let services = sys
        .services
        .iter()
        .map(|s| {
            let mut v = s.cgroup.as_ref().map_or(Value::Null, |c| c.stats());
            v["alive"] = json!(!exited.iter().any(|(n, _)| n == s.name));
            (s.name.to_string(), v)
        })
        .collect();
    sys.stop();
    (exited, services)
}

/// Every service's cgroup peak (reset before the phase), MB, and the time the CPU quota held
/// it back, seconds.
fn cgroup_peaks(sys: &System) -> Value {
    sys.services
        .iter()
        .map(|s| {
            let cg = s.cgroup.as_ref();
            let st = cg.map_or(Value::Null, |c| c.stats());
            (
                s.name.to_string(),
                json!({
                    "peak_usage_mb": st["peak_usage_mb"],
                    "oom_kills": st["oom_kills"],
                    "cpu_throttled_s": cg.and_then(|c| c.cpu_throttled_seconds()),
                }),
            )
        })
        .collect::<Map<_, _>>()
        .into()
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
) -> (Map<String, Value>, Map<String, Value>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default();
    let mut slowest: Map<String, Value> = Map::new();
    let mut failed: Map<String, Value> = Map::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for (name, url) in &services {
            let t = std::time::Instant::now();
            let ok = client
                .get(format!("{url}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let worst = slowest.get(name).and_then(Value::as_f64).unwrap_or(0.0);
            slowest.insert(name.clone(), json!(worst.max(ms)));
            let n = failed.get(name).and_then(Value::as_u64).unwrap_or(0);
            failed.insert(name.clone(), json!(n + u64::from(!ok)));
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
async fn instance_phase(sys: &System, name: &str, target: &Target, c: usize, n: usize) -> Value {
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
    json!({"phase": name, "load": o.to_json(), "cgroup_peaks_reset": reset,
           "cgroups": cgroup_peaks(sys), "healthz_slowest_ms": healthz_slowest_ms,
           "healthz_failed": healthz_failed})
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
) -> anyhow::Result<Value> {
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
    let startup: Map<String, Value> = sys
        .services
        .iter()
        .map(|s| {
            (
                s.name.to_string(),
                json!({"healthy_ms": s.healthy_ms, "ready_ms": s.ready_ms}),
            )
        })
        .collect();
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
        phase["audit_unrecorded"] = json!(unrecorded(&sys).await.zip(before).map(|(a, b)| a - b));
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
    Ok(json!({
        "ran": true,
        "instance": instance.name,
        "memory_mb": instance.memory_bytes >> 20,
        "cpus": instance.cpus,
        "page_cache_dropped": page_cache_dropped,
        "startup": startup,
        "services": services,
        "exited": exited,
        "phases": phases,
    }))
}

/// The loads again, each service in its own 512 MB memory cgroup.
async fn cgroup_run(args: &Args, logs: &std::path::Path) -> anyhow::Result<Value> {
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
    Ok(json!({
        "ran": true,
        "limit_mb": 512,
        "page_cache_dropped": page_cache_dropped,
        "services": per_service,
        "exited": exited,
        "first_predictions": first,
        "peaks": peaks,
    }))
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
) -> anyhow::Result<Value> {
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
        return Ok(json!({"ran": false, "reason": "no int8 cards (python -m pipeline.quantize)"}));
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
                let mut j = o.to_json();
                j["endpoint"] = json!(ep.label);
                j["route"] = json!(route);
                warm.push(j);
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
        let mut f = floor::measure(settings, card, floor::Input::Image(&small), runs)?;
        f["model"] = json!(model);
        floors.push(f);
        let raw = std::fs::read_to_string(settings.models.dir().join(card))?;
        let c: Value = serde_json::from_str(&raw)?;
        cards.push(json!({
            "model": model,
            "card": card,
            "model_id": c["model_id"],
            "size_mb": c["size_bytes"].as_f64().map(|b| b / 1048576.0),
            "fp32_size_mb": c["quantization"]["from"]["size_bytes"].as_f64().map(|b| b / 1048576.0),
            "agreement_with_fp32": c["metrics"]["agreement_with_fp32"],
            "accuracy_int8": c["metrics"]["accuracy_int8"],
            "accuracy_fp32": c["metrics"]["accuracy_fp32"],
            "compared_on": c["metrics"]["compared_on"],
            "max_abs_prob_diff_vs_fp32": c["metrics"]["max_abs_prob_diff_vs_fp32"],
        }));
    }
    Ok(json!({
        "ran": true,
        "env": env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "cards": cards,
        "first_predictions": first,
        "peaks": peaks,
        "warm": warm,
        "floor": floors,
        "exited_during_run": exited,
    }))
}
