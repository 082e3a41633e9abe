//! `medchain-bench baseline`: the obvious alternative measured beside medchain in the same
//! run — bench/baseline/app.py, the same four ONNX files served by FastAPI on ONNX Runtime in
//! one uvicorn worker — with the same load generator, inputs and request counts. For each
//! side: start-up, idle memory, each model's first prediction, warm latency, throughput and
//! CPU per request at concurrency 1 and 4, and the peak memory of the whole run.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::load::{LoadFigures, Target, drive};
use crate::results::Header;
use crate::systembench::cpu_per_request;
use crate::{Args, inputs, results};
use medchain_tests::Peer;
use medchain_tests::system::{Cgroups, System, cpu_seconds, mem, service_peer, terminate};

/// The processes counted on medchain's side: what serves predictions (chain-svc and its
/// anvil, which the baseline has no counterpart for, run but are not counted).
const SERVING: [&str; 3] = ["gateway", "diabetes-svc", "heart-svc"];

/// What `medchain-bench baseline` writes to `results/baseline.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaselineRun {
    pub header: Header,
    /// The baseline's stack: Python and its pinned packages.
    pub baseline_stack: String,
    pub sides: Vec<Side>,
}

/// One system under test.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Side {
    pub name: String,
    /// The processes whose memory and CPU are counted.
    pub processes: Vec<String>,
    /// Spawn → ready (its models loaded, for the baseline), ms, each counted process;
    /// medchain's start one after another here, and together in a deployment.
    pub startup_ms: BTreeMap<String, f64>,
    /// RSS of the counted processes once started, MB, summed.
    pub idle_rss_mb: f64,
    pub first_predictions: Vec<First>,
    pub runs: Vec<Run>,
    /// RSS at the end, and the sum of each counted process' peak (VmHWM) over the whole run, MB.
    pub final_rss_mb: f64,
    pub peak_rss_mb: f64,
}

/// An endpoint's first request (medchain loads the model then; the baseline at start-up).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct First {
    pub endpoint: String,
    pub ok: bool,
    pub latency_ms: Option<f64>,
}

/// A warm run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub endpoint: String,
    /// `gateway` or `direct` (to the disease service) for medchain; `direct` for the baseline.
    pub route: String,
    pub load: LoadFigures,
    /// User + system CPU of the counted processes over the run, µs per request.
    pub cpu_us_per_request: f64,
    /// The same, each counted process.
    pub cpu_us_by_process: BTreeMap<String, f64>,
}

/// The endpoints compared: label, whether it is an image, and the request body as a target
/// for a URL.
struct Endpoint {
    label: String,
    image: bool,
    /// (disease, model) of the route.
    route: (&'static str, &'static str),
    body: Body,
}

enum Body {
    Json(serde_json::Value),
    Jpeg(Vec<u8>),
}

impl Endpoint {
    fn target(&self, url: String, token: Option<&str>) -> Target {
        match &self.body {
            Body::Json(v) => Target::json(url, v, token),
            Body::Jpeg(b) => Target::image(url, b, "image/jpeg", token),
        }
    }
}

fn endpoints() -> anyhow::Result<Vec<Endpoint>> {
    let mut out = Vec::new();
    for (disease, model, record) in [
        ("diabetes", "retina", inputs::diabetes_record()),
        ("heart", "ecg", inputs::heart_record()),
    ] {
        out.push(Endpoint {
            label: format!("{disease}/tabular"),
            image: false,
            route: (disease, "tabular"),
            body: Body::Json(record),
        });
        out.push(Endpoint {
            label: format!("{disease}/{model} 224×224"),
            image: true,
            route: (disease, model),
            body: Body::Jpeg(inputs::small_jpeg(model)?),
        });
    }
    out.push(Endpoint {
        label: "diabetes/retina 3000×2000".into(),
        image: true,
        route: ("diabetes", "retina"),
        body: Body::Jpeg(inputs::large_jpeg("retina")?),
    });
    Ok(out)
}

fn say(msg: &str) {
    eprintln!("==> {msg}");
}

