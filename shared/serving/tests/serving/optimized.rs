//! Offline-optimised variants (`optimize-models`): made beside the model, loaded in its place
//! with the same answers, and refused — the portable file loaded instead, the reason counted —
//! whenever one does not check out.

use std::path::Path;

use medchain_diabetes_svc::SPEC;
use medchain_serving::DiseaseSettings;
use medchain_serving::model::optimized::{Sidecar, cpu_class, paths};
use medchain_serving::optimize::{Outcome, optimize_models};
use medchain_tests::{TestApp, models_copy, probabilities, spawn_disease};
use serde_json::Value;

const EXAMPLE: &str = "examples/retina/1-mild_npdr-0.png";

/// Makes the variants of `cards` (none: the default choice) in `dir`.
fn optimize(dir: &Path, cards: &[&str]) -> Vec<(std::path::PathBuf, Outcome)> {
    let mut settings = DiseaseSettings::load(&SPEC).expect("defaults");
    settings.models.dir = dir.display().to_string();
    let cards: Vec<_> = cards.iter().map(std::path::PathBuf::from).collect();
    optimize_models(&SPEC, &settings, &cards)
        .into_iter()
        .map(|(card, r)| {
            let outcome = r.unwrap_or_else(|e| panic!("{}: {e:#}", card.display()));
            (card, outcome)
        })
        .collect()
}

async fn spawn(dir: &Path, offline_optimized: bool) -> TestApp {
    let dir = dir.display().to_string();
    spawn_disease(SPEC, |s| {
        s.models.dir = dir;
        s.runtime.offline_optimized = offline_optimized;
    })
    .await
}

async fn retina(app: &TestApp) -> Vec<f64> {
    let png = std::fs::read(medchain_tests::models_dir().join(EXAMPLE)).expect("example");
    let res = app.post_image("/v1/predict/retina", png, "x.png").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    probabilities(&body)
}

#[tokio::test]
async fn a_variant_made_for_this_cpu_is_loaded_and_answers_as_the_portable_model() {
    let models = models_copy();
    // With no card named: every image model of the disease, the configured one first.
    let made = optimize(models.path(), &[]);
    let names: Vec<String> = made
        .iter()
        .map(|(c, _)| c.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["retina.card.json", "retina.int8.card.json"]);
    let cpu = cpu_class();
    for (card, outcome) in &made {
        let Outcome::Made(m) = outcome else {
            panic!("{}: not made", card.display())
        };
        assert_eq!(m.sidecar.cpu, cpu);
        assert!(m.variant.is_file() && m.max_diff <= 1e-3);
    }
    let (variant, sidecar) = paths(&models.path().join("diabetes/retina.onnx"), &cpu);
    assert!(variant.is_file() && sidecar.is_file());

    let optimized = spawn(models.path(), true).await;
    let got = retina(&optimized).await;
    let status = optimized.model("retina").await;
    assert_eq!(status["optimized"], cpu.as_str(), "{status}");

    let portable = spawn(models.path(), false).await;
    let want = retina(&portable).await;
    assert!(portable.model("retina").await.get("optimized").is_none());
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g - w).abs() <= 1e-6,
            "optimised {got:?} vs portable {want:?}"
        );
    }
}

/// One way a variant can fail to check out, and the `reason` it is counted under.
type Break = fn(&Path, &Path, &mut Sidecar);

#[tokio::test]
async fn a_variant_that_does_not_check_out_is_refused_and_the_portable_model_serves() {
    let models = models_copy();
    optimize(models.path(), &["diabetes/retina.card.json"]);
    let cpu = cpu_class();
    let (variant, sidecar_path) = paths(&models.path().join("diabetes/retina.onnx"), &cpu);
    let good_variant = std::fs::read(&variant).expect("variant");
    let good_sidecar: Sidecar =
        serde_json::from_slice(&std::fs::read(&sidecar_path).expect("sidecar")).expect("parse");

    let baseline = spawn(models.path(), false).await;
    let want = retina(&baseline).await;

    let cases: [(&str, Break); 6] = [
        ("source", |_, _, s| s.source_sha256 = "00".repeat(32)),
        ("runtime", |_, _, s| s.onnxruntime = "1.30.0".into()),
        ("cpu", |_, _, s| s.cpu = "x86_64-another".into()),
        ("file", |v, _, _| {
            let mut bytes = std::fs::read(v).expect("variant");
            let i = bytes.len() / 2;
            bytes[i] ^= 0x5a;
            std::fs::write(v, bytes).expect("write");
        }),
        // The graph loads, but answers otherwise than the full optimisation did: what a
        // variant run with the wrong NCHWc block would do.
        ("answer", |_, _, s| s.check.values[0] += 0.5),
        ("sidecar", |_, p, _| {
            std::fs::write(p, "{not json").expect("write")
        }),
    ];
    for (reason, breaks) in cases {
        std::fs::write(&variant, &good_variant).expect("restore variant");
        let mut sidecar = good_sidecar.clone();
        std::fs::write(&sidecar_path, serde_json::to_vec(&sidecar).unwrap()).unwrap();
        breaks(&variant, &sidecar_path, &mut sidecar);
        if reason != "sidecar" && reason != "file" {
            std::fs::write(&sidecar_path, serde_json::to_vec(&sidecar).unwrap()).unwrap();
        }
        let app = spawn(models.path(), true).await;
        let got = retina(&app).await;
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6, "{reason}: {got:?} vs {want:?}");
        }
        let status = app.model("retina").await;
        assert_eq!(status["state"], "ready", "{reason}: {status}");
        assert!(status.get("optimized").is_none(), "{reason}: {status}");
        let needle = format!(
            "diabetes_model_optimized_fallbacks_total{{model=\"retina\",reason=\"{reason}\"}}"
        );
        let metrics = app.metrics().await;
        assert!(metrics.contains(&needle), "{reason}: no {needle}");
    }
}

