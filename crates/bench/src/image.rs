//! `verge bench image`: the image pipeline against `vipsthumbnail` and ImageMagick.
//!
//! 1. Generates `--images` distinct photographic-like JPEGs (q90, 4:2:0; seeded sky,
//!    clouds, ridge line, textured ground, soft-edged shapes, sensor grain: see
//!    [`photo`]) and a semi-transparent PNG watermark ([`watermark_png`]) into a work
//!    directory.
//! 2. Runs every contender as **one process over the whole batch** (start-up amortised),
//!    one after the other (`--runs` rounds, round robin), pinned to one CPU with
//!    `taskset -c CPU` when `taskset` exists:
//!    - Verge: the hidden `verge bench image-worker`, which calls
//!      [`verge_imaging::thumbnail_jpeg`] per file on one thread (resize only, then resize
//!      + watermark);
//!    - `VIPS_CONCURRENCY=1 vipsthumbnail --size Wx -o OUT/%s.jpg[Q=80,strip] FILES...`
//!      (resize only: vipsthumbnail cannot watermark, and the `vips` CLI runs one
//!      operation per process, so a one-process libvips watermark run is not possible);
//!    - `MAGICK_THREAD_LIMIT=1 /usr/bin/mogrify -path OUT -resize Wx -quality Q -strip
//!      [-gravity SouthEast -draw "image Over 20,20 0,0 'wm.png'"] FILES...`, plus an
//!      informational run with `-define jpeg:size=` (DCT-scaled decode, like Verge's);
//!    - the decode floor: `image-worker --decode-scale 1|2|4` decodes every file with
//!      libjpeg-turbo (full size, 1/2, 1/4) and nothing else.
//!
//!    Every contender is spawned by the hidden `verge bench image-measure -- CMD...`,
//!    which waits for its single child and reports wall time, CPU time and
//!    `getrusage(RUSAGE_CHILDREN).ru_maxrss` — exactly that child's peak RSS.
//! 3. Compares the outputs with libvips': PSNR over RGB and SSIM on luma ([`psnr`],
//!    [`ssim`]), mean over the batch.
//!
//! All three resize to the same geometry: `W` pixels wide, height from the aspect ratio
//! (`thumbnail_jpeg(width)`, `vipsthumbnail --size Wx`, `mogrify -resize Wx`), so a
//! 4000×3000 input becomes 1200×900 for all of them.
//!
//! The report is a Markdown table (or JSON with `--json`). Run it from a release build.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use verge_imaging::{ComposeSpec, Gravity, Limits, NoAssets, Watermark, thumbnail_jpeg};

/// ImageMagick, by full path (Debian's `imagemagick` package).
const MOGRIFY: &str = "/usr/bin/mogrify";
/// Distance of the watermark from the bottom-right corner, in pixels.
const WM_OFFSET: i32 = 20;
/// Asset name the worker gives the watermark.
const WM_ASSET: &str = "wm";

/// `verge bench image`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImageBenchArgs {
    /// Number of generated source JPEGs.
    #[arg(long, default_value_t = 30)]
    pub images: usize,
    /// Width of the generated sources.
    #[arg(long, default_value_t = 4000)]
    pub width: u32,
    /// Height of the generated sources.
    #[arg(long, default_value_t = 3000)]
    pub height: u32,
    /// Output width (the height follows the aspect ratio).
    #[arg(long, default_value_t = 1200)]
    pub size: u32,
    /// Output JPEG quality.
    #[arg(long, default_value_t = 80)]
    pub quality: u8,
    /// Work directory (created if needed, never deleted); default: a temporary one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the temporary work directory (sources and outputs) and print its path.
    #[arg(long)]
    pub keep: bool,
    /// Rounds over all contenders (round robin, so that a slow spell of the machine hits
    /// them alike); the median wall time and the largest peak RSS are reported.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// CPU every contender is pinned to (with `taskset`, when installed).
    #[arg(long, default_value_t = 0)]
    pub cpu: usize,
    /// Seed of the generated images.
    #[arg(long, default_value_t = 6)]
    pub seed: u64,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `verge bench image-worker` (hidden): Verge's side of the benchmark, in its own process.
#[derive(Debug, Clone, clap::Args)]
pub struct ImageWorkerArgs {
    /// Directory of `*.jpg` sources.
    #[arg(long = "in")]
    pub input: PathBuf,
    /// Output directory (thumbnail mode).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Output width.
    #[arg(long, default_value_t = 1200)]
    pub size: u32,
    /// Output JPEG quality.
    #[arg(long, default_value_t = 80)]
    pub quality: u8,
    /// PNG drawn in the bottom-right corner, 20 px in.
    #[arg(long)]
    pub watermark: Option<PathBuf>,
    /// Only decode every file with libjpeg-turbo at 1/N scale (1, 2, 4 or 8).
    #[arg(long, conflicts_with_all = ["out", "watermark"])]
    pub decode_scale: Option<usize>,
    /// Where to write the [`WorkerReport`] (JSON).
    #[arg(long)]
    pub report: PathBuf,
}

/// `verge bench image-measure -- CMD ARGS...` (hidden): runs CMD, prints a
/// [`Measurement`] as JSON.
#[derive(Debug, Clone, clap::Args)]
pub struct ImageMeasureArgs {
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<OsString>,
}

/// What `image-measure` saw of its one child.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Measurement {
    /// Spawn to exit, seconds.
    pub wall_s: f64,
    /// User CPU time, seconds.
    pub user_s: f64,
    /// System CPU time, seconds.
    pub sys_s: f64,
    /// Peak resident set size, KiB (`ru_maxrss`).
    pub max_rss_kb: i64,
    /// Exit code (-1 when killed by a signal).
    pub exit_code: i32,
}

/// What `image-worker` did, timed inside the process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Files processed.
    pub images: usize,
    /// Time inside `thumbnail_jpeg` (or the decoder) only, seconds.
    pub busy_s: f64,
    /// The whole loop including reading and writing files, seconds.
    pub loop_s: f64,
    /// Bytes written (thumbnail mode) or pixels decoded (decode mode).
    pub output_total: u64,
}

