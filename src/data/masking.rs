//! The loader's half of saliency-guided masking (SPEC B.3, D.7): everything random and
//! everything that does not need the model. Per batch, the noise patches the reference draws
//! once per call; per image and masked view, a plan row (the draw of focal / spatial /
//! channel-wise, the ratio r, the focal square, the order cells are taken in) and a fill
//! image (what a masked pixel becomes); the high-pass filter of every view for `hp`, keeping
//! the plain views the saliency is computed on. The device op `ops::saliency_mask` then
//! decides the cells from the model's saliency and writes the masked views in the step.
//!
//! The recipe as the reference codes it (`hp`): per image with p 0.2 a focal mask ("pos"
//! keeps a random square of 200/224 of the side and fills everything outside it with fresh
//! noise, std 0.18; "neg" fills a square of 130/224 of the side with the batch's focal noise
//! patch, std 0.14), otherwise the grid mask, spatial with p 0.3 (the batch's 3-channel noise
//! patch in every chosen cell) or channel-wise with p 0.7 (each channel its own cells, the
//! batch's channel noise patch). `blur` fills the chosen cells from a GaussianBlur(31, σ 10)
//! copy of the view, `mean` with the view's per-channel mean; both are spatial grid masks
//! only, without the 0.55 cap (as the reference's `random_mask_blur` / `random_mask_mean`).

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use super::filters::{gaussian_blur, high_pass};
use super::loader::mix;
use crate::crop::saliency::cell_span;
use crate::ops::saliency_mask::{plan_len, MaskRule, CHANNEL, FOCAL, PLAN_HEAD, SPATIAL};

/// `mask.strategy` when masking is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// High-pass views, noise fills, focal and channel-wise masks.
    HighPass,
    /// Cells from a GaussianBlur(31, σ 10) copy.
    Blur,
    /// The view's per-channel mean.
    Mean,
}

impl Strategy {
    /// `mask.strategy` values; `none` turns masking off.
    pub const NAMES: [&'static str; 4] = ["none", "hp", "blur", "mean"];

    pub fn parse(s: &str) -> Option<Option<Strategy>> {
        Some(match s {
            "none" => None,
            "hp" => Some(Strategy::HighPass),
            "blur" => Some(Strategy::Blur),
            "mean" => Some(Strategy::Mean),
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Strategy::HighPass => "hp",
            Strategy::Blur => "blur",
            Strategy::Mean => "mean",
        }
    }
    /// The smallest view side the strategy's filters take (reflect padding below the size).
    pub fn min_size(self) -> usize {
        match self {
            Strategy::HighPass => 6,
            Strategy::Blur => 16,
            Strategy::Mean => 1,
        }
    }
}

/// Probability of a focal mask (`hp`).
pub const FOCAL_P: f64 = 0.2;
/// Probability of a spatial (rather than channel-wise) grid mask (`hp`).
pub const SPATIAL_P: f64 = 0.3;
/// Noise std of "pos" and "neg" fills (`hp`).
pub const POS_NOISE_STD: f32 = 0.18;
pub const NEG_NOISE_STD: f32 = 0.14;

/// How a run masks its views.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaskRecipe {
    pub strategy: Strategy,
    /// Cells per side of the grid.
    pub grid: usize,
    /// The ratio r of "pos" and "neg" views, uniform in these ranges.
    pub pos_ratio: (f64, f64),
    pub neg_ratio: (f64, f64),
}

impl MaskRecipe {
    /// The reference's ranges: r ~ U[0.05, 0.25] (pos), U[0.4, 0.7] (neg).
    pub fn new(strategy: Strategy, grid: usize) -> MaskRecipe {
        MaskRecipe {
            strategy,
            grid,
            pos_ratio: (0.05, 0.25),
            neg_ratio: (0.4, 0.7),
        }
    }

    /// The focal square's side in a view of `size` pixels: 200/224 ("pos") or 130/224 ("neg")
    /// of it, rounded (29 and 19 at 32 px, 86 and 56 at 96 px).
    pub fn focal_side(size: usize, positive: bool) -> usize {
        let f = if positive { 200.0 } else { 130.0 } / 224.0;
        ((size as f64 * f).round() as usize).clamp(1, size)
    }

