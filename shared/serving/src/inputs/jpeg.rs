//! JPEG uploads, decoded by one decoder (`jpeg-decoder`) whose memory is known to the byte:
//! the frame header is read here first — size, components and their sampling factors, baseline
//! or progressive — and gives both the decode's plan (full size, or a reduced DCT scale for a
//! large image) and what that decode will allocate, before anything is decoded.
//!
//! What `jpeg-decoder` holds (checked against a counting allocator over a corpus of every
//! subsampling, progressive and baseline, grey, CMYK and YCCK, restart markers:
//! `tests/tests/decode_memory.rs`): one byte per output sample of every component's block
//! grid (padded to whole MCUs), plus, for a progressive image, its DCT coefficients — 128 bytes
//! per 8×8 block of every component at full size, whatever the output scale — plus the
//! interleaved output, and the MCU row on its way to the IDCT. Lossless, arithmetic-coded and
//! hierarchical JPEGs are refused (no decoder here reads them all, and none was measured), and
//! so is a progressive JPEG whose scans leave coefficients out.

use std::io::Cursor;

use image::RgbImage;
use image::metadata::Orientation;

use super::IMAGE_FIELD;
use medchain_core::error::ApiError;

/// A JPEG's frame header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub width: u32,
    pub height: u32,
    pub progressive: bool,
    /// Each component's horizontal and vertical sampling factors.
    pub components: Vec<(u32, u32)>,
    /// Components in the first scan (a baseline image whose first scan has them all is
    /// decoded row by row; otherwise its coefficients are stored first).
    pub first_scan_components: usize,
}

/// The frame header, or why this JPEG is not accepted; `Ok(None)` when there is none to read
/// (a corrupt file: the decoder then says what is wrong). A progressive image's scans are read
/// too: one whose scans leave a component's coefficients incomplete is refused, since the
/// decoder would then copy every row of them at once to render what it has.
pub fn header(bytes: &[u8]) -> Result<Option<Header>, ApiError> {
    let mut header: Option<Header> = None;
    let mut ids: Vec<u8> = Vec::new();
    // Per component, the coefficients (bit j = zig-zag index j) delivered in full.
    let mut delivered = [0u64; 4];
    let mut i = 2; // after SOI
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            break;
        }
        let marker = bytes[i + 1];
        if marker == 0xFF {
            i += 1; // fill byte
            continue;
        }
        if marker == 0x01 || (0xD0..=0xD7).contains(&marker) {
            i += 2; // no length
            continue;
        }
        if marker == 0xD9 {
            break;
        }
        let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
        let Some(segment) = bytes.get(i + 4..i + 2 + len) else {
            break;
        };
        match marker {
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                let progressive = match marker {
                    0xC0 | 0xC1 => false,
                    0xC2 => true,
                    0xC3 => return Err(refused("lossless JPEG")),
                    0xC9..=0xCB => return Err(refused("arithmetic-coded JPEG")),
                    _ => return Err(refused("hierarchical JPEG")),
                };
                let Some(h) = frame(segment, progressive) else {
                    return Ok(None);
                };
                ids = (0..h.components.len())
                    .map(|c| segment[6 + 3 * c])
                    .collect();
                header = Some(h);
            }
            0xDA => {
                let Some(h) = &mut header else {
                    return Ok(None); // a scan before any frame header
                };
                if h.first_scan_components == 0 {
                    h.first_scan_components = usize::from(segment.first().copied().unwrap_or(0));
                }
                if !h.progressive {
                    return Ok(header);
                }
                scan(segment, &ids, &mut delivered);
                i = next_marker(bytes, i + 2 + len);
                continue;
            }
            _ => {}
        }
        i += 2 + len;
    }
    match header {
        Some(h)
            if h.progressive
                && delivered[..h.components.len()]
                    .iter()
                    .any(|&d| d != u64::MAX) =>
        {
            Err(ApiError::invalid(
                IMAGE_FIELD,
                "the progressive JPEG's scans do not deliver every coefficient of the image \
                 (an incomplete file): send the complete image",
            ))
        }
        other => Ok(other),
    }
}

