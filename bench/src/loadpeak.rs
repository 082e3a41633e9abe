//! The model-load peak: each image model loaded by its service alone, in a fresh process, once
//! from the offline-optimised variant `<service> optimize-models` made for this CPU and once
//! from the portable file (`runtime.offline_optimized=false`). The process' RSS before the
//! first prediction, after it, and its peak (VmHWM) across it: the peak over the RSS after is
//! the load's transient. The variants are made first, by the release binaries' own command;
//! the rest of the system run then serves from them too.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::inputs;
use crate::load::{Target, drive};
use medchain_tests::system::{mem, terminate, wait_ok};

/// The load-peak part of the system run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadPeakRun {
    /// What `optimize-models` printed, per service (the command line first).
    pub optimize: Vec<String>,
    pub loads: Vec<LoadPeak>,
}

/// One model loaded in a fresh service process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadPeak {
    pub service: String,
    pub card: String,
    /// `optimized` or `portable`: what the service was set to load.
    pub source: String,
    /// What `/models` says the service loaded: the variant's CPU class, or none (portable).
    pub loaded_optimized: Option<String>,
    pub ok: bool,
    pub rss_before_mb: f64,
    pub rss_after_mb: f64,
    pub peak_mb: f64,
    /// The first prediction's latency, the load included.
    pub first_ms: Option<f64>,
    /// The load as `/models` timed it (hashes, session, check run).
    pub load_ms: Option<f64>,
}

const RUNS: [(&str, &str, &str, &str); 4] = [
    (
        "diabetes-svc",
        "DIABETES",
        "retina",
        "diabetes/retina.card.json",
    ),
    (
        "diabetes-svc",
        "DIABETES",
        "retina",
        "diabetes/retina.int8.card.json",
    ),
    ("heart-svc", "HEART", "ecg", "heart/ecg.card.json"),
    ("heart-svc", "HEART", "ecg", "heart/ecg.int8.card.json"),
];

/// Makes the variants, then loads each image model both ways.
pub async fn run(bin_dir: &Path, logs: &Path) -> anyhow::Result<LoadPeakRun> {
    medchain_core::http::init_tls();
    let mut optimize = Vec::new();
    for service in ["diabetes-svc", "heart-svc"] {
        say(&format!("{service} optimize-models"));
        let out = Command::new(bin_dir.join(service))
            .arg("optimize-models")
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            anyhow::bail!(
                "{service} optimize-models failed ({}): {}{}",
                out.status,
                text,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        optimize.push(format!("{service} optimize-models"));
        optimize.extend(text.lines().map(str::to_string));
    }
    std::fs::create_dir_all(logs)?;
    let mut loads = Vec::new();
    for (service, prefix, route, card) in RUNS {
        for optimized in [true, false] {
            say(&format!(
                "load peak: {card} ({})",
                if optimized { "optimized" } else { "portable" }
            ));
            loads.push(one(bin_dir, logs, (service, prefix, route, card), optimized).await?);
        }
    }
    Ok(LoadPeakRun { optimize, loads })
}

async fn one(
    bin_dir: &Path,
    logs: &Path,
    (service, prefix, route, card): (&str, &str, &str, &str),
    optimized: bool,
) -> anyhow::Result<LoadPeak> {
    let port = medchain_tests::free_port();
    let source = if optimized { "optimized" } else { "portable" };
    let log_name = format!("loadpeak-{}-{source}.log", card.replace(['/', '.'], "-"));
    let log = std::fs::File::create(logs.join(log_name))?;
    let mut child = Command::new(bin_dir.join(service))
        .env(format!("{prefix}__SERVER__PORT"), port.to_string())
        .env(format!("{prefix}__CHAIN__URL"), "")
        .env(format!("{prefix}__MODELS__IMAGE__CARD"), card)
        .env(
            format!("{prefix}__RUNTIME__OFFLINE_OPTIMIZED"),
            optimized.to_string(),
        )
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let pid = child.id();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    let ready = wait_ok(
        &client,
        &format!("{base}/healthz"),
        &mut child,
        service,
        started,
    )
    .await;
    let result = async {
        ready?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = mem(pid).ok_or_else(|| anyhow::anyhow!("no /proc for {service}"))?;
        let image = inputs::small_jpeg(route)?;
        let target = Target::image(
            format!("{base}/v1/predict/{route}"),
            &image,
            "image/jpeg",
            None,
        );
        let o = drive(&target, 1, 1).await;
        let after = mem(pid).ok_or_else(|| anyhow::anyhow!("no /proc for {service}"))?;
        let models: serde_json::Value = client
            .get(format!("{base}/models"))
            .send()
            .await?
            .json()
            .await?;
        let status = models["models"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["key"] == route))
            .cloned()
            .unwrap_or_default();
        Ok::<_, anyhow::Error>(LoadPeak {
            service: service.into(),
            card: card.into(),
            source: source.into(),
            loaded_optimized: status["optimized"].as_str().map(str::to_string),
            ok: o.ok() == 1,
            rss_before_mb: before.rss_mb,
            rss_after_mb: after.rss_mb,
            peak_mb: after.hwm_mb,
            first_ms: o.latencies_ms.first().copied(),
            load_ms: status["load_ms"].as_f64(),
        })
    }
    .await;
    terminate(&mut child, pid);
    result
}

fn say(msg: &str) {
    eprintln!("[bench] {msg}");
}
