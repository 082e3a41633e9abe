//! `medchain-bench soak`: a long stream of requests through the gateway (tabular to both
//! diseases, one in fifty carrying a patient id so chain-svc records it; images to both image
//! models, alternating 224×224 and 3000×2000 JPEGs), in rounds. After a warm-up, every
//! process' RSS is read right after each round, and again with its open file descriptors and
//! heap once the services have been quiet for [`SETTLE`] (idle connections closed, allocators
//! trimmed: what is still there then is what stays). The drift is the last sample against the first,
//! and the run fails nothing silently: every non-2xx is counted.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::load::{Outcome, Target, drive};
use crate::results::Header;
use crate::{Args, inputs, results};
use medchain_tests::system::{Cgroups, System};

/// What `medchain-bench soak` writes to `results/soak.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakRun {
    #[serde(flatten)]
    pub header: Header,
    pub requests: Requests,
    /// Per process, the first settled sample against the last.
    pub drift: Vec<Drift>,
    pub samples: Vec<Sample>,
    /// (service, exit status) of any process that exited during the run.
    pub exited_during_run: Vec<(String, String)>,
}

/// What was sent after the warm-up, and how it went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Requests {
    pub tabular: usize,
    pub images: usize,
    pub rounds: usize,
    pub ok: usize,
    pub failed: usize,
    /// HTTP status → how many.
    pub statuses: std::collections::BTreeMap<u16, usize>,
    pub first_failure: Option<String>,
    pub warmup_ok: usize,
    pub warmup_failed: usize,
    pub duration_s: f64,
}

/// One process' memory and descriptors over the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Drift {
    pub name: String,
    pub rss_after_warmup_mb: f64,
    pub rss_end_mb: f64,
    pub rss_max_sample_mb: f64,
    pub rss_min_sample_mb: Option<f64>,
    pub trend_drift_pct: Option<f64>,
    pub drift_pct: f64,
    pub rss_right_after_round_start_mb: f64,
    pub rss_right_after_round_end_mb: f64,
    pub drift_right_after_round_pct: f64,
    pub fds_after_warmup: Option<usize>,
    pub fds_end: Option<usize>,
    pub heap_in_use_after_warmup_mb: Option<f64>,
    pub heap_in_use_end_mb: Option<f64>,
}

/// Every process after a round (round 0: right after the warm-up).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub round: usize,
    pub tabular_sent: usize,
    pub images_sent: usize,
    pub processes: Vec<ProcessSample>,
}

/// One process once the services have been quiet for [`SETTLE`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessSample {
    pub name: String,
    pub rss_mb: f64,
    /// Read right after the round, before the quiet time.
    pub rss_right_after_round_mb: Option<f64>,
    pub fds: Option<usize>,
    pub heap_in_use_mb: Option<f64>,
    pub heap_free_mb: Option<f64>,
}

impl Sample {
    pub fn process(&self, name: &str) -> Option<&ProcessSample> {
        self.processes.iter().find(|p| p.name == name)
    }
}

const ROUNDS: usize = 20;

/// Quiet time before each settled sample: longer than the services' HTTP keep-alive (actix-web's
/// 5 s), so the round's idle connections have closed — sampled any earlier, the count of open
/// descriptors depended on whether a sample fell before or after that timeout — and than two
/// of their allocator trim periods, so every service has handed back what the round's last
/// requests freed.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(6);
const _: () = assert!(SETTLE.as_millis() > 2 * medchain_core::memory::TRIM_EVERY.as_millis());

fn say(msg: &str) {
    eprintln!("==> {msg}");
}

/// RSS right after the round, then everything once the services have been quiet for
/// [`SETTLE`].
async fn sample(sys: &System, round: usize, sent_tabular: usize, sent_images: usize) -> Sample {
    let busy = sys.memory();
    tokio::time::sleep(SETTLE).await;
    let fds = sys.fds();
    let heap = sys.heap().await;
    let processes = sys
        .memory()
        .into_iter()
        .map(|(name, m)| {
            let fd = fds.iter().find(|(n, _)| *n == name).map(|(_, f)| *f);
            let heap = heap.iter().find(|(n, _)| *n == name).and_then(|(_, h)| *h);
            let busy = busy.iter().find(|(n, _)| *n == name).map(|(_, b)| b.rss_mb);
            ProcessSample {
                name,
                rss_mb: m.rss_mb,
                rss_right_after_round_mb: busy,
                fds: fd,
                heap_in_use_mb: heap.map(|h| h.in_use_mb),
                heap_free_mb: heap.map(|h| h.free_mb),
            }
        })
        .collect();
    Sample {
        round,
        tabular_sent: sent_tabular,
        images_sent: sent_images,
        processes,
    }
}

