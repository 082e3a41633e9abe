//! The requests the benchmark sends: one tabular record per disease, a 224×224 JPEG per image
//! model (the models' input size: the service's resize is then the identity) and a 3000×2000
//! JPEG (a phone or fundus-camera photo) made from the bundled examples.

use std::io::Cursor;

use image::{DynamicImage, RgbImage, imageops::FilterType};
use serde_json::Value;

use crate::repo_root;

/// Pima record (insulin unknown).
pub fn diabetes_record() -> Value {
    medchain_tests::sample_record("diabetes")
}

/// Cleveland record.
pub fn heart_record() -> Value {
    medchain_tests::sample_record("heart")
}

/// The bundled example the images of `model` (`retina` or `ecg`) are made from.
fn example(model: &str) -> anyhow::Result<DynamicImage> {
    let file = match model {
        "retina" => "models/examples/retina/4-proliferative_dr-0.png",
        _ => "models/examples/ecg/2-myocardial_infarction-0.jpg",
    };
    Ok(image::open(repo_root().join(file))?)
}

fn jpeg(img: &RgbImage, quality: u8) -> anyhow::Result<Vec<u8>> {
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality).encode_image(img)?;
    Ok(out.into_inner())
}

/// A 224×224 JPEG (quality 90).
pub fn small_jpeg(model: &str) -> anyhow::Result<Vec<u8>> {
    let img = example(model)?
        .resize_exact(224, 224, FilterType::Triangle)
        .to_rgb8();
    jpeg(&img, 90)
}

/// A 3000×2000 JPEG (quality 90) with sensor-like noise, so it is the size a real photo of
/// that resolution is (an upscaled smooth image would compress to a fraction of it).
pub fn large_jpeg(model: &str) -> anyhow::Result<Vec<u8>> {
    let mut img = example(model)?
        .resize_exact(3000, 2000, FilterType::Triangle)
        .to_rgb8();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for px in img.pixels_mut() {
        for c in px.0.iter_mut() {
            // xorshift64: deterministic noise of ±6 levels.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state % 13) as i16 - 6;
            *c = (i16::from(*c) + noise).clamp(0, 255) as u8;
        }
    }
    jpeg(&img, 90)
}

/// A 40-megapixel (7300×5470) progressive 4:2:0 JPEG of the model's example, smooth enough to
/// weigh a few hundred KB: a decoder must hold its coefficients at full size whatever the
/// output scale (128 bytes an 8×8 block: about 120 MB).
pub fn progressive_40mp(model: &str) -> anyhow::Result<Vec<u8>> {
    let img = example(model)?
        .resize_exact(7300, 5470, FilterType::Triangle)
        .to_rgb8();
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, 80);
    enc.set_progressive(true);
    enc.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
    enc.encode(img.as_raw(), 7300, 5470, jpeg_encoder::ColorType::Rgb)?;
    Ok(out)
}

/// Checks a file is a JPEG of the expected size (guards the generator above).
#[cfg(test)]
fn dimensions(bytes: &[u8]) -> anyhow::Result<(u32, u32)> {
    let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Jpeg)?;
    Ok((img.width(), img.height()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_have_the_stated_sizes() {
        assert_eq!(
            dimensions(&small_jpeg("retina").unwrap()).unwrap(),
            (224, 224)
        );
        assert_eq!(dimensions(&small_jpeg("ecg").unwrap()).unwrap(), (224, 224));
        let large = large_jpeg("ecg").unwrap();
        assert_eq!(dimensions(&large).unwrap(), (3000, 2000));
        assert!(large.len() > 1_000_000, "{} bytes", large.len());
    }
}
