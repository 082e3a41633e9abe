//! `medchain-bench decode`: what the image decode budget (`images.decode_budget_mb`) holds a
//! disease service to. Small files that decode to a great deal — 40-megapixel PNGs of one
//! flat colour, a few hundred KB each, that decode to 320 MB (16-bit RGBA) or 120 MB (8-bit
//! RGB) — are sent several at once to diabetes-svc, once with the shipped budget and once
//! with the budget out of the way; each case is a fresh process, its peak RSS (VmHWM) reset
//! once the model is loaded. (This was `bench/probes/decode_probe.py`; the shipped default
//! rests on it.)

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use flate2::write::ZlibEncoder;
use serde::{Deserialize, Serialize};

use crate::load::{Target, drive};
use crate::{Args, inputs, results};
use medchain_tests::system::{mem, wait_ok};

/// 7000×5700: 39.9 MP, just under the services' 40-MP limit.
const WIDTH: u32 = 7000;
const HEIGHT: u32 = 5700;
/// A budget no decode reaches: the budget out of the way.
const NO_BUDGET_MB: usize = 1_000_000;

/// One case: `uploads` copies of one image at once to a fresh diabetes-svc.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Case {
    /// What was sent, e.g. `40-MP 16-bit RGBA PNG`.
    pub image: String,
    pub file_kb: f64,
    /// What one decode holds at its peak: the decoded pixels alone, MB.
    pub decoded_mb: f64,
    pub uploads: usize,
    /// The budget in force, MB; `None`: out of the way.
    pub budget_mb: Option<usize>,
    /// HTTP status → how many.
    pub statuses: std::collections::BTreeMap<u16, usize>,
    /// RSS with the retina model loaded, before the uploads, MB.
    pub rss_loaded_mb: f64,
    /// Peak RSS (VmHWM) during the uploads, MB.
    pub peak_mb: f64,
}

/// What `medchain-bench decode` writes to `results/decode.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecodeRun {
    #[serde(flatten)]
    pub header: results::Header,
    /// The shipped `images.decode_budget_mb` of diabetes-svc.
    pub default_budget_mb: usize,
    pub cases: Vec<Case>,
}

/// A PNG of `WIDTH`×`HEIGHT` pixels of one flat colour, streamed through zlib row by row (the
/// file is a few hundred KB; the pixels are never held).
fn flat_png(bit_depth: u8, colour_type: u8, bytes_per_pixel: usize) -> anyhow::Result<Vec<u8>> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut row = vec![17u8; 1 + WIDTH as usize * bytes_per_pixel];
    row[0] = 0; // filter: none
    let mut z = ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    for _ in 0..HEIGHT {
        z.write_all(&row)?;
    }
    let idat = z.finish()?;
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&WIDTH.to_be_bytes());
    ihdr.extend_from_slice(&HEIGHT.to_be_bytes());
    ihdr.extend_from_slice(&[bit_depth, colour_type, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    Ok(out)
}

/// diabetes-svc from `bin_dir` on `port`, logging at `warn`, no chain-svc, with `budget_mb`
/// when given.
fn start(bin_dir: &Path, port: u16, budget_mb: Option<usize>) -> anyhow::Result<Child> {
    let bin = bin_dir.join("diabetes-svc");
    let mut cmd = Command::new(&bin);
    cmd.env("DIABETES__SERVER__PORT", port.to_string())
        .env("DIABETES__TELEMETRY__FILTER", "warn")
        .env("DIABETES__CHAIN__URL", "")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(mb) = budget_mb {
        cmd.env("DIABETES__IMAGES__DECODE_BUDGET_MB", mb.to_string());
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// One case on a fresh process given `budget_mb` (`None`: the shipped one): load the model
/// with a small example, reset the peak, send the uploads at once, read the peak.
async fn case(
    args: &Args,
    (image, file, decoded_mb): (&str, &[u8], f64),
    uploads: usize,
    budget_mb: Option<usize>,
) -> anyhow::Result<Case> {
    let port = medchain_tests::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start(&args.bin_dir, port, budget_mb)?;
    let measured = async {
        let client = reqwest::Client::new();
        let url = format!("{base}/healthz");
        wait_ok(&client, &url, &mut child, "diabetes-svc", Instant::now()).await?;
        let url = format!("{base}/v1/predict/retina");
        let warm = drive(
            &Target::image(
                url.clone(),
                &inputs::small_jpeg("retina")?,
                "image/jpeg",
                None,
            ),
            1,
            1,
        )
        .await;
        if warm.ok() != 1 {
            bail!("the retina model did not load: {:?}", warm.first_failure);
        }
        let pid = child.id();
        let loaded = mem(pid).context("no /proc figures")?;
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").context("resetting the peak")?;
        let sent = drive(
            &Target::image(url, file, "image/png", None),
            uploads,
            uploads,
        )
        .await;
        let peak = mem(pid).context("no /proc figures")?;
        Ok(Case {
            image: image.to_string(),
            file_kb: file.len() as f64 / 1024.0,
            decoded_mb,
            uploads,
            budget_mb,
            statuses: sent.statuses.clone(),
            rss_loaded_mb: loaded.rss_mb,
            peak_mb: peak.hwm_mb,
        })
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    measured
}

pub async fn run(args: &Args) -> anyhow::Result<DecodeRun> {
    medchain_core::http::init_tls();
    let defaults = medchain_serving::DiseaseSettings::load(&medchain_diabetes_svc::SPEC)?;
    let default_budget_mb = defaults.images.decode_budget_mb.get();
    let pixels = f64::from(WIDTH) * f64::from(HEIGHT);
    let rgba16 = flat_png(16, 6, 8)?;
    let rgb8 = flat_png(8, 2, 3)?;
    let images = [
        (
            "40-MP 16-bit RGBA PNG",
            rgba16.as_slice(),
            pixels * 8.0 / 1e6,
        ),
        ("40-MP 8-bit RGB PNG", rgb8.as_slice(), pixels * 3.0 / 1e6),
    ];
    let uploads = if args.quick { 2 } else { 4 };
    let mut cases = Vec::new();
    for image in images {
        // (what the service is given, what is in force)
        for (given, in_force) in [(None, Some(default_budget_mb)), (Some(NO_BUDGET_MB), None)] {
            println!(
                "decode: {uploads} × {} with the budget {}",
                image.0,
                in_force.map_or("out of the way".into(), |mb| format!("of {mb} MB"))
            );
            let mut c = case(args, image, uploads, given).await?;
            c.budget_mb = in_force;
            cases.push(c);
        }
    }
    Ok(DecodeRun {
        header: results::run_header(args, "decode"),
        default_budget_mb,
        cases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flat_pngs_are_small_files_of_the_stated_size() {
        let png = flat_png(8, 2, 3).expect("png");
        assert!(png.len() < 2 << 20, "{} bytes", png.len());
        let decoder = image::ImageReader::new(std::io::Cursor::new(&png))
            .with_guessed_format()
            .expect("format");
        assert_eq!(decoder.into_dimensions().expect("header"), (WIDTH, HEIGHT));
    }
}
