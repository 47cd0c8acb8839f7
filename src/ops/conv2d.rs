//! 2-D convolution, NCHW, weight [O, C, KH, KW] (PyTorch layout), no bias.
//!
//! y[n,o,oy,ox] = Σ_{c,ky,kx} x[n,c,oy·s−p+ky, ox·s−p+kx] · w[o,c,ky,kx]   (zero padding)
//! gx = the transposed convolution of gy with w; gw[o,c,ky,kx] = Σ_{n,oy,ox} gy·x(shifted).
//!
//! Tolerance GPU vs CPU: sums of C·KH·KW (forward), O·KH·KW (input grad) or N·OH·OW (weight
//! grad) f32 products in another order: atol 1e-5·√len·max|x|·max|w|, rtol 1e-4.

use super::{buf, cpu, u, Real, TResult};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::gpu::{grid_1d, Gpu, GpuBuffer, Kernel, KernelVariant};
use crate::ops::gemm::{dispatch_gemm, gemm_f32, matmul_ref, GemmMode, MatRef};
use crate::tensor::{same_device, Device, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

const RELAYOUT_FWD: Kernel = Kernel::new("conv2d", "relayout_forward");
const RELAYOUT_BWD: Kernel = Kernel::new("conv2d", "relayout_backward");
const FORWARD: Kernel = Kernel::new("conv2d", "conv2d_forward");
const BACKWARD_INPUT: Kernel = Kernel::new("conv2d", "conv2d_backward_input");
const BACKWARD_WEIGHT: Kernel = Kernel::new("conv2d", "conv2d_backward_weight");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub stride: usize,
    pub pad: usize,
}

/// All sizes of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Conv2d {
    pub fn new(stride: usize, pad: usize) -> Self {
        Self { stride, pad }
    }

    /// The shape rule.
    pub fn dims(&self, x: &[usize], w: &[usize]) -> Result<Dims> {
        let (&[n, c, h, wd], &[o, wc, kh, kw]) = (x, w) else {
            return Err(Error::shape(
                "conv2d",
                format!("expects x [N,C,H,W] and weight [O,C,KH,KW], got {x:?} and {w:?}"),
            ));
        };
        if wc != c {
            return Err(Error::shape(
                "conv2d",
                format!("input {x:?} has {c} channels but weight {w:?} expects {wc}"),
            ));
        }
        if self.stride == 0 {
            return Err(Error::shape("conv2d", "stride must be at least 1"));
        }
        if h + 2 * self.pad < kh || wd + 2 * self.pad < kw {
            return Err(Error::shape(
                "conv2d",
                format!(
                    "kernel {kh}x{kw} larger than the padded input {x:?} (padding {})",
                    self.pad
                ),
            ));
        }
        let oh = (h + 2 * self.pad - kh) / self.stride + 1;
        let ow = (wd + 2 * self.pad - kw) / self.stride + 1;
        Ok(Dims {
            n,
            c,
            h,
            w: wd,
            o,
            kh,
            kw,
            oh,
            ow,
            stride: self.stride,
            pad: self.pad,
        })
    }
}

impl Dims {
    /// Multiply-adds of the forward pass (each backward costs the same).
    pub fn macs(&self) -> usize {
        self.n * self.o * self.oh * self.ow * self.c * self.kh * self.kw
    }
    /// Input coordinate for an output coordinate and kernel offset, if inside.
    #[inline]
    fn src(&self, o: usize, k: usize, limit: usize) -> Option<usize> {
        let i = (o * self.stride + k) as isize - self.pad as isize;
        (i >= 0 && (i as usize) < limit).then_some(i as usize)
    }
}

/// Visit every (patch row k = (c·KH + ky)·KW + kx, output pixel oy·OW + ox, input index
/// (c·H + iy)·W + ix) where the window lies inside the image: the index map of im2col.
fn for_each_tap(d: &Dims, mut f: impl FnMut(usize, usize, usize)) {
    for c in 0..d.c {
        for ky in 0..d.kh {
            for kx in 0..d.kw {
                let row = (c * d.kh + ky) * d.kw + kx;
                for oy in 0..d.oh {
                    let Some(iy) = d.src(oy, ky, d.h) else {
                        continue;
                    };
                    for ox in 0..d.ow {
                        if let Some(ix) = d.src(ox, kx, d.w) {
                            f(row, oy * d.ow + ox, (c * d.h + iy) * d.w + ix);
                        }
                    }
                }
            }
        }
    }
}

