//! The results files: the header every run starts with (date, commit, machine, versions,
//! command) and writing them. Each run's own record type lives with its command; the report
//! reads them back.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Args;

fn cmd(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(crate::repo_root())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn proc_field(file: &str, key: &str) -> Option<String> {
    std::fs::read_to_string(file).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// Where and how a run was made: every results file starts with it (its fields at the top
/// level of the file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    /// `system`, `chain`, `containers`, `soak`, `decode`.
    pub kind: String,
    pub quick: bool,
    pub date_utc: Option<String>,
    pub commit: Option<String>,
    pub worktree_dirty: bool,
    /// The command line as typed.
    pub command: String,
    /// `release`, or `debug (not for publication)`.
    pub build: String,
    pub machine: Machine,
    pub versions: Versions,
    pub note: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: Option<String>,
    pub cpus_available: usize,
    pub memory: Option<String>,
    pub kernel: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Versions {
    pub rustc: Option<String>,
    pub medchain: String,
    pub onnxruntime: String,
}

/// Date, commit, machine and versions of a run of `kind`.
pub fn run_header(args: &Args, kind: &str) -> Header {
    let dirty = cmd("git", &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    Header {
        kind: kind.into(),
        quick: args.quick,
        date_utc: cmd("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        commit: cmd("git", &["rev-parse", "--short=12", "HEAD"]),
        worktree_dirty: dirty,
        command: args.argv.clone(),
        build: if cfg!(debug_assertions) {
            "debug (not for publication)"
        } else {
            "release"
        }
        .into(),
        machine: Machine {
            cpu: proc_field("/proc/cpuinfo", "model name"),
            cpus_available: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory: proc_field("/proc/meminfo", "MemTotal"),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_string()),
        },
        versions: Versions {
            rustc: cmd("rustc", &["-V"]),
            medchain: env!("CARGO_PKG_VERSION").into(),
            onnxruntime: medchain_serving::runtime::ORT_VERSION.into(),
        },
        note: "the load generator runs on the same machine as the services and shares its CPUs"
            .into(),
    }
}

pub fn write_json(path: &Path, v: &Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(v)? + "\n")?;
    println!("wrote {}", path.display());
    Ok(())
}
