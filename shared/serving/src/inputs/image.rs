//! Image decoding and preprocessing exactly as the models were trained (see the card's
//! `preprocessing`): sniff the format (JPEG/PNG only), check the pixel count from the header
//! before decoding, decode (large JPEGs at reduced scale with DCT scaling), apply EXIF
//! orientation (when the model was trained so), convert to RGB8, resize (the whole image, or its
//! shorter side) with one of Pillow's antialiased filters (bit-exact), centre-crop, put the
//! channels in the model's order and normalise to NCHW float32.

use std::io::Cursor;
use std::num::NonZeroUsize;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use serde::Deserialize;

use crate::card::{ChannelOrder, Preprocessing};
use crate::inputs::{jpeg, resample};
use medchain_core::error::ApiError;

pub use super::IMAGE_FIELD;

/// `n`, which must not be zero: for limits written in code (in a `const`, a zero fails the
/// build).
pub const fn nonzero(n: usize) -> NonZeroUsize {
    match NonZeroUsize::new(n) {
        Some(n) => n,
        None => panic!("a limit of zero"),
    }
}

/// Upload limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageLimits {
    /// Largest upload, bytes (413 beyond).
    pub max_bytes: NonZeroUsize,
    /// Largest decoded image, megapixels, read from the header before decoding (413 beyond).
    pub max_megapixels: f64,
    /// Memory the service's decodes may hold at once, MiB. Each decode reserves what it will
    /// need (read from the header: the decoder's buffer at the file's bit depth and channels,
    /// plus the RGB copy) before it starts, and waits while others hold the budget; an image
    /// that alone needs more is refused (413). A 10 MB upload can be a 40-megapixel 16-bit
    /// RGBA PNG that decodes to 320 MB.
    pub decode_budget_mb: NonZeroUsize,
    /// Upload bytes the service holds at once (received and not yet decoded), MiB. Each
    /// body's bytes are reserved as they arrive, so a slow sender holds only what it has sent;
    /// a body that would go past the buffer waits — its sender is paused — until earlier ones
    /// are decoded. (When only bodies still arriving hold it, the oldest may go past it: at
    /// most one upload more, see `budget::UploadBuffer`.)
    pub buffer_mb: NonZeroUsize,
    /// A sender that sends nothing of its body for this long, seconds, is answered 408. Time
    /// the service itself keeps the sender paused does not count.
    pub body_stall_secs: u64,
}

/// What preprocessing produced.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// `[3, H, W]` float32, normalised.
    pub tensor: Vec<f32>,
    /// The same image as RGB8, `H×W×3` (before normalisation, in RGB order whatever the
    /// model's), when asked for: what a heat-map overlay is drawn on.
    pub rgb: Option<Vec<u8>>,
    pub width: u32,
    pub height: u32,
    /// The image as uploaded: format and size.
    pub format: &'static str,
    pub original_width: u32,
    pub original_height: u32,
    /// 1, 2, 4 or 8: the JPEG DCT reduction used while decoding.
    pub decode_scale: u32,
}

fn unsupported(detail: String) -> ApiError {
    ApiError::UnsupportedMediaType {
        detail,
        field: Some(IMAGE_FIELD.into()),
    }
}

fn corrupt(e: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(IMAGE_FIELD, format!("the image cannot be decoded: {e}"))
}