/// Marks the coefficients a scan delivers in full (a first pass, `Al = 0`: later passes only
/// refine them), as the decoder counts them.
fn scan(s: &[u8], ids: &[u8], delivered: &mut [u64; 4]) {
    let n = usize::from(s.first().copied().unwrap_or(0));
    let Some(tail) = s.get(1 + 2 * n..1 + 2 * n + 3) else {
        return;
    };
    let (ss, se, al) = (u32::from(tail[0]), u32::from(tail[1]).min(63), tail[2] & 15);
    if al != 0 || ss > se {
        return;
    }
    let bits = (u64::MAX >> (63 - se)) & (u64::MAX << ss);
    for c in 0..n {
        if let Some(k) = ids.iter().position(|&id| Some(&id) == s.get(1 + 2 * c))
            && k < 4
        {
            delivered[k] |= bits;
        }
    }
}

/// The position of the next marker after entropy-coded data starting at `from` (a 0xFF that
/// is neither a stuffed zero nor a restart marker).
fn next_marker(bytes: &[u8], from: usize) -> usize {
    let mut j = from;
    while j + 1 < bytes.len() {
        if bytes[j] == 0xFF {
            let b = bytes[j + 1];
            if b != 0 && !(0xD0..=0xD7).contains(&b) && b != 0xFF {
                return j;
            }
        }
        j += 1;
    }
    bytes.len()
}

fn refused(kind: &str) -> ApiError {
    ApiError::UnsupportedMediaType {
        detail: format!("{kind} is not accepted: send a baseline or progressive JPEG, or a PNG"),
        field: Some(IMAGE_FIELD.into()),
    }
}

/// SOF segment body: precision, height, width, then per component an id, `H<<4 | V` and a
/// quantisation table.
fn frame(s: &[u8], progressive: bool) -> Option<Header> {
    let height = u32::from(u16::from_be_bytes([*s.get(1)?, *s.get(2)?]));
    let width = u32::from(u16::from_be_bytes([*s.get(3)?, *s.get(4)?]));
    let n = usize::from(*s.get(5)?);
    let components = (0..n)
        .map(|c| {
            let hv = *s.get(6 + 3 * c + 1)?;
            let (h, v) = (u32::from(hv >> 4), u32::from(hv & 15));
            (h > 0 && v > 0).then_some((h, v))
        })
        .collect::<Option<Vec<_>>>()?;
    (n > 0).then_some(Header {
        width,
        height,
        progressive,
        components,
        first_scan_components: 0,
    })
}

/// How a JPEG is decoded: the DCT scale (output pixels per 8×8 block: 8 is full size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub dct_scale: u32,
    pub out_width: u32,
    pub out_height: u32,
}

impl Header {
    /// Full size, unless the image is at least four times the model's input on both sides:
    /// then the smallest DCT scale that still leaves twice the model's size on both (so that
    /// the final antialiased resize, which decides the result, still has pixels to average).
    pub fn plan(&self, tw: u32, th: u32) -> Plan {
        let out = |s: u32| ((self.width * s).div_ceil(8), (self.height * s).div_ceil(8));
        let dct_scale = if self.width >= 4 * tw && self.height >= 4 * th {
            [1, 2, 4]
                .into_iter()
                .find(|&s| {
                    let (w, h) = out(s);
                    w >= 2 * tw && h >= 2 * th
                })
                .unwrap_or(8)
        } else {
            8
        };
        let (out_width, out_height) = out(dct_scale);
        Plan {
            dct_scale,
            out_width,
            out_height,
        }
    }

    /// What the decoder allocates at its peak for `plan`, bytes: the component planes, the
    /// coefficients of a progressive image, the MCU row being turned into pixels, and the
    /// interleaved output (a single component's plane is the output itself).
    pub fn decoder_bytes(&self, plan: &Plan) -> u64 {
        let hmax = self.components.iter().map(|c| c.0).max().unwrap_or(1);
        let vmax = self.components.iter().map(|c| c.1).max().unwrap_or(1);
        let mcu_x = u64::from(self.width.div_ceil(8 * hmax));
        let mcu_y = u64::from(self.height.div_ceil(8 * vmax));
        let blocks: u64 = self
            .components
            .iter()
            .map(|&(h, v)| mcu_x * u64::from(h) * mcu_y * u64::from(v))
            .sum();
        let s = u64::from(plan.dct_scale);
        let planes = blocks * s * s;
        // One MCU row of every component's coefficients in flight to the IDCT, and its
        // replacement.
        let rows: u64 = self
            .components
            .iter()
            .map(|&(h, v)| 2 * mcu_x * u64::from(h) * u64::from(v) * 128)
            .sum();
        let coefficients = if self.progressive { blocks * 128 } else { 0 };
        let samples = u64::from(plan.out_width) * u64::from(plan.out_height);
        let output = match self.components.len() {
            1 => 0,
            3 => samples * 3,
            _ => samples * 4,
        };
        planes + coefficients + rows + output
    }

