//! CLSA's strong augmentation (SPEC B.4; maple-research-lab/CLSA `RandAugment`, the FixMatch
//! pool as that code has it): n = 5 ops drawn with replacement from 14, each applied with
//! p 0.5 at an integer magnitude v uniform in 1..=9, with Pillow's semantics for every op
//! (`tests/strong_augment.rs` compares each with Pillow's own output, bit for bit):
//!
//! | op | as coded (v ∈ 1..=9) |
//! |---|---|
//! | AutoContrast | per channel, lo/hi = darkest/lightest value, lut int(i·255/(hi−lo) − lo·255/(hi−lo)) clipped |
//! | Brightness, Color, Contrast, Sharpness | ImageEnhance with factor 0.09v + 0.05 (blend with black / the L image / the rounded L mean / the SMOOTH-filtered image) |
//! | Equalize | per channel, Pillow's histogram lut (step = (N − last bin) // 255) |
//! | Identity | — |
//! | Posterize | keep int(0.4v) + 4 bits |
//! | Rotate | ±int(3v)° about the centre, nearest, black outside |
//! | ShearX / ShearY | affine (1, ±0.03v, 0, 0, 1, 0) / (1, 0, 0, ±0.03v, 1, 0), nearest, black outside |
//! | Solarize | invert values ≥ 256 − int(25.6v) |
//! | TranslateX / TranslateY | by int(±0.03v·W) / int(±0.03v·H) pixels, black outside |
//!
//! Signed ops draw their sign with p 0.5. Pillow's arithmetic is followed where it decides
//! bits: blends in f32 truncated, the SMOOTH filter in f32 with +0.5 and the border copied,
//! rotations through a matrix rounded to 15 decimals, affine maps in 16.16 fixed point (and
//! pure translations through its scale path).

use rand::Rng;

use super::augment::{adjust_brightness, adjust_contrast, adjust_saturation, blend, Rgb};

/// The ops of the pool, in the reference's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrongOp {
    AutoContrast,
    Brightness,
    Color,
    Contrast,
    Equalize,
    Identity,
    Posterize,
    Rotate,
    Sharpness,
    ShearX,
    ShearY,
    Solarize,
    TranslateX,
    TranslateY,
}

impl StrongOp {
    pub const POOL: [StrongOp; 14] = [
        StrongOp::AutoContrast,
        StrongOp::Brightness,
        StrongOp::Color,
        StrongOp::Contrast,
        StrongOp::Equalize,
        StrongOp::Identity,
        StrongOp::Posterize,
        StrongOp::Rotate,
        StrongOp::Sharpness,
        StrongOp::ShearX,
        StrongOp::ShearY,
        StrongOp::Solarize,
        StrongOp::TranslateX,
        StrongOp::TranslateY,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StrongOp::AutoContrast => "auto_contrast",
            StrongOp::Brightness => "brightness",
            StrongOp::Color => "color",
            StrongOp::Contrast => "contrast",
            StrongOp::Equalize => "equalize",
            StrongOp::Identity => "identity",
            StrongOp::Posterize => "posterize",
            StrongOp::Rotate => "rotate",
            StrongOp::Sharpness => "sharpness",
            StrongOp::ShearX => "shear_x",
            StrongOp::ShearY => "shear_y",
            StrongOp::Solarize => "solarize",
            StrongOp::TranslateX => "translate_x",
            StrongOp::TranslateY => "translate_y",
        }
    }

    /// Whether the op draws a sign for its magnitude.
    pub fn signed(self) -> bool {
        matches!(
            self,
            StrongOp::Rotate
                | StrongOp::ShearX
                | StrongOp::ShearY
                | StrongOp::TranslateX
                | StrongOp::TranslateY
        )
    }
}

/// Ops drawn per strong view.
pub const N_OPS: usize = 5;

/// The reference's float parameter v·max/10 (Python floats: f64).
fn float_param(v: u32, max: f64) -> f64 {
    v as f64 * max / 10.0
}

/// The reference's int parameter int(v·max/10).
fn int_param(v: u32, max: f64) -> i64 {
    (v as f64 * max / 10.0) as i64
}