/// Patches of image `xn` [C, H, W] as columns: cols[(c·KH + ky)·KW + kx][oy·OW + ox]
/// (zero where the window leaves the image). `transposed` gives [P, K] instead of [K, P].
fn im2col<T: Real>(xn: &[T], d: &Dims, transposed: bool) -> Vec<T> {
    let (p, k) = (d.oh * d.ow, d.c * d.kh * d.kw);
    let mut cols = vec![T::zero(); k * p];
    for_each_tap(d, |row, col, i| {
        let at = if transposed {
            col * k + row
        } else {
            row * p + col
        };
        cols[at] = xn[i];
    });
    cols
}

/// Scatter-add columns [K, P] back onto an image [C, H, W] (the adjoint of `im2col`).
fn col2im<T: Real>(cols: &[T], d: &Dims, xn: &mut [T]) {
    let p = d.oh * d.ow;
    for_each_tap(d, |row, col, i| xn[i] += cols[row * p + col]);
}

// The CPU reference lowers each image to a matrix product (im2col): the sums of the
// definition above in a cache-friendly order, so that the CPU path is usable for training.

pub fn forward_ref<T: Real>(x: &[T], w: &[T], d: &Dims) -> Vec<T> {
    let (p, k, chw) = (d.oh * d.ow, d.c * d.kh * d.kw, d.c * d.h * d.w);
    let mut y = vec![T::zero(); d.n * d.o * p];
    y.par_chunks_mut((d.o * p).max(1))
        .enumerate()
        .for_each(|(n, yn)| {
            let cols = im2col(&x[n * chw..(n + 1) * chw], d, false);
            yn.copy_from_slice(&matmul_ref(w, &cols, None, d.o, p, k, false, false));
        });
    y
}

pub fn backward_input_ref<T: Real>(gy: &[T], w: &[T], d: &Dims) -> Vec<T> {
    let (p, k, chw) = (d.oh * d.ow, d.c * d.kh * d.kw, d.c * d.h * d.w);
    let mut gx = vec![T::zero(); d.n * chw];
    gx.par_chunks_mut(chw.max(1))
        .enumerate()
        .for_each(|(n, gxn)| {
            // dcols = Wᵀ · gy_n
            let dcols = matmul_ref(
                w,
                &gy[n * d.o * p..(n + 1) * d.o * p],
                None,
                k,
                p,
                d.o,
                true,
                false,
            );
            col2im(&dcols, d, gxn);
        });
    gx
}

pub fn backward_weight_ref<T: Real>(gy: &[T], x: &[T], d: &Dims) -> Vec<T> {
    let (p, k, chw) = (d.oh * d.ow, d.c * d.kh * d.kw, d.c * d.h * d.w);
    let mut gw = vec![T::zero(); d.o * k];
    // Images in order (the matmul is parallel over output channels), so the sum is
    // bit-for-bit reproducible: resumed runs must equal uninterrupted ones.
    for chunk in (0..d.n).collect::<Vec<_>>().chunks(8) {
        // The patches of a few images in parallel, then gw += gy_n · colsᵀ in image order.
        let cols: Vec<Vec<T>> = chunk
            .par_iter()
            .map(|&n| im2col(&x[n * chw..(n + 1) * chw], d, true))
            .collect();
        for (&n, cols_t) in chunk.iter().zip(&cols) {
            let part = matmul_ref(
                &gy[n * d.o * p..(n + 1) * d.o * p],
                cols_t,
                None,
                d.o,
                k,
                p,
                false,
                false,
            );
            gw.iter_mut().zip(&part).for_each(|(a, b)| *a += *b);
        }
    }
    gw
}

// The CPU path's kernels: the same products through the `gemm` crate, several images at a
// time. A group's patches form one [K, g·P] matrix (the batch folded into the product's
// columns: layer4's 4×4 maps give P = 16 per image, too thin a product alone), bounded by
// `GROUP_COLS_BYTES` so that it stays in the caches; groups run in parallel over rayon's pool.
// Each output element is one ordered sum, and the weight gradient adds the groups' partial
// products in group order: a run is reproducible for a given thread count (the grouping
// depends on it).

/// Patch-matrix budget per group when groups run in parallel (the L2 of a current core is
/// 1–2 MB), and when they run one after another, each product over the whole pool.
const GROUP_COLS_BYTES: usize = 2 << 20;
const SERIAL_GROUP_COLS_BYTES: usize = 8 << 20;

