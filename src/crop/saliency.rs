//! Saliency-guided masking on plain images (SPEC B.3; Chin et al.): the cell rules (shared
//! with the device op `ops::saliency_mask`, which is what training runs), a random draw of the
//! cells, the fills of chosen cells and the focal masks. Tests use these as an independent
//! statement of what the op must produce.
//! The rules themselves (foreground, counts, cap) are stated in `ops::saliency_mask`.

use rand::seq::SliceRandom;
use rand::Rng;

use crate::ops::Real;

pub use crate::ops::saliency_mask::{foreground, neg_count, pos_counts};

/// The cells to mask: `n_fg` foreground and `n_bg` background cells drawn uniformly without
/// replacement, in drawing order.
pub fn choose_cells(rng: &mut impl Rng, fg: &[bool], n_fg: usize, n_bg: usize) -> Vec<usize> {
    let pick = |rng: &mut _, want: bool, n: usize| {
        let mut idx: Vec<usize> = (0..fg.len()).filter(|&i| fg[i] == want).collect();
        idx.shuffle(rng);
        idx.truncate(n);
        idx
    };
    let mut out = pick(rng, true, n_fg);
    out.extend(pick(rng, false, n_bg));
    out
}

/// What a masked cell is filled with.
pub enum Fill<'a, T> {
    /// A noise patch [c, cell_h, cell_w], the same for every cell (the reference draws one per
    /// batch call and reuses it).
    Noise(&'a [T]),
    /// The image's per-channel mean (computed before any cell is filled).
    Mean,
    /// The same pixels of a blurred copy of the image [c, h, w] (GaussianBlur(31, σ 10)).
    Blur(&'a [T]),
}

/// Rows (or columns) of cell `i` of `grid` along an axis of `n` pixels: [i·n/grid, (i+1)·n/grid).
pub fn cell_span(i: usize, grid: usize, n: usize) -> std::ops::Range<usize> {
    i * n / grid..(i + 1) * n / grid
}

/// Fill `cells` (row-major indices of a `grid`×`grid` grid) of an image [c, h, w], in every
/// channel or only in `channel` (the channel-wise masks). With `Noise`, the patch is
/// [c, ⌈h/grid⌉, ⌈w/grid⌉] and each cell takes its top-left part.
pub fn fill_cells<T: Real>(
    img: &mut [T],
    (c, h, w): (usize, usize, usize),
    grid: usize,
    cells: &[usize],
    channel: Option<usize>,
    fill: &Fill<T>,
) {
    let means: Vec<T> = (0..c)
        .map(|ch| {
            let plane = &img[ch * h * w..(ch + 1) * h * w];
            T::of(plane.iter().map(|v| v.to64()).sum::<f64>() / (h * w) as f64)
        })
        .collect();
    let (ph, pw) = (h.div_ceil(grid), w.div_ceil(grid));
    for &cell in cells {
        let (rows, cols) = (
            cell_span(cell / grid, grid, h),
            cell_span(cell % grid, grid, w),
        );
        for ch in (0..c).filter(|&ch| channel.is_none_or(|k| k == ch)) {
            for y in rows.clone() {
                for x in cols.clone() {
                    let at = (ch * h + y) * w + x;
                    img[at] = match fill {
                        Fill::Noise(p) => p[(ch * ph + y - rows.start) * pw + x - cols.start],
                        Fill::Mean => means[ch],
                        Fill::Blur(b) => b[at],
                    };
                }
            }
        }
    }
}

/// The focal masks of an image [c, h, w] and a square at (`top`, `left`) of side `side`:
/// "pos" keeps the square and replaces everything outside it with `outside` ([c, h, w]: fresh
/// noise in the reference); "neg" replaces the square with `patch` ([c, side, side]).
pub fn focal_mask<T: Real>(
    img: &mut [T],
    (c, h, w): (usize, usize, usize),
    (top, left, side): (usize, usize, usize),
    positive: bool,
    noise: &[T],
) {
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                let inside = (top..top + side).contains(&y) && (left..left + side).contains(&x);
                let at = (ch * h + y) * w + x;
                if positive && !inside {
                    img[at] = noise[at];
                } else if !positive && inside {
                    img[at] = noise[(ch * side + y - top) * side + x - left];
                }
            }
        }
    }
}
