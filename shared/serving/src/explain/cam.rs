//! Class activation maps for the image models: the model's `cam` output (one map per class on
//! the last feature map's grid, written into the graph by `models/pipeline/cam.py`) as a
//! normalised grid, its peak, and a heat-map overlay on the preprocessed image as a PNG.

use base64::Engine;
use serde::Serialize;

use super::ExplanationSpec;
use crate::card::ModelCard;

/// One class's map, as a prediction answers it.
#[derive(Debug, Clone, Serialize)]
pub struct ClassMap {
    pub method: &'static str,
    pub class_index: usize,
    pub class: String,
    pub grid: Grid,
    /// Where the map is highest, in the grid and in the preprocessed image's pixels (its cell's
    /// centre).
    pub peak: Peak,
    /// The heat map over the preprocessed image (`data:image/png;base64,…`), when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay_png: Option<String>,
}

/// A map on the feature grid, row by row, scaled to 0–1 (`min` → 0, `max` → 1).
#[derive(Debug, Clone, Serialize)]
pub struct Grid {
    pub height: usize,
    pub width: usize,
    pub values: Vec<f32>,
    /// The map's own range before scaling: its mean over the grid is the class's logit.
    pub min: f32,
    pub max: f32,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Peak {
    pub row: usize,
    pub col: usize,
    pub x: f32,
    pub y: f32,
}

/// Class `k`'s map out of the model's maps (its card's `cam` output, batch 1), with its peak
/// and its overlay on the model's input (`rgb`: RGB8, `width`×`height`, as preprocessing kept
/// it): what an image prediction asked with `?explain=cam` answers.
pub fn explain(
    card: &ModelCard,
    maps: &[f32],
    k: usize,
    rgb: &[u8],
    width: u32,
    height: u32,
) -> Result<ClassMap, String> {
    let Some(ExplanationSpec::Cam { grid: [h, w], .. }) = &card.explanation else {
        return Err("the card names no map".into());
    };
    let grid = class_map(maps, card.classes.len(), *h, *w, k).ok_or_else(|| {
        format!(
            "{} values for {} classes on {h}×{w}",
            maps.len(),
            card.classes.len()
        )
    })?;
    let png = overlay_png(rgb, width, height, &grid)?;
    Ok(ClassMap {
        method: "cam",
        class_index: k,
        class: card.classes[k].label.clone(),
        peak: grid.peak(width, height),
        grid,
        overlay_png: Some(format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(png)
        )),
    })
}

/// Class `k`'s map out of the model's `cam` output (`[classes, h, w]`, batch 1).
pub fn class_map(cam: &[f32], classes: usize, h: usize, w: usize, k: usize) -> Option<Grid> {
    if cam.len() != classes * h * w || k >= classes || h == 0 || w == 0 {
        return None;
    }
    let raw = &cam[k * h * w..(k + 1) * h * w];
    let (min, max) = raw
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    if !(min.is_finite() && max.is_finite()) {
        return None;
    }
    let span = max - min;
    let values = raw
        .iter()
        .map(|&v| if span > 0.0 { (v - min) / span } else { 0.0 })
        .collect();
    Some(Grid {
        height: h,
        width: w,
        values,
        min,
        max,
    })
}

impl Grid {
    /// The highest cell, and its centre in an image of `width`×`height` pixels.
    pub fn peak(&self, width: u32, height: u32) -> Peak {
        let i = self
            .values
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        let (row, col) = (i / self.width, i % self.width);
        Peak {
            row,
            col,
            x: (col as f32 + 0.5) * width as f32 / self.width as f32,
            y: (row as f32 + 0.5) * height as f32 / self.height as f32,
        }
    }

    /// The map at a pixel of a `width`×`height` image: bilinear between cell centres.
    #[cfg(test)]
    fn at(&self, x: u32, y: u32, width: u32, height: u32) -> f32 {
        let (x0, x1, fx) = between(x, width, self.width);
        let (y0, y1, fy) = between(y, height, self.height);
        let v = |r: usize, c: usize| self.values[r * self.width + c];
        let top = v(y0, x0) * (1.0 - fx) + v(y0, x1) * fx;
        let bottom = v(y1, x0) * (1.0 - fx) + v(y1, x1) * fx;
        top * (1.0 - fy) + bottom * fy
    }
}

/// The overlay's heat-map weight, in 256ths (0.45); the image's is the rest.
const ALPHA: u16 = 115;