/// What decoding and preprocessing `bytes` for a model of input size `pre.resize` will hold
/// at its peak, bytes, from the header alone — the largest of its steps: the decoder's own
/// buffers and output (see `jpeg` for JPEG; for PNG its output at the file's bit depth and
/// channels, palette expanded, and its row buffers), the RGB copy unless the output is 8-bit
/// RGB, the EXIF-turned copy, the resize's intermediate rows, the tensor and the crop an overlay
/// keeps (when the card crops). Checked against a counting allocator over a corpus of every
/// kind accepted (`tests/tests/decode_memory.rs`).
/// `None` when the header cannot be read — [`prepare`] then answers with the precise error.
pub fn decode_cost(bytes: &[u8], pre: &Preprocessing) -> Option<u64> {
    let format = image::guess_format(bytes).ok()?;
    let (tw, th) = pre.input_size();
    let (decoder, out, w, h, geometry) = match format {
        ImageFormat::Jpeg => {
            let header = jpeg::header(bytes).ok()??;
            let geometry = Geometry::new(bytes, format, header.width, header.height, pre);
            let plan = header.plan(geometry.plan_width, geometry.plan_height);
            let (w, h) = (plan.out_width, plan.out_height);
            let out = u64::from(w) * u64::from(h) * header.output_channels();
            let decoder = if header.decoded_in_full(&plan) {
                header.zune_bytes()
            } else {
                header.decoder_bytes(&plan)
            };
            (decoder, out, w, h, geometry)
        }
        ImageFormat::Png => {
            let mut decoder = ImageReader::with_format(Cursor::new(bytes), ImageFormat::Png)
                .into_decoder()
                .ok()?;
            let (w, h) = decoder.dimensions();
            let out = decoder.total_bytes();
            let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
            drop(decoder);
            let geometry = Geometry::oriented(orientation, w, h, pre);
            // Two raw rows (this one and the one it is filtered against) at the file's depth,
            // at most 8 bytes a pixel.
            let rows = 2 * u64::from(w) * 8;
            (out + rows, out, w, h, geometry)
        }
        _ => return None,
    };
    let (rw, rh) = geometry.resized;
    let rgb = u64::from(w) * u64::from(h) * 3;
    let converted = if out == rgb { out } else { out + rgb };
    let turned = if geometry.orientation == Orientation::NoTransforms {
        rgb
    } else {
        2 * rgb
    };
    let tensor = 3 * u64::from(tw) * u64::from(th) * 4;
    let resized = 3 * u64::from(rw) * u64::from(rh);
    let resize = rgb + resample::scratch_bytes(w, h, rw, rh) + resized;
    // The crop kept for an overlay, when one is asked for and the card crops.
    let cropped = if (rw, rh) == (tw, th) {
        0
    } else {
        3 * u64::from(tw) * u64::from(th)
    };
    Some(
        [
            decoder,
            converted,
            turned,
            resize,
            resized + tensor + cropped,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
            + FIXED_BYTES,
    )
}

/// Where an upload's pixels go: its orientation (when the card applies it), the size the upright
/// image is resized to, and that size in the file's own frame (what the JPEG decoder plans for).
struct Geometry {
    orientation: Orientation,
    resized: (u32, u32),
    plan_width: u32,
    plan_height: u32,
}

impl Geometry {
    /// From the file: its EXIF orientation read from its header (when the card applies it).
    fn new(bytes: &[u8], format: ImageFormat, w: u32, h: u32, pre: &Preprocessing) -> Self {
        let orientation = if !pre.exif_orientation {
            Orientation::NoTransforms
        } else if format == ImageFormat::Jpeg {
            jpeg::orientation(bytes)
        } else {
            ImageReader::with_format(Cursor::new(bytes), format)
                .into_decoder()
                .ok()
                .and_then(|mut d| d.orientation().ok())
                .unwrap_or(Orientation::NoTransforms)
        };
        Self::oriented(orientation, w, h, pre)
    }

    /// For a `w`×`h` file with EXIF `orientation` (ignored unless the card applies it).
    fn oriented(orientation: Orientation, w: u32, h: u32, pre: &Preprocessing) -> Self {
        let orientation = if pre.exif_orientation {
            orientation
        } else {
            Orientation::NoTransforms
        };
        let swaps = matches!(
            orientation,
            Orientation::Rotate90
                | Orientation::Rotate270
                | Orientation::Rotate90FlipH
                | Orientation::Rotate270FlipH
        );
        let upright = if swaps { (h, w) } else { (w, h) };
        let resized = pre.resized_size(upright.0, upright.1);
        let (plan_width, plan_height) = if swaps {
            (resized.1, resized.0)
        } else {
            resized
        };
        Self {
            orientation,
            resized,
            plan_width,
            plan_height,
        }
    }
}

/// Headers, tables and small buffers of any decode (Huffman and quantisation tables, the
/// inflater's window), bytes: at most 25 KB over the corpus of `decode_cost`.
const FIXED_BYTES: u64 = 64 << 10;

/// The file's format if it is one the services take: JPEG (whole, with its end-of-image
/// marker) or PNG.
fn accepted_format(bytes: &[u8]) -> Result<ImageFormat, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::invalid(IMAGE_FIELD, "the image file is empty"));
    }
    let format = match image::guess_format(bytes) {
        Ok(ImageFormat::Jpeg) => ImageFormat::Jpeg,
        Ok(ImageFormat::Png) => ImageFormat::Png,
        Ok(other) => {
            return Err(unsupported(format!(
                "only JPEG and PNG images are accepted, this is {}",
                other.extensions_str().first().unwrap_or(&"another format")
            )));
        }
        Err(_) => {
            return Err(unsupported(
                "the file is not a JPEG or PNG image".to_string(),
            ));
        }
    };
    if format == ImageFormat::Jpeg && !has_jpeg_end(bytes) {
        return Err(corrupt("the JPEG is truncated (no end-of-image marker)"));
    }
    Ok(format)
}

