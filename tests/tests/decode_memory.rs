//! What decoding an upload really allocates, against what the decode budget reserves for it
//! (`image::decode_cost`, read from the header): for every kind of image the services accept,
//! generated here, the peak of heap bytes allocated by `image::prepare` (counted by this
//! binary's global allocator, so it needs a process of its own) must stay within the
//! reservation. One test function: the count is process-wide, so nothing may run beside it.

use image::{DynamicImage, ImageBuffer, Rgb, RgbImage};
use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
use medchain_serving::card::{ModelCard, Preprocessing};
use medchain_serving::inputs::image::{ImageLimits, decode_cost, nonzero, prepare};
use medchain_tests::alloc::{Counting, peak_during as peak_of};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A busy picture (so that encoders cannot squeeze it to nothing).
fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 7 + y) as u8, ((y * 5) ^ x) as u8, ((x + y) * 3) as u8])
    })
}

struct Jpeg {
    progressive: bool,
    sampling: SamplingFactor,
    restart: Option<u16>,
    color: ColorType,
}

fn jpeg(w: u32, h: u32, j: &Jpeg) -> Vec<u8> {
    let rgb = picture(w, h);
    let data: Vec<u8> = match j.color {
        ColorType::Luma => rgb.pixels().map(|p| p[0]).collect(),
        ColorType::Cmyk | ColorType::CmykAsYcck => rgb
            .pixels()
            .flat_map(|p| [255 - p[0], 255 - p[1], 255 - p[2], p[0] / 2])
            .collect(),
        _ => rgb.into_raw(),
    };
    let mut out = Vec::new();
    let mut enc = Encoder::new(&mut out, 85);
    enc.set_progressive(j.progressive);
    enc.set_sampling_factor(j.sampling);
    if let Some(r) = j.restart {
        enc.set_restart_interval(r);
    }
    enc.encode(&data, w as u16, h as u16, j.color)
        .expect("encode");
    out
}

fn png(img: DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode");
    out.into_inner()
}

/// A PNG written by hand from its raw (filtered) rows: for the kinds no encoder here writes.
fn png_by_hand(
    w: u32,
    h: u32,
    colour_type: u8,
    interlaced: bool,
    plte: &[u8],
    raw: &[u8],
) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(raw).expect("deflate");
    let idat = z.finish().expect("deflate");
    let chunk = |kind: &[u8], data: &[u8], out: &mut Vec<u8>| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, colour_type, 0, 0, u8::from(interlaced)]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(b"IHDR", &ihdr, &mut out);
    if !plte.is_empty() {
        chunk(b"PLTE", plte, &mut out);
    }
    chunk(b"IDAT", &idat, &mut out);
    chunk(b"IEND", &[], &mut out);
    out
}

/// An 8-bit palette PNG (the `image` crate writes none).
fn palette_png(w: u32, h: u32) -> Vec<u8> {
    let plte: Vec<u8> = (0..=255u8).flat_map(|i| [i, 255 - i, i / 2]).collect();
    let mut raw = Vec::new();
    for y in 0..h {
        raw.push(0); // filter: none
        raw.extend((0..w).map(|x| ((x * 13 + y * 7) % 251) as u8));
    }
    png_by_hand(w, h, 3, false, &plte, &raw)
}

