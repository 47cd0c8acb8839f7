//! Saliency-guided masking on the run's device (SPEC B.3, D.7; Chin et al., WACV 2024): which
//! cells of a `G`×`G` patch grid a view masks, decided from the model's own saliency, and the
//! masked view. Every random choice (the ratio r, the focal / spatial / channel-wise draw, the
//! focal square, the order cells are taken in, the noise) is drawn by the loader into a plan
//! row and a fill image, so the step needs no readback and the CPU and GPU paths make the
//! same views.
//!
//! 1. [`cell_saliency`]: features [N, C, h, w] → [N, G²], the channel sum of the layer-4 map
//!    (the map ContrastiveCrop's heatmaps use) resized bilinearly to the grid
//!    (align_corners = False; the identity when G = h = w, the reference's 7×7 at 224 px).
//! 2. [`mask_cells`]: [N, 3, G²] of 0/1. A cell is foreground when its saliency is
//!    ≥ mean − 0.6·std over the cells (population std, as the reference's numpy; the
//!    reference takes the values from a row-wise sorted copy and the indices from a global
//!    arg-sort; its evident intent is the rule on each cell's own value). With ratio r and
//!    #FG foreground cells of `cells`, the masked foreground share is r·#FG cells, replaced
//!    by 0.55·cells once r·#FG/cells ≥ 0.56 when `cap` (the reference's `hp` rule; `blur` and
//!    `mean` have no cap); #FG masked = round(·) (half to even, Python's `round`) and at most
//!    #FG. "pos" views also mask ⌊cells·r⌋ − #FG masked background cells (never below 0: the
//!    reference's negative count would slice "all but the last few"; at most the background
//!    cells); "neg" views (hard negatives) only foreground cells. The cells of each kind are
//!    taken in the plan's priority order (a random permutation of the cells), which draws
//!    them uniformly without replacement as the reference's `randperm`. Channel-wise plans
//!    carry one permutation per channel; the others use channel 0's for every channel.
//! 3. [`apply_mask`]: the view with every masked pixel replaced by the fill image's: the grid
//!    cells of the mask (cell i spans rows [i·H/G, (i+1)·H/G)), or for a focal plan the focal
//!    square of side `side` at (top, left): "pos" keeps it and replaces everything outside,
//!    "neg" replaces it.
//!
//! Plan row (f32) per image: [kind (0 spatial grid, 1 channel-wise grid, 2 focal), r, focal
//! top, focal left, priorities 3×G²].
//!
//! Tolerance GPU vs CPU: the cell saliency is a sum of C products (atol 1e-4, rtol 1e-4); the
//! masks and the masked views are decisions and copies and match exactly, except where a
//! cell's saliency lies within rounding of mean − 0.6·std (tests use inputs without such
//! ties).

use super::{buf, cpu, u, Real, TResult};
use crate::error::{Error, Result};
use crate::gpu::{grid_1d, Kernel};
use crate::tensor::{same_device, Device, Tensor};

const CELLS: Kernel = Kernel::new("saliency_mask", "cell_saliency");
const MASK: Kernel = Kernel::new("saliency_mask", "mask_cells");
const APPLY: Kernel = Kernel::new("saliency_mask", "apply_mask");

/// Plan entries before the priorities.
pub const PLAN_HEAD: usize = 4;
/// Largest grid (cells per side) the kernels take.
pub const MAX_GRID: usize = 16;

/// Plan kinds.
pub const SPATIAL: f32 = 0.0;
pub const CHANNEL: f32 = 1.0;
pub const FOCAL: f32 = 2.0;

/// Plan row length for a `grid`×`grid` grid.
pub fn plan_len(grid: usize) -> usize {
    PLAN_HEAD + 3 * grid * grid
}

/// What a masked view is: a "pos" view (query) or a "neg" view (hard negative), whether the
/// 0.55 cap applies, and the focal square's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskRule {
    pub positive: bool,
    pub cap: bool,
    pub focal_side: usize,
}

