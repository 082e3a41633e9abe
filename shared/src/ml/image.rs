//! Image decoding and preprocessing exactly as the models were trained (see the card's
//! `preprocessing`): sniff the format (JPEG/PNG only), check the pixel count from the header
//! before decoding, decode (large JPEGs at reduced scale with DCT scaling), apply EXIF
//! orientation, convert to RGB8, resize to the model's size with an antialiased bilinear filter
//! (bit-exact with Pillow), normalise to NCHW float32.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use serde::Deserialize;

use super::card::Preprocessing;
use super::{jpeg, resample};
use crate::error::ApiError;

/// Multipart field the image travels in.
pub const IMAGE_FIELD: &str = "image";

/// Upload limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageLimits {
    /// Largest upload, bytes (413 beyond).
    pub max_bytes: usize,
    /// Largest decoded image, megapixels, read from the header before decoding (413 beyond).
    pub max_megapixels: f64,
    /// Memory the service's decodes may hold at once, MiB. Each decode reserves what it will
    /// need (read from the header: the decoder's buffer at the file's bit depth and channels,
    /// plus the RGB copy) before it starts, and waits while others hold the budget; an image
    /// that alone needs more is refused (413). A 10 MB upload can be a 40-megapixel 16-bit
    /// RGBA PNG that decodes to 320 MB.
    pub decode_budget_mb: usize,
    /// Upload bytes the service holds at once (received and not yet decoded), MiB. Each
    /// body's bytes are reserved as they arrive, so a slow sender holds only what it has sent;
    /// a body that would go past the buffer waits — its sender is paused — until earlier ones
    /// are decoded. (When only bodies still arriving hold it, the oldest may go past it: at
    /// most one upload more, see `budget::UploadBuffer`.)
    pub buffer_mb: usize,
    /// A sender that sends nothing of its body for this long, seconds, is answered 408. Time
    /// the service itself keeps the sender paused does not count.
    pub body_stall_secs: u64,
}

/// What preprocessing produced.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// `[3, H, W]` float32, normalised.
    pub tensor: Vec<f32>,
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
/// RGB, the EXIF-turned copy, the resize's intermediate rows, and the tensor. Checked against a
/// counting allocator over a corpus of every kind accepted (`tests/tests/decode_memory.rs`).
/// `None` when the header cannot be read — [`prepare`] then answers with the precise error.
pub fn decode_cost(bytes: &[u8], pre: &Preprocessing) -> Option<u64> {
    let (tw, th) = (pre.resize.width, pre.resize.height);
    let (decoder, out, w, h, turned) = match image::guess_format(bytes).ok()? {
        ImageFormat::Jpeg => {
            let header = jpeg::header(bytes).ok()??;
            let plan = header.plan(tw, th);
            let (w, h) = (plan.out_width, plan.out_height);
            let out = u64::from(w) * u64::from(h) * header.output_channels();
            let decoder = if header.decoded_in_full(&plan) {
                header.zune_bytes()
            } else {
                header.decoder_bytes(&plan)
            };
            (decoder, out, w, h, jpeg::turned(bytes))
        }
        ImageFormat::Png => {
            let mut decoder = ImageReader::with_format(Cursor::new(bytes), ImageFormat::Png)
                .into_decoder()
                .ok()?;
            let (w, h) = decoder.dimensions();
            let out = decoder.total_bytes();
            let turned = !matches!(
                decoder.orientation(),
                Ok(Orientation::NoTransforms) | Err(_)
            );
            // Two raw rows (this one and the one it is filtered against) at the file's depth,
            // at most 8 bytes a pixel.
            let rows = 2 * u64::from(w) * 8;
            (out + rows, out, w, h, turned)
        }
        _ => return None,
    };
    let rgb = u64::from(w) * u64::from(h) * 3;
    let converted = if out == rgb { out } else { out + rgb };
    let turned = if turned { 2 * rgb } else { rgb };
    let tensor = 3 * u64::from(tw) * u64::from(th) * 4;
    let resized = 3 * u64::from(tw) * u64::from(th);
    let resize = rgb + resample::scratch_bytes(w, h, tw, th) + resized;
    Some(
        [decoder, converted, turned, resize, resized + tensor]
            .into_iter()
            .max()
            .unwrap_or(0)
            + FIXED_BYTES,
    )
}