    /// The device op's rule for a view of `size` pixels.
    pub fn rule(&self, size: usize, positive: bool) -> MaskRule {
        let hp = self.strategy == Strategy::HighPass;
        MaskRule {
            positive,
            cap: hp,
            focal_side: if hp {
                Self::focal_side(size, positive)
            } else {
                0
            },
        }
    }
}

/// The noise patches of one batch and masked view (`hp`): spatial and channel-wise cell
/// patches [3, ⌈S/G⌉, ⌈S/G⌉] and, for "neg" views, the focal patch [3, side, side].
#[derive(Clone, Debug, Default)]
pub struct BatchNoise {
    pub spatial: Vec<f32>,
    pub channel: Vec<f32>,
    pub focal: Vec<f32>,
}

fn noise(rng: &mut StdRng, n: usize, std: f32) -> Vec<f32> {
    let d = Normal::new(0.0f32, std).unwrap_or(Normal::new(0.0, 1.0).expect("unit normal"));
    (0..n).map(|_| d.sample(rng)).collect()
}

impl BatchNoise {
    /// The patches of batch `batch` of `epoch`, view `view` (of `size` pixels).
    pub fn draw(
        recipe: &MaskRecipe,
        size: usize,
        positive: bool,
        (seed, epoch, batch, view): (u64, u64, u64, u64),
    ) -> BatchNoise {
        if recipe.strategy != Strategy::HighPass {
            return BatchNoise::default();
        }
        let mut rng = StdRng::seed_from_u64(mix(seed, epoch, u64::MAX - 1, (batch << 16) ^ view));
        let std = if positive {
            POS_NOISE_STD
        } else {
            NEG_NOISE_STD
        };
        let p = size.div_ceil(recipe.grid);
        let spatial = noise(&mut rng, 3 * p * p, std);
        let channel = noise(&mut rng, 3 * p * p, std);
        let focal = if positive {
            Vec::new()
        } else {
            let s = MaskRecipe::focal_side(size, false);
            noise(&mut rng, 3 * s * s, std)
        };
        BatchNoise {
            spatial,
            channel,
            focal,
        }
    }
}

/// One image's plan row and fill image for a masked view `x` [3, S, S] (normalised, high-passed
/// for `hp`), from `rng`.
pub fn plan_and_fill(
    x: &[f32],
    size: usize,
    recipe: &MaskRecipe,
    positive: bool,
    patches: &BatchNoise,
    rng: &mut StdRng,
) -> (Vec<f32>, Vec<f32>) {
    let g = recipe.grid;
    let cells = g * g;
    let hw = size * size;
    let mut plan = vec![0f32; plan_len(g)];
    let (lo, hi) = if positive {
        recipe.pos_ratio
    } else {
        recipe.neg_ratio
    };
    let hp = recipe.strategy == Strategy::HighPass;
    let kind = if hp && rng.random_bool(FOCAL_P) {
        FOCAL
    } else if hp && !rng.random_bool(SPATIAL_P) {
        CHANNEL
    } else {
        SPATIAL
    };
    plan[0] = kind;
    plan[1] = if hi > lo {
        rng.random_range(lo..hi) as f32
    } else {
        lo as f32
    };
    let side = MaskRecipe::focal_side(size, positive);
    plan[2] = rng.random_range(0..=size - side) as f32;
    plan[3] = rng.random_range(0..=size - side) as f32;
    for ch in 0..3 {
        let mut perm: Vec<usize> = (0..cells).collect();
        perm.shuffle(rng);
        for (rank, &c) in perm.iter().enumerate() {
            plan[PLAN_HEAD + ch * cells + c] = rank as f32;
        }
    }
    let fill = match recipe.strategy {
        Strategy::HighPass if kind == FOCAL && positive => noise(rng, 3 * hw, POS_NOISE_STD),
        Strategy::HighPass if kind == FOCAL => {
            let (top, left) = (plan[2] as usize, plan[3] as usize);
            let mut f = vec![0f32; 3 * hw];
            for ch in 0..3 {
                for y in 0..side {
                    for xx in 0..side {
                        f[(ch * size + top + y) * size + left + xx] =
                            patches.focal[(ch * side + y) * side + xx];
                    }
                }
            }
            f
        }
        Strategy::HighPass => {
            let patch = if kind == CHANNEL {
                &patches.channel
            } else {
                &patches.spatial
            };
            let p = size.div_ceil(g);
            let mut f = vec![0f32; 3 * hw];
            for ch in 0..3 {
                for cy in 0..g {
                    let rows = cell_span(cy, g, size);
                    for cx in 0..g {
                        let cols = cell_span(cx, g, size);
                        for y in rows.clone() {
                            for xx in cols.clone() {
                                f[(ch * size + y) * size + xx] =
                                    patch[(ch * p + y - rows.start) * p + xx - cols.start];
                            }
                        }
                    }
                }
            }
            f
        }
        Strategy::Blur => {
            gaussian_blur(x, (3, size, size), (31, 31), (10.0, 10.0)).unwrap_or_else(|_| x.to_vec())
        }
        Strategy::Mean => {
            let mut f = vec![0f32; 3 * hw];
            for ch in 0..3 {
                let plane = &x[ch * hw..(ch + 1) * hw];
                let m = (plane.iter().map(|&v| v as f64).sum::<f64>() / hw as f64) as f32;
                f[ch * hw..(ch + 1) * hw].fill(m);
            }
            f
        }
    };
    (plan, fill)
}

/// The high-pass filter of a view [3, S, S] (`hp`: every view the model sees).
pub fn high_pass_view(x: &[f32], size: usize) -> Vec<f32> {
    high_pass(x, (3, size, size)).unwrap_or_else(|_| x.to_vec())
}
