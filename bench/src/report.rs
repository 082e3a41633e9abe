//! `BENCHMARKS.md`, rendered from the results files — every figure in it comes from one.

use std::fmt::Write as _;
use std::path::Path;

use crate::baselinebench::BaselineRun;
use crate::chainbench::ChainRun;
use crate::containerbench::{ContainersRun, DeploymentRun, Phase, Spread};
use crate::decodebench::DecodeRun;
use crate::floor::Floor;
use crate::results::Header;
use crate::soak::SoakRun;
use crate::systembench::{
    CgroupRun, FirstPrediction, InstanceRun, Memory, PeakPhase, Ran, SingleInstance, SystemRun,
    WarmRun,
};
use crate::v2bench::V2Run;

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

/// A figure to `digits` places, `–` for none.
fn num(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "–".to_string(), |x| format!("{x:.digits$}"))
}

/// A value, or `null` for none (as the results files write it).
fn or_null<T: std::fmt::Display>(x: Option<T>) -> String {
    x.map_or_else(|| "null".to_string(), |x| x.to_string())
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
    if let Some(run) = read_run::<SystemRun>(dir, "system")? {
        system_md(&mut md, &run)?;
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
    match read_run::<V2Run>(dir, "v2")? {
        Some(run) => v2_md(&mut md, &run)?,
        None => md.push_str(
            "## Open Inference Protocol (KServe V2)\n\nNo V2 run recorded yet: run `bench/run.sh v2`.\n\n",
        ),
    }
    match read_run::<BaselineRun>(dir, "baseline")? {
        Some(run) => baseline_md(&mut md, &run)?,
        None => md.push_str(
            "## The Python baseline\n\nNo baseline run recorded yet: run `bench/run.sh baseline`.\n\n",
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

/// The largest peak of process `name` over the load phases.
fn peak_of(peaks: &[PeakPhase], name: &str) -> Option<f64> {
    peaks
        .iter()
        .filter_map(|p| Some(p.memory.get(name)?.peak_mb))
        .reduce(f64::max)
}

fn system_md(md: &mut String, v: &SystemRun) -> anyhow::Result<()> {
    md.push_str("## System run\n\n");
    header_md(md, &v.header)?;
    md.push_str(
        "- The system ran on its embedded defaults; the command set only these (ports, \
         data dir, token, and the gateway's per-client rate limit, which would otherwise \
         throttle the single load-generating client):\n  `",
    );
    md.push_str(&v.system_env.join(" "));
    md.push_str("`\n");
    md.push_str("- Models: ");
    let list: Vec<String> = v
        .models
        .iter()
        .map(|m| {
            format!(
                "{} {} ({:.1} MB, sha256 {}…{})",
                m.id,
                m.version,
                m.size_mb,
                &m.sha256.chars().take(12).collect::<String>(),
                if m.demo { ", demo" } else { "" }
            )
        })
        .collect();
    md.push_str(&list.join("; "));
    md.push('\n');
    writeln!(md, "- ONNX Runtime library: `{}`\n", v.onnxruntime_library)?;

    targets_md(md, v)?;
    startup_md(md, v)?;
    peaks_md(md, &v.peaks)?;
    warm_md(md, v)?;
    int8_md(md, v)?;
    load_peaks_md(md, &v.load_peaks)?;
    cgroup_md(md, &v.cgroup_run)?;
    for instance in &v.instances {
        instance_md(md, instance)?;
    }
    single_md(md, &v.single_instance)?;
    if !v.exited_during_run.is_empty() {
        writeln!(
            md,
            "\n**Processes that exited during the run:** {:?}",
            v.exited_during_run
        )?;
    }
    md.push('\n');
    Ok(())
}

/// Each image model loaded alone, from its offline-optimised variant and from the portable file.
fn load_peaks_md(md: &mut String, run: &Ran<crate::loadpeak::LoadPeakRun>) -> anyhow::Result<()> {
    md.push_str("### The model-load peak: offline-optimised variants\n\n");
    let run = match run {
        Ran::NotRun { reason } => {
            writeln!(md, "Not run: {reason}.\n")?;
            return Ok(());
        }
        Ran::Ran(r) => r,
    };
    md.push_str(
        "Each image model loaded by its service alone, in a fresh process, by one prediction \
         of a 224×224 JPEG: from the variant `optimize-models` made for this CPU (the graph \
         saved at ONNX Runtime's full optimisation, loaded with optimisation off) and from the \
         portable file (`<PREFIX>__RUNTIME__OFFLINE_OPTIMIZED=false`, ONNX Runtime optimising \
         at load, as before). RSS from `/proc/<pid>/status` before and after the prediction; \
         the peak is VmHWM, so peak − after is the load's transient. What the command made:\n\n```\n",
    );
    for line in &run.optimize {
        writeln!(md, "{line}")?;
    }
    md.push_str("```\n\n| card | loaded from | ok | RSS before MB | RSS after MB | peak MB | peak − after MB | load ms | first prediction ms |\n|---|---|---|---|---|---|---|---|---|\n");
    for l in &run.loads {
        let from = match (&l.source[..], &l.loaded_optimized) {
            ("optimized", Some(cpu)) => format!("variant ({cpu})"),
            ("optimized", None) => "portable (variant refused: see the log)".into(),
            _ => "portable file".into(),
        };
        writeln!(
            md,
            "| {} | {from} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
            l.card,
            if l.ok { "yes" } else { "**no**" },
            l.rss_before_mb,
            l.rss_after_mb,
            l.peak_mb,
            l.peak_mb - l.rss_after_mb,
            num(l.load_ms, 0),
            num(l.first_ms, 0),
        )?;
    }
    let ecg = run
        .loads
        .iter()
        .find(|l| l.card == "heart/ecg.card.json" && l.loaded_optimized.is_some());
    let over = ecg.map(|l| l.peak_mb - l.rss_after_mb);
    writeln!(
        md,
        "\nTarget (issue 23): heart-svc's load peak with the fp32 ECG model ≤ its steady RSS + 25 MB: {} MB over ({}).\n",
        num(over, 1),
        mark(over.map(|x| x <= 25.0))
    )?;
    Ok(())
}

/// The targets table: each target, what the run measured, whether it is met.
fn targets_md(md: &mut String, v: &SystemRun) -> anyhow::Result<()> {
    md.push_str(
        "### Targets (issue 7, this 2-core machine)\n\n| target | measured | |\n|---|---|---|\n",
    );
    for (name, limit) in [
        ("heart-svc", 256.0),
        ("diabetes-svc", 128.0),
        ("gateway", 32.0),
        ("chain-svc", 64.0),
    ] {
        let p = peak_of(&v.peaks, name);
        writeln!(
            md,
            "| {name} peak RSS ≤ {limit} MB (load phases: 64 tabular, 16 uploads, warm runs) | {} MB | {} |",
            num(p, 1),
            mark(p.map(|x| x <= limit))
        )?;
    }
    for name in medchain_tests::system::NAMES {
        let loads = v
            .first_predictions
            .iter()
            .filter(|p| p.service == name)
            .filter_map(|p| Some(p.service_memory_after?.peak_mb));
        let p = peak_of(&v.peaks, name)
            .into_iter()
            .chain(loads)
            .reduce(f64::max);
        writeln!(
            md,
            "| {name} peak RSS over the whole run, model loads included, ≤ 256 MB (half of 512) | {} MB | {} |",
            num(p, 1),
            mark(p.map(|x| x <= 256.0))
        )?;
    }
    for name in medchain_tests::system::NAMES {
        let idle = v.idle_memory.get(name).map(|m| m.rss_mb);
        writeln!(
            md,
            "| {name} idle RSS ≤ 20 MB | {} MB | {} |",
            num(idle, 1),
            mark(idle.map(|x| x <= 20.0))
        )?;
    }
    for name in medchain_tests::system::NAMES {
        let r = v.startup.get(name).map(|s| s.ready_ms);
        writeln!(
            md,
            "| {name} ready ≤ 200 ms after start | {} ms | {} |",
            num(r, 0),
            mark(r.map(|x| x <= 200.0))
        )?;
    }
    for fl in &v.floor {
        let label = fl.endpoint.as_deref().unwrap_or_default();
        if label.contains("224") {
            for (route, r, e2e) in [
                ("direct", fl.ratio_direct, fl.e2e_p50_ms_direct),
                ("gateway", fl.ratio_gateway, fl.e2e_p50_ms_gateway),
            ] {
                writeln!(
                    md,
                    "| {label} end-to-end ({route}, c=1, p50) ≤ 1.15 × raw ONNX Runtime | {} × ({} ms vs {} ms) | {} |",
                    num(r, 2),
                    num(e2e, 2),
                    num(fl.p50_ms, 2),
                    mark(r.map(|x| x <= 1.15))
                )?;
            }
        }
    }
    for w in &v.warm {
        if w.endpoint.ends_with("/tabular") && w.route == "gateway" && w.load.concurrency == 1 {
            let p = w.load.p50_ms;
            writeln!(
                md,
                "| {} through the gateway p50 ≤ 2 ms (c=1) | {} ms | {} |",
                w.endpoint,
                num(p, 2),
                mark(p.map(|x| x <= 2.0))
            )?;
        }
    }
    Ok(())
}

/// Start-up and idle memory per process, and each model's first prediction.
fn startup_md(md: &mut String, v: &SystemRun) -> anyhow::Result<()> {
    md.push_str("\n### Start-up (spawn → first 200) and idle memory\n\n| process | /healthz ms | /readyz ms | idle RSS MB |\n|---|---|---|---|\n");
    for name in medchain_tests::system::NAMES {
        let startup = v.startup.get(name);
        writeln!(
            md,
            "| {name} | {} | {} | {} |",
            num(startup.map(|s| s.healthy_ms), 0),
            num(startup.map(|s| s.ready_ms), 0),
            num(v.idle_memory.get(name).map(|m| m.rss_mb), 1)
        )?;
    }
    if let Some(a) = v.idle_memory.get("anvil (chain-svc's child)") {
        writeln!(
            md,
            "| anvil (chain-svc's child, not ours) | – | – | {:.1} |",
            a.rss_mb
        )?;
    }
    md.push_str("\n### First prediction per model (through the gateway; includes the lazy load)\n\nPeak = the service's VmHWM during this one request (reset just before it): the model load's transient peak.\n\n| endpoint | latency ms | its service's RSS after, MB | peak during it, MB |\n|---|---|---|---|\n");
    for p in &v.first_predictions {
        writeln!(
            md,
            "| {} | {}{} | {} | {} |",
            p.endpoint,
            num(p.latency_ms, 1),
            if p.ok {
                String::new()
            } else {
                format!(" (failed: {})", or_null(p.first_failure.as_ref()))
            },
            num(p.service_memory_after.map(|m| m.rss_mb), 1),
            num(p.service_memory_after.map(|m| m.peak_mb), 1)
        )?;
    }
    Ok(())
}

/// Warm latency per endpoint, route and concurrency, and the ONNX Runtime floor.
fn warm_md(md: &mut String, v: &SystemRun) -> anyhow::Result<()> {
    md.push_str("\n### Warm latency\n\nClient-side wall time per request (send → end of body), after a warm-up; `inference` is the service's own ONNX Runtime time (median) from its responses. CPU is each process' user + system time over the run (`/proc/<pid>/stat`, all threads) per request sent: on a fractional-CPU instance it is the capacity a request takes.\n\n| endpoint | route | c | ok/requests | p50 ms | p95 ms | p99 ms | req/s | inference p50 ms | CPU µs/req: gateway | the disease service | chain-svc |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for w in &v.warm {
        let l = &w.load;
        let cpu = |name: &str| num(w.cpu_us_per_request.get(name).copied(), 0);
        let service = if w.endpoint.starts_with("heart/") {
            "heart-svc"
        } else {
            "diabetes-svc"
        };
        writeln!(
            md,
            "| {} | {} | {} | {}/{} | {} | {} | {} | {:.1} | {} | {} | {} | {} |",
            w.endpoint,
            w.route,
            l.concurrency,
            l.ok,
            l.requests,
            num(l.p50_ms, 2),
            num(l.p95_ms, 2),
            num(l.p99_ms, 2),
            l.throughput_rps,
            num(l.service_inference_p50_ms, 2),
            cpu("gateway"),
            cpu(service),
            cpu("chain-svc")
        )?;
    }
    cpu_targets_md(md, v)?;
    md.push_str("\n### The floor: raw ONNX Runtime per model, one input\n\nThe same session options and input (preprocessed by the service's code) in the benchmark process, services idle; ratio = end-to-end p50 at c=1 ÷ the floor's p50. Decode + preprocess is the service's own image decoding and preprocessing of the same upload, timed the same way: part of what end-to-end adds to the floor.\n\n| endpoint | threads | runs | ORT p50 ms | decode + preprocess p50 ms | e2e direct ms | ratio | e2e gateway ms | ratio |\n|---|---|---|---|---|---|---|---|---|\n");
    for fl in &v.floor {
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            or_null(fl.endpoint.as_ref()),
            fl.intra_threads,
            fl.runs,
            num(fl.p50_ms, 3),
            num(fl.preprocess_p50_ms, 3),
            num(fl.e2e_p50_ms_direct, 2),
            num(fl.ratio_direct, 2),
            num(fl.e2e_p50_ms_gateway, 2),
            num(fl.ratio_gateway, 2)
        )?;
    }
    large_upload_md(md, v)?;
    explain_md(md, v)
}

/// Issue 23's target for a large upload: its decode + preprocess ≤ 25% of the model's time.
fn large_upload_md(md: &mut String, v: &SystemRun) -> anyhow::Result<()> {
    let rows: Vec<&Floor> = v
        .floor
        .iter()
        .filter(|f| f.large_preprocess_p50_ms.is_some())
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    md.push_str("\nThe load phases' 3000×2000 JPEG, decoded and preprocessed by the service's code in the benchmark process (DCT-scaled JPEG decoding where the card's resize allows it), against the model's time above; target (issue 23) ≤ 25%:\n\n| endpoint | 3000×2000 decode + preprocess p50 ms | ORT p50 ms | share | |\n|---|---|---|---|---|\n");
    for fl in rows {
        let share = fl
            .large_preprocess_p50_ms
            .zip(fl.p50_ms)
            .map(|(a, b)| a / b);
        writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            or_null(fl.endpoint.as_ref()),
            num(fl.large_preprocess_p50_ms, 2),
            num(fl.p50_ms, 2),
            share.map_or("n/a".into(), |s| format!("{:.0}%", s * 100.0)),
            match share {
                Some(s) if s <= 0.25 => "met",
                Some(_) => "**not met**",
                None => "",
            }
        )?;
    }
    Ok(())
}

/// Issue 24's cost of a tabular explanation (target ≤ 50 µs for TreeSHAP).
fn explain_md(md: &mut String, v: &SystemRun) -> anyhow::Result<()> {
    let rows: Vec<&Floor> = v.floor.iter().filter(|f| f.explain.is_some()).collect();
    if rows.is_empty() {
        return Ok(());
    }
    md.push_str("\n### Explanations: TreeSHAP per tabular prediction\n\nEach call timed alone in the benchmark process: on the load generator's record (runs), and once on every row of the data set. Target ≤ 50 µs. The explainer's memory is its trees.\n\n| endpoint | runs | p50 µs | p95 µs | rows | rows p50 µs | rows max µs | ORT p50 µs | ÷ inference | trees KB |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for fl in rows {
        let Some(e) = &fl.explain else { continue };
        let ort_us = fl.p50_ms.map(|ms| ms * 1e3);
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
            or_null(fl.endpoint.as_ref()),
            e.runs,
            num(e.p50_us, 1),
            num(e.p95_us, 1),
            e.rows,
            num(e.rows_p50_us, 1),
            num(e.rows_max_us, 1),
            num(ort_us, 1),
            num(e.p50_us.zip(ort_us).map(|(a, b)| a / b), 2),
            e.resident_bytes as f64 / 1024.0
        )?;
    }
    cam_md(md, v)
}

/// Issue 24's cost of a class activation map (targets ≤ 5% of inference, ≤ 4 MB).
fn cam_md(md: &mut String, v: &SystemRun) -> anyhow::Result<()> {
    let rows: Vec<&Floor> = v.floor.iter().filter(|f| f.cam.is_some()).collect();
    if rows.is_empty() {
        return Ok(());
    }
    md.push_str("\n### Explanations: a class activation map per image prediction (`?explain=cam`)\n\nIn the benchmark process, on the endpoint's 224×224 JPEG: the model run asked for the logits alone and for the logits and the maps (alternating; ONNX Runtime may skip the maps' node when they are not asked for), then the service's work on the maps timed alone (the predicted class's map and peak, the overlay blended over the RGB8 image preprocessing kept, its PNG, the data URL, the JSON; keeping that image is no copy for these cards, which resize without a crop). Share = (the maps' extra run time + that work) ÷ the plain run; target ≤ 5%. Heap = the most that work holds at once (the bench's counting allocator); target ≤ 4 MB.\n\n| endpoint | runs | logits only p50 ms | with maps p50 ms | work on the maps p50 ms | p95 ms | share | heap peak KB | data URL KB | JSON KB |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for fl in rows {
        let Some(c) = &fl.cam else { continue };
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} |",
            or_null(fl.endpoint.as_ref()),
            c.runs,
            num(c.logits_only_p50_ms, 2),
            num(c.with_maps_p50_ms, 2),
            num(c.explain_p50_ms, 3),
            num(c.explain_p95_ms, 3),
            c.share_of_inference
                .map_or("n/a".into(), |s| format!("{:.1}%", s * 100.0)),
            c.heap_peak_bytes as f64 / 1024.0,
            c.data_url_bytes as f64 / 1024.0,
            c.json_bytes as f64 / 1024.0
        )?;
    }
    Ok(())
}