/// Images per group: as many as the budget allows, but (for groups that run in parallel)
/// enough groups to keep every thread busy.
fn group_size(d: &Dims, parallel: bool) -> usize {
    let per_image = (d.c * d.kh * d.kw * d.oh * d.ow * 4).max(1);
    if !parallel {
        return (SERIAL_GROUP_COLS_BYTES / per_image).clamp(1, d.n.max(1));
    }
    let threads = rayon::current_num_threads().max(1);
    (GROUP_COLS_BYTES / per_image)
        .min(d.n.div_ceil(2 * threads))
        .clamp(1, d.n.max(1))
}

/// Patches of images n0..n0+g as one matrix cols[(c·KH + ky)·KW + kx][img·P + oy·OW + ox]
/// (zero where the window leaves the image).
fn im2col_group(x: &[f32], d: &Dims, n0: usize, g: usize, cols: &mut [f32]) {
    let (p, chw) = (d.oh * d.ow, d.c * d.h * d.w);
    let width = g * p;
    cols.par_chunks_mut(width.max(1))
        .enumerate()
        .for_each(|(row, out)| {
            let (c, ky, kx) = (row / (d.kh * d.kw), row / d.kw % d.kh, row % d.kw);
            for img in 0..g {
                let xc = &x[(n0 + img) * chw + c * d.h * d.w..][..d.h * d.w];
                let o = &mut out[img * p..(img + 1) * p];
                for oy in 0..d.oh {
                    let orow = &mut o[oy * d.ow..(oy + 1) * d.ow];
                    let Some(iy) = d.src(oy, ky, d.h) else {
                        orow.fill(0.0);
                        continue;
                    };
                    let xrow = &xc[iy * d.w..(iy + 1) * d.w];
                    if d.stride == 1 {
                        // ix = ox + kx − pad: one contiguous run between the zero borders.
                        let lo = d.pad.saturating_sub(kx).min(d.ow);
                        let hi = (d.w + d.pad).saturating_sub(kx).min(d.ow).max(lo);
                        orow[..lo].fill(0.0);
                        orow[hi..].fill(0.0);
                        // lo < hi means some ix lies inside the row (then start ≥ 0).
                        if lo < hi {
                            let start = lo + kx - d.pad;
                            orow[lo..hi].copy_from_slice(&xrow[start..start + hi - lo]);
                        }
                    } else {
                        for (ox, v) in orow.iter_mut().enumerate() {
                            *v = d.src(ox, kx, d.w).map_or(0.0, |ix| xrow[ix]);
                        }
                    }
                }
            }
        });
}

/// The adjoint of `im2col_group` for image `img` of a group of `g`: gxn [C, H, W] += the
/// patch columns of dcols [K, g·P] scattered back onto the image.
fn col2im_add(dcols: &[f32], d: &Dims, img: usize, g: usize, gxn: &mut [f32]) {
    let p = d.oh * d.ow;
    for row in 0..d.c * d.kh * d.kw {
        let (c, ky, kx) = (row / (d.kh * d.kw), row / d.kw % d.kh, row % d.kw);
        let src = &dcols[row * g * p + img * p..][..p];
        let gc = &mut gxn[c * d.h * d.w..(c + 1) * d.h * d.w];
        for oy in 0..d.oh {
            let Some(iy) = d.src(oy, ky, d.h) else {
                continue;
            };
            let srow = &src[oy * d.ow..(oy + 1) * d.ow];
            let grow = &mut gc[iy * d.w..(iy + 1) * d.w];
            if d.stride == 1 {
                let lo = d.pad.saturating_sub(kx).min(d.ow);
                let hi = (d.w + d.pad).saturating_sub(kx).min(d.ow).max(lo);
                if lo < hi {
                    let start = lo + kx - d.pad;
                    grow[start..start + hi - lo]
                        .iter_mut()
                        .zip(&srow[lo..hi])
                        .for_each(|(g, v)| *g += v);
                }
            } else {
                for (ox, v) in srow.iter().enumerate() {
                    if let Some(ix) = d.src(ox, kx, d.w) {
                        grow[ix] += v;
                    }
                }
            }
        }
    }
}

