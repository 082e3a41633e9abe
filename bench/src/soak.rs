//! `medchain-bench soak`: a long stream of requests through the gateway (tabular to both
//! diseases, one in fifty carrying a patient id so chain-svc records it; images to both image
//! models, alternating 224×224 and 3000×2000 JPEGs), in rounds. After a warm-up, every
//! process' RSS and open file descriptors are sampled after each round; the drift is the last
//! sample against the first, and the run fails nothing silently: every non-2xx is counted.

use std::time::Instant;

use serde_json::{Value, json};

use crate::load::{Outcome, Target, drive};
use crate::{Args, inputs, report};
use medchain_tests::system::System;

const ROUNDS: usize = 20;

fn say(msg: &str) {
    eprintln!("==> {msg}");
}

fn sample(sys: &System, round: usize, sent_tabular: usize, sent_images: usize) -> Value {
    let fds = sys.fds();
    json!({
        "round": round,
        "tabular_sent": sent_tabular,
        "images_sent": sent_images,
        "processes": sys.memory().into_iter().map(|(name, m)| {
            let fd = fds.iter().find(|(n, _)| *n == name).map(|(_, f)| *f);
            json!({"name": name, "rss_mb": m.rss_mb, "fds": fd})
        }).collect::<Vec<_>>(),
    })
}

#[derive(Default)]
struct Tally {
    ok: usize,
    failed: usize,
    statuses: std::collections::BTreeMap<u16, usize>,
    first_failure: Option<String>,
}

impl Tally {
    fn add(&mut self, o: &Outcome) {
        self.ok += o.ok();
        self.failed += o.failed();
        for (s, n) in &o.statuses {
            *self.statuses.entry(*s).or_default() += n;
        }
        if self.first_failure.is_none() {
            self.first_failure.clone_from(&o.first_failure);
        }
    }
}

pub async fn run(args: &Args) -> anyhow::Result<Value> {
    let logs = crate::repo_root().join(".data/bench/logs/soak");
    let mut results = report::header(args, "soak")?;
    say("starting the system (release binaries, embedded defaults)");
    let mut sys = System::start(&args.bin_dir, &logs, None, &[]).await?;
    let gw = sys.get("gateway").url();
    let tab = |disease: &str, record: &Value| {
        Target::json(
            format!("{gw}/api/v1/{disease}/predict/tabular"),
            record,
            None,
        )
    };
    let mut audited = inputs::diabetes_record();
    audited["patient_id"] = json!("soak-patient-0001");
    let tabular = [
        tab("diabetes", &inputs::diabetes_record()),
        tab("heart", &inputs::heart_record()),
    ];
    let audited = tab("diabetes", &audited);
    let mut images = Vec::new();
    for (disease, model) in [("diabetes", "retina"), ("heart", "ecg")] {
        let url = format!("{gw}/api/v1/{disease}/predict/{model}");
        images.push(Target::image(
            url.clone(),
            &inputs::small_jpeg(model)?,
            "image/jpeg",
            None,
        ));
        images.push(Target::image(
            url,
            &inputs::large_jpeg(model)?,
            "image/jpeg",
            None,
        ));
    }

    // Long enough for every bounded cache to fill: chain-svc's outbox page cache (4 MB) needs
    // about 10,000 records (scripts/chain_outbox_growth.py), the image paths' allocators a few
    // hundred uploads of each kind. A first soak with a short warm-up (100 records, 40 uploads
    // per kind) counted that filling as drift.
    say("warm-up: every endpoint, until each model is loaded and every cache has filled");
    let mut warm = Tally::default();
    for t in &tabular {
        warm.add(&drive(t, 16, 2000).await);
    }
    warm.add(&drive(&audited, 16, 12_000).await);
    for t in &images {
        warm.add(&drive(t, 4, 100).await);
    }

    let per_round_tab = args.soak_tabular.div_ceil(ROUNDS);
    let per_round_img = args.soak_images.div_ceil(ROUNDS);
    let mut tally = Tally::default();
    let (mut sent_tab, mut sent_img) = (0, 0);
    let mut samples = vec![sample(&sys, 0, 0, 0)];
    let start = Instant::now();
    for round in 1..=ROUNDS {
        // Tabular: 49 in 50 plain, split across the diseases; 1 in 50 recorded.
        let n_audit = per_round_tab / 50;
        let n_plain = per_round_tab - n_audit;
        tally.add(&drive(&tabular[0], 16, n_plain / 2).await);
        tally.add(&drive(&tabular[1], 16, n_plain - n_plain / 2).await);
        tally.add(&drive(&audited, 4, n_audit).await);
        let quarter = per_round_img / images.len();
        for (i, t) in images.iter().enumerate() {
            let n = if i == 0 {
                per_round_img - quarter * (images.len() - 1)
            } else {
                quarter
            };
            tally.add(&drive(t, 4, n).await);
        }
        sent_tab += per_round_tab;
        sent_img += per_round_img;
        samples.push(sample(&sys, round, sent_tab, sent_img));
        eprintln!(
            "    round {round}/{ROUNDS}: {sent_tab} tabular, {sent_img} images, {} failed, {:.0} s",
            tally.failed,
            start.elapsed().as_secs_f64()
        );
    }
    let exited = sys.exited();
    sys.stop();

    let first = &samples[0]["processes"];
    let last = &samples[samples.len() - 1]["processes"];
    let drift: Vec<Value> = first
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let name = p["name"].as_str().unwrap_or_default();
            let end = last
                .as_array()
                .into_iter()
                .flatten()
                .find(|q| q["name"] == name);
            let rss0 = p["rss_mb"].as_f64().unwrap_or(0.0);
            let rss1 = end.and_then(|q| q["rss_mb"].as_f64()).unwrap_or(0.0);
            let max = samples
                .iter()
                .filter_map(|s| {
                    s["processes"]
                        .as_array()?
                        .iter()
                        .find(|q| q["name"] == name)?["rss_mb"]
                        .as_f64()
                })
                .fold(0.0, f64::max);
            json!({
                "name": name,
                "rss_after_warmup_mb": rss0,
                "rss_end_mb": rss1,
                "rss_max_sample_mb": max,
                "drift_pct": if rss0 > 0.0 { (rss1 - rss0) / rss0 * 100.0 } else { 0.0 },
                "fds_after_warmup": p["fds"],
                "fds_end": end.map(|q| q["fds"].clone()),
            })
        })
        .collect();
    results["requests"] = json!({
        "tabular": sent_tab, "images": sent_img, "rounds": ROUNDS,
        "ok": tally.ok, "failed": tally.failed,
        "statuses": tally.statuses.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "first_failure": tally.first_failure,
        "warmup_ok": warm.ok, "warmup_failed": warm.failed,
        "duration_s": start.elapsed().as_secs_f64(),
    });
    results["drift"] = json!(drift);
    results["samples"] = json!(samples);
    results["exited_during_run"] = json!(exited);
    Ok(results)
}