/// Issue 23's targets for the CPU a tabular prediction takes: 60 µs in the service, 120 µs
/// through the gateway (both processes), at concurrency 4.
fn cpu_targets_md(md: &mut String, v: &SystemRun) -> anyhow::Result<()> {
    let rows: Vec<&WarmRun> = v
        .warm
        .iter()
        .filter(|w| w.endpoint.ends_with("/tabular") && w.load.concurrency == 4)
        .filter(|w| !w.cpu_us_per_request.is_empty())
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    md.push_str("\nCPU per tabular prediction against issue 23's targets (c=4):\n\n| endpoint | route | target | measured | |\n|---|---|---|---|---|\n");
    for w in rows {
        let service = if w.endpoint.starts_with("heart/") {
            "heart-svc"
        } else {
            "diabetes-svc"
        };
        let of = |name: &str| w.cpu_us_per_request.get(name).copied();
        let (limit, measured) = match w.route.as_str() {
            "gateway" => (120.0, of("gateway").zip(of(service)).map(|(g, s)| g + s)),
            _ => (60.0, of(service)),
        };
        writeln!(
            md,
            "| {} | {} | ≤ {limit:.0} µs | {} µs | {} |",
            w.endpoint,
            w.route,
            num(measured, 0),
            mark(measured.map(|x| x <= limit))
        )?;
    }
    Ok(())
}