/// Decodes and preprocesses an upload for a model with preprocessing `pre`; with `keep_rgb`,
/// also keeps the model's input as RGB8 (`Prepared::rgb`).
pub fn prepare(
    bytes: &[u8],
    pre: &Preprocessing,
    limits: &ImageLimits,
    keep_rgb: bool,
) -> Result<Prepared, ApiError> {
    let format = accepted_format(bytes)?;
    let jpeg_header = match format {
        ImageFormat::Jpeg => Some(
            jpeg::header(bytes)?.ok_or_else(|| corrupt("the JPEG has no readable frame header"))?,
        ),
        _ => None,
    };
    let (w, h) = match &jpeg_header {
        Some(header) => (header.width, header.height),
        None => ImageReader::with_format(Cursor::new(bytes), format)
            .into_dimensions()
            .map_err(corrupt)?,
    };
    let pixels = u64::from(w) * u64::from(h);
    let max_pixels = (limits.max_megapixels * 1e6) as u64;
    if pixels > max_pixels {
        return Err(ApiError::TooLarge {
            detail: format!(
                "the image is {w}×{h} = {:.1} megapixels; the limit is {} megapixels",
                pixels as f64 / 1e6,
                limits.max_megapixels
            ),
            field: Some(IMAGE_FIELD.into()),
        });
    }
    if w == 0 || h == 0 {
        return Err(corrupt("zero width or height"));
    }
    let geometry = Geometry::new(bytes, format, w, h, pre);
    let (rgb, scale) = match &jpeg_header {
        Some(header) => {
            let plan = header.plan(geometry.plan_width, geometry.plan_height);
            let rgb = if header.decoded_in_full(&plan) {
                decode_with_image(bytes, format, max_pixels, geometry.orientation)?
            } else {
                jpeg::decode(bytes, &plan, geometry.orientation)?
            };
            (rgb, 8 / plan.dct_scale)
        }
        None => (
            decode_with_image(bytes, format, max_pixels, geometry.orientation)?,
            1,
        ),
    };
    let (rw, rh) = geometry.resized;
    let resized = resize(&rgb, rw, rh, pre);
    drop(rgb);
    let (tw, th) = pre.input_size();
    let tensor = normalise(&resized, rw, rh, pre);
    // The resized image is already the model's input unless the card crops it (no copy then).
    let rgb = keep_rgb.then(|| {
        if (rw, rh) == (tw, th) {
            resized
        } else {
            crop(&resized, rw, rh, pre)
        }
    });
    Ok(Prepared {
        tensor,
        rgb,
        width: tw,
        height: th,
        format: if format == ImageFormat::Jpeg {
            "jpeg"
        } else {
            "png"
        },
        original_width: w,
        original_height: h,
        decode_scale: scale,
    })
}

