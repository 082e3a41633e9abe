//! `BENCHMARKS.md`, rendered from the results files — every figure in it comes from one.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::chainbench::ChainRun;
use crate::containerbench::{ContainersRun, DeploymentRun, Phase};
use crate::decodebench::DecodeRun;
use crate::results::Header;
use crate::soak::SoakRun;

fn read(dir: &Path, name: &str) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join(name)).ok()?).ok()
}

/// A results file as the type its command wrote; `None` when there is none. A file that does
/// not read as that type is an error naming it, never a section left out.
fn read_typed<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> anyhow::Result<Option<T>> {
    let path = dir.join(name);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{} does not read as a results file: {e}", path.display()))
}

/// The full run's results file `<kind>.json`, else the quick one's.
fn read_run<T: serde::de::DeserializeOwned>(dir: &Path, kind: &str) -> anyhow::Result<Option<T>> {
    match read_typed(dir, &format!("{kind}.json"))? {
        Some(run) => Ok(Some(run)),
        None => read_typed(dir, &format!("{kind}-quick.json")),
    }
}

/// The decode budget section, from a [`DecodeRun`].
fn decode_md(md: &mut String, run: &DecodeRun) -> anyhow::Result<()> {
    md.push_str("## The image decode budget\n\n");
    header_md(md, &run.header)?;
    writeln!(
        md,
        "\nSmall files that decode to a great deal, sent at once to diabetes-svc (a fresh \
         process each case, its peak reset once the retina model is loaded): with the shipped \
         `images.decode_budget_mb` = {} and with the budget out of the way \
         (`DIABETES__IMAGES__DECODE_BUDGET_MB=1000000`).\n",
        run.default_budget_mb
    )?;
    md.push_str(
        "| image | file | decoded | at once | budget | statuses | RSS, model loaded (MB) | peak RSS (MB) |\n|---|---:|---:|---:|---|---|---:|---:|\n",
    );
    for c in &run.cases {
        let statuses: Vec<String> = c
            .statuses
            .iter()
            .map(|(s, n)| format!("{n}× {s}"))
            .collect();
        writeln!(
            md,
            "| {} | {:.0} KB | {:.0} MB | {} | {} | {} | {:.1} | {:.1} |",
            c.image,
            c.file_kb,
            c.decoded_mb,
            c.uploads,
            c.budget_mb
                .map_or("out of the way".into(), |b| format!("{b} MB")),
            statuses.join(", "),
            c.rss_loaded_mb,
            c.peak_mb
        )?;
    }
    md.push('\n');
    Ok(())
}

fn f(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "–".to_string(), |x| format!("{x:.digits$}"))
}