/// Foreground cells of one saliency grid (row-major).
pub fn foreground<T: Real>(saliency: &[T]) -> Vec<bool> {
    let n = T::of(saliency.len().max(1) as f64);
    let mean = saliency.iter().copied().sum::<T>() / n;
    let var = saliency.iter().map(|&x| (x - mean) * (x - mean)).sum::<T>() / n;
    let thr = mean - T::of(0.6) * var.sqrt();
    saliency.iter().map(|&x| x >= thr).collect()
}

/// Round half to even (Python's `round`, WGSL's `round`).
fn round_even<T: Real>(x: T) -> T {
    let r = x.round();
    if (x - x.trunc()).abs() == T::of(0.5) {
        T::of(2.0) * (x / T::of(2.0)).round()
    } else {
        r
    }
}

/// (foreground, background) cells a view masks at ratio `r` with `fg` foreground cells out
/// of `cells` (module doc), computed in `T` exactly as the kernel does in f32.
pub fn counts<T: Real>(r: T, fg: usize, cells: usize, rule: MaskRule) -> (usize, usize) {
    let mut share = r * T::of(fg as f64);
    if rule.cap && share >= T::of(0.56) * T::of(cells as f64) {
        share = T::of(0.55) * T::of(cells as f64);
    }
    let n_fg = (round_even(share).to64() as usize).min(fg);
    let n_bg = if rule.positive {
        let total = (T::of(cells as f64) * r).floor().to64() as usize;
        total.saturating_sub(n_fg).min(cells - fg)
    } else {
        0
    };
    (n_fg, n_bg)
}

/// The counts of a "pos" view (capped as `hp`).
pub fn pos_counts(r: f64, fg: usize, cells: usize) -> (usize, usize) {
    let rule = MaskRule {
        positive: true,
        cap: true,
        focal_side: 0,
    };
    counts(r, fg, cells, rule)
}

/// Foreground cells a "neg" (hard-negative) view masks (capped as `hp`).
pub fn neg_count(r: f64, fg: usize, cells: usize) -> usize {
    let rule = MaskRule {
        positive: false,
        cap: true,
        focal_side: 0,
    };
    counts(r, fg, cells, rule).0
}

/// The cell saliency [N, G²] of features [N, C, h, w].
pub fn cell_saliency_ref<T: Real>(
    feat: &[T],
    (n, c, h, w): (usize, usize, usize, usize),
    grid: usize,
) -> Vec<T> {
    let mut out = Vec::with_capacity(n * grid * grid);
    for i in 0..n {
        let heat: Vec<T> = (0..h * w)
            .map(|j| (0..c).map(|ch| feat[(i * c + ch) * h * w + j]).sum())
            .collect();
        out.extend(crate::crop::heatmap::upsample_ref(&heat, h, w, grid, grid));
    }
    out
}

