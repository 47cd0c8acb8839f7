//! Filters on normalised float images [C, H, W] with torchvision's tensor semantics: the
//! saliency-masking recipe's GaussianBlur (SPEC B.3: the high-pass x − GaussianBlur(11, σ 5)(x)
//! and the `blur` fill from GaussianBlur(31, σ 10)). Generic over f32/f64 (the reference);
//! `tests/filters.rs` checks it against torchvision's own float64 output.
//!
//! torchvision's `gaussian_blur`: per axis a kernel of `k` taps at x = −(k−1)/2 … (k−1)/2,
//! weights exp(−x²/(2σ²)) normalised to sum 1; the 2-D kernel is their outer product (so the
//! filter separates: rows, then columns); the image is padded by k/2 on each side in `reflect`
//! mode (mirrored without repeating the edge pixel), then convolved per channel.

use crate::error::{Error, Result};
use crate::ops::Real;

/// torchvision's 1-D Gaussian kernel of `k` taps (odd) and σ.
pub fn gaussian_kernel<T: Real>(k: usize, sigma: f64) -> Vec<T> {
    let half = (k as f64 - 1.0) * 0.5;
    let w: Vec<f64> = (0..k)
        .map(|i| {
            let x = -half + i as f64;
            (-0.5 * (x / sigma).powi(2)).exp()
        })
        .collect();
    let s: f64 = w.iter().sum();
    w.iter().map(|&v| T::of(v / s)).collect()
}

/// `reflect` padding's source index for `i` ∈ [−pad, n + pad) (pad < n).
fn reflect(i: i64, n: i64) -> usize {
    let i = if i < 0 { -i } else { i };
    (if i >= n { 2 * (n - 1) - i } else { i }) as usize
}

/// GaussianBlur(kernel (kx, ky), σ (sx, sy)) of an image [c, h, w].
pub fn gaussian_blur<T: Real>(
    x: &[T],
    (c, h, w): (usize, usize, usize),
    (kx, ky): (usize, usize),
    (sx, sy): (f64, f64),
) -> Result<Vec<T>> {
    if kx % 2 == 0 || ky % 2 == 0 || kx == 0 || ky == 0 {
        return Err(Error::shape(
            "gaussian_blur",
            format!("kernel sizes must be odd, got {kx}x{ky}"),
        ));
    }
    if kx / 2 >= w || ky / 2 >= h || !(sx > 0.0 && sy > 0.0) {
        return Err(Error::shape(
            "gaussian_blur",
            format!(
                "a {kx}x{ky} kernel (σ {sx}, {sy}) needs padding below the {h}x{w} image size and σ > 0 (reflect padding)"
            ),
        ));
    }
    let (gx, gy) = (gaussian_kernel::<T>(kx, sx), gaussian_kernel::<T>(ky, sy));
    let (px, py) = ((kx / 2) as i64, (ky / 2) as i64);
    let mut rows = vec![T::zero(); c * h * w];
    for p in 0..c * h {
        let src = &x[p * w..(p + 1) * w];
        for j in 0..w {
            let mut s = T::zero();
            for (t, &g) in gx.iter().enumerate() {
                s += g * src[reflect(j as i64 + t as i64 - px, w as i64)];
            }
            rows[p * w + j] = s;
        }
    }
    let mut out = vec![T::zero(); c * h * w];
    for ch in 0..c {
        let plane = &rows[ch * h * w..(ch + 1) * h * w];
        for i in 0..h {
            for j in 0..w {
                let mut s = T::zero();
                for (t, &g) in gy.iter().enumerate() {
                    s += g * plane[reflect(i as i64 + t as i64 - py, h as i64) * w + j];
                }
                out[(ch * h + i) * w + j] = s;
            }
        }
    }
    Ok(out)
}

/// The reference's high-pass filter: x − GaussianBlur(11, σ 5)(x).
pub fn high_pass<T: Real>(x: &[T], shape: (usize, usize, usize)) -> Result<Vec<T>> {
    let low = gaussian_blur(x, shape, (11, 11), (5.0, 5.0))?;
    Ok(x.iter().zip(low).map(|(&a, b)| a - b).collect())
}