    /// Whether this image is decoded in full by the `image` crate's decoder (zune-jpeg). Its
    /// output is the closest to libjpeg's, which the models' training images went through
    /// (mean difference 0.008 grey levels on the example images, `jpeg-decoder` 0.046: enough
    /// to move a retina fixture past its tolerance), so it decodes what its memory is simply
    /// modelled for: baseline grey and colour images at full size, sampled at most 2×2, every
    /// component in the first scan. The rest goes to `jpeg-decoder` (measured: zune-jpeg adds
    /// about 3.5 bytes a pixel for 4:1:1 and 4:1:0, row buffers that grow with the height for
    /// progressive images, and fails on progressive CMYK).
    pub fn decoded_in_full(&self, plan: &Plan) -> bool {
        plan.dct_scale == 8
            && !self.progressive
            && matches!(self.components.len(), 1 | 3)
            && self.components.iter().all(|&(h, v)| h <= 2 && v <= 2)
            && self.first_scan_components == self.components.len()
    }

    /// What zune-jpeg allocates at its peak for a full-size baseline decode, bytes: the output
    /// and its row buffers — per MCU row, each component's samples before and after
    /// upsampling, as 16-bit values: at most 540 bytes per column of the padded width over the
    /// corpus of `image::decode_cost` (widths 233 to 3001, each sampling it decodes), 640
    /// reserved.
    pub fn zune_bytes(&self) -> u64 {
        let hmax = self.components.iter().map(|c| c.0).max().unwrap_or(1);
        let padded_width = u64::from(self.width.div_ceil(8 * hmax)) * u64::from(hmax) * 8;
        let samples = u64::from(self.width) * u64::from(self.height);
        samples * self.output_channels() + 640 * padded_width
    }

    /// Bytes a sample of the decoder's output takes (grey 1, colour 3, CMYK 4).
    pub fn output_channels(&self) -> u64 {
        match self.components.len() {
            1 => 1,
            3 => 3,
            _ => 4,
        }
    }
}

fn corrupt(e: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(IMAGE_FIELD, format!("the image cannot be decoded: {e}"))
}

