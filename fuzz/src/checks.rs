//! The properties the fuzz targets check, shared with the test suite, which replays the
//! committed corpus through them on every run (`tests/tests/e2e/fuzz_corpus.rs`):
//!
//! - `json_request`: a prediction request body, as the disease services take it — strict JSON
//!   parsing, validation against each tabular model's card, and (when accepted) the canonical
//!   encoding hashed for the audit record. Any input ends in an accepted request whose feature
//!   vector matches the card, or a 4xx error: never a panic, never a 5xx.
//! - `image_upload`: an uploaded file, as the disease services take it — format sniffing,
//!   header checks (size, decompression bombs), decoding at reduced scale, EXIF orientation,
//!   resizing and normalisation, with the retina card and the services' default limits. Any
//!   input ends in a finite tensor of the model's input size or a 4xx error.

use std::sync::LazyLock;

use actix_web::ResponseError;
use medchain_core::ApiError;
use medchain_core::request::parse_json;
use medchain_serving::card::{ModelCard, Preprocessing};
use medchain_serving::inputs::image::{ImageLimits, decode_cost, nonzero, prepare};
use medchain_serving::inputs::tabular;

fn card(rel: &str) -> ModelCard {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/").to_string() + rel;
    ModelCard::from_file(std::path::Path::new(&path)).expect("model card")
}

static TABULAR: LazyLock<Vec<ModelCard>> = LazyLock::new(|| {
    vec![
        card("diabetes/tabular.card.json"),
        card("heart/tabular.card.json"),
    ]
});

static RETINA: LazyLock<Preprocessing> = LazyLock::new(|| {
    card("diabetes/retina.card.json")
        .preprocessing
        .expect("image card")
});

/// The services' defaults (`config/default.toml` of diabetes-svc and heart-svc).
const LIMITS: ImageLimits = ImageLimits {
    max_bytes: nonzero(10 * 1024 * 1024),
    max_megapixels: 40.0,
    decode_budget_mb: nonzero(128),
    buffer_mb: nonzero(64),
    body_stall_secs: 30,
};

fn client_error(e: &ApiError) {
    let status = e.status_code();
    assert!(status.is_client_error(), "{status} for {e:?}");
}

pub fn json_request(data: &[u8]) {
    // Another route's body, read into a value first.
    if let Err(e) = parse_json::<serde_json::Value>(data) {
        client_error(&e);
    }
    // The tabular route's, read straight from the bytes.
    for card in TABULAR.iter() {
        match tabular::parse(card, data) {
            Ok(input) => {
                assert_eq!(input.features.len(), card.features.len());
                for (f, x) in card.features.iter().zip(&input.features) {
                    assert!(
                        x.is_finite() || (x.is_nan() && f.nullable),
                        "{} = {x}",
                        f.name
                    );
                }
                let canonical = medchain_core::audit::canonical_features(&input.canonical(card))
                    .expect("accepted features have a canonical encoding");
                let _ = medchain_core::audit::sha256(&canonical);
            }
            Err(e) => client_error(&e),
        }
    }
}

pub fn image_upload(data: &[u8]) {
    let pre = &*RETINA;
    // The decode budget's estimate reads the header of anything uploaded, before `prepare`
    // has vetted it: it must not panic or hang on any input.
    let _ = decode_cost(data, pre);
    // Kept as an overlay would keep it (`?explain=cam`).
    match prepare(data, pre, &LIMITS, true) {
        Ok(p) => {
            let (w, h) = pre.input_size();
            let (w, h) = (w as usize, h as usize);
            assert_eq!((p.width as usize, p.height as usize), (w, h));
            assert_eq!(p.tensor.len(), 3 * w * h);
            assert!(p.tensor.iter().all(|x| x.is_finite()));
            assert_eq!(p.rgb.map(|rgb| rgb.len()), Some(3 * w * h));
        }
        Err(e) => client_error(&e),
    }
}
