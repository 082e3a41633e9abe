//! The whole system as processes: the four service binaries started on free loopback ports
//! exactly as `scripts/run.sh` starts them (embedded defaults; only ports, data dir, a random
//! credential per pair of services and the gateway's per-client rate limit are set, plus what the caller adds), each
//! optionally in its own memory cgroup or all four in one (as in the single-instance image),
//! and their memory read from `/proc`. Used by the
//! benchmark command and by whole-system tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub use crate::net::{consecutive_free_ports, free_ports};
use medchain_core::auth::{CALLS, Peer, SERVICES, credentials_env};
use medchain_core::memory;

/// Start order: the chain first (the disease services record to it), the gateway last.
pub const NAMES: [&str; 4] = ["chain-svc", "diabetes-svc", "heart-svc", "gateway"];

/// Where the services' memory is charged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cgroups {
    /// Nowhere special: the caller's cgroup.
    None,
    /// Each service in its own memory cgroup with this limit (bytes): one container each.
    EachIn(u64),
    /// All four (and chain-svc's anvil) in one memory cgroup with this limit (bytes): the
    /// single-instance image.
    AllIn(u64),
    /// Each service on an instance of its own: a memory limit and a CPU quota.
    Instance(Instance),
}

/// A platform instance: memory limit and CPU quota.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Instance {
    pub name: &'static str,
    pub memory_bytes: u64,
    /// CPUs' worth of time per period (0.1 = 10 ms in every 100 ms).
    pub cpus: f64,
}

/// Render's free instance: 512 MB, 0.1 CPU.
pub const RENDER_FREE: Instance = Instance {
    name: "render-free",
    memory_bytes: 512 << 20,
    cpus: 0.1,
};

/// Render's starter instance: 512 MB, 0.5 CPU.
pub const RENDER_STARTER: Instance = Instance {
    name: "render-starter",
    memory_bytes: 512 << 20,
    cpus: 0.5,
};

/// One running service.
#[derive(Debug)]
pub struct Service {
    pub name: &'static str,
    pub port: u16,
    pub pid: u32,
    child: Child,
    /// The memory cgroup it runs in, if one was made (shared by all four with
    /// [`Cgroups::AllIn`]).
    pub cgroup: Option<Arc<Cgroup>>,
    /// Spawn → first `/healthz` 200, and → first `/readyz` 200, ms.
    pub healthy_ms: f64,
    pub ready_ms: f64,
}

impl Service {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// The peer a service of [`NAMES`] is.
pub fn service_peer(name: &str) -> Peer {
    match name {
        "diabetes-svc" => Peer::Diabetes,
        "heart-svc" => Peer::Heart,
        "chain-svc" => Peer::Chain,
        _ => Peer::Gateway,
    }
}

/// A fresh random credential for every pair of services that talk, and the monitor's for
/// each service (as `gateway new-credentials` makes them).
pub fn new_credentials() -> anyhow::Result<Vec<((Peer, Peer), String)>> {
    let mut raw = [0u8; 24];
    let mut credentials = Vec::new();
    for (from, to) in CALLS
        .into_iter()
        .chain(SERVICES.into_iter().map(|s| (Peer::Monitor, s)))
    {
        getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        credentials.push(((from, to), hex::encode(raw)));
    }
    Ok(credentials)
}

/// A fresh random API key (`mk_…`).
pub fn new_api_key() -> anyhow::Result<String> {
    let mut raw = [0u8; 24];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(format!("mk_{}", hex::encode(raw)))
}

/// The settings (environment variables) that give each service its side of `credentials`.
pub fn credentials_as_env(credentials: &[((Peer, Peer), String)]) -> Vec<(String, String)> {
    credentials_env(|from, to| {
        credentials
            .iter()
            .find(|(pair, _)| *pair == (from, to))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    })
}

/// The whole system.
#[derive(Debug)]
pub struct System {
    pub services: Vec<Service>,
    /// This run's random credential of each (caller, callee) pair, the monitor's included.
    credentials: Vec<((Peer, Peer), String)>,
    /// A clinician's API key for the gateway (`clients.keys` holds its hash).
    pub api_key: String,
    /// The settings given to every process, as `NAME=value` (the token masked).
    pub env: Vec<String>,
    data: tempfile::TempDir,
}

/// What a process' allocator holds, MB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Heap {
    pub in_use_mb: f64,
    pub free_mb: f64,
}

/// The heap gauges from a Prometheus exposition, whatever the service's prefix.
pub fn parse_heap(exposition: &str) -> Option<Heap> {
    let gauge = |suffix: &str| line_value::<f64>(exposition, |name| name.ends_with(suffix));
    Some(Heap {
        in_use_mb: gauge("_process_heap_in_use_bytes")? / MB,
        free_mb: gauge("_process_heap_free_bytes")? / MB,
    })
}

