//! Process memory figures from `/proc` and the cgroup memory limit, for the memory guard,
//! `/models` and the metrics an operator of a 512 MB box watches.

use serde::Serialize;

/// Current and peak resident memory of this process, and the limit it runs under.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MemoryFigures {
    /// `VmRSS`, bytes.
    pub rss_bytes: u64,
    /// `VmHWM` (peak RSS since start), bytes.
    pub peak_rss_bytes: u64,
    /// The cgroup's memory limit, when one is set.
    pub cgroup_limit_bytes: Option<u64>,
}

/// Reads the figures now. Missing files (not Linux, no cgroup) read as 0 / `None`.
pub fn read() -> MemoryFigures {
    let (rss_bytes, peak_rss_bytes) = resident("self").unwrap_or_default();
    MemoryFigures {
        rss_bytes,
        peak_rss_bytes,
        cgroup_limit_bytes: cgroup_limit(),
    }
}

/// Current RSS in bytes.
pub fn rss_bytes() -> u64 {
    resident("self").map_or(0, |(rss, _)| rss)
}

/// `VmRSS` and `VmHWM` in bytes of a process (`"self"` or a pid), or `None` if it is gone.
pub fn resident(pid: impl std::fmt::Display) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((
        status_kib(&status, "VmRSS:") * 1024,
        status_kib(&status, "VmHWM:") * 1024,
    ))
}

fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The tightest memory limit of this process' cgroups: its own cgroup's (from
/// `/proc/self/cgroup`: v2 `memory.max`, v1 `memory.limit_in_bytes`) and the mount root's (a
/// container's own cgroup, when its path is not visible inside it). "max" or an absurd v1
/// value (no limit) count as none.
pub fn cgroup_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    limit_from(&own, |p| std::fs::read_to_string(p).ok())
}

fn limit_from(proc_cgroup: &str, read: impl Fn(&str) -> Option<String>) -> Option<u64> {
    let mut files = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = path.trim_end_matches('/');
        if controllers.is_empty() {
            files.push(format!("/sys/fs/cgroup{path}/memory.max"));
        } else if controllers.split(',').any(|c| c == "memory") {
            files.push(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"));
        }
    }
    files.push("/sys/fs/cgroup/memory.max".into());
    files.push("/sys/fs/cgroup/memory/memory.limit_in_bytes".into());
    files
        .iter()
        .filter_map(|f| read(f))
        .filter_map(|raw| parse_limit(&raw))
        .min()
}

fn parse_limit(raw: &str) -> Option<u64> {
    let v: u64 = raw.trim().parse().ok()?;
    // cgroup v1 reports "no limit" as a page-rounded i64::MAX.
    (v < (1 << 60)).then_some(v)
}

/// Asks the allocator to hand freed memory back to the kernel (after a model unloads), so
/// that RSS actually goes down. glibc keeps freed arenas otherwise.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks glibc's own heap structures; 0 = keep no padding.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Caps glibc's malloc arenas (unless `MALLOC_ARENA_MAX` is set): with one arena per thread
/// that ever allocated, activations freed by inference on many blocking threads stay cached
/// in many arenas and RSS grows with concurrency. Measured in the README (`bench_service.py`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn limit_malloc_arenas(arenas: i32) {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: mallopt only sets a glibc tunable; M_ARENA_MAX (-8) takes a positive count.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

/// No-op where the allocator has no such tunable.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_malloc_arenas(_arenas: i32) {}

/// No-op where the allocator has no trim call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_rss() {
        let m = read();
        assert!(m.rss_bytes > 1024 * 1024, "{m:?}");
        assert!(m.peak_rss_bytes >= m.rss_bytes, "{m:?}");
    }

    #[test]
    fn parses_cgroup_limits() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("536870912\n"), Some(536_870_912));
        assert_eq!(parse_limit("9223372036854771712"), None);
    }

    #[test]
    fn finds_the_limit_of_its_own_cgroup() {
        let files = |entries: &'static [(&'static str, &'static str)]| {
            move |p: &str| {
                entries
                    .iter()
                    .find(|(f, _)| *f == p)
                    .map(|(_, v)| v.to_string())
            }
        };
        // cgroup v1, nested: the own cgroup's limit, not the unlimited root's.
        let v1 = "5:devices:/\n4:memory:/bench/heart-svc\n1:cpu:/\n0::/\n";
        let read = files(&[
            (
                "/sys/fs/cgroup/memory/bench/heart-svc/memory.limit_in_bytes",
                "536870912\n",
            ),
            (
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
        ]);
        assert_eq!(limit_from(v1, read), Some(512 << 20));
        // cgroup v2 inside a container: its path is not visible, the mount root is its own.
        let v2 = "0::/system.slice/docker-abc.scope\n";
        let read = files(&[("/sys/fs/cgroup/memory.max", "268435456\n")]);
        assert_eq!(limit_from(v2, read), Some(256 << 20));
        // Both visible: the tighter one.
        let read = files(&[
            (
                "/sys/fs/cgroup/system.slice/docker-abc.scope/memory.max",
                "max\n",
            ),
            ("/sys/fs/cgroup/memory.max", "1073741824\n"),
        ]);
        assert_eq!(limit_from(v2, read), Some(1 << 30));
        assert_eq!(limit_from("", |_| None), None);
    }

    #[test]
    fn parses_status_lines() {
        let s = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kib(s, "VmRSS:"), 1024);
        assert_eq!(status_kib(s, "VmHWM:"), 2048);
        assert_eq!(status_kib(s, "VmSwap:"), 0);
    }
}
