//! Crop parameter samplers (SPEC A.3, torchvision semantics).
//!
//! - RandomResizedCrop: up to 10 attempts of area ~ U(scale)·H·W and log-aspect ~
//!   U(log ratio), w = round(√(area·aspect)), h = round(√(area/aspect)) (Python's
//!   round-half-to-even); accepted when 0 < w ≤ W and 0 < h ≤ H, with the top-left corner
//!   uniform; otherwise the central crop with the aspect clamped to the ratio range.
//! - ContrastiveCrop: the same size sampling; then the top coordinate ranges over
//!   [clamp(⌊H·h0⌋ − h//2), clamp(⌊H·h1⌋ − h//2)] (both ends clamped into [0, H − h], the
//!   post-#16 behaviour) and is interpolated with u ~ Beta(α, α): i = ch0 + ⌊(ch1 − ch0)·u⌋;
//!   likewise for the left coordinate with an independent draw. The crop *centre* thereby
//!   follows the box, pushed towards its edges for α < 1.

use rand::Rng;
use rand_distr::{Beta, Distribution};

use crate::error::{Error, Result};

/// A crop: top-left corner and size, in pixels of the source image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crop {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// Normalised box (top, left, bottom, right) in fractions of the image.
pub type BoxF = [f32; 4];

pub const WHOLE_IMAGE: BoxF = [0.0, 0.0, 1.0, 1.0];

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RrcParams {
    pub scale: (f64, f64),
    pub ratio: (f64, f64),
}

impl Default for RrcParams {
    /// Pre-training's scale (0.2, 1) and the default ratio (3/4, 4/3).
    fn default() -> Self {
        Self {
            scale: (0.2, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }
}

impl RrcParams {
    pub fn validate(&self) -> Result<()> {
        let (s, r) = (self.scale, self.ratio);
        if !(s.0 > 0.0 && s.0 <= s.1 && s.1 <= 1.0) {
            return Err(Error::Config {
                field: "crop.scale".into(),
                msg: format!("{s:?} must satisfy 0 < min ≤ max ≤ 1"),
            });
        }
        if !(r.0 > 0.0 && r.0 <= r.1) {
            return Err(Error::Config {
                field: "crop.ratio".into(),
                msg: format!("{r:?} must satisfy 0 < min ≤ max"),
            });
        }
        Ok(())
    }

    /// (h, w) from up to 10 attempts, or `None` (then the central fallback applies).
    pub(crate) fn sample_size(
        &self,
        rng: &mut impl Rng,
        hgt: usize,
        wid: usize,
    ) -> Option<(usize, usize)> {
        let area = (hgt * wid) as f64;
        let (lr0, lr1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * rng.random_range(self.scale.0..=self.scale.1);
            let aspect = rng.random_range(lr0..=lr1).exp();
            let w = (target * aspect).sqrt().round_ties_even() as usize;
            let h = (target / aspect).sqrt().round_ties_even() as usize;
            if w > 0 && w <= wid && h > 0 && h <= hgt {
                return Some((h, w));
            }
        }
        None
    }

    pub(crate) fn fallback(&self, hgt: usize, wid: usize) -> Crop {
        let in_ratio = wid as f64 / hgt as f64;
        let (h, w) = if in_ratio < self.ratio.0 {
            (
                ((wid as f64) / self.ratio.0).round_ties_even() as usize,
                wid,
            )
        } else if in_ratio > self.ratio.1 {
            (
                hgt,
                ((hgt as f64) * self.ratio.1).round_ties_even() as usize,
            )
        } else {
            (hgt, wid)
        };
        Crop {
            top: (hgt - h) / 2,
            left: (wid - w) / 2,
            height: h,
            width: w,
        }
    }

    /// torchvision's RandomResizedCrop.get_params.
    pub fn sample(&self, rng: &mut impl Rng, hgt: usize, wid: usize) -> Crop {
        match self.sample_size(rng, hgt, wid) {
            Some((h, w)) => Crop {
                top: rng.random_range(0..=hgt - h),
                left: rng.random_range(0..=wid - w),
                height: h,
                width: w,
            },
            None => self.fallback(hgt, wid),
        }
    }
}

/// ContrastiveCrop's sampler.
#[derive(Clone, Copy, Debug)]
pub struct ContrastiveCrop {
    pub rrc: RrcParams,
    beta: Beta<f64>,
    pub alpha: f64,
}

impl ContrastiveCrop {
    pub fn new(rrc: RrcParams, alpha: f64) -> Result<Self> {
        rrc.validate()?;
        let beta = Beta::new(alpha, alpha).map_err(|_| Error::Config {
            field: "crop.alpha".into(),
            msg: format!("{alpha} must be > 0"),
        })?;
        Ok(Self { rrc, beta, alpha })
    }

    /// The range of the top (or left) coordinate for a crop of `size` along an axis of
    /// `len` pixels and box edges `lo`, `hi` (fractions). `int(len·edge)` is taken in double
    /// precision as the reference's Python does (in f32, 96·f32(5/24) rounds up to 20 where
    /// the reference gets 19).
    pub fn range(len: usize, size: usize, lo: f32, hi: f32) -> (usize, usize) {
        let max = (len - size) as i64;
        let c =
            |f: f32| ((len as f64 * f as f64) as i64 - (size / 2) as i64).clamp(0, max) as usize;
        (c(lo), c(hi))
    }

    /// The crop of size `h`×`w` in an image of `hgt`×`wid` for box `bx` and the Beta draws
    /// `u` (top) and `v` (left): i = ch0 + int((ch1 − ch0)·u), likewise j.
    #[allow(clippy::too_many_arguments)]
    pub fn place(hgt: usize, wid: usize, h: usize, w: usize, bx: BoxF, u: f64, v: f64) -> Crop {
        let (ch0, ch1) = Self::range(hgt, h, bx[0], bx[2]);
        let (cw0, cw1) = Self::range(wid, w, bx[1], bx[3]);
        Crop {
            top: ch0 + ((ch1 - ch0) as f64 * u) as usize,
            left: cw0 + ((cw1 - cw0) as f64 * v) as usize,
            height: h,
            width: w,
        }
    }

    pub fn sample(&self, rng: &mut impl Rng, hgt: usize, wid: usize, bx: BoxF) -> Crop {
        self.try_sample(rng, hgt, wid, bx)
            .unwrap_or_else(|| self.rrc.fallback(hgt, wid))
    }

    /// The crop, or `None` when the 10 size attempts failed (`sample` then takes the central
    /// fallback, which ignores the box).
    /// One Beta(α, α) draw.
    pub fn beta_draw(&self, rng: &mut impl Rng) -> f64 {
        self.beta.sample(rng)
    }

    pub fn try_sample(&self, rng: &mut impl Rng, hgt: usize, wid: usize, bx: BoxF) -> Option<Crop> {
        let (h, w) = self.rrc.sample_size(rng, hgt, wid)?;
        let u: f64 = self.beta.sample(rng);
        let v: f64 = self.beta.sample(rng);
        Some(Self::place(hgt, wid, h, w, bx, u, v))
    }
}
