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
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    MemoryFigures {
        rss_bytes: status_kib(&status, "VmRSS:") * 1024,
        peak_rss_bytes: status_kib(&status, "VmHWM:") * 1024,
        cgroup_limit_bytes: cgroup_limit(),
    }
}

/// Current RSS in bytes.
pub fn rss_bytes() -> u64 {
    read().rss_bytes
}

fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// cgroup v2 `memory.max`, else cgroup v1 `memory.limit_in_bytes`; "max" or an absurd v1
/// value (no limit) read as `None`.
pub fn cgroup_limit() -> Option<u64> {
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok();
    let v1 = || std::fs::read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes").ok();
    parse_limit(&v2.or_else(v1)?)
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
    fn parses_status_lines() {
        let s = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kib(s, "VmRSS:"), 1024);
        assert_eq!(status_kib(s, "VmHWM:"), 2048);
        assert_eq!(status_kib(s, "VmSwap:"), 0);
    }
}
