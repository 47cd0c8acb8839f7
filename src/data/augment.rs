//! The augmentation pipeline (SPEC A.4) on uint8 RGB images in CHW planes, following PIL /
//! torchvision semantics: crop + bilinear resize (PIL's separable filter, antialiased when
//! shrinking, rounded to uint8 after each pass), horizontal flip, ColorJitter with the four
//! adjustments in a random order each call (brightness blends with black, contrast with the
//! rounded mean grey, saturation with the greyscale image, hue shifts H in uint8 HSV),
//! random greyscale (ITU-R 601 luma, PIL's integer formula), and normalisation to f32.
//! Every random choice comes from the caller's RNG, so a seed fixes the views.

use rand::seq::SliceRandom;
use rand::Rng;

use crate::crop::sampler::Crop;

/// An RGB uint8 image, channel planes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rgb {
    pub h: usize,
    pub w: usize,
    /// [3, h, w]
    pub data: Vec<u8>,
}

impl Rgb {
    pub fn new(h: usize, w: usize, data: Vec<u8>) -> Rgb {
        debug_assert_eq!(data.len(), 3 * h * w);
        Rgb { h, w, data }
    }
    #[inline]
    pub fn at(&self, c: usize, y: usize, x: usize) -> u8 {
        self.data[(c * self.h + y) * self.w + x]
    }
}

fn clip8(v: f64) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// PIL's resampling coefficients for one axis of `len` input pixels (the crop) resized to
/// `out`: for every output index, (first input index, normalised weights), with the
/// bilinear (triangle) filter widened by the scale when shrinking; the window is clipped to
/// the crop, as PIL resizes the already-cropped image.
fn coefficients(len: usize, out: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = len as f64 / out as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the bilinear filter's support is 1
    (0..out)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5).floor()).max(0.0) as usize;
            let xmax = ((center + support + 0.5).floor() as usize).min(len);
            let mut ws: Vec<f64> = (xmin..xmax)
                .map(|x| {
                    let t = ((x as f64 - center + 0.5) / filterscale).abs();
                    if t < 1.0 {
                        1.0 - t
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = ws.iter().sum();
            if total > 0.0 {
                ws.iter_mut().for_each(|w| *w /= total);
            }
            (xmin, ws)
        })
        .collect()
}

/// Crop `crop` out of `img` and resize it to `out_h`×`out_w` (torchvision's resized_crop on
/// a PIL image: horizontal pass, then vertical, each rounded to uint8).
pub fn resized_crop(img: &Rgb, crop: Crop, out_h: usize, out_w: usize) -> Rgb {
    let cx = coefficients(crop.width, out_w);
    let cy = coefficients(crop.height, out_h);
    // Horizontal pass over the crop's rows.
    let rows = crop.height;
    let mut tmp = vec![0u8; 3 * rows * out_w];
    for c in 0..3 {
        for r in 0..rows {
            let y = crop.top + r;
            for (o, (x0, ws)) in cx.iter().enumerate() {
                let mut s = 0.0;
                for (k, w) in ws.iter().enumerate() {
                    s += w * img.at(c, y, crop.left + x0 + k) as f64;
                }
                tmp[(c * rows + r) * out_w + o] = clip8(s);
            }
        }
    }
    // Vertical pass.
    let mut out = vec![0u8; 3 * out_h * out_w];
    for c in 0..3 {
        for (o, (y0, ws)) in cy.iter().enumerate() {
            for x in 0..out_w {
                let mut s = 0.0;
                for (k, w) in ws.iter().enumerate() {
                    s += w * tmp[(c * rows + y0 + k) * out_w + x] as f64;
                }
                out[(c * out_h + o) * out_w + x] = clip8(s);
            }
        }
    }
    Rgb::new(out_h, out_w, out)
}

pub fn hflip(img: &Rgb) -> Rgb {
    let mut out = img.data.clone();
    for c in 0..3 {
        for y in 0..img.h {
            let row = &mut out[(c * img.h + y) * img.w..(c * img.h + y + 1) * img.w];
            row.reverse();
        }
    }
    Rgb::new(img.h, img.w, out)
}

/// PIL "L": (19595·R + 38470·G + 7471·B + 2¹⁵) >> 16.
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((19595 * r as u32 + 38470 * g as u32 + 7471 * b as u32 + 0x8000) >> 16) as u8
}

/// Greyscale with three equal channels.
pub fn grayscale(img: &Rgb) -> Rgb {
    let hw = img.h * img.w;
    let l: Vec<u8> = (0..hw)
        .map(|i| luma(img.data[i], img.data[hw + i], img.data[2 * hw + i]))
        .collect();
    Rgb::new(img.h, img.w, [l.clone(), l.clone(), l].concat())
}

/// PIL Image.blend(a, b, α) = a + α·(b − a) in C float (α is passed as a float), truncated
/// to uint8 (clipped when α leaves [0, 1]).
pub(crate) fn blend(a: &[u8], b: &[u8], alpha: f64) -> Vec<u8> {
    let alpha = alpha as f32;
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let v = x as i32 as f32 + alpha * (y as i32 - x as i32) as f32;
            v.clamp(0.0, 255.0) as u8
        })
        .collect()
}