/// The cell masks [N, 3, G²] of saliency [N, G²] and plans [N, plan_len(G)].
pub fn mask_cells_ref<T: Real>(
    sal: &[T],
    plan: &[T],
    n: usize,
    grid: usize,
    rule: MaskRule,
) -> Vec<T> {
    let cells = grid * grid;
    let pl = plan_len(grid);
    let mut out = vec![T::zero(); n * 3 * cells];
    for i in 0..n {
        let row = &plan[i * pl..(i + 1) * pl];
        if row[0].to64() as usize == FOCAL as usize {
            continue;
        }
        let fg = foreground(&sal[i * cells..(i + 1) * cells]);
        let n_fg_cells = fg.iter().filter(|&&f| f).count();
        let (n_fg, n_bg) = counts(row[1], n_fg_cells, cells, rule);
        for ch in 0..3 {
            let pch = if row[0].to64() as usize == CHANNEL as usize {
                ch
            } else {
                0
            };
            let prio = &row[PLAN_HEAD + pch * cells..PLAN_HEAD + (pch + 1) * cells];
            let mut order: Vec<usize> = (0..cells).collect();
            order.sort_by(|&a, &b| {
                prio[a]
                    .partial_cmp(&prio[b])
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            let (mut took_fg, mut took_bg) = (0, 0);
            for c in order {
                let take = if fg[c] {
                    took_fg += 1;
                    took_fg <= n_fg
                } else {
                    took_bg += 1;
                    took_bg <= n_bg
                };
                if take {
                    out[(i * 3 + ch) * cells + c] = T::one();
                }
            }
        }
    }
    out
}

/// Whether pixel (y, x) of channel `ch` of image `i` is masked.
#[allow(clippy::too_many_arguments)]
fn masked_at<T: Real>(
    mask: &[T],
    row: &[T],
    (i, ch, y, x): (usize, usize, usize, usize),
    (h, w): (usize, usize),
    grid: usize,
    rule: MaskRule,
) -> bool {
    if row[0].to64() as usize == FOCAL as usize {
        let (top, left) = (row[2].to64() as usize, row[3].to64() as usize);
        let s = rule.focal_side;
        let inside = (top..top + s).contains(&y) && (left..left + s).contains(&x);
        inside != rule.positive
    } else {
        let (cy, cx) = (((y + 1) * grid - 1) / h, ((x + 1) * grid - 1) / w);
        mask[(i * 3 + ch) * grid * grid + cy * grid + cx] > T::of(0.5)
    }
}

/// The masked views [N, 3, H, W].
#[allow(clippy::too_many_arguments)]
pub fn apply_mask_ref<T: Real>(
    x: &[T],
    fill: &[T],
    mask: &[T],
    plan: &[T],
    (n, h, w): (usize, usize, usize),
    grid: usize,
    rule: MaskRule,
) -> Vec<T> {
    let pl = plan_len(grid);
    let mut out = x.to_vec();
    for i in 0..n {
        let row = &plan[i * pl..(i + 1) * pl];
        for ch in 0..3 {
            for y in 0..h {
                for xx in 0..w {
                    if masked_at(mask, row, (i, ch, y, xx), (h, w), grid, rule) {
                        let at = ((i * 3 + ch) * h + y) * w + xx;
                        out[at] = fill[at];
                    }
                }
            }
        }
    }
    out
}

fn check_grid(grid: usize, h: usize, w: usize) -> Result<()> {
    if grid == 0 || grid > MAX_GRID || grid > h || grid > w {
        return Err(Error::shape(
            "saliency_mask",
            format!("a grid of {grid}x{grid} cells needs 1..={MAX_GRID} cells per side, at most the view's {h}x{w} pixels"),
        ));
    }
    Ok(())
}

/// Cell saliency [N, G²] of features [N, C, h, w].
pub fn cell_saliency(features: &Tensor, grid: usize) -> TResult {
    let &[n, c, h, w] = features.shape() else {
        return Err(Error::shape(
            "cell_saliency",
            format!("expects features [N, C, h, w], got {:?}", features.shape()),
        ));
    };
    check_grid(grid, usize::MAX, usize::MAX)?;
    let cells = grid * grid;
    match features.device() {
        Device::Cpu => Ok(cpu(
            cell_saliency_ref(features.cpu_data().unwrap_or_default(), (n, c, h, w), grid),
            &[n, cells],
        )),
        Device::Gpu(g) => {
            let out = g.alloc(n * cells);
            g.dispatch(
                CELLS,
                &[],
                &[buf(features), &out],
                &[u(n), u(c), u(h), u(w), u(grid), 0, 0, 0],
                grid_1d(n * cells, 256),
            );
            Ok(Tensor::from_gpu(&g, out, &[n, cells]))
        }
    }
}

fn check_plan(plan: &Tensor, n: usize, grid: usize) -> Result<()> {
    if plan.shape() != [n, plan_len(grid)] {
        return Err(Error::shape(
            "saliency_mask",
            format!(
                "plans {:?} for {n} images of a {grid}x{grid} grid (expected [{n}, {}])",
                plan.shape(),
                plan_len(grid)
            ),
        ));
    }
    Ok(())
}

/// Cell masks [N, 3, G²] from cell saliency [N, G²] and plans [N, plan_len(G)].
pub fn mask_cells(sal: &Tensor, plan: &Tensor, grid: usize, rule: MaskRule) -> TResult {
    let cells = grid * grid;
    let &[n, sc] = sal.shape() else {
        return Err(Error::shape(
            "mask_cells",
            format!("expects saliency [N, cells], got {:?}", sal.shape()),
        ));
    };
    check_grid(grid, usize::MAX, usize::MAX)?;
    if sc != cells {
        return Err(Error::shape(
            "mask_cells",
            format!("saliency of {sc} cells for a {grid}x{grid} grid"),
        ));
    }
    check_plan(plan, n, grid)?;
    match same_device("mask_cells", &[sal, plan])? {
        Device::Cpu => Ok(cpu(
            mask_cells_ref(
                sal.cpu_data().unwrap_or_default(),
                plan.cpu_data().unwrap_or_default(),
                n,
                grid,
                rule,
            ),
            &[n, 3, cells],
        )),
        Device::Gpu(g) => {
            let out = g.alloc(n * 3 * cells);
            g.dispatch(
                MASK,
                &[],
                &[buf(sal), buf(plan), &out],
                &[
                    u(n),
                    0,
                    0,
                    0,
                    u(grid),
                    u(rule.positive as usize),
                    u(rule.cap as usize),
                    0,
                ],
                grid_1d(n * 3 * cells, 256),
            );
            Ok(Tensor::from_gpu(&g, out, &[n, 3, cells]))
        }
    }
}

/// The masked views [N, 3, H, W] of `x`, masked pixels taken from `fill`.
pub fn apply_mask(
    x: &Tensor,
    fill: &Tensor,
    mask: &Tensor,
    plan: &Tensor,
    grid: usize,
    rule: MaskRule,
) -> TResult {
    let &[n, 3, h, w] = x.shape() else {
        return Err(Error::shape(
            "apply_mask",
            format!("expects views [N, 3, H, W], got {:?}", x.shape()),
        ));
    };
    check_grid(grid, h, w)?;
    if fill.shape() != x.shape() || mask.shape() != [n, 3, grid * grid] {
        return Err(Error::shape(
            "apply_mask",
            format!(
                "fill {:?} and mask {:?} for views {:?}",
                fill.shape(),
                mask.shape(),
                x.shape()
            ),
        ));
    }
    check_plan(plan, n, grid)?;
    match same_device("apply_mask", &[x, fill, mask, plan])? {
        Device::Cpu => Ok(cpu(
            apply_mask_ref(
                x.cpu_data().unwrap_or_default(),
                fill.cpu_data().unwrap_or_default(),
                mask.cpu_data().unwrap_or_default(),
                plan.cpu_data().unwrap_or_default(),
                (n, h, w),
                grid,
                rule,
            ),
            x.shape(),
        )),
        Device::Gpu(g) => {
            let out = g.alloc(n * 3 * h * w);
            g.dispatch(
                APPLY,
                &[],
                &[buf(x), buf(fill), buf(mask), buf(plan), &out],
                &[
                    u(n),
                    0,
                    u(h),
                    u(w),
                    u(grid),
                    u(rule.positive as usize),
                    u(rule.cap as usize),
                    u(rule.focal_side),
                ],
                grid_1d(n * 3 * h * w, 256),
            );
            Ok(Tensor::from_gpu(&g, out, x.shape()))
        }
    }
}

/// The masked views of `x` for saliency source features `features` (the three steps above).
pub fn mask_views(
    x: &Tensor,
    features: &Tensor,
    fill: &Tensor,
    plan: &Tensor,
    grid: usize,
    rule: MaskRule,
) -> TResult {
    let sal = cell_saliency(features, grid)?;
    let mask = mask_cells(&sal, plan, grid, rule)?;
    apply_mask(x, fill, &mask, plan, grid, rule)
}