/// gy of images n0..n0+g, [N, O, P] → one matrix [O, g·P] (the columns of `im2col_group`).
fn gather_group(gy: &[f32], d: &Dims, n0: usize, g: usize) -> Vec<f32> {
    let p = d.oh * d.ow;
    let mut out = vec![0f32; d.o * g * p];
    for (o, row) in out.chunks_mut(g * p).enumerate() {
        for img in 0..g {
            row[img * p..(img + 1) * p].copy_from_slice(&gy[((n0 + img) * d.o + o) * p..][..p]);
        }
    }
    out
}

/// Threads inside each product: one while there are enough groups to give every thread of
/// the pool its own, else the pool.
fn inner_threads(groups: usize, flops: usize) -> usize {
    if groups >= rayon::current_num_threads().max(1) {
        1
    } else {
        crate::ops::gemm::cpu_threads(flops)
    }
}

/// The image groups of a batch: (first image, images).
fn groups(d: &Dims, parallel: bool) -> Vec<(usize, usize)> {
    let g = group_size(d, parallel);
    (0..d.n)
        .step_by(g)
        .map(|n0| (n0, g.min(d.n - n0)))
        .collect()
}

/// The CPU path's forward pass (tested against `forward_ref`).
pub fn forward_fast(x: &[f32], w: &[f32], d: &Dims) -> Vec<f32> {
    let (p, k) = (d.oh * d.ow, d.c * d.kh * d.kw);
    let mut y = vec![0f32; d.n * d.o * p];
    let g = group_size(d, true);
    let inner = inner_threads(d.n.div_ceil(g), 2 * d.macs());
    y.par_chunks_mut((g * d.o * p).max(1))
        .enumerate()
        .for_each(|(gi, yg)| {
            let (n0, gn) = (gi * g, yg.len() / (d.o * p).max(1));
            let mut cols = vec![0f32; k * gn * p];
            im2col_group(x, d, n0, gn, &mut cols);
            let wm = MatRef::new(w, d.o, k, false);
            let cm = MatRef::new(&cols, k, gn * p, false);
            if gn == 1 {
                gemm_f32(yg, wm, cm, false, inner);
                return;
            }
            let mut out = vec![0f32; d.o * gn * p];
            gemm_f32(&mut out, wm, cm, false, inner);
            for (o, row) in out.chunks(gn * p).enumerate() {
                for img in 0..gn {
                    yg[(img * d.o + o) * p..][..p].copy_from_slice(&row[img * p..][..p]);
                }
            }
        });
    y
}

/// The CPU path's input gradient: dcols = Wᵀ·gy per group, scattered back (col2im).
pub fn backward_input_fast(gy: &[f32], w: &[f32], d: &Dims) -> Vec<f32> {
    let (p, k, chw) = (d.oh * d.ow, d.c * d.kh * d.kw, d.c * d.h * d.w);
    let mut gx = vec![0f32; d.n * chw];
    let g = group_size(d, true);
    let inner = inner_threads(d.n.div_ceil(g), 2 * d.macs());
    gx.par_chunks_mut((g * chw).max(1))
        .enumerate()
        .for_each(|(gi, gxg)| {
            let (n0, gn) = (gi * g, gxg.len() / chw.max(1));
            let gyg = gather_group(gy, d, n0, gn);
            let mut dcols = vec![0f32; k * gn * p];
            gemm_f32(
                &mut dcols,
                MatRef::new(w, k, d.o, true),
                MatRef::new(&gyg, d.o, gn * p, false),
                false,
                inner,
            );
            for img in 0..gn {
                col2im_add(&dcols, d, img, gn, &mut gxg[img * chw..(img + 1) * chw]);
            }
        });
    gx
}

/// Largest weight gradient (floats) computed as per-thread partial products: small ones
/// (the early layers: 64·576, 128·1152) are cheap to hold and add, and their products too
/// small to split across threads well; larger ones accumulate in place, one product after
/// another, each on the whole pool.
const PARTIAL_GRADIENT_FLOATS: usize = 1 << 18;
/// Patch-matrix budget of one thread's group in the per-thread partial products.
const THREAD_GROUP_COLS_BYTES: usize = 4 << 20;
/// Largest weight gradient computed transposed, gwᵀ [K, O] = cols·gyᵀ (the long patch rows
/// as the product's contiguous left operand: 2.4× gy·colsᵀ at 64 channels 32×32, 1.25× at
/// 128 channels 16×16), then transposed back; above it the transposition costs more than
/// the product saves (256 and 512 channels).
const TRANSPOSED_GRADIENT_FLOATS: usize = 1 << 18;