/// Runs Verge's side of the benchmark on the current thread.
pub fn worker(args: &ImageWorkerArgs) -> Result<()> {
    let files = jpegs(&args.input)?;
    let started = Instant::now();
    let mut busy = 0f64;
    let mut total = 0u64;
    if let Some(denom) = args.decode_scale {
        if ![1, 2, 4, 8].contains(&denom) {
            bail!("--decode-scale must be 1, 2, 4 or 8");
        }
        let mut d = turbojpeg::Decompressor::new()?;
        d.set_scaling_factor(turbojpeg::ScalingFactor::new(1, denom))?;
        let mut pixels = Vec::new();
        for f in &files {
            let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            let t = Instant::now();
            let h = d
                .read_header(&bytes)?
                .scaled(turbojpeg::ScalingFactor::new(1, denom));
            // One buffer for the batch: the floor is the decoder, not page faults.
            pixels.resize(h.width * h.height * 3, 0);
            d.decompress(
                &bytes,
                turbojpeg::Image {
                    pixels: pixels.as_mut_slice(),
                    width: h.width,
                    pitch: h.width * 3,
                    height: h.height,
                    format: turbojpeg::PixelFormat::RGB,
                },
            )?;
            busy += t.elapsed().as_secs_f64();
            total += (h.width * h.height) as u64;
        }
    } else {
        let out = args
            .out
            .as_ref()
            .ok_or_else(|| anyhow!("--out is required without --decode-scale"))?;
        std::fs::create_dir_all(out)?;
        let mark = args
            .watermark
            .as_ref()
            .map(std::fs::read)
            .transpose()
            .context("reading the watermark")?;
        let spec = watermark_spec();
        let limits = Limits::default();
        for f in &files {
            let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            let t = Instant::now();
            let thumb = thumbnail_jpeg(
                &bytes,
                args.size,
                args.quality,
                mark.as_deref().map(|m| (m, &spec)),
                &limits,
            )
            .map_err(|e| anyhow!("{}: {e}", f.display()))?;
            busy += t.elapsed().as_secs_f64();
            total += thumb.bytes.len() as u64;
            let name = f.file_name().ok_or_else(|| anyhow!("no file name"))?;
            std::fs::write(out.join(name), &thumb.bytes)?;
        }
    }
    let report = WorkerReport {
        images: files.len(),
        busy_s: busy,
        loop_s: started.elapsed().as_secs_f64(),
        output_total: total,
    };
    std::fs::write(&args.report, serde_json::to_vec(&report)?)?;
    Ok(())
}

/// The watermark as the worker draws it: natural size, bottom-right, 20 px in, the PNG's
/// own alpha (opacity 1) — what `mogrify -gravity SouthEast -draw "image Over 20,20 0,0"`
/// does.
fn watermark_spec() -> Watermark {
    Watermark {
        asset: WM_ASSET.into(),
        position: Gravity::SouthEast,
        offset_x: WM_OFFSET,
        offset_y: WM_OFFSET,
        opacity: 1.0,
        scale: None,
        tile: false,
    }
}

/// Runs `args.cmd`, waits for it and prints a [`Measurement`] as one line of JSON. The
/// child's stdout goes to stderr so that stdout carries only the measurement. This process
/// has exactly one child, so `RUSAGE_CHILDREN` is that child's usage.
pub fn measure(args: &ImageMeasureArgs) -> Result<()> {
    use nix::sys::resource::{UsageWho, getrusage};
    let (program, rest) = args
        .cmd
        .split_first()
        .ok_or_else(|| anyhow!("no command"))?;
    let started = Instant::now();
    let status = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .with_context(|| format!("starting {}", program.to_string_lossy()))?;
    let wall_s = started.elapsed().as_secs_f64();
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN)?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    let m = Measurement {
        wall_s,
        user_s: secs(usage.user_time()),
        sys_s: secs(usage.system_time()),
        // `c_long` is `i32` on 32-bit targets.
        #[allow(clippy::useless_conversion)]
        max_rss_kb: i64::from(usage.max_rss()),
        exit_code: status.code().unwrap_or(-1),
    };
    outln!("{}", serde_json::to_string(&m)?);
    Ok(())
}

/// The `*.jpg` files of `dir`, sorted.
fn jpegs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    files.sort();
    Ok(files)
}

// ---------------------------------------------------------------------------------------
// Test images

/// SplitMix64: deterministic and fast; plenty for test pixels.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    fn colour(&mut self, lo: [f32; 3], hi: [f32; 3]) -> [f32; 3] {
        [
            self.range(lo[0], hi[0]),
            self.range(lo[1], hi[1]),
            self.range(lo[2], hi[2]),
        ]
    }
}

/// Fractal value noise: octaves of random values on coarse grids, smoothly interpolated;
/// values in [0, 1].
struct Noise {
    octaves: Vec<Octave>,
    norm: f32,
}

struct Octave {
    cell: f32,
    weight: f32,
    grid_w: usize,
    values: Vec<f32>,
    /// Per column: grid index and smoothed fraction.
    columns: Vec<(usize, f32)>,
}

fn smooth(t: f32) -> f32 {
    t * t * (3.0 - 2.0 * t)
}

fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

fn lerp3(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        lerp(a[0], b[0], t),
        lerp(a[1], b[1], t),
        lerp(a[2], b[2], t),
    ]
}

impl Noise {
    fn new(rng: &mut Rng, width: usize, height: usize, cells: &[f32]) -> Noise {
        let mut weight = 1.0;
        let mut norm = 0.0;
        let octaves = cells
            .iter()
            .map(|&cell| {
                let grid_w = (width as f32 / cell) as usize + 2;
                let grid_h = (height as f32 / cell) as usize + 2;
                let values = (0..grid_w * grid_h).map(|_| rng.unit()).collect();
                let columns = (0..width)
                    .map(|x| {
                        let g = x as f32 / cell;
                        (g as usize, smooth(g.fract()))
                    })
                    .collect();
                let o = Octave {
                    cell,
                    weight,
                    grid_w,
                    values,
                    columns,
                };
                norm += weight;
                weight *= 0.55;
                o
            })
            .collect();
        Noise { octaves, norm }
    }

    /// Fills `out` with the noise of row `y`.
    fn row(&self, y: usize, out: &mut [f32]) {
        out.fill(0.0);
        for o in &self.octaves {
            let g = y as f32 / o.cell;
            let (gy, fy) = (g as usize, smooth(g.fract()));
            let top = &o.values[gy * o.grid_w..(gy + 1) * o.grid_w];
            let bottom = &o.values[(gy + 1) * o.grid_w..(gy + 2) * o.grid_w];
            for (v, &(gx, fx)) in out.iter_mut().zip(&o.columns) {
                let a = lerp(top[gx], top[gx + 1], fx);
                let b = lerp(bottom[gx], bottom[gx + 1], fx);
                *v += lerp(a, b, fy) * o.weight;
            }
        }
        for v in out.iter_mut() {
            *v /= self.norm;
        }
    }
}