/// Whether a JPEG ends (give or take a little trailing padding) with its EOI marker. Inside
/// entropy-coded data 0xFF is always stuffed or a restart marker, so a missing FFD9 near the
/// end means the file was cut short; lenient decoders would otherwise fill the rest with grey.
fn has_jpeg_end(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Decoded with the `image` crate — PNG (any colour type and depth, palette, Adam7) and JPEGs
/// decoded in full (zune-jpeg: closest to the libjpeg the models were trained with, see `jpeg`)
/// — converted to RGB8 first and then turned by `orientation` (turning the RGB copy costs 3
/// bytes a pixel, turning a 16-bit RGBA image 8).
fn decode_with_image(
    bytes: &[u8],
    format: ImageFormat,
    max_pixels: u64,
    orientation: Orientation,
) -> Result<RgbImage, ApiError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    // Worst case RGBA 16-bit: 8 bytes a pixel.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(corrupt)?;
    let img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    let mut rgb = DynamicImage::ImageRgb8(match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    });
    rgb.apply_orientation(orientation);
    Ok(match rgb {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

/// The card's antialiased resize, bit-exact with Pillow's (see `resample`).
fn resize(rgb: &RgbImage, tw: u32, th: u32, pre: &Preprocessing) -> Vec<u8> {
    let (w, h) = rgb.dimensions();
    resample::resize_rgb8(
        rgb.as_raw(),
        w as usize,
        h as usize,
        tw as usize,
        th as usize,
        pre.resize.filter,
    )
}

/// The rows of the centre crop of the resized HWC u8 image (`w`×`h`), each HWC u8.
fn crop_rows<'a>(
    hwc: &'a [u8],
    w: u32,
    h: u32,
    pre: &Preprocessing,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    let (tw, th) = pre.input_size();
    let (left, top) = pre.crop_origin(w, h);
    (0..th as usize).map(move |y| {
        let row = (top as usize + y) * w as usize + left as usize;
        &hwc[row * 3..(row + tw as usize) * 3]
    })
}

/// The centre crop of the resized HWC u8 image (`w`×`h`), still HWC u8.
fn crop(hwc: &[u8], w: u32, h: u32, pre: &Preprocessing) -> Vec<u8> {
    let (tw, th) = pre.input_size();
    let mut out = Vec::with_capacity(3 * (tw * th) as usize);
    for row in crop_rows(hwc, w, h, pre) {
        out.extend_from_slice(row);
    }
    out
}

/// The centre crop of the resized HWC u8 image (`w`×`h`) → CHW f32 in the model's channel order,
/// `(v * scale - mean) / std` in the same float32 order as the Python side (`v / 255` when the
/// scale is 1/255, as `ToTensor` divides).
fn normalise(hwc: &[u8], w: u32, h: u32, pre: &Preprocessing) -> Vec<f32> {
    let (tw, th) = pre.input_size();
    let plane = (tw * th) as usize;
    let mut out = vec![0f32; 3 * plane];
    let order = match pre.channel_order {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };
    let divide = pre.scale == 1.0 / 255.0;
    let value = |v: u8| {
        if divide {
            f32::from(v) / 255.0
        } else {
            f32::from(v) * pre.scale
        }
    };
    for (y, src) in crop_rows(hwc, w, h, pre).enumerate() {
        for (x, px) in src.chunks_exact(3).enumerate() {
            let i = y * tw as usize + x;
            for (c, &from) in order.iter().enumerate() {
                out[c * plane + i] = (value(px[from]) - pre.mean[c]) / pre.std[c];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card::{Filter, Resize};

    fn pre() -> Preprocessing {
        Preprocessing {
            resize: Resize {
                width: Some(224),
                height: Some(224),
                shorter_side: None,
                filter: Filter::BilinearAntialiased,
                keep_aspect: false,
            },
            crop: None,
            exif_orientation: true,
            channel_order: ChannelOrder::Rgb,
            scale: 1.0 / 255.0,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            layout: "NCHW".into(),
        }
    }

    fn limits() -> ImageLimits {
        ImageLimits {
            max_bytes: nonzero(10 << 20),
            max_megapixels: 40.0,
            decode_budget_mb: nonzero(128),
            buffer_mb: nonzero(64),
            body_stall_secs: 30,
        }
    }

    fn jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
            .encode_image(img)
            .expect("encode");
        out
    }

    fn png_of(img: DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).expect("encode");
        out.into_inner()
    }

    /// Every case of `models/examples/preprocess/cases.json`: the tensor Pillow and numpy make
    /// of a PNG (each filter, both resize kinds, crops, BGR, another scale, EXIF on and off),
    /// made here by the service's own code.
    #[test]
    fn preprocessing_matches_the_python_side_for_every_option() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/examples/preprocess");
        let cases: Vec<serde_json::Value> = serde_json::from_str(
            &std::fs::read_to_string(dir.join("cases.json")).expect("cases.json"),
        )
        .expect("parse cases.json");
        assert!(cases.len() >= 10, "{} cases", cases.len());
        for case in &cases {
            let name = case["name"].as_str().expect("name");
            let pre: Preprocessing =
                serde_json::from_value(case["preprocessing"].clone()).expect("preprocessing");
            pre.check().unwrap_or_else(|e| panic!("{name}: {e}"));
            let bytes =
                std::fs::read(dir.join(case["input"].as_str().expect("input"))).expect("png");
            let got =
                prepare(&bytes, &pre, &limits(), true).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            let raw =
                std::fs::read(dir.join(case["tensor"].as_str().expect("tensor"))).expect("f32");
            let want: Vec<f32> = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let shape: Vec<u32> = serde_json::from_value(case["shape"].clone()).expect("shape");
            assert_eq!([1, 3, got.height, got.width], shape[..], "{name}: shape");
            assert_eq!(got.tensor.len(), want.len(), "{name}: length");
            let worst = got
                .tensor
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            // One 8-bit level is 1/255/std ≈ 0.017 here; float32 rounding is below 1e-6.
            assert!(worst <= 1e-5, "{name}: max |diff| {worst}");
            // The kept RGB8 image is the tensor's image: the same crop, in RGB order.
            let rgb = got.rgb.as_ref().expect("kept");
            let (w, h) = (got.width as usize, got.height as usize);
            assert_eq!(rgb.len(), 3 * w * h, "{name}: RGB length");
            let order = match pre.channel_order {
                ChannelOrder::Rgb => [0, 1, 2],
                ChannelOrder::Bgr => [2, 1, 0],
            };
            for (i, px) in rgb.chunks_exact(3).enumerate() {
                for (c, &from) in order.iter().enumerate() {
                    let v = (f32::from(px[from]) * pre.scale - pre.mean[c]) / pre.std[c];
                    let t = got.tensor[c * w * h + i];
                    assert!((v - t).abs() <= 1e-4, "{name}: pixel {i} channel {c}");
                }
            }
            let plain = prepare(&bytes, &pre, &limits(), false).expect("again");
            assert!(plain.rgb.is_none() && plain.tensor == got.tensor, "{name}");
        }
    }

    #[test]
    fn decode_cost_follows_bit_depth_channels_and_scale() {
        // (The bytes themselves are checked against a counting allocator in
        // tests/tests/decode_memory.rs.)
        let px = 2000u64 * 1500;
        let rgb8 = png_of(DynamicImage::ImageRgb8(RgbImage::new(2000, 1500)));
        let rgb8 = decode_cost(&rgb8, &pre()).expect("cost");
        assert!(rgb8 >= px * 3 && rgb8 < px * 4, "{rgb8}");
        // 16-bit RGBA: the decoder's 8 bytes a pixel, then beside it the 8-bit RGB copy.
        let rgba16 = DynamicImage::ImageRgba16(image::ImageBuffer::new(2000, 1500));
        let rgba16 = decode_cost(&png_of(rgba16), &pre()).expect("cost");
        assert!(rgba16 >= px * 11 && rgba16 < px * 12, "{rgba16}");
        // A JPEG large enough to be decoded at reduced scale costs a fraction of its pixels.
        let big = jpeg(&RgbImage::new(2000, 1000), 80);
        let cost = decode_cost(&big, &pre()).expect("cost");
        assert!(cost < 2000 * 1000 * 3, "{cost}");
        assert_eq!(decode_cost(b"not an image", &pre()), None);
    }

    fn red_at(t: &[f32], x: usize, y: usize) -> f32 {
        t[y * 224 + x]
    }

    #[test]
    fn exif_orientation_is_applied() {
        // Left half red, right half blue; orientation 6 = rotate 90° clockwise to display,
        // which puts the left (red) half on top.
        let img = RgbImage::from_fn(80, 40, |x, _| {
            if x < 40 {
                image::Rgb([250, 0, 0])
            } else {
                image::Rgb([0, 0, 250])
            }
        });
        let upright = prepare(&jpeg(&img, 95), &pre(), &limits(), false).expect("plain");
        assert!(red_at(&upright.tensor, 20, 112) > 1.5 && red_at(&upright.tensor, 200, 112) < 0.0);
        let rotated = prepare(
            &medchain_tests::with_orientation(&jpeg(&img, 95), 6),
            &pre(),
            &limits(),
            false,
        )
        .expect("with exif");
        assert_eq!((rotated.original_width, rotated.original_height), (80, 40));
        assert!(red_at(&rotated.tensor, 112, 20) > 1.5, "top should be red");
        assert!(
            red_at(&rotated.tensor, 112, 200) < 0.0,
            "bottom should be blue"
        );
    }

    #[test]
    fn large_jpegs_decode_at_reduced_scale_with_the_same_result() {
        let img = RgbImage::from_fn(2400, 1800, |x, y| {
            let v = |f: f32| (127.0 + 120.0 * f.sin()) as u8;
            image::Rgb([
                v(x as f32 / 97.0),
                v(y as f32 / 61.0),
                v((x + y) as f32 / 143.0),
            ])
        });
        let bytes = jpeg(&img, 92);
        let scaled = prepare(&bytes, &pre(), &limits(), false).expect("scaled");
        assert_eq!(scaled.decode_scale, 4);
        let full_size = jpeg::Plan {
            dct_scale: 8,
            out_width: 2400,
            out_height: 1800,
        };
        let full =
            jpeg::decode(&bytes, &full_size, Orientation::NoTransforms).expect("full decode");
        let reference = normalise(&resize(&full, 224, 224, &pre()), 224, 224, &pre());
        let mean_diff: f32 = scaled
            .tensor
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / reference.len() as f32;
        // Normalised units (1/255 of range ≈ 0.017): on average well under two grey levels.
        assert!(mean_diff < 0.03, "mean |diff| {mean_diff}");
    }

    #[test]
    fn small_jpegs_are_decoded_in_full() {
        let img = RgbImage::from_pixel(600, 400, image::Rgb([10, 20, 30]));
        assert_eq!(
            prepare(&jpeg(&img, 90), &pre(), &limits(), false)
                .expect("ok")
                .decode_scale,
            1
        );
    }

    #[test]
    fn the_pixel_limit_is_checked_from_the_header() {
        let img = RgbImage::from_pixel(3000, 2000, image::Rgb([1, 2, 3]));
        let small = ImageLimits {
            max_megapixels: 5.0,
            ..limits()
        };
        let err = prepare(&jpeg(&img, 50), &pre(), &small, false).expect_err("too many pixels");
        assert_eq!(err.problem().status, 413);
    }
}