/// Pixel `i` of `n` on a grid of `cells`: the two cells whose centres it lies between and the
/// second one's weight (bilinear between cell centres, held flat beyond the outer ones).
fn between(i: u32, n: u32, cells: usize) -> (usize, usize, f32) {
    let g = ((i as f32 + 0.5) * cells as f32 / n as f32 - 0.5).clamp(0.0, (cells - 1) as f32);
    let c0 = g.floor() as usize;
    (c0, (c0 + 1).min(cells - 1), g - c0 as f32)
}

/// A colour for a map value in 0–1: dark blue, through cyan, green and yellow, to red.
fn colour(v: f32) -> [f32; 3] {
    const STOPS: [[f32; 3]; 5] = [
        [0.0, 0.0, 0.5],
        [0.0, 0.6, 1.0],
        [0.1, 0.8, 0.2],
        [1.0, 0.85, 0.0],
        [0.85, 0.0, 0.0],
    ];
    let t = v.clamp(0.0, 1.0) * (STOPS.len() - 1) as f32;
    let i = (t.floor() as usize).min(STOPS.len() - 2);
    let f = t - i as f32;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    [
        a[0] + (b[0] - a[0]) * f,
        a[1] + (b[1] - a[1]) * f,
        a[2] + (b[2] - a[2]) * f,
    ]
}

/// The heat colours for the map's value in 256 steps, weighted by α, the 128 that rounds
/// included.
static PALETTE: std::sync::LazyLock<[[u16; 3]; 256]> = std::sync::LazyLock::new(|| {
    std::array::from_fn(|i| {
        colour(i as f32 / 255.0).map(|c| (c * 255.0 * f32::from(ALPHA) + 128.0).round() as u16)
    })
});

/// The heat map blended over an RGB8 image (`rgb`: `height` rows of `width` pixels), as a PNG.
pub fn overlay_png(rgb: &[u8], width: u32, height: u32, grid: &Grid) -> Result<Vec<u8>, String> {
    encode_png(&blend(rgb, width, height, grid)?, width, height)
}

/// The heat map blended over an RGB8 image (`rgb`: `height` rows of `width` pixels).
///
/// In 8.8 fixed point: a pixel's channel is `(v·(256 − α) + colour·α + 128) >> 8`, the heat
/// colour (already weighted, rounding included) looked up once per pixel from 256 steps of the
/// map's value. The sum stays below 2¹⁶: 255·141 + 255·115 + 128 = 65,408.
fn blend(rgb: &[u8], width: u32, height: u32, grid: &Grid) -> Result<Vec<u8>, String> {
    let (w, h) = (width as usize, height as usize);
    if rgb.len() != 3 * w * h || w == 0 || h == 0 {
        return Err(format!(
            "a {width}×{height} image needs {} bytes, got {}",
            3 * w * h,
            rgb.len()
        ));
    }
    let palette = &*PALETTE;
    // Bilinear between cell centres, separably: each grid row interpolated across the image's
    // width once (0–255 in quarters), then each image row between two of those (in 64ths), in
    // 16-bit integers (which vectorise on any x86-64).
    let (gw, gh) = (grid.width, grid.height);
    let columns: Vec<(usize, usize, f32)> = (0..width).map(|x| between(x, width, gw)).collect();
    let mut lines = vec![0u16; gh * w];
    for (line, cells) in lines.chunks_exact_mut(w).zip(grid.values.chunks_exact(gw)) {
        for (v, &(c0, c1, fx)) in line.iter_mut().zip(&columns) {
            let value = (cells[c0] * (1.0 - fx) + cells[c1] * fx).clamp(0.0, 1.0);
            *v = (value * 255.0 * 4.0).round() as u16;
        }
    }
    let mut out = vec![0u8; rgb.len()];
    // A row at a time, in passes that each run straight through: the map's value at each
    // pixel, its heat colour, then the blend (the first and last vectorise).
    let (mut heat, mut colours) = (vec![0u8; w], vec![0u16; 3 * w]);
    for (y, (src, dst)) in rgb
        .chunks_exact(3 * w)
        .zip(out.chunks_exact_mut(3 * w))
        .enumerate()
    {
        let (r0, r1, fy) = between(y as u32, height, gh);
        let fy = (fy * 64.0).round() as u16;
        let (a, b) = (&lines[r0 * w..(r0 + 1) * w], &lines[r1 * w..(r1 + 1) * w]);
        // At most 1020·64 + 128 (< 2¹⁶), back to 0–255 rounded.
        for x in 0..w {
            heat[x] = ((a[x] * (64 - fy) + b[x] * fy + 128) >> 8) as u8;
        }
        for (c, &h) in colours.chunks_exact_mut(3).zip(&heat) {
            c.copy_from_slice(&palette[usize::from(h)]);
        }
        for ((d, &s), &c) in dst.iter_mut().zip(src).zip(&colours) {
            *d = ((u16::from(s) * (256 - ALPHA) + c) >> 8) as u8;
        }
    }
    Ok(out)
}

