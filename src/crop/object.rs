//! Object-aware crops (SPEC B.2, D.8): the pixel region a view is cropped from, given one
//! proposal.
//!
//! - The tight region is the proposal's pixel box `[x1, y1, x2, y2]` (x2, y2 exclusive).
//! - The dilated region grows it. `Centre` (default, the paper's intent): each side moves out
//!   by ⌊d·size/2⌋, so the box grows by a factor ≈ 1 + d about its centre. `Coordinate` (the
//!   reference code): x1 −= ⌊d·x1⌋, y1 −= ⌊d·y1⌋, x2 += ⌊d·x2⌋, y2 += ⌊d·y2⌋ — each
//!   coordinate value scales, so a box near the origin barely grows.
//! - Minimum size `m` (the reference's 224 px on OpenImages photos, about a quarter of their
//!   side; our CIFAR default is 8 px of 32, STL-10's 24 of 96), applied to both regions per
//!   axis with the reference's rule: if x2 − x1 < m then (x1 − m/2 > 0 ? x1 −= m/2 : (x1 = 0,
//!   x2 = m)); then (x2 + m/2 < W ? x2 += m/2 : x1 = x2 − m). Unlike the reference the result
//!   is clipped to the image on both ends (it pads with black or clips only x2).

use super::proposals::to_pixels;
use super::sampler::{BoxF, Crop};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DilationMode {
    Centre,
    Coordinate,
}

/// Which two views an object-aware run makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectPair {
    /// "Object–object + dilate": RRC of the tight region, RRC of the dilated region.
    Dilate,
    /// "Object–scene": RRC of the whole image, the tight region resized.
    Scene,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ObjectCrop {
    pub dilation: f64,
    pub mode: DilationMode,
    pub min_size: usize,
}

impl Default for ObjectCrop {
    fn default() -> Self {
        Self {
            dilation: 0.2,
            mode: DilationMode::Centre,
            min_size: 8,
        }
    }
}

impl ObjectCrop {
    /// The pixel region of proposal `bx` in an image of `hgt`×`wid`, dilated or tight.
    pub fn region(&self, bx: BoxF, hgt: usize, wid: usize, dilated: bool) -> Crop {
        let [x1, y1, x2, y2] = to_pixels(bx, hgt, wid).map(|v| v as i64);
        let (mut x, mut y) = ((x1, x2), (y1, y2));
        if dilated {
            let d = self.dilation;
            let grow = |v: i64| (d * v as f64).floor() as i64;
            match self.mode {
                DilationMode::Centre => {
                    let (gx, gy) = (grow(x2 - x1) / 2, grow(y2 - y1) / 2);
                    x = (x1 - gx, x2 + gx);
                    y = (y1 - gy, y2 + gy);
                }
                DilationMode::Coordinate => {
                    x = (x1 - grow(x1), x2 + grow(x2));
                    y = (y1 - grow(y1), y2 + grow(y2));
                }
            }
        }
        let (x1, x2) = Self::expand(x, self.min_size as i64, wid as i64);
        let (y1, y2) = Self::expand(y, self.min_size as i64, hgt as i64);
        Crop {
            top: y1 as usize,
            left: x1 as usize,
            height: (y2 - y1) as usize,
            width: (x2 - x1) as usize,
        }
    }

    /// The reference's minimum-size rule along one axis of `len` pixels, then clipped.
    pub fn expand((mut a, mut b): (i64, i64), m: i64, len: i64) -> (i64, i64) {
        if b - a < m {
            let half = m / 2;
            if a - half > 0 {
                a -= half;
            } else {
                a = 0;
                b = m;
            }
            if b + half < len {
                b += half;
            } else {
                a = b - m;
            }
        }
        let a = a.clamp(0, len - 1);
        (a, b.clamp(a + 1, len))
    }
}