const MB: f64 = 1024.0 * 1024.0;

/// Memory of one process, MB.
#[derive(Debug, Clone, Copy)]
pub struct Mem {
    pub rss_mb: f64,
    pub hwm_mb: f64,
}

/// Every process' settings for a run on `port`s: where each listens and finds the others, the
/// data dir, and the caller the harness signs in as (`api_key`; its hash, nothing secret).
fn system_env(port: &dyn Fn(&str) -> u16, api_key: &str, data: &Path) -> Vec<(String, String)> {
    let url = |name: &str| format!("http://127.0.0.1:{}", port(name));
    vec![
        ("GATEWAY__SERVER__PORT".into(), port("gateway").to_string()),
        (
            "DIABETES__SERVER__PORT".into(),
            port("diabetes-svc").to_string(),
        ),
        ("HEART__SERVER__PORT".into(), port("heart-svc").to_string()),
        ("CHAIN__SERVER__PORT".into(), port("chain-svc").to_string()),
        ("GATEWAY__UPSTREAMS__DIABETES".into(), url("diabetes-svc")),
        ("GATEWAY__UPSTREAMS__HEART".into(), url("heart-svc")),
        ("GATEWAY__UPSTREAMS__CHAIN".into(), url("chain-svc")),
        ("DIABETES__CHAIN__URL".into(), url("chain-svc")),
        ("HEART__CHAIN__URL".into(), url("chain-svc")),
        // One load generator is one client: the per-client limit would measure itself.
        ("GATEWAY__CLIENTS__RATE_PER_SECOND".into(), "1000000".into()),
        ("GATEWAY__CLIENTS__RATE_BURST".into(), "1000000".into()),
        (
            "GATEWAY__CLIENTS__KEYS".into(),
            crate::key_entry("system-test", "clinician", api_key),
        ),
        ("MEDCHAIN_DATA_DIR".into(), data.display().to_string()),
    ]
}

impl Service {
    /// Starts `name` from `bin_dir` on `port` (inside `cgroup`, if any) with `env`, logging
    /// to `log`, and waits until it is healthy and then ready.
    async fn spawn(
        name: &'static str,
        bin_dir: &Path,
        port: u16,
        cgroup: Option<Arc<Cgroup>>,
        env: &[(String, String)],
        log: fs::File,
    ) -> anyhow::Result<Service> {
        let bin = bin_dir.join(name);
        if !bin.is_file() {
            bail!("{} is missing: build it first", bin.display());
        }
        let mut cmd = match &cgroup {
            // The shell joins the cgroup, then becomes the service: every byte the service
            // ever maps is charged to the cgroup.
            Some(cg) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg("for f in \"$@\"; do echo $$ > \"$f\" || exit 1; done; exec \"$0\"")
                    .arg(&bin)
                    .args(cg.procs_files());
                c
            }
            None => Command::new(&bin),
        };
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut svc = Service {
            name,
            port,
            pid: child.id(),
            child,
            cgroup,
            healthy_ms: 0.0,
            ready_ms: 0.0,
        };
        let client = reqwest::Client::new();
        let url = svc.url();
        let healthz = format!("{url}/healthz");
        svc.healthy_ms = wait_ok(&client, &healthz, &mut svc.child, name, started).await?;
        let readyz = format!("{url}/readyz");
        svc.ready_ms = wait_ok(&client, &readyz, &mut svc.child, name, started).await?;
        Ok(svc)
    }
}