/// Decodes to RGB8 with `plan`, then applies `orientation` (see [`orientation`]).
pub fn decode(bytes: &[u8], plan: &Plan, orientation: Orientation) -> Result<RgbImage, ApiError> {
    let mut dec = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    dec.read_info().map_err(corrupt)?;
    if plan.dct_scale < 8 {
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        let got = dec
            .scale(clamp(plan.out_width), clamp(plan.out_height))
            .map_err(corrupt)?;
        if (u32::from(got.0), u32::from(got.1)) != (plan.out_width, plan.out_height) {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "JPEG decoder chose {got:?} for a planned {}×{}",
                plan.out_width,
                plan.out_height
            )));
        }
    }
    let data = dec.decode().map_err(corrupt)?;
    let info = dec.info().ok_or_else(|| corrupt("no JPEG header"))?;
    // The decoder keeps a progressive image's coefficients until it goes.
    drop(dec);
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    let rgb = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => data,
        // Expanded into a buffer sized once: growing by doubling would hold up to twice it.
        jpeg_decoder::PixelFormat::L8 => expand(&data, 1, |p| [p[0]; 3]),
        jpeg_decoder::PixelFormat::L16 => expand(&data, 2, |p| [p[0]; 3]),
        // The decoder gives ink amounts (Adobe's inverted storage already undone).
        jpeg_decoder::PixelFormat::CMYK32 => expand(&data, 4, |p| {
            let k = 255 - u32::from(p[3]);
            let rgb = |c: u8| ((255 - u32::from(c)) * k / 255) as u8;
            [rgb(p[0]), rgb(p[1]), rgb(p[2])]
        }),
    };
    let rgb = RgbImage::from_raw(w, h, rgb)
        .ok_or_else(|| corrupt("decoded buffer has the wrong size"))?;
    let mut img = image::DynamicImage::ImageRgb8(rgb);
    img.apply_orientation(orientation);
    Ok(match img {
        image::DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

/// RGB8 from samples of `size` bytes each.
fn expand(data: &[u8], size: usize, f: impl Fn(&[u8]) -> [u8; 3]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / size * 3);
    for p in data.chunks_exact(size) {
        out.extend_from_slice(&f(p));
    }
    out
}

/// The JPEG's EXIF orientation (none when it has no readable one).
pub fn orientation(bytes: &[u8]) -> Orientation {
    let mut dec = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    if dec.read_info().is_err() {
        return Orientation::NoTransforms;
    }
    dec.exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sof(marker: u8, w: u16, h: u16, comps: &[u8]) -> Vec<u8> {
        let mut out = vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 0, 0];
        let len = 8 + 3 * comps.len() as u16;
        out.extend_from_slice(&[0xFF, marker]);
        out.extend_from_slice(&len.to_be_bytes());
        out.push(8);
        out.extend_from_slice(&h.to_be_bytes());
        out.extend_from_slice(&w.to_be_bytes());
        out.push(comps.len() as u8);
        for (i, hv) in comps.iter().enumerate() {
            out.extend_from_slice(&[i as u8 + 1, *hv, 0]);
        }
        out
    }

    /// A scan header over components `ids` delivering `ss..=se` at `al`, then a few bytes of
    /// entropy-coded data (with a stuffed 0xFF and a restart marker, which are not markers).
    fn sos(ids: &[u8], ss: u8, se: u8, al: u8) -> Vec<u8> {
        let len = 6 + 2 * ids.len() as u16;
        let mut out = vec![0xFF, 0xDA];
        out.extend_from_slice(&len.to_be_bytes());
        out.push(ids.len() as u8);
        for id in ids {
            out.extend_from_slice(&[*id, 0]);
        }
        out.extend_from_slice(&[ss, se, al]);
        out.extend_from_slice(&[1, 2, 0xFF, 0, 3, 0xFF, 0xD0, 4]);
        out
    }

    #[test]
    fn the_frame_header_gives_size_sampling_and_kind() {
        let mut jpeg = sof(0xC2, 3001, 2003, &[0x22, 0x11, 0x11]);
        jpeg.extend(sos(&[1, 2, 3], 0, 0, 1)); // DC, first pass at reduced precision
        jpeg.extend(sos(&[1, 2, 3], 0, 0, 0)); // DC refined
        for id in 1..=3 {
            jpeg.extend(sos(&[id], 1, 63, 0));
        }
        jpeg.extend_from_slice(&[0xFF, 0xD9]);
        let baseline = [
            sof(0xC0, 801, 603, &[0x22, 0x11, 0x11]),
            sos(&[1, 2, 3], 0, 63, 0),
        ];
        let baseline = header(&baseline.concat()).expect("accepted").expect("read");
        assert_eq!(baseline.first_scan_components, 3);
        let h = header(&jpeg).expect("accepted").expect("read");
        assert_eq!((h.width, h.height, h.progressive), (3001, 2003, true));
        assert_eq!(h.components, vec![(2, 2), (1, 1), (1, 1)]);
        // 4:2:0 at half size: Y 376×252 blocks, chroma 188×126 each, 4 bytes a block, plus
        // 128 bytes of coefficients a block, plus an MCU row of coefficients twice, plus the
        // RGB output.
        let plan = h.plan(224, 224);
        assert_eq!(plan.dct_scale, 2);
        assert_eq!((plan.out_width, plan.out_height), (751, 501));
        let blocks = 376 * 252 + 2 * 188 * 126;
        let rows = 2 * (188 * 2 * 2 + 2 * 188) * 128;
        assert_eq!(
            h.decoder_bytes(&plan),
            blocks * 4 + blocks * 128 + rows + 751 * 501 * 3
        );
        // Without the last component's AC scan, its coefficients are never all delivered.
        let mut partial = sof(0xC2, 3001, 2003, &[0x22, 0x11, 0x11]);
        partial.extend(sos(&[1, 2, 3], 0, 0, 0));
        partial.extend(sos(&[1], 1, 63, 0));
        partial.extend(sos(&[2], 1, 63, 0));
        partial.extend(sos(&[3], 1, 63, 1)); // a first pass at reduced precision only
        partial.extend_from_slice(&[0xFF, 0xD9]);
        let err = header(&partial).expect_err("incomplete");
        assert_eq!(err.problem().status, 422);
        assert!(err.to_string().contains("every coefficient"), "{err}");
    }

    #[test]
    fn kinds_no_decoder_here_reads_are_refused_by_name() {
        for (marker, kind) in [
            (0xC3, "lossless"),
            (0xC9, "arithmetic"),
            (0xC5, "hierarchical"),
        ] {
            let err = header(&sof(marker, 100, 100, &[0x11])).expect_err("refused");
            assert_eq!(err.problem().status, 415);
            assert!(err.to_string().contains(kind), "{err}");
        }
        assert_eq!(header(b"\xFF\xD8\xFF\xD9").expect("no frame"), None);
    }
}