/// A photographic-like RGB image (packed, 3 bytes per pixel), different for every seed:
/// a sky gradient with clouds above a noisy ridge line, textured ground with haze at the
/// horizon, a sun, soft-edged shaded ellipses and rectangles, and sensor grain. Smooth
/// areas, edges and fine texture in roughly a camera photo's proportions, so that a q90
/// JPEG of it is about as costly to decode as a real one.
pub fn photo(width: u32, height: u32, seed: u64) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5EED);
    let sky_top = rng.colour([10.0, 50.0, 120.0], [90.0, 140.0, 230.0]);
    let sky_low = rng.colour([150.0, 140.0, 130.0], [250.0, 225.0, 235.0]);
    let ground_a = rng.colour([25.0, 40.0, 10.0], [110.0, 120.0, 70.0]);
    let ground_b = rng.colour([90.0, 70.0, 40.0], [190.0, 160.0, 120.0]);
    let cloud = rng.colour([225.0, 225.0, 225.0], [255.0, 255.0, 255.0]);
    let clouds = Noise::new(&mut rng, w, h, &[w as f32 / 6.0, w as f32 / 20.0, 40.0]);
    let terrain = Noise::new(&mut rng, w, h, &[w as f32 / 10.0, 90.0, 18.0, 5.0]);
    let ridge_noise = Noise::new(&mut rng, w, 1, &[w as f32 / 4.0, w as f32 / 18.0, 30.0]);
    let horizon = h as f32 * rng.range(0.3, 0.6);
    let mut ridge = vec![0f32; w];
    ridge_noise.row(0, &mut ridge);
    for r in &mut ridge {
        *r = horizon + (*r - 0.5) * h as f32 * 0.25;
    }
    let cloudiness = rng.range(0.45, 0.65);

    let mut img = vec![0f32; w * h * 3];
    let (mut cl, mut tx) = (vec![0f32; w], vec![0f32; w]);
    for y in 0..h {
        clouds.row(y, &mut cl);
        terrain.row(y, &mut tx);
        let yf = y as f32;
        let row = &mut img[y * w * 3..(y + 1) * w * 3];
        for x in 0..w {
            let c = if yf < ridge[x] {
                let sky = lerp3(sky_top, sky_low, (yf / ridge[x]).powf(1.5));
                let k = ((cl[x] - cloudiness) / 0.2).clamp(0.0, 1.0);
                lerp3(sky, cloud, smooth(k) * (0.6 + 0.4 * cl[x]))
            } else {
                let d = (yf - ridge[x]) / (h as f32 - ridge[x]).max(1.0);
                let t = tx[x];
                let base = lerp3(ground_a, ground_b, smooth(t));
                let light = 0.55 + 0.6 * t + 0.25 * (1.0 - d);
                let lit = [base[0] * light, base[1] * light, base[2] * light];
                lerp3(lit, sky_low, (1.0 - d).powi(12) * 0.6)
            };
            row[x * 3..x * 3 + 3].copy_from_slice(&c);
        }
    }

    // The sun, then shapes (buildings, rocks, trees) in front.
    let sun_r = rng.range(0.01, 0.04) * w as f32;
    let sun = (
        rng.range(0.1, 0.9) * w as f32,
        rng.range(0.05, 0.5) * horizon,
    );
    shape(
        &mut img,
        w,
        h,
        true,
        sun,
        (sun_r, sun_r),
        [255.0, 245.0, 215.0],
        0.0,
    );
    for _ in 0..rng.range(6.0, 14.0) as usize {
        let ellipse = rng.unit() < 0.5;
        let centre = (
            rng.range(0.0, w as f32),
            rng.range(horizon * 0.8, h as f32 * 1.05),
        );
        let radii = (
            rng.range(0.02, 0.15) * w as f32,
            rng.range(0.03, 0.2) * h as f32,
        );
        let colour = rng.colour([20.0, 20.0, 20.0], [230.0, 210.0, 200.0]);
        shape(&mut img, w, h, ellipse, centre, radii, colour, 0.4);
    }

    // Sensor grain: luma noise plus a little chroma noise.
    let sigma = rng.range(3.5, 6.0);
    let mut out = Vec::with_capacity(w * h * 3);
    let mut grain = Rng(rng.next());
    let tri = |r: u64, shift: u32| {
        let a = ((r >> shift) & 0xFFFF) as f32 / 65535.0;
        let b = ((r >> (shift + 16)) & 0xFFFF) as f32 / 65535.0;
        (a + b - 1.0) * 2.449
    };
    for px in img.chunks_exact(3) {
        let r = grain.next();
        let luma = tri(r, 0) * sigma;
        let chroma = tri(r, 32) * sigma * 0.35;
        out.push((px[0] + luma + chroma).clamp(0.0, 255.0) as u8);
        out.push((px[1] + luma).clamp(0.0, 255.0) as u8);
        out.push((px[2] + luma - chroma).clamp(0.0, 255.0) as u8);
    }
    out
}

/// Draws a soft-edged (anti-aliased) ellipse or rectangle lit from the left, its surface
/// modulated by the pixels beneath (`texture` in 0..=1) so that it is not flat.
#[allow(clippy::too_many_arguments)]
fn shape(
    img: &mut [f32],
    w: usize,
    h: usize,
    ellipse: bool,
    (cx, cy): (f32, f32),
    (rx, ry): (f32, f32),
    colour: [f32; 3],
    texture: f32,
) {
    let x0 = (cx - rx - 1.0).max(0.0) as usize;
    let x1 = ((cx + rx + 2.0) as usize).min(w);
    let y0 = (cy - ry - 1.0).max(0.0) as usize;
    let y1 = ((cy + ry + 2.0) as usize).min(h);
    for y in y0..y1 {
        let dy = y as f32 - cy;
        for x in x0..x1 {
            let dx = x as f32 - cx;
            // Approximate signed distance to the edge, in pixels.
            let sd = if ellipse {
                (((dx / rx).powi(2) + (dy / ry).powi(2)).sqrt() - 1.0) * rx.min(ry)
            } else {
                (dx.abs() - rx).max(dy.abs() - ry)
            };
            let cover = (0.5 - sd).clamp(0.0, 1.0);
            if cover == 0.0 {
                continue;
            }
            let light = 1.1 - 0.4 * (dx / rx + 1.0) * 0.5;
            let p = &mut img[(y * w + x) * 3..(y * w + x) * 3 + 3];
            let under = (p[0] + p[1] + p[2]) / (3.0 * 255.0);
            let k = light * (1.0 - texture + texture * 2.0 * under);
            for c in 0..3 {
                p[c] = lerp(p[c], colour[c] * k, cover);
            }
        }
    }
}