impl System {
    /// Starts the four services from `bin_dir`, one after the other, each waited for until
    /// ready, each logging to `logs/<name>.log`, their memory charged as `cgroups` says.
    /// `extra_env`: more settings for every process (shown
    /// in [`System::env`] unless `secret`).
    pub async fn start(
        bin_dir: &Path,
        logs: &Path,
        cgroups: Cgroups,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        medchain_core::http::init_tls();
        let data = tempfile::tempdir()?;
        let credentials = new_credentials()?;
        let api_key = new_api_key()?;
        let ports = free_ports(4)?;
        let port = |name: &str| ports[NAMES.iter().position(|n| *n == name).unwrap_or(0)];
        let mut env = system_env(&port, &api_key, data.path());
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let secret_env = credentials_as_env(&credentials);
        let shown = env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .chain(
                secret_env
                    .iter()
                    .map(|(k, _)| format!("{k}=<random per run>")),
            )
            .collect();
        env.extend(secret_env);
        fs::create_dir_all(logs)?;
        let mut system = System {
            services: Vec::new(),
            credentials,
            api_key,
            env: shown,
            data,
        };
        let make = |name: &str, limit: u64, cpus: Option<f64>| {
            Cgroup::create(name, limit, cpus)
                .map(Arc::new)
                .map_err(anyhow::Error::msg)
        };
        let all = match cgroups {
            Cgroups::AllIn(limit) => Some(make("all", limit, None)?),
            _ => None,
        };
        for name in NAMES {
            let cgroup = match cgroups {
                Cgroups::EachIn(limit) => Some(make(name, limit, None)?),
                Cgroups::Instance(i) => Some(make(name, i.memory_bytes, Some(i.cpus))?),
                Cgroups::AllIn(_) => all.clone(),
                Cgroups::None => None,
            };
            let log = fs::File::create(logs.join(format!("{name}.log")))?;
            let svc = Service::spawn(name, bin_dir, port(name), cgroup, &env, log).await?;
            system.services.push(svc);
        }
        Ok(system)
    }

    /// The credential `from` presents to `to` in this run.
    pub fn credential(&self, from: Peer, to: Peer) -> &str {
        self.credentials
            .iter()
            .find(|(pair, _)| *pair == (from, to))
            .map_or("", |(_, v)| v.as_str())
    }

    /// Every credential of this run (to check that none is logged).
    pub fn credentials(&self) -> impl Iterator<Item = &str> {
        self.credentials.iter().map(|(_, v)| v.as_str())
    }

    /// The services' data dir (chain-svc's outbox, the embedded chain, development keys).
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// A client of the gateway's public API (`/api/v1`), signed in as the harness' clinician.
    pub fn gateway_api(&self) -> crate::TestApp {
        crate::TestApp {
            address: format!("{}/api/v1", self.get("gateway").url()),
            client: self.signed_in_client(),
            token: None,
            monitor: None,
        }
    }

    /// A client that sends the harness' API key with every request.
    pub fn signed_in_client(&self) -> reqwest::Client {
        crate::signed_in_client(&self.api_key)
    }

    pub fn get(&self, name: &str) -> &Service {
        self.services
            .iter()
            .find(|s| s.name == name)
            .expect("one of NAMES")
    }

    /// VmRSS and VmHWM of every service (and of chain-svc's anvil child), by name.
    pub fn memory(&self) -> Vec<(String, Mem)> {
        let mut out = Vec::new();
        for s in &self.services {
            if let Some(m) = mem(s.pid) {
                out.push((s.name.to_string(), m));
            }
            if s.name == "chain-svc" {
                for child in children(s.pid) {
                    if let Some(m) = mem(child) {
                        out.push(("anvil (chain-svc's child)".to_string(), m));
                    }
                }
            }
        }
        out
    }

    /// Every service's CPU time so far (user + system, all its threads), seconds.
    pub fn cpu(&self) -> Vec<(String, f64)> {
        self.services
            .iter()
            .filter_map(|s| Some((s.name.to_string(), cpu_seconds(s.pid)?)))
            .collect()
    }

    /// Resets every process' VmHWM to its current RSS (`/proc/<pid>/clear_refs` = 5), so the
    /// next reading is the peak of what happens in between. False where the kernel refuses.
    pub fn reset_peaks(&self) -> bool {
        let mut ok = true;
        for s in &self.services {
            let mut pids = vec![s.pid];
            pids.extend(children(s.pid));
            for pid in pids {
                ok &= fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
            }
        }
        ok
    }