/// The CPU path's weight gradient: gw = Σ over image groups of gy_g·cols_gᵀ, the groups'
/// products added in group order (see the two limits above for how).
pub fn backward_weight_fast(gy: &[f32], x: &[f32], d: &Dims) -> Vec<f32> {
    let (p, k) = (d.oh * d.ow, d.c * d.kh * d.kw);
    let transposed = d.o * k <= TRANSPOSED_GRADIENT_FLOATS;
    // dst (gw, or gwᵀ when transposed) += this group's product.
    let product = |dst: &mut [f32],
                   cols: &mut Vec<f32>,
                   (n0, gn): (usize, usize),
                   acc: bool,
                   threads: usize| {
        // Every element is overwritten: a reused buffer needs no clearing.
        cols.resize(k * gn * p, 0.0);
        im2col_group(x, d, n0, gn, cols);
        let gyg = gather_group(gy, d, n0, gn);
        let (cols, gyg) = (&cols[..], &gyg[..]);
        if transposed {
            let (l, r) = (
                MatRef::new(cols, k, gn * p, false),
                MatRef::new(gyg, gn * p, d.o, true),
            );
            gemm_f32(dst, l, r, acc, threads);
        } else {
            let (l, r) = (
                MatRef::new(gyg, d.o, gn * p, false),
                MatRef::new(cols, gn * p, k, true),
            );
            gemm_f32(dst, l, r, acc, threads);
        }
    };
    let mut out = vec![0f32; d.o * k];
    if d.o * k <= PARTIAL_GRADIENT_FLOATS {
        // Each thread a contiguous run of images (fixed by the thread count, not by
        // scheduling), accumulated in place into its own partial; the partials added in order.
        let threads = rayon::current_num_threads().clamp(1, d.n.max(1));
        let per_thread = d.n.div_ceil(threads);
        let per_image = (k * p * 4).max(1);
        let g = (THREAD_GROUP_COLS_BYTES / per_image).clamp(1, per_thread);
        let runs: Vec<(usize, usize)> = (0..d.n)
            .step_by(per_thread)
            .map(|a| (a, (a + per_thread).min(d.n)))
            .collect();
        let partials: Vec<Vec<f32>> = runs
            .par_iter()
            .map(|&(a, b)| {
                let (mut part, mut cols) = (vec![0f32; d.o * k], Vec::new());
                for (i, n0) in (a..b).step_by(g).enumerate() {
                    product(&mut part, &mut cols, (n0, g.min(b - n0)), i > 0, 1);
                }
                part
            })
            .collect();
        for part in partials {
            out.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
        }
    } else {
        let threads = crate::ops::gemm::cpu_threads(2 * d.macs());
        let mut cols = Vec::new();
        for (i, group) in groups(d, false).into_iter().enumerate() {
            product(&mut out, &mut cols, group, i > 0, threads);
        }
    }
    if !transposed {
        return out;
    }
    let mut gw = vec![0f32; d.o * k];
    for (kk, row) in out.chunks(d.o.max(1)).enumerate() {
        for (o, v) in row.iter().enumerate() {
            gw[o * k + kk] = *v;
        }
    }
    gw
}

fn params(
    d: &Dims,
    total: usize,
    blocks_x: usize,
    blocks_ch: usize,
    ch4: usize,
    nsplit: usize,
) -> [u32; 16] {
    [
        u(d.n),
        u(d.c),
        u(d.h),
        u(d.w),
        u(d.o),
        u(d.oh),
        u(d.ow),
        u(d.kh),
        u(d.kw),
        u(d.stride),
        u(d.pad),
        u(total),
        u(blocks_x),
        u(blocks_ch),
        u(ch4),
        u(nsplit),
    ]
}

fn relayout(g: &Arc<Gpu>, w: &GpuBuffer, d: &Dims, forward: bool) -> GpuBuffer {
    let (kernel, lead, ch) = if forward {
        (RELAYOUT_FWD, d.c, d.o)
    } else {
        (RELAYOUT_BWD, d.o, d.c)
    };
    let ch4 = ch.div_ceil(4) * 4;
    let len = lead * d.kh * d.kw * ch4;
    let out = g.alloc(len);
    g.dispatch(
        kernel,
        &[],
        &[w, &out],
        &params(d, 0, 0, 0, ch4, 0),
        grid_1d(len, 256),
    );
    out
}

