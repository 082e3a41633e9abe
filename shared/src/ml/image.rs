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

/// What decoding `bytes` for a model of input size `pre.resize` will hold at its peak, bytes,
/// from the header alone: a JPEG decoded at reduced scale needs a few of its scaled frames; a
/// full decode needs the decoder's buffer (width × height × bytes per pixel at the file's bit
/// depth), plus the RGB copy unless it is 8-bit RGB, plus a turned copy when EXIF turns it.
/// `None` when the header cannot be read — [`prepare`] then answers with the precise error.
pub fn decode_cost(bytes: &[u8], pre: &Preprocessing) -> Option<u64> {
    let format = match image::guess_format(bytes).ok()? {
        f @ (ImageFormat::Jpeg | ImageFormat::Png) => f,
        _ => return None,
    };
    let mut decoder = ImageReader::with_format(Cursor::new(bytes), format)
        .into_decoder()
        .ok()?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    let (tw, th) = (pre.resize.width, pre.resize.height);
    let rgb = |w: u32, h: u32| u64::from(w) * u64::from(h) * 3;
    let cmyk = matches!(
        image::ImageDecoder::original_color_type(&decoder),
        image::ExtendedColorType::Cmyk8
    );
    if format == ImageFormat::Jpeg && !cmyk && w >= 4 * tw && h >= 4 * th {
        // Decoded at reduced scale (see `jpeg_scaled`; CMYK is not): at most half the width
        // and height. Component planes, the RGB frame and a turned copy: four frames.
        let (sw, sh) = (w.div_ceil(2), h.div_ceil(2));
        return Some(4 * rgb(sw, sh));
    }
    // The RGB copy is made unless the file is 8-bit RGB already; the turned copy only when
    // EXIF turns it.
    let converted = if image::ImageDecoder::color_type(&decoder) == image::ColorType::Rgb8 {
        0
    } else {
        rgb(w, h)
    };
    let turned = match image::ImageDecoder::orientation(&mut decoder) {
        Ok(Orientation::NoTransforms) | Err(_) => 0,
        Ok(_) => rgb(w, h),
    };
    Some(image::ImageDecoder::total_bytes(&decoder) + converted + turned)
}

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
    let (w, h) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(corrupt)?;
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
    let (rgb, scale) = match format {
        ImageFormat::Jpeg => match jpeg_scaled(bytes, w, h, tw, th)? {
            Some(scaled) => scaled,
            None => (decode_full(bytes, format, max_pixels)?, 1),
        },
        _ => (decode_full(bytes, format, max_pixels)?, 1),
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

/// Full decode with the `image` crate: any colour type, 16 bits, CMYK, alpha, EXIF orientation.
fn decode_full(bytes: &[u8], format: ImageFormat, max_pixels: u64) -> Result<RgbImage, ApiError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    // Worst case RGBA 16-bit: 8 bytes a pixel.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    img.apply_orientation(orientation);
    Ok(match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

/// JPEG decoded at 1/2, 1/4 or 1/8 scale when the result still has at least twice the model's
/// size on both sides (so the final resize, which dominates, still antialiases), else `None`.
fn jpeg_scaled(
    bytes: &[u8],
    w: u32,
    h: u32,
    tw: u32,
    th: u32,
) -> Result<Option<(RgbImage, u32)>, ApiError> {
    let (want_w, want_h) = (2 * tw, 2 * th);
    if w < 2 * want_w || h < 2 * want_h {
        return Ok(None);
    }
    let mut dec = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    dec.read_info().map_err(corrupt)?;
    let info = dec.info().ok_or_else(|| corrupt("no JPEG header"))?;
    if info.pixel_format == jpeg_decoder::PixelFormat::CMYK32 {
        return Ok(None); // the `image` crate's colour conversion handles CMYK
    }
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    let (sw, sh) = dec.scale(clamp(want_w), clamp(want_h)).map_err(corrupt)?;
    let orientation = dec
        .exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    let data = dec.decode().map_err(corrupt)?;
    let info = dec.info().ok_or_else(|| corrupt("no JPEG header"))?;
    let (sw, sh) = (u32::from(sw), u32::from(sh));
    let rgb = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => RgbImage::from_raw(sw, sh, data),
        jpeg_decoder::PixelFormat::L8 => {
            RgbImage::from_raw(sw, sh, data.iter().flat_map(|&v| [v, v, v]).collect())
        }
        jpeg_decoder::PixelFormat::L16 => RgbImage::from_raw(
            sw,
            sh,
            data.chunks_exact(2)
                .flat_map(|c| {
                    let v = c[0];
                    [v, v, v]
                })
                .collect(),
        ),
        jpeg_decoder::PixelFormat::CMYK32 => None,
    }
    .ok_or_else(|| corrupt("decoded buffer has the wrong size"))?;
    let mut img = DynamicImage::ImageRgb8(rgb);
    img.apply_orientation(orientation);
    let scale = (w / img.width().max(1)).max(h / img.height().max(1)).max(1);
    let rgb = match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    };
    Ok(Some((rgb, scale)))
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
        let px = 300u64 * 200;
        let rgb8 = DynamicImage::ImageRgb8(RgbImage::new(300, 200));
        assert_eq!(decode_cost(&png_of(rgb8), &pre()), Some(px * 3));
        // 16-bit RGBA: the decoder's 8 bytes a pixel plus the 8-bit RGB copy.
        let rgba16 = DynamicImage::ImageRgba16(image::ImageBuffer::new(300, 200));
        assert_eq!(decode_cost(&png_of(rgba16), &pre()), Some(px * 8 + px * 3));
        // A JPEG large enough to be decoded at reduced scale costs a fraction of its pixels.
        let big = jpeg(&RgbImage::new(2000, 1000), 80);
        let cost = decode_cost(&big, &pre()).expect("cost");
        // At most four frames of half the width and height: one full-size RGB frame, where a
        // full decode would hold that plus copies.
        assert!(cost <= 4 * 1000 * 500 * 3, "{cost}");
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
        let full = decode_full(&bytes, ImageFormat::Jpeg, 40_000_000).expect("full decode");
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