    /// Each service's allocator figures (`process_heap_in_use_bytes` and
    /// `process_heap_free_bytes` from its `/metrics`), MB; `None` where they cannot be read.
    pub async fn heap(&self) -> Vec<(String, Option<Heap>)> {
        let client = reqwest::Client::new();
        let mut out = Vec::new();
        for s in &self.services {
            let text = match client
                .get(format!("{}/metrics", s.url()))
                .header(
                    medchain_core::auth::INTERNAL_TOKEN_HEADER,
                    self.credential(Peer::Monitor, service_peer(s.name)),
                )
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => r.text().await.ok(),
                _ => None,
            };
            out.push((s.name.to_string(), text.as_deref().and_then(parse_heap)));
        }
        out
    }

    /// Open file descriptors per service.
    pub fn fds(&self) -> Vec<(String, usize)> {
        self.services
            .iter()
            .map(|s| {
                let n = fs::read_dir(format!("/proc/{}/fd", s.pid)).map_or(0, |d| d.count());
                (s.name.to_string(), n)
            })
            .collect()
    }

    /// Services that have exited, with their exit status.
    pub fn exited(&mut self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for s in &mut self.services {
            if let Ok(Some(status)) = s.child.try_wait() {
                out.push((s.name.to_string(), status.to_string()));
            }
        }
        out
    }

    /// Stops everything: SIGTERM in reverse start order, SIGKILL after 15 s.
    pub fn stop(&mut self) {
        for s in self.services.iter_mut().rev() {
            terminate(&mut s.child, s.pid);
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGTERM to `child` (whose pid is `pid`), SIGKILL if it has not ended within 15 s.
pub fn terminate(child: &mut Child, pid: u32) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Polls `url` until it answers 2xx (within 120 s of `started`), failing as soon as `child`
/// (named `name` in errors) exits; returns the ms since `started`.
pub async fn wait_ok(
    client: &reqwest::Client,
    url: &str,
    child: &mut Child,
    name: &str,
    started: Instant,
) -> anyhow::Result<f64> {
    let deadline = started + Duration::from_secs(120);
    loop {
        if let Ok(r) = client.get(url).timeout(Duration::from_secs(2)).send().await
            && r.status().is_success()
        {
            return Ok(started.elapsed().as_secs_f64() * 1e3);
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{name} exited during start-up ({status}); see its log");
        }
        if Instant::now() > deadline {
            bail!("{name} did not answer {url} with 200 within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Where the test build put the service binaries: the folder above this test executable's
/// `deps/`.
pub fn debug_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The CPU time a process has used, user + system, all its threads (those that have exited
/// too), seconds: `/proc/<pid>/stat`'s utime and stime, in clock ticks (1/100 s here: a run
/// must use a second or more of CPU for a figure good to 1%).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses (which may hold spaces): state is field 3, utime
    // and stime fields 14 and 15.
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 where it cannot be asked).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// VmRSS / VmHWM of a process.
pub fn mem(pid: u32) -> Option<Mem> {
    let (rss, hwm) = memory::resident(pid)?;
    Some(Mem {
        rss_mb: rss as f64 / MB,
        hwm_mb: hwm as f64 / MB,
    })
}

/// The pids of a process' direct children (started from any of its threads).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// A memory cgroup made for one service (v1 `memory` hierarchy or v2 unified), with a CPU
/// quota when asked (v1: a cgroup of the same name in the `cpu` hierarchy; v2: `cpu.max`).
#[derive(Debug)]
pub struct Cgroup {
    dir: PathBuf,
    v2: bool,
    /// v1's cgroup in the `cpu` hierarchy.
    cpu_dir: Option<PathBuf>,
    cpus: Option<f64>,
}

const V1_ROOT: &str = "/sys/fs/cgroup/memory";
const V1_CPU_ROOT: &str = "/sys/fs/cgroup/cpu";
const V2_ROOT: &str = "/sys/fs/cgroup";
/// The CPU quota's period, µs (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

impl Cgroup {
    /// Whether this process may create memory cgroups here; the reason when not.
    pub fn probe() -> Result<(), String> {
        let cg = Cgroup::create("probe", 64 << 20, None)?;
        drop(cg);
        Ok(())
    }

    /// Whether this process may create memory cgroups with a CPU quota here.
    pub fn probe_cpu() -> Result<(), String> {
        let cg = Cgroup::create("probe-cpu", 64 << 20, Some(0.5))?;
        drop(cg);
        Ok(())
    }

    fn create(name: &str, limit: u64, cpus: Option<f64>) -> Result<Self, String> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let leaf = format!("medchain-bench-{}-{n}-{name}", std::process::id());
        let v2 = fs::read_to_string(format!("{V2_ROOT}/cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"));
        let (dir, limit_file) = if v2 {
            let controllers = if cpus.is_some() {
                "+memory +cpu"
            } else {
                "+memory"
            };
            let _ = fs::write(format!("{V2_ROOT}/cgroup.subtree_control"), controllers);
            (Path::new(V2_ROOT).join(&leaf), "memory.max")
        } else if Path::new(V1_ROOT).join("memory.limit_in_bytes").exists() {
            (Path::new(V1_ROOT).join(&leaf), "memory.limit_in_bytes")
        } else {
            return Err("no memory cgroup controller is mounted".into());
        };
        fs::create_dir(&dir)
            .map_err(|e| format!("cannot create the cgroup {}: {e}", dir.display()))?;
        let mut cg = Cgroup {
            dir,
            v2,
            cpu_dir: None,
            cpus,
        };
        fs::write(cg.dir.join(limit_file), limit.to_string())
            .map_err(|e| format!("cannot set {limit_file}: {e}"))?;
        if let Some(cpus) = cpus {
            let quota = ((cpus * CPU_PERIOD_US as f64) as u64).max(1000);
            if v2 {
                fs::write(cg.dir.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"))
                    .map_err(|e| format!("cannot set cpu.max: {e}"))?;
            } else {
                let dir = Path::new(V1_CPU_ROOT).join(&leaf);
                fs::create_dir(&dir)
                    .map_err(|e| format!("cannot create the cpu cgroup {}: {e}", dir.display()))?;
                cg.cpu_dir = Some(dir.clone());
                fs::write(dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())
                    .and_then(|()| fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string()))
                    .map_err(|e| format!("cannot set the CPU quota: {e}"))?;
            }
        }
        Ok(cg)
    }

    fn procs_files(&self) -> Vec<PathBuf> {
        std::iter::once(&self.dir)
            .chain(&self.cpu_dir)
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// Starts the peak usage afresh (v1 `memory.max_usage_in_bytes`, v2 `memory.peak` where
    /// the kernel lets it be reset). Whether it could.
    pub fn reset_peak(&self) -> bool {
        if self.v2 {
            fs::write(self.dir.join("memory.peak"), "1").is_ok()
        } else {
            fs::write(self.dir.join("memory.max_usage_in_bytes"), "0").is_ok()
        }
    }

    /// How long the cgroup's processes were held back by its CPU quota, seconds (`None`
    /// without a quota).
    pub fn cpu_throttled_seconds(&self) -> Option<f64> {
        self.cpus?;
        let dir = self.cpu_dir.as_ref().unwrap_or(&self.dir);
        let stat = fs::read_to_string(dir.join("cpu.stat")).ok()?;
        Some(if self.v2 {
            memory::line_value(&stat, "throttled_usec")? as f64 / 1e6
        } else {
            memory::line_value(&stat, "throttled_time")? as f64 / 1e9
        })
    }

    /// Peak usage charged to the cgroup (includes page cache, as a container's does), the
    /// limit, and how many times the kernel's OOM killer ran in it.
    pub fn stats(&self) -> CgroupStats {
        let read = |f: &str| fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let num = |f: &str| read(f).trim().parse::<u64>().ok();
        let oom_kills = if self.v2 {
            memory::line_value(&read("memory.events"), "oom_kill")
        } else {
            memory::line_value(&read("memory.oom_control"), "oom_kill")
        };
        let (limit, peak) = if self.v2 {
            (num("memory.max"), num("memory.peak"))
        } else {
            (
                num("memory.limit_in_bytes"),
                num("memory.max_usage_in_bytes"),
            )
        };
        CgroupStats {
            cgroup: self.dir.display().to_string(),
            version: if self.v2 { 2 } else { 1 },
            cpus: self.cpus,
            limit_mb: limit.map(|b| b as f64 / MB),
            peak_usage_mb: peak.map(|b| b as f64 / MB),
            oom_kills,
        }
    }
}

/// What [`Cgroup::stats`] read: the figures a benchmark records per cgroup.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CgroupStats {
    /// The cgroup's directory.
    pub cgroup: String,
    /// 1 or 2.
    pub version: u8,
    /// The CPU quota, CPUs (`None`: no quota).
    pub cpus: Option<f64>,
    pub limit_mb: Option<f64>,
    /// Peak usage, page cache included.
    pub peak_usage_mb: Option<f64>,
    pub oom_kills: Option<u64>,
}

/// The value of the first `name value` line whose name matches (cgroup files, Prometheus).
fn line_value<T: std::str::FromStr>(text: &str, matches: impl Fn(&str) -> bool) -> Option<T> {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| matches(k))
        .and_then(|(_, v)| v.trim().parse().ok())
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty once its processes have exited; retried briefly while they finish.
        for dir in std::iter::once(&self.dir).chain(&self.cpu_dir) {
            for _ in 0..50 {
                if fs::remove_dir(dir).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_oom_kill_counters() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(memory::line_value(v1, "oom_kill"), Some(3));
        let v2 = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(memory::line_value(v2, "oom_kill"), Some(1));
        assert_eq!(memory::line_value(v2, "absent"), None);
    }

    #[test]
    fn reads_own_memory() {
        let m = mem(std::process::id()).expect("/proc/self/status");
        assert!(m.rss_mb > 0.0 && m.hwm_mb >= m.rss_mb);
        // CPU this process spends shows (a clock tick at a time), however busy the machine.
        let before = cpu_seconds(std::process::id()).expect("cpu");
        let start = Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after <= before && start.elapsed() < Duration::from_secs(60) {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            after = cpu_seconds(std::process::id()).expect("cpu");
        }
        assert!(after > before, "{before} → {after}");
    }
}
