//! `medchain-bench containers`: the deployable images measured as the platform sees them —
//! each container's cgroup peak (`memory.max_usage_in_bytes` on cgroup v1, `memory.peak` on
//! v2: page cache included, what the container's limit is held against) per load phase.
//!
//! Three deployments, one after the other, each from images already built (`bench/run.sh
//! containers` builds them with `scripts/container-images.sh`):
//! - the compose stack (`docker-compose.yml`, fp32 ECG model, heart-svc scaled to three), every
//!   container under its 512 MB `mem_limit`;
//! - the single-instance image alone under `docker run --memory 512m --memory-swap 512m`, with
//!   its default int8 ECG model and with the fp32 one.
//!
//! Each goes through the benchmark's phases: start-up and idle, every model's first prediction
//! (its lazy load), 64 concurrent tabular requests per disease, 16 concurrent audited
//! predictions, 16 concurrent 3000×2000 JPEG uploads and 16 concurrent 40-MP progressive JPEGs
//! per image model. Every peak is reset before its phase, so each phase's peak is its own.
//! Traffic goes only to the gateway's port, published on 127.0.0.1.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::load::{LoadFigures, Target, drive};
use crate::results::Header;
use crate::{Args, inputs, repo_root, results};

/// What `medchain-bench containers` writes to `results/containers.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainersRun {
    #[serde(flatten)]
    pub header: Header,
    pub engine: Engine,
    pub runs: Vec<DeploymentRun>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Engine {
    pub docker: Option<String>,
    pub compose: Option<String>,
}

/// One deployment (compose, or the single-instance image) through the load phases. Per
/// container maps are keyed by the container's label (`gateway`, `heart-svc-2`, `single`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentRun {
    pub deployment: String,
    /// The command that started it (secrets elided).
    pub command: String,
    /// The single-instance image's ECG model (`int8`, `fp32`); none for compose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecg_model: Option<String>,
    pub ready_after_s: f64,
    pub cgroup_version: Option<u8>,
    pub page_cache_dropped: bool,
    pub limits_mb: BTreeMap<String, Option<f64>>,
    pub images: BTreeMap<String, Option<ImageInfo>>,
    pub phases: Vec<Phase>,
    /// Every container after the last phase.
    pub end: BTreeMap<String, ContainerFigures>,
    /// Compose only: heart/tabular over the three heart-svc instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<Vec<Spread>>,
}

/// The image a container runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageInfo {
    pub image: String,
    pub size_mib: Option<f64>,
}

/// A container's memory cgroup and Docker's view of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerFigures {
    pub peak_mb: Option<f64>,
    pub usage_mb: Option<f64>,
    pub running: Option<bool>,
    pub oom_killed: Option<bool>,
    pub restarts: Option<u64>,
}

/// One load phase (the first, start-up and idle, has no load).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase {
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadFigures>,
    /// Whether every container's peak could be reset before the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peaks_reset: Option<bool>,
    pub containers: BTreeMap<String, ContainerFigures>,
}

/// heart/tabular over three heart-svc instances, connections kept alive or not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spread {
    pub reuse_connections: bool,
    pub load: LoadFigures,
    pub served_per_instance: BTreeMap<String, usize>,
}
use medchain_tests::system::{credentials_as_env, free_ports, new_api_key, new_credentials};

const MB: f64 = 1024.0 * 1024.0;
/// The caller the load generator signs in as.
const CALLER: &str = "container-bench";

fn say(msg: &str) {
    eprintln!("==> {msg}");
}

/// Runs `docker` (or `docker-compose`) and returns its standard output; an error with its
/// standard error when it fails.
fn docker(program: &str, args: &[&str], env: &[(String, String)]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program} (is the Docker engine installed?)"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn inspect(id: &str) -> anyhow::Result<Value> {
    let out = docker("docker", &["inspect", id], &[])?;
    let mut v: Value = serde_json::from_str(&out)?;
    Ok(v[0].take())
}

/// One container and its memory cgroup.
struct Container {
    /// `gateway`, `heart-svc-2`, `single`…
    label: String,
    id: String,
    cgroup: Option<(PathBuf, bool)>,
}

impl Container {
    fn new(label: String, id: String) -> Self {
        let cgroup = cgroup_dir(&id);
        Container { label, id, cgroup }
    }

    /// Starts the peak afresh; whether the kernel let it.
    fn reset_peak(&self) -> bool {
        match &self.cgroup {
            Some((dir, false)) => {
                std::fs::write(dir.join("memory.max_usage_in_bytes"), "0").is_ok()
            }
            Some((dir, true)) => std::fs::write(dir.join("memory.peak"), "1").is_ok(),
            None => false,
        }
    }