/// Encodes packed RGB as a JPEG with libjpeg-turbo (4:2:0, like most cameras).
fn encode_jpeg(rgb: &[u8], width: u32, height: u32, quality: i32) -> Result<Vec<u8>> {
    let mut c = turbojpeg::Compressor::new()?;
    c.set_quality(quality)?;
    c.set_subsamp(turbojpeg::Subsamp::Sub2x2)?;
    Ok(c.compress_to_vec(turbojpeg::Image {
        pixels: rgb,
        width: width as usize,
        pitch: width as usize * 3,
        height: height as usize,
        format: turbojpeg::PixelFormat::RGB,
    })?)
}

/// A semi-transparent watermark PNG `width` pixels wide: white text on a translucent dark
/// band, with an alpha channel (composed with [`verge_imaging::compose`]).
pub fn watermark_png(width: u32) -> Result<Vec<u8>> {
    let width = width.max(40);
    let height = (width * 4 / 15).max(16);
    let spec: ComposeSpec = serde_json::from_value(json!({
        "width": width,
        "height": height,
        "background": "#00000060",
        "layers": [{
            "type": "text",
            "text": "© Verge",
            "x": height / 5,
            "y": height / 8,
            "size": (height as f32 * 0.62).round(),
            "color": "#ffffffc8",
            "strokeWidth": 1,
            "strokeColor": "#00000080"
        }],
        "output": {"format": "png"}
    }))?;
    Ok(verge_imaging::compose(&spec, &NoAssets, &Limits::default())
        .map_err(|e| anyhow!("watermark: {e}"))?
        .bytes)
}

// ---------------------------------------------------------------------------------------
// Quality

/// Peak signal-to-noise ratio of two equally long 8-bit buffers, in dB; infinite when they
/// are identical, NaN when their lengths differ or they are empty.
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return f64::NAN;
    }
    let se: u64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = u64::from(x.abs_diff(y));
            d * d
        })
        .sum();
    if se == 0 {
        return f64::INFINITY;
    }
    let mse = se as f64 / a.len() as f64;
    10.0 * (255.0 * 255.0 / mse).log10()
}

/// Mean structural similarity of two single-channel 8-bit images of `width`×`height`
/// (row-major, no padding): 8×8 windows every 4 pixels (one window of the whole image if
/// it is smaller), the usual constants `C1 = (0.01·255)²`, `C2 = (0.03·255)²`. 1.0 for
/// identical images; NaN when the buffers do not match the size.
pub fn ssim(a: &[u8], b: &[u8], width: usize, height: usize) -> f64 {
    const WIN: usize = 8;
    const STEP: usize = 4;
    if width == 0 || height == 0 || a.len() != width * height || b.len() != a.len() {
        return f64::NAN;
    }
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let (ww, wh) = (WIN.min(width), WIN.min(height));
    let n = (ww * wh) as f64;
    let (mut total, mut windows) = (0f64, 0usize);
    for y in (0..=height - wh).step_by(STEP) {
        for x in (0..=width - ww).step_by(STEP) {
            let (mut sa, mut sb, mut saa, mut sbb, mut sab) = (0u64, 0u64, 0u64, 0u64, 0u64);
            for row in y..y + wh {
                let i = row * width + x;
                for (&p, &q) in a[i..i + ww].iter().zip(&b[i..i + ww]) {
                    let (p, q) = (u64::from(p), u64::from(q));
                    sa += p;
                    sb += q;
                    saa += p * p;
                    sbb += q * q;
                    sab += p * q;
                }
            }
            let (ma, mb) = (sa as f64 / n, sb as f64 / n);
            let va = saa as f64 / n - ma * ma;
            let vb = sbb as f64 / n - mb * mb;
            let cov = sab as f64 / n - ma * mb;
            total += ((2.0 * ma * mb + c1) * (2.0 * cov + c2))
                / ((ma * ma + mb * mb + c1) * (va + vb + c2));
            windows += 1;
        }
    }
    total / windows as f64
}

/// BT.601 luma of packed RGB.
fn luma(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .map(|p| {
            ((77 * u32::from(p[0]) + 150 * u32::from(p[1]) + 29 * u32::from(p[2]) + 128) >> 8) as u8
        })
        .collect()
}

/// PSNR (RGB) and SSIM (luma) of one image against a reference.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Similarity {
    /// PSNR over all RGB samples, dB.
    pub psnr_db: f64,
    /// SSIM of the luma planes.
    pub ssim: f64,
    /// The sizes differed and only the overlapping top-left region was compared.
    pub cropped: bool,
}

/// A decoded RGB image.
struct Rgb {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Rgb {
    fn load(path: &Path) -> Result<Rgb> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let img = turbojpeg::decompress(&bytes, turbojpeg::PixelFormat::RGB)
            .with_context(|| format!("decoding {}", path.display()))?;
        let pixels = if img.pitch == img.width * 3 {
            img.pixels
        } else {
            img.pixels
                .chunks(img.pitch)
                .flat_map(|r| &r[..img.width * 3])
                .copied()
                .collect()
        };
        Ok(Rgb {
            width: img.width,
            height: img.height,
            pixels,
        })
    }

    /// The top-left `w`×`h` region.
    fn crop(&self, w: usize, h: usize) -> Vec<u8> {
        if w == self.width && h == self.height {
            return self.pixels.clone();
        }
        self.pixels
            .chunks(self.width * 3)
            .take(h)
            .flat_map(|r| &r[..w * 3])
            .copied()
            .collect()
    }
}

/// Compares two RGB images; when their sizes differ, over the overlapping region.
fn compare(a: &Rgb, b: &Rgb) -> Similarity {
    let (w, h) = (a.width.min(b.width), a.height.min(b.height));
    let (pa, pb) = (a.crop(w, h), b.crop(w, h));
    Similarity {
        psnr_db: psnr(&pa, &pb),
        ssim: ssim(&luma(&pa), &luma(&pb), w, h),
        cropped: (a.width, a.height) != (b.width, b.height),
    }
}

/// Mean similarity of the files of `dir` to those of the same name in `reference`.
fn compare_dirs(dir: &Path, reference: &Path, names: &[OsString]) -> Result<Value> {
    let (mut psnr_sum, mut ssim_sum, mut psnr_min, mut ssim_min) = (0.0, 0.0, f64::MAX, 1.0f64);
    let mut cropped = 0;
    for name in names {
        let s = compare(
            &Rgb::load(&dir.join(name))?,
            &Rgb::load(&reference.join(name))?,
        );
        psnr_sum += s.psnr_db;
        ssim_sum += s.ssim;
        psnr_min = psnr_min.min(s.psnr_db);
        ssim_min = ssim_min.min(s.ssim);
        cropped += usize::from(s.cropped);
    }
    let n = names.len().max(1) as f64;
    Ok(json!({
        "psnr_db_mean": r2(psnr_sum / n),
        "psnr_db_min": r2(psnr_min),
        "ssim_mean": r4(ssim_sum / n),
        "ssim_min": r4(ssim_min),
        "size_mismatches": cropped,
    }))
}