pub fn adjust_brightness(img: &Rgb, f: f64) -> Rgb {
    Rgb::new(img.h, img.w, blend(&vec![0; img.data.len()], &img.data, f))
}

pub fn adjust_contrast(img: &Rgb, f: f64) -> Rgb {
    let g = grayscale(img);
    let hw = img.h * img.w;
    let mean = (g.data[..hw].iter().map(|&v| v as f64).sum::<f64>() / hw as f64 + 0.5).floor();
    Rgb::new(
        img.h,
        img.w,
        blend(&vec![mean as u8; img.data.len()], &img.data, f),
    )
}

pub fn adjust_saturation(img: &Rgb, f: f64) -> Rgb {
    Rgb::new(img.h, img.w, blend(&grayscale(img).data, &img.data, f))
}

/// PIL's uint8 RGB → HSV (Convert.c: ratios in f32, the hue sum and fmod in f64 stored as
/// f32, H and S truncated) — bit-exact with Pillow.
fn rgb_to_hsv(r: u8, g: u8, b: u8) -> (u8, u8, u8) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if minc == maxc {
        return (0, 0, maxc);
    }
    let cr = (maxc - minc) as f32;
    let s = cr / maxc as f32;
    let (rc, gc, bc) = (
        (maxc - r) as f32 / cr,
        (maxc - g) as f32 / cr,
        (maxc - b) as f32 / cr,
    );
    let h: f32 = if r == maxc {
        bc - gc
    } else if g == maxc {
        (2.0 + rc as f64 - bc as f64) as f32
    } else {
        (4.0 + gc as f64 - rc as f64) as f32
    };
    let h = ((h as f64 / 6.0 + 1.0) % 1.0) as f32;
    let trunc8 = |v: f64| (v as i32).clamp(0, 255) as u8;
    (trunc8(h as f64 * 255.0), trunc8(s as f64 * 255.0), maxc)
}

