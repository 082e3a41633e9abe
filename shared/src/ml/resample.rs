//! Pillow's antialiased bilinear resampling (`Image.resize(size, Image.BILINEAR)`), bit for bit:
//! the same filter support, the same coefficients rounded to the same 22-bit fixed point, the
//! same two passes (horizontal first, over the rows the vertical pass needs) with the same
//! rounding to 8 bits in between. The models were trained on images resized this way, and a
//! resizer that is merely close (±1 on some pixels) moved a sensitive model's probabilities by
//! up to 0.02 — twenty times the fixture tolerance.

/// Fixed-point precision of Pillow's 8-bit resampling (`PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output position: first input index, number of inputs, fixed-point weights.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    weights: Vec<i32>,
}

fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the box `[0, in_size)`.
fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the bilinear filter's support is 1
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = bilinear((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, &kx) in k.iter().enumerate().take(xmax) {
            let w = if ww != 0.0 { kx / ww } else { kx };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            weights[xx * ksize + x] = if w < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs {
        bounds,
        ksize,
        weights,
    }
}

fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// What [`resize_rgb8`] allocates besides its output, bytes: the rows of the horizontal pass
/// (at most every source row, `tw` wide) and both passes' weights.
pub fn scratch_bytes(w: u32, h: u32, tw: u32, th: u32) -> u64 {
    let weights = |from: u32, to: u32| {
        let ksize = u64::from(from.div_ceil(to.max(1)).max(1)) * 2 + 1;
        u64::from(to) * (ksize * 4 + 2 * 8) + ksize * 8
    };
    u64::from(h) * u64::from(tw.max(1)) * 3 + weights(w, tw) + weights(h, th)
}

/// Resizes packed RGB8 `src` (`w`×`h`) to `tw`×`th`, exactly as Pillow does.
pub fn resize_rgb8(src: &[u8], w: usize, h: usize, tw: usize, th: usize) -> Vec<u8> {
    let horiz = coeffs(w, tw);
    let vert = coeffs(h, th);
    let half = 1i32 << (PRECISION_BITS - 1);
    // Horizontal pass over the rows the vertical pass reads.
    let first = vert.bounds.first().map_or(0, |b| b.0);
    let last = vert.bounds.last().map_or(h, |b| b.0 + b.1);
    let (tmp, tmp_w) = if tw != w {
        let rows = last - first;
        let mut tmp = vec![0u8; rows * tw * 3];
        for y in 0..rows {
            let row = &src[(y + first) * w * 3..(y + first + 1) * w * 3];
            for (xx, &(xmin, n)) in horiz.bounds.iter().enumerate() {
                let k = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + n];
                let mut ss = [half; 3];
                for (x, &kx) in k.iter().enumerate() {
                    let p = &row[(xmin + x) * 3..(xmin + x) * 3 + 3];
                    for c in 0..3 {
                        ss[c] += i32::from(p[c]) * kx;
                    }
                }
                let o = (y * tw + xx) * 3;
                for c in 0..3 {
                    tmp[o + c] = clip8(ss[c]);
                }
            }
        }
        (tmp, tw)
    } else {
        (src[first * w * 3..last * w * 3].to_vec(), w)
    };
    if th == h && first == 0 {
        return tmp;
    }
    let mut out = vec![0u8; th * tmp_w * 3];
    for (yy, &(ymin, n)) in vert.bounds.iter().enumerate() {
        let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + n];
        let ymin = ymin - first;
        for xx in 0..tmp_w {
            let mut ss = [half; 3];
            for (y, &ky) in k.iter().enumerate() {
                let p = &tmp[((ymin + y) * tmp_w + xx) * 3..((ymin + y) * tmp_w + xx) * 3 + 3];
                for c in 0..3 {
                    ss[c] += i32::from(p[c]) * ky;
                }
            }
            let o = (yy * tmp_w + xx) * 3;
            for c in 0..3 {
                out[o + c] = clip8(ss[c]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_image_stays_flat_and_sizes_are_right() {
        let src = vec![200u8; 300 * 200 * 3];
        let out = resize_rgb8(&src, 300, 200, 224, 224);
        assert_eq!(out.len(), 224 * 224 * 3);
        assert!(out.iter().all(|&v| v == 200));
        let up = resize_rgb8(&src[..10 * 10 * 3], 10, 10, 20, 20);
        assert!(up.iter().all(|&v| v == 200));
    }

    #[test]
    fn pillow_reference_values() {
        // A 4x1 ramp halved. Pillow 12 (`Image.fromarray(...).resize((2, 1), Image.BILINEAR)`)
        // gives [61, 194]: at half size the triangle spans 3 inputs, weights 3/7, 3/7, 1/7.
        let src: Vec<u8> = [0u8, 85, 170, 255]
            .iter()
            .flat_map(|&v| [v, v, v])
            .collect();
        let out = resize_rgb8(&src, 4, 1, 2, 1);
        let got: Vec<u8> = out.chunks(3).map(|p| p[0]).collect();
        assert_eq!(got, [61, 194]);
    }
}