#[derive(Default)]
struct Tally {
    ok: usize,
    failed: usize,
    statuses: std::collections::BTreeMap<u16, usize>,
    first_failure: Option<String>,
}

impl Tally {
    fn merged(mut self, o: Tally) -> Tally {
        self.merge(o);
        self
    }

    fn merge(&mut self, o: Tally) {
        self.ok += o.ok;
        self.failed += o.failed;
        for (s, n) in o.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        if self.first_failure.is_none() {
            self.first_failure = o.first_failure;
        }
    }

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

/// One round: `n_tab` tabular requests (49 in 50 plain, split across the diseases, 1 in 50
/// recorded) then `n_img` uploads split across the image targets.
async fn one_round(
    tabular: &[Target; 2],
    audited: &Target,
    images: &[Target],
    n_tab: usize,
    n_img: usize,
) -> Tally {
    let mut tally = Tally::default();
    let n_audit = n_tab / 50;
    let n_plain = n_tab - n_audit;
    tally.add(&drive(&tabular[0], 16, n_plain / 2).await);
    tally.add(&drive(&tabular[1], 16, n_plain - n_plain / 2).await);
    tally.add(&drive(audited, 4, n_audit).await);
    let quarter = n_img / images.len();
    for (i, t) in images.iter().enumerate() {
        let n = if i == 0 {
            n_img - quarter * (images.len() - 1)
        } else {
            quarter
        };
        tally.add(&drive(t, 4, n).await);
    }
    tally
}

/// The drift of the least-squares line through the samples (one per round), from its value at
/// the first sample to its value at the last, in % of the former: growth that goes on shows
/// here whatever the allocator's ups and downs at the two samples `drift_pct` compares.
fn trend_pct(series: &[f64]) -> Option<f64> {
    let n = series.len() as f64;
    if series.len() < 2 {
        return None;
    }
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = series.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, y) in series.iter().enumerate() {
        let dx = i as f64 - mean_x;
        sxy += dx * (y - mean_y);
        sxx += dx * dx;
    }
    let slope = sxy / sxx;
    let start = mean_y - slope * mean_x;
    (start > 0.0).then(|| slope * (n - 1.0) / start * 100.0)
}

pub async fn run(args: &Args) -> anyhow::Result<SoakRun> {
    let logs = crate::repo_root().join(".data/bench/logs/soak");
    let header = results::run_header(args, "soak");
    say("starting the system (release binaries, embedded defaults)");
    let mut sys = System::start(&args.bin_dir, &logs, Cgroups::None, &[]).await?;
    let mix = Mix::of(&sys)?;
    let per_round_tab = args.soak_tabular.div_ceil(ROUNDS);
    let per_round_img = args.soak_images.div_ceil(ROUNDS);
    let round = || mix.round(per_round_tab, per_round_img);
    let warm = mix.warm_up().await.merged(round().await);
    let mut tally = Tally::default();
    let (mut sent_tab, mut sent_img) = (0, 0);
    let mut samples = vec![sample(&sys, 0, 0, 0).await];
    let start = Instant::now();
    for n in 1..=ROUNDS {
        tally.merge(round().await);
        sent_tab += per_round_tab;
        sent_img += per_round_img;
        samples.push(sample(&sys, n, sent_tab, sent_img).await);
        eprintln!(
            "    round {n}/{ROUNDS}: {sent_tab} tabular, {sent_img} images, {} failed, {:.0} s",
            tally.failed,
            start.elapsed().as_secs_f64()
        );
    }
    let exited = sys.exited();
    sys.stop();

    Ok(SoakRun {
        header,
        requests: Requests {
            tabular: sent_tab,
            images: sent_img,
            rounds: ROUNDS,
            ok: tally.ok,
            failed: tally.failed,
            statuses: tally.statuses,
            first_failure: tally.first_failure,
            warmup_ok: warm.ok,
            warmup_failed: warm.failed,
            duration_s: start.elapsed().as_secs_f64(),
        },
        drift: drift(&samples),
        samples,
        exited_during_run: exited,
    })
}

/// The soak's requests, through the gateway: both tabular models, the audited diabetes
/// record, and a small and a large upload per image model.
struct Mix {
    tabular: [Target; 2],
    audited: Target,
    images: Vec<Target>,
}