/// Apply one op at magnitude `v` (1..=9), its sign negative when `negative`.
pub fn apply(img: &Rgb, op: StrongOp, v: u32, negative: bool) -> Rgb {
    let sign = if negative { -1.0 } else { 1.0 };
    let factor = float_param(v, 0.9) + 0.05;
    match op {
        StrongOp::AutoContrast => per_channel_lut(img, autocontrast_lut),
        // ImageEnhance, as torchvision's ColorJitter uses it.
        StrongOp::Brightness => adjust_brightness(img, factor),
        StrongOp::Color => adjust_saturation(img, factor),
        StrongOp::Contrast => adjust_contrast(img, factor),
        StrongOp::Equalize => per_channel_lut(img, equalize_lut),
        StrongOp::Identity => img.clone(),
        StrongOp::Posterize => {
            let bits = int_param(v, 4.0) + 4;
            let mask = !((1u32 << (8 - bits)) - 1) as u8;
            map(img, |x| x & mask)
        }
        StrongOp::Rotate => rotate(img, sign * int_param(v, 30.0) as f64),
        StrongOp::Sharpness => Rgb::new(img.h, img.w, blend(&smooth(img).data, &img.data, factor)),
        StrongOp::ShearX => affine(img, [1.0, sign * float_param(v, 0.3), 0.0, 0.0, 1.0, 0.0]),
        StrongOp::ShearY => affine(img, [1.0, 0.0, 0.0, sign * float_param(v, 0.3), 1.0, 0.0]),
        StrongOp::Solarize => {
            let threshold = 256 - int_param(v, 256.0);
            map(img, |x| if (x as i64) < threshold { x } else { 255 - x })
        }
        StrongOp::TranslateX => {
            let t = (sign * float_param(v, 0.3) * img.w as f64) as i64 as f64;
            affine(img, [1.0, 0.0, t, 0.0, 1.0, 0.0])
        }
        StrongOp::TranslateY => {
            let t = (sign * float_param(v, 0.3) * img.h as f64) as i64 as f64;
            affine(img, [1.0, 0.0, 0.0, 0.0, 1.0, t])
        }
    }
}

/// One drawn op of a strong view: which op, its magnitude, whether it is applied, its sign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Draw {
    pub op: StrongOp,
    pub v: u32,
    pub applied: bool,
    pub negative: bool,
}

/// The draw of one strong view: `N_OPS` ops with replacement, each applied with p 0.5 at v
/// uniform in 1..=9 (numpy's randint(1, 10)), signed ops negative with p 0.5.
pub fn draw(rng: &mut impl Rng) -> [Draw; N_OPS] {
    std::array::from_fn(|_| {
        let op = StrongOp::POOL[rng.random_range(0..StrongOp::POOL.len())];
        let v = rng.random_range(1..10u32);
        let applied = rng.random_bool(0.5);
        let negative = applied && op.signed() && rng.random_bool(0.5);
        Draw {
            op,
            v,
            applied,
            negative,
        }
    })
}

/// One strong augmentation of `img`: [`draw`], then the applied ops in order.
pub fn rand_augment(img: &Rgb, rng: &mut impl Rng) -> Rgb {
    draw(rng)
        .iter()
        .filter(|d| d.applied)
        .fold(img.clone(), |x, d| apply(&x, d.op, d.v, d.negative))
}

fn map(img: &Rgb, f: impl Fn(u8) -> u8) -> Rgb {
    Rgb::new(img.h, img.w, img.data.iter().map(|&x| f(x)).collect())
}

fn per_channel_lut(img: &Rgb, lut_of: fn(&[u32; 256]) -> [u8; 256]) -> Rgb {
    let hw = img.h * img.w;
    let mut out = img.data.clone();
    for c in 0..3 {
        let plane = &img.data[c * hw..(c + 1) * hw];
        let mut h = [0u32; 256];
        plane.iter().for_each(|&x| h[x as usize] += 1);
        let lut = lut_of(&h);
        for (o, &x) in out[c * hw..(c + 1) * hw].iter_mut().zip(plane) {
            *o = lut[x as usize];
        }
    }
    Rgb::new(img.h, img.w, out)
}

/// ImageOps.autocontrast(cutoff = 0) for one band's histogram.
fn autocontrast_lut(h: &[u32; 256]) -> [u8; 256] {
    let mut lut = [0u8; 256];
    let lo = (0..256).find(|&i| h[i] > 0).unwrap_or(255);
    let hi = (0..256).rev().find(|&i| h[i] > 0).unwrap_or(0);
    for (i, l) in lut.iter_mut().enumerate() {
        *l = if hi <= lo {
            i as u8
        } else {
            let scale = 255.0 / (hi - lo) as f64;
            let offset = -(lo as f64) * scale;
            ((i as f64 * scale + offset) as i64).clamp(0, 255) as u8
        };
    }
    lut
}

/// ImageOps.equalize for one band's histogram.
fn equalize_lut(h: &[u32; 256]) -> [u8; 256] {
    let mut lut = [0u8; 256];
    let nonzero: Vec<u64> = h.iter().filter(|&&c| c > 0).map(|&c| c as u64).collect();
    let step = match nonzero.last() {
        Some(&last) if nonzero.len() > 1 => (nonzero.iter().sum::<u64>() - last) / 255,
        _ => 0,
    };
    let mut n = step / 2;
    for (i, l) in lut.iter_mut().enumerate() {
        *l = n.checked_div(step).map_or(i as u8, |q| q.min(255) as u8);
        n += h[i] as u64;
    }
    lut
}

