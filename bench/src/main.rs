//! medchain's benchmark and soak command (run it through `bench/run.sh`, which builds the
//! release binaries first).
//!
//! ```text
//! medchain-bench system [--quick] [--no-cgroup] [--out DIR] [--bin-dir DIR]
//! medchain-bench soak [--tabular N] [--images N] [--out DIR] [--bin-dir DIR]
//! medchain-bench chain [--quick] [--out DIR] [--bin-dir DIR]
//! medchain-bench containers [--quick] [--project NAME] [--out DIR]
//! medchain-bench decode [--quick] [--out DIR] [--bin-dir DIR]
//! medchain-bench v2 [--quick] [--out DIR] [--bin-dir DIR]
//! medchain-bench baseline [--quick] [--out DIR] [--bin-dir DIR]
//! medchain-bench render [--out DIR]
//! ```
//!
//! `system` measures start-up, memory per process, first-prediction and warm latency through
//! the gateway and direct, the ONNX Runtime floor, and a second run under 512 MB memory
//! cgroups; `chain` measures the audit trail (records per block and per second, gas per
//! record, acceptance-to-confirmation time, the backlog at 20 records a second); `containers`
//! measures each container's cgroup peak per load phase (compose with heart-svc scaled, and the
//! single-instance image under `--memory 512m`); `decode` measures what the image decode budget
//! holds diabetes-svc to under small files that decode to hundreds of MB; `v2` times the Open
//! Inference Protocol beside the JSON API (binary, JSON and multipart; batches); `baseline`
//! measures the same four models served by a small Python app beside medchain; `soak` sends a
//! long stream of requests and tracks RSS and file descriptors;
//! both write `DIR/results/<name>.json` and re-render `DIR/BENCHMARKS.md` from every results
//! file there. Nothing in the Markdown is written by hand.

mod baselinebench;
mod chainbench;
mod containerbench;
mod decodebench;
mod floor;
mod inputs;
mod load;
mod loadpeak;
mod report;
mod results;
mod soak;
mod systembench;
mod v2bench;

use std::path::PathBuf;

// Heap counted per thread: what an explanation holds (floor.rs).
#[global_allocator]
static ALLOCATOR: medchain_tests::alloc::Counting = medchain_tests::alloc::Counting;

use anyhow::{Context, bail};
use serde_json::to_value;

/// Parsed command line.
#[derive(Debug, Clone)]
pub struct Args {
    pub command: String,
    pub out: PathBuf,
    pub bin_dir: PathBuf,
    pub quick: bool,
    pub cgroup: bool,
    pub soak_tabular: usize,
    pub soak_images: usize,
    /// The compose project (and image name prefix) of the container run.
    pub project: String,
    /// The command line as typed, for the results.
    pub argv: String,
}

/// The repository (the binary is built from it; models and examples are read from it).
pub fn repo_root() -> PathBuf {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    p.canonicalize().unwrap_or(p)
}

fn parse() -> anyhow::Result<Args> {
    let argv: Vec<String> = std::env::args().collect();
    let exe_dir = std::env::current_exe()?
        .parent()
        .map(PathBuf::from)
        .context("the executable has no folder")?;
    let mut args = Args {
        command: "system".into(),
        out: repo_root().join("bench"),
        bin_dir: exe_dir,
        quick: false,
        cgroup: true,
        soak_tabular: 100_000,
        soak_images: 2_000,
        project: "medchainbench".into(),
        argv: argv.join(" "),
    };
    let mut it = argv.into_iter().skip(1);
    let mut first = true;
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "system" | "soak" | "chain" | "containers" | "decode" | "v2" | "baseline"
            | "render"
                if first =>
            {
                args.command = a.clone()
            }
            "--quick" => args.quick = true,
            "--no-cgroup" => args.cgroup = false,
            "--out" => args.out = PathBuf::from(value("--out")?),
            "--bin-dir" => args.bin_dir = PathBuf::from(value("--bin-dir")?),
            "--tabular" => args.soak_tabular = value("--tabular")?.parse()?,
            "--images" => args.soak_images = value("--images")?.parse()?,
            "--project" => args.project = value("--project")?,
            "-h" | "--help" => {
                println!("{}", include_str!("usage.txt"));
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}` (see --help)"),
        }
        first = false;
    }
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let args = parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = args.out.join("results");
    std::fs::create_dir_all(&results)?;
    let run = match args.command.as_str() {
        "system" => Some(("system", to_value(rt.block_on(systembench::run(&args))?)?)),
        "chain" => Some(("chain", to_value(rt.block_on(chainbench::run(&args))?)?)),
        "containers" => Some((
            "containers",
            to_value(rt.block_on(containerbench::run(&args))?)?,
        )),
        "decode" => Some(("decode", to_value(rt.block_on(decodebench::run(&args))?)?)),
        "v2" => Some(("v2", to_value(rt.block_on(v2bench::run(&args))?)?)),
        "baseline" => Some((
            "baseline",
            to_value(rt.block_on(baselinebench::run(&args))?)?,
        )),
        "soak" => Some(("soak", to_value(rt.block_on(soak::run(&args))?)?)),
        _ => None,
    };
    if let Some((kind, v)) = run {
        // The soak has no quick variant: it is one file whatever the flags.
        let name = if args.quick && kind != "soak" {
            format!("{kind}-quick.json")
        } else {
            format!("{kind}.json")
        };
        results::write_json(&results.join(name), &v)?;
    }
    let md = args.out.join("BENCHMARKS.md");
    std::fs::write(&md, report::render(&results)?)?;
    println!("wrote {}", md.display());
    Ok(())
}