// ---------------------------------------------------------------------------------------
// The benchmark

fn r2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn r4(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

/// The one-minute load average (0 when unknown).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// `name` in a directory of `$PATH`.
fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// First line of a command's output, or "?".
fn version_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines().next().map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}

/// One contender of the benchmark.
struct Contender {
    key: &'static str,
    label: &'static str,
    work: &'static str,
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(&'static str, &'static str)>,
    /// Output directory, checked and compared afterwards.
    out: Option<PathBuf>,
    /// In-process report written by the Verge worker.
    report: Option<PathBuf>,
}

/// The measured result of a contender.
struct Outcome {
    wall_s: f64,
    /// Fastest and slowest run.
    wall_range: (f64, f64),
    cpu_s: f64,
    max_rss_kb: i64,
    worker: Option<WorkerReport>,
    out_bytes: u64,
    out_size: Option<(usize, usize)>,
}

/// Runs `c` once through `image-measure` (pinned with `pin`).
fn run_once(c: &Contender, pin: &[OsString]) -> Result<(Measurement, Option<WorkerReport>)> {
    let exe = std::env::current_exe().context("locating the verge binary")?;
    if let Some(out) = &c.out {
        if out.exists() {
            std::fs::remove_dir_all(out)?;
        }
        std::fs::create_dir_all(out)?;
    }
    let output = Command::new(&exe)
        .args(["bench", "image-measure", "--"])
        .args(pin)
        .arg(&c.program)
        .args(&c.args)
        .envs(c.env.iter().copied())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("starting image-measure")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().last().unwrap_or_default();
    let m: Measurement = serde_json::from_str(line)
        .with_context(|| format!("{}: no measurement ({line:?})", c.label))?;
    if m.exit_code != 0 {
        bail!("{} exited with code {}", c.label, m.exit_code);
    }
    let worker = c
        .report
        .as_ref()
        .map(|p| -> Result<WorkerReport> { Ok(serde_json::from_slice(&std::fs::read(p)?)?) })
        .transpose()?;
    Ok((m, worker))
}

/// Sums up the runs of `c`: median wall time (with its in-process report), largest peak
/// RSS, and checks the outputs of the last run (one per input, their size).
fn outcome(
    c: &Contender,
    mut samples: Vec<(Measurement, Option<WorkerReport>)>,
    n: usize,
) -> Result<Outcome> {
    samples.sort_by(|a, b| a.0.wall_s.total_cmp(&b.0.wall_s));
    let max_rss_kb = samples.iter().map(|s| s.0.max_rss_kb).max().unwrap_or(0);
    let wall_range = (
        samples.first().map_or(f64::NAN, |s| s.0.wall_s),
        samples.last().map_or(f64::NAN, |s| s.0.wall_s),
    );
    let (m, worker) = samples.swap_remove(samples.len() / 2);
    let (mut out_bytes, mut out_size) = (0, None);
    if let Some(out) = &c.out {
        let files = jpegs(out)?;
        if files.len() != n {
            bail!("{}: {} outputs for {n} inputs", c.label, files.len());
        }
        for f in &files {
            let bytes = std::fs::read(f)?;
            let h = turbojpeg::read_header(&bytes)?;
            match out_size {
                None => out_size = Some((h.width, h.height)),
                Some(s) if s != (h.width, h.height) => out_size = Some((0, 0)),
                Some(_) => {}
            }
            out_bytes += bytes.len() as u64;
        }
    }
    Ok(Outcome {
        wall_s: m.wall_s,
        wall_range,
        cpu_s: m.user_s + m.sys_s,
        max_rss_kb,
        worker,
        out_bytes,
        out_size,
    })
}