pub async fn run(args: &Args) -> anyhow::Result<BaselineRun> {
    let logs = crate::repo_root().join(".data/bench/logs/baseline");
    let header = results::run_header(args, "baseline");
    let eps = endpoints()?;
    let counts = if args.quick { (20, 4) } else { (2000, 150) };
    let medchain = medchain_side(args, &logs, &eps, counts).await?;
    let python = python_side(&logs, &eps, counts).await?;
    Ok(BaselineRun {
        header,
        baseline_stack: baseline_stack(),
        sides: vec![medchain, python],
    })
}

/// How a side's counted processes are read.
trait Counted {
    /// (name, pid) of each counted process.
    fn pids(&self) -> Vec<(String, u32)>;

    /// CPU seconds used so far, each counted process.
    fn cpu_s(&self) -> Vec<(String, f64)> {
        self.pids()
            .into_iter()
            .filter_map(|(name, p)| Some((name, cpu_seconds(p)?)))
            .collect()
    }

    /// (RSS, peak) summed, MB.
    fn memory_mb(&self) -> (f64, f64) {
        self.pids()
            .iter()
            .filter_map(|(_, p)| mem(*p))
            .fold((0.0, 0.0), |(r, h), m| (r + m.rss_mb, h + m.hwm_mb))
    }
}

impl Counted for System {
    fn pids(&self) -> Vec<(String, u32)> {
        SERVING
            .iter()
            .map(|n| (n.to_string(), self.get(n).pid))
            .collect()
    }
}

struct Python {
    child: Child,
    pid: u32,
    url: String,
    ready_ms: f64,
}

impl Counted for Python {
    fn pids(&self) -> Vec<(String, u32)> {
        vec![("python".into(), self.pid)]
    }
}

async fn medchain_side(
    args: &Args,
    logs: &Path,
    eps: &[Endpoint],
    counts: (usize, usize),
) -> anyhow::Result<Side> {
    say("medchain: starting the system (release binaries, embedded defaults)");
    let mut sys = System::start(&args.bin_dir, &logs.join("medchain"), Cgroups::None, &[]).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let startup_ms = SERVING
        .iter()
        .map(|n| (n.to_string(), sys.get(n).ready_ms))
        .collect();
    let idle_rss_mb = sys.memory_mb().0;
    let gw = sys.get("gateway").url();
    let mut targets = Vec::new();
    for ep in eps {
        let (disease, model) = ep.route;
        let service = format!("{disease}-svc");
        let svc = sys.get(&service);
        let token = sys.credential(Peer::Gateway, service_peer(&service));
        let via = ep
            .target(format!("{gw}/api/v1/{disease}/predict/{model}"), None)
            .signed_in(&sys.api_key);
        let direct = ep.target(format!("{}/v1/predict/{model}", svc.url()), Some(token));
        targets.push((ep, "gateway", via));
        targets.push((ep, "direct", direct));
    }
    let (first_predictions, runs) = measure(&sys, &targets, counts).await;
    let (final_rss_mb, peak_rss_mb) = sys.memory_mb();
    let exited = sys.exited();
    sys.stop();
    anyhow::ensure!(
        exited.is_empty(),
        "medchain processes exited during the run: {exited:?}"
    );
    Ok(Side {
        name: "medchain".into(),
        processes: SERVING.iter().map(|s| s.to_string()).collect(),
        startup_ms,
        idle_rss_mb,
        first_predictions,
        runs,
        final_rss_mb,
        peak_rss_mb,
    })
}

async fn python_side(
    logs: &Path,
    eps: &[Endpoint],
    counts: (usize, usize),
) -> anyhow::Result<Side> {
    say("the Python baseline: starting bench/baseline/app.py (one uvicorn worker)");
    let mut py = spawn_python(logs).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss_mb = py.memory_mb().0;
    let targets: Vec<_> = eps
        .iter()
        .map(|ep| {
            let (disease, model) = ep.route;
            let url = format!("{}/predict/{disease}/{model}", py.url);
            (ep, "direct", ep.target(url, None))
        })
        .collect();
    let (first_predictions, runs) = measure(&py, &targets, counts).await;
    let (final_rss_mb, peak_rss_mb) = py.memory_mb();
    let exited = py.child.try_wait()?;
    terminate(&mut py.child, py.pid);
    anyhow::ensure!(
        exited.is_none(),
        "the baseline exited during the run: {exited:?}"
    );
    Ok(Side {
        name: "Python baseline (FastAPI + ONNX Runtime)".into(),
        processes: vec!["python (uvicorn)".into()],
        startup_ms: BTreeMap::from([("python".into(), py.ready_ms)]),
        idle_rss_mb,
        first_predictions,
        runs,
        final_rss_mb,
        peak_rss_mb,
    })
}

