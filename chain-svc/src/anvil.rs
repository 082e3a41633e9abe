//! The embedded default chain: a local anvil child process (installed by `scripts/setup.sh`
//! from npm), its state persisted in the data dir, stopped with the service.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running anvil; killed when dropped.
#[derive(Debug)]
pub struct Anvil {
    child: Child,
    port: u16,
    /// Names the running child, so that a restart after `kill -9` of its parent can stop the
    /// orphan (which still holds the state file) before starting a new one.
    pid_file: PathBuf,
}

/// Stops an anvil left running by an earlier process that died without stopping it.
fn reap_stale(pid_file: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
    else {
        return;
    };
    let is_anvil = std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("anvil"));
    if is_anvil {
        tracing::warn!(pid, "stopping an orphaned anvil from an earlier run");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5)
            && std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
    }
    let _ = std::fs::remove_file(pid_file);
}

impl Anvil {
    /// anvil's binary: `MEDCHAIN_ANVIL`, else the workspace's `.tools` copy, else `anvil` on
    /// the PATH.
    pub fn binary(configured: &str) -> PathBuf {
        if !configured.is_empty() {
            return PathBuf::from(configured);
        }
        if let Some(p) = std::env::var_os("MEDCHAIN_ANVIL").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        let dev = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../.tools/node/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
        ));
        if dev.exists() {
            dev
        } else {
            PathBuf::from("anvil")
        }
    }

    /// Starts anvil on a free loopback port, loading and saving its state in `state_dir`.
    pub fn start(binary: &Path, state_dir: &Path, chain_id: u64) -> std::io::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Self::start_on(binary, state_dir, chain_id, port)
    }

    /// Starts anvil on `port` (e.g. the port of an earlier run, so clients reconnect).
    pub fn start_on(
        binary: &Path,
        state_dir: &Path,
        chain_id: u64,
        port: u16,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(state_dir)?;
        let pid_file = state_dir.join("anvil.pid");
        reap_stale(&pid_file);
        let child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--chain-id", &chain_id.to_string()])
            .arg("--state")
            .arg(state_dir.join("anvil-state.json"))
            .args(["--state-interval", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot start anvil ({}): {e}", binary.display()),
                )
            })?;
        std::fs::write(&pid_file, child.id().to_string())?;
        let mut anvil = Self {
            child,
            port,
            pid_file,
        };
        anvil.wait_ready(Duration::from_secs(20))?;
        Ok(anvil)
    }

    fn wait_ready(&mut self, limit: Duration) -> std::io::Result<()> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait()? {
                return Err(std::io::Error::other(format!("anvil exited: {status}")));
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(std::io::Error::other("anvil did not open its port in time"))
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether it has exited (and how), without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Its JSON-RPC URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops it, letting it write its state first.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let pid = self.child.id();
        // SIGTERM so anvil dumps its state; kill if it does not go.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_file(&self.pid_file);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// Watches an embedded anvil and starts it again — same port, same state file — when it exits
/// while chain-svc runs (a crash, an OOM kill, `kill -9`), then calls `restarted` (the sender
/// reconciles: anvil comes back from the state it saved up to a second before).
pub async fn supervise(
    anvil: std::sync::Arc<std::sync::Mutex<Option<Anvil>>>,
    binary: PathBuf,
    state_dir: PathBuf,
    chain_id: u64,
    restarted: impl Fn() + Send + 'static,
) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let gone = {
            let mut guard = anvil
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match guard.as_mut() {
                None => return, // stopped with the service
                Some(a) => a.exited().map(|status| (status, a.port)),
            }
        };
        let Some((status, port)) = gone else {
            continue;
        };
        tracing::error!(%status, port, "the embedded anvil exited; starting it again");
        metrics::counter!(medchain_core::metrics::name("anvil_restarts_total")).increment(1);
        let (bin, dir) = (binary.clone(), state_dir.clone());
        match tokio::task::spawn_blocking(move || Anvil::start_on(&bin, &dir, chain_id, port)).await
        {
            Ok(Ok(new)) => {
                let mut guard = anvil
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if guard.is_none() {
                    return; // stopped meanwhile; `new` stops as it drops
                }
                *guard = Some(new);
                drop(guard);
                tracing::info!(port, "embedded anvil started again");
                restarted();
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the embedded anvil did not start; will retry")
            }
            Err(e) => tracing::error!(error = %e, "anvil restart task failed; will retry"),
        }
    }
}