/// Generates the sources (on every core; not timed) and returns their total size.
fn generate(dir: &Path, args: &ImageBenchArgs) -> Result<u64> {
    std::fs::create_dir_all(dir)?;
    for f in jpegs(dir)? {
        std::fs::remove_file(f)?;
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(args.images.max(1));
    let total = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let total = &total;
                s.spawn(move || -> Result<()> {
                    for i in (t..args.images).step_by(threads) {
                        let rgb = photo(args.width, args.height, args.seed.wrapping_add(i as u64));
                        let jpeg = encode_jpeg(&rgb, args.width, args.height, 90)?;
                        total.fetch_add(jpeg.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        std::fs::write(dir.join(format!("photo-{i:04}.jpg")), jpeg)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow!("generator thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(total.into_inner())
}

/// `verge bench image`.
pub fn run(args: &ImageBenchArgs) -> Result<()> {
    if args.images == 0 || args.runs == 0 {
        bail!("--images and --runs must be at least 1");
    }
    if args.size == 0 || args.size > args.width || !(1..=100).contains(&args.quality) {
        bail!("--size must be 1..=--width and --quality 1..=100");
    }
    let Some(vipsthumbnail) = find_in_path("vipsthumbnail") else {
        bail!(
            "vipsthumbnail not found; install it with: apt-get install libvips-tools imagemagick"
        );
    };
    if !Path::new(MOGRIFY).is_file() {
        bail!("{MOGRIFY} not found; install it with: apt-get install libvips-tools imagemagick");
    }
    if args.images < 30 {
        eprintln!(
            "note: issue 6 asks for at least 30 images (--images {})",
            args.images
        );
    }
    let temp = match &args.dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("verge-bench-image-")
                .tempdir()?,
        ),
    };
    let root = args
        .dir
        .clone()
        .or_else(|| temp.as_ref().map(|t| t.path().to_path_buf()))
        .ok_or_else(|| anyhow!("no work directory"))?;
    let input = root.join("in");
    let wm = root.join("wm.png");
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; build with --release for meaningful figures");
    }
    let load_before = load_average();
    if load_before > 0.5 {
        eprintln!(
            "warning: load average {load_before:.2}: the machine is busy, figures will be off"
        );
    }
    eprintln!(
        "generating {} {}x{} JPEGs (q90) in {}...",
        args.images,
        args.width,
        args.height,
        input.display()
    );
    let t = Instant::now();
    let input_bytes = generate(&input, args)?;
    std::fs::write(&wm, watermark_png(args.size / 5)?)?;
    eprintln!("  done in {:.1} s", t.elapsed().as_secs_f64());
    let files = jpegs(&input)?;
    let names: Vec<OsString> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_os_string()))
        .collect();
    // Warm the page cache for every contender alike.
    for f in &files {
        std::fs::read(f)?;
    }

    let pin: Vec<OsString> = match find_in_path("taskset") {
        Some(t) => vec![t.into(), "-c".into(), args.cpu.to_string().into()],
        None => {
            eprintln!("note: taskset not found; contenders are not pinned to one CPU");
            Vec::new()
        }
    };
    let exe: OsString = std::env::current_exe()?.into();
    let size = args.size.to_string();
    let quality = args.quality.to_string();
    let out = |name: &str| root.join(name);
    let verge = |key, label, wm_arg: Option<&Path>| {
        let mut a: Vec<OsString> = vec![
            "bench".into(),
            "image-worker".into(),
            "--in".into(),
            input.clone().into(),
            "--out".into(),
            out(key).into(),
            "--size".into(),
            size.clone().into(),
            "--quality".into(),
            quality.clone().into(),
            "--report".into(),
            root.join(format!("{key}.json")).into(),
        ];
        if let Some(w) = wm_arg {
            a.extend(["--watermark".into(), w.into()]);
        }
        Contender {
            key,
            label,
            work: if wm_arg.is_some() {
                "resize + watermark"
            } else {
                "resize"
            },
            program: exe.clone(),
            args: a,
            env: Vec::new(),
            out: Some(out(key)),
            report: Some(root.join(format!("{key}.json"))),
        }
    };
    let magick = |key, label, wm_arg: Option<&Path>, hint: bool| {
        let mut a: Vec<OsString> = vec!["-path".into(), out(key).into()];
        if hint {
            // The DCT scale Verge's decoder picks, as a size hint for libjpeg.
            let out_h = (f64::from(args.height) * f64::from(args.size) / f64::from(args.width))
                .round() as u32;
            let d = [8u32, 4, 2]
                .into_iter()
                .find(|&d| args.width.div_ceil(d) >= args.size && args.height.div_ceil(d) >= out_h)
                .unwrap_or(1);
            a.extend([
                "-define".into(),
                format!(
                    "jpeg:size={}x{}",
                    args.width.div_ceil(d),
                    args.height.div_ceil(d)
                )
                .into(),
            ]);
        }
        a.extend([
            "-resize".into(),
            format!("{size}x").into(),
            "-quality".into(),
            quality.clone().into(),
            "-strip".into(),
        ]);
        if let Some(w) = wm_arg {
            a.extend([
                "-gravity".into(),
                "SouthEast".into(),
                "-draw".into(),
                format!("image Over {WM_OFFSET},{WM_OFFSET} 0,0 '{}'", w.display()).into(),
            ]);
        }
        a.extend(files.iter().map(|f| f.clone().into_os_string()));
        Contender {
            key,
            label,
            work: if wm_arg.is_some() {
                "resize + watermark"
            } else {
                "resize"
            },
            program: MOGRIFY.into(),
            args: a,
            env: vec![("MAGICK_THREAD_LIMIT", "1"), ("OMP_NUM_THREADS", "1")],
            out: Some(out(key)),
            report: None,
        }
    };
    let decode = |key, label, scale: usize| Contender {
        key,
        label,
        work: "decode only",
        program: exe.clone(),
        args: vec![
            "bench".into(),
            "image-worker".into(),
            "--in".into(),
            input.clone().into(),
            "--decode-scale".into(),
            scale.to_string().into(),
            "--report".into(),
            root.join(format!("{key}.json")).into(),
        ],
        env: Vec::new(),
        out: None,
        report: Some(root.join(format!("{key}.json"))),
    };
    let mut vips_args: Vec<OsString> = vec![
        "--size".into(),
        format!("{size}x").into(),
        "-o".into(),
        format!("{}/%s.jpg[Q={quality},strip]", out("vips").display()).into(),
    ];
    vips_args.extend(files.iter().map(|f| f.clone().into_os_string()));
    let contenders = vec![
        Contender {
            key: "vips",
            label: "vipsthumbnail",
            work: "resize",
            program: vipsthumbnail.into(),
            args: vips_args,
            env: vec![("VIPS_CONCURRENCY", "1")],
            out: Some(out("vips")),
            report: None,
        },
        verge("verge", "Verge", None),
        verge("verge-wm", "Verge", Some(&wm)),
        magick("magick", "ImageMagick mogrify", None, false),
        magick("magick-wm", "ImageMagick mogrify", Some(&wm), false),
        magick(
            "magick-hint",
            "ImageMagick mogrify + jpeg:size hint",
            None,
            true,
        ),
        decode("decode-1", "libjpeg-turbo decode, full size", 1),
        decode("decode-2", "libjpeg-turbo decode, 1/2 scale", 2),
        decode("decode-4", "libjpeg-turbo decode, 1/4 scale", 4),
    ];
    eprintln!(
        "running (one process per contender, pinned: {})...",
        !pin.is_empty()
    );
    // Round robin, so that a slow spell of the machine hits every contender alike.
    let mut samples: Vec<Vec<_>> = contenders.iter().map(|_| Vec::new()).collect();
    for run in 0..args.runs {
        for (c, s) in contenders.iter().zip(&mut samples) {
            eprintln!("  {} ({}/{})...", c.label, run + 1, args.runs);
            s.push(run_once(c, &pin)?);
        }
    }
    let mut results = Vec::new();
    for (c, s) in contenders.iter().zip(samples) {
        results.push((c, outcome(c, s, files.len())?));
    }
    let load = (load_before, load_average());

    eprintln!("comparing outputs with libvips'...");
    let mut quality_vs_vips = serde_json::Map::new();
    for key in ["verge", "magick", "magick-hint"] {
        quality_vs_vips.insert(key.into(), compare_dirs(&out(key), &out("vips"), &names)?);
    }
    quality_vs_vips.insert(
        "verge-wm vs magick-wm".into(),
        compare_dirs(&out("verge-wm"), &out("magick-wm"), &names)?,
    );

    let report = build_report(args, &results, quality_vs_vips, input_bytes, &pin, load);
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    if let Some(t) = temp
        && args.keep
    {
        eprintln!("kept {}", t.keep().display());
    }
    Ok(())
}

/// Everything measured, as JSON (also the source of the printed table).
fn build_report(
    args: &ImageBenchArgs,
    results: &[(&Contender, Outcome)],
    quality_vs_vips: serde_json::Map<String, Value>,
    input_bytes: u64,
    pin: &[OsString],
    load: (f64, f64),
) -> Value {
    let n = args.images as f64;
    let get = |key: &str| results.iter().find(|(c, _)| c.key == key).map(|(_, o)| o);
    let ips = |key: &str| get(key).map_or(f64::NAN, |o| n / o.wall_s);
    let rss = |key: &str| get(key).map_or(0, |o| o.max_rss_kb);
    let busy_ms = |key: &str| {
        get(key)
            .and_then(|o| o.worker.as_ref())
            .map_or(f64::NAN, |w| w.busy_s * 1000.0 / n)
    };
    let rows: Vec<Value> = results
        .iter()
        .map(|(c, o)| {
            json!({
                "key": c.key,
                "contender": c.label,
                "work": c.work,
                "wall_s": r4(o.wall_s),
                "cpu_s": r4(o.cpu_s),
                "images_per_s": r2(n / o.wall_s),
                "images_per_s_range": [r2(n / o.wall_range.1), r2(n / o.wall_range.0)],
                "ms_per_image": r2(o.wall_s * 1000.0 / n),
                "in_process_ms_per_image": o.worker.as_ref().map(|w| r2(w.busy_s * 1000.0 / n)),
                "peak_rss_kib": o.max_rss_kb,
                "output_size": o.out_size.map(|(w, h)| format!("{w}x{h}")),
                "output_mean_kib": (o.out_bytes > 0).then(|| r2(o.out_bytes as f64 / n / 1024.0)),
            })
        })
        .collect();
    let vs_vips = ips("verge-wm") / ips("vips");
    let vs_vips_resize = ips("verge") / ips("vips");
    let vs_magick = ips("verge-wm") / ips("magick-wm");
    let vs_magick_resize = ips("verge") / ips("magick");
    let pipeline = busy_ms("verge-wm");
    json!({
        "machine": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "cpu": std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            }),
            "load_average_before_after": [r2(load.0), r2(load.1)],
            "pinned": pin.iter().map(|p| p.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "),
        },
        "tools": {
            "vipsthumbnail": version_line("vipsthumbnail", &["--vips-version"]),
            "mogrify": version_line(MOGRIFY, &["-version"]),
            "libjpeg_turbo": "turbojpeg crate (bundled libjpeg-turbo, SIMD)",
        },
        "input": {
            "images": args.images,
            "width": args.width,
            "height": args.height,
            "megapixels": r2(f64::from(args.width) * f64::from(args.height) / 1e6),
            "mean_kib": r2(input_bytes as f64 / n / 1024.0),
            "seed": args.seed,
        },
        "settings": {"size": args.size, "quality": args.quality, "runs": args.runs,
                     "watermark": format!("{}px-wide PNG with alpha, SouthEast, {WM_OFFSET} px in", args.size / 5)},
        "rows": rows,
        "quality_vs_libvips": quality_vs_vips,
        "targets": {
            "throughput_vs_vipsthumbnail": {
                "target": 1.5,
                "verge_resize_watermark_vs_vips_resize": r2(vs_vips),
                "verge_resize_vs_vips_resize": r2(vs_vips_resize),
                "met": vs_vips >= 1.5,
            },
            "throughput_vs_imagemagick": {
                "target": 5.0,
                "verge_resize_watermark_vs_magick_resize_watermark": r2(vs_magick),
                "verge_resize_vs_magick_resize": r2(vs_magick_resize),
                "met": vs_magick >= 5.0,
            },
            "peak_rss": {
                "verge_resize_watermark_kib": rss("verge-wm"),
                "vipsthumbnail_kib": rss("vips"),
                "met": rss("verge-wm") <= rss("vips"),
            },
        },
        "decode_floor": {
            "full_ms_per_image": r2(busy_ms("decode-1")),
            "half_ms_per_image": r2(busy_ms("decode-2")),
            "quarter_ms_per_image": r2(busy_ms("decode-4")),
            "full_mp_per_s": r2(f64::from(args.width) * f64::from(args.height) / 1e3 / busy_ms("decode-1")),
            "pipeline_resize_ms_per_image": r2(busy_ms("verge")),
            "pipeline_resize_watermark_ms_per_image": r2(pipeline),
            "pipeline_over_half_scale_decode": r2(pipeline / busy_ms("decode-2")),
            "pipeline_minus_half_scale_decode_ms": r2(pipeline - busy_ms("decode-2")),
        },
    })
}