/// An Adam7-interlaced 8-bit RGB PNG (no encoder here writes one).
fn interlaced_png(w: u32, h: u32) -> Vec<u8> {
    let img = picture(w, h);
    const PASSES: [(u32, u32, u32, u32); 7] = [
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    ];
    let mut raw = Vec::new();
    for (x0, y0, dx, dy) in PASSES {
        if x0 >= w || y0 >= h {
            continue;
        }
        for y in (y0..h).step_by(dy as usize) {
            raw.push(0); // filter: none
            for x in (x0..w).step_by(dx as usize) {
                raw.extend_from_slice(&img.get_pixel(x, y).0);
            }
        }
    }
    png_by_hand(w, h, 2, true, &[], &raw)
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    use SamplingFactor as S;
    let mut cases = Vec::new();
    let ycbcr = [
        ("4:4:4", S::R_4_4_4),
        ("4:2:2", S::R_4_2_2),
        ("4:2:0", S::R_4_2_0),
        ("4:4:0", S::R_4_4_0),
        ("4:1:1", S::R_4_1_1),
        ("4:1:0", S::R_4_1_0),
    ];
    // Sizes decoded in full (under four times the model's input on a side: narrow, wide and
    // long) and one decoded at reduced scale, odd so that partial MCUs are padded.
    for (w, h) in [(801, 603), (3001, 801), (233, 2601), (3001, 2003)] {
        for progressive in [false, true] {
            let kind = if progressive {
                "progressive"
            } else {
                "baseline"
            };
            for (name, sampling) in ycbcr {
                let j = Jpeg {
                    progressive,
                    sampling,
                    restart: None,
                    color: ColorType::Rgb,
                };
                cases.push((format!("jpeg {kind} {name} {w}×{h}"), jpeg(w, h, &j)));
            }
            for (name, color) in [
                ("grey", ColorType::Luma),
                ("CMYK", ColorType::Cmyk),
                ("YCCK", ColorType::CmykAsYcck),
            ] {
                let j = Jpeg {
                    progressive,
                    sampling: S::R_4_2_0,
                    restart: None,
                    color,
                };
                cases.push((format!("jpeg {kind} {name} {w}×{h}"), jpeg(w, h, &j)));
            }
            let j = Jpeg {
                progressive,
                sampling: S::R_4_2_0,
                restart: Some(4),
                color: ColorType::Rgb,
            };
            let restarts = jpeg(w, h, &j);
            cases.push((
                format!("jpeg {kind} 4:2:0 restart markers, EXIF turned {w}×{h}"),
                medchain_tests::with_orientation(&restarts, 6),
            ));
            cases.push((
                format!("jpeg {kind} 4:2:0 restart markers {w}×{h}"),
                restarts,
            ));
        }
    }
    // The review's case: 40 megapixels, progressive, whose coefficients the decoder holds at
    // full size whatever the output scale.
    let j = Jpeg {
        progressive: true,
        sampling: S::R_4_2_0,
        restart: None,
        color: ColorType::Rgb,
    };
    cases.push((
        "jpeg progressive 4:2:0 7000×5700".into(),
        jpeg(7000, 5700, &j),
    ));
    let (w, h) = (1201, 901);
    let rgb = picture(w, h);
    let grey = DynamicImage::ImageRgb8(rgb.clone()).to_luma8();
    let wide = |f: &dyn Fn(u8) -> u16| -> ImageBuffer<image::Rgba<u16>, Vec<u16>> {
        ImageBuffer::from_fn(w, h, |x, y| {
            let p = rgb.get_pixel(x, y);
            image::Rgba([f(p[0]), f(p[1]), f(p[2]), f(p[0] ^ p[1])])
        })
    };
    let rgba16 = wide(&|v| u16::from(v) * 257);
    let pngs: Vec<(&str, DynamicImage)> = vec![
        ("RGB 8-bit", DynamicImage::ImageRgb8(rgb.clone())),
        (
            "RGBA 8-bit",
            DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(rgb.clone()).to_rgba8()),
        ),
        ("grey 8-bit", DynamicImage::ImageLuma8(grey.clone())),
        (
            "grey+alpha 8-bit",
            DynamicImage::ImageLumaA8(DynamicImage::ImageLuma8(grey.clone()).to_luma_alpha8()),
        ),
        (
            "grey 16-bit",
            DynamicImage::ImageLuma16(DynamicImage::ImageLuma8(grey).to_luma16()),
        ),
        (
            "RGB 16-bit",
            DynamicImage::ImageRgb16(DynamicImage::ImageRgba16(rgba16.clone()).to_rgb16()),
        ),
        ("RGBA 16-bit", DynamicImage::ImageRgba16(rgba16)),
    ];
    for (name, img) in pngs {
        cases.push((format!("png {name} {w}×{h}"), png(img)));
    }
    cases.push((format!("png palette {w}×{h}"), palette_png(w, h)));
    cases.push((format!("png Adam7 RGB 8-bit {w}×{h}"), interlaced_png(w, h)));
    cases
}

fn retina_preprocessing() -> Preprocessing {
    let card =
        ModelCard::from_file(&medchain_tests::models_dir().join("diabetes/retina.card.json"))
            .expect("card");
    card.preprocessing.expect("image card")
}

/// One test (the allocator's counters are global: a second test running beside it would count
/// into them): the retina model's preprocessing on the whole corpus, then a user's model trained
/// with torchvision's usual transform (shorter side 256, bicubic, centre crop 224, whose resize
/// intermediate is larger than the input) on every third image (each format still appears).
#[test]
fn every_decode_stays_within_its_reservation() {
    let corpus = corpus();
    check_reservations(&retina_preprocessing(), &corpus);
    let pre: Preprocessing = serde_json::from_value(serde_json::json!({
        "resize": {"shorter_side": 256, "filter": "bicubic_antialiased", "keep_aspect": true},
        "crop": {"width": 224, "height": 224},
        "exif_orientation": true, "channel_order": "RGB", "scale": 1.0 / 255.0,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "NCHW"
    }))
    .expect("preprocessing");
    pre.check().expect("valid");
    let every_third: Vec<_> = corpus.into_iter().step_by(3).collect();
    check_reservations(&pre, &every_third);
}

fn check_reservations(pre: &Preprocessing, cases: &[(String, Vec<u8>)]) {
    let (tw, th) = pre.input_size();
    let limits = ImageLimits {
        max_bytes: nonzero(64 << 20),
        max_megapixels: 40.0,
        decode_budget_mb: nonzero(1024),
        buffer_mb: nonzero(64),
        body_stall_secs: 30,
    };
    let mut over = Vec::new();
    eprintln!(
        "{:<60} {:>10} {:>10} {:>6}",
        "image", "peak", "reserved", "ratio"
    );
    for (name, bytes) in cases {
        let cost = decode_cost(bytes, pre).unwrap_or_else(|| panic!("{name}: no cost"));
        // Keeping the RGB8 image as an overlay does (`?explain=cam`): the most a decode holds.
        let (prepared, peak) = peak_of(|| prepare(bytes, pre, &limits, true));
        let prepared = prepared.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(prepared.tensor.len(), (3 * tw * th) as usize, "{name}");
        eprintln!(
            "{name:<60} {peak:>10} {cost:>10} {:>6.2}",
            cost as f64 / peak as f64
        );
        // Within the reservation, and not far over it: what is reserved and not used is
        // memory that other uploads wait for.
        if peak as u64 > cost || cost > peak as u64 + peak as u64 / 8 + (256 << 10) {
            over.push(format!("{name}: peak {peak} B, reserved {cost} B"));
        }
    }
    assert!(
        over.is_empty(),
        "decodes past their reservation, or far within it:\n{}",
        over.join("\n")
    );
}