/// Starts the baseline with the test environment's Python (`MEDCHAIN_PYTHON`) on a free port
/// and waits until it answers (its models loaded).
async fn spawn_python(logs: &Path) -> anyhow::Result<Python> {
    std::fs::create_dir_all(logs)?;
    let root = crate::repo_root();
    let python = std::env::var("MEDCHAIN_PYTHON").unwrap_or_else(|_| "python3".into());
    let port = medchain_tests::net::free_port();
    let log = std::fs::File::create(logs.join("python.log"))?;
    let started = Instant::now();
    let mut child = Command::new(&python)
        .args(["-m", "uvicorn", "app:app", "--app-dir"])
        .arg(root.join("bench/baseline"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .env("BASELINE_MODELS_DIR", root.join("models"))
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| anyhow::anyhow!("{python} could not be started: {e}"))?;
    let pid = child.id();
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let ready_ms = medchain_tests::system::wait_ok(
        &client,
        &format!("{url}/health"),
        &mut child,
        "the Python baseline",
        started,
    )
    .await?;
    Ok(Python {
        child,
        pid,
        url,
        ready_ms,
    })
}

/// Each endpoint's first request, then warm runs at concurrency 1 and 4 (after a warm-up that
/// is not recorded) with the counted processes' CPU per request. `counts`: requests per
/// tabular and image run.
async fn measure(
    side: &impl Counted,
    targets: &[(&Endpoint, &str, Target)],
    counts: (usize, usize),
) -> (Vec<First>, Vec<Run>) {
    let mut first = Vec::new();
    for (ep, _, target) in targets {
        // The first request of each endpoint, by the first route listed for it.
        if first.iter().any(|f: &First| f.endpoint == ep.label) {
            continue;
        }
        let o = drive(target, 1, 1).await;
        first.push(First {
            endpoint: ep.label.clone(),
            ok: o.ok() == 1,
            latency_ms: o.latencies_ms.first().copied(),
        });
    }
    let mut runs = Vec::new();
    for (ep, route, target) in targets {
        for c in [1, 4] {
            let n = if ep.image { counts.1 } else { counts.0 };
            let _ = drive(target, c, (n / 10).max(c)).await; // warm-up, not recorded
            let before = side.cpu_s();
            let load = drive(target, c, n).await.figures();
            let cpu_us_by_process = cpu_per_request(&before, &side.cpu_s(), load.requests);
            let cpu_us_per_request = cpu_us_by_process.values().sum();
            eprintln!(
                "    {:<28} {route:<8} c={c}  p50 {:>8.2} ms  {:>7.1} req/s  CPU {:>7.0} µs/req  failed {}",
                ep.label,
                load.p50_ms.unwrap_or(f64::NAN),
                load.throughput_rps,
                cpu_us_per_request,
                load.failed
            );
            runs.push(Run {
                endpoint: ep.label.clone(),
                route: route.to_string(),
                load,
                cpu_us_per_request,
                cpu_us_by_process,
            });
        }
    }
    (first, runs)
}

/// "Python 3.x, fastapi==…, …" from the interpreter and the pinned requirements.
fn baseline_stack() -> String {
    let python = std::env::var("MEDCHAIN_PYTHON").unwrap_or_else(|_| "python3".into());
    let version = Command::new(&python)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "Python (version unknown)".into());
    let root = crate::repo_root();
    let pins: Vec<String> = ["bench/baseline/requirements.txt", "models/requirements.txt"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(root.join(f)).ok())
        .flat_map(|s| s.lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| {
            ["fastapi", "uvicorn", "onnxruntime", "numpy", "pillow"]
                .iter()
                .any(|p| l.starts_with(&format!("{p}==")))
        })
        .collect();
    format!("{version}, {}", pins.join(", "))
}
