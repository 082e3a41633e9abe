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
    tightest(&own, |p| std::fs::read_to_string(p).ok()).map(|(limit, ..)| limit)
}

/// The memory cgroup whose limit applies to this process: that limit, and what the cgroup as
/// a whole has in use — every process in it, which matters when several services share one
/// container (the single-instance image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupMemory {
    /// The cgroup's limit, bytes.
    pub limit_bytes: u64,
    /// Its working set (usage less inactive file cache, as `docker stats` and the kubelet
    /// count it), bytes; `None` when the usage files cannot be read.
    pub working_set_bytes: Option<u64>,
}

/// Reads the tightest memory cgroup's limit and working set now; `None` without a limit.
pub fn cgroup_memory() -> Option<CgroupMemory> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    cgroup_from(&own, |p| std::fs::read_to_string(p).ok())
}

fn cgroup_from(proc_cgroup: &str, read: impl Fn(&str) -> Option<String>) -> Option<CgroupMemory> {
    let (limit_bytes, dir, version) = tightest(proc_cgroup, &read)?;
    let (_, usage_file, inactive_key) = version.files();
    let working_set_bytes = read(&format!("{dir}/{usage_file}"))
        .and_then(|u| u.trim().parse::<u64>().ok())
        .map(|usage| {
            let inactive = read(&format!("{dir}/memory.stat"))
                .and_then(|stat| line_value(&stat, inactive_key))
                .unwrap_or(0);
            usage.saturating_sub(inactive)
        });
    Some(CgroupMemory {
        limit_bytes,
        working_set_bytes,
    })
}

/// The memory cgroup with the tightest limit among this process' own (v1 and v2) and the mount
/// roots: its limit, directory and version.
fn tightest(
    proc_cgroup: &str,
    read: impl Fn(&str) -> Option<String>,
) -> Option<(u64, String, CgroupVersion)> {
    let mut dirs = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = path.trim_end_matches('/');
        if controllers.is_empty() {
            dirs.push((format!("/sys/fs/cgroup{path}"), CgroupVersion::V2));
        } else if controllers.split(',').any(|c| c == "memory") {
            dirs.push((format!("/sys/fs/cgroup/memory{path}"), CgroupVersion::V1));
        }
    }
    dirs.push(("/sys/fs/cgroup".into(), CgroupVersion::V2));
    dirs.push(("/sys/fs/cgroup/memory".into(), CgroupVersion::V1));
    dirs.into_iter()
        .filter_map(|(dir, v)| {
            let raw = read(&format!("{dir}/{}", v.files().0))?;
            Some((parse_limit(&raw)?, dir, v))
        })
        .min_by_key(|(limit, ..)| *limit)
}

#[derive(Debug, Clone, Copy)]
enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    /// Limit file, usage file, and the `memory.stat` key of inactive file cache.
    fn files(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::V2 => ("memory.max", "memory.current", "inactive_file"),
            Self::V1 => (
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "total_inactive_file",
            ),
        }
    }
}

/// The number after `key ` on its own line of a `name value` file (cgroups' `memory.stat`,
/// `memory.events`, `memory.oom_control`).
pub fn line_value(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
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

/// Drops `file`'s pages from the page cache (clean pages only: nothing is lost). A model file
/// is read to be hashed and read again by ONNX Runtime as the session is built, and never
/// after: its cached pages would stay charged to the container's memory cgroup, which holds
/// them against its limit beside the processes (the single-instance run with the fp32 ECG model
/// reached its 512 MB limit with a model file and its offline-optimised variant both cached).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn drop_file_cache(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise only advises the kernel about this open descriptor's pages; the
    // descriptor is valid for the call (borrowed from `file`).
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// Elsewhere, nothing.
#[cfg(not(target_os = "linux"))]
pub fn drop_file_cache(_file: &std::fs::File) {}

/// glibc malloc settings for a long-running service (each unless its `MALLOC_*_` environment
/// variable is set, so an operator can still override it):
///
/// - at most 2 arenas (`MALLOC_ARENA_MAX`): with one arena per thread that ever allocated,
///   activations freed by inference on many blocking threads stay cached in many arenas and
///   RSS grows with concurrency (measured in the README, `bench_service.py`);
/// - a fixed mmap threshold of 256 KiB (`MALLOC_MMAP_THRESHOLD_`): by default glibc raises the
///   threshold to the size of every large block freed (up to 32 MiB), after which upload
///   buffers, decoded images and ONNX Runtime's transient load buffers come from the heap and
///   stay there once freed — heart-svc kept 157 MB of free heap after loading its models and
///   crept up under 3000×2000 uploads (README, "Soak"). With the threshold fixed, blocks of
///   256 KiB and more are mapped and unmapped, so freeing them returns them to the kernel;
/// - a trim every [`TRIM_EVERY`] (a background thread): glibc returns free pages in the middle
///   of its heap only when asked (`malloc_trim`), so RSS rose and fell by several MB with
///   whatever the last requests left behind (jemalloc or mimalloc purge such pages after a
///   delay on their own; this is the same for glibc). Each trim's duration goes to the
///   `process_heap_trim_seconds` histogram.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn tune_allocator() {
    let unset = |var: &str| std::env::var_os(var).is_none();
    // SAFETY: mallopt only sets glibc tunables; both take a positive int.
    unsafe {
        if unset("MALLOC_ARENA_MAX") {
            libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        }
        if unset("MALLOC_MMAP_THRESHOLD_") {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
    let _ = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(TRIM_EVERY);
                let start = std::time::Instant::now();
                release_free_memory();
                metrics::histogram!(crate::metrics::name("process_heap_trim_seconds"))
                    .record(start.elapsed().as_secs_f64());
            }
        });
}