/// ImageFilter.SMOOTH: the 3×3 kernel [1 1 1; 1 5 1; 1 1 1]/13 in f32 from 0.5, truncated;
/// the border rows and columns copied.
fn smooth(img: &Rgb) -> Rgb {
    let (h, w) = (img.h, img.w);
    let k = [
        1.0f32 / 13.0,
        1.0 / 13.0,
        1.0 / 13.0,
        1.0 / 13.0,
        5.0 / 13.0,
        1.0 / 13.0,
        1.0 / 13.0,
        1.0 / 13.0,
        1.0 / 13.0,
    ];
    let mut out = img.data.clone();
    if h < 3 || w < 3 {
        return img.clone();
    }
    for c in 0..3 {
        let at = |y: usize, x: usize| img.data[(c * h + y) * w + x] as f32;
        for y in 1..h - 1 {
            for x in 1..w - 1 {
                let row = |yy: usize, kk: &[f32]| {
                    at(yy, x - 1) * kk[0] + at(yy, x) * kk[1] + at(yy, x + 1) * kk[2]
                };
                let mut ss = 0.5f32;
                ss += row(y + 1, &k[0..3]);
                ss += row(y, &k[3..6]);
                ss += row(y - 1, &k[6..9]);
                out[(c * h + y) * w + x] = if ss <= 0.0 {
                    0
                } else if ss >= 255.0 {
                    255
                } else {
                    ss as u8
                };
            }
        }
    }
    Rgb::new(h, w, out)
}

/// Python's round(x, 15).
fn round15(x: f64) -> f64 {
    format!("{x:.15}").parse().unwrap_or(x)
}

/// Image.rotate(angle): nearest, about (W/2, H/2), black outside.
fn rotate(img: &Rgb, degrees: f64) -> Rgb {
    let angle = degrees.rem_euclid(360.0);
    if angle == 0.0 {
        return img.clone();
    }
    let (w, h) = (img.w as f64, img.h as f64);
    let a = -angle.to_radians();
    let mut m = [
        round15(a.cos()),
        round15(a.sin()),
        0.0,
        round15(-a.sin()),
        round15(a.cos()),
        0.0,
    ];
    let (cx, cy) = (w / 2.0, h / 2.0);
    // Python's transform(-cx, -cy) of the matrix (whose translation is still 0).
    m[2] = m[0] * -cx + m[1] * -cy;
    m[5] = m[3] * -cx + m[4] * -cy;
    m[2] += cx;
    m[5] += cy;
    affine(img, m)
}

/// Image.transform(size, AFFINE, a, NEAREST): output (x, y) samples input
/// (a0·x' + a1·y' + a2, a3·x' + a4·y' + a5) at pixel centres, black outside; Pillow's scale
/// path for a1 = a3 = 0, otherwise its 16.16 fixed-point path.
fn affine(img: &Rgb, a: [f64; 6]) -> Rgb {
    let (h, w) = (img.h, img.w);
    let mut out = vec![0u8; img.data.len()];
    let mut put = |x: usize, y: usize, xin: i64, yin: i64| {
        if xin >= 0 && (xin as usize) < w && yin >= 0 && (yin as usize) < h {
            for c in 0..3 {
                out[(c * h + y) * w + x] = img.data[(c * h + yin as usize) * w + xin as usize];
            }
        }
    };
    let coord = |v: f64| if v < 0.0 { -1 } else { v as i64 };
    if a[1] == 0.0 && a[3] == 0.0 {
        let mut xo = a[2] + a[0] * 0.5;
        let xin: Vec<i64> = (0..w)
            .map(|_| {
                let v = coord(xo);
                xo += a[0];
                v
            })
            .collect();
        let mut yo = a[5] + a[4] * 0.5;
        for y in 0..h {
            let yi = coord(yo);
            for (x, &xi) in xin.iter().enumerate() {
                put(x, y, xi, yi);
            }
            yo += a[4];
        }
    } else {
        let fix = |v: f64| {
            let s = v * 65536.0 + 0.5;
            (if s < 0.0 { s.floor() } else { s }) as i32
        };
        let (a0, a1, a3, a4) = (fix(a[0]), fix(a[1]), fix(a[3]), fix(a[4]));
        let mut a2 = fix(a[2] + a[0] * 0.5 + a[1] * 0.5);
        let mut a5 = fix(a[5] + a[3] * 0.5 + a[4] * 0.5);
        for y in 0..h {
            let (mut xx, mut yy) = (a2, a5);
            for x in 0..w {
                put(x, y, (xx >> 16) as i64, (yy >> 16) as i64);
                xx = xx.wrapping_add(a0);
                yy = yy.wrapping_add(a3);
            }
            a2 = a2.wrapping_add(a1);
            a5 = a5.wrapping_add(a4);
        }
    }
    Rgb::new(h, w, out)
}