/// Headers, tables and small buffers of any decode (Huffman and quantisation tables, the
/// inflater's window), bytes: at most 25 KB over the corpus of `decode_cost`.
const FIXED_BYTES: u64 = 64 << 10;

/// Decodes and preprocesses an upload for a model with preprocessing `pre`.
pub fn prepare(
    bytes: &[u8],
    pre: &Preprocessing,
    limits: &ImageLimits,
) -> Result<Prepared, ApiError> {
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
    let (tw, th) = (pre.resize.width, pre.resize.height);
    let (rgb, scale) = match &jpeg_header {
        Some(header) => {
            let plan = header.plan(tw, th);
            let rgb = if header.decoded_in_full(&plan) {
                decode_with_image(bytes, format, max_pixels)?
            } else {
                jpeg::decode(bytes, &plan)?
            };
            (rgb, 8 / plan.dct_scale)
        }
        None => (decode_with_image(bytes, format, max_pixels)?, 1),
    };
    let resized = resize(&rgb, tw, th)?;
    drop(rgb);
    Ok(Prepared {
        tensor: normalise(&resized, tw, th, pre),
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
/// — converted to RGB8 first and then turned by its EXIF orientation (turning the RGB copy
/// costs 3 bytes a pixel, turning a 16-bit RGBA image 8).
fn decode_with_image(
    bytes: &[u8],
    format: ImageFormat,
    max_pixels: u64,
) -> Result<RgbImage, ApiError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    // Worst case RGBA 16-bit: 8 bytes a pixel.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
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

/// Antialiased bilinear (triangle) resize, bit-exact with Pillow's (see `resample`).
fn resize(rgb: &RgbImage, tw: u32, th: u32) -> Result<Vec<u8>, ApiError> {
    let (w, h) = rgb.dimensions();
    Ok(super::resample::resize_rgb8(
        rgb.as_raw(),
        w as usize,
        h as usize,
        tw as usize,
        th as usize,
    ))
}

/// HWC u8 → CHW f32, `(v * scale - mean) / std`, in the same float32 order as training.
fn normalise(hwc: &[u8], w: u32, h: u32, pre: &Preprocessing) -> Vec<f32> {
    let plane = (w * h) as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in hwc.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(px[c]) / 255.0 - pre.mean[c]) / pre.std[c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::card::Resize;

    fn pre() -> Preprocessing {
        Preprocessing {
            resize: Resize {
                width: 224,
                height: 224,
                filter: "bilinear_antialiased".into(),
                keep_aspect: false,
            },
            exif_orientation: true,
            channel_order: "RGB".into(),
            scale: 1.0 / 255.0,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            layout: "NCHW".into(),
        }
    }

    fn limits() -> ImageLimits {
        ImageLimits {
            max_bytes: 10 << 20,
            max_megapixels: 40.0,
            decode_budget_mb: 128,
            buffer_mb: 64,
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

    /// Inserts an EXIF APP1 segment with the given orientation right after SOI.
    fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = vec![
            b'I', b'I', 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0,
        ];
        tiff.extend_from_slice(&orientation.to_le_bytes());
        tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let len = (2 + 6 + tiff.len()) as u16;
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(b"Exif\0\0");
        out.extend_from_slice(&tiff);
        out.extend_from_slice(&jpeg[2..]);
        out
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
        let upright = prepare(&jpeg(&img, 95), &pre(), &limits()).expect("plain");
        assert!(red_at(&upright.tensor, 20, 112) > 1.5 && red_at(&upright.tensor, 200, 112) < 0.0);
        let rotated =
            prepare(&with_orientation(&jpeg(&img, 95), 6), &pre(), &limits()).expect("with exif");
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
        let scaled = prepare(&bytes, &pre(), &limits()).expect("scaled");
        assert_eq!(scaled.decode_scale, 4);
        let full_size = jpeg::Plan {
            dct_scale: 8,
            out_width: 2400,
            out_height: 1800,
        };
        let full = jpeg::decode(&bytes, &full_size).expect("full decode");
        let reference = normalise(&resize(&full, 224, 224).expect("resize"), 224, 224, &pre());
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
            prepare(&jpeg(&img, 90), &pre(), &limits())
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
        let err = prepare(&jpeg(&img, 50), &pre(), &small).expect_err("too many pixels");
        assert_eq!(err.problem().status, 413);
    }
}