fn peaks_md(md: &mut String, peaks: &[PeakPhase]) -> anyhow::Result<()> {
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
    for p in peaks {
        let count = p
            .load
            .as_ref()
            .map_or("–".to_string(), |l| format!("{}/{}", l.ok, l.requests));
        write!(md, "| {} | {count} |", p.phase)?;
        for n in &names {
            write!(md, " {} |", num(p.memory.get(n).map(|m| m.peak_mb), 1))?;
        }
        md.push('\n');
        if let Some(fail) = p.load.as_ref().and_then(|l| l.first_failure.as_ref()) {
            writeln!(md, "|  ↳ first failure: {} | |", fail.replace('|', "/"))?;
        }
    }
    Ok(())
}

fn cgroup_md(md: &mut String, c: &Ran<CgroupRun>) -> anyhow::Result<()> {
    md.push_str("\n### Under a 512 MB memory cgroup per service\n\n");
    let c = match c {
        Ran::NotRun { reason } => {
            writeln!(md, "Not run: {reason}.")?;
            return Ok(());
        }
        Ran::Ran(c) => c,
    };
    md.push_str("The same first predictions and load phases, each service started inside its own memory cgroup with a 512 MB kernel limit (cgroup peak includes page cache, as a container's does).\n\n");
    writeln!(
        md,
        "Page cache dropped before the run (so that library and model files are charged to these cgroups, as in fresh containers): {}.\n",
        c.page_cache_dropped
    )?;
    md.push_str("| service | cgroup peak MB | OOM kills | alive at the end |\n|---|---|---|---|\n");
    for (name, st) in &c.services {
        let stats = st.stats.as_ref();
        writeln!(
            md,
            "| {name} | {} | {} | {} |",
            num(stats.and_then(|s| s.peak_usage_mb), 1),
            or_null(stats.and_then(|s| s.oom_kills)),
            st.alive
        )?;
    }
    let failed: Vec<String> = c
        .peaks
        .iter()
        .filter_map(|p| Some((p, p.load.as_ref()?)))
        .filter(|(_, l)| l.failed > 0)
        .map(|(p, l)| {
            format!(
                "{}: {} failed ({})",
                p.phase,
                l.failed,
                or_null(l.first_failure.as_ref())
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

fn instance_md(md: &mut String, c: &Ran<InstanceRun>) -> anyhow::Result<()> {
    let c = match c {
        Ran::NotRun { reason } => {
            writeln!(md, "\n### On a platform instance\n\nNot run: {reason}.")?;
            return Ok(());
        }
        Ran::Ran(c) => c,
    };
    writeln!(
        md,
        "\n### On a {} instance: {} MB, {} CPU per service\n",
        c.instance, c.memory_mb, c.cpus
    )?;
    writeln!(
        md,
        "Each service in a cgroup of its own with that memory limit and CPU quota (`cpu.cfs_quota_us` / `cpu.max`, 100 ms period), as each runs on the platform; page cache dropped first: {}. Every phase resets the cgroups' peaks first; \"peak\" is the cgroup's (page cache included, as a container's), \"throttled\" the time the quota has held the service back since it started.\n",
        c.page_cache_dropped
    )?;
    md.push_str("`/healthz` is asked of every service every 250 ms during each phase (30 s timeout): the slowest answer and, in brackets, the service that gave it and how many answers of all services were not a 200.\n\n");
    md.push_str("| phase | ok / requests | statuses | p50 ms | p99 ms | diabetes-svc peak MB | heart-svc peak MB | gateway peak MB | chain-svc peak MB | slowest /healthz ms |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for p in &c.phases {
        let l = &p.load;
        let peak = |svc: &str| num(p.cgroups.get(svc).and_then(|c| c.peak_usage_mb), 1);
        let slowest = p
            .healthz_slowest_ms
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or("—".to_string(), |(svc, ms)| {
                let failed: u64 = p.healthz_failed.values().sum();
                format!("{ms:.0} ({svc}; {failed} failed)")
            });
        writeln!(
            md,
            "| {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.phase,
            l.ok,
            l.requests,
            status_counts(&l.statuses),
            num(l.p50_ms, 1),
            num(l.p99_ms, 1),
            peak("diabetes-svc"),
            peak("heart-svc"),
            peak("gateway"),
            peak("chain-svc"),
            slowest,
        )?;
    }
    for p in &c.phases {
        if let Some(n) = p.audit_unrecorded {
            writeln!(
                md,
                "\n{}: {n} of {} recorded predictions answered `unrecorded` (chain-svc slower than the disease service's `chain.timeout_ms`, or unreachable).",
                p.phase, p.load.requests
            )?;
        }
    }
    md.push_str("\n| service | ready after start, ms | cgroup peak over the run, MB | OOM kills | CPU throttled, s | alive at the end |\n|---|---|---|---|---|---|\n");
    let last = c.phases.last();
    for (name, st) in &c.services {
        let stats = st.stats.as_ref();
        writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} |",
            num(c.startup.get(name).map(|s| s.ready_ms), 0),
            num(stats.and_then(|s| s.peak_usage_mb), 1),
            or_null(stats.and_then(|s| s.oom_kills)),
            last.map_or("—".into(), |p| num(
                p.cgroups.get(name).and_then(|c| c.cpu_throttled_s),
                1
            )),
            st.alive
        )?;
    }
    Ok(())
}

fn single_md(md: &mut String, c: &Ran<SingleInstance>) -> anyhow::Result<()> {
    md.push_str(
        "\n### All four services in one 512 MB memory cgroup (the single-instance image)\n\n",
    );
    let c = match c {
        Ran::NotRun { reason } => {
            writeln!(md, "Not run: {reason}.")?;
            return Ok(());
        }
        Ran::Ran(c) => c,
    };
    md.push_str("The same first predictions and load phases with gateway, diabetes-svc, heart-svc, chain-svc and chain-svc's embedded anvil sharing one memory cgroup with a 512 MB kernel limit, as `deploy/single.Dockerfile` runs them, each run started after dropping the page cache so that the ONNX Runtime library and model files are charged to this cgroup as in a fresh container. The cgroup's peak is what the kernel limit is held against (page cache included, which the kernel reclaims before it would kill; shared library pages counted once); the largest sum of the processes' own peaks (VmHWM) in one phase — first predictions included, so the model-load transients too — counts shared pages once per process and peaks that were not simultaneous, so it is an upper bound.\n\n| ECG model | page cache dropped | cgroup peak MB | largest sum of process peaks in a phase, MB | OOM kills | processes that exited | failed requests |\n|---|---|---|---|---|---|---|\n");
    let mut settings = Vec::new();
    for run in &c.runs {
        settings.push(format!("{}: `{}`", run.ecg_model, run.settings.join(" ")));
        let sum = |m: &Memory| m.values().map(|m| m.peak_mb).sum::<f64>();
        let largest_sum = run
            .first_predictions
            .iter()
            .map(|p| sum(&p.memory))
            .chain(run.peaks.iter().map(|p| sum(&p.memory)))
            .fold(0.0, f64::max);
        let failed = run
            .peaks
            .iter()
            .filter_map(|p| Some(p.load.as_ref()?.failed))
            .sum::<usize>()
            + run.first_predictions.iter().filter(|p| !p.ok).count();
        let cgroup = run.cgroup.as_ref();
        writeln!(
            md,
            "| {} | {} | {} | {largest_sum:.1} | {} | {} | {failed} |",
            run.ecg_model,
            run.page_cache_dropped,
            num(cgroup.and_then(|c| c.peak_usage_mb), 1),
            or_null(cgroup.and_then(|c| c.oom_kills)),
            run.exited.len(),
        )?;
    }
    writeln!(
        md,
        "\nSettings (deploy/supervise.sh's defaults, read from the script): {}.",
        settings.join("; ")
    )?;
    Ok(())
}

/// The Open Inference Protocol section, from a [`V2Run`].
fn v2_md(md: &mut String, run: &V2Run) -> anyhow::Result<()> {
    md.push_str("## Open Inference Protocol (KServe V2)\n\n");
    header_md(md, &run.header)?;
    md.push_str("\nThrough the gateway, signed in; client-side wall time per request (send → end of body), after a warm-up. A 224×224 retina JPEG (the model's input size) four ways:\n\n| way | body | c | ok/requests | p50 ms | p99 ms | req/s | inference p50 ms |\n|---|---:|---:|---|---:|---:|---:|---:|\n");
    for w in &run.ways {
        let l = &w.load;
        writeln!(
            md,
            "| {} | {:.1} KB | {} | {}/{} | {} | {} | {:.1} | {} |",
            w.way,
            w.body_bytes as f64 / 1024.0,
            l.concurrency,
            l.ok,
            l.requests,
            num(l.p50_ms, 2),
            num(l.p99_ms, 2),
            l.throughput_rps,
            num(l.service_inference_p50_ms, 2)
        )?;
    }
    md.push_str("\nBatches (V2 binary FP32 tensors, concurrency 1): the same rows or images in batches of 8 and one at a time. \"Run at once\" is how many the model runs in one session call: the image models run a batch in slices of `v2.image_run_batch` (1 by default; the last rows, from a second start with it set to 8, run the whole batch at once). The serving process' peak RSS (VmHWM, reset before each run) is what the batch's working memory adds.\n\n| model | batch | run at once | rows or images | per second | p50 ms a request | inference p50 ms a request | service peak RSS MB |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for b in &run.batches {
        writeln!(
            md,
            "| {} | {} | {} | {} | {:.1} | {} | {} | {} |",
            b.model,
            b.batch,
            b.image_run_batch.min(b.batch),
            b.items,
            b.items_per_second,
            num(b.load.p50_ms, 2),
            num(b.load.service_inference_p50_ms, 2),
            num(b.service_peak_mb, 1)
        )?;
    }
    if !run.exited_during_run.is_empty() {
        writeln!(
            md,
            "\n**Processes that exited during the run:** {:?}",
            run.exited_during_run
        )?;
    }
    md.push('\n');
    Ok(())
}

/// medchain beside the Python baseline: one row per figure, one column per side.
fn baseline_md(md: &mut String, run: &BaselineRun) -> anyhow::Result<()> {
    md.push_str("## The Python baseline\n\n");
    header_md(md, &run.header)?;
    writeln!(
        md,
        "\nThe rewrite a team would otherwise write: `bench/baseline/app.py`, the same four ONNX \
         files served by FastAPI on ONNX Runtime (its default session options, every model \
         loaded at start-up, Pillow for images, one uvicorn worker as on a 512 MB instance; \
         {}), against medchain's embedded defaults, in the same run with the same load \
         generator and inputs. Its answers equal the committed fixtures \
         (`bench/baseline/test_app.py`). medchain's figures count {}; chain-svc and its anvil \
         run but are not counted (the baseline keeps no audit trail). Peak RSS is the sum of \
         each counted process' VmHWM over the run.\n",
        run.baseline_stack,
        run.sides
            .first()
            .map_or(String::new(), |s| s.processes.join(", "))
    )?;
    md.push_str("| | ");
    md.push_str(
        &run.sides
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(" | "),
    );
    md.push_str(" |\n|---|");
    md.push_str(&"---:|".repeat(run.sides.len()));
    md.push('\n');
    let row =
        |md: &mut String, label: &str, cell: &dyn Fn(&crate::baselinebench::Side) -> String| {
            let cells: Vec<String> = run.sides.iter().map(cell).collect();
            writeln!(md, "| {label} | {} |", cells.join(" | "))
        };
    row(md, "start-up to ready, slowest process (ms)", &|s| {
        format!("{:.0}", s.startup_ms.values().copied().fold(0.0, f64::max))
    })?;
    row(md, "RSS once started (MB)", &|s| {
        format!("{:.1}", s.idle_rss_mb)
    })?;
    row(md, "peak RSS over the run (MB)", &|s| {
        format!("{:.1}", s.peak_rss_mb)
    })?;
    row(md, "RSS at the end (MB)", &|s| {
        format!("{:.1}", s.final_rss_mb)
    })?;
    if let Some(first) = run.sides.first() {
        for f in &first.first_predictions {
            row(md, &format!("first {} (ms)", f.endpoint), &|s| {
                let f = s
                    .first_predictions
                    .iter()
                    .find(|g| g.endpoint == f.endpoint);
                num(f.filter(|f| f.ok).and_then(|f| f.latency_ms), 1)
            })?;
        }
    }
    md.push_str("\nWarm runs (after a warm-up): client-side p50 latency, throughput, and the counted processes' user + system CPU per request (from /proc, 10-ms ticks). medchain through the gateway and direct to the disease service; the baseline has one process.\n\n| endpoint | c |");
    let mut columns = Vec::new();
    for s in &run.sides {
        for r in &s.runs {
            let key = (s.name.clone(), r.route.clone());
            if !columns.contains(&key) {
                columns.push(key);
            }
        }
    }
    for (side, route) in &columns {
        write!(md, " {side}, {route}: p50 ms · req/s · CPU µs |")?;
    }
    md.push_str("\n|---|---:|");
    md.push_str(&"---:|".repeat(columns.len()));
    md.push('\n');
    let Some(first) = run.sides.first() else {
        return Ok(());
    };
    let keys: Vec<(&str, usize)> = first
        .runs
        .iter()
        .filter(|r| r.route == first.runs[0].route)
        .map(|r| (r.endpoint.as_str(), r.load.concurrency))
        .collect();
    for (endpoint, c) in keys {
        write!(md, "| {endpoint} | {c} |")?;
        for (side, route) in &columns {
            let r = run
                .sides
                .iter()
                .filter(|s| &s.name == side)
                .flat_map(|s| &s.runs)
                .find(|r| &r.route == route && r.endpoint == endpoint && r.load.concurrency == c);
            match r {
                Some(r) if r.load.failed == 0 => write!(
                    md,
                    " {} · {:.0} · {:.0} |",
                    num(r.load.p50_ms, 2),
                    r.load.throughput_rps,
                    r.cpu_us_per_request
                )?,
                Some(r) => write!(md, " {} of {} failed |", r.load.failed, r.load.requests)?,
                None => md.push_str(" – |"),
            }
        }
        md.push('\n');
    }
    md.push('\n');
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

/// The phases of a run the fp32-vs-int8 table reads a model's figures from.
struct ModelRuns<'a> {
    first: &'a [FirstPrediction],
    peaks: &'a [PeakPhase],
    warm: &'a [WarmRun],
    floor: &'a [Floor],
}

/// One figure of a run: the first-prediction, peak-phase, warm and floor entries of a model.
fn model_figures(
    run: &ModelRuns<'_>,
    disease: &str,
    model: &str,
    service: &str,
) -> [Option<f64>; 5] {
    let prefix = format!("{disease}/{model}");
    let first = run.first.iter().find(|p| p.endpoint.starts_with(&prefix));
    let upload = run
        .peaks
        .iter()
        .find(|p| p.phase.contains(&format!("{prefix} uploads")));
    let warm = run.warm.iter().find(|w| {
        w.endpoint.starts_with(&prefix) && w.route == "direct" && w.load.concurrency == 1
    });
    let floor = run.floor.iter().find(|f| {
        f.model.as_deref() == Some(model)
            || f.endpoint.as_ref().is_some_and(|e| e.starts_with(&prefix))
    });
    [
        first.and_then(|p| Some(p.service_memory_after?.rss_mb)),
        first.and_then(|p| Some(p.service_memory_after?.peak_mb)),
        upload.and_then(|p| Some(p.memory.get(service)?.peak_mb)),
        warm.and_then(|w| w.load.p50_ms),
        floor.and_then(|f| f.p50_ms),
    ]
}

fn int8_md(md: &mut String, v: &SystemRun) -> anyhow::Result<()> {
    md.push_str("\n### fp32 vs int8 image models\n\n");
    let q = match &v.int8 {
        Ran::NotRun { reason } => {
            writeln!(md, "Not run: {reason}.")?;
            return Ok(());
        }
        Ran::Ran(q) => q,
    };
    writeln!(
        md,
        "The int8 run started the system again with `{}` and ran the same first predictions and load phases; agreement and accuracy come from the int8 card (measured by `python -m pipeline.quantize` on the held-out set).\n",
        q.env.join(" ")
    )?;
    md.push_str("| model | variant | file MB | service RSS after its load | peak during its load | peak, 16 uploads | e2e p50 direct c=1 ms | ORT p50 ms | held-out accuracy | agreement with fp32 |\n|---|---|---|---|---|---|---|---|---|---|\n");
    let fp32 = ModelRuns {
        first: &v.first_predictions,
        peaks: &v.peaks,
        warm: &v.warm,
        floor: &v.floor,
    };
    let int8 = ModelRuns {
        first: &q.first_predictions,
        peaks: &q.peaks,
        warm: &q.warm,
        floor: &q.floor,
    };
    for c in &q.cards {
        let model = c.model.as_str();
        let (disease, service) = if model == "retina" {
            ("diabetes", "diabetes-svc")
        } else {
            ("heart", "heart-svc")
        };
        for (variant, run, size, acc, agree) in [
            ("fp32", &fp32, c.fp32_size_mb, c.accuracy_fp32, None),
            (
                "int8",
                &int8,
                c.size_mb,
                c.accuracy_int8,
                c.agreement_with_fp32,
            ),
        ] {
            let fig = model_figures(run, disease, model, service);
            writeln!(
                md,
                "| {model} | {variant} | {} | {} | {} | {} | {} | {} | {} | {} |",
                num(size, 1),
                num(fig[0], 1),
                num(fig[1], 1),
                num(fig[2], 1),
                num(fig[3], 2),
                num(fig[4], 2),
                num(acc, 3),
                agree.map_or("–".to_string(), |a| format!(
                    "{a:.4} (of {})",
                    or_null(c.compared_on)
                ))
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
        or_null(run.cgroup_version),
        run.page_cache_dropped
    )?;
    let refusals = deployment_phases_md(md, run)?;
    deployment_containers_md(md, run)?;
    writeln!(
        md,
        "\nRequests not answered with a 200 over the run: {}.",
        refusals.iter().map(|(n, _)| n).sum::<usize>()
    )?;
    for (_, x) in &refusals {
        writeln!(md, "- {x}")?;
    }
    if let Some(spread) = &run.spread {
        spread_md(md, spread)?;
    }
    Ok(())
}

/// A container's peak in a phase, MB.
fn container_peak(p: &Phase, label: &str) -> Option<f64> {
    p.containers.get(label).and_then(|c| c.peak_mb)
}

/// The phases table of a deployment, a column per container; the phases with requests that
/// failed, as (how many, `phase: first failure`).
fn deployment_phases_md(
    md: &mut String,
    run: &DeploymentRun,
) -> anyhow::Result<Vec<(usize, String)>> {
    md.push_str("| phase | ok / requests | statuses | p50 ms | p99 ms |");
    for l in run.limits_mb.keys() {
        write!(md, " {l} peak MB |")?;
    }
    md.push_str("\n|---|---|---|---|---|");
    md.push_str(&"---|".repeat(run.limits_mb.len()));
    md.push('\n');
    let mut refusals = Vec::new();
    for p in &run.phases {
        let load = p.load.as_ref();
        let requests = load.map_or("–".to_string(), |l| format!("{} / {}", l.ok, l.requests));
        if let Some(l) = load.filter(|l| l.failed > 0) {
            let first = l.first_failure.as_deref().unwrap_or("null");
            refusals.push((l.failed, format!("{}: {first}", p.phase)));
        }
        write!(
            md,
            "| {} | {requests} | {} | {} | {} |",
            p.phase,
            load.map_or("–".into(), |l| status_counts(&l.statuses)),
            num(load.and_then(|l| l.p50_ms), 1),
            num(load.and_then(|l| l.p99_ms), 1)
        )?;
        for l in run.limits_mb.keys() {
            write!(md, " {} |", num(container_peak(p, l), 1))?;
        }
        md.push('\n');
    }
    Ok(refusals)
}

/// The containers table of a deployment: image, limit, largest peak, how each ended.
fn deployment_containers_md(md: &mut String, run: &DeploymentRun) -> anyhow::Result<()> {
    md.push_str(
        "\n| container | image | image size MiB | limit MB | largest phase peak MB | OOM-killed | restarts | running at the end |\n|---|---|---|---|---|---|---|---|\n",
    );
    for (l, limit) in &run.limits_mb {
        let peak = run
            .phases
            .iter()
            .filter_map(|p| container_peak(p, l))
            .reduce(f64::max);
        let image = run.images.get(l).and_then(Option::as_ref);
        let end = run.end.get(l);
        writeln!(
            md,
            "| {l} | `{}` | {} | {} | {} | {} | {} | {} |",
            image.map_or("null".into(), |i| i.image.clone()),
            num(image.and_then(|i| i.size_mib), 1),
            num(*limit, 0),
            num(peak, 1),
            or_null(end.and_then(|e| e.oom_killed)),
            or_null(end.and_then(|e| e.restarts)),
            or_null(end.and_then(|e| e.running)),
        )?;
    }
    Ok(())
}

/// Load spreading over the scaled heart-svc instances.
fn spread_md(md: &mut String, spread: &[Spread]) -> anyhow::Result<()> {
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
            num(x.load.p50_ms, 2),
            num(x.load.p99_ms, 2)
        )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each committed results file, read as its command's type and written back, is the same
    /// JSON: the types hold every figure the files hold, and the report reads no field the
    /// types lose.
    fn round_trips<T: serde::Serialize + serde::de::DeserializeOwned>(name: &str) {
        let path = crate::repo_root().join("bench/results").join(name);
        let text = std::fs::read_to_string(&path).expect("read");
        let original: serde_json::Value = serde_json::from_str(&text).expect("json");
        let run: T = serde_json::from_value(original.clone()).expect(name);
        let again = serde_json::to_value(run).expect("write");
        assert!(
            again == original,
            "{name} does not read back whole: {}",
            first_difference(&original, &again, String::new())
        );
    }

    /// Where two JSON values first differ, as a path.
    fn first_difference(a: &serde_json::Value, b: &serde_json::Value, at: String) -> String {
        use serde_json::Value::{Array, Object};
        match (a, b) {
            (Object(x), Object(y)) => {
                for k in x.keys().chain(y.keys()) {
                    match (x.get(k), y.get(k)) {
                        (Some(p), Some(q)) if p == q => {}
                        (Some(p), Some(q)) => return first_difference(p, q, format!("{at}.{k}")),
                        (p, q) => return format!("{at}.{k}: {p:?} vs {q:?}"),
                    }
                }
                format!("{at}: equal")
            }
            (Array(x), Array(y)) if x.len() == y.len() => x
                .iter()
                .zip(y)
                .enumerate()
                .find(|(_, (p, q))| p != q)
                .map_or(format!("{at}: equal"), |(i, (p, q))| {
                    first_difference(p, q, format!("{at}[{i}]"))
                }),
            _ => format!("{at}: {a} vs {b}"),
        }
    }

    #[test]
    fn every_committed_results_file_reads_back_whole() {
        round_trips::<SystemRun>("system.json");
        round_trips::<ContainersRun>("containers.json");
        round_trips::<DecodeRun>("decode.json");
        round_trips::<ChainRun>("chain.json");
        round_trips::<SoakRun>("soak.json");
        round_trips::<V2Run>("v2.json");
        round_trips::<BaselineRun>("baseline.json");
    }

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