fn s(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// An array of strings as one space-separated line.
fn words(v: &Value) -> String {
    v.as_array()
        .into_iter()
        .flatten()
        .map(s)
        .collect::<Vec<_>>()
        .join(" ")
}

fn mark(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

/// BENCHMARKS.md from the results files in `dir`.
pub fn render(dir: &Path) -> anyhow::Result<String> {
    let mut md = String::new();
    md.push_str(
        "# medchain benchmarks\n\n\
         Written by `bench/run.sh` (the `medchain-bench` command) from the results files in \
         `bench/results/`; do not edit by hand — run the command again. Every figure below was \
         measured by the run it names.\n\n",
    );
    let system = read(dir, "system.json").or_else(|| read(dir, "system-quick.json"));
    if let Some(v) = &system {
        system_md(&mut md, v)?;
    } else {
        md.push_str("No system run recorded yet: run `bench/run.sh`.\n\n");
    }
    if let Some(run) = read_run::<ContainersRun>(dir, "containers")? {
        containers_md(&mut md, &run)?;
    } else {
        md.push_str(
            "## Containers\n\nNo container run recorded yet: run `bench/run.sh containers`.\n\n",
        );
    }
    match read_run::<DecodeRun>(dir, "decode")? {
        Some(run) => decode_md(&mut md, &run)?,
        None => md.push_str(
            "## The image decode budget\n\nNo decode run recorded yet: run `bench/run.sh decode`.\n\n",
        ),
    }
    if let Some(run) = read_run::<ChainRun>(dir, "chain")? {
        chain_md(&mut md, &run)?;
    } else {
        md.push_str(
            "## The audit trail on chain

No chain run recorded yet: run `bench/run.sh chain`.

",
        );
    }
    if let Some(run) = read_typed::<SoakRun>(dir, "soak.json")? {
        soak_md(&mut md, &run)?;
    } else {
        md.push_str("## Soak\n\nNo soak run recorded yet: run `bench/run.sh soak`.\n");
    }
    Ok(md)
}

/// The run's lines (date, machine, versions, command) from a results file's header fields.
fn run_md(md: &mut String, v: &Value) -> anyhow::Result<()> {
    header_md(md, &serde_json::from_value(v.clone())?)
}

fn header_md(md: &mut String, h: &Header) -> anyhow::Result<()> {
    let or_null = |o: &Option<String>| o.clone().unwrap_or_else(|| "null".into());
    let m = &h.machine;
    writeln!(
        md,
        "- Date (UTC): {} · commit `{}`{} · {} build{}",
        or_null(&h.date_utc),
        or_null(&h.commit),
        if h.worktree_dirty {
            " (with uncommitted changes)"
        } else {
            ""
        },
        h.build,
        if h.quick {
            " · **quick smoke run: few requests, figures not representative**"
        } else {
            ""
        }
    )?;
    writeln!(
        md,
        "- Machine: {} · {} CPUs available · {} RAM · Linux {}",
        or_null(&m.cpu),
        m.cpus_available,
        or_null(&m.memory),
        or_null(&m.kernel)
    )?;
    writeln!(
        md,
        "- Versions: {} · medchain {} · ONNX Runtime {}",
        or_null(&h.versions.rustc),
        h.versions.medchain,
        h.versions.onnxruntime
    )?;
    writeln!(md, "- Command: `{}`", h.command)?;
    writeln!(md, "- {}", h.note)?;
    Ok(())
}

fn peak_of(v: &Value, name: &str) -> Option<f64> {
    v["peaks"]
        .as_array()?
        .iter()
        .filter_map(|p| p["memory"][name]["peak_mb"].as_f64())
        .reduce(f64::max)
}

fn system_md(md: &mut String, v: &Value) -> anyhow::Result<()> {
    md.push_str("## System run\n\n");
    run_md(md, v)?;
    if let Some(env) = v["system_env"].as_array() {
        md.push_str(
            "- The system ran on its embedded defaults; the command set only these (ports, \
             data dir, token, and the gateway's per-client rate limit, which would otherwise \
             throttle the single load-generating client):\n  `",
        );
        md.push_str(&env.iter().map(s).collect::<Vec<_>>().join(" "));
        md.push_str("`\n");
    }
    if let Some(models) = v["models"].as_array() {
        md.push_str("- Models: ");
        let list: Vec<String> = models
            .iter()
            .map(|m| {
                format!(
                    "{} {} ({} MB, sha256 {}…{})",
                    s(&m["id"]),
                    s(&m["version"]),
                    f(&m["size_mb"], 1),
                    &s(&m["sha256"]).chars().take(12).collect::<String>(),
                    if m["demo"] == true { ", demo" } else { "" }
                )
            })
            .collect();
        md.push_str(&list.join("; "));
        md.push('\n');
    }
    writeln!(
        md,
        "- ONNX Runtime library: `{}`\n",
        s(&v["onnxruntime_library"])
    )?;

    targets_md(md, v)?;
    startup_md(md, v)?;
    peaks_md(md, v)?;
    warm_md(md, v)?;
    int8_md(md, v)?;
    cgroup_md(md, &v["cgroup_run"])?;
    for instance in v["instances"].as_array().into_iter().flatten() {
        instance_md(md, instance)?;
    }
    single_md(md, &v["single_instance"])?;
    if let Some(ex) = v["exited_during_run"].as_array()
        && !ex.is_empty()
    {
        writeln!(md, "\n**Processes that exited during the run:** {ex:?}")?;
    }
    md.push('\n');
    Ok(())
}

/// The targets table: each target, what the run measured, whether it is met.
fn targets_md(md: &mut String, v: &Value) -> anyhow::Result<()> {
    md.push_str(
        "### Targets (issue 7, this 2-core machine)\n\n| target | measured | |\n|---|---|---|\n",
    );
    for (name, limit) in [
        ("heart-svc", 256.0),
        ("diabetes-svc", 128.0),
        ("gateway", 32.0),
        ("chain-svc", 64.0),
    ] {
        let p = peak_of(v, name);
        writeln!(
            md,
            "| {name} peak RSS ≤ {limit} MB (load phases: 64 tabular, 16 uploads, warm runs) | {} MB | {} |",
            p.map_or("–".into(), |x| format!("{x:.1}")),
            mark(p.map(|x| x <= limit))
        )?;
    }
    for name in medchain_tests::system::NAMES {
        let loads = v["first_predictions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["service"] == name)
            .filter_map(|p| p["service_memory_after"]["peak_mb"].as_f64());
        let p = peak_of(v, name).into_iter().chain(loads).reduce(f64::max);
        writeln!(
            md,
            "| {name} peak RSS over the whole run, model loads included, ≤ 256 MB (half of 512) | {} MB | {} |",
            p.map_or("–".into(), |x| format!("{x:.1}")),
            mark(p.map(|x| x <= 256.0))
        )?;
    }
    for name in medchain_tests::system::NAMES {
        let idle = v["idle_memory"][name]["rss_mb"].as_f64();
        writeln!(
            md,
            "| {name} idle RSS ≤ 20 MB | {} MB | {} |",
            idle.map_or("–".into(), |x| format!("{x:.1}")),
            mark(idle.map(|x| x <= 20.0))
        )?;
    }
    for name in medchain_tests::system::NAMES {
        let r = v["startup"][name]["ready_ms"].as_f64();
        writeln!(
            md,
            "| {name} ready ≤ 200 ms after start | {} ms | {} |",
            r.map_or("–".into(), |x| format!("{x:.0}")),
            mark(r.map(|x| x <= 200.0))
        )?;
    }
    for fl in v["floor"].as_array().into_iter().flatten() {
        let label = s(&fl["endpoint"]);
        if label.contains("224") {
            for route in ["direct", "gateway"] {
                let r = fl[format!("ratio_{route}")].as_f64();
                writeln!(
                    md,
                    "| {label} end-to-end ({route}, c=1, p50) ≤ 1.15 × raw ONNX Runtime | {} × ({} ms vs {} ms) | {} |",
                    r.map_or("–".into(), |x| format!("{x:.2}")),
                    f(&fl[format!("e2e_p50_ms_{route}")], 2),
                    f(&fl["p50_ms"], 2),
                    mark(r.map(|x| x <= 1.15))
                )?;
            }
        }
    }
    for w in v["warm"].as_array().into_iter().flatten() {
        let label = s(&w["endpoint"]);
        if label.ends_with("/tabular") && w["route"] == "gateway" && w["concurrency"] == 1 {
            let p = w["p50_ms"].as_f64();
            writeln!(
                md,
                "| {label} through the gateway p50 ≤ 2 ms (c=1) | {} ms | {} |",
                p.map_or("–".into(), |x| format!("{x:.2}")),
                mark(p.map(|x| x <= 2.0))
            )?;
        }
    }
    Ok(())
}

/// Start-up and idle memory per process, and each model's first prediction.
fn startup_md(md: &mut String, v: &Value) -> anyhow::Result<()> {
    md.push_str("\n### Start-up (spawn → first 200) and idle memory\n\n| process | /healthz ms | /readyz ms | idle RSS MB |\n|---|---|---|---|\n");
    for name in medchain_tests::system::NAMES {
        writeln!(
            md,
            "| {name} | {} | {} | {} |",
            f(&v["startup"][name]["healthy_ms"], 0),
            f(&v["startup"][name]["ready_ms"], 0),
            f(&v["idle_memory"][name]["rss_mb"], 1)
        )?;
    }
    if let Some(a) = v["idle_memory"]["anvil (chain-svc's child)"].as_object() {
        writeln!(
            md,
            "| anvil (chain-svc's child, not ours) | – | – | {} |",
            f(&a["rss_mb"], 1)
        )?;
    }
    md.push_str("\n### First prediction per model (through the gateway; includes the lazy load)\n\nPeak = the service's VmHWM during this one request (reset just before it): the model load's transient peak.\n\n| endpoint | latency ms | its service's RSS after, MB | peak during it, MB |\n|---|---|---|---|\n");
    for p in v["first_predictions"].as_array().into_iter().flatten() {
        writeln!(
            md,
            "| {} | {}{} | {} | {} |",
            s(&p["endpoint"]),
            f(&p["latency_ms"], 1),
            if p["ok"] == true {
                String::new()
            } else {
                format!(" (failed: {})", s(&p["first_failure"]))
            },
            f(&p["service_memory_after"]["rss_mb"], 1),
            f(&p["service_memory_after"]["peak_mb"], 1)
        )?;
    }
    Ok(())
}

/// Warm latency per endpoint, route and concurrency, and the ONNX Runtime floor.
fn warm_md(md: &mut String, v: &Value) -> anyhow::Result<()> {
    md.push_str("\n### Warm latency\n\nClient-side wall time per request (send → end of body), after a warm-up; `inference` is the service's own ONNX Runtime time (median) from its responses.\n\n| endpoint | route | c | ok/requests | p50 ms | p95 ms | p99 ms | req/s | inference p50 ms |\n|---|---|---|---|---|---|---|---|---|\n");
    for w in v["warm"].as_array().into_iter().flatten() {
        writeln!(
            md,
            "| {} | {} | {} | {}/{} | {} | {} | {} | {} | {} |",
            s(&w["endpoint"]),
            s(&w["route"]),
            w["concurrency"],
            w["ok"],
            w["requests"],
            f(&w["p50_ms"], 2),
            f(&w["p95_ms"], 2),
            f(&w["p99_ms"], 2),
            f(&w["throughput_rps"], 1),
            f(&w["service_inference_p50_ms"], 2)
        )?;
    }
    md.push_str("\n### The floor: raw ONNX Runtime per model, one input\n\nThe same session options and input (preprocessed by the service's code) in the benchmark process, services idle; ratio = end-to-end p50 at c=1 ÷ the floor's p50. Decode + preprocess is the service's own image decoding and preprocessing of the same upload, timed the same way: part of what end-to-end adds to the floor.\n\n| endpoint | threads | runs | ORT p50 ms | decode + preprocess p50 ms | e2e direct ms | ratio | e2e gateway ms | ratio |\n|---|---|---|---|---|---|---|---|---|\n");
    for fl in v["floor"].as_array().into_iter().flatten() {
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s(&fl["endpoint"]),
            fl["intra_threads"],
            fl["runs"],
            f(&fl["p50_ms"], 3),
            f(&fl["preprocess_p50_ms"], 3),
            f(&fl["e2e_p50_ms_direct"], 2),
            f(&fl["ratio_direct"], 2),
            f(&fl["e2e_p50_ms_gateway"], 2),
            f(&fl["ratio_gateway"], 2)
        )?;
    }
    Ok(())
}

fn peaks_md(md: &mut String, v: &Value) -> anyhow::Result<()> {
    md.push_str("\n### Peak RSS (VmHWM) per load phase, MB\n\nEach process' peak is reset (`/proc/<pid>/clear_refs`) before each phase, so a column is that phase's own peak.\n\n| phase | ok/requests |");
    let names: Vec<String> = medchain_tests::system::NAMES
        .iter()
        .map(|s| s.to_string())
        .chain(["anvil (chain-svc's child)".to_string()])
        .collect();
    for n in &names {
        write!(md, " {n} |")?;
    }
    md.push_str("\n|---|---|");
    md.push_str(&"---|".repeat(names.len()));
    md.push('\n');
    for p in v["peaks"].as_array().into_iter().flatten() {
        let load = &p["load"];
        let count = if load.is_null() {
            "–".to_string()
        } else {
            format!("{}/{}", load["ok"], load["requests"])
        };
        write!(md, "| {} | {count} |", s(&p["phase"]))?;
        for n in &names {
            write!(md, " {} |", f(&p["memory"][n]["peak_mb"], 1))?;
        }
        md.push('\n');
        if let Some(fail) = load["first_failure"].as_str() {
            writeln!(md, "|  ↳ first failure: {} | |", fail.replace('|', "/"))?;
        }
    }
    Ok(())
}

fn cgroup_md(md: &mut String, c: &Value) -> anyhow::Result<()> {
    md.push_str("\n### Under a 512 MB memory cgroup per service\n\n");
    if c["ran"] != true {
        writeln!(md, "Not run: {}.", s(&c["reason"]))?;
        return Ok(());
    }
    md.push_str("The same first predictions and load phases, each service started inside its own memory cgroup with a 512 MB kernel limit (cgroup peak includes page cache, as a container's does).\n\n");
    writeln!(
        md,
        "Page cache dropped before the run (so that library and model files are charged to these cgroups, as in fresh containers): {}.\n",
        c["page_cache_dropped"]
    )?;
    md.push_str("| service | cgroup peak MB | OOM kills | alive at the end |\n|---|---|---|---|\n");
    for (name, st) in c["services"].as_object().into_iter().flatten() {
        writeln!(
            md,
            "| {name} | {} | {} | {} |",
            f(&st["peak_usage_mb"], 1),
            st["oom_kills"],
            st["alive"]
        )?;
    }
    let failed: Vec<String> = c["peaks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["load"]["failed"].as_u64().unwrap_or(0) > 0)
        .map(|p| {
            format!(
                "{}: {} failed ({})",
                s(&p["phase"]),
                p["load"]["failed"],
                s(&p["load"]["first_failure"])
            )
        })
        .collect();
    if failed.is_empty() {
        md.push_str("\nEvery request of the cgroup run's load phases succeeded.\n");
    } else {
        writeln!(md, "\nFailures in the cgroup run: {}", failed.join("; "))?;
    }
    Ok(())
}

fn instance_md(md: &mut String, c: &Value) -> anyhow::Result<()> {
    if c["ran"] != true {
        writeln!(
            md,
            "\n### On a platform instance\n\nNot run: {}.",
            s(&c["reason"])
        )?;
        return Ok(());
    }
    writeln!(
        md,
        "\n### On a {} instance: {} MB, {} CPU per service\n",
        s(&c["instance"]),
        c["memory_mb"],
        c["cpus"]
    )?;
    writeln!(
        md,
        "Each service in a cgroup of its own with that memory limit and CPU quota (`cpu.cfs_quota_us` / `cpu.max`, 100 ms period), as each runs on the platform; page cache dropped first: {}. Every phase resets the cgroups' peaks first; \"peak\" is the cgroup's (page cache included, as a container's), \"throttled\" the time the quota has held the service back since it started.\n",
        c["page_cache_dropped"]
    )?;
    md.push_str("`/healthz` is asked of every service every 250 ms during each phase (30 s timeout): the slowest answer and, in brackets, the service that gave it and how many answers of all services were not a 200.\n\n");
    md.push_str("| phase | ok / requests | statuses | p50 ms | p99 ms | diabetes-svc peak MB | heart-svc peak MB | gateway peak MB | chain-svc peak MB | slowest /healthz ms |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for p in c["phases"].as_array().into_iter().flatten() {
        let l = &p["load"];
        let statuses = statuses(&l["statuses"]);
        let peak = |svc: &str| f(&p["cgroups"][svc]["peak_usage_mb"], 1);
        let slowest = p["healthz_slowest_ms"]
            .as_object()
            .and_then(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k, v.as_f64()?)))
                    .max_by(|a, b| a.1.total_cmp(&b.1))
            })
            .map_or("—".to_string(), |(svc, ms)| {
                let failed: u64 = p["healthz_failed"]
                    .as_object()
                    .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
                format!("{ms:.0} ({svc}; {failed} failed)")
            });
        writeln!(
            md,
            "| {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s(&p["phase"]),
            l["ok"],
            l["requests"],
            statuses,
            f(&l["p50_ms"], 1),
            f(&l["p99_ms"], 1),
            peak("diabetes-svc"),
            peak("heart-svc"),
            peak("gateway"),
            peak("chain-svc"),
            slowest,
        )?;
    }
    for p in c["phases"].as_array().into_iter().flatten() {
        if let Some(n) = p["audit_unrecorded"].as_f64() {
            writeln!(
                md,
                "\n{}: {n} of {} recorded predictions answered `unrecorded` (chain-svc slower than the disease service's `chain.timeout_ms`, or unreachable).",
                s(&p["phase"]),
                p["load"]["requests"]
            )?;
        }
    }
    md.push_str("\n| service | ready after start, ms | cgroup peak over the run, MB | OOM kills | CPU throttled, s | alive at the end |\n|---|---|---|---|---|---|\n");
    let last = c["phases"].as_array().and_then(|a| a.last());
    for (name, st) in c["services"].as_object().into_iter().flatten() {
        writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} |",
            f(&c["startup"][name]["ready_ms"], 0),
            f(&st["peak_usage_mb"], 1),
            st["oom_kills"],
            last.map_or("—".into(), |p| f(
                &p["cgroups"][name]["cpu_throttled_s"],
                1
            )),
            st["alive"]
        )?;
    }
    Ok(())
}