/// The forward pass and the input gradient share one scheme: 8 pixels × 4 channels per
/// invocation over the output image (`y` from x, or `gx` from gy), weights re-laid out so the
/// 4 channels are contiguous.
fn direct_pass(g: &Arc<Gpu>, src: &Tensor, w: &Tensor, d: &Dims, forward: bool) -> Tensor {
    let (kernel, ch, rows, cols) = if forward {
        (FORWARD, d.o, d.oh, d.ow)
    } else {
        (BACKWARD_INPUT, d.c, d.h, d.w)
    };
    let wt = relayout(g, buf(w), d, forward);
    let (bx, bc) = (cols.div_ceil(8), ch.div_ceil(4));
    let total = d.n * bc * rows * bx;
    let out = g.alloc(d.n * ch * rows * cols);
    g.dispatch(
        kernel,
        &[],
        &[buf(src), &wt, &out],
        &params(d, total, bx, bc, bc * 4, 1),
        grid_1d(total, 64),
    );
    Tensor::from_gpu(g, out, &[d.n, ch, rows, cols])
}

fn conv_sizes(d: &Dims) -> crate::ops::gemm::ConvSizes {
    [
        d.n, d.c, d.h, d.w, d.o, d.oh, d.ow, d.kh, d.kw, d.stride, d.pad,
    ]
}

/// The forward pass or the input gradient as an implicit GEMM (hardware GPUs): `lhs` the
/// weights, `rhs` x or gy, into `out` (y or gx, every element written).
fn gemm_pass(g: &Gpu, mode: GemmMode, d: &Dims, lhs: &GpuBuffer, rhs: &GpuBuffer, out: &GpuBuffer) {
    let kk = d.kh * d.kw;
    let (shape, slices) = match mode {
        GemmMode::ConvForward => ([d.o, d.n * d.oh * d.ow, d.c * kk], 1),
        // Phase (0, 0) has the most pixels; each phase computes its own sizes.
        _ => (
            [
                d.c,
                d.n * d.h.div_ceil(d.stride) * d.w.div_ceil(d.stride),
                0,
            ],
            d.stride * d.stride,
        ),
    };
    dispatch_gemm(g, mode, shape, slices, conv_sizes(d), [lhs, rhs, lhs], out);
}

/// Workgroups the weight gradient's split-K aims for (a few per compute unit on a large GPU).
const WEIGHT_GRAD_WORKGROUPS: usize = 512;
/// Fewest reduction steps one split-K slice takes (below it the partial sums cost more than
/// the parallelism gains).
const WEIGHT_GRAD_MIN_SLICE: usize = 256;

/// The weight gradient as an implicit GEMM with its N·OH·OW reduction split over slices
/// (split-K); the slices' partial gradients are summed in slice order (deterministic).
fn weight_grad_gemm(g: &Arc<Gpu>, gy: &Tensor, x: &Tensor, d: &Dims) -> TResult {
    let (m, cols, kdim) = (d.o, d.c * d.kh * d.kw, d.n * d.oh * d.ow);
    let tiles = crate::ops::gemm::tiles_for(g, m);
    let output_tiles = m.div_ceil(tiles.bm() as usize) * cols.div_ceil(tiles.bn as usize);
    let max_slices = kdim.div_ceil(WEIGHT_GRAD_MIN_SLICE).max(1);
    let slices = WEIGHT_GRAD_WORKGROUPS
        .div_ceil(output_tiles.max(1))
        .clamp(1, max_slices);
    let bk = tiles.bk as usize;
    let split = kdim.div_ceil(slices).div_ceil(bk) * bk;
    let slices = kdim.div_ceil(split.max(1)).max(1);
    let out = g.alloc(slices * m * cols);
    dispatch_gemm(
        g,
        GemmMode::ConvWeight { split },
        [m, cols, kdim],
        slices,
        conv_sizes(d),
        [buf(gy), buf(x), buf(gy)],
        &out,
    );
    let partial = Tensor::from_gpu(g, out, &[slices, m * cols]);
    if slices == 1 {
        Ok(partial)
    } else {
        crate::ops::reduce::col_sum(&partial, 1.0)
    }
}

