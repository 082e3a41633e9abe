//! `<service> optimize-models [CARD...]`: makes this CPU's offline-optimised variant of each
//! image model beside its file ([`crate::model::optimized`]), so that the service loads it
//! without the transient copy of its weights. Run where the service will run, or at least on
//! the same CPU class — the images run it as they are built; a variant made on another class
//! is simply not used. With no cards named: the service's configured image model and every
//! other image model card in its disease's folder (`<models.dir>/<disease>/*.card.json`).

use std::path::{Path, PathBuf};

use crate::card::ModelCard;
use crate::model::ModelSettings;
use crate::model::optimized::Made;
use crate::model::remote::Location;
use crate::settings::{DiseaseSettings, DiseaseSpec};
use medchain_core::domain::Modality;

/// What became of one model.
#[derive(Debug)]
pub enum Outcome {
    Made(Box<Made>),
    /// Configured by URL: nothing to optimise ahead of the download.
    Remote,
    /// Not named, and its file is not here (an image built without it, say): skipped.
    Absent,
}

/// Answers the `optimize-models` command line, or `None` for any other (the caller serves).
pub fn command(spec: &DiseaseSpec) -> Option<i32> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("optimize-models") {
        return None;
    }
    let settings = match DiseaseSettings::load_unserved(spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: {e}", spec.service);
            return Some(2);
        }
    };
    let cards: Vec<PathBuf> = args.map(PathBuf::from).collect();
    let results = optimize_models(spec, &settings, &cards);
    if results.is_empty() {
        println!("{}: no image model to optimise", spec.service);
    }
    let mut failed = false;
    for (card, result) in results {
        match result {
            Ok(Outcome::Made(m)) => println!(
                "{}: {} → {} ({:.1} MB, CPU {}, ONNX Runtime {}, loads with {:.1} MB, answer \
                 within {:e} of the full optimisation's)",
                spec.service,
                card.display(),
                m.variant.display(),
                m.sidecar.size_bytes as f64 / 1048576.0,
                m.sidecar.cpu,
                m.sidecar.onnxruntime,
                m.sidecar.load_cost_bytes as f64 / 1048576.0,
                m.max_diff
            ),
            Ok(Outcome::Remote) => println!(
                "{}: {}: configured by URL, not optimised",
                spec.service,
                card.display()
            ),
            Ok(Outcome::Absent) => println!(
                "{}: {}: its model file is not here, skipped",
                spec.service,
                card.display()
            ),
            Err(e) => {
                failed = true;
                eprintln!("{}: {}: {e:#}", spec.service, card.display());
            }
        }
    }
    Some(i32::from(failed))
}

/// Makes the variants of `cards` (relative to `models.dir`, or absolute), or with none named of
/// the configured image model and the other image model cards beside it whose files are here;
/// tabular cards named are skipped (nothing in a tree ensemble's graph depends on the CPU).
pub fn optimize_models(
    spec: &DiseaseSpec,
    settings: &DiseaseSettings,
    cards: &[PathBuf],
) -> Vec<(PathBuf, anyhow::Result<Outcome>)> {
    let dir = settings.models.dir();
    let configured = dir.join(&settings.models.image.card);
    let named = !cards.is_empty();
    let chosen = if !named {
        let mut found = image_cards(&dir.join(spec.disease));
        if !found.iter().any(|c| same_file(c, &configured)) {
            found.insert(0, configured.clone());
        }
        found
    } else {
        cards.iter().map(|c| dir.join(c)).collect()
    };
    chosen
        .into_iter()
        .filter(|c| ModelCard::from_file(c).map_or(true, |card| card.modality == Modality::Image))
        .map(|card| {
            // The configured model keeps its configured file; another card, its own.
            let model_settings = if same_file(&card, &configured) {
                settings.models.image.clone()
            } else {
                ModelSettings {
                    card: card.display().to_string(),
                    file: Location::default(),
                    ..settings.models.image.clone()
                }
            };
            let model = settings.lazy_model(spec.image_route, &model_settings);
            let absent = !named && !model_settings.file.is_url() && !model.onnx_path().is_file();
            let outcome = if absent {
                Ok(Outcome::Absent)
            } else {
                model
                    .make_optimized()
                    .map(|m| m.map_or(Outcome::Remote, |m| Outcome::Made(Box::new(m))))
            };
            (card, outcome)
        })
        .collect()
}

/// The image model cards in `folder`, in name order.
fn image_cards(folder: &Path) -> Vec<PathBuf> {
    let mut cards: Vec<PathBuf> = std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".card.json"))
        .filter(|p| ModelCard::from_file(p).is_ok_and(|c| c.modality == Modality::Image))
        .collect();
    cards.sort();
    cards
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