/// PIL's uint8 HSV → RGB (Convert.c, same mixed precision; p/q/t rounded half away from
/// zero) — bit-exact with Pillow.
fn hsv_to_rgb(h: u8, s: u8, v: u8) -> (u8, u8, u8) {
    if s == 0 {
        return (v, v, v);
    }
    let i = (h as f64 * 6.0 / 255.0).floor();
    let f = (h as f64 * 6.0 / 255.0 - i) as f32 as f64;
    let fs = (s as f64 / 255.0) as f32 as f64;
    let r8 = |x: f64| x.round().clamp(0.0, 255.0) as u8;
    let p = r8(v as f64 * (1.0 - fs));
    let q = r8(v as f64 * (1.0 - fs * f));
    let t = r8(v as f64 * (1.0 - fs * (1.0 - f)));
    match (i as i32).rem_euclid(6) {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// Shift the hue by `f` ∈ [−0.5, 0.5] of a turn, in uint8 HSV space (wrapping).
pub fn adjust_hue(img: &Rgb, f: f64) -> Rgb {
    let hw = img.h * img.w;
    let shift = (f * 255.0) as i32; // numpy's uint8 cast truncates toward zero
    let mut out = img.data.clone();
    for i in 0..hw {
        let (h, s, v) = rgb_to_hsv(img.data[i], img.data[hw + i], img.data[2 * hw + i]);
        let h = (h as i32 + shift).rem_euclid(256) as u8;
        let (r, g, b) = hsv_to_rgb(h, s, v);
        out[i] = r;
        out[hw + i] = g;
        out[2 * hw + i] = b;
    }
    Rgb::new(img.h, img.w, out)
}

/// PIL's `ImageFilter.GaussianBlur(radius = sigma)` (the ImageNet recipe's blur, SPEC A.4):
/// not a true Gaussian but three box blurs per axis (horizontal passes first, then vertical),
/// each with a fractional radius chosen so the variance matches (Gwosdek et al. 2011), 24-bit
/// fixed-point weights, edge pixels repeated, and a uint8 rounding after every pass. Matching
/// those details is what makes the output equal to Pillow's.
pub fn gaussian_blur(img: &Rgb, sigma: f64) -> Rgb {
    const PASSES: usize = 3;
    if sigma <= 0.0 {
        return img.clone();
    }
    let r = box_radius(sigma as f32, PASSES as f32);
    if r == 0.0 {
        return img.clone();
    }
    let (h, w) = (img.h, img.w);
    let mut planes = img.data.clone();
    for c in 0..3 {
        let plane = &mut planes[c * h * w..(c + 1) * h * w];
        for _ in 0..PASSES {
            for y in 0..h {
                box_blur_line(&mut plane[y * w..(y + 1) * w], r);
            }
        }
        let mut col = vec![0u8; h];
        for x in 0..w {
            for (y, v) in col.iter_mut().enumerate() {
                *v = plane[y * w + x];
            }
            for _ in 0..PASSES {
                box_blur_line(&mut col, r);
            }
            for (y, v) in col.iter().enumerate() {
                plane[y * w + x] = *v;
            }
        }
    }
    Rgb::new(h, w, planes)
}

/// The fractional box radius whose `passes`-fold box blur has the variance of a Gaussian of
/// standard deviation `sigma`, in f32 as Pillow computes it.
fn box_radius(sigma: f32, passes: f32) -> f32 {
    let sigma2 = sigma * sigma / passes;
    let len = ((12.0 * sigma2 as f64 + 1.0).sqrt()) as f32;
    let l = ((len as f64 - 1.0) / 2.0).floor() as f32;
    let a =
        (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2) / (6.0 * (sigma2 - (l + 1.0) * (l + 1.0)));
    l + a
}

/// One box-blur pass of fractional radius `r` over a line, in place: the 2⌊r⌋+1 nearest
/// pixels at full weight and the next one on each side at the fractional weight, indexes
/// clamped to the line.
fn box_blur_line(line: &mut [u8], r: f32) {
    let n = line.len();
    if n == 0 {
        return;
    }
    let ri = r as i64;
    let ww = ((1u32 << 24) as f32 / (r * 2.0 + 1.0)) as u64;
    let fw = ((1u64 << 24) - (ri as u64 * 2 + 1) * ww) / 2;
    let at = |i: i64| line[i.clamp(0, n as i64 - 1) as usize] as u64;
    let out: Vec<u8> = (0..n as i64)
        .map(|x| {
            let acc: u64 = (x - ri..=x + ri).map(at).sum();
            let bulk = acc * ww + (at(x - ri - 1) + at(x + ri + 1)) * fw;
            ((bulk + (1 << 23)) >> 24) as u8
        })
        .collect();
    line.copy_from_slice(&out);
}

/// ColorJitter's strengths: factors ~ U(1 − s, 1 + s), hue ~ U(−hue, hue).
#[derive(Clone, Copy, Debug)]
pub struct Jitter {
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    pub hue: f64,
    /// Gaussian blur σ ~ U(0.1, 2) with p 0.5 after greyscale (ImageNet recipe; off for the
    /// small datasets).
    pub blur: bool,
}

impl Default for Jitter {
    fn default() -> Self {
        Self {
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.4,
            hue: 0.1,
            blur: false,
        }
    }
}

/// One ColorJitter call: the four adjustments in a random order.
pub fn color_jitter(img: &Rgb, j: &Jitter, rng: &mut impl Rng) -> Rgb {
    let mut order = [0usize, 1, 2, 3];
    order.shuffle(rng);
    let b = rng.random_range(1.0 - j.brightness..=1.0 + j.brightness);
    let c = rng.random_range(1.0 - j.contrast..=1.0 + j.contrast);
    let s = rng.random_range(1.0 - j.saturation..=1.0 + j.saturation);
    let h = rng.random_range(-j.hue..=j.hue);
    let mut out = img.clone();
    for op in order {
        out = match op {
            0 => adjust_brightness(&out, b),
            1 => adjust_contrast(&out, c),
            2 => adjust_saturation(&out, s),
            _ => adjust_hue(&out, h),
        };
    }
    out
}

/// (x/255 − mean)/std per channel, as f32 CHW.
pub fn normalize(img: &Rgb, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let hw = img.h * img.w;
    img.data
        .iter()
        .enumerate()
        .map(|(i, &v)| (v as f32 / 255.0 - mean[i / hw]) / std[i / hw])
        .collect()
}

/// Per-dataset normalisation constants (SPEC A.4).
pub fn mean_std(dataset: &str) -> Option<([f32; 3], [f32; 3])> {
    Some(match dataset {
        "cifar10" => ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
        "cifar100" => ([0.5071, 0.4867, 0.4408], [0.2675, 0.2565, 0.2761]),
        "stl10" => ([0.4406, 0.4273, 0.3858], [0.2312, 0.2265, 0.2237]),
        "tiny-imagenet" => ([0.4802, 0.4481, 0.3975], [0.2302, 0.2265, 0.2262]),
        "imagenet" | "imagefolder" => ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        _ => return None,
    })
}

/// The pre-training view after the crop: flip (p 0.5), ColorJitter (p 0.8), greyscale
/// (p 0.2), and with `j.blur` (the ImageNet recipe) Gaussian blur σ ~ U(0.1, 2) (p 0.5).
pub fn ssl_view_after_crop(img: &Rgb, j: &Jitter, rng: &mut impl Rng) -> Rgb {
    let mut v = if rng.random_bool(0.5) {
        hflip(img)
    } else {
        img.clone()
    };
    if rng.random_bool(0.8) {
        v = color_jitter(&v, j, rng);
    }
    if rng.random_bool(0.2) {
        v = grayscale(&v);
    }
    if j.blur && rng.random_bool(0.5) {
        v = gaussian_blur(&v, rng.random_range(0.1..2.0));
    }
    v
}