/// How often [`tune_allocator`]'s thread hands free heap pages back to the kernel.
pub const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Arenas [`tune_allocator`] allows.
pub const ARENAS: i32 = 2;
/// Allocation size from which [`tune_allocator`] has glibc map memory directly, bytes.
pub const MMAP_THRESHOLD: i32 = 256 * 1024;

/// No-op where the allocator has no such tunables.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_allocator() {}

/// What the C allocator holds: bytes handed out and not yet freed, and bytes freed but kept
/// (not returned to the kernel). RSS that grows while `in_use_bytes` stays flat is memory the
/// allocator keeps, not a leak.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct HeapFigures {
    /// Allocated and not freed, bytes (heap chunks in use plus mmapped chunks).
    pub in_use_bytes: u64,
    /// Freed but retained by the allocator, bytes.
    pub free_bytes: u64,
}

/// The allocator's figures now (glibc's `mallinfo2`, summed over every arena); `None` with
/// another allocator.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn heap() -> Option<HeapFigures> {
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value.
    let m = unsafe { libc::mallinfo2() };
    Some(HeapFigures {
        in_use_bytes: (m.uordblks + m.hblkhd) as u64,
        free_bytes: m.fordblks as u64,
    })
}

/// `None` where the allocator has no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn heap() -> Option<HeapFigures> {
    None
}

/// No-op where the allocator has no trim call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}

/// Sets the process memory gauges; called at every scrape so they are current.
pub fn record_gauges() {
    let m = read();
    metrics::gauge!(crate::metrics::name("process_resident_memory_bytes")).set(m.rss_bytes as f64);
    metrics::gauge!(crate::metrics::name("process_peak_resident_memory_bytes"))
        .set(m.peak_rss_bytes as f64);
    if let Some(limit) = m.cgroup_limit_bytes {
        metrics::gauge!(crate::metrics::name("process_memory_limit_bytes")).set(limit as f64);
    }
    if let Some(heap) = heap() {
        metrics::gauge!(crate::metrics::name("process_heap_in_use_bytes"))
            .set(heap.in_use_bytes as f64);
        metrics::gauge!(crate::metrics::name("process_heap_free_bytes"))
            .set(heap.free_bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_rss() {
        let m = read();
        assert!(m.rss_bytes > 1024 * 1024, "{m:?}");
        assert!(m.peak_rss_bytes >= m.rss_bytes, "{m:?}");
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn heap_in_use_follows_an_allocation() {
        let before = heap().expect("glibc reports its heap");
        let block = vec![1u8; 8 << 20];
        let during = heap().expect("glibc reports its heap");
        // Other test threads allocate too; 8 MB dwarfs what they do meanwhile.
        assert!(
            during.in_use_bytes >= before.in_use_bytes + (6 << 20),
            "{before:?} -> {during:?}"
        );
        drop(std::hint::black_box(block));
    }

    #[test]
    fn parses_cgroup_limits() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("536870912\n"), Some(536_870_912));
        assert_eq!(parse_limit("9223372036854771712"), None);
    }

    fn limit_from(proc_cgroup: &str, read: impl Fn(&str) -> Option<String>) -> Option<u64> {
        cgroup_from(proc_cgroup, read).map(|c| c.limit_bytes)
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
    fn the_working_set_is_the_limiting_cgroups_usage_less_inactive_file_cache() {
        let files = |entries: Vec<(&'static str, &'static str)>| {
            move |p: &str| {
                entries
                    .iter()
                    .find(|(f, _)| *f == p)
                    .map(|(_, v)| v.to_string())
            }
        };
        // v2: a container of several processes; inactive cache does not count, active does.
        let v2 = "0::/single\n";
        let read = files(vec![
            ("/sys/fs/cgroup/single/memory.max", "536870912\n"),
            ("/sys/fs/cgroup/single/memory.current", "314572800\n"),
            (
                "/sys/fs/cgroup/single/memory.stat",
                "anon 262144000\nfile 52428800\nactive_file 10485760\ninactive_file 41943040\n",
            ),
        ]);
        let c = cgroup_from(v2, read).expect("a limit");
        assert_eq!(c.limit_bytes, 512 << 20);
        assert_eq!(c.working_set_bytes, Some((300 - 40) << 20));
        // v1: the usage and stat files of the same cgroup as the limit, `total_` keys.
        let v1 = "4:memory:/bench/all\n";
        let read = files(vec![
            (
                "/sys/fs/cgroup/memory/bench/all/memory.limit_in_bytes",
                "536870912\n",
            ),
            (
                "/sys/fs/cgroup/memory/bench/all/memory.usage_in_bytes",
                "209715200\n",
            ),
            (
                "/sys/fs/cgroup/memory/bench/all/memory.stat",
                "inactive_file 1\ntotal_inactive_file 10485760\n",
            ),
            (
                "/sys/fs/cgroup/memory/memory.usage_in_bytes",
                "999999999999\n",
            ),
        ]);
        let c = cgroup_from(v1, read).expect("a limit");
        assert_eq!(c.working_set_bytes, Some(190 << 20));
        // A limit without readable usage.
        let read = files(vec![("/sys/fs/cgroup/memory.max", "268435456\n")]);
        let c = cgroup_from("0::/x\n", read).expect("a limit");
        assert_eq!((c.limit_bytes, c.working_set_bytes), (256 << 20, None));
    }

    #[test]
    fn parses_status_lines() {
        let s = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kib(s, "VmRSS:"), 1024);
        assert_eq!(status_kib(s, "VmHWM:"), 2048);
        assert_eq!(status_kib(s, "VmSwap:"), 0);
    }
}