/// y = conv2d(x, w).
pub fn forward(x: &Tensor, w: &Tensor, cfg: Conv2d) -> TResult {
    let d = cfg.dims(x.shape(), w.shape())?;
    let yshape = [d.n, d.o, d.oh, d.ow];
    match same_device("conv2d", &[x, w])? {
        Device::Cpu => {
            let (x, w) = (
                x.cpu_data().unwrap_or_default(),
                w.cpu_data().unwrap_or_default(),
            );
            Ok(cpu(
                if super::reference_kernels() {
                    forward_ref(x, w, &d)
                } else {
                    forward_fast(x, w, &d)
                },
                &yshape,
            ))
        }
        Device::Gpu(g) => Ok(match g.variant {
            KernelVariant::RegisterTiled => direct_pass(&g, x, w, &d, true),
            KernelVariant::WorkgroupTiled => {
                let y = g.alloc(d.n * d.o * d.oh * d.ow);
                gemm_pass(&g, GemmMode::ConvForward, &d, buf(w), buf(x), &y);
                Tensor::from_gpu(&g, y, &yshape)
            }
        }),
    }
}

/// gx from gy (shape of x given by `d`).
pub fn backward_input(gy: &Tensor, w: &Tensor, d: &Dims) -> TResult {
    let xshape = [d.n, d.c, d.h, d.w];
    match same_device("conv2d_backward_input", &[gy, w])? {
        Device::Cpu => {
            let (gy, w) = (
                gy.cpu_data().unwrap_or_default(),
                w.cpu_data().unwrap_or_default(),
            );
            Ok(cpu(
                if super::reference_kernels() {
                    backward_input_ref(gy, w, d)
                } else {
                    backward_input_fast(gy, w, d)
                },
                &xshape,
            ))
        }
        Device::Gpu(g) => Ok(match g.variant {
            KernelVariant::RegisterTiled => direct_pass(&g, gy, w, d, false),
            KernelVariant::WorkgroupTiled => {
                let gx = g.alloc(d.n * d.c * d.h * d.w);
                gemm_pass(&g, GemmMode::ConvInput, d, buf(w), buf(gy), &gx);
                Tensor::from_gpu(&g, gx, &xshape)
            }
        }),
    }
}

/// gw from gy and x.
pub fn backward_weight(gy: &Tensor, x: &Tensor, d: &Dims) -> TResult {
    let wshape = [d.o, d.c, d.kh, d.kw];
    match same_device("conv2d_backward_weight", &[gy, x])? {
        Device::Cpu => {
            let (gy, x) = (
                gy.cpu_data().unwrap_or_default(),
                x.cpu_data().unwrap_or_default(),
            );
            Ok(cpu(
                if super::reference_kernels() {
                    backward_weight_ref(gy, x, d)
                } else {
                    backward_weight_fast(gy, x, d)
                },
                &wshape,
            ))
        }
        Device::Gpu(g) => {
            if g.variant == KernelVariant::WorkgroupTiled {
                return weight_grad_gemm(&g, gy, x, d)?.reshape(&wshape);
            }
            let (bo, bc) = (d.o.div_ceil(4), d.c.div_ceil(4));
            let base = bo * bc * d.kh * d.kw;
            // Split the batch so that there are enough invocations to fill the device.
            let nsplit = 4096usize.div_ceil(base).clamp(1, d.n.max(1));
            let total = base * nsplit;
            let wlen = d.o * d.c * d.kh * d.kw;
            let out = g.alloc(wlen * nsplit);
            let p = params(d, total, 0, bo, bc, nsplit);
            g.dispatch(
                BACKWARD_WEIGHT,
                &[],
                &[buf(x), buf(gy), &out],
                &p,
                grid_1d(total, 64),
            );
            let partial = Tensor::from_gpu(&g, out, &[nsplit, wlen]);
            let gw = if nsplit == 1 {
                partial
            } else {
                crate::ops::reduce::col_sum(&partial, 1.0)?
            };
            gw.reshape(&wshape)
        }
    }
}

impl Tape {
    pub fn conv2d(&mut self, x: Var, w: Var, cfg: Conv2d) -> Result<Var> {
        let (xv, wv) = (self.value(x).clone(), self.value(w).clone());
        let d = cfg.dims(xv.shape(), wv.shape())?;
        let y = forward(&xv, &wv, cfg)?;
        Ok(self.record("conv2d", y, &[x, w], move |gy, needs| {
            // The stem's input gradient (the images) is never needed.
            Ok(vec![
                needs[0].then(|| backward_input(gy, &wv, &d)).transpose()?,
                needs[1].then(|| backward_weight(gy, &xv, &d)).transpose()?,
            ])
        }))
    }
}