fn fmt(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints the report as Markdown.
fn print_report(r: &Value) {
    let vips_ips = r["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|x| x["key"] == "vips"))
        .and_then(|x| x["images_per_s"].as_f64())
        .unwrap_or(f64::NAN);
    let magick = |work: &str| {
        r["rows"]
            .as_array()
            .and_then(|rows| {
                rows.iter().find(|x| {
                    x["key"].as_str().is_some_and(|k| k.starts_with("magick"))
                        && x["work"] == work
                        && x["key"] != "magick-hint"
                })
            })
            .and_then(|x| x["images_per_s"].as_f64())
    };
    let i = &r["input"];
    outln!(
        "{} × {}x{} JPEG q90 (mean {} KiB) → {} px wide, JPEG q{}; {} round(s) (round robin), median wall time; {}",
        i["images"],
        i["width"],
        i["height"],
        i["mean_kib"],
        r["settings"]["size"],
        r["settings"]["quality"],
        r["settings"]["runs"],
        if r["machine"]["pinned"] == "" {
            "not pinned".to_string()
        } else {
            format!("pinned: `{}`", fmt(&r["machine"]["pinned"]))
        },
    );
    outln!(
        "CPU: {} ({} cores, load average {} before the run); {}; {}",
        fmt(&r["machine"]["cpu"]),
        r["machine"]["cpus"],
        r["machine"]["load_average_before_after"][0],
        fmt(&r["tools"]["vipsthumbnail"]),
        fmt(&r["tools"]["mogrify"]),
    );
    outln!();
    outln!(
        "| contender | work | images/s (range) | ms/image (in-process) | peak RSS MiB | CPU s | × vipsthumbnail | × ImageMagick | PSNR dB / SSIM vs libvips | out KiB |"
    );
    outln!("|---|---|---|---|---|---|---|---|---|---|");
    for row in r["rows"].as_array().into_iter().flatten() {
        let ips = row["images_per_s"].as_f64().unwrap_or(f64::NAN);
        let range = &row["images_per_s_range"];
        let ips_text = match (range[0].as_f64(), range[1].as_f64()) {
            (Some(lo), Some(hi)) if hi > lo => format!("{ips:.2} ({lo:.2}–{hi:.2})"),
            _ => format!("{ips:.2}"),
        };
        let key = row["key"].as_str().unwrap_or_default();
        let decode = key.starts_with("decode");
        let wall_ms = row["ms_per_image"].as_f64().unwrap_or(f64::NAN);
        let ms = match row["in_process_ms_per_image"].as_f64() {
            Some(p) => format!("{wall_ms:.1} ({p:.1})"),
            None => format!("{wall_ms:.1}"),
        };
        let x_vips = if decode {
            "–".into()
        } else {
            format!("{:.2}×", ips / vips_ips)
        };
        let x_magick = match (decode, magick(row["work"].as_str().unwrap_or_default())) {
            (false, Some(m)) => format!("{:.2}×", ips / m),
            _ => "–".into(),
        };
        let q = &r["quality_vs_libvips"][key];
        let quality = if q.is_null() {
            "–".into()
        } else {
            format!("{} / {}", q["psnr_db_mean"], q["ssim_mean"])
        };
        outln!(
            "| {} | {} | {ips_text} | {} | {:.1} | {:.2} | {} | {} | {} | {} |",
            fmt(&row["contender"]),
            fmt(&row["work"]),
            ms,
            row["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            row["cpu_s"].as_f64().unwrap_or(f64::NAN),
            x_vips,
            x_magick,
            quality,
            fmt(&row["output_mean_kib"]),
        );
    }
    outln!();
    let t = &r["targets"];
    let met = |v: &Value| {
        if v.as_bool() == Some(true) {
            "met"
        } else {
            "MISSED"
        }
    };
    outln!(
        "Target ≥ 1.5× vipsthumbnail: {} (Verge resize+watermark {}× vipsthumbnail resize; resize only {}×)",
        met(&t["throughput_vs_vipsthumbnail"]["met"]),
        t["throughput_vs_vipsthumbnail"]["verge_resize_watermark_vs_vips_resize"],
        t["throughput_vs_vipsthumbnail"]["verge_resize_vs_vips_resize"],
    );
    outln!(
        "Target ≥ 5× ImageMagick: {} (resize+watermark {}×; resize only {}×)",
        met(&t["throughput_vs_imagemagick"]["met"]),
        t["throughput_vs_imagemagick"]["verge_resize_watermark_vs_magick_resize_watermark"],
        t["throughput_vs_imagemagick"]["verge_resize_vs_magick_resize"],
    );
    outln!(
        "Target peak RSS ≤ vipsthumbnail: {} ({:.1} MiB vs {:.1} MiB)",
        met(&t["peak_rss"]["met"]),
        t["peak_rss"]["verge_resize_watermark_kib"]
            .as_f64()
            .unwrap_or(0.0)
            / 1024.0,
        t["peak_rss"]["vipsthumbnail_kib"].as_f64().unwrap_or(0.0) / 1024.0,
    );
    let d = &r["decode_floor"];
    outln!(
        "Decode floor (libjpeg-turbo, in-process): full {} ms/image ({} MP/s), 1/2 scale {} ms, 1/4 scale {} ms; pipeline {} ms/image resize, {} ms resize+watermark = {}× the 1/2-scale decode it starts with (+{} ms)",
        d["full_ms_per_image"],
        d["full_mp_per_s"],
        d["half_ms_per_image"],
        d["quarter_ms_per_image"],
        d["pipeline_resize_ms_per_image"],
        d["pipeline_resize_watermark_ms_per_image"],
        d["pipeline_over_half_scale_decode"],
        d["pipeline_minus_half_scale_decode_ms"],
    );
    let wm = &r["quality_vs_libvips"]["verge-wm vs magick-wm"];
    outln!(
        "Watermarked outputs, Verge vs ImageMagick: PSNR {} dB, SSIM {} (same placement check)",
        wm["psnr_db_mean"],
        wm["ssim_mean"]
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn textured(w: usize, h: usize) -> Vec<u8> {
        (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w);
                (64 + (x * 3 + y * 5) % 128 + ((x / 7 + y / 5) % 2) * 32) as u8
            })
            .collect()
    }

    #[test]
    fn identical_images_are_infinite_psnr_and_ssim_one() {
        let a = textured(64, 48);
        assert_eq!(psnr(&a, &a), f64::INFINITY);
        assert!((ssim(&a, &a, 64, 48) - 1.0).abs() < 1e-12);
        // Smaller than a window: one window of the whole image.
        let small = textured(5, 3);
        assert!((ssim(&small, &small, 5, 3) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn known_noise_gives_the_expected_psnr_and_a_lower_ssim() {
        let a = textured(256, 192);
        let mut rng = Rng(42);
        // Uniform integer noise in [-10, 10]: variance 10·11/3 ≈ 36.7 → PSNR ≈ 32.5 dB.
        let b: Vec<u8> = a
            .iter()
            .map(|&p| (i32::from(p) + (rng.next() % 21) as i32 - 10).clamp(0, 255) as u8)
            .collect();
        let p = psnr(&a, &b);
        assert!((31.5..33.5).contains(&p), "psnr {p}");
        let s = ssim(&a, &b, 256, 192);
        assert!(s > 0.3 && s < 0.99, "ssim {s}");
        // More noise, lower scores.
        let c: Vec<u8> = a
            .iter()
            .map(|&p| (i32::from(p) + (rng.next() % 61) as i32 - 30).clamp(0, 255) as u8)
            .collect();
        assert!(psnr(&a, &c) < p);
        assert!(ssim(&a, &c, 256, 192) < s);
    }

    #[test]
    fn mismatched_buffers_are_nan() {
        assert!(psnr(&[1, 2], &[1]).is_nan());
        assert!(ssim(&[1, 2, 3], &[1, 2, 3], 2, 2).is_nan());
    }

    #[test]
    fn comparison_crops_to_the_overlap() {
        let px = |w: usize, h: usize| Rgb {
            width: w,
            height: h,
            pixels: (0..w * h * 3).map(|i| (i % 251) as u8).collect(),
        };
        let a = px(16, 10);
        let s = compare(&a, &a);
        assert!(s.psnr_db.is_infinite() && !s.cropped);
        let b = Rgb {
            width: 16,
            height: 9,
            pixels: a.crop(16, 9),
        };
        let s = compare(&a, &b);
        assert!(s.psnr_db.is_infinite() && s.cropped);
    }

    #[test]
    fn photos_differ_per_seed_and_have_the_requested_size() {
        let a = photo(160, 120, 1);
        let b = photo(160, 120, 2);
        assert_eq!(a.len(), 160 * 120 * 3);
        assert_ne!(a, b);
        assert_eq!(a, photo(160, 120, 1));
        let jpeg = encode_jpeg(&a, 160, 120, 90).expect("jpeg");
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
    }

    #[test]
    fn the_watermark_is_a_png_with_alpha() {
        let png = watermark_png(240).expect("png");
        let info = verge_imaging::info(&png, &Limits::default()).expect("info");
        assert_eq!((info.width, info.height), (240, 64));
        assert!(info.has_alpha);
    }
}