/// An RGB image as a PNG.
fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, String> {
    let mut png = Vec::new();
    // Fast compression (fdeflate): the overlay is made per request. A 224×224 overlay is ~64 KB
    // with the Sub filter; Up and Paeth make it 50 and 45 KB but take 10–40% longer.
    let encoder = image::codecs::png::PngEncoder::new_with_quality(
        &mut png,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::Sub,
    );
    image::ImageEncoder::write_image(encoder, rgb, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|e| format!("cannot encode the overlay: {e}"))?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_map_is_scaled_and_its_peak_found() {
        // Two classes on a 2×3 grid; class 1 peaks at row 1, column 2.
        let cam = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 1.0, 0.0, 2.0, 3.0];
        let g = class_map(&cam, 2, 2, 3, 1).unwrap();
        assert_eq!(g.values, vec![0.0, 0.25, 0.5, 0.25, 0.75, 1.0]);
        assert_eq!((g.min, g.max), (-1.0, 3.0));
        let p = g.peak(300, 200);
        assert_eq!((p.row, p.col, p.x, p.y), (1, 2, 250.0, 150.0));
        // A flat map is all 0; a wrong size or class is none.
        assert!(
            class_map(&cam, 2, 2, 3, 0)
                .unwrap()
                .values
                .iter()
                .all(|&v| v == 0.0)
        );
        assert!(class_map(&cam, 2, 2, 3, 2).is_none());
        assert!(class_map(&cam[1..], 2, 2, 3, 0).is_none());
        // Bilinear between cell centres: a cell's centre pixel takes the cell's value.
        assert_eq!(g.at(250, 150, 300, 200), 1.0);
        assert_eq!(g.at(0, 0, 300, 200), 0.0);
    }

    #[test]
    fn the_overlay_is_a_png_of_the_image_with_the_map_over_it() {
        // A mid-grey 4×4 image; the map high in the top-left cell only.
        let rgb = vec![128u8; 3 * 16];
        let g = class_map(&[1.0, 0.0, 0.0, 0.0], 1, 2, 2, 0).unwrap();
        let png = overlay_png(&rgb, 4, 4, &g).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (4, 4));
        // Red over grey at the top left, blue over grey at the bottom right.
        let (tl, br) = (img.get_pixel(0, 0).0, img.get_pixel(3, 3).0);
        assert!(tl[0] > 150 && tl[2] < 100, "{tl:?}");
        // Exactly: (128 × 141 + the top colour (0.85, 0, 0) × 255 × 115 + 128) / 256, rounded
        // down: 168.4, 71.0, 71.0.
        assert_eq!(tl, [168, 71, 71]);
        assert!(br[2] > tl[2] && br[0] < 100, "{br:?}");
        // Every pixel within one level of the blend in floating point, for the map's value at it
        // to within one of its 256 steps (the heat is interpolated in fixed point).
        let g = class_map(&[0.0, 1.0, 0.3, 0.71], 1, 2, 2, 0).unwrap();
        for v in [0u8, 37, 128, 200, 255] {
            let png = overlay_png(&[v; 3 * 16], 4, 4, &g).unwrap();
            let img = image::load_from_memory(&png).unwrap().to_rgb8();
            for (x, y, px) in img.enumerate_pixels() {
                let step = (g.at(x, y, 4, 4) * 255.0).round();
                let near = [-1.0, 0.0, 1.0].into_iter().any(|d| {
                    let want =
                        colour((step + d) / 255.0).map(|c| f32::from(v) * 0.55 + c * 255.0 * 0.45);
                    (0..3).all(|k| (f32::from(px.0[k]) - want[k]).abs() <= 1.0)
                });
                assert!(
                    near,
                    "{v} at ({x}, {y}): {:?}, map {}",
                    px.0,
                    g.at(x, y, 4, 4)
                );
            }
        }
        assert!(overlay_png(&rgb[1..], 4, 4, &g).is_err());
    }
}