impl Mix {
    fn of(sys: &System) -> anyhow::Result<Mix> {
        let gw = sys.get("gateway").url();
        let key = sys.api_key.clone();
        let tab = |disease: &str, record: &Value| {
            Target::json(
                format!("{gw}/api/v1/{disease}/predict/tabular"),
                record,
                None,
            )
            .signed_in(&key)
        };
        let mut audited = inputs::diabetes_record();
        audited["patient_id"] = json!("soak-patient-0001");
        let mut images = Vec::new();
        for (disease, model) in [("diabetes", "retina"), ("heart", "ecg")] {
            let url = format!("{gw}/api/v1/{disease}/predict/{model}");
            let small = inputs::small_jpeg(model)?;
            images.push(Target::image(url.clone(), &small, "image/jpeg", None).signed_in(&key));
            let large = inputs::large_jpeg(model)?;
            images.push(Target::image(url, &large, "image/jpeg", None).signed_in(&key));
        }
        Ok(Mix {
            tabular: [
                tab("diabetes", &inputs::diabetes_record()),
                tab("heart", &inputs::heart_record()),
            ],
            audited: tab("diabetes", &audited),
            images,
        })
    }

    /// Every endpoint until each model is loaded and every cache has filled. Long enough for
    /// every bounded cache to fill: chain-svc's outbox page cache (4 MB) needs about 10,000
    /// records (bench/probes/chain_outbox_growth.py), the image paths' allocators a few hundred
    /// uploads of each kind. A first soak with a short warm-up (100 records, 40 uploads per
    /// kind) counted that filling as drift.
    async fn warm_up(&self) -> Tally {
        say("warm-up: every endpoint, until each model is loaded and every cache has filled");
        let mut warm = Tally::default();
        for t in &self.tabular {
            warm.add(&drive(t, 16, 2000).await);
        }
        warm.add(&drive(&self.audited, 16, 12_000).await);
        for t in &self.images {
            warm.add(&drive(t, 4, 100).await);
        }
        // The caller ends it with one round of the soak's own mix, so the baseline sample is
        // taken in the state every later sample is taken in (the gateway's upstream connection
        // pools refilled by the same concurrency, the last requests the same kind). Without
        // it, a run counted the connections re-opened by the first round as file-descriptor
        // growth.
        warm
    }

    async fn round(&self, tabular: usize, images: usize) -> Tally {
        one_round(&self.tabular, &self.audited, &self.images, tabular, images).await
    }
}

/// Each process' first settled sample against its last, and the trend through all of them.
fn drift(samples: &[Sample]) -> Vec<Drift> {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return Vec::new();
    };
    let pct = |a: f64, b: f64| if a > 0.0 { (b - a) / a * 100.0 } else { 0.0 };
    first
        .processes
        .iter()
        .map(|p| {
            let end = last.process(&p.name);
            let rss1 = end.map_or(0.0, |q| q.rss_mb);
            let busy0 = p.rss_right_after_round_mb.unwrap_or(0.0);
            let busy1 = end.and_then(|q| q.rss_right_after_round_mb).unwrap_or(0.0);
            let series: Vec<f64> = samples
                .iter()
                .filter_map(|s| Some(s.process(&p.name)?.rss_mb))
                .collect();
            let min = series.iter().copied().fold(f64::INFINITY, f64::min);
            Drift {
                name: p.name.clone(),
                rss_after_warmup_mb: p.rss_mb,
                rss_end_mb: rss1,
                rss_max_sample_mb: series.iter().copied().fold(0.0, f64::max),
                rss_min_sample_mb: min.is_finite().then_some(min),
                trend_drift_pct: trend_pct(&series),
                drift_pct: pct(p.rss_mb, rss1),
                rss_right_after_round_start_mb: busy0,
                rss_right_after_round_end_mb: busy1,
                drift_right_after_round_pct: pct(busy0, busy1),
                fds_after_warmup: p.fds,
                fds_end: end.and_then(|q| q.fds),
                heap_in_use_after_warmup_mb: p.heap_in_use_mb,
                heap_in_use_end_mb: end.and_then(|q| q.heap_in_use_mb),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::trend_pct;

    #[test]
    fn trend_follows_growth_not_the_endpoints() {
        // Steady growth from 100 to 110 over the run: 10 %.
        let grow: Vec<f64> = (0..=20).map(|i| 100.0 + f64::from(i) * 0.5).collect();
        assert!((trend_pct(&grow).unwrap() - 10.0).abs() < 1e-9);
        // Flat with a low first sample and a high last one: the endpoints say +10 %, the trend
        // a quarter of that.
        let mut flat = vec![100.0; 21];
        flat[0] = 95.0;
        flat[20] = 104.5;
        assert!(trend_pct(&flat).unwrap().abs() < 3.0);
        assert_eq!(trend_pct(&[100.0]), None);
    }
}