#[tokio::test]
async fn a_tabular_card_is_skipped_and_a_missing_file_fails_if_named_and_is_skipped_if_not() {
    let models = models_copy();
    let mut settings = DiseaseSettings::load(&SPEC).expect("defaults");
    settings.models.dir = models.path().display().to_string();
    std::fs::remove_file(models.path().join("diabetes/retina.int8.onnx")).expect("rm");
    let cards = [
        "diabetes/tabular.card.json",
        "diabetes/retina.int8.card.json",
    ]
    .map(std::path::PathBuf::from);
    let results = optimize_models(&SPEC, &settings, &cards);
    assert_eq!(results.len(), 1, "the tabular card is skipped");
    let err = results[0].1.as_ref().expect_err("no file, no variant");
    assert!(format!("{err:#}").contains("retina.int8.onnx"), "{err:#}");
    let (variant, sidecar) = paths(
        &models.path().join("diabetes/retina.int8.onnx"),
        &cpu_class(),
    );
    assert!(!variant.exists() && !sidecar.exists());
    // Not named (an image built without that file): skipped, and the others made.
    let results = optimize_models(&SPEC, &settings, &[]);
    let outcomes: Vec<String> = results
        .iter()
        .map(|(card, r)| match r {
            Ok(Outcome::Made(_)) => format!("{}: made", card.display()),
            Ok(Outcome::Absent) => format!("{}: absent", card.display()),
            other => panic!("{}: {other:?}", card.display()),
        })
        .collect();
    let dir = models.path().join("diabetes");
    assert_eq!(
        outcomes,
        [
            format!("{}: made", dir.join("retina.card.json").display()),
            format!("{}: absent", dir.join("retina.int8.card.json").display()),
        ]
    );
}

/// The bytes of `path` in the page cache (`fincore`, util-linux).
fn cached_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux)");
    assert!(out.status.success(), "fincore: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("fincore's RES")
}

/// A model file is read to be hashed and read by ONNX Runtime, then never again: once loaded,
/// neither the portable file nor the variant stays in the page cache, where a container's
/// memory cgroup would go on counting it against its limit.
#[tokio::test]
async fn a_loaded_models_files_leave_the_page_cache() {
    let models = models_copy();
    optimize(models.path(), &["diabetes/retina.card.json"]);
    let portable = models.path().join("diabetes/retina.onnx");
    let (variant, _) = paths(&portable, &cpu_class());
    for f in [&portable, &variant] {
        // Written pages are dirty until written back, and only clean pages can be dropped.
        std::fs::File::open(f)
            .and_then(|f| f.sync_all())
            .expect("sync");
        let _ = std::fs::read(f).expect("read");
        assert!(
            cached_bytes(f) > 0,
            "{} is not cached to begin with",
            f.display()
        );
    }
    let app = spawn(models.path(), true).await;
    retina(&app).await;
    assert_eq!(app.model("retina").await["optimized"], cpu_class().as_str());
    // The variant was read by the load, which dropped it before answering.
    let size = std::fs::metadata(&variant).expect("stat").len();
    let cached = cached_bytes(&variant);
    assert!(
        cached < size / 20,
        "{}: {cached} of {size} bytes still cached after the load",
        variant.display()
    );
    // The load does not read the portable file; the service's background hash of it (from
    // start-up, for readiness) does, and drops it once hashed — on a busy machine that may end
    // after the load, so it is waited for.
    let size = std::fs::metadata(&portable).expect("stat").len();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let cached = cached_bytes(&portable);
        if cached < size / 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}: {cached} of {size} bytes still cached 120 s after start-up",
            portable.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The command as the images run it while they are built: the listener on `0.0.0.0` and no
/// credentials set (a service would refuse to start so; the command does not listen). The
/// real binary, built by the test command before the tests.
#[test]
fn the_command_makes_the_variants_where_the_image_is_built() {
    let models = models_copy();
    let bin = medchain_tests::system::debug_bin_dir().join("diabetes-svc");
    let out = std::process::Command::new(&bin)
        .arg("optimize-models")
        .env("DIABETES__SERVER__HOST", "0.0.0.0")
        .env("DIABETES__MODELS__DIR", models.path())
        .env("DIABETES__TELEMETRY__FORMAT", "json")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.lines().count(), 2, "{text}");
    for model in ["retina", "retina.int8"] {
        let (variant, sidecar) = paths(
            &models.path().join(format!("diabetes/{model}.onnx")),
            &cpu_class(),
        );
        assert!(variant.is_file() && sidecar.is_file(), "{text}");
    }
}