fn single_md(md: &mut String, c: &Value) -> anyhow::Result<()> {
    md.push_str(
        "\n### All four services in one 512 MB memory cgroup (the single-instance image)\n\n",
    );
    if c["ran"] != true {
        writeln!(md, "Not run: {}.", s(&c["reason"]))?;
        return Ok(());
    }
    md.push_str("The same first predictions and load phases with gateway, diabetes-svc, heart-svc, chain-svc and chain-svc's embedded anvil sharing one memory cgroup with a 512 MB kernel limit, as `deploy/single.Dockerfile` runs them, each run started after dropping the page cache so that the ONNX Runtime library and model files are charged to this cgroup as in a fresh container. The cgroup's peak is what the kernel limit is held against (page cache included, which the kernel reclaims before it would kill; shared library pages counted once); the largest sum of the processes' own peaks (VmHWM) in one phase — first predictions included, so the model-load transients too — counts shared pages once per process and peaks that were not simultaneous, so it is an upper bound.\n\n| ECG model | page cache dropped | cgroup peak MB | largest sum of process peaks in a phase, MB | OOM kills | processes that exited | failed requests |\n|---|---|---|---|---|---|---|\n");
    let mut settings = Vec::new();
    for run in c["runs"].as_array().into_iter().flatten() {
        settings.push(format!(
            "{}: `{}`",
            s(&run["ecg_model"]),
            words(&run["settings"])
        ));
        let largest_sum = run["first_predictions"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(run["peaks"].as_array().into_iter().flatten())
            .map(|p| {
                p["memory"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(_, m)| m["peak_mb"].as_f64())
                    .sum::<f64>()
            })
            .fold(0.0, f64::max);
        let failed: u64 = run["peaks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["load"]["failed"].as_u64())
            .sum::<u64>()
            + run["first_predictions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["ok"] != true)
                .count() as u64;
        writeln!(
            md,
            "| {} | {} | {} | {largest_sum:.1} | {} | {} | {failed} |",
            s(&run["ecg_model"]),
            run["page_cache_dropped"],
            f(&run["cgroup"]["peak_usage_mb"], 1),
            run["cgroup"]["oom_kills"],
            run["exited"].as_array().map_or(0, Vec::len),
        )?;
    }
    writeln!(
        md,
        "\nSettings (deploy/supervise.sh's defaults, read from the script): {}.",
        settings.join("; ")
    )?;
    Ok(())
}

fn chain_md(md: &mut String, run: &ChainRun) -> anyhow::Result<()> {
    md.push_str(
        "## The audit trail on chain

",
    );
    header_md(md, &run.header)?;
    md.push_str(
        "\nA release chain-svc in front of its own anvil per mode, records posted 16 at a time as \
         fast as it accepts them; every record then read back (confirmed, matching the chain) \
         and every transaction's receipt read for its gas. Latency is from acceptance (the \
         `202`) to confirmation as the outbox noted them. Targets (issue 17): at least 500 \
         records per 12-second block, at most 5,000 gas per record at batches of 100 or more, a \
         bounded backlog at 20 records a second. Before batching (one record per transaction, \
         each waiting for its receipt): one record per block, 148,119 gas per record.\n\n\
         | mode | records | blocks with records | records per block, mean / max | transactions | records per second | gas per record (all) | largest batch: records, gas per record | latency p50 / p99 s |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    let opt = |x: Option<f64>, digits: usize| x.map_or("–".into(), |x| format!("{x:.digits$}"));
    for r in &run.streams {
        let (batch_records, batch_gas) = r
            .largest_batch
            .as_ref()
            .map_or(("null".to_string(), "–".to_string()), |l| {
                (l.records.to_string(), format!("{:.0}", l.gas_per_record))
            });
        writeln!(
            md,
            "| {} | {} | {} | {:.0} / {} | {} | {:.0} | {:.0} | {}, {} | {} / {} |",
            r.mode,
            r.records,
            r.blocks_with_records,
            r.records_per_block_mean,
            r.records_per_block_max
                .map_or("null".into(), |m| m.to_string()),
            r.transactions,
            r.records_per_second,
            r.gas_per_record,
            batch_records,
            batch_gas,
            opt(r.latency_s.p50, 2),
            opt(r.latency_s.p99, 2),
        )?;
    }
    let b = &run.backlog;
    writeln!(
        md,
        "\n**Backlog.** {} records a second for {} s on {}-second blocks ({} records): at most {} pending (first half of the run {}, second half {}), {} pending when sending stopped, all confirmed {:.1} s later.\n",
        b.rate_per_s,
        b.seconds,
        b.block_time_s,
        b.records,
        b.pending_max,
        b.pending_max_first_half,
        b.pending_max_second_half,
        b.pending_when_sending_stopped,
        b.drained_after_s,
    )?;
    Ok(())
}

fn soak_md(md: &mut String, run: &SoakRun) -> anyhow::Result<()> {
    md.push_str("## Soak\n\n");
    header_md(md, &run.header)?;
    let r = &run.requests;
    writeln!(
        md,
        "- Sent after warm-up: {} tabular (1 in 50 recorded on chain) and {} image requests through the gateway in {} rounds, {:.0} s; {} ok, {} failed{}.\n",
        r.tabular,
        r.images,
        r.rounds,
        r.duration_s,
        r.ok,
        r.failed,
        r.first_failure
            .as_deref()
            .map_or(String::new(), |x| format!(" (first: {x})"))
    )?;
    md.push_str("Each sample is taken once the services have been quiet for 6 s (longer than their 5 s HTTP keep-alive and two of their 1 s allocator trims), so it counts what stays: memory still resident, descriptors still open; the RSS read right after each round, with the round's last allocations still in place, is in the JSON and its drift in the last column. Drift is the last sample against the first (taken right after the warm-up); the trend is the same through the least-squares line over all samples (growth that goes on, whatever the allocator's ups and downs at the two samples compared); the second-half drift compares the last sample with the middle one, after the allocators have seen the whole mix — growth that continues there is what a leak looks like. Heap in use is what the process' allocator has handed out and not got back (glibc's `mallinfo2`, from the service's `/metrics`): RSS that moves while it stays flat is memory the allocator holds, not a leak.\n\n| process | RSS after warm-up MB | RSS at mid-run MB | RSS at end MB | sampled min–max MB | drift | trend | second-half drift | fds after warm-up | fds at end | heap in use after warm-up → end MB | drift right after the round (MB) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let rss_at = |i: usize, name: &str| Some(run.samples.get(i)?.process(name)?.rss_mb);
    let (mid, last) = (run.samples.len() / 2, run.samples.len().saturating_sub(1));
    let or_null = |x: Option<usize>| x.map_or("null".into(), |x| x.to_string());
    for d in &run.drift {
        let name = &d.name;
        let (m, e) = (rss_at(mid, name), rss_at(last, name));
        let second = match (m, e) {
            (Some(m), Some(e)) if m > 0.0 => format!("{:.1}%", (e - m) / m * 100.0),
            _ => "–".into(),
        };
        let heap = match (d.heap_in_use_after_warmup_mb, d.heap_in_use_end_mb) {
            (Some(a), Some(b)) => format!("{a:.1} → {b:.1}"),
            _ => "–".into(),
        };
        let (a, b, p) = (
            d.rss_right_after_round_start_mb,
            d.rss_right_after_round_end_mb,
            d.drift_right_after_round_pct,
        );
        let busy = if a > 0.0 {
            format!("{p:.1}% ({a:.1} → {b:.1})")
        } else {
            "–".into()
        };
        writeln!(
            md,
            "| {name} | {:.1} | {} | {:.1} | {}–{:.1} | {:.1}% | {} | {second} | {} | {} | {heap} | {busy} |",
            d.rss_after_warmup_mb,
            m.map_or("–".into(), |x| format!("{x:.1}")),
            d.rss_end_mb,
            d.rss_min_sample_mb
                .map_or("–".into(), |x| format!("{x:.1}")),
            d.rss_max_sample_mb,
            d.drift_pct,
            d.trend_drift_pct.map_or("–".into(), |x| format!("{x:.1}%")),
            or_null(d.fds_after_warmup),
            or_null(d.fds_end),
        )?;
    }
    md.push_str(
        "\nTargets (issue 8): RSS drift after warm-up ≤ 5 % and no file-descriptor growth.\n",
    );
    Ok(())
}

/// One figure of a run: the first-prediction, peak-phase, warm and floor entries of a model.
fn model_figures(run: &Value, disease: &str, model: &str, service: &str) -> [Option<f64>; 5] {
    let first = run["first_predictions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| s(&p["endpoint"]).starts_with(&format!("{disease}/{model}")));
    let upload = run["peaks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| s(&p["phase"]).contains(&format!("{disease}/{model} uploads")));
    let warm = run["warm"].as_array().into_iter().flatten().find(|w| {
        s(&w["endpoint"]).starts_with(&format!("{disease}/{model}"))
            && w["route"] == "direct"
            && w["concurrency"] == 1
    });
    let floor = run["floor"].as_array().into_iter().flatten().find(|f| {
        f["model"] == model || s(&f["endpoint"]).starts_with(&format!("{disease}/{model}"))
    });
    [
        first.and_then(|p| p["service_memory_after"]["rss_mb"].as_f64()),
        first.and_then(|p| p["service_memory_after"]["peak_mb"].as_f64()),
        upload.and_then(|p| p["memory"][service]["peak_mb"].as_f64()),
        warm.and_then(|w| w["p50_ms"].as_f64()),
        floor.and_then(|f| f["p50_ms"].as_f64()),
    ]
}

fn int8_md(md: &mut String, v: &Value) -> anyhow::Result<()> {
    let q = &v["int8"];
    md.push_str("\n### fp32 vs int8 image models\n\n");
    if q["ran"] != true {
        writeln!(md, "Not run: {}.", s(&q["reason"]))?;
        return Ok(());
    }
    writeln!(
        md,
        "The int8 run started the system again with `{}` and ran the same first predictions and load phases; agreement and accuracy come from the int8 card (measured by `python -m pipeline.quantize` on the held-out set).\n",
        words(&q["env"])
    )?;
    md.push_str("| model | variant | file MB | service RSS after its load | peak during its load | peak, 16 uploads | e2e p50 direct c=1 ms | ORT p50 ms | held-out accuracy | agreement with fp32 |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for c in q["cards"].as_array().into_iter().flatten() {
        let model = s(&c["model"]);
        let (disease, service) = if model == "retina" {
            ("diabetes", "diabetes-svc")
        } else {
            ("heart", "heart-svc")
        };
        for (variant, run, size, acc, agree) in [
            (
                "fp32",
                v,
                &c["fp32_size_mb"],
                &c["accuracy_fp32"],
                &Value::Null,
            ),
            (
                "int8",
                q,
                &c["size_mb"],
                &c["accuracy_int8"],
                &c["agreement_with_fp32"],
            ),
        ] {
            let fig = model_figures(run, disease, &model, service);
            let cell =
                |x: Option<f64>, d: usize| x.map_or("–".to_string(), |x| format!("{x:.d$}"));
            writeln!(
                md,
                "| {model} | {variant} | {} | {} | {} | {} | {} | {} | {} | {} |",
                f(size, 1),
                cell(fig[0], 1),
                cell(fig[1], 1),
                cell(fig[2], 1),
                cell(fig[3], 2),
                cell(fig[4], 2),
                f(acc, 3),
                if agree.is_null() {
                    "–".to_string()
                } else {
                    format!("{} (of {})", f(agree, 4), c["compared_on"])
                }
            )?;
        }
    }
    Ok(())
}

/// The container run: every deployment, its phases and containers.
fn containers_md(md: &mut String, run: &ContainersRun) -> anyhow::Result<()> {
    md.push_str("## Containers\n\n");
    header_md(md, &run.header)?;
    let or_null = |o: &Option<String>| o.clone().unwrap_or_else(|| "null".into());
    writeln!(
        md,
        "- Engine: Docker {} · docker-compose {}\n",
        or_null(&run.engine.docker),
        or_null(&run.engine.compose)
    )?;
    md.push_str(
        "The images built from the repository's Dockerfiles, run as a user runs them, and measured as the platform \
         sees them: each container's memory cgroup peak (cgroup v1 `memory.max_usage_in_bytes`, v2 `memory.peak`; \
         page cache included, which is what a container's limit is held against), reset before each phase. \
         The same phases as the system run above, through the gateway's port on 127.0.0.1. \
         Page cache dropped before each deployment started, so that libraries and model files are charged to \
         the containers that read them.\n",
    );
    for dep in &run.runs {
        deployment_md(md, dep)?;
    }
    md.push('\n');
    Ok(())
}

/// One deployment's phases, containers and (compose) load spreading.
fn deployment_md(md: &mut String, run: &DeploymentRun) -> anyhow::Result<()> {
    let labels: Vec<&String> = run.limits_mb.keys().collect();
    let title = match &run.ecg_model {
        Some(ecg) => format!("The single-instance image alone, {ecg} ECG model"),
        None => "docker-compose.yml with heart-svc scaled to three (fp32 ECG model)".into(),
    };
    writeln!(md, "\n### {title}\n")?;
    writeln!(
        md,
        "`{}` · gateway ready {:.1} s after start · cgroup v{} · page cache dropped: {}\n",
        run.command,
        run.ready_after_s,
        run.cgroup_version.map_or("null".into(), |v| v.to_string()),
        run.page_cache_dropped
    )?;
    md.push_str("| phase | ok / requests | statuses | p50 ms | p99 ms |");
    for l in &labels {
        write!(md, " {l} peak MB |")?;
    }
    md.push_str("\n|---|---|---|---|---|");
    md.push_str(&"---|".repeat(labels.len()));
    md.push('\n');
    let opt = |x: Option<f64>, digits: usize| x.map_or("–".into(), |x| format!("{x:.digits$}"));
    let peak_of = |p: &Phase, l: &str| p.containers.get(l).and_then(|c| c.peak_mb);
    let mut failed = 0;
    let mut refusals = Vec::new();
    for p in &run.phases {
        let load = p.load.as_ref();
        let requests = load.map_or("–".to_string(), |l| format!("{} / {}", l.ok, l.requests));
        if let Some(l) = load.filter(|l| l.failed > 0) {
            failed += l.failed;
            refusals.push(format!(
                "{}: {}",
                p.phase,
                l.first_failure.as_deref().unwrap_or("null")
            ));
        }
        write!(
            md,
            "| {} | {requests} | {} | {} | {} |",
            p.phase,
            load.map_or("–".into(), |l| status_counts(&l.statuses)),
            opt(load.and_then(|l| l.p50_ms), 1),
            opt(load.and_then(|l| l.p99_ms), 1)
        )?;
        for l in &labels {
            write!(md, " {} |", opt(peak_of(p, l), 1))?;
        }
        md.push('\n');
    }
    md.push_str(
        "\n| container | image | image size MiB | limit MB | largest phase peak MB | OOM-killed | restarts | running at the end |\n|---|---|---|---|---|---|---|---|\n",
    );
    let shown = |x: Option<String>| x.unwrap_or_else(|| "null".into());
    for l in &labels {
        let peak = run
            .phases
            .iter()
            .filter_map(|p| peak_of(p, l))
            .reduce(f64::max);
        let image = run.images.get(*l).and_then(Option::as_ref);
        let end = run.end.get(*l);
        writeln!(
            md,
            "| {l} | `{}` | {} | {} | {} | {} | {} | {} |",
            image.map_or("null".into(), |i| i.image.clone()),
            opt(image.and_then(|i| i.size_mib), 1),
            opt(run.limits_mb.get(*l).copied().flatten(), 0),
            opt(peak, 1),
            shown(end.and_then(|e| e.oom_killed).map(|x| x.to_string())),
            shown(end.and_then(|e| e.restarts).map(|x| x.to_string())),
            shown(end.and_then(|e| e.running).map(|x| x.to_string())),
        )?;
    }
    writeln!(
        md,
        "\nRequests not answered with a 200 over the run: {failed}."
    )?;
    for x in &refusals {
        writeln!(md, "- {x}")?;
    }
    if let Some(spread) = &run.spread {
        md.push_str(
                "\nLoad spreading over the three heart-svc instances: heart/tabular at concurrency 16 through the gateway, which resolves `heart-svc` to every instance's address (Docker's DNS), with kept-alive connections per address and with a new connection per request (`GATEWAY__PROXY__REUSE_CONNECTIONS=false`). Requests per instance from each instance's access log.\n\n| keep-alive | ok / requests | throughput req/s | p50 ms | p99 ms | served per instance |\n|---|---|---|---|---|---|\n",
            );
        for x in spread {
            let per = x
                .served_per_instance
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            writeln!(
                md,
                "| {} | {} / {} | {:.0} | {} | {} | {per} |",
                x.reuse_connections,
                x.load.ok,
                x.load.requests,
                x.load.throughput_rps,
                opt(x.load.p50_ms, 2),
                opt(x.load.p99_ms, 2)
            )?;
        }
    }
    Ok(())
}

/// `{200: 640}` as `200×640`; `–` for none.
fn status_counts(m: &std::collections::BTreeMap<u16, usize>) -> String {
    if m.is_empty() {
        return "–".into();
    }
    m.iter()
        .map(|(k, n)| format!("{k}×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `{"200": 640}` as `200×640`.
fn statuses(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, n)| format!("{k}×{n}"))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "–".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bench/BENCHMARKS.md is what the command renders from the committed results, to the byte:
    /// nothing in it is written by hand, and a results file the report cannot read shows here.
    #[test]
    fn the_committed_benchmarks_page_is_rendered_from_the_committed_results() {
        let bench = crate::repo_root().join("bench");
        let rendered = render(&bench.join("results")).expect("render");
        let committed = std::fs::read_to_string(bench.join("BENCHMARKS.md")).expect("read");
        assert!(
            rendered == committed,
            "bench/BENCHMARKS.md differs from `medchain-bench render`; first differing line: {:?}",
            rendered
                .lines()
                .zip(committed.lines())
                .find(|(a, b)| a != b)
        );
    }
}