    fn read(&self, v1: &str, v2: &str) -> Option<u64> {
        let (dir, is_v2) = self.cgroup.as_ref()?;
        let file = if *is_v2 { v2 } else { v1 };
        std::fs::read_to_string(dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn peak_mb(&self) -> Option<f64> {
        self.read("memory.max_usage_in_bytes", "memory.peak")
            .map(|b| b as f64 / MB)
    }

    fn usage_mb(&self) -> Option<f64> {
        self.read("memory.usage_in_bytes", "memory.current")
            .map(|b| b as f64 / MB)
    }

    fn limit_mb(&self) -> Option<f64> {
        self.read("memory.limit_in_bytes", "memory.max")
            .map(|b| b as f64 / MB)
    }

    /// Peak, usage now, and whether Docker saw it OOM-killed or restarted.
    fn figures(&self) -> ContainerFigures {
        let state = inspect(&self.id).unwrap_or(Value::Null);
        ContainerFigures {
            peak_mb: self.peak_mb(),
            usage_mb: self.usage_mb(),
            running: state["State"]["Running"].as_bool(),
            oom_killed: state["State"]["OOMKilled"].as_bool(),
            restarts: state["RestartCount"].as_u64(),
        }
    }
}

/// The container's memory cgroup: cgroup v1 or v2, cgroupfs or systemd driver.
fn cgroup_dir(id: &str) -> Option<(PathBuf, bool)> {
    [
        (format!("/sys/fs/cgroup/memory/docker/{id}"), false),
        (
            format!("/sys/fs/cgroup/memory/system.slice/docker-{id}.scope"),
            false,
        ),
        (
            format!("/sys/fs/cgroup/system.slice/docker-{id}.scope"),
            true,
        ),
        (format!("/sys/fs/cgroup/docker/{id}"), true),
    ]
    .into_iter()
    .map(|(d, v2)| (PathBuf::from(d), v2))
    .find(|(d, _)| d.is_dir())
}

/// A deployment under test: its containers and the gateway's published address.
struct Deployment {
    name: String,
    containers: Vec<Container>,
    gateway: String,
    key: String,
}

impl Deployment {
    fn figures(&self) -> BTreeMap<String, ContainerFigures> {
        self.containers
            .iter()
            .map(|c| (c.label.clone(), c.figures()))
            .collect()
    }

    fn reset_peaks(&self) -> bool {
        self.containers.iter().all(Container::reset_peak)
    }

    fn target_json(&self, path: &str, body: &Value) -> Target {
        Target::json(format!("{}{path}", self.gateway), body, None).signed_in(&self.key)
    }

    fn target_image(&self, path: &str, file: &[u8]) -> Target {
        Target::image(format!("{}{path}", self.gateway), file, "image/jpeg", None)
            .signed_in(&self.key)
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(free_ports(1)?[0])
}

/// Waits until the gateway answers `/readyz` with a 200.
async fn wait_ready(url: &str, timeout: Duration) -> anyhow::Result<f64> {
    let client = reqwest::Client::new();
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(r) = client
            .get(format!("{url}/readyz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            && r.status().is_success()
        {
            return Ok(start.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("{url}/readyz did not answer 200 within {timeout:?}")
}

/// No per-caller rate limit: one load generator is one caller, and the limit would measure
/// itself.
const NO_RATE_LIMIT: [(&str, &str); 2] = [
    ("GATEWAY__CLIENTS__RATE_PER_SECOND", "1000000"),
    ("GATEWAY__CLIENTS__RATE_BURST", "1000000"),
];

/// The gateway's `clients.keys` setting for the load generator's API key.
fn caller_key(key: &str) -> (String, String) {
    (
        "GATEWAY__CLIENTS__KEYS".into(),
        medchain_tests::key_entry(CALLER, "clinician", key),
    )
}

/// The settings every deployment gets: the load generator's API key and no rate limit.
fn caller_env(key: &str) -> Vec<(String, String)> {
    std::iter::once(caller_key(key))
        .chain(NO_RATE_LIMIT.map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

/// The compose project, started: `docker-compose up -d --no-build --scale heart-svc=3`, with
/// fresh credentials and the gateway published on a free 127.0.0.1 port. The rate limits come
/// in through an override file, as an operator would add settings.
struct Compose {
    project: String,
    env: Vec<(String, String)>,
    files: tempfile::TempDir,
}

impl Compose {
    fn run(&self, more: &[&str]) -> anyhow::Result<String> {
        let override_file = self.files.path().join("bench.yml");
        let mut args = vec![
            "-p",
            self.project.as_str(),
            "-f",
            "docker-compose.yml",
            "-f",
        ];
        let file = override_file
            .to_str()
            .context("a temporary path is not UTF-8")?;
        args.push(file);
        args.extend_from_slice(more);
        docker("docker-compose", &args, &self.env)
    }

    /// Recreates the gateway with keep-alive to the upstreams on or off.
    fn gateway_reusing(&mut self, reuse: bool) -> anyhow::Result<()> {
        self.env.retain(|(k, _)| k != "MEDCHAIN_BENCH_REUSE");
        self.env
            .push(("MEDCHAIN_BENCH_REUSE".into(), reuse.to_string()));
        self.run(&["up", "-d", "--no-build", "--no-deps", "gateway"])?;
        Ok(())
    }

    fn down(&self) {
        if let Err(e) = self.run(&["down", "-v", "--remove-orphans"]) {
            say(&format!("docker-compose down: {e}"));
        }
    }
}

async fn compose_up(project: &str, key: &str) -> anyhow::Result<(Compose, Deployment, f64)> {
    let port = free_port()?;
    let mut env = credentials_as_env(&new_credentials()?);
    env.push(("MEDCHAIN_PUBLISH".into(), format!("127.0.0.1:{port}")));
    env.push(caller_key(key));
    // Compose passes on only the variables the file names: the rest through an override.
    let mut gateway_env: String = NO_RATE_LIMIT
        .iter()
        .map(|(k, v)| format!("      {k}: \"{v}\"\n"))
        .collect();
    gateway_env
        .push_str("      GATEWAY__PROXY__REUSE_CONNECTIONS: \"${MEDCHAIN_BENCH_REUSE:-true}\"\n");
    let files = tempfile::tempdir()?;
    std::fs::write(
        files.path().join("bench.yml"),
        format!("services:\n  gateway:\n    environment:\n{gateway_env}"),
    )?;
    let compose = Compose {
        project: project.to_string(),
        env,
        files,
    };
    compose.down();
    let start = Instant::now();
    compose.run(&["up", "-d", "--no-build", "--scale", "heart-svc=3"])?;
    let gateway = format!("http://127.0.0.1:{port}");
    wait_ready(&gateway, Duration::from_secs(240)).await?;
    let ready_s = start.elapsed().as_secs_f64();
    let mut containers = Vec::new();
    for id in compose.run(&["ps", "-q"])?.lines() {
        let v = inspect(id)?;
        let labels = &v["Config"]["Labels"];
        let service = report_str(&labels["com.docker.compose.service"]);
        let label = if service == "heart-svc" {
            format!(
                "heart-svc-{}",
                report_str(&labels["com.docker.compose.container-number"])
            )
        } else {
            service
        };
        containers.push(Container::new(label, id.to_string()));
    }
    containers.sort_by(|a, b| a.label.cmp(&b.label));
    let dep = Deployment {
        name: "compose".into(),
        containers,
        gateway,
        key: key.to_string(),
    };
    Ok((compose, dep, ready_s))
}

fn report_str(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// The single-instance image alone, as Render's free instance runs it.
async fn single_up(
    image: &str,
    env: &[(&str, &str)],
    key: &str,
) -> anyhow::Result<(Deployment, f64)> {
    let port = free_port()?;
    let publish = format!("127.0.0.1:{port}:8080");
    let mut args: Vec<String> = [
        "run",
        "-d",
        "--memory",
        "512m",
        "--memory-swap",
        "512m",
        "-p",
        &publish,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (k, v) in caller_env(key)
        .into_iter()
        .chain(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    {
        args.push("-e".into());
        args.push(format!("{k}={v}"));
    }
    args.push(image.into());
    let start = Instant::now();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = docker("docker", &argv, &[])?;
    let gateway = format!("http://127.0.0.1:{port}");
    let dep = Deployment {
        name: image.into(),
        containers: vec![Container::new("single".into(), id)],
        gateway,
        key: key.to_string(),
    };
    if let Err(e) = wait_ready(&dep.gateway, Duration::from_secs(240)).await {
        let logs = docker(
            "docker",
            &["logs", "--tail", "40", &dep.containers[0].id],
            &[],
        )
        .unwrap_or_default();
        remove(&dep);
        bail!("{e}; its log ends: {logs}");
    }
    Ok((dep, start.elapsed().as_secs_f64()))
}

fn remove(dep: &Deployment) {
    for c in &dep.containers {
        let _ = docker("docker", &["rm", "-f", &c.id], &[]);
    }
}

/// One phase: every container's peak reset, the load driven, every container's figures read.
async fn phase(dep: &Deployment, name: &str, target: &Target, c: usize, n: usize) -> Phase {
    say(&format!(
        "{}: {name}: {n} requests, {c} concurrent",
        dep.name
    ));
    let reset = dep.reset_peaks();
    let o = drive(target, c, n).await;
    Phase {
        phase: name.into(),
        load: Some(o.figures()),
        peaks_reset: Some(reset),
        containers: dep.figures(),
    }
}

/// The benchmark's phases through the deployment's gateway.
async fn phases(dep: &Deployment, quick: bool) -> anyhow::Result<Vec<Phase>> {
    let mut out = vec![Phase {
        phase: "start-up and idle".into(),
        load: None,
        peaks_reset: None,
        containers: dep.figures(),
    }];
    let records = [
        ("diabetes", inputs::diabetes_record()),
        ("heart", inputs::heart_record()),
    ];
    let images = [("diabetes", "retina"), ("heart", "ecg")];
    for (disease, record) in &records {
        let t = dep.target_json(&format!("/api/v1/{disease}/predict/tabular"), record);
        out.push(
            phase(
                dep,
                &format!("first prediction {disease}/tabular"),
                &t,
                1,
                1,
            )
            .await,
        );
    }
    for (disease, model) in images {
        let t = dep.target_image(
            &format!("/api/v1/{disease}/predict/{model}"),
            &inputs::small_jpeg(model)?,
        );
        let name = format!("first prediction {disease}/{model} 224×224");
        out.push(phase(dep, &name, &t, 1, 1).await);
    }
    let rounds = if quick { 1 } else { 10 };
    for (disease, record) in &records {
        let t = dep.target_json(&format!("/api/v1/{disease}/predict/tabular"), record);
        let name = format!("64 concurrent {disease}/tabular");
        out.push(phase(dep, &name, &t, 64, 64 * rounds).await);
    }
    let mut audited = inputs::diabetes_record();
    audited["patient_id"] = json!("bench-patient-0001");
    let t = dep.target_json("/api/v1/diabetes/predict/tabular", &audited);
    let name = "16 concurrent diabetes/tabular + audit record";
    out.push(phase(dep, name, &t, 16, 16 * rounds).await);
    for (disease, model) in images {
        let large = inputs::large_jpeg(model)?;
        let t = dep.target_image(&format!("/api/v1/{disease}/predict/{model}"), &large);
        let name = format!(
            "16 concurrent {disease}/{model} 3000×2000 JPEGs ({:.1} MB)",
            large.len() as f64 / MB
        );
        out.push(phase(dep, &name, &t, 16, if quick { 16 } else { 48 }).await);
        if !quick {
            let huge = inputs::progressive_40mp(model)?;
            let t = dep.target_image(&format!("/api/v1/{disease}/predict/{model}"), &huge);
            let name = format!(
                "16 concurrent {disease}/{model} 40-MP progressive JPEGs ({:.1} MB)",
                huge.len() as f64 / MB
            );
            out.push(phase(dep, &name, &t, 16, 16).await);
        }
    }
    Ok(out)
}

/// What Docker says of the image a container runs: its name and size.
fn image_of(id: &str) -> Option<ImageInfo> {
    let c = inspect(id).ok()?;
    let size = inspect(&report_str(&c["Image"]))
        .ok()
        .and_then(|i| i["Size"].as_f64());
    Some(ImageInfo {
        image: report_str(&c["Config"]["Image"]),
        size_mib: size.map(|b| b / MB),
    })
}

/// A deployment's run, once its phases are done; `command` and `ecg_model` name it.
fn summary(
    dep: &Deployment,
    ready_s: f64,
    phases: Vec<Phase>,
    command: String,
    ecg_model: Option<&str>,
    page_cache_dropped: bool,
) -> DeploymentRun {
    DeploymentRun {
        deployment: dep.name.clone(),
        command,
        ecg_model: ecg_model.map(str::to_string),
        ready_after_s: ready_s,
        cgroup_version: dep
            .containers
            .first()
            .and_then(|c| c.cgroup.as_ref())
            .map(|(_, v2)| if *v2 { 2 } else { 1 }),
        page_cache_dropped,
        limits_mb: dep
            .containers
            .iter()
            .map(|c| (c.label.clone(), c.limit_mb()))
            .collect(),
        images: dep
            .containers
            .iter()
            .map(|c| (c.label.clone(), image_of(&c.id)))
            .collect(),
        phases,
        end: dep.figures(),
        spread: None,
    }
}

/// Requests each heart-svc instance has served so far (its access log's `served` lines for
/// the tabular route; the services log to stderr).
fn heart_served(dep: &Deployment) -> Vec<(String, usize)> {
    dep.containers
        .iter()
        .filter(|c| c.label.starts_with("heart-svc"))
        .map(|c| {
            let out = Command::new("docker")
                .args(["logs", &c.id])
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout).into_owned()
                        + &String::from_utf8_lossy(&o.stderr)
                })
                .unwrap_or_default();
            let n = out
                .lines()
                .filter(|l| l.contains("\"served\"") && l.contains("/v1/predict/tabular"))
                .count();
            (c.label.clone(), n)
        })
        .collect()
}

/// heart/tabular at c=16 through the gateway to the three heart-svc instances, once with
/// kept-alive connections per resolved address and once with a new connection per request:
/// how many requests each instance served, and the throughput.
async fn spread(
    compose: &mut Compose,
    dep: &Deployment,
    quick: bool,
) -> anyhow::Result<Vec<Spread>> {
    let n = if quick { 160 } else { 4000 };
    let t = dep.target_json("/api/v1/heart/predict/tabular", &inputs::heart_record());
    let mut out = Vec::new();
    for reuse in [true, false] {
        say(&format!(
            "compose: heart/tabular c=16 over three instances, keep-alive {reuse}"
        ));
        compose.gateway_reusing(reuse)?;
        wait_ready(&dep.gateway, Duration::from_secs(120)).await?;
        // The gateway looks the name up every proxy.resolve_secs (5 s): warm up until every
        // instance has been reached, or 20 s.
        let start = Instant::now();
        let before = loop {
            let before = heart_served(dep);
            drive(&t, 16, 64).await;
            let after = heart_served(dep);
            let all = after.iter().zip(&before).all(|((_, a), (_, b))| a > b);
            if all || start.elapsed() > Duration::from_secs(20) {
                break after;
            }
        };
        let o = drive(&t, 16, n).await;
        let after = heart_served(dep);
        out.push(Spread {
            reuse_connections: reuse,
            load: o.figures(),
            served_per_instance: after
                .iter()
                .zip(&before)
                .map(|((name, a), (_, b))| (name.clone(), a - b))
                .collect(),
        });
    }
    compose.gateway_reusing(true)?;
    Ok(out)
}

pub async fn run(args: &Args) -> anyhow::Result<ContainersRun> {
    medchain_core::http::init_tls();
    let header = results::run_header(args, "containers");
    let project = args.project.as_str();
    let key = new_api_key()?;
    let mut runs = Vec::new();

    say("compose: docker-compose up --scale heart-svc=3 (fp32 ECG model)");
    let page_cache_dropped = crate::systembench::drop_page_cache();
    let (mut compose, dep, ready_s) = compose_up(project, &key).await?;
    let command = format!(
        "docker-compose -p {project} -f docker-compose.yml -f <rate limits off> up -d --no-build --scale heart-svc=3"
    );
    let result = phases(&dep, args.quick)
        .await
        .map(|p| summary(&dep, ready_s, p, command, None, page_cache_dropped));
    let spread_v = match &result {
        Ok(_) => spread(&mut compose, &dep, args.quick).await.map(Some),
        Err(_) => Ok(None),
    };
    compose.down();
    let mut compose_run = result?;
    compose_run.spread = spread_v?;
    runs.push(compose_run);

    for (ecg, image, env) in [
        ("int8", format!("{project}/single"), vec![]),
        (
            "fp32",
            format!("{project}/single-fp32"),
            vec![("HEART__MODELS__IMAGE__CARD", "heart/ecg.card.json")],
        ),
    ] {
        say(&format!(
            "single-instance image, {ecg} ECG model, --memory 512m"
        ));
        let page_cache_dropped = crate::systembench::drop_page_cache();
        let (dep, ready_s) = single_up(&image, &env, &key).await?;
        let command = format!(
            "docker run -d --memory 512m --memory-swap 512m -p 127.0.0.1:<port>:8080 {}{image}",
            env.iter()
                .map(|(k, v)| format!("-e {k}={v} "))
                .collect::<String>()
        );
        let result = phases(&dep, args.quick)
            .await
            .map(|p| summary(&dep, ready_s, p, command, Some(ecg), page_cache_dropped));
        remove(&dep);
        runs.push(result?);
    }
    Ok(ContainersRun {
        header,
        engine: Engine {
            docker: docker(
                "docker",
                &["version", "--format", "{{.Server.Version}}"],
                &[],
            )
            .ok(),
            compose: docker("docker-compose", &["version", "--short"], &[]).ok(),
        },
        runs,
    })
}
